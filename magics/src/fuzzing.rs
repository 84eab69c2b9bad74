//! The checks the fuzz targets run (`fuzz/fuzz_targets/`), kept here so that the committed
//! corpora (`fuzz/corpus/<target>/`) also run through them in a plain `cargo test`.
//!
//! Compiled for this crate's tests and with the `fuzzing` feature (which only the fuzz crate
//! turns on); not part of the crate's API. Each check asserts what the parser promises, not only
//! that it does not panic.

use std::time::{Duration, Instant};

use crate::options::{PxConfig, PxOptions};
use crate::parse::{parse_cell, Step};
use crate::targets::Targets;

/// The magics parser ([`parse_cell`]) on a cell, with the default config and with `%autopx` on:
/// never panics; a cell without parallel magics goes to the local kernel byte for byte (or, with
/// `%autopx`, to the engines); every option set is one the kernel can use (targets that print
/// and parse back, a progress delay it can add to a clock); errors render.
pub fn magics(data: &[u8]) {
    let Ok(code) = std::str::from_utf8(data) else {
        return;
    };
    let config = PxConfig::default();
    let autopx = PxConfig {
        autopx: true,
        block: false,
        ..PxConfig::default()
    };
    let plain = parse_cell(code, &config);
    let auto = parse_cell(code, &autopx);
    for (plan, config) in [(&plain, &config), (&auto, &autopx)] {
        let plan = match plan {
            Ok(plan) => plan,
            Err(error) => {
                assert!(!error.to_string().is_empty());
                assert!(!error.ename().is_empty());
                let _ = error.stderr_text();
                continue;
            }
        };
        let mut config = config.clone();
        for step in &plan.steps {
            match step {
                Step::Parallel(step) => usable(&step.options),
                Step::Config(change) => {
                    config.apply(change);
                    usable(&config.px_options());
                }
                Step::Local(_) | Step::Autopx | Step::Result(_) | Step::Cluster(_) => {}
            }
        }
    }
    // Errors come from the magics alone, so the config does not change them.
    assert_eq!(plain.is_err(), auto.is_err(), "{plain:?} / {auto:?}");
    if let (Ok(plain), Ok(auto)) = (&plain, &auto) {
        if plain.steps.iter().all(|s| matches!(s, Step::Local(_))) {
            assert_eq!(plain.steps, vec![Step::Local(code.to_owned())]);
            if !code.trim().is_empty() {
                assert!(
                    matches!(auto.steps.as_slice(), [Step::Parallel(s)] if s.code == code),
                    "{auto:?}"
                );
            }
        }
    }
}

/// Options the kernel can run with.
fn usable(options: &PxOptions) {
    round_trips(&options.targets);
    let after = options.progress_after;
    assert!(after.is_finite(), "progress after {after}");
    if after >= 0.0 {
        // What the kernel does with it (`kernel/src/dispatch/plan.rs`, `px_timer`).
        let delay = Duration::try_from_secs_f64(after).expect("a delay");
        assert!(Instant::now().checked_add(delay).is_some(), "{after}s");
    }
}

/// `Targets` print in a form that parses back to them.
fn round_trips(targets: &Targets) {
    let text = targets.to_string();
    assert_eq!(
        Targets::parse(&text).as_ref(),
        Ok(targets),
        "{targets:?} printed as {text:?}"
    );
}

/// Engine id sets the targets are resolved against.
const LIVE: &[&[u32]] = &[&[], &[0], &[0, 1, 2, 3], &[7, 3, 5, 100, 3], &[u32::MAX, 0]];

/// The `--targets` grammar ([`Targets::parse`], [`Targets::resolve`]): never panics; what parses
/// prints back to itself; resolution picks live engines, each once, and slices them as Python
/// does.
pub fn targets(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let targets = match Targets::parse(text) {
        Ok(targets) => targets,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    round_trips(&targets);
    for live in LIVE {
        let mut sorted = live.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let Ok(picked) = targets.resolve(live) else {
            continue;
        };
        assert!(!picked.is_empty());
        assert!(picked.iter().all(|id| sorted.contains(id)), "{picked:?}");
        let mut unique = picked.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), picked.len(), "{picked:?} repeats an engine");
        match &targets {
            Targets::All => assert_eq!(picked, sorted),
            Targets::Slice { start, stop, step } => {
                let expected: Vec<u32> = python_slice(sorted.len(), *start, *stop, *step)
                    .into_iter()
                    .map(|i| sorted[i])
                    .collect();
                assert_eq!(picked, expected, "{targets:?} of {sorted:?}");
            }
            Targets::One(_) | Targets::Ids(_) => {}
        }
    }
}

/// `range(len)[start:stop:step]`, computed the long way in `i128` (CPython's
/// `PySlice_AdjustIndices`) as a reference for the resolver.
fn python_slice(
    len: usize,
    start: Option<i64>,
    stop: Option<i64>,
    step: Option<i64>,
) -> Vec<usize> {
    let len = len as i128;
    let step = i128::from(step.unwrap_or(1));
    assert_ne!(step, 0);
    let adjust = |value: Option<i64>, default: i128| match value {
        None => default,
        Some(v) => {
            let mut v = i128::from(v);
            if v < 0 {
                v += len;
                if v < 0 {
                    v = if step < 0 { -1 } else { 0 };
                }
            } else if v >= len {
                v = if step < 0 { len - 1 } else { len };
            }
            v
        }
    };
    let start = adjust(start, if step < 0 { len - 1 } else { 0 });
    let stop = adjust(stop, if step < 0 { -1 } else { len });
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        out.push(usize::try_from(i).expect("an index in range"));
        i += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parallax_wire::fuzzing::corpus;

    #[test]
    fn magics_corpus() {
        for (path, data) in corpus("magics") {
            eprintln!("{}", path.display());
            magics(&data);
        }
    }

    #[test]
    fn targets_corpus() {
        for (path, data) in corpus("targets") {
            eprintln!("{}", path.display());
            targets(&data);
        }
    }

    #[test]
    fn the_reference_slices_as_python_does() {
        // range(4)[::-1], range(4)[1:3], range(4)[-2:], range(4)[5:0:-2]
        assert_eq!(python_slice(4, None, None, Some(-1)), vec![3, 2, 1, 0]);
        assert_eq!(python_slice(4, Some(1), Some(3), None), vec![1, 2]);
        assert_eq!(python_slice(4, Some(-2), None, None), vec![2, 3]);
        assert_eq!(python_slice(4, Some(5), Some(0), Some(-2)), vec![3, 1]);
        assert_eq!(python_slice(0, None, None, None), Vec::<usize>::new());
    }
}
