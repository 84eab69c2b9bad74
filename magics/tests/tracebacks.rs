//! `user_frames` on tracebacks recorded from real kernels (`data/tracebacks.json`).

use parallax_magics::{
    composite_error, python_splitlines, strip_ansi, user_frames, EngineError, EngineOutput,
    OutputKind, StreamRenderer, NO_SOURCE_NOISE,
};
use serde_json::Value;

struct Fixture {
    name: String,
    traceback: Vec<String>,
}

fn fixtures() -> Vec<Fixture> {
    let all: Value = serde_json::from_str(include_str!("data/tracebacks.json")).expect("json");
    all["tracebacks"]
        .as_array()
        .expect("list")
        .iter()
        .map(|t| Fixture {
            name: t["name"].as_str().expect("name").to_string(),
            traceback: serde_json::from_value(t["traceback"].clone()).expect("strings"),
        })
        .collect()
}

fn fixture(name: &str) -> Vec<String> {
    fixtures()
        .into_iter()
        .find(|f| f.name == name)
        .map(|f| f.traceback)
        .expect(name)
}

fn plain(lines: &[String]) -> Vec<String> {
    python_splitlines(&lines.join("\n"))
        .iter()
        .map(|l| strip_ansi(l))
        .collect()
}

#[test]
fn execute_tracebacks_of_user_code_are_untouched() {
    for name in [
        "zero_division",
        "nested_function",
        "stdlib_frames",
        "syntax_error",
        "indentation_error",
        "keyboard_interrupt",
        "name_error",
        "multiline_message",
        "chained_exception",
    ] {
        let tb = fixture(name);
        assert_eq!(user_frames(&tb), tb, "{name}");
    }
}

#[test]
fn no_source_noise_is_dropped_but_the_frame_kept() {
    // `exec(compile(..., "<string>", "exec"))` in the user's own cell: their frame.
    let got = plain(&user_frames(&fixture("exec_string_no_source")));
    assert_eq!(
        got,
        [
            "---------------------------------------------------------------------------",
            "ZeroDivisionError                         Traceback (most recent call last)",
            "Cell In[9], line 2",
            "      1 exec(compile(\"def h():\\n    return 1/0\\n\", \"<string>\", \"exec\"))",
            "----> 2 h()",
            "",
            "File <string>:2, in h()",
            "",
            "ZeroDivisionError: division by zero",
        ]
    );
    let got = plain(&user_frames(&fixture("ipython_ev_string")));
    assert_eq!(got[2], "Cell In[11], line 1");
    assert_eq!(got[5], "File <string>:1");
    assert!(!got.iter().any(|l| l.contains(NO_SOURCE_NOISE)));
}

#[test]
fn ipykernel_frames_are_dropped() {
    let got = plain(&user_frames(&fixture("ipykernel_input")));
    assert_eq!(
        got,
        [
            "---------------------------------------------------------------------------",
            "StdinNotImplementedError                  Traceback (most recent call last)",
            "Cell In[12], line 1",
            "----> 1 input()",
            "",
            "StdinNotImplementedError: raw_input was called, but this frontend does not support input requests.",
        ]
    );
}

#[test]
fn apply_tracebacks_lose_do_apply_exec_and_noise() {
    let tb = fixture("apply_named_function");
    let all = python_splitlines(&tb.join("\n"));
    assert!(strip_ansi(&all[2]).contains("ipyparallel/engine/kernel.py:157"));
    assert_eq!(strip_ansi(&all[9]), "File <string>:1");
    let got = user_frames(&tb);
    // Kept with their colours, byte for byte: the header, the user's function, the error.
    assert_eq!(
        got,
        [
            all[0].clone(),
            all[1].clone(),
            all[12].clone(),
            all[14].clone(),
            all[15].clone()
        ]
    );
    assert_eq!(
        plain(&got),
        [
            "---------------------------------------------------------------------------",
            "ZeroDivisionError                         Traceback (most recent call last)",
            "File /tmp/ipykernel_14078/1109800759.py:2, in bad()",
            "",
            "ZeroDivisionError: division by zero",
        ]
    );

    let got = plain(&user_frames(&fixture("apply_lambda")));
    assert_eq!(
        got[2],
        "File /tmp/ipykernel_14078/350481633.py:2, in <lambda>()"
    );
    assert_eq!(got.len(), 5);

    let got = plain(&user_frames(&fixture("apply_function_name_error")));
    assert_eq!(
        got[2],
        "File /tmp/ipykernel_14078/2019784878.py:3, in parse()"
    );
    assert_eq!(
        got.last().map(String::as_str),
        Some("NameError: name '_j' is not defined")
    );
}

#[test]
fn every_fixture_keeps_its_header_and_exception_line() {
    for f in fixtures() {
        let before = plain(&f.traceback);
        let after = plain(&user_frames(&f.traceback));
        assert_eq!(before.last(), after.last(), "{}", f.name);
        assert_eq!(before.first(), after.first(), "{}", f.name);
        assert!(
            !after.iter().any(|l| l.contains(NO_SOURCE_NOISE)),
            "{}: {after:#?}",
            f.name
        );
        assert!(
            !after
                .iter()
                .any(|l| l.contains("/ipyparallel/") || l.contains("/ipykernel/")),
            "{}: {after:#?}",
            f.name
        );
    }
}

#[test]
fn renderers_show_user_frames() {
    let tb = fixture("apply_named_function");
    let err = EngineError {
        engine: 0,
        ename: "ZeroDivisionError".into(),
        evalue: "division by zero".into(),
        traceback: tb.clone(),
    };
    let composite = composite_error(&[err]);
    let shown = plain(&composite.traceback);
    assert_eq!(shown[0], "[0:execute]:");
    assert_eq!(
        shown[3],
        "File /tmp/ipykernel_14078/1109800759.py:2, in bad()"
    );
    assert!(!shown.iter().any(|l| l.contains("do_apply")));

    let mut r = StreamRenderer::new("p");
    r.push(&EngineOutput {
        engine: 3,
        kind: OutputKind::Error {
            ename: "ZeroDivisionError".into(),
            evalue: "division by zero".into(),
            traceback: tb,
        },
    });
    let (emits, _) = r.finish();
    let text = serde_json::to_value(&emits).expect("json")[0]["text"]
        .as_str()
        .expect("stderr text")
        .to_string();
    assert!(text.starts_with("[3:execute]\n"));
    assert!(!text.contains("do_apply"));
    assert!(!text.contains(NO_SOURCE_NOISE));
}
