//! The engine support inside a Python kernel: the short path for `apply_request`s.
//!
//! A stock ipykernel costs milliseconds per shell message, so `apply` does not go through the
//! kernel's shell. Once a Python kernel is ready, and before the engine registers, the engine
//! runs one silent cell in it that starts `parallax.engine` (from the `parallax` Python package):
//! a thread in the kernel process with its own DEALER to the controller's engine socket, which
//! attaches under the engine's uuid and hands each `apply_request` to the kernel's event loop, so
//! the function runs on the kernel's main thread like a cell (and SIGINT interrupts it).
//!
//! The cell returns once the controller has acknowledged the attachment, so when the engine
//! registers, the controller already knows the route to its kernel. A kernel without the
//! package (or not Python at all) still serves `execute_request`s; the controller answers
//! `apply_request`s for it with an error saying why.

use std::time::Duration;

use parallax_wire::profile::ControllerFile;
use parallax_wire::Message;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::client::KernelClient;

/// How long the support may take to start and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the support connects to, and as whom.
#[derive(Clone, Debug)]
pub(crate) struct Attach {
    /// The controller's engine socket.
    pub url: String,
    /// The cluster key.
    pub key: String,
    /// The engine's uuid: the controller ties the support's link to the engine with it.
    pub uuid: String,
    /// The engine side's CurveZMQ keys, when the controller's links are encrypted.
    pub curve: Option<AttachCurve>,
}

/// CurveZMQ keys (Z85) for the support's link, as pyzmq takes them.
#[derive(Clone, Debug)]
pub(crate) struct AttachCurve {
    pub serverkey: String,
    pub publickey: String,
    pub secretkey: String,
}

impl AttachCurve {
    /// The keys of an engine file, if it has all three.
    pub fn from_file(file: &ControllerFile) -> Option<Self> {
        Some(AttachCurve {
            serverkey: file.curve_serverkey.clone()?,
            publickey: file.curve_publickey.clone()?,
            secretkey: file.curve_secretkey.clone()?,
        })
    }
}

/// Whether a `kernel_info_reply` describes a Python kernel.
pub(crate) fn is_python(kernel_info: &Message) -> bool {
    kernel_info
        .content_as::<Value>()
        .ok()
        .and_then(|content| {
            content
                .pointer("/language_info/name")
                .and_then(Value::as_str)
                .map(|name| name.eq_ignore_ascii_case("python"))
        })
        .unwrap_or(false)
}

/// The cell that starts the support.
fn cell(attach: &Attach) -> String {
    // JSON string literals are valid Python string literals.
    let quote = |text: &str| Value::from(text).to_string();
    let curve = attach.curve.as_ref().map_or_else(
        || "None".to_owned(),
        |keys| {
            format!(
                "{{'serverkey': {}, 'publickey': {}, 'secretkey': {}}}",
                quote(&keys.serverkey),
                quote(&keys.publickey),
                quote(&keys.secretkey),
            )
        },
    );
    format!(
        "import parallax.engine as _parallax_engine\n\
         _parallax_engine.start(url={}, key={}, uuid={}, curve={curve})\n\
         del _parallax_engine",
        quote(&attach.url),
        quote(&attach.key),
        quote(&attach.uuid),
    )
}

/// Starts the support in the kernel and waits for it to attach. An error says why it could not
/// (the package is missing, the controller did not answer); the kernel is usable either way.
pub(crate) async fn install(client: &mut KernelClient, attach: &Attach) -> Result<(), String> {
    let request = client.session.message(
        "execute_request",
        &json!({
            "code": cell(attach),
            "silent": true,
            "store_history": false,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": false,
        }),
    );
    let msg_id = request.msg_id().to_owned();
    client
        .shell
        .send(request)
        .await
        .map_err(|_| "the kernel's shell closed".to_owned())?;
    // Wait for the reply and for the kernel's idle, so that nothing of this cell is left on
    // iopub for the engine to relay.
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut outcome: Option<Result<(), String>> = None;
    let mut idle = false;
    while outcome.is_none() || !idle {
        tokio::select! {
            reply = client.shell_replies.recv() => {
                let reply = reply.ok_or_else(|| "the kernel's shell closed".to_owned())?;
                if reply.parent_msg_id() == Some(msg_id.as_str()) {
                    outcome = Some(status_of(&reply));
                }
            }
            message = client.iopub.recv() => {
                let message = message.ok_or_else(|| "the kernel's iopub closed".to_owned())?;
                idle |= message.parent_msg_id() == Some(msg_id.as_str())
                    && message.msg_type() == "status"
                    && message
                        .content_as::<Value>()
                        .is_ok_and(|c| c.get("execution_state") == Some(&json!("idle")));
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(format!("no answer within {ATTACH_TIMEOUT:?}"));
            }
        }
    }
    outcome.unwrap_or_else(|| Err("no reply".to_owned()))
}

/// `Ok` for an `execute_reply` with status `ok`, else the error it names.
fn status_of(reply: &Message) -> Result<(), String> {
    let content: Value = reply.content_as().unwrap_or_default();
    let field = |name: &str| {
        content
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match content.get("status").and_then(Value::as_str) {
        Some("ok") => Ok(()),
        _ => Err(format!("{}: {}", field("ename"), field("evalue"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cell_quotes_its_arguments() {
        let attach = Attach {
            url: "tcp://127.0.0.1:5555".into(),
            key: "k\"ey'\\".into(),
            uuid: "u".into(),
            curve: None,
        };
        let code = cell(&attach);
        assert!(code.contains(r#"key="k\"ey'\\""#), "{code}");
        assert!(code.contains(r#"url="tcp://127.0.0.1:5555""#));
        assert!(code.contains("curve=None"), "{code}");
        let keys = AttachCurve {
            serverkey: "s".into(),
            publickey: "p".into(),
            secretkey: "x".into(),
        };
        let code = cell(&Attach {
            curve: Some(keys),
            ..attach
        });
        assert!(
            code.contains(r#"curve={'serverkey': "s", 'publickey': "p", 'secretkey': "x"}"#),
            "{code}"
        );
    }
}
