//! Changing the number of engines of a running cluster.
//!
//! [`scale`] writes the wanted number into the profile's `scale.json` and sends the supervisor
//! SIGUSR1; the supervisor (`supervise::Supervisor::rescale`) starts engine processes in new
//! slots (each with its own `log/engine-SLOT.log`) or stops those of the highest slots, and
//! updates `cluster.json`. [`scale`] returns once the controller sees exactly that many live
//! engines, all ready. ipyparallel cannot do this: its clusters keep the size they started with.
//! Nor can an MPI cluster here (one `mpiexec` runs every rank): scaling one is refused with the
//! reason ([`crate::launchers::fixed_size`]).

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parallax_client::ControllerClient;
use parallax_wire::cluster::EngineState;
use parallax_wire::profile::{read_json, write_json, Profile};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::state::{self, ClusterState, ClusterStatus};
use crate::{supervise, LaunchError};

/// How long [`scale`] waits for the engines to come up or go away.
pub const SCALE_TIMEOUT: Duration = Duration::from_secs(60);

/// The contents of `scale.json`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleRequest {
    pub n: usize,
}

/// The profile's `scale.json`.
pub fn request_file(profile: &Profile) -> PathBuf {
    profile.dir().join("scale.json")
}

/// The number of engines asked for in `scale.json`, if it holds a valid request.
pub fn read_request(profile: &Profile) -> Option<usize> {
    read_json::<ScaleRequest>(&request_file(profile))
        .ok()
        .map(|r| r.n)
        .filter(|n| *n > 0)
}

/// Removes `scale.json` (a new cluster starts at the size it is started with).
pub fn remove_request(profile: &Profile) {
    let _ = std::fs::remove_file(request_file(profile));
}

/// Scales `profile`'s running cluster to `n` engines and returns its state once the controller
/// has exactly `n` live engines, each registered and ready (idle or busy).
pub async fn scale(profile: &Profile, n: usize) -> Result<ClusterState, LaunchError> {
    scale_with_timeout(profile, n, SCALE_TIMEOUT).await
}

/// [`scale`] with a timeout of one's choosing.
pub async fn scale_with_timeout(
    profile: &Profile,
    n: usize,
    timeout: Duration,
) -> Result<ClusterState, LaunchError> {
    if n == 0 {
        return Err(LaunchError::NoEngines { n });
    }
    let ClusterStatus::Running(running) = state::status(profile) else {
        return Err(LaunchError::NotRunning {
            profile: profile.name().to_owned(),
        });
    };
    if let Some(reason) = crate::launchers::fixed_size(&running.launcher) {
        return Err(LaunchError::FixedSize {
            profile: profile.name().to_owned(),
            reason: reason.to_owned(),
        });
    }
    write_json(&request_file(profile), &ScaleRequest { n }, false)?;
    let supervisor = running.supervisor_pid;
    let pid = i32::try_from(supervisor).map_err(|_| LaunchError::NotRunning {
        profile: profile.name().to_owned(),
    })?;
    kill(Pid::from_raw(pid), Signal::SIGUSR1).map_err(|errno| LaunchError::Spawn {
        what: format!("signal to the supervisor (pid {supervisor})"),
        source: errno.into(),
    })?;

    let client = ControllerClient::connect(profile, Duration::from_secs(5)).await?;
    let deadline = Instant::now() + timeout;
    let (live, ready) = loop {
        if !state::is_alive(supervisor) {
            return Err(LaunchError::SupervisorFailed {
                log: state::log_tail(&supervise::supervisor_log(profile), 20),
            });
        }
        let engines = client.engines().await?;
        let live = engines
            .iter()
            .filter(|e| e.state != EngineState::Dead)
            .count();
        let ready = engines
            .iter()
            .filter(|e| matches!(e.state, EngineState::Idle | EngineState::Busy))
            .count();
        let applied = match state::status(profile) {
            ClusterStatus::Running(now) => {
                (now.n == n && now.engine_pids.len() == n).then_some(now)
            }
            _ => None,
        };
        if let Some(now) = applied.filter(|_| live == n && ready == n) {
            return Ok(now);
        }
        if Instant::now() >= deadline {
            break (live, ready);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Err(LaunchError::NotReady {
        ready,
        n,
        why: format!("after {timeout:?} ({live} live)"),
        details: format!(
            "log/cluster.log ends:\n{}",
            state::log_tail(&supervise::supervisor_log(profile), 20)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_zero_is_not_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(dir.path(), "t").expect("profile");
        profile.create().expect("create");
        assert_eq!(read_request(&profile), None);
        write_json(&request_file(&profile), &ScaleRequest { n: 3 }, false).expect("write");
        assert_eq!(read_request(&profile), Some(3));
        write_json(&request_file(&profile), &ScaleRequest { n: 0 }, false).expect("write");
        assert_eq!(read_request(&profile), None);
        remove_request(&profile);
        assert!(!request_file(&profile).exists());
    }

    #[test]
    fn scaling_an_mpi_cluster_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(dir.path(), "t").expect("profile");
        profile.create().expect("create");
        // A running cluster: the supervisor's pid must be a live cluster process; this test
        // process is not one, so `status` says stale. Checked on the launcher's name instead.
        assert_eq!(
            crate::launchers::fixed_size("mpi"),
            Some(crate::launchers::mpi::FIXED_SIZE)
        );
        assert_eq!(crate::launchers::fixed_size("local"), None);
        assert_eq!(crate::launchers::fixed_size("ssh"), None);
        let error = LaunchError::FixedSize {
            profile: "t".into(),
            reason: crate::launchers::mpi::FIXED_SIZE.into(),
        };
        assert_eq!(
            error.to_string(),
            "cannot scale the cluster of profile \"t\": an MPI cluster's size is fixed by its \
             mpiexec: stop it and start it with -n N"
        );
        assert!(!request_file(&profile).exists());
    }

    #[tokio::test]
    async fn scaling_a_stopped_cluster_or_to_zero_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Profile::in_dir(dir.path(), "t").expect("profile");
        profile.create().expect("create");
        assert!(matches!(
            scale(&profile, 2).await,
            Err(LaunchError::NotRunning { .. })
        ));
        assert!(matches!(
            scale(&profile, 0).await,
            Err(LaunchError::NoEngines { n: 0 })
        ));
    }
}
