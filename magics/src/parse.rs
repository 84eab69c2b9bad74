//! From a cell's text to a [`Plan`]: which parts run locally, which on the engines, and which
//! change the kernel's state.
//!
//! A line magic counts only at the start of a top-level line: unindented, and not inside a
//! string, brackets, or a backslash continuation. A light Python scanner tracks those, so
//! `s = """\n%px x\n"""` stays local code. `%%px` counts only on the first line of the cell
//! (leading blank lines allowed, as IPython strips them); any other cell magic on the first
//! line (`%%time`) owns the whole cell, which then goes to the local kernel untouched.

use crate::error::MagicError;
use crate::options::{
    parse_cluster, parse_px_options, parse_pxconfig, parse_pxresult, ClusterCommand, PxConfig,
    PxConfigChange, PxOptions, ResultOptions,
};

/// The magics Parallax serves itself rather than passing to the local kernel. `result` is
/// ipyparallel's legacy alias of `pxresult`.
pub const PARALLEL_MAGICS: &[&str] = &["px", "autopx", "pxresult", "result", "pxconfig", "cluster"];

/// What to do for one cell, in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The steps, run one after the other; the cell stops at the first that fails.
    pub steps: Vec<Step>,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Code for the local kernel. A cell without parallel magics is one `Local` step holding
    /// the cell byte for byte.
    Local(String),
    /// Code for the engines.
    Parallel(ParallelStep),
    /// `%pxconfig`: change the defaults.
    Config(PxConfigChange),
    /// `%autopx`: toggle the mode in which every cell runs on the engines. The kernel prints
    /// [`crate::autopx_notice`] and passes the new state in [`PxConfig::autopx`] from the next
    /// cell on.
    Autopx,
    /// `%pxresult` (or its legacy alias `%result`): show the last non-blocking run.
    Result(ResultOptions),
    /// `%cluster ...`.
    Cluster(ClusterCommand),
}

/// Code to run on the engines, and how.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParallelStep {
    /// The code, as the engines receive it.
    pub code: String,
    /// Targets, blocking, output grouping, ... (the `%%px` options over the config defaults).
    pub options: PxOptions,
}

/// Splits `code` into a plan under `config` (the kernel's `%pxconfig` defaults and `%autopx`
/// state).
///
/// - `%%px [options]` on the first line: the rest of the cell is one [`Step::Parallel`].
/// - `%px CODE` on a top-level line: a parallel step with the defaults; the line form takes no
///   options (as in ipyparallel, `%px --targets 0 x` sends `--targets 0 x` as code).
/// - `%pxconfig`, `%pxresult`, `%autopx`, `%cluster` lines: their steps.
/// - Other lines: runs of them become one [`Step::Local`] (or, with `%autopx` on, one
///   [`Step::Parallel`] with the defaults); runs of blank lines are dropped.
///
/// The `%autopx` state is read once for the whole cell: an `%autopx` line toggles it from the
/// next cell on.
pub fn parse_cell(code: &str, config: &PxConfig) -> Result<Plan, MagicError> {
    let lines = split_lines(code);
    let first = lines.iter().position(|l| !l.content.trim().is_empty());
    if let Some(i) = first {
        if let Some(after) = lines[i].content.trim_start().strip_prefix("%%") {
            let (name, rest) = magic_name(after);
            if name == "px" {
                let options = parse_px_options(rest, config)?;
                let body_start = lines[i].start + lines[i].full.len();
                let step = ParallelStep {
                    code: code[body_start..].to_string(),
                    options,
                };
                return Ok(Plan {
                    steps: vec![Step::Parallel(step)],
                });
            }
            // Another cell magic owns the cell.
            return Ok(single(code, config));
        }
    } else {
        // Nothing but whitespace: let the local kernel answer it as it would.
        return Ok(Plan {
            steps: vec![Step::Local(code.to_string())],
        });
    }

    let mut pieces: Vec<Piece> = Vec::new();
    let mut scanner = Scanner::default();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let top = scanner.at_top_level();
        let magic = if top {
            line.content
                .strip_prefix('%')
                .filter(|r| !r.starts_with('%'))
                .map(magic_name)
                .filter(|(name, _)| PARALLEL_MAGICS.contains(name))
        } else {
            None
        };
        match magic {
            Some((name, _)) => {
                let (args, consumed) = assemble_continued(&lines[i..]);
                let args = magic_name(args.strip_prefix('%').unwrap_or(&args))
                    .1
                    .to_string();
                i += consumed;
                pieces.push(Piece::Step(magic_step(name, &args, config)?));
            }
            None => {
                if top && line.content.starts_with(['%', '!']) {
                    // Other IPython escapes: opaque to the Python scanner.
                    scanner.continuation = line.content.trim_end().ends_with('\\');
                } else {
                    scanner.scan(line.content);
                }
                match pieces.last_mut() {
                    Some(Piece::Code { end, .. }) => *end = line.start + line.full.len(),
                    _ => pieces.push(Piece::Code {
                        start: line.start,
                        end: line.start + line.full.len(),
                    }),
                }
                i += 1;
            }
        }
    }

    if let [Piece::Code { start: 0, end }] = pieces.as_slice() {
        if *end == code.len() {
            return Ok(single(code, config));
        }
    }
    let mut steps = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match piece {
            Piece::Step(step) => steps.push(step),
            Piece::Code { start, end } => {
                let text = &code[start..end];
                if text.trim().is_empty() {
                    continue;
                }
                let text = strip_final_newline(text).to_string();
                steps.push(if config.autopx {
                    parallel(text, config)
                } else {
                    Step::Local(text)
                });
            }
        }
    }
    Ok(Plan { steps })
}

/// Whether `code` uses a parallel magic: `%%px` on its first line, or one of
/// [`PARALLEL_MAGICS`] at the start of a top-level line. Cells that do not can be proxied to
/// the local kernel untouched (unless `%autopx` is on).
pub fn has_parallel_magic(code: &str) -> bool {
    match parse_cell(code, &PxConfig::default()) {
        Ok(plan) => !matches!(plan.steps.as_slice(), [] | [Step::Local(_)]),
        // Only a parallel magic can fail to parse.
        Err(_) => true,
    }
}

enum Piece {
    Code { start: usize, end: usize },
    Step(Step),
}

fn single(code: &str, config: &PxConfig) -> Plan {
    let step = if config.autopx {
        parallel(code.to_string(), config)
    } else {
        Step::Local(code.to_string())
    };
    Plan { steps: vec![step] }
}

fn parallel(code: String, config: &PxConfig) -> Step {
    Step::Parallel(ParallelStep {
        code,
        options: config.px_options(),
    })
}

fn magic_step(name: &str, args: &str, config: &PxConfig) -> Result<Step, MagicError> {
    Ok(match name {
        "px" => parallel(args.trim().to_string(), config),
        "pxconfig" => Step::Config(parse_pxconfig(args)?),
        "pxresult" | "result" => Step::Result(parse_pxresult(args)?),
        "cluster" => Step::Cluster(parse_cluster(args)?),
        _ => {
            // `%autopx`: ipyparallel ignores anything after it; a word there is more likely a
            // mistake than a wish, so say so.
            if let Some(word) = crate::args::split_words("%autopx", args)?.first() {
                return Err(MagicError::UnexpectedArgument {
                    magic: "%autopx".into(),
                    argument: word.clone(),
                    hint: "%autopx takes no arguments; it toggles".into(),
                });
            }
            Step::Autopx
        }
    })
}

/// Splits `text` after a magic's `%`/`%%` into its name and the rest; the name must end at
/// whitespace or the end of the line (`%px(1)` is not `%px`).
fn magic_name(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    if rest.is_empty() || rest.starts_with(char::is_whitespace) {
        (name, rest)
    } else {
        ("", text)
    }
}

/// A magic line and the lines it continues onto with a trailing backslash, joined as IPython's
/// `assemble_continued_line` does; returns the text and how many lines it used.
fn assemble_continued(lines: &[Line<'_>]) -> (String, usize) {
    let mut parts = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let content = line.content.trim_end();
        match content.strip_suffix('\\') {
            Some(head) if n + 1 < lines.len() => parts.push(head.to_string()),
            _ => {
                parts.push(content.to_string());
                return (parts.join(" "), n + 1);
            }
        }
    }
    (parts.join(" "), lines.len())
}

fn strip_final_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

/// One line of the cell: where it starts, the line with its terminator, and without.
struct Line<'a> {
    start: usize,
    full: &'a str,
    content: &'a str,
}

fn split_lines(code: &str) -> Vec<Line<'_>> {
    let mut start = 0;
    code.split_inclusive('\n')
        .map(|full| {
            let content = strip_final_newline(full);
            let line = Line {
                start,
                full,
                content,
            };
            start += full.len();
            line
        })
        .collect()
}

/// Just enough of Python's tokenizer to know whether a line starts a new statement.
#[derive(Default)]
struct Scanner {
    /// Inside a triple-quoted string: its quote character.
    triple: Option<char>,
    /// Open brackets.
    depth: usize,
    /// The previous line ended with a backslash.
    continuation: bool,
}

impl Scanner {
    fn at_top_level(&self) -> bool {
        self.triple.is_none() && self.depth == 0 && !self.continuation
    }

    fn scan(&mut self, line: &str) {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        self.continuation = false;
        while i < chars.len() {
            if let Some(q) = self.triple {
                match chars[i] {
                    '\\' => i += 2,
                    c if c == q && chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) => {
                        self.triple = None;
                        i += 3;
                    }
                    _ => i += 1,
                }
                continue;
            }
            match chars[i] {
                '#' => return,
                q @ ('\'' | '"') => {
                    if chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                        self.triple = Some(q);
                        i += 3;
                        continue;
                    }
                    // A one-line string: skip to its end (or the end of the line).
                    i += 1;
                    while i < chars.len() && chars[i] != q {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                '(' | '[' | '{' => {
                    self.depth += 1;
                    i += 1;
                }
                ')' | ']' | '}' => {
                    self.depth = self.depth.saturating_sub(1);
                    i += 1;
                }
                '\\' if i + 1 == chars.len() => {
                    self.continuation = true;
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_parallel_magics() {
        let cases: &[(&str, bool)] = &[
            ("%px import numpy", true),
            ("%%px --targets 0\nprint(1)", true),
            ("\n%%px\nx", true),
            ("x = 5\n%px print(x)", true),
            ("%pxresult", true),
            ("%result", true),
            ("%autopx", true),
            ("%cluster start -n 2", true),
            ("%pxconfig --verbose", true),
            ("%pylab inline", false),
            ("%%timeit\nx", false),
            ("%time x", false),
            ("print('%px')", false),
            ("if x:\n    %px y", false),
            ("x = 1", false),
            ("%%pxfoo\n", false),
            ("", false),
        ];
        for (code, expected) in cases {
            assert_eq!(has_parallel_magic(code), *expected, "{code:?}");
        }
    }

    #[test]
    fn scanner_tracks_strings_brackets_and_continuations() {
        // (lines, whether the line after them starts a statement)
        let cases: &[(&str, bool)] = &[
            ("x = 1", true),
            ("x = (1,", false),
            ("x = (1,)", true),
            ("x = {'a': [1,", false),
            ("s = \"\"\"", false),
            ("s = \"\"\"a\"\"\"", true),
            ("s = '''\\'''", false),
            ("s = 'a(b'", true),
            ("s = \"a\\\"(\"", true),
            ("x = 1 \\", false),
            ("x = 1 # (", true),
            ("x = ')' + (", false),
        ];
        for (line, top) in cases {
            let mut s = Scanner::default();
            s.scan(line);
            assert_eq!(s.at_top_level(), *top, "{line:?}");
        }
    }

    #[test]
    fn magic_names_end_at_whitespace() {
        assert_eq!(magic_name("px x"), ("px", " x"));
        assert_eq!(magic_name("px"), ("px", ""));
        assert_eq!(magic_name("px\tx"), ("px", "\tx"));
        assert_eq!(magic_name("px(1)"), ("", "px(1)"));
        assert_eq!(magic_name("px?"), ("", "px?"));
    }
}
