//! Launching a Jupyter kernel as a child process and supervising it.
//!
//! [`KernelProcess::launch`] writes a connection file (a fresh key; IPC sockets in a private 0700
//! folder where the kernel supports them, else OS-chosen ports on 127.0.0.1) and starts the
//! kernelspec's command in its own process group, so that an interrupt aimed at us does not also
//! hit the kernel, and so that killing the group also ends whatever the kernel started. A
//! supervisor task owns the child: it reports the exit and carries out kills. `JPY_PARENT_PID` is
//! set so that ipykernel exits by itself should this process die without cleaning up. The
//! kernel's stdout and stderr are inherited, written to a log file, or piped to the caller
//! ([`LaunchOptions::capture_output`]) for kernels that do not forward fd-level output themselves.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use parallax_wire::{write_connection_file, ConnectionInfo, Transport};
use tokio::sync::{mpsc, watch};

use crate::kernelspec::{InterruptMode, KernelSpec};

/// Why a kernel could not be launched or signalled.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot prepare the kernel's runtime folder {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot choose ports for the kernel: {0}")]
    Ports(std::io::Error),
    #[error(transparent)]
    ConnectionFile(#[from] parallax_wire::ConnectionError),
    #[error("cannot start kernel {name:?} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("kernelspec {name:?} has an empty command")]
    EmptyCommand { name: String },
    #[error("cannot signal the kernel: {0}")]
    Signal(nix::Error),
}

/// How the kernel's sockets are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTransport {
    /// Unix sockets in a private folder: only this machine's processes of this user can connect.
    Ipc,
    /// OS-chosen ports on 127.0.0.1.
    Tcp,
}

impl LinkTransport {
    /// The transport for `spec`: IPC for kernels known to support it (ipykernel), else TCP.
    /// `PARALLAX_KERNEL_TRANSPORT=tcp|ipc` overrides the choice.
    pub fn for_spec(spec: &KernelSpec) -> Self {
        match std::env::var("PARALLAX_KERNEL_TRANSPORT").as_deref() {
            Ok("tcp") => return LinkTransport::Tcp,
            Ok("ipc") => return LinkTransport::Ipc,
            _ => {}
        }
        let ipykernel = spec
            .argv
            .iter()
            .any(|arg| arg.contains("ipykernel_launcher") || arg.contains("ipykernel"));
        if ipykernel {
            LinkTransport::Ipc
        } else {
            LinkTransport::Tcp
        }
    }
}

/// How a kernel ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(name) => write!(f, "killed by {name}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            (None, None) => f.write_str("ended"),
        }
    }
}

/// A private folder for a kernel's connection file and IPC sockets, removed on drop.
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn create() -> Result<Self, LaunchError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "parallax-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| LaunchError::RuntimeDir {
                path: path.clone(),
                source,
            })?;
        Ok(RuntimeDir(path))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The longest socket path to trust to `sockaddr_un` (108 bytes on Linux, with room to spare).
const MAX_IPC_PATH: usize = 96;

/// A running kernel child.
pub struct KernelProcess {
    spec: KernelSpec,
    connection: ConnectionInfo,
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
    kill: mpsc::Sender<()>,
    output: Option<KernelOutput>,
    _runtime: RuntimeDir,
}

impl std::fmt::Debug for KernelProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelProcess")
            .field("name", &self.spec.name)
            .field("pid", &self.pid)
            .finish()
    }
}

/// Options for [`KernelProcess::launch`].
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Extra environment for the kernel, on top of ours and the kernelspec's.
    pub env: Vec<(String, String)>,
    /// Working directory; ours by default.
    pub cwd: Option<PathBuf>,
    /// Where the kernel's stdout and stderr go; inherited from us when `None`.
    pub log_file: Option<PathBuf>,
    /// The transport; chosen from the kernelspec when `None`.
    pub transport: Option<LinkTransport>,
    /// Pipe the kernel's stdout and stderr to us (taken with [`KernelProcess::take_output`])
    /// instead of inheriting ours or writing `log_file`: for kernels that do not forward what is
    /// written to their file descriptors themselves, as ipykernel does.
    pub capture_output: bool,
}

/// The read ends of a kernel's stdout and stderr, when launched with
/// [`LaunchOptions::capture_output`]. They reach end of file when the kernel (and whatever it
/// started in its process group) has gone.
#[derive(Debug)]
pub struct KernelOutput {
    pub stdout: tokio::process::ChildStdout,
    pub stderr: tokio::process::ChildStderr,
}

impl KernelProcess {
    /// Writes a connection file and starts the kernel. The kernel is not yet ready when this
    /// returns: connect a [`crate::client::KernelClient`] and wait for it.
    pub async fn launch(spec: KernelSpec, options: &LaunchOptions) -> Result<Self, LaunchError> {
        let runtime = RuntimeDir::create()?;
        let transport = options
            .transport
            .unwrap_or_else(|| LinkTransport::for_spec(&spec));
        let ipc_prefix = runtime.0.join("k");
        let transport = if ipc_prefix.as_os_str().len() + 2 > MAX_IPC_PATH {
            LinkTransport::Tcp
        } else {
            transport
        };
        let key = uuid::Uuid::new_v4().to_string();
        let connection = match transport {
            LinkTransport::Ipc => ConnectionInfo {
                ip: ipc_prefix.to_string_lossy().into_owned(),
                transport: Transport::IPC,
                shell_port: 1,
                iopub_port: 2,
                stdin_port: 3,
                control_port: 4,
                hb_port: 5,
                key,
                signature_scheme: "hmac-sha256".into(),
                kernel_name: Some(spec.name.clone()),
            },
            LinkTransport::Tcp => {
                let [shell, iopub, stdin, control, hb] = free_ports()?;
                ConnectionInfo {
                    ip: "127.0.0.1".into(),
                    transport: Transport::TCP,
                    shell_port: shell,
                    iopub_port: iopub,
                    stdin_port: stdin,
                    control_port: control,
                    hb_port: hb,
                    key,
                    signature_scheme: "hmac-sha256".into(),
                    kernel_name: Some(spec.name.clone()),
                }
            }
        };
        let connection_file = runtime.0.join("kernel.json");
        write_connection_file(&connection_file, &connection)?;

        let argv = spec.command(&connection_file);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LaunchError::EmptyCommand {
                name: spec.name.clone(),
            })?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(spec.env.iter())
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("JPY_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &options.cwd {
            command.current_dir(cwd);
        }
        if options.capture_output {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else if let Some(log) = &options.log_file {
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
            };
            let spawn_error = |source| LaunchError::Spawn {
                name: spec.name.clone(),
                program: program.clone(),
                source,
            };
            command.stdout(open().map_err(spawn_error)?);
            command.stderr(open().map_err(spawn_error)?);
        }
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            name: spec.name.clone(),
            program: program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let output = match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => Some(KernelOutput { stdout, stderr }),
            _ => None,
        };
        tracing::info!(kernel = %spec.name, pid, ?transport, "started kernel");

        let (exit_tx, exit) = watch::channel(None);
        let (kill, mut kill_rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx.recv() => {
                    kill_group(pid);
                    child.wait().await
                }
            };
            let exit = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    Exit {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
                Err(_) => Exit {
                    code: None,
                    signal: None,
                },
            };
            // Whatever the kernel started in its group goes with it.
            kill_group(pid);
            let _ = exit_tx.send(Some(exit));
        });

        Ok(KernelProcess {
            spec,
            connection,
            pid,
            exit,
            kill,
            output,
            _runtime: runtime,
        })
    }

    /// The kernel's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The kernelspec it was started from.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// Where its sockets are, and the key that signs its messages.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }

    /// The kernel's stdout and stderr pipes, once, if it was launched with
    /// [`LaunchOptions::capture_output`]. Read them steadily: a kernel whose pipe is full blocks.
    pub fn take_output(&mut self) -> Option<KernelOutput> {
        self.output.take()
    }

    /// How it ended, if it has.
    pub fn exit_status(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// A future that resolves when the kernel has exited. Cancel-safe and cheap to call again.
    pub fn exited(&self) -> impl std::future::Future<Output = Exit> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(value) => value.clone().unwrap_or(Exit {
                    code: None,
                    signal: None,
                }),
                // The supervisor is gone only once it has reported.
                Err(_) => Exit {
                    code: None,
                    signal: None,
                },
            }
        }
    }

    /// Interrupts the kernel the way its kernelspec asks: SIGINT to its process group for
    /// `signal` mode. For `message` mode the caller sends `interrupt_request` on control; this
    /// returns `false` to say so.
    pub fn interrupt(&self) -> Result<bool, LaunchError> {
        match self.spec.interrupt_mode {
            InterruptMode::Signal => {
                if self.exit_status().is_none() {
                    signal_group(self.pid, Signal::SIGINT).map_err(LaunchError::Signal)?;
                }
                Ok(true)
            }
            InterruptMode::Message => Ok(false),
        }
    }

    /// Sends `signal` to the kernel's process group (for `--signal-on-interrupt`).
    pub fn signal(&self, signal: Signal) -> Result<(), LaunchError> {
        if self.exit_status().is_none() {
            signal_group(self.pid, signal).map_err(LaunchError::Signal)?;
        }
        Ok(())
    }

    /// Kills the kernel and its process group, and waits until it has exited.
    pub async fn kill(&self) -> Exit {
        let _ = self.kill.try_send(());
        self.exited().await
    }

    /// Waits up to `grace` for the kernel to exit by itself (after a shutdown request), then
    /// kills it.
    pub async fn finish(&self, grace: Duration) -> Exit {
        match tokio::time::timeout(grace, self.exited()).await {
            Ok(exit) => exit,
            Err(_) => self.kill().await,
        }
    }
}

impl Drop for KernelProcess {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            kill_group(self.pid);
        }
    }
}

fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::ESRCH)?;
    if pid <= 1 {
        return Err(nix::Error::ESRCH);
    }
    killpg(Pid::from_raw(pid), signal)
}

fn kill_group(pid: u32) {
    // ESRCH: the group is already gone, which is what we wanted.
    let _ = signal_group(pid, Signal::SIGKILL);
}

/// Five distinct free TCP ports on 127.0.0.1. The listeners are dropped before the kernel starts:
/// keeping them open while it binds makes its first connections fail.
fn free_ports() -> Result<[u16; 5], LaunchError> {
    let mut listeners = Vec::with_capacity(5);
    for _ in 0..5 {
        listeners.push(TcpListener::bind(("127.0.0.1", 0)).map_err(LaunchError::Ports)?);
    }
    let mut ports = [0u16; 5];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().map_err(LaunchError::Ports)?.port();
    }
    Ok(ports)
}
