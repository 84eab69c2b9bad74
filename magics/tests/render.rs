//! Snapshot tests of the renderers and notices, hand-written, without colour codes unless a
//! test is about them. (`ipyparallel_parity.rs` checks the same shapes against recordings.)

use parallax_magics::{
    aborted_notice, already_displayed_error, composite_error, final_error, interrupt_notice,
    progress, progress_text, render_grouped_with, AbortReason, Emit, EngineError, EngineOutput,
    GroupBy, Json, OutputKind, RenderStyle, Signal, StreamName, StreamRenderer, Targets,
    NO_LAST_RESULT, PENDING_RESULT,
};
use serde_json::{json, Value};

const PLAIN: RenderStyle = RenderStyle { color: false };

fn obj(v: Value) -> Json {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn out(engine: u32, kind: OutputKind) -> EngineOutput {
    EngineOutput { engine, kind }
}

fn so(engine: u32, text: &str) -> EngineOutput {
    out(
        engine,
        OutputKind::Stream {
            name: StreamName::Stdout,
            text: text.into(),
        },
    )
}

fn se(engine: u32, text: &str) -> EngineOutput {
    out(
        engine,
        OutputKind::Stream {
            name: StreamName::Stderr,
            text: text.into(),
        },
    )
}

fn disp(engine: u32, text: &str) -> EngineOutput {
    out(
        engine,
        OutputKind::Display {
            data: obj(json!({"text/plain": text, "image/png": "iVBOR"})),
            metadata: obj(json!({"image/png": {"width": 10}})),
        },
    )
}

fn res(engine: u32, count: u64, text: &str) -> EngineOutput {
    out(
        engine,
        OutputKind::Result {
            execution_count: count,
            data: obj(json!({"text/plain": text, "text/html": format!("<p>{text}</p>")})),
            metadata: Json::new(),
        },
    )
}

fn err(engine: u32) -> EngineOutput {
    out(
        engine,
        OutputKind::Error {
            ename: "ValueError".into(),
            evalue: "bad".into(),
            traceback: vec!["Traceback".into(), format!("ValueError: bad {engine}")],
        },
    )
}

/// A compact text form of emits, one line each, for readable snapshots.
fn snap(emits: &[Emit]) -> Vec<String> {
    emits
        .iter()
        .map(|e| match e {
            Emit::Stream { name, text } => format!("{}: {text:?}", name.as_str()),
            Emit::DisplayData {
                data,
                metadata,
                display_id,
            } => format!(
                "display{}: {} {}",
                display_id
                    .as_ref()
                    .map(|i| format!("[{i}]"))
                    .unwrap_or_default(),
                Value::Object(data.clone()),
                Value::Object(metadata.clone())
            ),
            Emit::UpdateDisplayData {
                data, display_id, ..
            } => {
                format!("update[{display_id}]: {}", Value::Object(data.clone()))
            }
            Emit::ExecuteResult { data, .. } => format!("result: {}", Value::Object(data.clone())),
        })
        .collect()
}

fn mixed() -> Vec<EngineOutput> {
    vec![
        so(1, "one\n"),
        so(0, "zero\n"),
        se(1, "warn\n"),
        disp(1, "fig A1"),
        disp(0, "fig A0"),
        disp(1, "fig B1"),
        so(1, "more\n"),
        res(1, 4, "41"),
        res(0, 7, "40"),
        err(2),
    ]
}

#[test]
fn grouped_by_type() {
    assert_eq!(
        snap(&render_grouped_with(&mixed(), GroupBy::Type, PLAIN)),
        [
            r#"stdout: "[stdout:0] \nzero\n[stdout:1] \none\nmore\n""#,
            r#"stderr: "[stderr:1] \nwarn\n""#,
            r#"display: {"text/plain":"[output:0]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig A0"} {"engine":0,"image/png":{"width":10}}"#,
            r#"display: {"text/plain":"[output:1]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig A1"} {"engine":1,"image/png":{"width":10}}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig B1"} {"engine":1,"image/png":{"width":10}}"#,
            r#"display: {"text/html":"<p>40</p>","text/plain":"Out[0:7]: 40"} {"engine_id":0}"#,
            r#"display: {"text/html":"<p>41</p>","text/plain":"Out[1:4]: 41"} {"engine_id":1}"#,
        ]
    );
}

#[test]
fn grouped_by_engine() {
    assert_eq!(
        snap(&render_grouped_with(&mixed(), GroupBy::Engine, PLAIN)),
        [
            r#"stdout: "[stdout:0] \nzero\n""#,
            r#"display: {"text/plain":"[output:0]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig A0"} {"engine":0,"image/png":{"width":10}}"#,
            r#"display: {"text/html":"<p>40</p>","text/plain":"Out[0:7]: 40"} {"engine_id":0}"#,
            r#"stdout: "[stdout:1] \none\nmore\n""#,
            r#"stderr: "[stderr:1] \nwarn\n""#,
            r#"display: {"text/plain":"[output:1]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig A1"} {"engine":1,"image/png":{"width":10}}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig B1"} {"engine":1,"image/png":{"width":10}}"#,
            r#"display: {"text/html":"<p>41</p>","text/plain":"Out[1:4]: 41"} {"engine_id":1}"#,
        ]
    );
}

#[test]
fn grouped_by_order_includes_engines_with_fewer_displays() {
    assert_eq!(
        snap(&render_grouped_with(&mixed(), GroupBy::Order, PLAIN)),
        [
            r#"stdout: "[stdout:0] \nzero\n[stdout:1] \none\nmore\n""#,
            r#"stderr: "[stderr:1] \nwarn\n""#,
            r#"display: {"text/plain":"[output:0]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig A0"} {"engine":0,"image/png":{"width":10}}"#,
            r#"display: {"text/plain":"[output:1]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig A1"} {"engine":1,"image/png":{"width":10}}"#,
            r#"display: {"text/plain":"[output:1]"} {}"#,
            r#"display: {"image/png":"iVBOR","text/plain":"fig B1"} {"engine":1,"image/png":{"width":10}}"#,
            r#"display: {"text/html":"<p>40</p>","text/plain":"Out[0:7]: 40"} {"engine_id":0}"#,
            r#"display: {"text/html":"<p>41</p>","text/plain":"Out[1:4]: 41"} {"engine_id":1}"#,
        ]
    );
}

#[test]
fn grouped_engine_with_only_a_result_gets_an_output_label() {
    let emits = render_grouped_with(&[res(3, 1, "x")], GroupBy::Engine, PLAIN);
    assert_eq!(
        snap(&emits),
        [
            r#"display: {"text/plain":"[output:3]"} {}"#,
            r#"display: {"text/html":"<p>x</p>","text/plain":"Out[3:1]: x"} {"engine_id":3}"#,
        ]
    );
    // By type, a result alone has no label.
    assert_eq!(
        snap(&render_grouped_with(
            &[res(3, 1, "x")],
            GroupBy::Type,
            PLAIN
        ))
        .len(),
        1
    );
}

#[test]
fn grouped_nothing_renders_nothing() {
    for g in [GroupBy::Type, GroupBy::Engine, GroupBy::Order] {
        assert!(render_grouped_with(&[], g, PLAIN).is_empty());
        assert!(render_grouped_with(&[err(0), so(1, "")], g, PLAIN).is_empty());
    }
}

#[test]
fn results_without_text_plain_are_shown_as_is() {
    let png = out(
        0,
        OutputKind::Result {
            execution_count: 2,
            data: obj(json!({"image/png": "iVBOR"})),
            metadata: obj(json!({"image/png": {"width": 3}})),
        },
    );
    assert_eq!(
        snap(&render_grouped_with(&[png], GroupBy::Type, PLAIN)),
        [r#"display: {"image/png":"iVBOR"} {"engine_id":0,"image/png":{"width":3}}"#]
    );
}

#[test]
fn streaming_blocks_per_engine_and_stream() {
    let mut r = StreamRenderer::with_style("px-abc", PLAIN);
    let mut emits = Vec::new();
    for o in [
        so(0, "a"),
        so(1, "x\n"),
        se(0, "oops\n"),
        so(0, "b\n"),
        so(0, ""),
        disp(1, "fig"),
        res(0, 12, "[1,\n 2]"),
        so(1, "y\n"),
    ] {
        emits.extend(r.push(&o));
    }
    // Engine 0's outputs come before engine 1's: its stderr block moves engine 1's stdout
    // down one slot, and so does its result after engine 1's display.
    assert_eq!(
        snap(&emits),
        [
            r#"display[px-abc-0]: {"text/plain":"[stdout:0] a"} {}"#,
            r#"display[px-abc-1]: {"text/plain":"[stdout:1] x\n"} {}"#,
            r#"update[px-abc-1]: {"text/plain":"[stderr:0] oops\n"}"#,
            r#"display[px-abc-2]: {"text/plain":"[stdout:1] x\n"} {}"#,
            r#"update[px-abc-0]: {"text/plain":"[stdout:0] ab\n"}"#,
            r#"display[px-abc-3]: {"text/plain":"[output:1]"} {}"#,
            r#"display[px-abc-4]: {"image/png":"iVBOR","text/plain":"fig"} {"engine":1,"image/png":{"width":10}}"#,
            r#"update[px-abc-2]: {"text/html":"<p>[1,\n 2]</p>","text/plain":"Out[0:12]: \n[1,\n 2]"}"#,
            r#"update[px-abc-3]: {"text/plain":"[stdout:1] x\n"}"#,
            r#"update[px-abc-4]: {"text/plain":"[output:1]"}"#,
            r#"display[px-abc-5]: {"image/png":"iVBOR","text/plain":"fig"} {"engine":1,"image/png":{"width":10}}"#,
            r#"update[px-abc-3]: {"text/plain":"[stdout:1] x\ny\n"}"#,
        ]
    );
    assert_eq!(
        final_blocks(&emits),
        [
            "[stdout:0] ab\n",
            "[stderr:0] oops\n",
            "Out[0:12]: \n[1,\n 2]",
            "[stdout:1] x\ny\n",
            "[output:1]",
            "fig",
        ]
    );
    assert_eq!(r.text(0, StreamName::Stdout), Some("ab\n"));
    assert_eq!(r.finish(), (Vec::new(), None));
}

/// The text/plain of each slot once every update has been applied, in slot order (what a
/// notebook saves).
fn final_blocks(emits: &[Emit]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    for emit in emits {
        let (data, id) = match emit {
            Emit::DisplayData {
                data,
                display_id: Some(id),
                ..
            } => {
                ids.push(id.clone());
                texts.push(String::new());
                (data, id)
            }
            Emit::UpdateDisplayData {
                data, display_id, ..
            } => (data, display_id),
            _ => continue,
        };
        if let Some(at) = ids.iter().position(|i| i == id) {
            texts[at] = data["text/plain"].as_str().unwrap_or_default().to_owned();
        }
    }
    texts
}

#[test]
fn streamed_blocks_end_in_engine_order_whatever_the_arrival_order() {
    // Each engine prints, then returns its value; the engines interleave differently each run.
    let arrivals = [
        vec![
            so(2, "c\n"),
            so(0, "a\n"),
            so(1, "b\n"),
            res(1, 3, "1"),
            so(0, "a2\n"),
        ],
        vec![
            so(0, "a\n"),
            so(1, "b\n"),
            so(0, "a2\n"),
            so(2, "c\n"),
            res(1, 3, "1"),
        ],
        vec![
            so(1, "b\n"),
            res(1, 3, "1"),
            so(0, "a\n"),
            so(2, "c\n"),
            so(0, "a2\n"),
        ],
    ];
    let want = [
        "[stdout:0] a\na2\n",
        "[stdout:1] b\n",
        "Out[1:3]: 1",
        "[stdout:2] c\n",
    ];
    for (run, outputs) in arrivals.iter().enumerate() {
        let mut r = StreamRenderer::with_style("p", PLAIN);
        let emits: Vec<Emit> = outputs.iter().flat_map(|o| r.push(o)).collect();
        assert_eq!(final_blocks(&emits), want, "run {run}");
    }
}

#[test]
fn streaming_errors() {
    let mut r = StreamRenderer::new("p");
    for e in [3, 1, 5, 0, 2, 4] {
        assert!(
            r.push(&err(e)).is_empty(),
            "tracebacks wait for the step's end"
        );
    }
    let (emits, error) = r.finish();
    assert_eq!(
        snap(&emits),
        [
            r#"stderr: "[0:execute]\nTraceback\nValueError: bad 0\n""#,
            r#"stderr: "[1:execute]\nTraceback\nValueError: bad 1\n""#,
            r#"stderr: "[2:execute]\nTraceback\nValueError: bad 2\n""#,
            r#"stderr: "[3:execute]\nTraceback\nValueError: bad 3\n""#,
            r#"stderr: "[4:execute] ValueError: bad\n""#,
            r#"stderr: "[5:execute] ValueError: bad\n""#,
        ]
    );
    assert_eq!(r.error_count(), 6);
    assert_eq!(error, Some(already_displayed_error(6)));
}

#[test]
fn already_displayed_error_text() {
    let e = already_displayed_error(1);
    assert_eq!(
        (e.ename.as_str(), e.evalue.as_str()),
        ("AlreadyDisplayedError", "1 errors")
    );
    assert_eq!(e.traceback, ["1 errors"]);
    assert_eq!(already_displayed_error(2).evalue, "2 errors");
}

#[test]
fn composite_error_shape() {
    let errors = EngineError::collect(&[err(1), so(0, "x"), err(0)]);
    assert_eq!(errors.iter().map(|e| e.engine).collect::<Vec<_>>(), [0, 1]);
    let c = composite_error(&errors);
    assert_eq!(c.ename, "CompositeError");
    assert_eq!(
        c.evalue,
        "one or more exceptions raised in: %px\n[0:execute]ValueError: bad\n[1:execute]ValueError: bad"
    );
    assert_eq!(
        c.traceback,
        [
            "[0:execute]:",
            "Traceback",
            "ValueError: bad 0",
            "",
            "[1:execute]:",
            "Traceback",
            "ValueError: bad 1",
            ""
        ]
    );

    let six: Vec<EngineOutput> = (0..6).rev().map(err).collect();
    let c = composite_error(&EngineError::collect(&six));
    assert!(c
        .evalue
        .ends_with("\n[3:execute]ValueError: bad\n.... 2 more exceptions ..."));
    assert_eq!(
        c.traceback.last().map(String::as_str),
        Some("... 2 more exceptions ...")
    );
    assert_eq!(
        c.traceback
            .iter()
            .filter(|l| l.ends_with(":execute]:"))
            .count(),
        4
    );

    let bare = EngineError {
        engine: 7,
        ename: "E".into(),
        evalue: "v".into(),
        traceback: vec![],
    };
    assert_eq!(
        composite_error(std::slice::from_ref(&bare)).traceback,
        ["[7:execute]:", "No traceback available", ""]
    );

    assert_eq!(final_error(&[], true, false), None);
    assert_eq!(
        final_error(std::slice::from_ref(&bare), true, false),
        Some(already_displayed_error(1))
    );
    assert_eq!(
        final_error(std::slice::from_ref(&bare), false, false),
        Some(composite_error(std::slice::from_ref(&bare)))
    );
    // One engine named alone (`--targets 7`): its RemoteError, streamed or not.
    for streamed in [true, false] {
        let error = final_error(std::slice::from_ref(&bare), streamed, true).expect("error");
        assert_eq!(
            (error.ename.as_str(), error.evalue.as_str()),
            ("RemoteError", "[7:execute] E: v")
        );
        assert_eq!(error.traceback, ["No traceback available"]);
    }
    let two = [bare.clone(), EngineError { engine: 8, ..bare }];
    assert_eq!(final_error(&two, false, true), Some(composite_error(&two)));
}

#[test]
fn notices() {
    let text = |e: Emit| match e {
        Emit::Stream { name, text } => format!("{}: {text}", name.as_str()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text(interrupt_notice(&Signal::default())),
        "stderr: Received Keyboard Interrupt. Sending signal SIGINT to engines...\n"
    );
    let kill = Signal::parse("9").expect("signal");
    assert_eq!(
        text(interrupt_notice(&kill)),
        "stderr: Received Keyboard Interrupt. Sending signal 9 to engines...\n"
    );
    assert_eq!(
        text(aborted_notice(2, &AbortReason::Interrupted)),
        "stderr: [2:execute] aborted: the engine was interrupted before it ran this cell\n"
    );
    assert_eq!(
        text(aborted_notice(0, &AbortReason::EngineStopped)),
        "stderr: [0:execute] aborted: the engine stopped before it finished this cell\n"
    );
    assert_eq!(
        text(aborted_notice(
            1,
            &AbortReason::Other("the controller restarted".into())
        )),
        "stderr: [1:execute] aborted: the controller restarted\n"
    );
    assert!(AbortReason::EarlierError
        .to_string()
        .starts_with("an earlier cell failed"));
    assert_eq!(PENDING_RESULT, "<AsyncResult(%px): pending>");
    assert_eq!(
        NO_LAST_RESULT,
        "%pxresult recalls last %px result, which has not yet been used."
    );
}

#[test]
fn progress_line() {
    assert_eq!(progress_text(1, 4), "%px: 1/4 engines done");
    assert_eq!(progress_text(0, 1), "%px: 0/1 engine done");
    assert_eq!(
        snap(&[
            progress("px-c-progress", 1, 4, false),
            progress("px-c-progress", 4, 4, true)
        ]),
        [
            r#"display[px-c-progress]: {"text/plain":"%px: 1/4 engines done"} {}"#,
            r#"update[px-c-progress]: {"text/plain":"%px: 4/4 engines done"}"#,
        ]
    );
}

#[test]
fn verbose_notice_abbreviates_long_lists() {
    let live: Vec<u32> = (0..12).collect();
    let t = Targets::parse("::1").expect("targets");
    let ids = t.resolve(&live).expect("ids");
    let e = parallax_magics::execution_notice(true, &t, &ids);
    assert_eq!(
        e,
        Emit::Stream {
            name: StreamName::Stdout,
            text: "Parallel execution on engine(s): [0, 1, 2, 3, ..., 8, 9, 10, 11]\n".into()
        }
    );
    let e = parallax_magics::execution_notice(false, &Targets::One(-1), &[11]);
    assert_eq!(
        e,
        Emit::Stream {
            name: StreamName::Stdout,
            text: "Async parallel execution on engine(s): -1\n".into()
        }
    );
}

#[test]
fn emits_and_outputs_have_a_stable_json_form() {
    let o: EngineOutput = serde_json::from_value(json!({
        "engine": 1, "kind": {"type": "stream", "name": "stdout", "text": "hi"}
    }))
    .expect("engine output");
    assert_eq!(o, so(1, "hi"));
    let e = serde_json::to_value(StreamRenderer::new("p").push(&o)).expect("json");
    assert_eq!(
        e,
        json!([{"type": "display_data", "data": {"text/plain": "[stdout:1] hi"},
                "metadata": {}, "display_id": "p-0"}])
    );
}
