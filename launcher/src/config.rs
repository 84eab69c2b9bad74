//! A profile's cluster settings: `profile_NAME/cluster.toml`, under the command line's flags.
//!
//! Both are read into [`Settings`] (every field optional): the flags' values win, the file's fill
//! in, and the defaults fill the rest ([`resolve`]). So `parallax cluster start --profile hpc`
//! needs no flags when the profile's file says what to run, and the Clusters page and `%cluster
//! start` start the same cluster as the command line. A file that does not parse, or names a
//! setting that does not exist, stops the start with the file's name and the reason.
//!
//! ```toml
//! engines = "ssh"            # local (default), ssh or mpi
//! n = 6                      # default: the cores here (local, mpi), the hosts' counts (ssh)
//! kernel = "python3"
//! ip = "0.0.0.0"             # where the controller listens
//! location = "10.0.0.1"      # what engines dial (default: the interface facing them)
//! ports = "50000-50010"      # the controller's ports (for firewalls)
//! timeout = 60               # seconds engines may take to become ready
//!
//! [ssh]
//! hosts = ["node1:2", "user@node2:4"]
//! parallax = "/opt/parallax/bin/parallax"   # the binary on the hosts
//! ssh = ["ssh", "-F", "/home/me/.ssh/cluster_config"]
//! env = { PATH = "/opt/venv/bin:/usr/bin" }
//!
//! [mpi]                      # with engines = "mpi"
//! mpiexec = "mpiexec.openmpi"                     # default: mpiexec
//! args = ["--allow-run-as-root", "--oversubscribe"]   # before -n N
//! env = { MPI4PY_LIBMPI = "libmpi.so.40" }        # for the ranks
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parallax_wire::profile::Profile;
use serde::{Deserialize, Serialize};

use crate::launchers::mpi::MpiSettings;
use crate::launchers::ssh::{SshHost, SshSettings};
use crate::launchers::Engines;
use crate::{LaunchError, StartOptions};

/// The file's name in the profile's folder.
pub const FILE_NAME: &str = "cluster.toml";

/// How long engines may take to become ready, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Cluster settings, from flags or from `cluster.toml`; unset fields come from elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The launcher: `local`, `ssh` or `mpi`.
    pub engines: Option<String>,
    pub n: Option<usize>,
    pub kernel: Option<String>,
    pub ip: Option<String>,
    pub location: Option<String>,
    pub ports: Option<String>,
    pub restart_engines: Option<bool>,
    pub timeout: Option<f64>,
    pub max_message_size: Option<u64>,
    pub curve: Option<bool>,
    #[serde(default)]
    pub ssh: SshSection,
    #[serde(default)]
    pub mpi: MpiSection,
}

/// `[ssh]`: the SSH launcher's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    pub hosts: Option<Vec<SshHost>>,
    pub parallax: Option<String>,
    pub ssh: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
}

/// `[mpi]`: the MPI launcher's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpiSection {
    pub mpiexec: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
}

impl Settings {
    /// The settings in `profile`'s `cluster.toml`; none when it has no such file.
    pub fn of_profile(profile: &Profile) -> Result<Settings, LaunchError> {
        let path = profile.dir().join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Settings::parse(&text, &path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(error) => Err(LaunchError::Config {
                path,
                reason: error.to_string(),
            }),
        }
    }

    fn parse(text: &str, path: &Path) -> Result<Settings, LaunchError> {
        toml::from_str(text).map_err(|error| LaunchError::Config {
            path: path.to_owned(),
            reason: error.message().to_owned(),
        })
    }

    /// These settings, with `under`'s where these have none.
    pub fn over(self, under: Settings) -> Settings {
        Settings {
            engines: self.engines.or(under.engines),
            n: self.n.or(under.n),
            kernel: self.kernel.or(under.kernel),
            ip: self.ip.or(under.ip),
            location: self.location.or(under.location),
            ports: self.ports.or(under.ports),
            restart_engines: self.restart_engines.or(under.restart_engines),
            timeout: self.timeout.or(under.timeout),
            max_message_size: self.max_message_size.or(under.max_message_size),
            curve: self.curve.or(under.curve),
            ssh: SshSection {
                hosts: self.ssh.hosts.or(under.ssh.hosts),
                parallax: self.ssh.parallax.or(under.ssh.parallax),
                ssh: self.ssh.ssh.or(under.ssh.ssh),
                env: self.ssh.env.or(under.ssh.env),
            },
            mpi: MpiSection {
                mpiexec: self.mpi.mpiexec.or(under.mpi.mpiexec),
                args: self.mpi.args.or(under.mpi.args),
                env: self.mpi.env.or(under.mpi.env),
            },
        }
    }
}

/// The controller's ports: the client ROUTER takes the first free one of the range, the engine
/// ROUTER the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("--ports {text:?}: expected FIRST-LAST, two or more ports (1-65535)");
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last <= first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The options to start `profile`'s cluster with: `flags` over the profile's `cluster.toml`
/// over the defaults, checked.
pub fn resolve(
    profile: Profile,
    exe: PathBuf,
    flags: Settings,
) -> Result<StartOptions, LaunchError> {
    let settings = flags.over(Settings::of_profile(&profile)?);
    let invalid = |reason: String| LaunchError::Invalid { reason };
    let engines = match settings.engines.as_deref().unwrap_or("local") {
        "local" => Engines::Local,
        "ssh" => {
            let hosts = settings.ssh.hosts.clone().ok_or_else(|| {
                invalid(
                    "the ssh launcher needs hosts: --hosts 'node1:2,user@node2:4', or hosts = \
                     [...] under [ssh] in cluster.toml"
                        .into(),
                )
            })?;
            if hosts.is_empty() {
                return Err(invalid("the ssh launcher needs at least one host".into()));
            }
            let mut ssh = SshSettings::new(hosts);
            if let Some(parallax) = settings.ssh.parallax.clone() {
                ssh.parallax = parallax;
            }
            if let Some(command) = settings.ssh.ssh.clone().filter(|c| !c.is_empty()) {
                ssh.ssh = command;
            }
            ssh.env = settings.ssh.env.clone().unwrap_or_default();
            Engines::Ssh(ssh)
        }
        "mpi" => {
            let mut mpi = MpiSettings::default();
            if let Some(mpiexec) = settings.mpi.mpiexec.clone().filter(|m| !m.is_empty()) {
                mpi.mpiexec = mpiexec;
            }
            mpi.args = settings.mpi.args.clone().unwrap_or_default();
            mpi.env = settings.mpi.env.clone().unwrap_or_default();
            Engines::Mpi(mpi)
        }
        other => {
            return Err(invalid(format!(
                "unknown launcher {other:?}: --engines takes local, ssh or mpi"
            )))
        }
    };
    let n = match (settings.n, &engines) {
        (Some(0), _) => return Err(LaunchError::NoEngines { n: 0 }),
        (Some(n), _) => n,
        (None, Engines::Ssh(ssh)) => ssh.engines(),
        (None, Engines::Local | Engines::Mpi(_)) => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    };
    let timeout = match settings.timeout {
        None => DEFAULT_TIMEOUT,
        Some(seconds) => Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| invalid("--timeout must be a positive number of seconds".into()))?,
    };
    let ports = settings
        .ports
        .as_deref()
        .map(str::parse::<PortRange>)
        .transpose()
        .map_err(invalid)?;
    let options = StartOptions {
        profile,
        n,
        kernel: settings.kernel.unwrap_or_else(|| "python3".into()),
        restart_engines: settings.restart_engines.unwrap_or(false),
        ip: settings.ip.unwrap_or_else(|| "127.0.0.1".into()),
        exe,
        timeout,
        max_message_size: settings.max_message_size,
        curve: settings.curve.unwrap_or(false),
        location: settings.location,
        ports,
        engines,
    };
    options.check()?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile_with(toml: Option<&str>) -> (tempfile::TempDir, Profile) {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = Profile::in_dir(dir.path(), "p").expect("valid");
        profile.create().expect("create");
        if let Some(toml) = toml {
            std::fs::write(profile.dir().join(FILE_NAME), toml).expect("write");
        }
        (dir, profile)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let (_dir, profile) = profile_with(Some(
            "engines = \"ssh\"\nip = \"0.0.0.0\"\nkernel = \"bash\"\n[ssh]\nhosts = [\"a:2\", \
             \"b:3\"]\nparallax = \"/opt/px\"\nenv = { X = \"1\" }\n",
        ));
        let flags = Settings {
            kernel: Some("python3".into()),
            ports: Some("50000-50010".into()),
            ..Settings::default()
        };
        let options = resolve(profile, "/bin/parallax".into(), flags).expect("valid");
        assert_eq!(options.n, 5, "the hosts' counts");
        assert_eq!(options.kernel, "python3", "the flag");
        assert_eq!(options.ip, "0.0.0.0", "the file");
        assert_eq!(options.timeout, DEFAULT_TIMEOUT, "the default");
        assert_eq!(
            options.ports,
            Some(PortRange {
                first: 50000,
                last: 50010
            })
        );
        let Engines::Ssh(ssh) = &options.engines else {
            panic!("expected ssh, got {:?}", options.engines);
        };
        assert_eq!(
            (ssh.parallax.as_str(), ssh.env.get("X").map(String::as_str)),
            ("/opt/px", Some("1"))
        );
    }

    #[test]
    fn the_mpi_section_and_flags_resolve_like_ssh() {
        let (_dir, profile) = profile_with(Some(
            "engines = \"mpi\"\nn = 4\n[mpi]\nmpiexec = \"mpiexec.openmpi\"\nargs = \
             [\"--oversubscribe\"]\nenv = { MPI4PY_LIBMPI = \"libmpi.so.40\" }\n",
        ));
        let flags = Settings {
            mpi: MpiSection {
                args: Some(vec!["--allow-run-as-root".into(), "--oversubscribe".into()]),
                ..MpiSection::default()
            },
            ..Settings::default()
        };
        let options = resolve(profile, "/bin/parallax".into(), flags).expect("valid");
        let Engines::Mpi(mpi) = &options.engines else {
            panic!("expected mpi, got {:?}", options.engines);
        };
        assert_eq!(options.n, 4);
        assert_eq!(mpi.mpiexec, "mpiexec.openmpi", "the file");
        assert_eq!(
            mpi.args,
            ["--allow-run-as-root", "--oversubscribe"],
            "the flags"
        );
        assert_eq!(
            mpi.env.get("MPI4PY_LIBMPI").map(String::as_str),
            Some("libmpi.so.40")
        );

        let (_dir, profile) = profile_with(Some("engines = \"mpi\"\n"));
        let options = resolve(profile, "/bin/parallax".into(), Settings::default()).expect("valid");
        assert_eq!(
            options.engines,
            Engines::Mpi(MpiSettings::default()),
            "mpiexec on PATH, no arguments"
        );
    }

    #[test]
    fn no_file_means_a_local_cluster_on_loopback() {
        let (_dir, profile) = profile_with(None);
        let options = resolve(profile, "/bin/parallax".into(), Settings::default()).expect("valid");
        assert_eq!(
            (options.engines, options.ip.as_str()),
            (Engines::Local, "127.0.0.1")
        );
    }

    #[test]
    fn bad_files_and_settings_say_what_is_wrong() {
        let cases = [
            ("engines = \"pbs\"\n", "unknown launcher \"pbs\""),
            ("[mpi]\nmpiexc = \"x\"\n", "unknown field `mpiexc`"),
            (
                "engines = \"mpi\"\nrestart_engines = true\n",
                "--restart-engines does not work with the mpi launcher",
            ),
            ("engines = \"ssh\"\nip = \"0.0.0.0\"\n", "needs hosts"),
            ("engins = \"ssh\"\n", "unknown field `engins`"),
            ("ports = \"9-3\"\n", "FIRST-LAST"),
            ("n = 0\n", "at least 1 engine"),
            (
                "engines = \"ssh\"\n[ssh]\nhosts = [\"a\"]\n",
                "cannot reach a controller listening on 127.0.0.1",
            ),
        ];
        for (toml, expected) in cases {
            let (_dir, profile) = profile_with(Some(toml));
            let error = resolve(profile, "/bin/parallax".into(), Settings::default())
                .expect_err(toml)
                .to_string();
            assert!(error.contains(expected), "{toml:?}: {error}");
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            "100-101".parse::<PortRange>(),
            Ok(PortRange {
                first: 100,
                last: 101
            })
        );
        for bad in ["100", "100-100", "0-5", "a-b", "5-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
