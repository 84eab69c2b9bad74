//! Where a cluster keeps its files.
//!
//! `$PARALLAX_DIR` (default `~/.parallax`) holds one folder per profile, `profile_<name>/`:
//!
//! ```text
//! security/controller-client.json   how clients reach the controller (urls, key; mode 0600)
//! security/controller-engine.json   how engines reach the controller (urls, key; mode 0600)
//! cluster.json                      what runs: pids, n, launcher
//! tasks.db                          the task database (SQLite, WAL)
//! log/                              one log per process
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a profile file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid profile name {0:?}: use letters, digits, '.', '_' and '-'")]
    Name(String),
    #[error("cannot find the home folder: set PARALLAX_DIR")]
    NoHome,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The folder holding every profile: `$PARALLAX_DIR`, else `~/.parallax`.
pub fn parallax_dir() -> Result<PathBuf, ProfileError> {
    if let Some(dir) = std::env::var_os("PARALLAX_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".parallax"))
        .ok_or(ProfileError::NoHome)
}

/// One profile's folder and the files in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    name: String,
    dir: PathBuf,
}

impl Profile {
    /// The profile `name` under `$PARALLAX_DIR`.
    pub fn named(name: &str) -> Result<Self, ProfileError> {
        Self::in_dir(&parallax_dir()?, name)
    }

    /// The profile `name` under `root`.
    pub fn in_dir(root: &Path, name: &str) -> Result<Self, ProfileError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.starts_with('.');
        if !valid {
            return Err(ProfileError::Name(name.to_owned()));
        }
        Ok(Profile {
            name: name.to_owned(),
            dir: root.join(format!("profile_{name}")),
        })
    }

    /// Every profile folder under `root`, sorted by name.
    pub fn all_in(root: &Path) -> Vec<Profile> {
        let Ok(entries) = fs::read_dir(root) else {
            return Vec::new();
        };
        let mut profiles: Vec<Profile> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_prefix("profile_")?.to_owned();
                Profile::in_dir(root, &name).ok()
            })
            .collect();
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        profiles
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn security_dir(&self) -> PathBuf {
        self.dir.join("security")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn client_file(&self) -> PathBuf {
        self.security_dir().join("controller-client.json")
    }
    pub fn engine_file(&self) -> PathBuf {
        self.security_dir().join("controller-engine.json")
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }
    pub fn tasks_db(&self) -> PathBuf {
        self.dir.join("tasks.db")
    }

    /// Creates the profile's folders: the profile and its logs 0755, security 0700.
    pub fn create(&self) -> Result<(), ProfileError> {
        for (dir, mode) in [
            (self.dir.clone(), 0o755),
            (self.log_dir(), 0o755),
            (self.security_dir(), 0o700),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .map_err(io(&dir))?;
        }
        // An existing security folder keeps whatever mode it had: make it private.
        let security = self.security_dir();
        fs::set_permissions(&security, fs::Permissions::from_mode(0o700)).map_err(io(&security))
    }
}

/// Writes `value` as JSON, readable by its owner only (`private`) or by all, replacing the file
/// atomically so a reader never sees half of it.
pub fn write_json<T: Serialize>(path: &Path, value: &T, private: bool) -> Result<(), ProfileError> {
    let text = serde_json::to_vec_pretty(value).map_err(|source| ProfileError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(&text).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Reads a JSON file written by [`write_json`].
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ProfileError> {
    let text = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&text).map_err(|source| ProfileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// `security/controller-client.json` and `security/controller-engine.json`: where the controller
/// listens, the key that signs every message of the cluster and, when its links are encrypted,
/// the CurveZMQ keys of this side (the field names are ipyparallel's).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerFile {
    /// The controller's ROUTER for this side (`tcp://127.0.0.1:PORT`).
    pub url: String,
    /// HMAC-SHA256 key, shared by every link of the cluster.
    pub key: String,
    pub signature_scheme: String,
    /// The profile this file belongs to.
    pub profile: String,
    /// The controller's process id.
    pub controller_pid: u32,
    /// The largest frame the controller accepts, in bytes (its `--max-message-size`); peers
    /// use it for their own side of the link. Absent in files of older controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<u64>,
    /// The controller's CurveZMQ public key (Z85); absent when the links are not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_serverkey: Option<String>,
    /// This side's CurveZMQ public key (Z85), one the controller admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_publickey: Option<String>,
    /// This side's CurveZMQ secret key (Z85).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_secretkey: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_checked() {
        let root = Path::new("/r");
        assert!(Profile::in_dir(root, "default").is_ok());
        assert!(Profile::in_dir(root, "my-profile_2.x").is_ok());
        for bad in ["", "a/b", "..", ".hidden", "a b", "x\0"] {
            assert!(Profile::in_dir(root, bad).is_err(), "{bad:?}");
        }
        let p = Profile::in_dir(root, "p").expect("valid");
        assert_eq!(
            p.client_file(),
            Path::new("/r/profile_p/security/controller-client.json")
        );
    }

    #[test]
    fn files_are_written_atomically_and_privately() {
        let root = std::env::temp_dir().join(format!("parallax-profile-{}", std::process::id()));
        let profile = Profile::in_dir(&root, "t").expect("valid");
        profile.create().expect("create");
        let mode = fs::metadata(profile.security_dir())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = ControllerFile {
            url: "tcp://127.0.0.1:1".into(),
            key: "k".into(),
            signature_scheme: "hmac-sha256".into(),
            profile: "t".into(),
            controller_pid: 1,
            max_message_size: None,
            ..ControllerFile::default()
        };
        write_json(&profile.client_file(), &file, true).expect("write");
        let mode = fs::metadata(profile.client_file())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read_json::<ControllerFile>(&profile.client_file()).expect("read"),
            file
        );
        assert_eq!(Profile::all_in(&root), vec![profile]);
        fs::remove_dir_all(&root).ok();
    }
}
