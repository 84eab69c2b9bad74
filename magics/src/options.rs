//! The options of `%%px`, `%pxconfig`, `%pxresult` and `%cluster`, and the defaults they set.
//!
//! Names, short forms and defaults follow ipyparallel 9 (`ipyparallel/client/magics.py`:
//! `exec_args`, `output_args`, `ParallelMagics` class attributes). `%px` (the line form) takes no
//! options: it runs with the [`PxConfig`] defaults.

use std::fmt;

use crate::args::{parse_options, Found, OptSpec};
use crate::error::MagicError;
use crate::targets::Targets;

/// How non-streamed output of several engines is ordered (`--group-outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// All stdout, then all stderr, then each engine's displays, then all results (default).
    #[default]
    Type,
    /// Engine by engine: stdout, stderr, displays and result of engine 0, then engine 1, ...
    Engine,
    /// Like `Type`, but displays interleaved: each engine's first, then each one's second, ...
    Order,
}

impl GroupBy {
    /// Parses `engine`, `order` or `type`.
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "type" => Some(GroupBy::Type),
            "engine" => Some(GroupBy::Engine),
            "order" => Some(GroupBy::Order),
            _ => None,
        }
    }
}

/// A signal to send to the engines when the user interrupts a blocking `%px`.
///
/// Parsed from a name (`SIGINT`, `INT`, `sigterm`) or a number (`2`, `0` = send nothing useful,
/// as ipyparallel documents). Numbers are the Linux ones; engines on other systems should send
/// by [`Signal::name`] where there is one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    number: i32,
    label: String,
}

/// Signals known by name, with their Linux numbers.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGABRT", 6),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
];

impl Signal {
    /// SIGINT, the default (ipyparallel's `signal_on_interrupt = "SIGINT"`).
    pub fn sigint() -> Signal {
        Signal {
            number: 2,
            label: "SIGINT".into(),
        }
    }

    /// Parses a signal name (with or without `SIG`, any case) or a number from 0 to 64.
    pub fn parse(text: &str) -> Option<Signal> {
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let number: i32 = t.parse().ok().filter(|n| (0..=64).contains(n))?;
            return Some(Signal {
                number,
                label: number.to_string(),
            });
        }
        let upper = t.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, number)| Signal {
                number: *number,
                label: (*n).to_string(),
            })
    }

    /// The signal's number (Linux numbering).
    pub fn number(&self) -> i32 {
        self.number
    }

    /// The canonical name (`SIGINT`), when the number has one in our table.
    pub fn name(&self) -> Option<&'static str> {
        SIGNALS
            .iter()
            .find(|(_, n)| *n == self.number)
            .map(|(name, _)| *name)
    }
}

impl Default for Signal {
    fn default() -> Signal {
        Signal::sigint()
    }
}

impl fmt::Display for Signal {
    /// As the user gave it, normalised: `SIGINT` for `int`, `2` for `2` (ipyparallel prints the
    /// value as given in `Sending signal 2 to engines...`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// The kernel's current `%px` defaults, as `%pxconfig` and `%autopx` leave them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PxConfig {
    /// Default targets (`all`).
    pub targets: Targets,
    /// Wait for the engines (`true`; ipyparallel's `Client.activate` sets `view.block = True`).
    pub block: bool,
    /// Print `Parallel execution on engine(s): ...` before each run (`false`).
    pub verbose: bool,
    /// Show engine output as it arrives (`true`).
    pub stream: bool,
    /// Seconds to wait before showing progress; negative: never, 0: at once (`2.0`).
    pub progress_after: f64,
    /// Signal sent to the engines when the user interrupts (`SIGINT`).
    pub signal_on_interrupt: Signal,
    /// Whether `%autopx` is on: every cell runs on the engines (`false`).
    pub autopx: bool,
}

impl Default for PxConfig {
    fn default() -> PxConfig {
        PxConfig {
            targets: Targets::All,
            block: true,
            verbose: false,
            stream: true,
            progress_after: 2.0,
            signal_on_interrupt: Signal::sigint(),
            autopx: false,
        }
    }
}

impl PxConfig {
    /// Applies a `%pxconfig` change.
    pub fn apply(&mut self, change: &PxConfigChange) {
        if let Some(t) = &change.targets {
            self.targets = t.clone();
        }
        if let Some(b) = change.block {
            self.block = b;
        }
        if let Some(v) = change.verbose {
            self.verbose = v;
        }
        if let Some(s) = change.stream {
            self.stream = s;
        }
        if let Some(p) = change.progress_after {
            self.progress_after = p;
        }
        if let Some(sig) = &change.signal_on_interrupt {
            self.signal_on_interrupt = sig.clone();
        }
    }

    /// The options a `%px` line (or an `%autopx` cell) runs with.
    pub fn px_options(&self) -> PxOptions {
        PxOptions {
            targets: self.targets.clone(),
            block: self.block,
            group_outputs: GroupBy::Type,
            stream: self.stream,
            local: false,
            out: None,
            verbose: self.verbose,
            progress_after: self.progress_after,
            signal_on_interrupt: self.signal_on_interrupt.clone(),
        }
    }
}

/// Everything a parallel step runs with: the cell's `%%px` options over the config's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PxOptions {
    /// Engines to run on.
    pub targets: Targets,
    /// Wait for the result. When false, the cell's result is `<AsyncResult(%px): pending>` and
    /// `%pxresult` shows the output later.
    pub block: bool,
    /// Order of non-streamed output.
    pub group_outputs: GroupBy,
    /// Show output as it arrives; otherwise grouped once all engines are done.
    pub stream: bool,
    /// Also run the cell in the local kernel. ipyparallel submits to the engines without
    /// blocking, runs the cell locally (local output first), then, if blocking, waits and shows
    /// the engines' output grouped (not streamed).
    pub local: bool,
    /// Name under which to keep the result handle in the local namespace (`--out`).
    pub out: Option<String>,
    /// Print `Parallel execution on engine(s): ...` first.
    pub verbose: bool,
    /// Seconds before a progress line appears; negative: never, 0: at once.
    pub progress_after: f64,
    /// Signal sent to the engines on interrupt.
    pub signal_on_interrupt: Signal,
}

/// A `%pxconfig` line: the defaults it changes (`None`: unchanged).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PxConfigChange {
    /// `--targets T`.
    pub targets: Option<Targets>,
    /// `--block` / `--noblock`.
    pub block: Option<bool>,
    /// `--verbose` / `--no-verbose`.
    pub verbose: Option<bool>,
    /// `--stream` / `--no-stream`.
    pub stream: Option<bool>,
    /// `--progress-after S`.
    pub progress_after: Option<f64>,
    /// `--signal-on-interrupt SIG`.
    pub signal_on_interrupt: Option<Signal>,
}

/// A `%pxresult` line: how to show the last non-blocking run.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ResultOptions {
    /// Order of the output.
    pub group_outputs: GroupBy,
    /// Store the result handle under this name instead of showing it (as ipyparallel does).
    pub out: Option<String>,
}

/// A `%cluster` command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCommand {
    /// `%cluster start [-n N] [--keep]`: start a cluster for this kernel's profile.
    Start {
        /// Number of engines; `None`: the launcher's default.
        engines: Option<u32>,
        /// Leave it running when the kernel shuts down (otherwise the kernel stops it then; a
        /// restart keeps it).
        keep: bool,
    },
    /// `%cluster stop`.
    Stop,
    /// `%cluster status`.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Targets,
    Block,
    NoBlock,
    GroupOutputs,
    ByEngine,
    ByOrder,
    Stream,
    NoStream,
    Local,
    Out,
    Verbose,
    NoVerbose,
    ProgressAfter,
    Signal,
    Engines,
    Keep,
}

const fn spec(
    long: &'static str,
    short: Option<char>,
    value: Option<&'static str>,
    key: Key,
) -> OptSpec<Key> {
    OptSpec {
        long,
        short,
        value,
        key,
    }
}

const TARGETS_VALUE: &str = "all, an engine id, a list like 0,2 or a slice like 1:3";
const GROUP_VALUE: &str = "engine, order or type";
const OUT_VALUE: &str = "a Python name";
const SECONDS_VALUE: &str = "seconds, e.g. 2 or 0.5, at most 1e9; -1 for never";
/// The longest `--progress-after` (about 31 years): the kernel adds the delay to a clock reading,
/// so `inf` or `1e20` would overflow it (found by the `magics` fuzz target).
const MAX_PROGRESS_AFTER: f64 = 1e9;
const SIGNAL_VALUE: &str = "a signal name like SIGINT or SIGTERM, or a number";

const EXEC_OPTIONS: [OptSpec<Key>; 10] = [
    spec("targets", Some('t'), Some(TARGETS_VALUE), Key::Targets),
    spec("block", Some('b'), None, Key::Block),
    spec("noblock", Some('a'), None, Key::NoBlock),
    spec("stream", None, None, Key::Stream),
    spec("no-stream", None, None, Key::NoStream),
    spec("verbose", None, None, Key::Verbose),
    spec("no-verbose", None, None, Key::NoVerbose),
    spec(
        "progress-after",
        None,
        Some(SECONDS_VALUE),
        Key::ProgressAfter,
    ),
    spec("signal-on-interrupt", None, Some(SIGNAL_VALUE), Key::Signal),
    spec("local", None, None, Key::Local),
];

const OUTPUT_OPTIONS: [OptSpec<Key>; 4] = [
    spec("group-outputs", None, Some(GROUP_VALUE), Key::GroupOutputs),
    spec("", Some('e'), None, Key::ByEngine),
    spec("", Some('r'), None, Key::ByOrder),
    spec("out", Some('o'), Some(OUT_VALUE), Key::Out),
];

fn px_table() -> Vec<OptSpec<Key>> {
    EXEC_OPTIONS
        .iter()
        .chain(OUTPUT_OPTIONS.iter())
        .copied()
        .collect()
}

fn pxconfig_table() -> Vec<OptSpec<Key>> {
    // `--local` is a per-cell option only.
    EXEC_OPTIONS
        .iter()
        .filter(|s| s.key != Key::Local)
        .copied()
        .collect()
}

const PXRESULT_TABLE: [OptSpec<Key>; 4] = OUTPUT_OPTIONS;

const CLUSTER_START_TABLE: [OptSpec<Key>; 2] = [
    spec(
        "engines",
        Some('n'),
        Some("a number of engines"),
        Key::Engines,
    ),
    spec("keep", None, None, Key::Keep),
];

fn bad_value(magic: &str, f: &Found<Key>, value: &str, expected: &str) -> MagicError {
    MagicError::BadValue {
        magic: magic.to_string(),
        option: f.written.clone(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// What one option line sets; shared by `%%px` and `%pxconfig`.
#[derive(Default)]
struct Settings {
    change: PxConfigChange,
    group: Option<GroupBy>,
    local: bool,
    out: Option<String>,
}

fn collect(magic: &str, found: Vec<Found<Key>>) -> Result<Settings, MagicError> {
    let mut s = Settings::default();
    for f in found {
        let value = f.value.clone().unwrap_or_default();
        match f.key {
            Key::Targets => {
                let t = Targets::parse(&value).map_err(|e| match e {
                    MagicError::BadTargets { reason, .. } => {
                        bad_value(magic, &f, &value, &format!("{reason}; use {TARGETS_VALUE}"))
                    }
                    other => other,
                })?;
                s.change.targets = Some(t);
            }
            Key::Block => s.change.block = Some(true),
            Key::NoBlock => s.change.block = Some(false),
            Key::Stream => s.change.stream = Some(true),
            Key::NoStream => s.change.stream = Some(false),
            Key::Verbose => s.change.verbose = Some(true),
            Key::NoVerbose => s.change.verbose = Some(false),
            Key::ProgressAfter => {
                let secs: f64 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v <= MAX_PROGRESS_AFTER)
                    .ok_or_else(|| bad_value(magic, &f, &value, SECONDS_VALUE))?;
                s.change.progress_after = Some(secs);
            }
            Key::Signal => {
                let sig = Signal::parse(&value)
                    .ok_or_else(|| bad_value(magic, &f, &value, SIGNAL_VALUE))?;
                s.change.signal_on_interrupt = Some(sig);
            }
            Key::GroupOutputs => {
                let g = GroupBy::parse(&value)
                    .ok_or_else(|| bad_value(magic, &f, &value, GROUP_VALUE))?;
                s.group = Some(g);
            }
            Key::ByEngine => s.group = Some(GroupBy::Engine),
            Key::ByOrder => s.group = Some(GroupBy::Order),
            Key::Local => s.local = true,
            Key::Out => {
                if !is_python_name(&value) {
                    return Err(bad_value(magic, &f, &value, OUT_VALUE));
                }
                s.out = Some(value);
            }
            Key::Engines | Key::Keep => {}
        }
    }
    Ok(s)
}

/// Parses the options on a `%%px` line over the `config` defaults.
pub(crate) fn parse_px_options(line: &str, config: &PxConfig) -> Result<PxOptions, MagicError> {
    let magic = "%%px";
    let found = parse_options(
        magic,
        line,
        &px_table(),
        "%%px takes only options; code goes on the next lines",
    )?;
    let s = collect(magic, found)?;
    let mut base = config.clone();
    base.apply(&s.change);
    let mut options = base.px_options();
    options.group_outputs = s.group.unwrap_or_default();
    options.local = s.local;
    options.out = s.out;
    Ok(options)
}

/// Parses a `%pxconfig` line.
pub(crate) fn parse_pxconfig(line: &str) -> Result<PxConfigChange, MagicError> {
    let magic = "%pxconfig";
    let found = parse_options(
        magic,
        line,
        &pxconfig_table(),
        "%pxconfig takes only options",
    )?;
    Ok(collect(magic, found)?.change)
}

/// Parses a `%pxresult` line.
pub(crate) fn parse_pxresult(line: &str) -> Result<ResultOptions, MagicError> {
    let magic = "%pxresult";
    let found = parse_options(magic, line, &PXRESULT_TABLE, "%pxresult takes only options")?;
    let s = collect(magic, found)?;
    Ok(ResultOptions {
        group_outputs: s.group.unwrap_or_default(),
        out: s.out,
    })
}

/// Parses a `%cluster` line: `start [-n N]`, `stop` or `status`.
pub(crate) fn parse_cluster(line: &str) -> Result<ClusterCommand, MagicError> {
    let magic = "%cluster";
    let trimmed = line.trim_start();
    let (sub, rest) = trimmed
        .split_once(char::is_whitespace)
        .unwrap_or((trimmed, ""));
    let no_args = |cmd: ClusterCommand, name: &str| -> Result<ClusterCommand, MagicError> {
        match crate::args::split_words(magic, rest)?.first() {
            None => Ok(cmd),
            Some(word) => Err(MagicError::UnexpectedArgument {
                magic: magic.to_string(),
                argument: word.clone(),
                hint: format!("%cluster {name} takes no arguments"),
            }),
        }
    };
    match sub {
        "start" => {
            let found =
                parse_options(magic, rest, &CLUSTER_START_TABLE, "use %cluster start -n N")?;
            let mut engines = None;
            let mut keep = false;
            for f in found {
                if f.key == Key::Keep {
                    keep = true;
                    continue;
                }
                let value = f.value.clone().unwrap_or_default();
                let n: u32 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad_value(magic, &f, &value, "a positive number of engines"))?;
                engines = Some(n);
            }
            Ok(ClusterCommand::Start { engines, keep })
        }
        "stop" => no_args(ClusterCommand::Stop, "stop"),
        "status" => no_args(ClusterCommand::Status, "status"),
        "" => Err(MagicError::UnexpectedArgument {
            magic: magic.to_string(),
            argument: String::new(),
            hint: "use %cluster start -n N, %cluster stop or %cluster status".into(),
        }),
        other => Err(MagicError::UnexpectedArgument {
            magic: magic.to_string(),
            argument: other.to_string(),
            hint: "use %cluster start -n N, %cluster stop or %cluster status".into(),
        }),
    }
}

const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Whether `s` can be assigned to in Python (`--out` names a variable in the local namespace).
fn is_python_name(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic());
    first_ok && chars.all(|c| c == '_' || c.is_alphanumeric()) && !PYTHON_KEYWORDS.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        let cases: &[(&str, Option<(i32, &str)>)] = &[
            ("SIGINT", Some((2, "SIGINT"))),
            ("INT", Some((2, "SIGINT"))),
            ("sigterm", Some((15, "SIGTERM"))),
            ("KILL", Some((9, "SIGKILL"))),
            ("9", Some((9, "9"))),
            ("0", Some((0, "0"))),
            ("64", Some((64, "64"))),
            ("65", None),
            ("-2", None),
            ("SIGFOO", None),
            ("", None),
        ];
        for (text, want) in cases {
            let got = Signal::parse(text).map(|s| (s.number(), s.to_string()));
            let want = want.map(|(n, l)| (n, l.to_string()));
            assert_eq!(got, want, "{text:?}");
        }
        assert_eq!(Signal::parse("9").and_then(|s| s.name()), Some("SIGKILL"));
        assert_eq!(Signal::default().to_string(), "SIGINT");
    }

    #[test]
    fn progress_after_refuses_delays_a_clock_cannot_hold() {
        // The `magics` fuzz target's crash: a delay past `u64::MAX` seconds panicked the kernel
        // in `Duration::from_secs_f64`; `inf` too, and a smaller one overflowed `Instant + d`.
        let config = PxConfig::default();
        for value in [
            "inf",
            "infinity",
            "-inf",
            "NaN",
            "1e400",
            "1e20",
            "9.3e18",
            "1000000001",
        ] {
            let error =
                parse_px_options(&format!(" --progress-after {value}"), &config).expect_err(value);
            assert!(error.to_string().contains("bad value"), "{value}: {error}");
        }
        // The fuzzer's input itself (`--p` abbreviates `--progress-after`).
        let cell = include_str!("../tests/data/fuzz-magics-progress-after-overflow.txt");
        assert!(crate::parse_cell(cell, &config).is_err());
        for (value, secs) in [("1e9", 1e9), ("-1e300", -1e300), ("0", 0.0), ("2.5", 2.5)] {
            let options =
                parse_px_options(&format!(" --progress-after {value}"), &config).expect(value);
            assert_eq!(options.progress_after, secs, "{value}");
        }
    }

    #[test]
    fn python_names() {
        for ok in ["ar", "_x", "résultat", "a1"] {
            assert!(is_python_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "class", "None", "--block"] {
            assert!(!is_python_name(bad), "{bad}");
        }
    }
}
