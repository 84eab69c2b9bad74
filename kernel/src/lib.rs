//! The parallax kernel: the Jupyter kernel a notebook talks to.
//!
//! It serves the five Jupyter channels from the connection file its front end wrote, owns a local
//! kernel child (the `python3` kernelspec by default) and proxies to it every request that is not
//! a parallel magic, re-parenting the local kernel's replies and outputs so that the front end
//! sees them under its own requests, in order.
//!
//! # Layout
//!
//! - [`frontend`]: binding the front end's channels; publishing on iopub.
//! - [`local`]: launching the local kernel and waiting until it is ready; our `kernel_info`.
//! - [`dispatch`]: the event loop: queueing, forwarding, re-parenting, interrupts, shutdown,
//!   recovery when the local kernel dies, and plans of cells with parallel magics.
//! - [`px`]: one parallel step running on the engines, and its rendering.
//! - [`owned`]: the cluster a kernel started, stopped when it shuts down.

use std::path::PathBuf;

pub mod dispatch;
pub mod frontend;
pub mod local;
pub mod owned;
pub mod px;

/// How the kernel was asked to run.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// The connection file written by the front end.
    pub connection_file: PathBuf,
    /// The kernelspec of the local kernel.
    pub local_kernel: String,
    /// The cluster profile `%px` talks to.
    pub profile: String,
}

/// Why the kernel could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Connection(#[from] parallax_wire::ConnectionError),
    #[error(transparent)]
    Net(#[from] parallax_net::NetError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Serves the front end until it asks the kernel to shut down (or sends SIGTERM).
pub async fn run(options: KernelOptions) -> Result<(), KernelError> {
    let info = parallax_wire::read_connection_file(&options.connection_file)?;
    let signals = dispatch::Signals::install().map_err(KernelError::Signals)?;
    let front = frontend::Frontend::bind(&info).await?;
    tracing::info!(
        connection_file = %options.connection_file.display(),
        local_kernel = %options.local_kernel,
        profile = %options.profile,
        "parallax kernel serving"
    );
    dispatch::Kernel::new(
        front,
        options.connection_file,
        options.local_kernel,
        options.profile,
    )
    .run(signals)
    .await;
    Ok(())
}
