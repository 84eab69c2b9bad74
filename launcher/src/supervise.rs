//! The supervisor: the process that starts a cluster's controller and engines and watches them
//! until the cluster is stopped.
//!
//! The controller runs here; each engine runs in a child process that the cluster's launcher
//! ([`crate::launchers`]) describes: the engine itself, an ssh client whose session is the
//! engine, or one `mpiexec` whose ranks are all the engines. Each child runs in its own process group with its stderr in the profile's `log/`, so
//! that a stop can end a child together with whatever it started (an engine's kernel). A child
//! that reads its connection info on standard input keeps that input open, held here, until it
//! exits: when the supervisor goes, so do its engines, wherever they run. One task waits on each
//! child and reports its exit; the supervisor's loop reacts: an engine that died is started again
//! under its old id when engines restart, a controller that died ends the cluster.
//!
//! Scaling: SIGUSR1 tells the supervisor to read the profile's `scale.json` (written by
//! [`crate::scale::scale`]) and start engine processes in new slots or stop the highest ones
//! (unless the launcher's clusters have a fixed size: then the request is ignored, and
//! [`crate::scale::scale`] refuses it before it gets here).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use parallax_client::ControllerClient;
use parallax_wire::cluster::{EngineId, EngineState};
use parallax_wire::profile::Profile;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::launchers::{location_for, EngineCommand, EngineProcess, EngineSpec, Launcher};
use crate::state::{self, ClusterState, ClusterStatus, EngineGroup};
use crate::{LaunchError, StartOptions};

/// Which child a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Controller,
    /// An engine process, by its slot (0..n), the first of its slots when it runs several.
    Engine(usize),
}

/// A child that has exited.
struct Exited {
    role: Role,
    pid: u32,
    status: String,
}

struct Supervisor<'a> {
    options: &'a StartOptions,
    launcher: Box<dyn Launcher>,
    /// The controller's engine file, once it is written: what engines connect with.
    connection: String,
    state: ClusterState,
    exits: mpsc::UnboundedSender<Exited>,
    client: Option<ControllerClient>,
    /// Engine processes stopped by a scale-down: their exit is expected, not restarted.
    retired: HashSet<u32>,
    /// When each slot's engine process last started, and how many times in a row it exited
    /// soon after (a host that is down, a kernel that cannot start): restarts back off.
    starts: HashMap<usize, (Instant, u32)>,
    /// Restarts waiting for their time: (when, slot, pid of the process that exited).
    pending: Vec<(Instant, usize, u32)>,
}

/// An engine process that exits sooner than this after it started counts as a quick failure.
const QUICK_EXIT: Duration = Duration::from_secs(30);
/// The longest wait before starting a slot's engine again.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before restarting after `failures` quick failures in a row: none after the
/// first, then 1, 2, 4 ... seconds, up to [`MAX_RESTART_DELAY`].
fn restart_delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(MAX_RESTART_DELAY),
    }
}

/// How long engines and the controller get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Starts the cluster and supervises it until `shutdown` resolves or the controller dies.
pub async fn supervise(
    options: &StartOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), LaunchError> {
    let profile = &options.profile;
    profile.create()?;
    // Before cluster.json exists (which is what `scale` checks), so that a SIGUSR1 never meets
    // the default action, which ends the process.
    let scale_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).map_err(
            |source| LaunchError::Spawn {
                what: "SIGUSR1 handler".into(),
                source,
            },
        )?;
    crate::scale::remove_request(profile);
    match state::status(profile) {
        ClusterStatus::Running(running) if running.supervisor_pid != std::process::id() => {
            return Err(LaunchError::AlreadyRunning {
                profile: profile.name().to_owned(),
                pid: running.supervisor_pid,
            });
        }
        ClusterStatus::Stale(stale) => {
            tracing::warn!(profile = profile.name(), "cleaning up a stale cluster");
            state::clean_stale(profile, &stale);
        }
        _ => {}
    }
    // Old connection files would make the wait below succeed before the new controller is up.
    state::remove_files(profile);

    options.check()?;
    let launcher = options.engines.launcher(options.exe.clone());
    launcher.preflight(&options.kernel).await?;

    let (exits, mut exited) = mpsc::unbounded_channel();
    let mut supervisor = Supervisor {
        options,
        state: ClusterState {
            profile: profile.name().to_owned(),
            n: options.n,
            kernel: options.kernel.clone(),
            launcher: launcher.name().into(),
            restart_engines: options.restart_engines,
            supervisor_pid: std::process::id(),
            controller_pid: None,
            engine_pids: Vec::new(),
            engine_hosts: Vec::new(),
            engine_groups: Vec::new(),
            started: parallax_wire::now_iso8601(),
        },
        launcher,
        connection: String::new(),
        exits,
        client: None,
        retired: HashSet::new(),
        starts: HashMap::new(),
        pending: Vec::new(),
    };
    supervisor.state.write(profile)?;
    let outcome = supervisor
        .start_and_watch(&mut exited, scale_signal, shutdown)
        .await;
    supervisor.stop_all(&mut exited).await;
    state::remove_files(profile);
    crate::scale::remove_request(profile);
    outcome
}

impl Supervisor<'_> {
    async fn start_and_watch(
        &mut self,
        exited: &mut mpsc::UnboundedReceiver<Exited>,
        mut scale_signal: tokio::signal::unix::Signal,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), LaunchError> {
        let profile = &self.options.profile;
        let mut args = vec![
            "controller".to_owned(),
            "--profile".into(),
            profile.name().into(),
            "--ip".into(),
            self.options.ip.clone(),
        ];
        if let Some(size) = self.options.max_message_size {
            args.extend(["--max-message-size".into(), size.to_string()]);
        }
        if self.options.curve {
            args.push("--curve".into());
        }
        if let Some(location) = self.location() {
            args.extend(["--location".into(), location]);
        }
        if let Some(ports) = self.options.ports {
            args.extend(["--ports".into(), ports.to_string()]);
        }
        let controller = EngineCommand {
            program: self.options.exe.clone(),
            args,
            stdin: None,
            host: "localhost".into(),
            env: Vec::new(),
        };
        let pid = self.spawn(
            Role::Controller,
            &controller,
            profile.log_dir().join("controller.log"),
        )?;
        self.state.controller_pid = Some(pid);
        self.state.write(profile)?;

        // Engines need the controller's engine file; the controller writes it once it listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !profile.engine_file().exists() {
            if let Ok(gone) = exited.try_recv() {
                return Err(LaunchError::ControllerFailed {
                    status: gone.status,
                    log: state::log_tail(&profile.log_dir().join("controller.log"), 20),
                });
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::ControllerFailed {
                    status: "no connection file after 30 s".into(),
                    log: state::log_tail(&profile.log_dir().join("controller.log"), 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.connection = std::fs::read_to_string(profile.engine_file())
            .map_err(|error| LaunchError::ControllerFailed {
                status: format!("cannot read its engine file: {error}"),
                log: String::new(),
            })?
            .replace('\n', " ");
        self.start_engines(0..self.options.n)?;
        self.state.write(profile)?;
        tracing::info!(
            profile = profile.name(),
            n = self.options.n,
            "cluster started"
        );

        tokio::pin!(shutdown);
        loop {
            let next_restart = self.pending.iter().map(|(at, _, _)| *at).min();
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(()) = scale_signal.recv() => self.rescale()?,
                () = async {
                    match next_restart {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    let due: Vec<(Instant, usize, u32)> =
                        self.pending.iter().copied().filter(|(at, _, _)| *at <= now).collect();
                    self.pending.retain(|(at, _, _)| *at > now);
                    for (_, slot, old_pid) in due {
                        // A scale-down may have removed the slot meanwhile.
                        if self.state.engine_pids.get(slot) == Some(&old_pid) {
                            self.restart_engine(slot, old_pid).await?;
                        }
                    }
                }
                Some(gone) = exited.recv() => match gone.role {
                    Role::Controller => {
                        return Err(LaunchError::ControllerFailed {
                            status: gone.status,
                            log: state::log_tail(&profile.log_dir().join("controller.log"), 20),
                        });
                    }
                    Role::Engine(_) if self.retired.remove(&gone.pid) => {
                        tracing::info!(pid = gone.pid, status = %gone.status, "retired engine process exited");
                    }
                    Role::Engine(slot) if self.state.engine_pids.get(slot) != Some(&gone.pid) => {
                        tracing::warn!(slot, pid = gone.pid, "an engine process of a slot no longer in use exited");
                    }
                    Role::Engine(slot) => {
                        tracing::warn!(slot, pid = gone.pid, status = %gone.status, "engine process exited");
                        if self.options.restart_engines && self.launcher.fixed_size().is_none() {
                            let failures = self.starts.get(&slot).map_or(0, |(at, failures)| {
                                if at.elapsed() < QUICK_EXIT { failures + 1 } else { 0 }
                            });
                            let delay = restart_delay(failures);
                            if let Some(entry) = self.starts.get_mut(&slot) {
                                entry.1 = failures;
                            }
                            if delay.is_zero() {
                                self.restart_engine(slot, gone.pid).await?;
                            } else {
                                tracing::warn!(slot, ?delay, failures, "the engine keeps exiting soon after it starts; waiting before starting it again");
                                self.pending.push((Instant::now() + delay, slot, gone.pid));
                            }
                        }
                    }
                },
            }
        }
    }

    /// Applies the profile's scale request: starts engine processes in new slots, or stops
    /// those of the highest slots (SIGTERM: each engine shuts its kernel down and exits).
    fn rescale(&mut self) -> Result<(), LaunchError> {
        let profile = &self.options.profile;
        let Some(n) = crate::scale::read_request(profile) else {
            tracing::warn!("SIGUSR1 without a valid scale.json; ignored");
            return Ok(());
        };
        if let Some(reason) = self.launcher.fixed_size() {
            tracing::warn!(n, "scale request ignored: {reason}");
            return Ok(());
        }
        let now = self.state.engine_pids.len();
        tracing::info!(from = now, to = n, "scaling");
        self.start_engines(now..n.max(now))?;
        while self.state.engine_pids.len() > n {
            self.state.engine_hosts.pop();
            if let Some(pid) = self.state.engine_pids.pop() {
                self.retired.insert(pid);
                state::signal_tree(pid, Signal::SIGTERM);
            }
        }
        self.state.n = n;
        self.state.write(profile)?;
        Ok(())
    }

    fn engine_log(&self, slots: &Range<usize>) -> PathBuf {
        self.options
            .profile
            .log_dir()
            .join(crate::engine_log_name(slots))
    }

    /// Where engines on other hosts dial: `--location`, else (for a controller on every
    /// interface) the address of the interface that routes to the first engine host.
    fn location(&self) -> Option<String> {
        if let Some(location) = &self.options.location {
            return Some(location.clone());
        }
        let unspecified = self
            .options
            .ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !self.launcher.remote() || !unspecified {
            return None;
        }
        let host = self.launcher.engine_host()?;
        match location_for(&host) {
            Some(ip) => {
                tracing::info!(%host, location = %ip, "engines will dial the interface facing their hosts");
                Some(ip.to_string())
            }
            None => {
                tracing::warn!(%host, "no route to the engine hosts found; engines are told this host's address");
                None
            }
        }
    }

    /// Starts the engines of new slots (the next ones), each slot recording the pid and host of
    /// the process that runs it.
    fn start_engines(&mut self, slots: Range<usize>) -> Result<(), LaunchError> {
        let spec = self.engine_spec(None);
        for process in self.launcher.commands(slots, &spec) {
            let pid = self.spawn_process(&process)?;
            let EngineProcess { command, slots } = process;
            if slots.len() != 1 || self.launcher.fixed_size().is_some() {
                self.state.engine_groups.push(EngineGroup {
                    pid,
                    program: command.program.to_string_lossy().into_owned(),
                    first: slots.start,
                    count: slots.len(),
                });
            }
            for _ in slots {
                self.state.engine_pids.push(pid);
                self.state.engine_hosts.push(command.host.clone());
            }
        }
        Ok(())
    }

    /// Starts the process of the engine of `slot` alone (an engine started again); returns its
    /// pid.
    fn spawn_engine(&mut self, slot: usize, id: Option<EngineId>) -> Result<u32, LaunchError> {
        let spec = self.engine_spec(id);
        let mut pid = None;
        for process in self.launcher.commands(slot..slot + 1, &spec) {
            pid = Some(self.spawn_process(&process)?);
        }
        pid.ok_or_else(|| LaunchError::Spawn {
            what: format!("engine {slot}"),
            source: std::io::Error::other("the launcher gave no command"),
        })
    }

    fn spawn_process(&mut self, process: &EngineProcess) -> Result<u32, LaunchError> {
        let failures = self.starts.get(&process.slots.start).map_or(0, |(_, f)| *f);
        self.starts
            .insert(process.slots.start, (Instant::now(), failures));
        let log = self.engine_log(&process.slots);
        self.spawn(Role::Engine(process.slots.start), &process.command, log)
    }

    /// What every engine runs; `id`: the id to reclaim.
    fn engine_spec(&self, id: Option<EngineId>) -> EngineSpec {
        EngineSpec {
            kernel: self.options.kernel.clone(),
            restart_kernel: self.options.restart_engines,
            id,
            timeout: self.options.timeout,
            file: self.options.profile.engine_file(),
            connection: self.connection.clone(),
        }
    }

    /// Starts a child in its own process group, stderr and stdout appended to `log`; a child
    /// that reads its connection info on standard input gets it, and its input stays open.
    fn spawn(
        &mut self,
        role: Role,
        command: &EngineCommand,
        log: PathBuf,
    ) -> Result<u32, LaunchError> {
        let stdin = if command.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = crate::spawn_logged(
            &command.program,
            &command.args,
            &command.env,
            &log,
            &format!("{role:?}"),
            stdin,
        )?;
        let pid = child.id().unwrap_or_default();
        let input = child.stdin.take();
        let line = command.stdin.as_ref().map(|line| format!("{line}\n"));
        let exits = self.exits.clone();
        tokio::spawn(async move {
            // The child's standard input stays open, held here, until it exits (or this
            // process does).
            let _input = match (input, line) {
                (Some(mut input), Some(line)) => {
                    if let Err(error) = input.write_all(line.as_bytes()).await {
                        tracing::warn!(pid, %error, "cannot give the engine its connection info");
                    }
                    Some(input)
                }
                _ => None,
            };
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(error) => error.to_string(),
            };
            let _ = exits.send(Exited { role, pid, status });
        });
        Ok(pid)
    }

    /// Starts an engine process again in `slot`, under the id its predecessor had once the
    /// controller has seen that one die (so the id is free to reclaim).
    async fn restart_engine(&mut self, slot: usize, old_pid: u32) -> Result<(), LaunchError> {
        // An engine on another host registered with its own pid there: its slot names its id.
        let slot_id = EngineId::try_from(slot).ok();
        let id = self.engine_id_of(old_pid).await.or(slot_id);
        if let (Some(id), Some(client)) = (id, &self.client) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let dead = client.engines().await.is_ok_and(|engines| {
                    engines
                        .iter()
                        .any(|e| e.id == id && e.state == EngineState::Dead)
                });
                if dead {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let pid = self.spawn_engine(slot, id)?;
        if let Some(entry) = self.state.engine_pids.get_mut(slot) {
            *entry = pid;
        }
        self.state.write(&self.options.profile)?;
        tracing::info!(slot, pid, ?id, "engine process restarted");
        Ok(())
    }

    /// The engine id the process `pid` registered under, asking the controller.
    async fn engine_id_of(&mut self, pid: u32) -> Option<EngineId> {
        if self.client.is_none() {
            self.client = ControllerClient::connect(&self.options.profile, Duration::from_secs(5))
                .await
                .ok();
        }
        let engines = self.client.as_ref()?.engines().await.ok()?;
        engines.iter().find(|e| e.pid == pid).map(|e| e.id)
    }

    /// Stops every child. The controller goes first: on SIGTERM it asks each engine to shut
    /// down, and each answers once its kernel has exited, which is the quickest clean stop.
    /// Engines still running then get SIGTERM; whatever is left after the grace period is killed
    /// with its process group.
    async fn stop_all(&mut self, exited: &mut mpsc::UnboundedReceiver<Exited>) {
        let mut running: Vec<u32> = self.state.engine_pids.clone();
        running.extend(self.retired.iter().copied());
        running.sort_unstable();
        running.dedup();
        running.extend(self.state.controller_pid);
        running.retain(|pid| state::is_alive(*pid));
        if let Some(controller) = self
            .state
            .controller_pid
            .filter(|pid| running.contains(pid))
        {
            state::signal_tree(controller, Signal::SIGTERM);
            self.wait_for(&mut running, exited, STOP_GRACE).await;
        }
        for pid in &running {
            state::signal_tree(*pid, Signal::SIGTERM);
        }
        self.wait_for(&mut running, exited, STOP_GRACE).await;
        for pid in &running {
            tracing::warn!(pid, "did not stop in time; killing");
            state::signal_tree(*pid, Signal::SIGKILL);
        }
    }

    /// Waits up to `grace` until none of `running` is alive, removing those that exit.
    async fn wait_for(
        &self,
        running: &mut Vec<u32>,
        exited: &mut mpsc::UnboundedReceiver<Exited>,
        grace: Duration,
    ) {
        let deadline = Instant::now() + grace;
        while !running.is_empty() && Instant::now() < deadline {
            tokio::select! {
                Some(gone) = exited.recv() => running.retain(|pid| *pid != gone.pid),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    running.retain(|pid| state::is_alive(*pid));
                }
            }
        }
    }
}

/// The profile's supervisor log, where a daemonized supervisor writes.
pub fn supervisor_log(profile: &Profile) -> PathBuf {
    profile.log_dir().join("cluster.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_after_quick_failures() {
        let delays: Vec<u64> = (0..10).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
