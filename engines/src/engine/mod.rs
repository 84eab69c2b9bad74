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
mod serve;
mod support;

/// How long the controller may take to accept our connection (it may be starting too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the controller may take to answer `register_request`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Without a `heartbeat_reply` for this long, the controller is considered gone.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `parallax engine` was asked to do.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `security/controller-engine.json` of the profile ([`ControllerFile`]).
    pub file: PathBuf,
    /// The kernelspec to run, `python3` by default.
    pub kernel: String,
    /// Start a new kernel when the kernel dies, and register again under the same id.
    pub restart_kernel: bool,
    /// The id to reclaim at the first registration (an engine process that was relaunched).
    pub id: Option<EngineId>,
}

impl EngineOptions {
    /// Options for the engine of the controller described by `file`, with the defaults.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        EngineOptions {
            file: file.into(),
            kernel: crate::kernelspec::NATIVE_KERNEL_NAME.to_owned(),
            restart_kernel: false,
            id: None,
        }
    }
}

/// Why the engine stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read the controller file: {0}")]
    ControllerFile(#[from] ProfileError),
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
    #[error("the controller did not answer register_request within {after:?}{}", refused.as_deref().map(|why| format!(": {why}")).unwrap_or_default())]
    RegisterTimeout {
        after: Duration,
        /// Why the controller refused the link's handshake, if it did.
        refused: Option<String>,
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
    let file: ControllerFile = read_json(&options.file)?;
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
    let stats = LinkStats::new("controller");
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
