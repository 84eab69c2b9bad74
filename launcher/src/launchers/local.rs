//! Engines on this machine: one `parallax engine` process per slot, reading the profile's engine
//! file.

use std::ops::Range;
use std::path::PathBuf;

use super::{EngineCommand, EngineProcess, EngineSpec, Launcher, Preflight};

/// The local launcher.
#[derive(Debug)]
pub struct Local {
    /// The `parallax` binary.
    pub exe: PathBuf,
}

impl Launcher for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn remote(&self) -> bool {
        false
    }

    fn engine_host(&self) -> Option<String> {
        None
    }

    fn preflight<'a>(&'a self, _kernel: &'a str) -> Preflight<'a> {
        Box::pin(async { Ok(()) })
    }

    fn commands(&self, slots: Range<usize>, spec: &EngineSpec) -> Vec<EngineProcess> {
        EngineProcess::per_slot(slots, |slot| self.command(slot, spec))
    }
}

impl Local {
    /// The engine process of `slot`.
    fn command(&self, slot: usize, spec: &EngineSpec) -> EngineCommand {
        let mut args = vec![
            "engine".to_owned(),
            "--file".into(),
            spec.file.to_string_lossy().into_owned(),
        ];
        args.extend(spec.engine_args(Some(slot)));
        EngineCommand {
            program: self.exe.clone(),
            args,
            stdin: None,
            host: "localhost".into(),
            env: Vec::new(),
        }
    }
}
