//! Property tests: arbitrary text never makes the parser or the renderers panic, and cells
//! without magics always come back as one local step, byte for byte.

use parallax_magics::{
    has_parallel_magic, parse_cell, render_grouped, user_frames, EngineOutput, GroupBy, OutputKind,
    Plan, PxConfig, Step, StreamName, StreamRenderer, Targets,
};
use proptest::prelude::*;

/// Text built from the characters that matter to the scanner and the option parser.
fn cellish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("%px ".to_string()),
            Just("%%px ".to_string()),
            Just("%pxconfig ".to_string()),
            Just("%cluster ".to_string()),
            Just("--targets ".to_string()),
            Just("-t".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("    ".to_string()),
            Just("'''".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("\\".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("#".to_string()),
            Just(":".to_string()),
            Just(",".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("-".to_string()),
            "[a-z0-9 =é]{0,4}",
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn parse_cell_never_panics(code in cellish(), autopx in any::<bool>()) {
        let config = PxConfig { autopx, ..PxConfig::default() };
        let _ = parse_cell(&code, &config);
        let _ = has_parallel_magic(&code);
    }

    #[test]
    fn parse_cell_never_panics_on_any_text(code in any::<String>()) {
        let _ = parse_cell(&code, &PxConfig::default());
    }

    #[test]
    fn cells_without_percent_are_local_verbatim(code in "[^%]{0,200}") {
        let plan = parse_cell(&code, &PxConfig::default()).expect("no magic, no error");
        prop_assert_eq!(plan, Plan { steps: vec![Step::Local(code.clone())] });
    }

    #[test]
    fn targets_never_panic(text in "[-+0-9:, \\[\\]allAL]{0,16}", live in proptest::collection::vec(0u32..20, 0..8)) {
        if let Ok(t) = Targets::parse(&text) {
            if let Ok(ids) = t.resolve(&live) {
                prop_assert!(!ids.is_empty());
                prop_assert!(ids.iter().all(|i| live.contains(i)));
            }
        }
    }

    #[test]
    fn user_frames_never_panics(tb in proptest::collection::vec(any::<String>(), 0..6)) {
        let _ = user_frames(&tb);
    }

    #[test]
    fn renderers_never_panic(texts in proptest::collection::vec(("[0-3]", any::<String>()), 0..10)) {
        let outputs: Vec<EngineOutput> = texts
            .iter()
            .enumerate()
            .map(|(i, (e, t))| EngineOutput {
                engine: e.parse().unwrap_or(0),
                kind: match i % 3 {
                    0 => OutputKind::Stream { name: StreamName::Stdout, text: t.clone() },
                    1 => OutputKind::Stream { name: StreamName::Stderr, text: t.clone() },
                    _ => OutputKind::Error { ename: "E".into(), evalue: t.clone(), traceback: vec![t.clone()] },
                },
            })
            .collect();
        let mut r = StreamRenderer::new("p");
        for o in &outputs {
            let _ = r.push(o);
        }
        for g in [GroupBy::Type, GroupBy::Engine, GroupBy::Order] {
            let _ = render_grouped(&outputs, g);
        }
    }
}
