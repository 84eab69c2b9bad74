//! Clusters: starting a controller and N engines for a profile (on this machine or, through a
//! launcher, on other hosts), waiting until they are ready, stopping them, and listing what runs.
//!
//! # Layout
//!
//! - [`config`]: `cluster.toml` and the flags, resolved into [`StartOptions`].
//! - [`launchers`]: where engines run and how they start (`local`, `ssh`, `mpi`), behind one
//!   trait.
//! - [`state`]: `cluster.json`, liveness of its processes, stale clusters.
//! - [`supervise`]: the supervisor process that starts and watches the controller and engines.
//! - [`scale`]: changing the number of engines of a running cluster.
//! - this module: [`start_daemon`] (a detached supervisor, returning once every engine is
//!   registered and idle), [`wait_ready`], [`stop`] and [`list`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use parallax_client::{ClientError, ControllerClient};
use parallax_wire::cluster::{EngineInfo, EngineState};
use parallax_wire::profile::{Profile, ProfileError};
use serde::Serialize;
use tokio::time::Instant;

pub mod config;
pub mod launchers;
pub mod scale;
pub mod state;
pub mod supervise;

pub use config::PortRange;
pub use launchers::Engines;

pub use scale::scale;
pub use state::{ClusterState, ClusterStatus};
pub use supervise::supervise;

/// Why a cluster could not be started, found or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("a cluster is already running for profile {profile:?} (supervisor pid {pid}): stop it with `parallax cluster stop --profile {profile}`")]
    AlreadyRunning { profile: String, pid: u32 },
    #[error("no cluster is running for profile {profile:?}")]
    NotRunning { profile: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("cannot start the {what} process: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("the controller stopped ({status}); its log ends:\n{log}")]
    ControllerFailed { status: String, log: String },
    #[error("the cluster's supervisor exited before the cluster was ready; log/cluster.log ends:\n{log}")]
    SupervisorFailed { log: String },
    #[error("{ready} of {n} engines ready ({why}):\n{details}")]
    NotReady {
        ready: usize,
        n: usize,
        /// "after 60s", or "every engine process exited".
        why: String,
        details: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("a cluster needs at least 1 engine (asked for {n})")]
    NoEngines { n: usize },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{reason}")]
    Invalid { reason: String },
    #[error(
        "engines on other hosts cannot reach a controller listening on {ip}: add --ip 0.0.0.0 \
         (every interface) or --ip ADDRESS (the interface facing the engine hosts)"
    )]
    LoopbackController { ip: String },
    #[error("host {host}: {reason}")]
    Host { host: String, reason: String },
    #[error("cannot scale the cluster of profile {profile:?}: {reason}")]
    FixedSize { profile: String, reason: String },
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub profile: Profile,
    /// Number of engines.
    pub n: usize,
    /// The engines' kernelspec.
    pub kernel: String,
    /// Restart a dead kernel or engine process under its old id.
    pub restart_engines: bool,
    /// The address the controller listens on.
    pub ip: String,
    /// The `parallax` binary to run the controller and engines with.
    pub exe: PathBuf,
    /// How long engines may take to become ready.
    pub timeout: Duration,
    /// The largest message frame the controller accepts (`controller --max-message-size`);
    /// `None`: the controller's default.
    pub max_message_size: Option<u64>,
    /// Encrypt the links even on loopback (`controller --curve`).
    pub curve: bool,
    /// What engines dial (`controller --location`); `None`: for engines on other hosts, the
    /// address of the interface facing them.
    pub location: Option<String>,
    /// The controller's ports (`controller --ports`); `None`: chosen by the OS.
    pub ports: Option<PortRange>,
    /// Which launcher starts the engines.
    pub engines: Engines,
}

impl StartOptions {
    /// Options for a local cluster of `n` engines on loopback, with the defaults.
    pub fn local(profile: Profile, n: usize, exe: PathBuf) -> Self {
        StartOptions {
            profile,
            n,
            kernel: "python3".into(),
            restart_engines: false,
            ip: "127.0.0.1".into(),
            exe,
            timeout: config::DEFAULT_TIMEOUT,
            max_message_size: None,
            curve: false,
            location: None,
            ports: None,
            engines: Engines::Local,
        }
    }

    /// Refuses what cannot work: no engines, engines on other hosts with a controller
    /// listening on loopback, or restarting engines of a cluster whose size is fixed.
    pub fn check(&self) -> Result<(), LaunchError> {
        if self.n == 0 {
            return Err(LaunchError::NoEngines { n: 0 });
        }
        let launcher = self.engines.launcher(self.exe.clone());
        if let (true, Some(why)) = (self.restart_engines, launcher.fixed_size()) {
            return Err(LaunchError::Invalid {
                reason: format!(
                    "--restart-engines does not work with the {} launcher ({why}): a rank that \
                     dies usually ends the whole MPI job, and a new kernel cannot join its \
                     COMM_WORLD",
                    launcher.name()
                ),
            });
        }
        let remote = launcher.remote();
        if remote && parallax_net::is_loopback_host(&self.ip) {
            return Err(LaunchError::LoopbackController {
                ip: self.ip.clone(),
            });
        }
        Ok(())
    }

    /// The command line that runs a supervisor for these options in the foreground. It carries
    /// every setting as a flag, so the supervisor starts what was resolved here even though it
    /// reads `cluster.toml` again (flags win).
    fn supervisor_args(&self) -> Vec<String> {
        let mut args = vec![
            "cluster".to_owned(),
            "start".into(),
            "--profile".into(),
            self.profile.name().into(),
            "-n".into(),
            self.n.to_string(),
            "--kernel".into(),
            self.kernel.clone(),
            "--ip".into(),
            self.ip.clone(),
            "--timeout".into(),
            self.timeout.as_secs_f64().to_string(),
        ];
        if let Some(size) = self.max_message_size {
            args.extend(["--max-message-size".into(), size.to_string()]);
        }
        if self.restart_engines {
            args.push("--restart-engines".into());
        }
        if self.curve {
            args.push("--curve".into());
        }
        if let Some(location) = &self.location {
            args.extend(["--location".into(), location.clone()]);
        }
        if let Some(ports) = self.ports {
            args.extend(["--ports".into(), ports.to_string()]);
        }
        args.extend(["--engines".into(), self.engines.name().into()]);
        if let Engines::Ssh(ssh) = &self.engines {
            let hosts: Vec<String> = ssh.hosts.iter().cloned().map(String::from).collect();
            args.extend(["--hosts".into(), hosts.join(",")]);
            args.extend(["--remote-parallax".into(), ssh.parallax.clone()]);
            for word in &ssh.ssh {
                args.push(format!("--ssh={word}"));
            }
            for (name, value) in &ssh.env {
                args.extend(["--env".into(), format!("{name}={value}")]);
            }
        }
        if let Engines::Mpi(mpi) = &self.engines {
            args.push(format!("--mpiexec={}", mpi.mpiexec));
            for word in &mpi.args {
                args.push(format!("--mpi-args={word}"));
            }
            for (name, value) in &mpi.env {
                args.extend(["--env".into(), format!("{name}={value}")]);
            }
        }
        args
    }
}

/// Starts a detached supervisor for the cluster and returns the engines once all of them are
/// registered and idle. If they are not within the timeout, the cluster is stopped and the error
/// says which engines did not come up and what their logs say.
pub async fn start_daemon(options: &StartOptions) -> Result<Vec<EngineInfo>, LaunchError> {
    let profile = &options.profile;
    profile.create()?;
    match state::status(profile) {
        ClusterStatus::Running(running) => {
            return Err(LaunchError::AlreadyRunning {
                profile: profile.name().to_owned(),
                pid: running.supervisor_pid,
            })
        }
        ClusterStatus::Stale(stale) => state::clean_stale(profile, &stale),
        ClusterStatus::Stopped => {}
    }
    state::remove_files(profile);
    let log = supervise::supervisor_log(profile);
    let child = spawn_logged(
        &options.exe,
        &options.supervisor_args(),
        &[],
        &log,
        "supervisor",
        Stdio::null(),
    )?;
    let supervisor = child.id().unwrap_or_default();
    // The supervisor outlives us; the runtime must not kill it when the handle drops.
    drop(child);
    match wait_ready(options, Some(supervisor)).await {
        Ok(engines) => Ok(engines),
        Err(error) => {
            let _ = stop(profile, Duration::from_secs(5)).await;
            Err(error)
        }
    }
}

/// Starts `exe args` with `env` added to its environment, in its own process group, stdout and
/// stderr appended to `log`.
pub(crate) fn spawn_logged(
    exe: &std::path::Path,
    args: &[String],
    env: &[(String, String)],
    log: &std::path::Path,
    what: &str,
    stdin: Stdio,
) -> Result<tokio::process::Child, LaunchError> {
    let error = |source| LaunchError::Spawn {
        what: what.to_owned(),
        source,
    };
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(error)
    };
    tokio::process::Command::new(exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin)
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0)
        .spawn()
        .map_err(error)
}

/// Waits until `options.n` engines are registered and idle. With `supervisor`, fails as soon as
/// that process exits.
pub async fn wait_ready(
    options: &StartOptions,
    supervisor: Option<u32>,
) -> Result<Vec<EngineInfo>, LaunchError> {
    let profile = &options.profile;
    let deadline = Instant::now() + options.timeout;
    let mut client: Option<ControllerClient> = None;
    let mut engines: Vec<EngineInfo> = Vec::new();
    loop {
        if supervisor.is_some_and(|pid| !state::is_alive(pid)) {
            return Err(LaunchError::SupervisorFailed {
                log: state::log_tail(&supervise::supervisor_log(profile), 20),
            });
        }
        if client.is_none() && profile.client_file().exists() {
            client = ControllerClient::connect(profile, Duration::from_secs(5))
                .await
                .ok();
        }
        if let Some(client) = &client {
            engines = client.engines().await?;
            let idle = engines
                .iter()
                .filter(|e| e.state == EngineState::Idle)
                .count();
            if idle >= options.n {
                engines.retain(|e| e.state != EngineState::Dead);
                return Ok(engines);
            }
        }
        if engines_all_exited(options, &engines) {
            return Err(not_ready(
                options,
                &engines,
                "every engine process exited".into(),
            ));
        }
        if Instant::now() >= deadline {
            let why = format!("after {:?}", options.timeout);
            return Err(not_ready(options, &engines, why));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether every engine process the supervisor started has exited without the cluster being
/// ready: waiting longer cannot help (unless engines restart, which the supervisor then does
/// under new pids).
fn engines_all_exited(options: &StartOptions, engines: &[EngineInfo]) -> bool {
    if options.restart_engines {
        return false;
    }
    let ClusterStatus::Running(state) = state::status(&options.profile) else {
        return false;
    };
    state.engine_pids.len() == options.n
        && state.engine_pids.iter().all(|pid| !state::is_alive(*pid))
        && engines
            .iter()
            .filter(|e| e.state == EngineState::Idle)
            .count()
            < options.n
}

/// Says which engine processes did not register, with the end of each one's log.
fn not_ready(options: &StartOptions, engines: &[EngineInfo], why: String) -> LaunchError {
    let profile = &options.profile;
    let ready = engines
        .iter()
        .filter(|e| e.state == EngineState::Idle)
        .count();
    let pids = match state::status(profile) {
        ClusterStatus::Running(s) | ClusterStatus::Stale(s) => s.engine_pids,
        ClusterStatus::Stopped => Vec::new(),
    };
    let mut details = String::new();
    if pids.is_empty() {
        details.push_str(&format!(
            "no engine was started; log/cluster.log ends:\n{}\n",
            state::log_tail(&supervise::supervisor_log(profile), 20)
        ));
    }
    for (slots, pid) in processes(&pids) {
        if engines.iter().any(|e| e.pid == pid) {
            continue;
        }
        let alive = if state::is_alive(pid) {
            "still starting"
        } else {
            "exited"
        };
        let log = profile.log_dir().join(engine_log_name(&slots));
        let which = if slots.len() == 1 {
            format!(
                "engine process {} (pid {pid}, {alive}) did not register",
                slots.start
            )
        } else {
            format!(
                "the process of engines {}-{} (pid {pid}, {alive}) did not start them all",
                slots.start,
                slots.end - 1
            )
        };
        details.push_str(&format!(
            "{which}; {} ends:\n{}\n",
            log.display(),
            indent(&state::log_tail(&log, 15))
        ));
    }
    LaunchError::NotReady {
        ready,
        n: options.n,
        why,
        details,
    }
}

/// Each engine process of `engine_pids` (one pid per slot) with the slots it runs: consecutive
/// slots with the same pid belong to one process.
fn processes(engine_pids: &[u32]) -> Vec<(std::ops::Range<usize>, u32)> {
    let mut processes: Vec<(std::ops::Range<usize>, u32)> = Vec::new();
    for (slot, pid) in engine_pids.iter().enumerate() {
        match processes.last_mut() {
            Some((slots, last)) if last == pid => slots.end = slot + 1,
            _ => processes.push((slot..slot + 1, *pid)),
        }
    }
    processes
}

/// The log file of the process that runs the engines of `slots`: `engine-K.log` for one slot,
/// `engine-K-L.log` for slots K to L.
pub(crate) fn engine_log_name(slots: &std::ops::Range<usize>) -> String {
    match slots.len() {
        0 | 1 => format!("engine-{}.log", slots.start),
        _ => format!("engine-{}-{}.log", slots.start, slots.end - 1),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Stops `profile`'s cluster and waits until none of its processes is left (killing what has not
/// stopped after `grace`). A stale cluster is cleaned up. Returns what ran.
pub async fn stop(profile: &Profile, grace: Duration) -> Result<ClusterState, LaunchError> {
    let running = match state::status(profile) {
        ClusterStatus::Stopped => {
            return Err(LaunchError::NotRunning {
                profile: profile.name().to_owned(),
            })
        }
        ClusterStatus::Stale(stale) => {
            state::clean_stale(profile, &stale);
            return Ok(stale);
        }
        ClusterStatus::Running(running) => running,
    };
    state::signal_tree(running.supervisor_pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut left: Vec<u32> = running.pids();
    while Instant::now() < deadline {
        left.retain(|pid| state::is_alive(*pid));
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in &left {
        tracing::warn!(pid, "still running after {grace:?}; killing");
        state::signal_tree(*pid, Signal::SIGKILL);
    }
    state::remove_files(profile);
    Ok(running)
}

/// One line of `parallax cluster list`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterSummary {
    pub profile: String,
    /// `running`, `stopped` or `stale`.
    pub state: String,
    /// Engines registered and alive.
    pub engines: usize,
    /// Engines asked for.
    pub n: usize,
    pub launcher: String,
    /// Engine processes per host, as the launcher started them (for an MPI cluster, the
    /// engines per host, as the ranks registered).
    pub hosts: std::collections::BTreeMap<String, usize>,
}

/// How many engine processes run on each host.
fn per_host(state: &ClusterState) -> std::collections::BTreeMap<String, usize> {
    let mut hosts = std::collections::BTreeMap::new();
    for host in &state.engine_hosts {
        *hosts.entry(host.clone()).or_insert(0) += 1;
    }
    hosts
}

/// Every profile under `root` with its cluster's state.
pub async fn list(root: &std::path::Path) -> Vec<ClusterSummary> {
    let mut summaries = Vec::new();
    for profile in Profile::all_in(root) {
        let summary = match state::status(&profile) {
            ClusterStatus::Running(running) => {
                let live: Vec<EngineInfo> =
                    match ControllerClient::connect(&profile, Duration::from_secs(2)).await {
                        Ok(client) => client.engines().await.unwrap_or_default(),
                        Err(_) => Vec::new(),
                    }
                    .into_iter()
                    .filter(|e| e.state != EngineState::Dead)
                    .collect();
                // mpiexec places the ranks, so only they know their hosts.
                let hosts = if running.engine_groups.is_empty() || live.is_empty() {
                    per_host(&running)
                } else {
                    let mut hosts = std::collections::BTreeMap::new();
                    for engine in &live {
                        *hosts.entry(engine.host.clone()).or_insert(0) += 1;
                    }
                    hosts
                };
                ClusterSummary {
                    profile: profile.name().to_owned(),
                    state: "running".into(),
                    engines: live.len(),
                    n: running.n,
                    hosts,
                    launcher: running.launcher,
                }
            }
            ClusterStatus::Stale(stale) => ClusterSummary {
                profile: profile.name().to_owned(),
                state: "stale".into(),
                engines: 0,
                n: stale.n,
                hosts: per_host(&stale),
                launcher: stale.launcher,
            },
            ClusterStatus::Stopped => ClusterSummary {
                profile: profile.name().to_owned(),
                state: "stopped".into(),
                engines: 0,
                n: 0,
                launcher: "local".into(),
                hosts: Default::default(),
            },
        };
        summaries.push(summary);
    }
    summaries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_processes_are_runs_of_one_pid() {
        assert_eq!(processes(&[]), []);
        assert_eq!(
            processes(&[7, 8, 9]),
            [(0..1, 7), (1..2, 8), (2..3, 9)],
            "one process per slot"
        );
        assert_eq!(processes(&[5, 5, 5, 5]), [(0..4, 5)], "one mpiexec");
        assert_eq!(engine_log_name(&(2..3)), "engine-2.log");
        assert_eq!(engine_log_name(&(0..4)), "engine-0-3.log");
    }

    #[test]
    fn the_supervisor_gets_the_mpi_settings_as_flags() {
        let profile = Profile::in_dir(std::path::Path::new("/tmp/x"), "p").expect("profile");
        let mut options = StartOptions::local(profile, 3, "/bin/parallax".into());
        let mut mpi = launchers::mpi::MpiSettings {
            mpiexec: "mpiexec.openmpi".into(),
            args: vec!["--allow-run-as-root".into(), "-x".into(), "A".into()],
            ..Default::default()
        };
        mpi.env
            .insert("MPI4PY_LIBMPI".into(), "libmpi.so.40".into());
        options.engines = Engines::Mpi(mpi);
        let args = options.supervisor_args().join(" ");
        assert!(
            args.ends_with(
                "--engines mpi --mpiexec=mpiexec.openmpi --mpi-args=--allow-run-as-root \
                 --mpi-args=-x --mpi-args=A --env MPI4PY_LIBMPI=libmpi.so.40"
            ),
            "{args}"
        );
    }

    #[test]
    fn an_mpi_cluster_does_not_restart_engines() {
        let profile = Profile::in_dir(std::path::Path::new("/tmp/x"), "p").expect("profile");
        let mut options = StartOptions::local(profile, 3, "/bin/parallax".into());
        options.engines = Engines::Mpi(Default::default());
        assert!(options.check().is_ok());
        options.restart_engines = true;
        let error = options.check().expect_err("refused").to_string();
        assert!(
            error.contains("--restart-engines does not work with the mpi launcher"),
            "{error}"
        );
    }
}
