//! The engine process: `parallax engine --file controller-engine.json`.
//!
//! An engine dials the controller, launches one Jupyter kernel, registers once that kernel can
//! run code, and then relays: `execute_request`s from the controller go to the kernel's shell as
//! they are (same header, so the kernel's outputs and reply name the client's request as their
//! parent), and the kernel's iopub messages and replies go back to the controller. The engine
//! link carries the cluster protocol of [`parallax_wire::cluster`] (engine half).
//!
//! ```text
//! controller ROUTER ◄──── DEALER (identity: our uuid) ─┐
//!                                                      │  one task owns the state (serve.rs)
//!   execute_request ─► in flight (in order) ─► kernel shell DEALER
//!   iopub (as is)    ◄──────────────────────── kernel iopub SUB
//!   reply, held until the kernel's idle for it ◄ kernel shell DEALER
//!   stream           ◄── fd output (pipes) ─── kernel stdout/stderr, when not ipykernel
//!   heartbeat every heartbeat_interval; no heartbeat_reply for 10 s: the controller is gone
//! ```
//!
//! Guarantees on the engine link: every output of a request precedes its reply (a reply is held
//! until the kernel has published `idle` for it); every request gets a reply (a kernel that dies
//! mid-request yields an `EngineError` reply naming the engine and the exit status; a request
//! of unknown type gets `<type>_reply` with `status: error`).
//!
//! # Layout
//!
//! - this file: [`EngineOptions`], [`EngineError`], [`run`] (startup: controller connect and
//!   kernel launch at the same time).
//! - `kernel`: the engine's kernel: launch + ready, interrupt, shutdown, fd output pipes.
//! - `inflight`: requests sent to the kernel and not yet answered, and the replies held for
//!   their `idle` (no I/O).
//! - `serve`: the event loop: registration, relaying, heartbeats, death and restart, shutdown.
//! - [`rank`]: the id of an engine that is an MPI rank (`parallax engine --mpi`).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use parallax_net::{connect_dealer, Limits, LinkStats, NetError, Security};
use parallax_wire::cluster::EngineId;
use parallax_wire::profile::{read_json, ControllerFile, ProfileError};
use parallax_wire::Session;
use tokio::time::Instant;

use crate::kernelspec::{find_kernelspec, KernelSpecError};
use crate::launch::LaunchError;

mod inflight;
mod kernel;
pub mod rank;
mod serve;
mod support;

/// How long the controller may take to accept our connection (it may be starting too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the controller may take to answer `register_request`, by default.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Without a `heartbeat_reply` for this long, the controller is considered gone.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an engine learns where the controller is and how to sign and encrypt: the contents of
/// the profile's `security/controller-engine.json` ([`ControllerFile`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionSource {
    /// The file itself (a shared filesystem, or this host).
    File(PathBuf),
    /// One line of JSON on standard input, written by the launcher (an ssh session), which keeps
    /// standard input open for as long as it wants the engine: when it closes, the engine stops,
    /// so a launcher that dies (or a dropped ssh session) leaves no engine behind.
    Stdin,
    /// The JSON in the environment variable `PARALLAX_CONNECTION_INFO` (an MPI or batch job).
    Env,
}

/// The environment variable [`ConnectionSource::Env`] reads.
pub const CONNECTION_INFO_VAR: &str = "PARALLAX_CONNECTION_INFO";

impl ConnectionSource {
    /// Where it is, for messages.
    fn describe(&self) -> String {
        match self {
            ConnectionSource::File(path) => path.display().to_string(),
            ConnectionSource::Stdin => "standard input".into(),
            ConnectionSource::Env => format!("${CONNECTION_INFO_VAR}"),
        }
    }

    /// Reads and parses the connection info. From standard input it takes the first line, and
    /// returns the rest of standard input to be watched for its end.
    async fn read(&self) -> Result<(ControllerFile, Option<Stdin>), EngineError> {
        let mut rest = None;
        let text = match self {
            ConnectionSource::File(path) => return Ok((read_json(path)?, None)),
            ConnectionSource::Env => {
                std::env::var(CONNECTION_INFO_VAR).map_err(|_| EngineError::ConnectionInfo {
                    from: self.describe(),
                    reason: "the variable is not set".into(),
                })?
            }
            ConnectionSource::Stdin => {
                use tokio::io::AsyncBufReadExt;
                let mut line = String::new();
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                let read = tokio::time::timeout(CONNECT_TIMEOUT, stdin.read_line(&mut line)).await;
                rest = Some(stdin);
                match read {
                    Ok(Ok(n)) if n > 0 => line,
                    Ok(Ok(_)) => String::new(),
                    Ok(Err(error)) => {
                        return Err(EngineError::ConnectionInfo {
                            from: self.describe(),
                            reason: error.to_string(),
                        })
                    }
                    Err(_) => {
                        return Err(EngineError::ConnectionInfo {
                            from: self.describe(),
                            reason: format!("nothing arrived within {CONNECT_TIMEOUT:?}"),
                        })
                    }
                }
            }
        };
        let file =
            serde_json::from_str(text.trim()).map_err(|error| EngineError::ConnectionInfo {
                from: self.describe(),
                reason: if text.trim().is_empty() {
                    "it is empty".into()
                } else {
                    format!("not a controller engine file: {error}")
                },
            })?;
        Ok((file, rest))
    }
}

/// Standard input, after the connection info's line.
type Stdin = tokio::io::BufReader<tokio::io::Stdin>;

/// Resolves when `stdin` reaches its end (or fails): the launcher that wrote the connection
/// info is gone. Never resolves without it.
async fn launcher_gone(stdin: Option<Stdin>) {
    use tokio::io::AsyncReadExt;
    let Some(mut stdin) = stdin else {
        return std::future::pending().await;
    };
    let mut buffer = [0u8; 256];
    while let Ok(1..) = stdin.read(&mut buffer).await {}
}

/// What `parallax engine` was asked to do.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where the controller's engine file comes from.
    pub connection: ConnectionSource,
    /// The kernelspec to run, `python3` by default.
    pub kernel: String,
    /// Start a new kernel when the kernel dies, and register again under the same id.
    pub restart_kernel: bool,
    /// The id to reclaim at the first registration (an engine process that was relaunched).
    pub id: Option<EngineId>,
    /// How long registering may take, from when the kernel is ready.
    pub register_timeout: Duration,
}

impl EngineOptions {
    /// Options for the engine of the controller described by `file`, with the defaults.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        EngineOptions {
            connection: ConnectionSource::File(file.into()),
            kernel: crate::kernelspec::NATIVE_KERNEL_NAME.to_owned(),
            restart_kernel: false,
            id: None,
            register_timeout: REGISTER_TIMEOUT,
        }
    }
}

/// Why the engine stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read the controller file: {0}")]
    ControllerFile(#[from] ProfileError),
    #[error("cannot read the connection info from {from}: {reason}")]
    ConnectionInfo { from: String, reason: String },
    #[error("--mpi: no MPI rank: {reason}")]
    MpiRank { reason: String },
    #[error("unsupported signature scheme {0:?} in the controller file (only hmac-sha256)")]
    SignatureScheme(String),
    #[error("cannot reach the controller at {url}: {source}")]
    Connect { url: String, source: NetError },
    #[error(transparent)]
    KernelSpec(#[from] KernelSpecError),
    #[error("cannot launch kernel {kernel:?}: {source}")]
    Launch { kernel: String, source: LaunchError },
    #[error("kernel {kernel:?} did not start: {reason}")]
    KernelStart { kernel: String, reason: String },
    #[error("the controller refused to register this engine: {reason}")]
    Refused { reason: String },
    #[error("the controller at {url} did not answer register_request within {after:?} ({attempts} attempts): {connection}")]
    RegisterTimeout {
        url: String,
        after: Duration,
        attempts: u32,
        /// What became of the connection: refused (and why), made, dropped or never made.
        connection: String,
    },
    #[error("the controller is gone: no heartbeat reply for {0:?}")]
    ControllerGone(Duration),
    #[error("the link to the controller closed")]
    LinkClosed,
    #[error("engine {id}'s kernel {kernel:?} died ({exit}) and --restart-kernel is off")]
    KernelDied {
        id: EngineId,
        kernel: String,
        exit: String,
    },
}

/// Runs an engine until it is told to stop (`shutdown_request` from the controller, or the
/// `shutdown` future: the CLI passes SIGTERM/SIGINT) or cannot go on (the controller is gone,
/// the kernel died without `restart_kernel`, registration failed). The kernel is stopped in
/// every case.
pub async fn run(
    options: EngineOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EngineError> {
    let started = Instant::now();
    let (file, stdin) = options.connection.read().await?;
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = launcher_gone(stdin) => {
                tracing::warn!("standard input closed: the launcher is gone; stopping");
            }
        }
    };
    if !file.signature_scheme.eq_ignore_ascii_case("hmac-sha256") {
        return Err(EngineError::SignatureScheme(file.signature_scheme));
    }
    let session = Session::new(file.key.as_bytes(), "parallax");
    let uuid = uuid::Uuid::new_v4().to_string();
    let spec = find_kernelspec(&options.kernel)?;
    tracing::info!(url = %file.url, kernel = %spec.name, %uuid, "engine starting");

    tokio::pin!(shutdown);
    // The controller may be starting at the same moment, and the kernel takes the longest:
    // do both at once.
    let connect_error = |source| EngineError::Connect {
        url: file.url.clone(),
        source,
    };
    let security = Security::for_file(&file).map_err(connect_error)?;
    if !security.is_curve() && !parallax_net::is_loopback_endpoint(&file.url) {
        tracing::warn!(
            url = %file.url,
            "the link to the controller is not encrypted (the engine file has no CURVE keys)"
        );
    }
    let stats = LinkStats::watched("controller");
    let connect = async {
        connect_dealer(
            &file.url,
            session.clone(),
            Some(Bytes::from(uuid.clone().into_bytes())),
            CONNECT_TIMEOUT,
            stats.clone(),
            file.max_message_size.map_or(Limits::DATA, Limits::data),
            &security,
        )
        .await
        .map_err(connect_error)
    };
    let attach = support::Attach {
        url: file.url.clone(),
        key: file.key.clone(),
        uuid: uuid.clone(),
        curve: support::AttachCurve::from_file(&file),
    };
    let startup =
        async { tokio::try_join!(connect, kernel::EngineKernel::start(spec, attach.clone())) };
    let ((link, inbox), kernel) = tokio::select! {
        ready = startup => ready?,
        // Dropping a half-started kernel kills its process group.
        () = &mut shutdown => return Ok(()),
    };
    tracing::debug!(elapsed = ?started.elapsed(), "controller connected and kernel ready");

    let link = serve::Link {
        session,
        outbox: link,
        inbox,
        uuid,
        attach,
        stats,
        url: file.url.clone(),
    };
    serve::Engine::new(options, link, kernel, started)
        .serve(shutdown)
        .await
}

/// This machine's name, for the engine table.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_never_empty() {
        assert!(!hostname().is_empty());
    }
}
