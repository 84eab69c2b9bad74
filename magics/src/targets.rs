//! `--targets`: which engines a `%px` runs on, parsed by a small grammar and never evaluated.
//!
//! ipyparallel `eval`s the string (`ParallelMagics._eval_target_str`); we accept the forms people
//! write and reject everything else with a message:
//!
//! ```text
//! targets := "all"                      (any case)
//!          | int                        0, -1        one engine
//!          | "[" [ints] "]" | ints       [0,2], 0,2   several engines
//!          | [int] ":" [int] [":" [int]] 1:3, ::2, -2:, 1:5:2
//! ints    := int ("," int)* [","]
//! int     := ["+" | "-"] digit+
//! ```
//!
//! Whitespace is allowed around every token. Resolution against the live engines follows
//! ipyparallel's `Client._build_targets`: a non-negative int is an engine *id*, a negative int
//! an *index* from the end of the sorted id list (`rc.ids[-1]`), and a slice slices that list
//! exactly as Python does (`rc.ids[1:3]`). In a list every element follows the int rule;
//! ipyparallel rejects negative elements in a list, we index with them like a lone int.

use std::fmt;

use crate::error::{id_list, MagicError};

/// Which engines a parallel step runs on, as written; [`Targets::resolve`] turns it into ids.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// Every engine registered when the step runs (lazy: engines that join later are included).
    #[default]
    All,
    /// One engine id or index, written alone (`0`, `-1`, not `[0]` or `0,`): ipyparallel then
    /// treats the run as one engine's, whose error is a `RemoteError`, not a composite.
    One(i64),
    /// Engine ids (non-negative) or indices from the end (negative), in the order written.
    Ids(Vec<i64>),
    /// A Python slice of the sorted list of engine ids.
    Slice {
        /// First index (Python's `start`).
        start: Option<i64>,
        /// End index, exclusive (Python's `stop`).
        stop: Option<i64>,
        /// Stride; never 0 (the parser rejects it).
        step: Option<i64>,
    },
}

impl Targets {
    /// Parses a `--targets` value. See the module doc for the grammar.
    pub fn parse(text: &str) -> Result<Targets, MagicError> {
        let bad = |reason: &str| MagicError::BadTargets {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        if t.eq_ignore_ascii_case("all") {
            return Ok(Targets::All);
        }
        if t.contains(':') {
            let parts: Vec<&str> = t.split(':').collect();
            if parts.len() > 3 {
                return Err(bad("a slice has at most two colons"));
            }
            let field = |i: usize| -> Result<Option<i64>, MagicError> {
                match parts.get(i).map(|p| p.trim()) {
                    None | Some("") => Ok(None),
                    Some(p) => parse_int(p).map(Some).map_err(|r| bad(&r)),
                }
            };
            let (start, stop, step) = (field(0)?, field(1)?, field(2)?);
            if step == Some(0) {
                return Err(bad("slice step cannot be zero"));
            }
            return Ok(Targets::Slice { start, stop, step });
        }
        let inner = match (t.strip_prefix('['), t.strip_suffix(']')) {
            (Some(_), Some(_)) if t.len() >= 2 => &t[1..t.len() - 1],
            (None, None) => t,
            _ => return Err(bad("unbalanced brackets")),
        };
        let mut ids = Vec::new();
        let items: Vec<&str> = inner.split(',').collect();
        for (i, item) in items.iter().enumerate() {
            let item = item.trim();
            if item.is_empty() {
                // A trailing comma (`0,` or `[0, 1,]`) and an empty list (`[]`) are Python.
                if i == items.len() - 1 && (i > 0 || t.starts_with('[')) {
                    continue;
                }
                return Err(bad("empty list element"));
            }
            ids.push(parse_int(item).map_err(|r| bad(&r))?);
        }
        if let ([id], false) = (ids.as_slice(), inner.len() != t.len() || t.ends_with(',')) {
            return Ok(Targets::One(*id));
        }
        Ok(Targets::Ids(ids))
    }

    /// Whether these targets name one engine alone (see [`Targets::One`]).
    pub fn is_single(&self) -> bool {
        matches!(self, Targets::One(_))
    }

    /// The engine ids these targets select among `live_ids` (any order; duplicates ignored).
    ///
    /// `All` and slices give ids in ascending order; a list gives them in the order written,
    /// without repeats. Fails when there are no engines, when an id does not exist
    /// (`no engine 7 (engines: 0, 1)`), when a negative index is out of range, and when
    /// nothing matches.
    pub fn resolve(&self, live_ids: &[u32]) -> Result<Vec<u32>, MagicError> {
        let mut live = live_ids.to_vec();
        live.sort_unstable();
        live.dedup();
        if live.is_empty() {
            return Err(MagicError::NoEngines);
        }
        let engines = || id_list(&live);
        let picked = match self {
            Targets::All => live.clone(),
            Targets::One(id) => return Targets::Ids(vec![*id]).resolve(&live),
            Targets::Ids(ids) => {
                let mut out: Vec<u32> = Vec::with_capacity(ids.len());
                for &id in ids {
                    let eid = if id >= 0 {
                        match u32::try_from(id).ok().filter(|e| live.contains(e)) {
                            Some(e) => e,
                            None => {
                                return Err(MagicError::NoSuchEngine {
                                    id,
                                    engines: engines(),
                                })
                            }
                        }
                    } else {
                        let len = live.len() as i64;
                        match usize::try_from(len + id).ok().and_then(|i| live.get(i)) {
                            Some(&e) => e,
                            None => {
                                return Err(MagicError::IndexOutOfRange {
                                    index: id,
                                    engines: engines(),
                                })
                            }
                        }
                    };
                    if !out.contains(&eid) {
                        out.push(eid);
                    }
                }
                out
            }
            Targets::Slice { start, stop, step } => slice_indices(live.len(), *start, *stop, *step)
                .into_iter()
                .filter_map(|i| live.get(i).copied())
                .collect(),
        };
        if picked.is_empty() {
            return Err(MagicError::NoEnginesMatch {
                targets: self.to_string(),
                engines: engines(),
            });
        }
        Ok(picked)
    }
}

impl fmt::Display for Targets {
    /// A form [`Targets::parse`] reads back: `all`, `3`, `[3]`, `0,2`, `1:3`, `::2`, `1:5:2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Targets::All => f.write_str("all"),
            Targets::One(id) => write!(f, "{id}"),
            Targets::Ids(ids) if ids.is_empty() => f.write_str("[]"),
            Targets::Ids(ids) if ids.len() == 1 => write!(f, "[{}]", ids[0]),
            Targets::Ids(ids) => {
                let parts: Vec<String> = ids.iter().map(i64::to_string).collect();
                f.write_str(&parts.join(","))
            }
            Targets::Slice { start, stop, step } => {
                let s = |v: &Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
                write!(f, "{}:{}", s(start), s(stop))?;
                if step.is_some() {
                    write!(f, ":{}", s(step))?;
                }
                Ok(())
            }
        }
    }
}

fn parse_int(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not an integer"));
    }
    s.parse::<i64>().map_err(|_| format!("{s} is too large"))
}

/// The indices `range(len)[start:stop:step]` yields, by CPython's `PySlice_AdjustIndices`.
fn slice_indices(
    len: usize,
    start: Option<i64>,
    stop: Option<i64>,
    step: Option<i64>,
) -> Vec<usize> {
    let len = len as i64;
    let step = step.unwrap_or(1);
    if step == 0 {
        return Vec::new();
    }
    let (lower, upper) = if step > 0 { (0, len) } else { (-1, len - 1) };
    let adjust = |v: Option<i64>, default: i64| match v {
        None => default,
        Some(v) if v < 0 => v.saturating_add(len).max(lower),
        Some(v) => v.min(upper),
    };
    let start = adjust(start, if step > 0 { lower } else { upper });
    let stop = adjust(stop, if step > 0 { upper } else { lower });
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        // `i` stays within [0, len) here by construction of start/stop.
        if let Ok(u) = usize::try_from(i) {
            out.push(u);
        }
        i = match i.checked_add(step) {
            Some(n) => n,
            None => break,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sl(start: Option<i64>, stop: Option<i64>, step: Option<i64>) -> Targets {
        Targets::Slice { start, stop, step }
    }

    #[test]
    fn parses_every_form() {
        let cases: &[(&str, Targets)] = &[
            ("all", Targets::All),
            (" ALL ", Targets::All),
            ("0", Targets::One(0)),
            ("-1", Targets::One(-1)),
            ("+2", Targets::One(2)),
            (" 1 ", Targets::One(1)),
            ("0,2", Targets::Ids(vec![0, 2])),
            ("0, 2", Targets::Ids(vec![0, 2])),
            ("0,", Targets::Ids(vec![0])),
            ("[0,2]", Targets::Ids(vec![0, 2])),
            ("[ 0 , 2 , ]", Targets::Ids(vec![0, 2])),
            ("[]", Targets::Ids(vec![])),
            ("[3]", Targets::Ids(vec![3])),
            ("1:3", sl(Some(1), Some(3), None)),
            ("::2", sl(None, None, Some(2))),
            ("-2:", sl(Some(-2), None, None)),
            ("1:5:2", sl(Some(1), Some(5), Some(2))),
            (":", sl(None, None, None)),
            ("::-1", sl(None, None, Some(-1))),
            (" 1 : 3 ", sl(Some(1), Some(3), None)),
        ];
        for (text, want) in cases {
            assert_eq!(Targets::parse(text).as_ref(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_is_not_targets() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("x", "\"x\" is not an integer"),
            ("1.5", "\"1.5\" is not an integer"),
            ("0,,1", "empty list element"),
            (",", "empty list element"),
            ("[0,1", "unbalanced brackets"),
            ("0]", "unbalanced brackets"),
            ("1:2:3:4", "at most two colons"),
            ("::0", "slice step cannot be zero"),
            ("a:b", "\"a\" is not an integer"),
            ("rc.ids[0]", "unbalanced brackets"),
            ("__import__('os')", "is not an integer"),
            ("99999999999999999999", "too large"),
            ("--1", "is not an integer"),
        ];
        for (text, reason) in cases {
            let err = Targets::parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains(reason), "{text:?}: {msg}");
            assert!(msg.starts_with("bad targets"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn resolves_like_python_indexing() {
        let live = [0u32, 1, 2, 3];
        let cases: &[(&str, &[u32])] = &[
            ("all", &[0, 1, 2, 3]),
            ("2", &[2]),
            ("-1", &[3]),
            ("-4", &[0]),
            ("0,2", &[0, 2]),
            ("2,0", &[2, 0]),
            ("0,0,1", &[0, 1]),
            ("[1,-1]", &[1, 3]),
            ("1:3", &[1, 2]),
            ("::2", &[0, 2]),
            ("-2:", &[2, 3]),
            ("1:5:2", &[1, 3]),
            ("::-1", &[3, 2, 1, 0]),
            ("-1:0:-2", &[3, 1]),
            ("-100:2", &[0, 1]),
            ("1:100", &[1, 2, 3]),
            ("3:-100:-1", &[3, 2, 1, 0]),
        ];
        for (text, want) in cases {
            let t = Targets::parse(text).expect(text);
            assert_eq!(t.resolve(&live).as_deref(), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn slices_index_sorted_ids_not_raw_ids() {
        // Engines 3 and 7 are gone: indices and slices apply to the sorted live list.
        let live = [8u32, 2, 5, 0];
        let t = |s: &str| Targets::parse(s).expect(s);
        assert_eq!(t("-1").resolve(&live), Ok(vec![8]));
        assert_eq!(t("1:3").resolve(&live), Ok(vec![2, 5]));
        assert_eq!(t("5").resolve(&live), Ok(vec![5]));
        assert_eq!(t("all").resolve(&live), Ok(vec![0, 2, 5, 8]));
    }

    #[test]
    fn resolution_errors_name_the_engines() {
        let live = [0u32, 1];
        let t = |s: &str| Targets::parse(s).expect(s);
        let cases: &[(&str, &str)] = &[
            ("7", "no engine 7 (engines: 0, 1)"),
            ("0,7", "no engine 7 (engines: 0, 1)"),
            ("-3", "no engine at index -3 (engines: 0, 1)"),
            ("5:", "no engines match targets 5: (engines: 0, 1)"),
            ("[]", "no engines match targets [] (engines: 0, 1)"),
            ("1:0", "no engines match targets 1:0 (engines: 0, 1)"),
        ];
        for (text, want) in cases {
            let err = t(text).resolve(&live).expect_err(text);
            assert_eq!(err.to_string(), *want);
            assert_eq!(err.ename(), "UsageError");
        }
        let err = Targets::All.resolve(&[]).expect_err("empty");
        assert_eq!(err, MagicError::NoEngines);
        assert_eq!(err.ename(), "NoEnginesRegistered");
    }

    #[test]
    fn display_reads_back() {
        for text in [
            "all", "3", "0,2", "-1", "1:3", "::2", "-2:", "1:5:2", ":", "[]",
        ] {
            let t = Targets::parse(text).expect(text);
            assert_eq!(Targets::parse(&t.to_string()), Ok(t.clone()), "{text}");
        }
        assert_eq!(
            Targets::parse("[0, 2]").map(|t| t.to_string()),
            Ok("0,2".into())
        );
    }

    #[test]
    fn slice_indices_match_cpython() {
        // Values from CPython: list(range(n))[start:stop:step].
        assert_eq!(slice_indices(5, None, None, Some(-2)), vec![4, 2, 0]);
        assert_eq!(
            slice_indices(5, Some(-1), Some(-6), Some(-1)),
            vec![4, 3, 2, 1, 0]
        );
        assert_eq!(
            slice_indices(5, Some(10), None, Some(-1)),
            vec![4, 3, 2, 1, 0]
        );
        assert_eq!(slice_indices(0, None, None, None), Vec::<usize>::new());
        assert_eq!(
            slice_indices(3, Some(i64::MIN), Some(i64::MAX), Some(i64::MAX)),
            vec![0]
        );
    }
}
