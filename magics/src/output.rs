//! The values the renderer works on: what engines sent ([`EngineOutput`]) and what the kernel
//! should publish ([`Emit`]), plus the pieces every layout shares (`Out[0:9]: ` results,
//! `[output:1]` labels, republished displays).

use serde_json::{Map, Value};

/// A MIME bundle or a metadata dict, as in Jupyter messages.
pub type Json = Map<String, Value>;

/// One output an engine produced for a parallel step, converted by the kernel from the engine
/// kernel's iopub message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineOutput {
    /// The engine's id.
    pub engine: u32,
    /// What it was.
    pub kind: OutputKind,
}

/// Which standard stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
}

impl StreamName {
    /// `stdout` or `stderr`, as in Jupyter's `stream` messages and ipyparallel's prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// The kinds of engine output (iopub `stream`, `display_data`, `execute_result`, `error`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputKind {
    /// Text on stdout or stderr.
    Stream {
        /// Which stream.
        name: StreamName,
        /// The chunk.
        text: String,
    },
    /// A rich display (`display(...)`, a matplotlib figure).
    Display {
        /// The MIME bundle.
        data: Json,
        /// The display's metadata.
        metadata: Json,
    },
    /// The value of the cell's last expression.
    Result {
        /// The engine's own execution count.
        execution_count: u64,
        /// The MIME bundle.
        data: Json,
        /// Its metadata.
        metadata: Json,
    },
    /// The cell raised.
    Error {
        /// Exception class name.
        ename: String,
        /// `str()` of the exception.
        evalue: String,
        /// IPython's rendered traceback.
        traceback: Vec<String>,
    },
}

/// Something for the kernel to publish on iopub, as a child of the cell's request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Emit {
    /// A `stream` message.
    Stream {
        /// Which stream.
        name: StreamName,
        /// The text.
        text: String,
    },
    /// A `display_data` message; `display_id` goes into `transient`.
    DisplayData {
        /// The MIME bundle.
        data: Json,
        /// Its metadata.
        metadata: Json,
        /// `transient.display_id`, for blocks updated later.
        display_id: Option<String>,
    },
    /// An `update_display_data` message for an earlier `DisplayData` with the same id.
    UpdateDisplayData {
        /// The whole new MIME bundle.
        data: Json,
        /// Its metadata.
        metadata: Json,
        /// `transient.display_id`.
        display_id: String,
    },
    /// The cell's own `execute_result`; the kernel adds its execution count.
    ExecuteResult {
        /// The MIME bundle.
        data: Json,
        /// Its metadata.
        metadata: Json,
    },
}

/// Content of an `error` reply / iopub `error` message for the cell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorContent {
    /// Exception class name (`CompositeError`, `AlreadyDisplayedError`).
    pub ename: String,
    /// Its message.
    pub evalue: String,
    /// Lines for the frontend to show.
    pub traceback: Vec<String>,
}

/// One engine's error, as the composite error lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineError {
    /// The engine's id.
    pub engine: u32,
    /// Exception class name.
    pub ename: String,
    /// `str()` of the exception.
    pub evalue: String,
    /// IPython's rendered traceback.
    pub traceback: Vec<String>,
}

impl EngineError {
    /// The errors among `outputs`, in engine-id order (stable for one engine).
    pub fn collect(outputs: &[EngineOutput]) -> Vec<EngineError> {
        let mut errors: Vec<EngineError> = outputs
            .iter()
            .filter_map(|o| match &o.kind {
                OutputKind::Error {
                    ename,
                    evalue,
                    traceback,
                } => Some(EngineError {
                    engine: o.engine,
                    ename: ename.clone(),
                    evalue: evalue.clone(),
                    traceback: traceback.clone(),
                }),
                _ => None,
            })
            .collect();
        errors.sort_by_key(|e| e.engine);
        errors
    }
}

/// How results are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenderStyle {
    /// Colour the `Out[0:9]: ` prompt red with ANSI codes, as ipyparallel does whenever the
    /// local shell's colour scheme is not `nocolor` (IPython 9 in a kernel: `neutral`, so on
    /// by default). Frontends render the codes; the saved text/plain contains them.
    pub color: bool,
}

impl Default for RenderStyle {
    fn default() -> RenderStyle {
        RenderStyle { color: true }
    }
}

/// ipyparallel's `_TermColors.Red` and `Normal` (`ipyparallel/util.py`).
const RED: &str = "\x1b[0;31m";
const NORMAL: &str = "\x1b[0m";

pub(crate) fn text_bundle(text: impl Into<String>) -> Json {
    let mut m = Json::new();
    m.insert("text/plain".into(), Value::String(text.into()));
    m
}

/// The `[output:1]` line ipyparallel shows before an engine's displays (`display_pretty(...,
/// raw=True)`: a `display_data` with only text/plain and empty metadata).
pub(crate) fn output_label(engine: u32) -> Emit {
    Emit::DisplayData {
        data: text_bundle(format!("[output:{engine}]")),
        metadata: Json::new(),
        display_id: None,
    }
}

/// An engine's display republished with `"engine": id` in its metadata
/// (`AsyncResult._republish_displaypub`).
pub(crate) fn republish(engine: u32, data: &Json, metadata: &Json) -> Emit {
    let mut md = metadata.clone();
    md.insert("engine".into(), Value::from(engine));
    Emit::DisplayData {
        data: data.clone(),
        metadata: md,
        display_id: None,
    }
}

/// An engine's result as ipyparallel's `ExecuteReply` displays it: the engine's bundle with
/// text/plain replaced by `Out[0:9]: ` + the repr (a multi-line repr starts on the next line);
/// a bundle without text/plain is shown as is.
///
/// Metadata: the engine's result metadata plus `"engine_id": id`. (ipyparallel passes its whole
/// task-metadata dict here, timestamps and captured stdout included, an accident of
/// `ExecuteReply._repr_mimebundle_`; `engine_id` is the one key of it worth keeping.)
pub(crate) fn result_display(
    engine: u32,
    execution_count: u64,
    data: &Json,
    metadata: &Json,
    style: RenderStyle,
) -> Emit {
    let mut bundle = data.clone();
    if let Some(Value::String(text)) = data.get("text/plain") {
        bundle.insert(
            "text/plain".into(),
            Value::String(out_text(engine, execution_count, text, style)),
        );
    }
    let mut md = metadata.clone();
    md.insert("engine_id".into(), Value::from(engine));
    Emit::DisplayData {
        data: bundle,
        metadata: md,
        display_id: None,
    }
}

/// `Out[0:9]: 10` (`ExecuteReply._plaintext`).
pub(crate) fn out_text(
    engine: u32,
    execution_count: u64,
    text: &str,
    style: RenderStyle,
) -> String {
    if text.is_empty() {
        return String::new();
    }
    let (red, normal) = if style.color { (RED, NORMAL) } else { ("", "") };
    let sep = if text.contains('\n') && !text.starts_with('\n') {
        "\n"
    } else {
        ""
    };
    format!("{red}Out[{engine}:{execution_count}]: {normal}{sep}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_text_like_execute_reply() {
        let plain = RenderStyle { color: false };
        assert_eq!(out_text(0, 9, "10", plain), "Out[0:9]: 10");
        assert_eq!(out_text(1, 48, "[0,\n 1]", plain), "Out[1:48]: \n[0,\n 1]");
        assert_eq!(out_text(1, 48, "\nx\ny", plain), "Out[1:48]: \nx\ny");
        assert_eq!(out_text(1, 48, "", plain), "");
        assert_eq!(
            out_text(0, 3, "10", RenderStyle::default()),
            "\x1b[0;31mOut[0:3]: \x1b[0m10"
        );
    }
}
