//! Shared set-up for tests that run the real `parallax` binary: an isolated PARALLAX_DIR and
//! Jupyter dirs per test, the project's Python environment, and clean-up of every process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use parallax_client::ControllerClient;
use parallax_wire::profile::Profile;

/// The `parallax` binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_parallax"))
}

/// The Python with ipykernel the engines use: `PARALLAX_TEST_PYTHON`, else the project's venv.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("PARALLAX_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python environment at {}: run scripts/setup.sh first",
        venv.display()
    );
    venv
}

/// One test's world: its own PARALLAX_DIR and Jupyter dirs, removed (with every cluster in it
/// stopped) when dropped.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["parallax", "jupyter-data", "jupyter-runtime"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        World { dir }
    }

    pub fn parallax_dir(&self) -> PathBuf {
        self.dir.path().join("parallax")
    }

    pub fn profile(&self, name: &str) -> Profile {
        Profile::in_dir(&self.parallax_dir(), name).expect("profile")
    }

    /// A `parallax` command in this world.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(&exe(), args)
    }

    /// A command of the `parallax` binary at `binary` (a copy under another name, say) in this
    /// world.
    pub fn command_of(&self, binary: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("PARALLAX_DIR", self.parallax_dir())
            .env("PARALLAX_PYTHON", python())
            .env("JUPYTER_DATA_DIR", self.dir.path().join("jupyter-data"))
            .env(
                "JUPYTER_RUNTIME_DIR",
                self.dir.path().join("jupyter-runtime"),
            )
            .env("JUPYTER_PATH", self.dir.path().join("jupyter-data"))
            .env_remove("VIRTUAL_ENV")
            .env("RUST_LOG", "info");
        command
    }

    /// Runs a `parallax` command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run parallax")
    }

    /// `cluster start --daemonize` that must succeed; returns its stdout.
    pub fn start(&self, profile: &str, n: usize, extra: &[&str]) -> String {
        let n = n.to_string();
        let mut args = vec![
            "cluster",
            "start",
            "--daemonize",
            "--profile",
            profile,
            "-n",
            &n,
            "--timeout",
            "60",
        ];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "cluster start failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A client of `profile`'s controller (the test's runtime must be running).
    pub async fn client(&self, profile: &str) -> ControllerClient {
        ControllerClient::connect(&self.profile(profile), Duration::from_secs(10))
            .await
            .expect("connect to controller")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.run(&["cluster", "stop", "--all"]);
    }
}

/// Whether a process exists (and is not a zombie).
pub use parallax_launcher::state::is_alive as alive;

/// Waits until `check` holds, up to `timeout`; returns whether it did.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

pub fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Text of every stream output in `messages`.
pub fn stream_text(messages: &[parallax_wire::Message]) -> String {
    messages
        .iter()
        .filter(|m| m.msg_type() == "stream")
        .filter_map(|m| m.content_as::<serde_json::Value>().ok())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect()
}
