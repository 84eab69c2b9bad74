//! The argument line of a magic: shell-like splitting and a tiny table-driven option parser.
//!
//! IPython splits a magic's arguments with `shlex` in POSIX mode (`IPython.utils._process_common.
//! arg_split`) and parses them with `argparse`; we follow the parts people rely on: `'...'` and
//! `"..."` quoting, backslash escapes, `--opt value` and `--opt=value`, `-o value`, `-ovalue`,
//! combined short flags (`-be`), unique prefixes of long options (`--tar 0`, as argparse's
//! `allow_abbrev`), and the last occurrence of an option winning.

use crate::error::MagicError;

/// Splits `line` into words like a POSIX shell (and Python's `shlex.split`): whitespace
/// separates words; `'...'` is literal; in `"..."` a backslash escapes `\`, `"`, `$`, `` ` ``
/// and newline; outside quotes a backslash escapes any character.
pub(crate) fn split_words(magic: &str, line: &str) -> Result<Vec<String>, MagicError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unclosed(magic, '\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n) if matches!(n, '\\' | '"' | '$' | '`' | '\n') => {
                                word.push(n);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unclosed(magic, '"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn unclosed(magic: &str, quote: char) -> MagicError {
    MagicError::UnclosedQuote {
        magic: magic.to_string(),
        quote,
    }
}

/// One option a magic accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OptSpec<K> {
    /// `--long` name without dashes; empty when the option only has a short form.
    pub long: &'static str,
    /// `-s` name.
    pub short: Option<char>,
    /// What the value looks like, for options that take one.
    pub value: Option<&'static str>,
    /// What the caller does with it.
    pub key: K,
}

/// One option found on the line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found<K> {
    pub key: K,
    /// The option as written (`--tar`, `-t`), for messages.
    pub written: String,
    pub value: Option<String>,
}

/// The options of `table`, for error messages: `--targets, --block, -e, ...`.
pub(crate) fn option_list<K>(table: &[OptSpec<K>]) -> String {
    let names: Vec<String> = table
        .iter()
        .map(|s| match (s.long, s.short) {
            ("", Some(c)) => format!("-{c}"),
            (l, _) => format!("--{l}"),
        })
        .collect();
    names.join(", ")
}

/// Parses `line` against `table`. Every word must be an option or an option's value.
pub(crate) fn parse_options<K: Copy>(
    magic: &str,
    line: &str,
    table: &[OptSpec<K>],
    hint: &str,
) -> Result<Vec<Found<K>>, MagicError> {
    let words = split_words(magic, line)?;
    let mut found = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        i += 1;
        let unknown = || MagicError::UnknownOption {
            magic: magic.to_string(),
            option: word.clone(),
            valid: option_list(table),
        };
        if let Some(body) = word.strip_prefix("--").filter(|b| !b.is_empty()) {
            let (name, explicit) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let spec = lookup_long(magic, table, name, word)?.ok_or_else(unknown)?;
            let written = format!("--{name}");
            let value = take_value(magic, spec, &written, explicit, &words, &mut i)?;
            found.push(Found {
                key: spec.key,
                written,
                value,
            });
        } else if let Some(body) = word
            .strip_prefix('-')
            .filter(|b| !b.is_empty() && *b != "-")
        {
            // Short options: `-t 0`, `-t0`, `-t=0`, `-be`.
            let mut rest = body;
            while let Some(c) = rest.chars().next() {
                rest = &rest[c.len_utf8()..];
                let spec = table.iter().find(|s| s.short == Some(c)).ok_or_else(|| {
                    MagicError::UnknownOption {
                        magic: magic.to_string(),
                        option: format!("-{c}"),
                        valid: option_list(table),
                    }
                })?;
                let written = format!("-{c}");
                if spec.value.is_some() {
                    let attached = (!rest.is_empty())
                        .then(|| rest.strip_prefix('=').unwrap_or(rest).to_string());
                    let value = take_value(magic, spec, &written, attached, &words, &mut i)?;
                    found.push(Found {
                        key: spec.key,
                        written,
                        value,
                    });
                    break;
                }
                found.push(Found {
                    key: spec.key,
                    written,
                    value: None,
                });
            }
        } else {
            return Err(MagicError::UnexpectedArgument {
                magic: magic.to_string(),
                argument: word.clone(),
                hint: hint.to_string(),
            });
        }
    }
    Ok(found)
}

fn lookup_long<'t, K>(
    magic: &str,
    table: &'t [OptSpec<K>],
    name: &str,
    written: &str,
) -> Result<Option<&'t OptSpec<K>>, MagicError> {
    if let Some(spec) = table.iter().find(|s| !s.long.is_empty() && s.long == name) {
        return Ok(Some(spec));
    }
    let matches: Vec<&OptSpec<K>> = table
        .iter()
        .filter(|s| !s.long.is_empty() && s.long.starts_with(name))
        .collect();
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(MagicError::AmbiguousOption {
            magic: magic.to_string(),
            option: written.split('=').next().unwrap_or(written).to_string(),
            candidates: many
                .iter()
                .map(|s| format!("--{}", s.long))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn take_value<K>(
    magic: &str,
    spec: &OptSpec<K>,
    written: &str,
    explicit: Option<String>,
    words: &[String],
    i: &mut usize,
) -> Result<Option<String>, MagicError> {
    match (spec.value, explicit) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(MagicError::UnexpectedValue {
            magic: magic.to_string(),
            option: written.to_string(),
        }),
        (Some(_), Some(v)) => Ok(Some(v)),
        (Some(expected), None) => match words.get(*i) {
            Some(v) => {
                *i += 1;
                Ok(Some(v.clone()))
            }
            None => Err(MagicError::MissingValue {
                magic: magic.to_string(),
                option: written.to_string(),
                expected: expected.to_string(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_shlex() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  a  b ", &["a", "b"]),
            ("--targets '0, 2'", &["--targets", "0, 2"]),
            ("--targets \"0, 2\"", &["--targets", "0, 2"]),
            ("-o 'a b'c", &["-o", "a bc"]),
            (r#""a\"b""#, &["a\"b"]),
            (r#""a\nb""#, &[r"a\nb"]),
            (r"a\ b", &["a b"]),
            ("''", &[""]),
            ("'it''s'", &["its"]),
            ("\t--block\t", &["--block"]),
        ];
        for (line, want) in cases {
            let got = split_words("%%px", line).expect(line);
            assert_eq!(got, *want, "{line:?}");
        }
    }

    #[test]
    fn unclosed_quotes_are_errors() {
        for (line, q) in [("'abc", '\''), ("--out \"x", '"')] {
            let err = split_words("%%px", line).expect_err(line);
            assert_eq!(
                err,
                MagicError::UnclosedQuote {
                    magic: "%%px".into(),
                    quote: q
                }
            );
            assert_eq!(err.to_string(), format!("%%px: unclosed {q} quote"));
        }
    }
}
