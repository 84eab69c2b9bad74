//! The short messages around a parallel step, as ipyparallel prints them, and ours where we
//! do better (aborted requests, progress).
//!
//! Texts printed by ipyparallel end with a newline (`print(...)`), so each is a whole
//! [`Emit::Stream`].

use std::fmt;

use crate::options::Signal;
use crate::output::{text_bundle, Emit, Json, StreamName};
use crate::targets::Targets;

/// `%pxresult` before any non-blocking run (ipyparallel's `NO_LAST_RESULT`, a `UsageError`).
pub const NO_LAST_RESULT: &str = "%pxresult recalls last %px result, which has not yet been used.";

/// The repr of a non-blocking `%%px`'s result handle while it runs.
pub const PENDING_RESULT: &str = "<AsyncResult(%px): pending>";

/// `Parallel execution on engine(s): all` (blocking) or `Async parallel execution on
/// engine(s): ...` (non-blocking), printed first when verbose (`parallel_execute`).
///
/// The targets read as ipyparallel prints the evaluated `--targets`: `all`; one id or index as
/// written (`0`, `-1`); a list as a Python list (`[0, 2]`, `[0]`); a slice as the ids it
/// selected (`engines`), lists longer than ten abbreviated `[0, 1, 2, 3, ..., 8, 9, 10, 11]`.
/// (ipyparallel prints `--targets 0,2` as the tuple `(0, 2)`; we print `[0, 2]`.)
pub fn execution_notice(block: bool, targets: &Targets, engines: &[u32]) -> Emit {
    let base = if block { "Parallel" } else { "Async parallel" };
    let shown = match targets {
        Targets::All => "all".to_string(),
        Targets::One(id) => id.to_string(),
        Targets::Ids(ids) => python_list(ids),
        Targets::Slice { .. } => python_list(engines),
    };
    stdout(format!("{base} execution on engine(s): {shown}\n"))
}

/// `%autopx enabled` / `%autopx disabled`.
pub fn autopx_notice(enabled: bool) -> Emit {
    stdout(format!(
        "%autopx {}\n",
        if enabled { "enabled" } else { "disabled" }
    ))
}

/// `Received Keyboard Interrupt. Sending signal SIGINT to engines...` on stderr.
pub fn interrupt_notice(signal: &Signal) -> Emit {
    Emit::Stream {
        name: StreamName::Stderr,
        text: format!("Received Keyboard Interrupt. Sending signal {signal} to engines...\n"),
    }
}

/// The cell's `execute_result` for a non-blocking `%%px`: [`PENDING_RESULT`].
pub fn pending_result() -> Emit {
    Emit::ExecuteResult {
        data: text_bundle(PENDING_RESULT),
        metadata: Json::new(),
    }
}

/// Why an engine did not run (or finish) a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The engine was interrupted (e.g. the previous cell's Ctrl-C) while this request waited.
    Interrupted,
    /// An earlier request failed, and the engine kernel dropped the requests queued after it
    /// (ipykernel's `stop_on_error`).
    EarlierError,
    /// The engine died or was stopped before it finished.
    EngineStopped,
    /// Anything else, said in words.
    Other(String),
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Interrupted => {
                f.write_str("the engine was interrupted before it ran this cell")
            }
            AbortReason::EarlierError => f.write_str(
                "an earlier cell failed on this engine, which skips the cells queued behind it",
            ),
            AbortReason::EngineStopped => {
                f.write_str("the engine stopped before it finished this cell")
            }
            AbortReason::Other(why) => f.write_str(why),
        }
    }
}

/// Our improvement on ipyparallel, which shows nothing for an aborted request:
/// `[2:execute] aborted: the engine was interrupted before it ran this cell` on stderr, one
/// line per engine.
pub fn aborted_notice(engine: u32, reason: &AbortReason) -> Emit {
    Emit::Stream {
        name: StreamName::Stderr,
        text: format!("[{engine}:execute] aborted: {reason}\n"),
    }
}

/// The progress line of a blocking `%px` still running after `--progress-after` seconds:
/// `%px: 1/4 engines done`.
///
/// Our choice (ipyparallel draws a tqdm bar, `%px: 25%|██▌ | 1/4 [00:02<00:06, 2.0s/tasks]`,
/// which is noise in a saved notebook): one plain line, published first as `display_data` with
/// `display_id` and then updated in place (`update: true`) as engines finish. Once all are
/// done the kernel empties it, so the line disappears from the notebook.
pub fn progress(display_id: &str, done: usize, total: usize, update: bool) -> Emit {
    let data = text_bundle(progress_text(done, total));
    if update {
        Emit::UpdateDisplayData {
            data,
            metadata: Json::new(),
            display_id: display_id.to_string(),
        }
    } else {
        Emit::DisplayData {
            data,
            metadata: Json::new(),
            display_id: Some(display_id.to_string()),
        }
    }
}

/// `%px: 1/4 engines done` (`engine done` for a single engine).
pub fn progress_text(done: usize, total: usize) -> String {
    let noun = if total == 1 { "engine" } else { "engines" };
    format!("%px: {done}/{total} {noun} done")
}

fn stdout(text: String) -> Emit {
    Emit::Stream {
        name: StreamName::Stdout,
        text,
    }
}

/// Python's `str(list)`, abbreviated past ten items as `parallel_execute` does.
fn python_list<T: ToString>(items: &[T]) -> String {
    let s = |xs: &[T]| xs.iter().map(T::to_string).collect::<Vec<_>>().join(", ");
    if items.len() > 10 {
        format!(
            "[{}, ..., {}]",
            s(&items[..4]),
            s(&items[items.len() - 4..])
        )
    } else {
        format!("[{}]", s(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_lists() {
        assert_eq!(python_list::<u32>(&[]), "[]");
        assert_eq!(python_list(&[0, 2]), "[0, 2]");
        let ten: Vec<u32> = (0..10).collect();
        assert_eq!(python_list(&ten), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]");
        let twelve: Vec<u32> = (0..12).collect();
        assert_eq!(python_list(&twelve), "[0, 1, 2, 3, ..., 8, 9, 10, 11]");
    }
}
