//! `cluster.json`: what a profile's cluster runs, and whether it still does.
//!
//! The supervisor writes the file when it starts and updates it as processes start; it removes it
//! when the cluster stops. A file whose supervisor is gone was left by a crash: the cluster is
//! *stale*, and [`clean_stale`] ends whatever of it still runs and removes its files.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};
use parallax_wire::profile::{read_json, write_json, Profile, ProfileError};
use serde::{Deserialize, Serialize};

/// The contents of `cluster.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub profile: String,
    /// Engines asked for.
    pub n: usize,
    pub kernel: String,
    pub launcher: String,
    pub restart_engines: bool,
    /// The process that started and watches the others.
    pub supervisor_pid: u32,
    pub controller_pid: Option<u32>,
    /// For each slot, the process started for its engine: the engine, its ssh client, or the
    /// `mpiexec` that runs every rank (then the same pid for each of its slots).
    pub engine_pids: Vec<u32>,
    /// The host of each engine process, in the order of `engine_pids`.
    #[serde(default)]
    pub engine_hosts: Vec<String>,
    /// The processes that run the engines of several slots (the `mpiexec` of an MPI cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_groups: Vec<EngineGroup>,
    /// ISO 8601.
    pub started: String,
}

/// A process that runs the engines of the slots `first..first + count` (an `mpiexec`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineGroup {
    pub pid: u32,
    /// What it runs (`mpiexec.openmpi`).
    pub program: String,
    pub first: usize,
    pub count: usize,
}

impl ClusterState {
    /// Every process of the cluster, supervisor first, each once.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = Vec::new();
        let all = std::iter::once(self.supervisor_pid)
            .chain(self.controller_pid)
            .chain(self.engine_pids.iter().copied());
        for pid in all {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids
    }

    pub fn write(&self, profile: &Profile) -> Result<(), ProfileError> {
        write_json(&profile.cluster_file(), self, false)
    }
}

/// What a profile's `cluster.json` says, checked against the running processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterStatus {
    /// Its supervisor is alive.
    Running(ClusterState),
    /// It was left by a cluster whose supervisor is gone.
    Stale(ClusterState),
    /// No cluster.
    Stopped,
}

/// The status of `profile`'s cluster.
pub fn status(profile: &Profile) -> ClusterStatus {
    let path = profile.cluster_file();
    if !path.exists() {
        return ClusterStatus::Stopped;
    }
    match read_json::<ClusterState>(&path) {
        Ok(state) if is_parallax_process(state.supervisor_pid) => ClusterStatus::Running(state),
        Ok(state) => ClusterStatus::Stale(state),
        // An unreadable file is left over too: treat it as stale with nothing to end.
        Err(_) => ClusterStatus::Stale(ClusterState {
            profile: profile.name().to_owned(),
            n: 0,
            kernel: String::new(),
            launcher: "local".into(),
            restart_engines: false,
            supervisor_pid: 0,
            controller_pid: None,
            engine_pids: Vec::new(),
            engine_hosts: Vec::new(),
            engine_groups: Vec::new(),
            started: String::new(),
        }),
    }
}

/// Whether `pid` is alive and is a process of a parallax cluster (not a recycled pid of
/// something else): its command line is `<binary> cluster|controller|engine ...`. The binary's
/// name is not checked: a cluster started by a binary installed under another name (a copy, a
/// versioned name) is still recognised, and stopped.
pub fn is_parallax_process(pid: u32) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    is_cluster_command(&cmdline)
}

/// Whether a `/proc/PID/cmdline` (arguments separated by NUL bytes) runs one of the cluster's
/// subcommands, or is a launcher's client whose remote command is an engine (`ssh host -- exec
/// env ... parallax engine --file - ...`: one argument), or an `mpiexec` whose ranks are
/// engines (`mpiexec ... -n N parallax engine --mpi ...`). Zombies have an empty command line;
/// they are gone for our purposes.
fn is_cluster_command(cmdline: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let binary = args.first().copied().unwrap_or_default();
    let subcommand = args.get(1).copied().unwrap_or_default();
    if binary.is_empty() {
        return false;
    }
    let remote_engine = |arg: &&[u8]| String::from_utf8_lossy(arg).contains(" engine --file - ");
    let mpi_engines = args
        .windows(2)
        .any(|w| w == [&b"engine"[..], &b"--mpi"[..]]);
    matches!(subcommand, b"cluster" | b"controller" | b"engine")
        || args.iter().skip(1).any(remote_engine)
        || mpi_engines
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    let Some(pid) = to_pid(pid) else {
        return false;
    };
    if kill(pid, None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); its state in /proc says it has exited.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn to_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
}

/// Sends `signal` to `pid`'s process group when it leads one (every cluster process leads its
/// own), else to the process alone. Once, not both: Open MPI's `mpiexec` takes a second SIGTERM
/// as "abort now" and exits without ending its ranks.
pub fn signal_tree(pid: u32, signal: Signal) {
    if let Some(pid) = to_pid(pid) {
        if getpgid(Some(pid)) == Ok(pid) {
            let _ = killpg(pid, signal);
        } else {
            let _ = kill(pid, signal);
        }
    }
}

/// How long the engine groups of a stale cluster get to end their engines after SIGTERM.
const GROUP_GRACE: Duration = Duration::from_secs(3);

/// Ends what is left of a stale cluster and removes its files. Engine groups get SIGTERM
/// first, which `mpiexec` forwards to its ranks (killed outright, Open MPI's would be left
/// running, no longer its children); then whatever is left is killed.
pub fn clean_stale(profile: &Profile, state: &ClusterState) {
    let groups: Vec<u32> = state
        .engine_groups
        .iter()
        .map(|g| g.pid)
        .filter(|pid| is_parallax_process(*pid))
        .collect();
    for pid in &groups {
        signal_tree(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + GROUP_GRACE;
    while groups.iter().any(|pid| is_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in state.pids() {
        if is_parallax_process(pid) {
            signal_tree(pid, Signal::SIGKILL);
        } else if is_alive(pid) {
            tracing::warn!(
                pid,
                "a pid of the stale cluster now runs something else; left alone"
            );
        }
    }
    remove_files(profile);
}

/// Removes the files that say a cluster is running.
pub fn remove_files(profile: &Profile) {
    for path in [
        profile.cluster_file(),
        profile.client_file(),
        profile.engine_file(),
    ] {
        remove(&path);
    }
}

fn remove(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "cannot remove");
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(supervisor_pid: u32) -> ClusterState {
        ClusterState {
            profile: "t".into(),
            n: 2,
            kernel: "python3".into(),
            launcher: "local".into(),
            restart_engines: false,
            supervisor_pid,
            controller_pid: Some(supervisor_pid),
            engine_pids: vec![],
            engine_hosts: vec![],
            engine_groups: vec![],
            started: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn a_dead_supervisor_means_stale_and_is_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(dir.path(), "t").expect("profile");
        profile.create().expect("create");
        assert_eq!(status(&profile), ClusterStatus::Stopped);
        // A pid that cannot be ours: the test process is not called parallax.
        let s = state(std::process::id());
        s.write(&profile).expect("write");
        assert_eq!(status(&profile), ClusterStatus::Stale(s.clone()));
        std::fs::write(profile.client_file(), "{}").expect("write");
        clean_stale(
            &profile,
            &ClusterState {
                supervisor_pid: 0,
                controller_pid: None,
                ..s
            },
        );
        assert_eq!(status(&profile), ClusterStatus::Stopped);
        assert!(!profile.client_file().exists());
    }

    #[test]
    fn liveness() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }

    #[test]
    fn cluster_processes_are_known_by_their_subcommand_not_their_binary_name() {
        for ours in [
            &b"/usr/bin/parallax\0cluster\0start\0--profile\0p\0"[..],
            b"/tmp/bench/bin/px-0.1\0controller\0--profile\0p\0",
            b"parallax-copy\0engine\0--file\0f\0",
            b"ssh\0-T\0node1\0--\0exec env parallax engine --file - --kernel python3\0",
            b"mpiexec.openmpi\0--oversubscribe\0-n\x004\0/bin/parallax\0engine\0--mpi\0",
        ] {
            assert!(
                is_cluster_command(ours),
                "{}",
                String::from_utf8_lossy(ours)
            );
        }
        for other in [
            &b""[..],
            b"/usr/bin/parallax\0kernel\0-f\0c.json\0",
            b"/usr/bin/sleep\0infinity\0",
            b"\0cluster\0",
            b"ssh\0node1\0--\0uptime\0",
            b"mpiexec\0-n\x002\0python\0engine\0",
        ] {
            assert!(
                !is_cluster_command(other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
