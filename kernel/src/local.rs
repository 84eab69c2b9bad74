//! The local kernel: the child kernel (ipykernel by default) that runs every cell that is not a
//! parallel magic, launched and made ready here.

use std::time::Duration;

use parallax_engines::kernelspec::{find_kernelspec, KernelSpec};
use parallax_engines::{KernelClient, KernelProcess, LaunchOptions};
use parallax_wire::Message;

/// How long a local kernel may take from launch to answering `kernel_info_request`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long its sockets may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running, ready local kernel.
pub struct Local {
    pub process: KernelProcess,
    pub client: KernelClient,
    /// The content of its `kernel_info_reply`.
    pub info: serde_json::Value,
}

/// Finds the kernelspec called `name`, launches it and waits until it is ready.
pub async fn start(name: &str) -> Result<Local, String> {
    let spec = find_kernelspec(name).map_err(|e| e.to_string())?;
    start_spec(spec).await
}

async fn start_spec(spec: KernelSpec) -> Result<Local, String> {
    let name = spec.name.clone();
    let process = KernelProcess::launch(spec, &LaunchOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let exited = process.exited();
    let ready = async {
        let mut client = KernelClient::connect(process.connection(), CONNECT_TIMEOUT, "local")
            .await
            .map_err(|e| e.to_string())?;
        let reply = client
            .wait_ready(STARTUP_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((client, reply))
    };
    let (client, reply) = tokio::select! {
        ready = ready => ready.map_err(|e| format!("local kernel {name:?} did not start: {e}"))?,
        exit = exited => {
            return Err(format!("local kernel {name:?} exited while starting ({exit})"));
        }
    };
    let info = reply
        .content_as::<serde_json::Value>()
        .unwrap_or(serde_json::Value::Null);
    Ok(Local {
        process,
        client,
        info,
    })
}

impl Local {
    /// Asks the kernel to shut down, then makes sure it has: whatever is left after `grace` is
    /// killed with its process group.
    pub async fn shutdown(self, grace: Duration) {
        let request = self
            .client
            .session
            .message("shutdown_request", &serde_json::json!({ "restart": false }));
        let _ = self.client.control.send(request).await;
        let exit = self.process.finish(grace).await;
        tracing::info!(pid = self.process.pid(), %exit, "local kernel stopped");
    }

    /// The kernel's display name for messages, e.g. `python3`.
    pub fn name(&self) -> &str {
        &self.process.spec().name
    }
}

/// Our reply to `kernel_info_request`: Parallax's identity with the local kernel's language.
pub fn kernel_info_content(local: Option<&serde_json::Value>) -> serde_json::Value {
    let version = env!("CARGO_PKG_VERSION");
    let fallback = serde_json::json!({
        "name": "python",
        "version": "3",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "nbconvert_exporter": "python",
    });
    let language_info = local
        .and_then(|info| info.get("language_info"))
        .cloned()
        .unwrap_or(fallback);
    let local_banner = local
        .and_then(|info| info.get("banner"))
        .and_then(|b| b.as_str())
        .unwrap_or("");
    let help_links = local
        .and_then(|info| info.get("help_links"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!([]));
    serde_json::json!({
        "status": "ok",
        // What the front end may rely on is what the local kernel speaks: we relay it.
        "protocol_version": local
            .and_then(|info| info.get("protocol_version"))
            .cloned()
            .unwrap_or_else(|| serde_json::json!(parallax_wire::PROTOCOL_VERSION)),
        "implementation": "parallax",
        "implementation_version": version,
        "language_info": language_info,
        "banner": format!("Parallax {version}: interactive parallel computing for Jupyter\n{local_banner}"),
        "help_links": help_links,
        "debugger": false,
    })
}

/// Whether a message is one the local kernel answered to a request of ours with `msg_id`.
pub fn is_child_of(message: &Message, msg_id: &str) -> bool {
    message.parent_msg_id() == Some(msg_id)
}
