//! Parallel magics: from a cell's text to a plan, and from engine outputs to notebook blocks.
//!
//! This crate is pure: text in, structured values out; no processes, no sockets. The kernel asks
//! [`has_parallel_magic`] whether a cell needs the cluster at all; cells that do not are proxied
//! to the local kernel untouched.

/// The magics Parallax serves itself rather than passing to the local kernel.
pub const PARALLEL_MAGICS: &[&str] = &["px", "autopx", "pxresult", "pxconfig", "cluster"];

/// Whether `code` uses a parallel magic: a `%%px`-style cell magic on its first line, or a
/// `%px`-style line magic at the start of any top-level line.
pub fn has_parallel_magic(code: &str) -> bool {
    let first = code
        .trim_start_matches(['\n', '\r'])
        .lines()
        .next()
        .unwrap_or("");
    if let Some(rest) = first.trim_start().strip_prefix("%%") {
        return is_parallel_name(rest);
    }
    code.lines().any(|line| {
        // Only unindented lines are top-level statements.
        line.strip_prefix('%')
            .filter(|rest| !rest.starts_with('%'))
            .is_some_and(is_parallel_name)
    })
}

fn is_parallel_name(rest: &str) -> bool {
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    PARALLEL_MAGICS.contains(&name.as_str())
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
}
