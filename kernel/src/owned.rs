//! Clusters a kernel started with `%cluster start` (without `--keep`): stopped when that kernel
//! shuts down, kept when it restarts.
//!
//! The record is `profile_NAME/kernel-owner.json`: the connection file of the kernel that started
//! the cluster, and the cluster's supervisor pid (so a cluster started later by someone else is
//! never stopped for it). A kernel restarted by its manager reuses its connection file, so the new
//! kernel process owns what its predecessor started, with no state passed between them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parallax_launcher::ClusterStatus;
use parallax_wire::profile::{read_json, write_json, Profile, ProfileError};
use serde::{Deserialize, Serialize};

const FILE: &str = "kernel-owner.json";

#[derive(Serialize, Deserialize)]
struct Owner {
    connection_file: PathBuf,
    supervisor_pid: u32,
}

/// Records that the kernel of `connection_file` owns the cluster now running for `profile`.
pub fn record(profile: &Profile, connection_file: &Path) -> Result<(), ProfileError> {
    let ClusterStatus::Running(running) = parallax_launcher::state::status(profile) else {
        return Ok(());
    };
    let owner = Owner {
        connection_file: connection_file.to_owned(),
        supervisor_pid: running.supervisor_pid,
    };
    write_json(&profile.dir().join(FILE), &owner, false)
}

/// Forgets who owns `profile`'s cluster (it was stopped, or started with `--keep`).
pub fn forget(profile: &Profile) {
    let _ = std::fs::remove_file(profile.dir().join(FILE));
}

/// Stops `profile`'s cluster if the kernel of `connection_file` started it; returns what was done,
/// for the log.
pub async fn stop_if_owned(profile: &Profile, connection_file: &Path) -> Option<String> {
    let owner: Owner = read_json(&profile.dir().join(FILE)).ok()?;
    if owner.connection_file != connection_file {
        return None;
    }
    forget(profile);
    let ClusterStatus::Running(running) = parallax_launcher::state::status(profile) else {
        return None;
    };
    if running.supervisor_pid != owner.supervisor_pid {
        return None;
    }
    Some(
        match parallax_launcher::stop(profile, Duration::from_secs(5)).await {
            Ok(_) => format!(
                "stopped cluster {:?}, which this kernel started",
                profile.name()
            ),
            Err(error) => format!("could not stop cluster {:?}: {error}", profile.name()),
        },
    )
}
