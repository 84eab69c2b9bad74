//! The one error type of this crate: a magic line that does not parse, or targets that match no
//! engine.
//!
//! Every message is one line, lower-case after the magic's name, and names what was wrong and
//! what would have been accepted, so the kernel can show it to the user as is. IPython shows a
//! bad magic as `UsageError: <message>` on stderr and fails the cell without a traceback;
//! [`MagicError::stderr_text`] and [`MagicError::ename`] give the kernel those two pieces.

/// Why a cell's magics could not be turned into a plan, or targets into engine ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagicError {
    /// An option the magic does not have.
    #[error("{magic}: unknown option {option} (options: {valid})")]
    UnknownOption {
        /// The magic as written, e.g. `%%px`.
        magic: String,
        /// The option as written.
        option: String,
        /// The options the magic accepts, comma-separated.
        valid: String,
    },
    /// An abbreviated long option that fits more than one option.
    #[error("{magic}: ambiguous option {option} (could be {candidates})")]
    AmbiguousOption {
        /// The magic as written.
        magic: String,
        /// The option as written.
        option: String,
        /// The options it could stand for, comma-separated.
        candidates: String,
    },
    /// An option that needs a value came last.
    #[error("{magic}: option {option} needs a value ({expected})")]
    MissingValue {
        /// The magic as written.
        magic: String,
        /// The option as written.
        option: String,
        /// What the value should look like.
        expected: String,
    },
    /// An option whose value does not parse.
    #[error("{magic}: bad value {value:?} for {option} ({expected})")]
    BadValue {
        /// The magic as written.
        magic: String,
        /// The option as written.
        option: String,
        /// The value as written.
        value: String,
        /// What the value should look like.
        expected: String,
    },
    /// An option that takes no value was given one (`--block=yes`).
    #[error("{magic}: option {option} takes no value")]
    UnexpectedValue {
        /// The magic as written.
        magic: String,
        /// The option as written.
        option: String,
    },
    /// A word that is not an option where only options are allowed.
    #[error("{magic}: unexpected argument {argument:?} ({hint})")]
    UnexpectedArgument {
        /// The magic as written.
        magic: String,
        /// The word as written.
        argument: String,
        /// What the magic takes instead.
        hint: String,
    },
    /// A quote opened on the magic's line and never closed.
    #[error("{magic}: unclosed {quote} quote")]
    UnclosedQuote {
        /// The magic as written.
        magic: String,
        /// The quote character.
        quote: char,
    },
    /// A `--targets` value that is not `all`, an int, a list of ints or a slice.
    #[error("bad targets {text:?}: {reason} (use all, 0, -1, 0,2, [0,2], 1:3, ::2)")]
    BadTargets {
        /// The targets as written.
        text: String,
        /// What is wrong with them.
        reason: String,
    },
    /// Targets named an engine id that is not registered.
    #[error("no engine {id} (engines: {engines})")]
    NoSuchEngine {
        /// The id asked for.
        id: i64,
        /// The live engine ids, comma-separated.
        engines: String,
    },
    /// A negative index past the start of the engine list.
    #[error("no engine at index {index} (engines: {engines})")]
    IndexOutOfRange {
        /// The index asked for.
        index: i64,
        /// The live engine ids, comma-separated.
        engines: String,
    },
    /// Targets that select no engine at all (an empty list, or a slice past the end).
    #[error("no engines match targets {targets} (engines: {engines})")]
    NoEnginesMatch {
        /// The targets, as [`crate::Targets`] displays them.
        targets: String,
        /// The live engine ids, comma-separated.
        engines: String,
    },
    /// Targets resolved while no engine is registered.
    #[error("no engines are registered (start some with %cluster start -n N)")]
    NoEngines,
}

impl MagicError {
    /// The exception name the kernel reports in its `execute_reply`: `UsageError` (as IPython
    /// reports a magic's bad arguments), or `NoEnginesRegistered` (ipyparallel's name) when no
    /// engine exists.
    pub fn ename(&self) -> &'static str {
        match self {
            MagicError::NoEngines => "NoEnginesRegistered",
            _ => "UsageError",
        }
    }

    /// What IPython writes to stderr for a failed magic: `UsageError: <message>` and a newline
    /// (observed with ipyparallel 9.2 for `%%px --foo`). IPython publishes no `error` message
    /// for a `UsageError`; the reply alone carries the status.
    pub fn stderr_text(&self) -> String {
        format!("{}: {self}\n", self.ename())
    }
}

/// Joins engine ids the way error messages show them: `0, 1, 2`.
pub(crate) fn id_list(ids: &[u32]) -> String {
    let parts: Vec<String> = ids.iter().map(u32::to_string).collect();
    parts.join(", ")
}
