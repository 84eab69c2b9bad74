//! One parallel step of a cell, running on the cluster's engines.
//!
//! A [`PxRun`] holds what a `%px` / `%%px` step sent (one execute request per target engine) and
//! what came back. Engine messages arrive from the controller client already tagged with their
//! engine; [`PxRun::on_message`] turns each into an [`EngineOutput`] and, when streaming, into the
//! blocks the notebook shows (via the `magics` renderer). When every engine has replied,
//! [`PxRun::finish`] gives the grouped output (when not streaming) and the cell's error, if any.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parallax_magics::{
    final_error, render_grouped_with, user_frames, AbortReason, Emit, EngineError, EngineOutput,
    ErrorContent, GroupBy, OutputKind, PxOptions, RenderStyle, StreamName, StreamRenderer,
};
use parallax_wire::Message;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// The renderer's style: plain labels, so saved notebooks read `Out[0:9]: 10`.
const STYLE: RenderStyle = RenderStyle { color: false };

/// A parallel step in flight.
pub struct PxRun {
    pub options: PxOptions,
    /// The engines it runs on, in order.
    pub engines: Vec<u32>,
    by_msg_id: HashMap<String, u32>,
    pending: BTreeSet<u32>,
    outputs: Vec<EngineOutput>,
    renderer: StreamRenderer,
    aborted: Vec<(u32, AbortReason)>,
    pub started: Instant,
    /// The progress line's display id, once shown.
    pub progress: Option<String>,
    display_prefix: String,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    status: String,
    #[serde(default)]
    ename: Option<String>,
    #[serde(default)]
    evalue: Option<String>,
    #[serde(default)]
    traceback: Option<Vec<String>>,
}

impl PxRun {
    /// A run of `options` on `engines`; `cell` (the cell's msg_id) and a number of the step
    /// make its display ids unique, so two steps of one cell never update each other's blocks.
    pub fn new(options: PxOptions, engines: Vec<u32>, cell: &str) -> Self {
        static STEPS: AtomicU64 = AtomicU64::new(0);
        let display_prefix = format!("{cell}-{}", STEPS.fetch_add(1, Ordering::Relaxed));
        PxRun {
            renderer: StreamRenderer::with_style(format!("px-{display_prefix}"), STYLE),
            options,
            pending: engines.iter().copied().collect(),
            engines,
            by_msg_id: HashMap::new(),
            outputs: Vec::new(),
            aborted: Vec::new(),
            started: Instant::now(),
            progress: None,
            display_prefix,
        }
    }

    /// Records that the request `msg_id` went to `engine`.
    pub fn sent(&mut self, msg_id: String, engine: u32) {
        self.by_msg_id.insert(msg_id, engine);
    }

    /// Whether `message` answers one of this run's requests.
    pub fn owns(&self, message: &Message) -> bool {
        message
            .parent_msg_id()
            .is_some_and(|id| self.by_msg_id.contains_key(id))
    }

    /// Every engine has replied.
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Engines done, of all.
    pub fn progress_counts(&self) -> (usize, usize) {
        (self.engines.len() - self.pending.len(), self.engines.len())
    }

    /// The progress line's display id.
    pub fn progress_id(&self) -> String {
        format!("px-{}-progress", self.display_prefix)
    }

    /// Takes in one message of an engine; returns what to show now (when streaming).
    pub fn on_message(&mut self, message: &Message) -> Vec<Emit> {
        let Some(&engine) = message
            .parent_msg_id()
            .and_then(|id| self.by_msg_id.get(id))
        else {
            return Vec::new();
        };
        let content: Value = message.content_as().unwrap_or(Value::Null);
        let kind = match message.msg_type() {
            "stream" => Some(OutputKind::Stream {
                name: if content["name"] == "stderr" {
                    StreamName::Stderr
                } else {
                    StreamName::Stdout
                },
                text: content["text"].as_str().unwrap_or("").to_owned(),
            }),
            "display_data" => Some(OutputKind::Display {
                data: object(&content["data"]),
                metadata: object(&content["metadata"]),
            }),
            "execute_result" => Some(OutputKind::Result {
                execution_count: content["execution_count"].as_u64().unwrap_or(0),
                data: object(&content["data"]),
                metadata: object(&content["metadata"]),
            }),
            "error" => Some(error_kind(&content)),
            "execute_reply" => {
                self.pending.remove(&engine);
                self.on_reply(engine, message)
            }
            _ => None,
        };
        let Some(kind) = kind else {
            return Vec::new();
        };
        let output = EngineOutput { engine, kind };
        let emits = if self.options.stream {
            self.renderer.push(&output)
        } else {
            Vec::new()
        };
        self.outputs.push(output);
        emits
    }

    /// A reply: an error the engine did not publish as output (its death, a refusal by the
    /// controller) becomes that engine's error; an abort is noted.
    fn on_reply(&mut self, engine: u32, message: &Message) -> Option<OutputKind> {
        let reply: Reply = message.content_as().ok()?;
        match reply.status.as_str() {
            "aborted" => {
                self.aborted.push((engine, AbortReason::Interrupted));
                None
            }
            "error" => {
                let already = self
                    .outputs
                    .iter()
                    .any(|o| o.engine == engine && matches!(o.kind, OutputKind::Error { .. }));
                if already {
                    return None;
                }
                let ename = reply.ename.unwrap_or_else(|| "EngineError".into());
                let evalue = reply.evalue.unwrap_or_default();
                let traceback = reply
                    .traceback
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| vec![format!("{ename}: {evalue}")]);
                Some(OutputKind::Error {
                    ename,
                    evalue,
                    traceback,
                })
            }
            _ => None,
        }
    }

    /// Engines that aborted the request, and why.
    pub fn aborted(&self) -> &[(u32, AbortReason)] {
        &self.aborted
    }

    /// What to show once every engine has replied, and the cell's error if any engine failed.
    pub fn finish(&self, group: Option<GroupBy>) -> (Vec<Emit>, Option<ErrorContent>) {
        let streamed = self.options.stream && group.is_none();
        let emits = if streamed {
            self.renderer.finish().0
        } else {
            render_grouped_with(
                &self.outputs,
                group.unwrap_or(self.options.group_outputs),
                STYLE,
            )
        };
        let errors = EngineError::collect(&self.outputs);
        let single = self.options.targets.is_single();
        (emits, final_error(&errors, streamed, single))
    }
}

fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn error_kind(content: &Value) -> OutputKind {
    let traceback: Vec<String> = content["traceback"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    OutputKind::Error {
        ename: content["ename"].as_str().unwrap_or("Error").to_owned(),
        evalue: content["evalue"].as_str().unwrap_or("").to_owned(),
        traceback: user_frames(&traceback),
    }
}

/// The iopub message type and content for an emit (`execution_count` for an execute_result).
pub fn emit_message(emit: &Emit, execution_count: u64) -> (&'static str, Value) {
    match emit {
        Emit::Stream { name, text } => ("stream", json!({"name": name.as_str(), "text": text})),
        Emit::DisplayData {
            data,
            metadata,
            display_id,
        } => {
            let mut content = json!({"data": data, "metadata": metadata, "transient": {}});
            if let Some(id) = display_id {
                content["transient"] = json!({"display_id": id});
            }
            ("display_data", content)
        }
        Emit::UpdateDisplayData {
            data,
            metadata,
            display_id,
        } => (
            "update_display_data",
            json!({"data": data, "metadata": metadata, "transient": {"display_id": display_id}}),
        ),
        Emit::ExecuteResult { data, metadata } => (
            "execute_result",
            json!({"data": data, "metadata": metadata, "execution_count": execution_count}),
        ),
    }
}

/// Text on stderr, as an emit.
pub fn stderr(text: impl Into<String>) -> Emit {
    Emit::Stream {
        name: StreamName::Stderr,
        text: text.into(),
    }
}

/// Text on stdout, as an emit.
pub fn stdout(text: impl Into<String>) -> Emit {
    Emit::Stream {
        name: StreamName::Stdout,
        text: text.into(),
    }
}
