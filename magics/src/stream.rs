//! Streamed output (the default): engine output shown as it arrives.
//!
//! ipyparallel's `AsyncResult._iopub_streaming_output_callback`, in a kernel:
//! - stdout/stderr: one `display_data` per engine and stream whose text/plain is
//!   `[stdout:1] ` + all the text so far, with a `transient.display_id`; each later chunk sends
//!   `update_display_data` with the whole text. A saved notebook holds one block per engine
//!   and stream.
//! - a result: a `display_data` with `Out[1:9]: 10` (see [`crate::render_grouped`]).
//! - a rich display: a `[output:1]` `display_data`, then the engine's display republished with
//!   `"engine": 1` added to its metadata.
//! - an error: `[1:execute]`, a newline and the traceback written to stderr (a `stream`
//!   message); after four errors only `[1:execute] ZeroDivisionError: division by zero`.
//!
//! At the end the cell fails with [`crate::already_displayed_error`] if any engine failed.

use std::collections::HashMap;

use crate::errors::{already_displayed_error, engine_label, traceback_lines, TRACEBACK_LIMIT};
use crate::output::{
    output_label, republish, result_display, text_bundle, Emit, EngineOutput, ErrorContent, Json,
    OutputKind, RenderStyle, StreamName,
};

/// Turns engine outputs into iopub messages as they arrive; one per parallel step.
#[derive(Debug)]
pub struct StreamRenderer {
    prefix: String,
    style: RenderStyle,
    blocks: HashMap<(u32, StreamName), String>,
    errors: usize,
}

impl StreamRenderer {
    /// A renderer whose stream blocks get display ids `{display_id_prefix}-{engine}-{stream}`,
    /// e.g. `px-<cell msg_id>-1-stdout` (the prefix should be unique per parallel step).
    pub fn new(display_id_prefix: impl Into<String>) -> StreamRenderer {
        StreamRenderer::with_style(display_id_prefix, RenderStyle::default())
    }

    /// [`StreamRenderer::new`] with an explicit style.
    pub fn with_style(display_id_prefix: impl Into<String>, style: RenderStyle) -> StreamRenderer {
        StreamRenderer {
            prefix: display_id_prefix.into(),
            style,
            blocks: HashMap::new(),
            errors: 0,
        }
    }

    /// The display id of an engine's stream block.
    pub fn display_id(&self, engine: u32, name: StreamName) -> String {
        format!("{}-{engine}-{}", self.prefix, name.as_str())
    }

    /// What to publish for one output.
    pub fn push(&mut self, output: &EngineOutput) -> Vec<Emit> {
        let engine = output.engine;
        match &output.kind {
            OutputKind::Stream { name, text } => {
                let display_id = self.display_id(engine, *name);
                let (first, whole) = match self.blocks.get_mut(&(engine, *name)) {
                    Some(so_far) => {
                        if text.is_empty() {
                            return Vec::new();
                        }
                        so_far.push_str(text);
                        (false, so_far.clone())
                    }
                    None => {
                        if text.is_empty() {
                            return Vec::new();
                        }
                        self.blocks.insert((engine, *name), text.clone());
                        (true, text.clone())
                    }
                };
                let data = text_bundle(format!("[{}:{engine}] {whole}", name.as_str()));
                let emit = if first {
                    Emit::DisplayData {
                        data,
                        metadata: Json::new(),
                        display_id: Some(display_id),
                    }
                } else {
                    Emit::UpdateDisplayData {
                        data,
                        metadata: Json::new(),
                        display_id,
                    }
                };
                vec![emit]
            }
            OutputKind::Display { data, metadata } => {
                vec![output_label(engine), republish(engine, data, metadata)]
            }
            OutputKind::Result {
                execution_count,
                data,
                metadata,
            } => vec![result_display(
                engine,
                *execution_count,
                data,
                metadata,
                self.style,
            )],
            OutputKind::Error {
                ename,
                evalue,
                traceback,
            } => {
                self.errors += 1;
                let label = engine_label(engine);
                let text = if self.errors <= TRACEBACK_LIMIT {
                    // `print("\n".join(err.render_traceback()), file=sys.stderr)`
                    let mut lines = vec![label];
                    lines.extend(traceback_lines(traceback));
                    lines.join("\n") + "\n"
                } else {
                    // `print(err, file=sys.stderr)`: `RemoteError.__str__`
                    format!("{label} {ename}: {evalue}\n")
                };
                vec![Emit::Stream {
                    name: StreamName::Stderr,
                    text,
                }]
            }
        }
    }

    /// How many errors have been shown.
    pub fn error_count(&self) -> usize {
        self.errors
    }

    /// The cell's error once the step is done: `AlreadyDisplayedError` if any engine failed.
    pub fn finish(&self) -> Option<ErrorContent> {
        (self.errors > 0).then(|| already_displayed_error(self.errors))
    }

    /// The whole text streamed so far for one engine and stream (what its block shows after
    /// the prefix).
    pub fn text(&self, engine: u32, name: StreamName) -> Option<&str> {
        self.blocks.get(&(engine, name)).map(String::as_str)
    }
}
