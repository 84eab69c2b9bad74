//! Engine launchers: where a cluster's engines run and how they are started.
//!
//! A launcher turns "the engine of slot N" into a process that the supervisor starts on this
//! machine and watches like any other child: the engine process itself ([`local`]), or an `ssh`
//! client whose remote command is the engine ([`ssh`]), which then lives exactly as long as that
//! session. The supervisor needs nothing else to know: a child's exit is an engine's exit,
//! stopping the child stops the engine, and `cluster.json` records each child with its host.
//!
//! One child may run the engines of several slots: [`mpi`] starts a single `mpiexec` whose
//! ranks are the engines ([`Launcher::commands`] says which slots each child runs). Such a
//! cluster has the size it started with ([`Launcher::fixed_size`]): no scaling, no restarting
//! one engine process.
//!
//! An engine on another host cannot read the profile's files, so it gets the controller's engine
//! file as one line on standard input (`parallax engine --file -`); the supervisor keeps that
//! input open, and the engine stops when it closes. Launchers whose engines run elsewhere say so
//! ([`Launcher::remote`]): the controller must then listen beyond loopback, and engines are told
//! the address of the interface that faces their hosts ([`location`]).

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use parallax_wire::cluster::EngineId;
use serde::{Deserialize, Serialize};

use crate::LaunchError;

pub mod local;
mod location;
pub mod mpi;
pub mod ssh;

pub use location::location_for;

/// Which launcher starts the engines, with its settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "launcher", rename_all = "lowercase")]
pub enum Engines {
    /// Engine processes on this machine.
    #[default]
    Local,
    /// Engines on other hosts, each under an ssh session.
    Ssh(ssh::SshSettings),
    /// Engines as the ranks of one `mpiexec`.
    Mpi(mpi::MpiSettings),
}

impl Engines {
    /// The launcher for these settings.
    pub fn launcher(&self, exe: PathBuf) -> Box<dyn Launcher> {
        match self {
            Engines::Local => Box::new(local::Local { exe }),
            Engines::Ssh(settings) => Box::new(ssh::Ssh::new(settings.clone())),
            Engines::Mpi(settings) => Box::new(mpi::Mpi::new(settings.clone(), exe)),
        }
    }

    /// The launcher's name, as `cluster list` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Engines::Local => "local",
            Engines::Ssh(_) => "ssh",
            Engines::Mpi(_) => "mpi",
        }
    }
}

/// Why a cluster of the launcher `name` (as `cluster.json` records it) cannot change its number
/// of engines, if it cannot.
pub fn fixed_size(name: &str) -> Option<&'static str> {
    (name == "mpi").then_some(mpi::FIXED_SIZE)
}

/// What every engine runs, whoever starts it.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    /// The kernelspec.
    pub kernel: String,
    /// Start a new kernel when it dies (`--restart-kernel`).
    pub restart_kernel: bool,
    /// The id to ask for; without it, the engine of slot N asks for id N (so an engine started
    /// again for its slot comes back under its id, wherever it runs).
    pub id: Option<EngineId>,
    /// How long registering may take (`parallax engine --timeout`).
    pub timeout: Duration,
    /// The controller's engine file: its path on this machine ...
    pub file: PathBuf,
    /// ... and its contents, for engines that cannot read it there.
    pub connection: String,
}

impl EngineSpec {
    /// The `parallax engine` arguments after the connection source, for the engine of `slot`
    /// (`None`: the engine's id comes from elsewhere, an MPI rank).
    pub fn engine_args(&self, slot: Option<usize>) -> Vec<String> {
        let mut args = vec![
            "--kernel".to_owned(),
            self.kernel.clone(),
            "--timeout".into(),
            self.timeout.as_secs_f64().to_string(),
        ];
        if self.restart_kernel {
            args.push("--restart-kernel".into());
        }
        let slot_id = slot.and_then(|slot| EngineId::try_from(slot).ok());
        if let Some(id) = self.id.or(slot_id) {
            args.extend(["--id".into(), id.to_string()]);
        }
        args
    }
}

/// A process the supervisor starts for an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Written to the process's standard input as one line, which then stays open for as long
    /// as the supervisor wants the engine. `None`: standard input is closed.
    pub stdin: Option<String>,
    /// Where the engine runs, as `cluster list` shows it.
    pub host: String,
    /// Environment variables set for the process (besides what it inherits). Values stay off
    /// the command line, which every user of the machine can read.
    pub env: Vec<(String, String)>,
}

/// A process the supervisor starts, and the slots whose engines it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineProcess {
    pub command: EngineCommand,
    pub slots: Range<usize>,
}

impl EngineProcess {
    /// One process per slot, from a launcher's `command(slot)`.
    pub fn per_slot(
        slots: Range<usize>,
        command: impl Fn(usize) -> EngineCommand,
    ) -> Vec<EngineProcess> {
        slots
            .map(|slot| EngineProcess {
                command: command(slot),
                slots: slot..slot + 1,
            })
            .collect()
    }
}

/// A check that runs before anything starts.
pub type Preflight<'a> = Pin<Box<dyn Future<Output = Result<(), LaunchError>> + Send + 'a>>;

/// What a launcher provides.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Its name, as `cluster list` shows it.
    fn name(&self) -> &'static str;

    /// Whether its engines run on other hosts: the controller must listen beyond loopback.
    fn remote(&self) -> bool;

    /// The name or address of a host its engines run on, as the network knows it (not an ssh
    /// alias): the controller tells engines the address of the interface that routes there.
    fn engine_host(&self) -> Option<String>;

    /// Checks made before the controller starts (each host reachable, the same Parallax, the
    /// engines' `kernel` there); the error names the host and what to change.
    fn preflight<'a>(&'a self, kernel: &'a str) -> Preflight<'a>;

    /// The processes that run the engines of `slots`: one per slot ([`EngineProcess::per_slot`]),
    /// or one for all of them.
    fn commands(&self, slots: Range<usize>, spec: &EngineSpec) -> Vec<EngineProcess>;

    /// Why its clusters keep the number of engines they started with, if they do: scaling is
    /// refused with this reason, and so is restarting engine processes.
    fn fixed_size(&self) -> Option<&'static str> {
        None
    }
}
