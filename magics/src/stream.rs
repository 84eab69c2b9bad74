//! Streamed output (the default): engine output shown as it arrives, in engine order.
//!
//! ipyparallel's `AsyncResult._iopub_streaming_output_callback`, in a kernel, with one change:
//! ipyparallel shows each output where it lands in arrival order, so a notebook differs from
//! run to run; here everything a step shows stays in engine order (the order of the targets'
//! ids), while it streams and in the saved notebook.
//!
//! What is shown, per engine, in the order it arrived from that engine:
//! - stdout/stderr: one block per engine and stream whose text/plain is `[stdout:1] ` + all the
//!   text so far; a later chunk updates the block with the whole text.
//! - a result: `Out[1:9]: 10` (see [`crate::render_grouped`]).
//! - a rich display: a `[output:1]` line, then the engine's display republished with
//!   `"engine": 1` added to its metadata.
//!
//! Each of those is a slot: a `display_data` with a `transient.display_id` of its own
//! (`{prefix}-{position}`). An output of an engine whose outputs belong before slots already
//! shown is shown by moving those slots' contents one place down (`update_display_data` of each
//! slot whose content changes) and adding a slot at the end, so the slots always hold every
//! output in engine order. Outputs mostly arrive engine by engine, and each chunk of a block
//! only updates that block.
//!
//! Errors go to stderr as ipyparallel writes them (`[1:execute]`, a newline and the traceback;
//! after four errors only `[1:execute] ZeroDivisionError: division by zero`) when the step ends
//! ([`StreamRenderer::finish`]), in engine order: a `stream` cannot be moved once shown, and the
//! one-line form must go to the same engines on every run. The cell then fails with
//! [`crate::already_displayed_error`].

use std::collections::HashMap;

use crate::errors::{already_displayed_error, engine_label, traceback_lines, TRACEBACK_LIMIT};
use crate::output::{
    output_label, republish, result_display, text_bundle, Emit, EngineOutput, ErrorContent, Json,
    OutputKind, RenderStyle, StreamName,
};

/// What one slot holds.
#[derive(Debug)]
enum Body {
    /// An engine's stdout or stderr block (its text is in `StreamRenderer::texts`).
    Stream(StreamName),
    /// Any other display: a result, a rich display or its `[output:N]` line.
    Display { data: Json, metadata: Json },
}

/// One slot's output: which engine, the how-many-th of that engine's outputs, and what.
#[derive(Debug)]
struct Item {
    engine: u32,
    seq: u32,
    body: Body,
}

/// One engine's error, shown when the step ends.
#[derive(Debug)]
struct Failure {
    engine: u32,
    ename: String,
    evalue: String,
    traceback: Vec<String>,
}

/// Turns engine outputs into iopub messages as they arrive; one per parallel step.
#[derive(Debug)]
pub struct StreamRenderer {
    prefix: String,
    style: RenderStyle,
    /// Every output shown, in (engine, arrival within the engine) order: slot `i` shows item `i`.
    items: Vec<Item>,
    /// What each slot shows now (its bundle and metadata).
    shown: Vec<(Json, Json)>,
    /// The text of each engine's stream so far.
    texts: HashMap<(u32, StreamName), String>,
    /// How many outputs each engine has had a slot for.
    counts: HashMap<u32, u32>,
    failures: Vec<Failure>,
}

impl StreamRenderer {
    /// A renderer whose slots get display ids `{display_id_prefix}-{position}` (the prefix
    /// must be unique per parallel step).
    pub fn new(display_id_prefix: impl Into<String>) -> StreamRenderer {
        StreamRenderer::with_style(display_id_prefix, RenderStyle::default())
    }

    /// [`StreamRenderer::new`] with an explicit style.
    pub fn with_style(display_id_prefix: impl Into<String>, style: RenderStyle) -> StreamRenderer {
        StreamRenderer {
            prefix: display_id_prefix.into(),
            style,
            items: Vec::new(),
            shown: Vec::new(),
            texts: HashMap::new(),
            counts: HashMap::new(),
            failures: Vec::new(),
        }
    }

    /// The display id of the slot at `position`.
    fn slot_id(&self, position: usize) -> String {
        format!("{}-{position}", self.prefix)
    }

    /// What to publish for one output.
    pub fn push(&mut self, output: &EngineOutput) -> Vec<Emit> {
        let engine = output.engine;
        match &output.kind {
            OutputKind::Stream { name, text } => {
                if text.is_empty() {
                    return Vec::new();
                }
                if let Some(so_far) = self.texts.get_mut(&(engine, *name)) {
                    so_far.push_str(text);
                    let at = self.items.iter().position(|item| {
                        item.engine == engine && matches!(item.body, Body::Stream(n) if n == *name)
                    });
                    return at.map_or_else(Vec::new, |at| self.show(at..at + 1));
                }
                self.texts.insert((engine, *name), text.clone());
                self.insert(engine, Body::Stream(*name))
            }
            OutputKind::Display { data, metadata } => {
                let mut emits = self.insert_emit(engine, output_label(engine));
                emits.extend(self.insert_emit(engine, republish(engine, data, metadata)));
                emits
            }
            OutputKind::Result {
                execution_count,
                data,
                metadata,
            } => {
                let shown = result_display(engine, *execution_count, data, metadata, self.style);
                self.insert_emit(engine, shown)
            }
            OutputKind::Error {
                ename,
                evalue,
                traceback,
            } => {
                self.failures.push(Failure {
                    engine,
                    ename: ename.clone(),
                    evalue: evalue.clone(),
                    traceback: traceback.clone(),
                });
                Vec::new()
            }
        }
    }

    fn insert_emit(&mut self, engine: u32, emit: Emit) -> Vec<Emit> {
        match emit {
            Emit::DisplayData { data, metadata, .. } => {
                self.insert(engine, Body::Display { data, metadata })
            }
            other => vec![other],
        }
    }

    /// Adds an output of `engine` after its earlier ones and before every later engine's.
    fn insert(&mut self, engine: u32, body: Body) -> Vec<Emit> {
        let count = self.counts.entry(engine).or_insert(0);
        let seq = *count;
        *count += 1;
        let at = self
            .items
            .partition_point(|item| (item.engine, item.seq) < (engine, seq));
        self.items.insert(at, Item { engine, seq, body });
        self.show(at..self.items.len())
    }

    /// The updates (and the one new slot, if any) that make the slots in `positions` show their
    /// items.
    fn show(&mut self, positions: std::ops::Range<usize>) -> Vec<Emit> {
        let mut emits = Vec::new();
        for position in positions {
            let content = self.content(&self.items[position]);
            let display_id = self.slot_id(position);
            match self.shown.get_mut(position) {
                Some(shown) if *shown == content => {}
                Some(shown) => {
                    *shown = content.clone();
                    emits.push(Emit::UpdateDisplayData {
                        data: content.0,
                        metadata: content.1,
                        display_id,
                    });
                }
                None => {
                    self.shown.push(content.clone());
                    emits.push(Emit::DisplayData {
                        data: content.0,
                        metadata: content.1,
                        display_id: Some(display_id),
                    });
                }
            }
        }
        emits
    }

    fn content(&self, item: &Item) -> (Json, Json) {
        match &item.body {
            Body::Stream(name) => {
                let text = self
                    .texts
                    .get(&(item.engine, *name))
                    .map_or("", String::as_str);
                let data = text_bundle(format!("[{}:{}] {text}", name.as_str(), item.engine));
                (data, Json::new())
            }
            Body::Display { data, metadata } => (data.clone(), metadata.clone()),
        }
    }

    /// How many engines have failed so far.
    pub fn error_count(&self) -> usize {
        self.failures.len()
    }

    /// Once the step is done: the engines' tracebacks on stderr, in engine order, and the cell's
    /// error (`AlreadyDisplayedError`) if any engine failed.
    pub fn finish(&self) -> (Vec<Emit>, Option<ErrorContent>) {
        let mut failures: Vec<&Failure> = self.failures.iter().collect();
        failures.sort_by_key(|f| f.engine);
        let emits = failures
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let label = engine_label(f.engine);
                let text = if i < TRACEBACK_LIMIT {
                    // `print("\n".join(err.render_traceback()), file=sys.stderr)`
                    let mut lines = vec![label];
                    lines.extend(traceback_lines(&f.traceback));
                    lines.join("\n") + "\n"
                } else {
                    // `print(err, file=sys.stderr)`: `RemoteError.__str__`
                    format!("{label} {}: {}\n", f.ename, f.evalue)
                };
                Emit::Stream {
                    name: StreamName::Stderr,
                    text,
                }
            })
            .collect();
        let error = (!failures.is_empty()).then(|| already_displayed_error(failures.len()));
        (emits, error)
    }

    /// The whole text streamed so far for one engine and stream (what its block shows after
    /// the prefix).
    pub fn text(&self, engine: u32, name: StreamName) -> Option<&str> {
        self.texts.get(&(engine, name)).map(String::as_str)
    }
}
