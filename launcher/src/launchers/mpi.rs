//! Engines as MPI ranks: one `mpiexec [args] -n N parallax engine --mpi ...` runs every engine,
//! and each engine's id is its rank, so code on engine `i` that calls `MPI.COMM_WORLD` sees rank
//! `i` of `N`, and collectives across the engines work.
//!
//! The engines learn where the controller is from `$PARALLAX_CONNECTION_INFO`, set in
//! `mpiexec`'s environment (never on its command line, which anyone on the machine can read):
//! MPICH's Hydra passes the whole environment to every rank; Open MPI passes it to the ranks on
//! this host and, to those elsewhere, only the variables named with `-x`, so for Open MPI the
//! launcher adds `-x NAME` for it and for each variable of `env`. Which MPI `mpiexec` belongs to
//! is asked before the start (`mpiexec --version`), which also checks that it runs.
//!
//! Each engine starts its kernel as a child that inherits the engine's environment and open
//! file descriptors (the PMI/PMIx variables and MPICH's `PMI_FD`), so MPI initialised in the
//! kernel (`from mpi4py import MPI`) joins the job as the engine's rank.
//!
//! Stopping: `mpiexec` runs in its own process group like every child of the supervisor; both
//! MPICH and Open MPI forward SIGTERM to the ranks, and each engine then unregisters, shuts its
//! kernel down and exits, after which `mpiexec` exits. Before that, the controller has already
//! told every engine to stop (the supervisor stops the controller first). One rank that dies
//! usually ends the whole job, and a new kernel cannot join a running job's `COMM_WORLD`: an MPI
//! cluster keeps the size it started with ([`FIXED_SIZE`]) and does not restart engines.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EngineCommand, EngineProcess, EngineSpec, Launcher, Preflight};
use crate::LaunchError;

/// Why an MPI cluster cannot be scaled.
pub const FIXED_SIZE: &str =
    "an MPI cluster's size is fixed by its mpiexec: stop it and start it with -n N";

/// The variable `parallax engine` reads its connection info from (the engines crate's
/// `CONNECTION_INFO_VAR`; this crate does not depend on that one).
pub const CONNECTION_INFO_VAR: &str = "PARALLAX_CONNECTION_INFO";

/// How long `mpiexec --version` may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(20);

/// The settings of the MPI launcher (`[mpi]` in `cluster.toml`, or flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpiSettings {
    /// The `mpiexec` to run: a name on `PATH` (`mpiexec.openmpi`) or a path.
    #[serde(default = "default_mpiexec")]
    pub mpiexec: String,
    /// Its arguments, before `-n N` (`--allow-run-as-root`, `--oversubscribe`, `-hosts a,b`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables for the ranks.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_mpiexec() -> String {
    "mpiexec".into()
}

impl Default for MpiSettings {
    fn default() -> Self {
        MpiSettings {
            mpiexec: default_mpiexec(),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }
}

/// Which MPI an `mpiexec` belongs to, as far as the launcher cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Open MPI: remote ranks get only the variables named with `-x`.
    OpenMpi,
    /// MPICH's Hydra (and Intel MPI's): every rank gets the whole environment.
    Hydra,
    /// Something else: given the environment and nothing more.
    Other,
}

impl Flavor {
    /// The flavor from the output of `mpiexec --version`.
    pub fn from_version(output: &str) -> Flavor {
        if output.contains("Open MPI") || output.contains("OpenRTE") {
            Flavor::OpenMpi
        } else if output.contains("HYDRA") || output.contains("Intel(R) MPI") {
            Flavor::Hydra
        } else {
            Flavor::Other
        }
    }
}

/// The MPI launcher.
#[derive(Debug)]
pub struct Mpi {
    settings: MpiSettings,
    /// The `parallax` binary the ranks run.
    exe: PathBuf,
    /// Learnt by [`Launcher::preflight`].
    flavor: OnceLock<Flavor>,
}

impl Mpi {
    pub fn new(settings: MpiSettings, exe: PathBuf) -> Self {
        Mpi {
            settings,
            exe,
            flavor: OnceLock::new(),
        }
    }

    /// The one `mpiexec` that runs the engines of `slots` (all of them: slot = rank).
    fn command(&self, slots: &Range<usize>, spec: &EngineSpec) -> EngineCommand {
        let mut args = self.settings.args.clone();
        args.extend(["-n".into(), slots.len().to_string()]);
        let mut env = vec![(CONNECTION_INFO_VAR.to_owned(), spec.connection.clone())];
        env.extend(self.settings.env.clone());
        if self.flavor.get() == Some(&Flavor::OpenMpi) {
            for (name, _) in &env {
                args.extend(["-x".into(), name.clone()]);
            }
        }
        args.push(self.exe.to_string_lossy().into_owned());
        args.extend(["engine".into(), "--mpi".into()]);
        args.extend(spec.engine_args(None));
        EngineCommand {
            program: PathBuf::from(&self.settings.mpiexec),
            args,
            stdin: None,
            host: "localhost".into(),
            env,
        }
    }

    /// Runs `mpiexec --version`: it must run, and it says which MPI it is.
    async fn check_mpiexec(&self) -> Result<Flavor, LaunchError> {
        let mpiexec = &self.settings.mpiexec;
        let failed = |why: String| LaunchError::Invalid {
            reason: format!(
                "cannot run {mpiexec} --version ({why}): install MPI (Debian: mpich or \
                 openmpi-bin) or name its mpiexec with --mpiexec or mpiexec = \"...\" under [mpi] \
                 in cluster.toml"
            ),
        };
        let run = tokio::process::Command::new(mpiexec)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(PREFLIGHT_TIMEOUT, run).await {
            Err(_) => return Err(failed(format!("no answer within {PREFLIGHT_TIMEOUT:?}"))),
            Ok(Err(error)) => return Err(failed(error.to_string())),
            Ok(Ok(output)) if !output.status.success() => {
                return Err(failed(format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )))
            }
            Ok(Ok(output)) => output,
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Flavor::from_version(&text))
    }
}

impl Launcher for Mpi {
    fn name(&self) -> &'static str {
        "mpi"
    }

    /// Ranks on other hosts (`-hosts`, a hostfile) are mpiexec's business, not known here: the
    /// user then gives `--ip` so that the controller listens where they can reach it.
    fn remote(&self) -> bool {
        false
    }

    fn engine_host(&self) -> Option<String> {
        None
    }

    fn preflight<'a>(&'a self, _kernel: &'a str) -> Preflight<'a> {
        Box::pin(async move {
            let flavor = self.check_mpiexec().await?;
            tracing::info!(mpiexec = %self.settings.mpiexec, ?flavor, "mpiexec found");
            let _ = self.flavor.set(flavor);
            Ok(())
        })
    }

    fn commands(&self, slots: Range<usize>, spec: &EngineSpec) -> Vec<EngineProcess> {
        if slots.is_empty() {
            return Vec::new();
        }
        vec![EngineProcess {
            command: self.command(&slots, spec),
            slots,
        }]
    }

    fn fixed_size(&self) -> Option<&'static str> {
        Some(FIXED_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EngineSpec {
        EngineSpec {
            kernel: "python3".into(),
            restart_kernel: false,
            id: None,
            timeout: Duration::from_secs(30),
            file: PathBuf::from("/p/security/controller-engine.json"),
            connection: "{\"key\": \"secret\"}".into(),
        }
    }

    fn launcher(flavor: Option<Flavor>) -> Mpi {
        let mut settings = MpiSettings {
            mpiexec: "mpiexec.openmpi".into(),
            args: vec!["--allow-run-as-root".into(), "--oversubscribe".into()],
            ..MpiSettings::default()
        };
        settings
            .env
            .insert("MPI4PY_LIBMPI".into(), "libmpi.so.40".into());
        let mpi = Mpi::new(settings, "/opt/bin/parallax".into());
        if let Some(flavor) = flavor {
            mpi.flavor.set(flavor).expect("unset");
        }
        mpi
    }

    #[test]
    fn one_mpiexec_runs_every_slot_with_the_key_in_its_environment_only() {
        let processes = launcher(Some(Flavor::Hydra)).commands(0..4, &spec());
        assert_eq!(processes.len(), 1);
        let EngineProcess { command, slots } = &processes[0];
        assert_eq!(slots, &(0..4));
        assert_eq!(command.program, PathBuf::from("mpiexec.openmpi"));
        assert_eq!(
            command.args.join(" "),
            "--allow-run-as-root --oversubscribe -n 4 /opt/bin/parallax engine --mpi --kernel \
             python3 --timeout 30"
        );
        assert_eq!(command.stdin, None);
        assert_eq!(
            command.env,
            [
                (CONNECTION_INFO_VAR.to_owned(), spec().connection),
                ("MPI4PY_LIBMPI".to_owned(), "libmpi.so.40".to_owned()),
            ]
        );
        assert!(!command.args.iter().any(|a| a.contains("secret")));
        assert!(launcher(None).commands(0..0, &spec()).is_empty());
    }

    #[test]
    fn open_mpi_is_told_to_pass_each_variable_to_remote_ranks() {
        let processes = launcher(Some(Flavor::OpenMpi)).commands(0..3, &spec());
        let args = processes[0].command.args.join(" ");
        assert!(
            args.starts_with(
                "--allow-run-as-root --oversubscribe -n 3 -x PARALLAX_CONNECTION_INFO -x \
                 MPI4PY_LIBMPI /opt/bin/parallax engine --mpi "
            ),
            "{args}"
        );
    }

    #[test]
    fn the_flavor_comes_from_mpiexec_version() {
        let cases = [
            ("mpiexec.openmpi (OpenRTE) 4.1.4\n", Flavor::OpenMpi),
            ("mpirun (Open MPI) 5.0.11\n", Flavor::OpenMpi),
            ("HYDRA build details:\n    Version: 4.0.2\n", Flavor::Hydra),
            (
                "Intel(R) MPI Library for Linux* OS, Version 2021.10\n",
                Flavor::Hydra,
            ),
            ("something else\n", Flavor::Other),
        ];
        for (output, flavor) in cases {
            assert_eq!(Flavor::from_version(output), flavor, "{output:?}");
        }
    }

    #[tokio::test]
    async fn a_missing_mpiexec_is_refused_before_anything_starts() {
        let mpi = Mpi::new(
            MpiSettings {
                mpiexec: "/nonexistent/mpiexec".into(),
                ..MpiSettings::default()
            },
            "parallax".into(),
        );
        let error = mpi.preflight("python3").await.expect_err("missing");
        assert!(
            error
                .to_string()
                .contains("cannot run /nonexistent/mpiexec --version"),
            "{error}"
        );
    }

    #[test]
    fn settings_read_from_toml_with_defaults() {
        let settings: MpiSettings =
            toml::from_str("args = [\"-hosts\", \"a,b\"]\n").expect("valid");
        assert_eq!(settings.mpiexec, "mpiexec");
        assert_eq!(settings.args, ["-hosts", "a,b"]);
        assert!(settings.env.is_empty());
    }
}
