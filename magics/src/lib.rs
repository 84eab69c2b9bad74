//! Parallel magics: from a cell's text to a plan, and from engine outputs to notebook blocks.
//!
//! This crate is pure: text in, structured values out; no I/O, no processes, no async. The
//! parallax kernel calls [`parse_cell`] for every `execute_request`, runs the resulting
//! [`Plan`]'s steps in order (local code to its local kernel, parallel code to the engines),
//! and feeds what the engines send back, as [`EngineOutput`]s, to a [`StreamRenderer`] (the
//! default) or to [`render_grouped`] (`--no-stream`, `%pxresult`). Both return [`Emit`]s: the
//! iopub messages to publish, already shaped the way ipyparallel 9 shows them, so notebooks
//! written for ipyparallel look the same. Where ipyparallel is silent or noisy we do better:
//! [`aborted_notice`] says why an engine skipped a request, [`user_frames`] drops the
//! machinery's frames from tracebacks, [`progress`] is a plain progress line.
//!
//! Every format here was checked against ipyparallel 9.2 running in ipykernel 7.4 / IPython 9
//! (the messages it published were recorded) and its source; each function's doc names the
//! ipyparallel function it follows.
//!
//! # Layout
//!
//! - `parse`: [`parse_cell`], cell → [`Plan`] of [`Step`]s, and the Python-aware line scanner that
//!   decides which lines are top-level magics.
//! - `options`: the option tables of `%%px`, `%pxconfig`, `%pxresult`, `%cluster`; [`PxConfig`]
//!   (the kernel's defaults), [`PxOptions`], [`GroupBy`], [`Signal`].
//! - `args`: shell-like splitting of a magic's line and the table-driven option parser.
//! - `targets`: the [`Targets`] grammar and its resolution against live engine ids.
//! - `output`: [`EngineOutput`] in, [`Emit`] out, [`ErrorContent`]; `Out[0:9]:` and
//!   `[output:0]` shapes shared by both renderers.
//! - `stream`: [`StreamRenderer`], output as it arrives.
//! - `grouped`: [`render_grouped`], output all at once by type, engine or order.
//! - `errors`: [`composite_error`], [`already_displayed_error`], [`remote_error`],
//!   [`final_error`].
//! - `traceback`: [`user_frames`], tracebacks without internal frames.
//! - `notices`: verbose, `%autopx`, interrupt, pending, aborted and progress messages.
//! - `error`: [`MagicError`], the crate's one error type.
//! - `fuzzing` (tests and the `fuzzing` feature only): the checks of the fuzz targets in `fuzz/`.

#![warn(missing_docs)]

mod args;
mod error;
mod errors;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing;
mod grouped;
mod notices;
mod options;
mod output;
mod parse;
mod stream;
mod targets;
mod traceback;

pub use error::MagicError;
pub use errors::{
    already_displayed_error, composite_error, final_error, remote_error, EXECUTE_METHOD, PX_FNAME,
    TRACEBACK_LIMIT,
};
pub use grouped::{render_grouped, render_grouped_with};
pub use notices::{
    aborted_notice, autopx_notice, execution_notice, interrupt_notice, pending_result, progress,
    progress_text, AbortReason, NO_LAST_RESULT, PENDING_RESULT,
};
pub use options::{
    ClusterCommand, GroupBy, PxConfig, PxConfigChange, PxOptions, ResultOptions, Signal,
};
pub use output::{
    Emit, EngineError, EngineOutput, ErrorContent, Json, OutputKind, RenderStyle, StreamName,
};
pub use parse::{has_parallel_magic, parse_cell, ParallelStep, Plan, Step, PARALLEL_MAGICS};
pub use stream::StreamRenderer;
pub use targets::Targets;
pub use traceback::{
    python_splitlines, strip_ansi, user_frames, INTERNAL_PACKAGES, NO_SOURCE_NOISE,
};
