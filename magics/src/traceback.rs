//! Engine tracebacks with the user's frames only.
//!
//! An error raised through ipyparallel's `apply` carries the engine's own frames
//! (`ipyparallel/engine/kernel.py ... in IPythonParallelKernel.do_apply`), the `<string>` frame of
//! the `exec` it runs the call in, and IPython's "Could not get source, probably due dynamically
//! evaluated source code." for every function whose source lives on the client. [`user_frames`]
//! removes those and keeps everything else: the user's cell frames, their functions, and library
//! frames (numpy, json) they called into.
//!
//! Tracebacks come as IPython renders them (ipykernel 7, IPython 9: one list element per frame,
//! ANSI colours, `File /path:LINE, in func` or `Cell In[N], line L` headers) or as plain Python
//! renders them (`  File "/path", line N, in func`); both are handled. The fixtures in
//! `tests/data/tracebacks.json` were recorded from real kernels.

/// Python packages whose frames are machinery, not the user's code.
pub const INTERNAL_PACKAGES: &[&str] = &["ipykernel", "IPython", "ipyparallel", "parallax"];

/// The line IPython writes for a frame whose source it cannot find.
pub const NO_SOURCE_NOISE: &str =
    "Could not get source, probably due dynamically evaluated source code.";

/// `traceback` (a Jupyter `error` message's list) without internal frames and "Could not get
/// source" lines.
///
/// When nothing is removed the input comes back unchanged (same elements). Otherwise the result
/// has one line per element: frontends join the elements with newlines, so what the user reads
/// is the original text minus the removed frames. When every frame is internal (the error is in
/// the machinery itself) the traceback is kept whole, since hiding all of it would leave no clue.
pub fn user_frames(traceback: &[String]) -> Vec<String> {
    let lines = python_splitlines(&traceback.join("\n"));
    let blocks = blocks(&lines);
    let frames = blocks.iter().filter(|b| b.frame.is_some()).count();
    let mut keep = Vec::with_capacity(blocks.len());
    let mut previous_internal = false;
    let mut removed_frames = 0;
    for block in &blocks {
        let internal = match &block.frame {
            Some(Frame::File(path)) => {
                // `exec`'s `<string>` frame right under an internal frame is the machinery's too.
                is_internal_path(path) || (previous_internal && path == "<string>")
            }
            Some(Frame::Cell) => false,
            None => {
                keep.push(true);
                continue;
            }
        };
        previous_internal = internal;
        if internal {
            removed_frames += 1;
        }
        keep.push(!internal);
    }
    if removed_frames == frames && frames > 0 {
        keep.iter_mut().for_each(|k| *k = true);
    }
    let mut out = Vec::with_capacity(lines.len());
    let mut changed = false;
    for (block, kept) in blocks.iter().zip(keep) {
        if !kept {
            changed = true;
            continue;
        }
        for line in &lines[block.range.clone()] {
            if block.frame.is_some() && strip_ansi(line).contains(NO_SOURCE_NOISE) {
                changed = true;
                continue;
            }
            out.push(line.clone());
        }
    }
    if changed {
        out
    } else {
        traceback.to_vec()
    }
}

/// Splits like Python's `str.splitlines()` (which ipyparallel uses on tracebacks): on `\n`,
/// `\r\n`, `\r`, `\x0b`, `\x0c`, `\x1c`-`\x1e`, `\x85`, `\u2028`, `\u2029`; no empty last line.
pub fn python_splitlines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut current));
            }
            '\n' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => lines.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// `text` without ANSI escape sequences (CSI `ESC [ ... letter` and two-byte `ESC x`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // `ESC [ params letter` (CSI); any other escape is two characters.
        if chars.next() == Some('[') {
            for n in chars.by_ref() {
                if ('@'..='~').contains(&n) {
                    break;
                }
            }
        }
    }
    out
}

enum Frame {
    /// `Cell In[N], line L`: the user's cell.
    Cell,
    /// A file path (`<string>` for exec'd code).
    File(String),
}

struct Block {
    range: std::ops::Range<usize>,
    frame: Option<Frame>,
}

/// Cuts the lines into frame blocks and the lines between them (headers, the exception line,
/// "The above exception was the direct cause..." separators).
fn blocks(lines: &[String]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let plain = strip_ansi(&lines[i]);
        match frame_header(&plain) {
            Some((frame, python_style)) => {
                let start = i;
                i += 1;
                while i < lines.len() {
                    let next = strip_ansi(&lines[i]);
                    if frame_header(&next).is_some() {
                        break;
                    }
                    if next.trim().is_empty() {
                        // IPython ends each frame with a blank line; it belongs to the frame.
                        i += 1;
                        break;
                    }
                    if python_style && !next.starts_with(char::is_whitespace) {
                        // Plain Python frames are indented; the exception line is not.
                        break;
                    }
                    i += 1;
                }
                out.push(Block {
                    range: start..i,
                    frame: Some(frame),
                });
            }
            None => {
                match out.last_mut() {
                    Some(b) if b.frame.is_none() => b.range.end = i + 1,
                    _ => out.push(Block {
                        range: i..i + 1,
                        frame: None,
                    }),
                }
                i += 1;
            }
        }
    }
    out
}

/// Recognises a frame's first line; the bool says whether it is plain-Python style.
fn frame_header(plain: &str) -> Option<(Frame, bool)> {
    let t = plain.trim_start();
    if t.starts_with("Cell In[") && plain.len() - t.len() == 0 {
        return Some((Frame::Cell, false));
    }
    if let Some(rest) = t.strip_prefix("File \"") {
        // Python: `  File "/path/x.py", line 3, in f`
        let end = rest.find("\", line ")?;
        return Some((Frame::File(rest[..end].to_string()), true));
    }
    let rest = t.strip_prefix("File ")?;
    if plain.len() != t.len() {
        return None;
    }
    // IPython: `File /path/x.py:157, in f(args)` or `File <string>:1`
    let head = rest.split(", in ").next().unwrap_or(rest);
    let (path, line) = head.rsplit_once(':')?;
    if line.trim().is_empty() || !line.trim().bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Frame::File(path.to_string()), false))
}

/// Whether a frame's file belongs to [`INTERNAL_PACKAGES`]: a path component equal to one of
/// them. `parallax` counts only inside an installed package tree (`site-packages`,
/// `dist-packages`) or this repository's `python/parallax`, so a user's own folder named
/// `parallax` keeps its frames.
fn is_internal_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split(['/', '\\']).collect();
    parts.iter().enumerate().any(|(i, part)| {
        if *part == "parallax" {
            let installed = parts[..i]
                .iter()
                .any(|p| *p == "site-packages" || *p == "dist-packages");
            let repo = i > 0 && parts[i - 1] == "python";
            installed || repo
        } else {
            INTERNAL_PACKAGES.contains(part) && i + 1 < parts.len()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("a", &["a"]),
            ("a\n", &["a"]),
            ("a\n\n", &["a", ""]),
            ("a\r\nb\rc\x0cd", &["a", "b", "c", "d"]),
            ("\n", &[""]),
            ("a\u{2028}b", &["a", "b"]),
        ];
        for (text, want) in cases {
            assert_eq!(python_splitlines(text), *want, "{text:?}");
        }
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(
            strip_ansi("\x1b[36mFile \x1b[39m\x1b[32m<string>:1\x1b[39m"),
            "File <string>:1"
        );
        assert_eq!(strip_ansi("\x1b[38;5;28;01mdef\x1b[39;00m f"), "def f");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn internal_paths() {
        let cases: &[(&str, bool)] = &[
            (
                "/tmp/mv/lib/python3.11/site-packages/ipyparallel/engine/kernel.py",
                true,
            ),
            (
                "/usr/lib/python3/dist-packages/IPython/core/interactiveshell.py",
                true,
            ),
            ("/x/site-packages/ipykernel/kernelbase.py", true),
            ("/x/site-packages/parallax/engine.py", true),
            ("/work/main/python/parallax/engine.py", true),
            ("/home/me/parallax/analysis.py", false),
            ("/tmp/ipykernel_14078/1109800759.py", false),
            (
                "~/.pyenv/versions/3.11.7/lib/python3.11/json/decoder.py",
                false,
            ),
            ("<string>", false),
            ("/home/me/IPython", false),
        ];
        for (path, want) in cases {
            assert_eq!(is_internal_path(path), *want, "{path}");
        }
    }

    #[test]
    fn plain_python_tracebacks() {
        let tb: Vec<String> = [
            "Traceback (most recent call last):",
            "  File \"/x/site-packages/ipyparallel/engine/kernel.py\", line 157, in do_apply",
            "    exec(code, shell.user_global_ns, shell.user_ns)",
            "  File \"<string>\", line 1, in <module>",
            "  File \"/home/me/work.py\", line 2, in bad",
            "    return 1/0",
            "           ~^~",
            "ZeroDivisionError: division by zero",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let want: Vec<String> = [
            "Traceback (most recent call last):",
            "  File \"/home/me/work.py\", line 2, in bad",
            "    return 1/0",
            "           ~^~",
            "ZeroDivisionError: division by zero",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(user_frames(&tb), want);
    }

    #[test]
    fn all_internal_is_kept_whole() {
        let tb = vec![
            "Traceback (most recent call last):".to_string(),
            "  File \"/x/site-packages/ipykernel/kernelbase.py\", line 1, in f".to_string(),
            "    g()".to_string(),
            "RuntimeError: boom".to_string(),
        ];
        assert_eq!(user_frames(&tb), tb);
    }

    #[test]
    fn untouched_when_nothing_to_strip() {
        let tb = vec!["a\nb\n".to_string(), "c".to_string()];
        assert_eq!(user_frames(&tb), tb);
        assert_eq!(user_frames(&[]), Vec::<String>::new());
    }
}
