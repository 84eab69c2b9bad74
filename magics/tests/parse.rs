//! Table-driven tests of `parse_cell`: cells in, plans (or one-line errors) out.

use parallax_magics::{
    has_parallel_magic, parse_cell, ClusterCommand, GroupBy, ParallelStep, Plan, PxConfig,
    PxConfigChange, PxOptions, ResultOptions, Signal, Step, Targets,
};

fn cfg() -> PxConfig {
    PxConfig::default()
}

fn autopx() -> PxConfig {
    PxConfig {
        autopx: true,
        ..PxConfig::default()
    }
}

fn local(code: &str) -> Step {
    Step::Local(code.into())
}

/// A parallel step with the default options.
fn par(code: &str) -> Step {
    par_with(code, cfg().px_options())
}

fn par_with(code: &str, options: PxOptions) -> Step {
    Step::Parallel(ParallelStep {
        code: code.into(),
        options,
    })
}

fn opts(f: impl FnOnce(&mut PxOptions)) -> PxOptions {
    let mut o = cfg().px_options();
    f(&mut o);
    o
}

fn plan(code: &str, config: &PxConfig) -> Vec<Step> {
    match parse_cell(code, config) {
        Ok(Plan { steps }) => steps,
        Err(e) => panic!("{code:?}: {e}"),
    }
}

#[test]
fn cells_without_parallel_magics_are_local_byte_for_byte() {
    let cells = [
        "",
        "\n\n",
        "x = 1",
        "x = 1\n",
        "x = 1\r\ny = 2\r\n",
        "%pylab inline\nplot()",
        "%%timeit\nx",
        "%%time\n%px x",
        "if x:\n    %px y\n",
        "print('%px')",
        "s = \"\"\"\n%px x\n\"\"\"",
        "s = '''\n%px x\n'''\n",
        "f(1,\n%px x)",
        "x = 1 + \\\n%px 2",
        "# %px commented",
        "%pxfoo 1",
        "%px(1)",
        "%%pxfoo\nx",
        "  x = 1",
        "!echo \"%px\nx",
    ];
    for code in cells {
        assert_eq!(plan(code, &cfg()), vec![local(code)], "{code:?}");
        assert!(!has_parallel_magic(code), "{code:?}");
    }
}

#[test]
fn line_magics_split_the_cell_in_order() {
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("%px import numpy", vec![par("import numpy")]),
        ("%px   x = 1  ", vec![par("x = 1")]),
        ("%px", vec![par("")]),
        (
            "%px import numpy\nx = 5\n%px print(1)",
            vec![par("import numpy"), local("x = 5"), par("print(1)")],
        ),
        (
            "a = 1\nb = 2\n%px c\nd = 3\n",
            vec![local("a = 1\nb = 2"), par("c"), local("d = 3")],
        ),
        (
            "%px c = 1\n%px print(c)",
            vec![par("c = 1"), par("print(c)")],
        ),
        ("%px a\n\n\n%px b", vec![par("a"), par("b")]),
        ("x = 1\r\n%px y\r\n", vec![local("x = 1"), par("y")]),
        // The line form takes no options: they are code (as in ipyparallel).
        ("%px --targets 0 x", vec![par("--targets 0 x")]),
        // IPython joins backslash-continued magic lines with a space.
        (
            "%px x = 1 + \\\n    2\ny",
            vec![par("x = 1 +      2"), local("y")],
        ),
        // Quotes inside a magic line do not open strings for the scanner.
        (
            "%px print(\"it's\")\n%px y",
            vec![par("print(\"it's\")"), par("y")],
        ),
        // A string that closes lets later lines be magics again.
        ("s = '''\n'''\n%px x", vec![local("s = '''\n'''"), par("x")]),
        (
            "def f():\n    pass\n%px f",
            vec![local("def f():\n    pass"), par("f")],
        ),
        ("x = [1,\n 2]\n%px y", vec![local("x = [1,\n 2]"), par("y")]),
        ("%pxresult", vec![Step::Result(ResultOptions::default())]),
        (
            "%pxresult -e --out r",
            vec![Step::Result(ResultOptions {
                group_outputs: GroupBy::Engine,
                out: Some("r".into()),
            })],
        ),
        (
            "%result --group-outputs=order",
            vec![Step::Result(ResultOptions {
                group_outputs: GroupBy::Order,
                out: None,
            })],
        ),
        ("%autopx", vec![Step::Autopx]),
        (
            "%pxconfig --verbose\n%px x",
            vec![
                Step::Config(PxConfigChange {
                    verbose: Some(true),
                    ..Default::default()
                }),
                par("x"),
            ],
        ),
        (
            "%cluster start -n 4",
            vec![Step::Cluster(ClusterCommand::Start {
                engines: Some(4),
                keep: false,
            })],
        ),
        (
            "%cluster start",
            vec![Step::Cluster(ClusterCommand::Start {
                engines: None,
                keep: false,
            })],
        ),
        (
            "%cluster start --engines=2",
            vec![Step::Cluster(ClusterCommand::Start {
                engines: Some(2),
                keep: false,
            })],
        ),
        (
            "%cluster start -n 2 --keep",
            vec![Step::Cluster(ClusterCommand::Start {
                engines: Some(2),
                keep: true,
            })],
        ),
        ("%cluster stop", vec![Step::Cluster(ClusterCommand::Stop)]),
        (
            "%cluster status\n",
            vec![Step::Cluster(ClusterCommand::Status)],
        ),
    ];
    for (code, want) in cases {
        assert_eq!(plan(code, &cfg()), want, "{code:?}");
        assert!(has_parallel_magic(code), "{code:?}");
    }
}

#[test]
fn cell_magic_takes_the_whole_body_with_options() {
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("%%px\nprint(1)\n", vec![par("print(1)\n")]),
        ("%%px\n", vec![par("")]),
        ("%%px", vec![par("")]),
        ("\n\n%%px\nx", vec![par("x")]),
        ("  %%px\nx", vec![par("x")]),
        // The body is code, magics and all.
        ("%%px\n%px y\nz", vec![par("%px y\nz")]),
        ("%%px\r\nx\r\n", vec![par("x\r\n")]),
        (
            "%%px --targets 0\nx",
            vec![par_with("x", opts(|o| o.targets = Targets::One(0)))],
        ),
        (
            "%%px -t 1:3\nx",
            vec![par_with(
                "x",
                opts(|o| {
                    o.targets = Targets::Slice {
                        start: Some(1),
                        stop: Some(3),
                        step: None,
                    }
                }),
            )],
        ),
        (
            "%%px --targets=::2\nx",
            vec![par_with(
                "x",
                opts(|o| {
                    o.targets = Targets::Slice {
                        start: None,
                        stop: None,
                        step: Some(2),
                    }
                }),
            )],
        ),
        (
            "%%px --targets -1\nx",
            vec![par_with("x", opts(|o| o.targets = Targets::One(-1)))],
        ),
        (
            "%%px --targets '0, 2'\nx",
            vec![par_with(
                "x",
                opts(|o| o.targets = Targets::Ids(vec![0, 2])),
            )],
        ),
        (
            "%%px --targets [0,2]\nx",
            vec![par_with(
                "x",
                opts(|o| o.targets = Targets::Ids(vec![0, 2])),
            )],
        ),
        (
            "%%px -t0\nx",
            vec![par_with("x", opts(|o| o.targets = Targets::One(0)))],
        ),
        (
            "%%px --noblock\nx",
            vec![par_with("x", opts(|o| o.block = false))],
        ),
        ("%%px -a\nx", vec![par_with("x", opts(|o| o.block = false))]),
        ("%%px --noblock --block\nx", vec![par("x")]),
        ("%%px -b\nx", vec![par("x")]),
        (
            "%%px --group-outputs=engine\nx",
            vec![par_with("x", opts(|o| o.group_outputs = GroupBy::Engine))],
        ),
        (
            "%%px --group-outputs order\nx",
            vec![par_with("x", opts(|o| o.group_outputs = GroupBy::Order))],
        ),
        (
            "%%px -e\nx",
            vec![par_with("x", opts(|o| o.group_outputs = GroupBy::Engine))],
        ),
        (
            "%%px -r\nx",
            vec![par_with("x", opts(|o| o.group_outputs = GroupBy::Order))],
        ),
        ("%%px --group-outputs=type\nx", vec![par("x")]),
        (
            "%%px --no-stream\nx",
            vec![par_with("x", opts(|o| o.stream = false))],
        ),
        ("%%px --no-stream --stream\nx", vec![par("x")]),
        (
            "%%px --local\nx",
            vec![par_with("x", opts(|o| o.local = true))],
        ),
        (
            "%%px --out ar\nx",
            vec![par_with("x", opts(|o| o.out = Some("ar".into())))],
        ),
        (
            "%%px -o ar\nx",
            vec![par_with("x", opts(|o| o.out = Some("ar".into())))],
        ),
        (
            "%%px --verbose\nx",
            vec![par_with("x", opts(|o| o.verbose = true))],
        ),
        ("%%px --verbose --no-verbose\nx", vec![par("x")]),
        (
            "%%px --progress-after 0.5\nx",
            vec![par_with("x", opts(|o| o.progress_after = 0.5))],
        ),
        (
            "%%px --progress-after -1\nx",
            vec![par_with("x", opts(|o| o.progress_after = -1.0))],
        ),
        (
            "%%px --signal-on-interrupt SIGTERM\nx",
            vec![par_with(
                "x",
                opts(|o| o.signal_on_interrupt = Signal::parse("SIGTERM").expect("sig")),
            )],
        ),
        (
            "%%px --signal-on-interrupt 9\nx",
            vec![par_with(
                "x",
                opts(|o| o.signal_on_interrupt = Signal::parse("9").expect("sig")),
            )],
        ),
        // Unique prefixes of long options, as argparse allows.
        (
            "%%px --no-s --tar 1\nx",
            vec![par_with(
                "x",
                opts(|o| {
                    o.stream = false;
                    o.targets = Targets::One(1);
                }),
            )],
        ),
        // Combined short flags.
        (
            "%%px -ae\nx",
            vec![par_with(
                "x",
                opts(|o| {
                    o.block = false;
                    o.group_outputs = GroupBy::Engine;
                }),
            )],
        ),
        (
            "%%px --targets 0 --noblock -e --no-stream --local -o r --verbose\nx",
            vec![par_with(
                "x",
                opts(|o| {
                    o.targets = Targets::One(0);
                    o.block = false;
                    o.group_outputs = GroupBy::Engine;
                    o.stream = false;
                    o.local = true;
                    o.out = Some("r".into());
                    o.verbose = true;
                }),
            )],
        ),
    ];
    for (code, want) in cases {
        assert_eq!(plan(code, &cfg()), want, "{code:?}");
    }
}

#[test]
fn cell_options_override_the_config_defaults() {
    let config = PxConfig {
        targets: Targets::Ids(vec![1]),
        block: false,
        verbose: true,
        stream: false,
        progress_after: 5.0,
        signal_on_interrupt: Signal::parse("SIGKILL").expect("sig"),
        autopx: false,
    };
    let defaults = config.px_options();
    assert_eq!(
        plan("%px x", &config),
        vec![par_with("x", defaults.clone())]
    );
    assert_eq!(
        plan("%%px\nx", &config),
        vec![par_with("x", defaults.clone())]
    );
    let mut o = defaults;
    o.targets = Targets::All;
    o.block = true;
    o.stream = true;
    o.verbose = false;
    assert_eq!(
        plan("%%px -t all --block --stream --no-verbose\nx", &config),
        vec![par_with("x", o)]
    );
}

#[test]
fn pxconfig_sets_each_default() {
    let cases: Vec<(&str, PxConfigChange)> = vec![
        ("", PxConfigChange::default()),
        (
            "--targets ::2",
            PxConfigChange {
                targets: Some(Targets::Slice {
                    start: None,
                    stop: None,
                    step: Some(2),
                }),
                ..Default::default()
            },
        ),
        (
            "-t all",
            PxConfigChange {
                targets: Some(Targets::All),
                ..Default::default()
            },
        ),
        (
            "--block",
            PxConfigChange {
                block: Some(true),
                ..Default::default()
            },
        ),
        (
            "--noblock",
            PxConfigChange {
                block: Some(false),
                ..Default::default()
            },
        ),
        (
            "--verbose",
            PxConfigChange {
                verbose: Some(true),
                ..Default::default()
            },
        ),
        (
            "--no-verbose",
            PxConfigChange {
                verbose: Some(false),
                ..Default::default()
            },
        ),
        (
            "--stream",
            PxConfigChange {
                stream: Some(true),
                ..Default::default()
            },
        ),
        (
            "--no-stream",
            PxConfigChange {
                stream: Some(false),
                ..Default::default()
            },
        ),
        (
            "--progress-after 0",
            PxConfigChange {
                progress_after: Some(0.0),
                ..Default::default()
            },
        ),
        (
            "--signal-on-interrupt INT",
            PxConfigChange {
                signal_on_interrupt: Signal::parse("SIGINT"),
                ..Default::default()
            },
        ),
    ];
    for (line, want) in cases {
        let code = format!("%pxconfig {line}");
        assert_eq!(
            plan(&code, &cfg()),
            vec![Step::Config(want.clone())],
            "{code:?}"
        );
        let mut config = cfg();
        config.apply(&want);
        if let Some(t) = want.targets {
            assert_eq!(config.targets, t);
        }
    }
}

#[test]
fn bad_magic_lines_are_one_line_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "%%px --foo\nx",
            "%%px: unknown option --foo (options: --targets, --block, --noblock, --stream, --no-stream, --verbose, --no-verbose, --progress-after, --signal-on-interrupt, --local, --group-outputs, -e, -r, --out)",
        ),
        ("%%px -z\nx", "%%px: unknown option -z (options: --targets"),
        ("%%px --targets\nx", "%%px: option --targets needs a value (all, an engine id, a list like 0,2 or a slice like 1:3)"),
        ("%%px --targets x\nx", "%%px: bad value \"x\" for --targets (\"x\" is not an integer; use all, an engine id"),
        ("%%px --targets ::0\nx", "%%px: bad value \"::0\" for --targets (slice step cannot be zero"),
        ("%%px --group-outputs=foo\nx", "%%px: bad value \"foo\" for --group-outputs (engine, order or type)"),
        ("%%px --progress-after soon\nx", "%%px: bad value \"soon\" for --progress-after (seconds"),
        ("%%px --signal-on-interrupt SIGFOO\nx", "%%px: bad value \"SIGFOO\" for --signal-on-interrupt (a signal name like SIGINT"),
        ("%%px --out 1x\nx", "%%px: bad value \"1x\" for --out (a Python name)"),
        ("%%px --out\nx", "%%px: option --out needs a value (a Python name)"),
        ("%%px --block=yes\nx", "%%px: option --block takes no value"),
        ("%%px --no\nx", "%%px: ambiguous option --no (could be --noblock, --no-stream, --no-verbose)"),
        ("%%px print(1)\nx", "%%px: unexpected argument \"print(1)\" (%%px takes only options; code goes on the next lines)"),
        ("%%px --targets '0\nx", "%%px: unclosed ' quote"),
        ("%pxconfig --local", "%pxconfig: unknown option --local (options: --targets, --block, --noblock, --stream, --no-stream, --verbose, --no-verbose, --progress-after, --signal-on-interrupt)"),
        ("%pxconfig --group-outputs engine", "%pxconfig: unknown option --group-outputs"),
        ("%pxconfig verbose", "%pxconfig: unexpected argument \"verbose\""),
        ("%pxresult --targets 0", "%pxresult: unknown option --targets (options: --group-outputs, -e, -r, --out)"),
        ("%autopx on", "%autopx: unexpected argument \"on\" (%autopx takes no arguments; it toggles)"),
        ("%cluster", "%cluster: unexpected argument \"\" (use %cluster start -n N, %cluster stop or %cluster status)"),
        ("%cluster launch", "%cluster: unexpected argument \"launch\""),
        ("%cluster start -n 0", "%cluster: bad value \"0\" for -n (a positive number of engines)"),
        ("%cluster start -n", "%cluster: option -n needs a value"),
        ("%cluster stop now", "%cluster: unexpected argument \"now\" (%cluster stop takes no arguments)"),
        ("x = 1\n%px y\n%pxconfig --bogus", "%pxconfig: unknown option --bogus"),
    ];
    for (code, want) in cases {
        let err = parse_cell(code, &cfg()).expect_err(code);
        let msg = err.to_string();
        assert!(msg.starts_with(want), "{code:?}\n got: {msg}\nwant: {want}");
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(err.ename(), "UsageError");
        assert_eq!(err.stderr_text(), format!("UsageError: {msg}\n"));
        assert!(has_parallel_magic(code), "{code:?}");
    }
}

#[test]
fn autopx_sends_cells_to_the_engines() {
    let c = autopx();
    let d = c.px_options();
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("x = 1\nx", vec![par_with("x = 1\nx", d.clone())]),
        ("x = 1\n", vec![par_with("x = 1\n", d.clone())]),
        ("%autopx", vec![Step::Autopx]),
        ("%autopx\n", vec![Step::Autopx]),
        (
            "%%px -t 0\nx",
            vec![par_with("x", opts(|o| o.targets = Targets::One(0)))],
        ),
        ("%%time\nx", vec![par_with("%%time\nx", d.clone())]),
        ("%pxresult", vec![Step::Result(ResultOptions::default())]),
        (
            "a = 1\n%pxconfig --verbose\nb = 2",
            vec![
                par_with("a = 1", d.clone()),
                Step::Config(PxConfigChange {
                    verbose: Some(true),
                    ..Default::default()
                }),
                par_with("b = 2", d.clone()),
            ],
        ),
        (
            "%px a\nb",
            vec![par_with("a", d.clone()), par_with("b", d.clone())],
        ),
        ("%time x", vec![par_with("%time x", d.clone())]),
        // Blank cells stay with the local kernel, which answers them as it would.
        ("", vec![local("")]),
        ("\n  \n", vec![local("\n  \n")]),
    ];
    for (code, want) in cases {
        assert_eq!(plan(code, &c), want, "{code:?}");
    }
}

#[test]
fn autopx_uses_the_config_defaults() {
    let c = PxConfig {
        autopx: true,
        targets: Targets::Ids(vec![0]),
        stream: false,
        ..PxConfig::default()
    };
    assert_eq!(plan("x", &c), vec![par_with("x", c.px_options())]);
    assert_eq!(c.px_options().targets, Targets::Ids(vec![0]));
    assert!(!c.px_options().stream);
}

#[test]
fn plans_serialize_for_the_kernel_logs() {
    let steps = plan("%px a\nb", &cfg());
    let json = serde_json::to_value(&steps).expect("json");
    assert_eq!(json[0]["parallel"]["code"], "a");
    assert_eq!(json[0]["parallel"]["options"]["targets"], "all");
    assert_eq!(json[1]["local"], "b");
}
