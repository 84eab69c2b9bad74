//! Non-streamed output (`--no-stream`, `%pxresult`, `--local`): everything at once, grouped.
//!
//! This is ipyparallel's `AsyncResult.display_outputs`: each engine's stdout and stderr printed
//! with a `[stdout:0] ` prefix line (`_display_stream`), then `[output:N]` and the engine's
//! displays, then its `Out[N:C]` result. Printed text becomes `stream` messages; consecutive
//! prints to the same stream are joined into one message, as ipykernel's buffered stdout
//! delivers them (observed: `"[stdout:0] \nx\n[stdout:1] \nx\n"` in a single message).
//! Errors are not shown here: the cell fails with [`crate::composite_error`] afterwards.

use crate::options::GroupBy;
use crate::output::{
    output_label, republish, result_display, Emit, EngineOutput, Json, OutputKind, RenderStyle,
    StreamName,
};

/// Renders `outputs` (all of one parallel step, in arrival order) grouped by `group`, with the
/// default [`RenderStyle`]. Engines appear in id order.
pub fn render_grouped(outputs: &[EngineOutput], group: GroupBy) -> Vec<Emit> {
    render_grouped_with(outputs, group, RenderStyle::default())
}

/// [`render_grouped`] with an explicit style.
pub fn render_grouped_with(
    outputs: &[EngineOutput],
    group: GroupBy,
    style: RenderStyle,
) -> Vec<Emit> {
    let records = records(outputs);
    let mut p = Printer::default();
    match group {
        GroupBy::Engine => {
            for r in &records {
                p.print(StreamName::Stdout, &r.stdout, r.engine);
                p.print(StreamName::Stderr, &r.stderr, r.engine);
                if !r.displays.is_empty() || r.result.is_some() {
                    p.emits.push(output_label(r.engine));
                }
                for (data, md) in &r.displays {
                    p.emits.push(republish(r.engine, data, md));
                }
                if let Some((count, data, md)) = &r.result {
                    p.emits
                        .push(result_display(r.engine, *count, data, md, style));
                }
            }
        }
        GroupBy::Type | GroupBy::Order => {
            for r in &records {
                p.print(StreamName::Stdout, &r.stdout, r.engine);
            }
            for r in &records {
                p.print(StreamName::Stderr, &r.stderr, r.engine);
            }
            if group == GroupBy::Order {
                // The i-th display of every engine that has one, for i = 0, 1, ... (ipyparallel
                // skips engines with fewer displays than the most prolific one, a bug; its own
                // docs describe this).
                let most = records.iter().map(|r| r.displays.len()).max().unwrap_or(0);
                for i in 0..most {
                    for r in &records {
                        if let Some((data, md)) = r.displays.get(i) {
                            p.emits.push(output_label(r.engine));
                            p.emits.push(republish(r.engine, data, md));
                        }
                    }
                }
            } else {
                for r in &records {
                    if !r.displays.is_empty() {
                        p.emits.push(output_label(r.engine));
                    }
                    for (data, md) in &r.displays {
                        p.emits.push(republish(r.engine, data, md));
                    }
                }
            }
            for r in &records {
                if let Some((count, data, md)) = &r.result {
                    p.emits
                        .push(result_display(r.engine, *count, data, md, style));
                }
            }
        }
    }
    p.emits
}

/// Everything one engine produced.
struct Record {
    engine: u32,
    stdout: String,
    stderr: String,
    displays: Vec<(Json, Json)>,
    result: Option<(u64, Json, Json)>,
}

fn records(outputs: &[EngineOutput]) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    for o in outputs {
        let idx = match records.iter().position(|r| r.engine == o.engine) {
            Some(i) => i,
            None => {
                records.push(Record {
                    engine: o.engine,
                    stdout: String::new(),
                    stderr: String::new(),
                    displays: Vec::new(),
                    result: None,
                });
                records.len() - 1
            }
        };
        let r = &mut records[idx];
        match &o.kind {
            OutputKind::Stream {
                name: StreamName::Stdout,
                text,
            } => r.stdout.push_str(text),
            OutputKind::Stream {
                name: StreamName::Stderr,
                text,
            } => r.stderr.push_str(text),
            OutputKind::Display { data, metadata } => {
                r.displays.push((data.clone(), metadata.clone()))
            }
            OutputKind::Result {
                execution_count,
                data,
                metadata,
            } => r.result = Some((*execution_count, data.clone(), metadata.clone())),
            OutputKind::Error { .. } => {}
        }
    }
    records.sort_by_key(|r| r.engine);
    records
}

/// ipyparallel's `_display_stream`: a prefix line when the prefix changes, and a newline first
/// when the previous text did not end with one. The state spans stdout and stderr.
struct Printer {
    last_prefix: String,
    trailing_newline: bool,
    emits: Vec<Emit>,
}

impl Default for Printer {
    fn default() -> Printer {
        Printer {
            last_prefix: String::new(),
            trailing_newline: true,
            emits: Vec::new(),
        }
    }
}

impl Printer {
    fn print(&mut self, name: StreamName, text: &str, engine: u32) {
        if text.is_empty() {
            return;
        }
        let mut prefix = format!("[{}:{engine}] ", name.as_str());
        if prefix == self.last_prefix {
            prefix.clear();
        } else {
            self.last_prefix.clone_from(&prefix);
        }
        let pre = if !prefix.is_empty() && !self.trailing_newline {
            "\n"
        } else {
            ""
        };
        let sep = if prefix.is_empty() { "" } else { "\n" };
        self.trailing_newline = text.ends_with('\n');
        let chunk = format!("{pre}{prefix}{sep}{text}");
        if let Some(Emit::Stream { name: last, text }) = self.emits.last_mut() {
            if *last == name {
                text.push_str(&chunk);
                return;
            }
        }
        self.emits.push(Emit::Stream { name, text: chunk });
    }
}
