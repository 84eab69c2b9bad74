//! Clusters: starting a controller and N engines for a profile (on this machine or, through a
//! launcher, on other hosts), waiting until they are ready, stopping them, and listing what runs.
//!
//! # Layout
//!
//! - [`config`]: `cluster.toml` and the flags, resolved into [`StartOptions`].
//! - [`launchers`]: where engines run and how they start (`local`, `ssh`), behind one trait.
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

    /// Refuses what cannot work: no engines, or engines on other hosts with a controller
    /// listening on loopback.
    pub fn check(&self) -> Result<(), LaunchError> {
        if self.n == 0 {
            return Err(LaunchError::NoEngines { n: 0 });
        }
        let remote = self.engines.launcher(self.exe.clone()).remote();
        if remote && is_loopback(&self.ip) {
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
        args
    }
}

/// Whether `ip` (an address or `localhost`) is reachable only from this host.
fn is_loopback(ip: &str) -> bool {
    parallax_net::is_loopback_endpoint(&format!("tcp://{ip}:0"))
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

/// Starts `exe args` in its own process group, stdout and stderr appended to `log`.
pub(crate) fn spawn_logged(
    exe: &std::path::Path,
    args: &[String],
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
    for (slot, pid) in pids.iter().enumerate() {
        if engines.iter().any(|e| e.pid == *pid) {
            continue;
        }
        let alive = if state::is_alive(*pid) {
            "still starting"
        } else {
            "exited"
        };
        let log = profile.log_dir().join(format!("engine-{slot}.log"));
        details.push_str(&format!(
            "engine process {slot} (pid {pid}, {alive}) did not register; {} ends:\n{}\n",
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
    /// Engine processes per host, as the launcher started them.
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
                let engines =
                    match ControllerClient::connect(&profile, Duration::from_secs(2)).await {
                        Ok(client) => client
                            .engines()
                            .await
                            .map(|e| e.iter().filter(|e| e.state != EngineState::Dead).count())
                            .unwrap_or(0),
                        Err(_) => 0,
                    };
                ClusterSummary {
                    profile: profile.name().to_owned(),
                    state: "running".into(),
                    engines,
                    n: running.n,
                    hosts: per_host(&running),
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
