//! How a failed parallel step fails the cell (ipyparallel's `ipyparallel/error.py`).
//!
//! - Not streamed: `CompositeError`, whose traceback lists up to four engines' tracebacks
//!   (`CompositeError.render_traceback`) and whose message names each engine's error
//!   (`CompositeError.__str__`).
//! - Streamed: the tracebacks were already written to stderr as they came
//!   ([`crate::StreamRenderer`]); the cell fails with the short `AlreadyDisplayedError`.
//!
//! Every engine traceback passes through [`crate::user_frames`] first.

use crate::output::{EngineError, ErrorContent};
use crate::traceback::{python_splitlines, user_frames};

/// How many tracebacks a composite error draws (`CompositeError.tb_limit`).
pub const TRACEBACK_LIMIT: usize = 4;

/// The name ipyparallel gives the `%px` call in error messages (`result._fname = "%px"`).
pub const PX_FNAME: &str = "%px";

/// The method label of a `%px` request (`[0:execute]`).
pub const EXECUTE_METHOD: &str = "execute";

/// The cell's error when `errors` were not streamed: ipyparallel's `CompositeError`.
///
/// - `ename`: `CompositeError`.
/// - `evalue`: `one or more exceptions raised in: %px`, then a line
///   `[0:execute]ZeroDivisionError: division by zero` per engine (at most four), then
///   `.... N more exceptions ...` (four dots, as ipyparallel writes it) for the rest.
/// - `traceback`: per engine (at most four) `[0:execute]:`, its traceback lines, a blank line;
///   then `... N more exceptions ...`.
///
/// Engines are listed in id order.
pub fn composite_error(errors: &[EngineError]) -> ErrorContent {
    let mut sorted: Vec<&EngineError> = errors.iter().collect();
    sorted.sort_by_key(|e| e.engine);
    let more = sorted.len().saturating_sub(TRACEBACK_LIMIT);
    let mut evalue = format!("one or more exceptions raised in: {PX_FNAME}");
    let mut traceback = Vec::new();
    for e in sorted.iter().take(TRACEBACK_LIMIT) {
        let label = engine_label(e.engine);
        evalue.push_str(&format!("\n{label}{}: {}", e.ename, e.evalue));
        traceback.push(format!("{label}:"));
        traceback.extend(traceback_lines(&e.traceback));
        traceback.push(String::new());
    }
    if more > 0 {
        evalue.push_str(&format!("\n.... {more} more exceptions ..."));
        traceback.push(format!("... {more} more exceptions ..."));
    }
    ErrorContent {
        ename: "CompositeError".into(),
        evalue,
        traceback,
    }
}

/// The cell's error after streamed errors: `AlreadyDisplayedError` with `N errors` as message
/// and only traceback line. ipyparallel writes `errors` even for one (`1 errors`).
pub fn already_displayed_error(n: usize) -> ErrorContent {
    let text = format!("{n} errors");
    ErrorContent {
        ename: "AlreadyDisplayedError".into(),
        evalue: text.clone(),
        traceback: vec![text],
    }
}

/// One engine's error as ipyparallel raises it for a run on that engine alone: `RemoteError`,
/// `evalue` `[0:execute] ZeroDivisionError: division by zero` (`str(RemoteError)`), the
/// engine's traceback.
pub fn remote_error(error: &EngineError) -> ErrorContent {
    ErrorContent {
        ename: "RemoteError".into(),
        evalue: format!(
            "{} {}: {}",
            engine_label(error.engine),
            error.ename,
            error.evalue
        ),
        traceback: traceback_lines(&error.traceback),
    }
}

/// The cell's error for a finished step, if any engine failed: [`remote_error`] for a step on
/// one engine named alone (`single`), else [`already_displayed_error`] when the errors were
/// streamed and [`composite_error`] otherwise.
pub fn final_error(errors: &[EngineError], streamed: bool, single: bool) -> Option<ErrorContent> {
    if errors.is_empty() {
        None
    } else if let ([error], true) = (errors, single) {
        Some(remote_error(error))
    } else if streamed {
        Some(already_displayed_error(errors.len()))
    } else {
        Some(composite_error(errors))
    }
}

/// `[0:execute]` (`RemoteError._get_engine_str`).
pub(crate) fn engine_label(engine: u32) -> String {
    format!("[{engine}:{EXECUTE_METHOD}]")
}

/// An engine's traceback as ipyparallel shows it: the elements joined with newlines and split
/// into lines (`RemoteError.traceback.splitlines()`), user frames only;
/// `No traceback available` when empty.
pub(crate) fn traceback_lines(traceback: &[String]) -> Vec<String> {
    let joined = user_frames(traceback).join("\n");
    if joined.is_empty() {
        vec!["No traceback available".into()]
    } else {
        python_splitlines(&joined)
    }
}
