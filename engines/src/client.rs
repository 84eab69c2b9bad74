//! Driving a Jupyter kernel as a client: its four sockets as channels, and a readiness check.
//!
//! Sockets are connected with retries (a starting kernel refuses connections for a moment). The
//! shell and stdin sockets share one routing identity, because a kernel sends `input_request` to
//! the identity that sent the execute request. [`KernelClient::wait_ready`] returns only once the
//! kernel has answered `kernel_info_request` *and* iopub has delivered a message, so that no
//! output of the first request is lost to a subscription still in flight.

use std::time::Duration;

use bytes::Bytes;
use parallax_net::{connect_dealer, connect_sub, Inbox, Limits, LinkStats, NetError, Outbox};
use parallax_wire::{endpoint, Channel, ConnectionInfo, Message, Session};
use tokio::time::Instant;

/// Why a kernel did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the kernel did not answer kernel_info_request within {0:?}")]
    NotReady(Duration),
    #[error("the kernel's connection closed")]
    Closed,
}

/// The client side of a kernel's channels.
pub struct KernelClient {
    /// Signs what we send; the kernel's key.
    pub session: Session,
    pub shell: Outbox,
    pub shell_replies: Inbox,
    pub control: Outbox,
    pub control_replies: Inbox,
    pub stdin: Outbox,
    pub stdin_requests: Inbox,
    pub iopub: Inbox,
}

impl std::fmt::Debug for KernelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelClient")
            .field("session", &self.session.id())
            .finish()
    }
}

impl KernelClient {
    /// Connects to every channel of the kernel described by `info`.
    pub async fn connect(
        info: &ConnectionInfo,
        timeout: Duration,
        label: &str,
    ) -> Result<Self, ClientError> {
        let session = Session::new(info.key.as_bytes(), "parallax");
        let identity = Bytes::from(session.id().as_bytes().to_vec());
        let stats = |channel: &str| LinkStats::new(format!("{label}/{channel}"));
        // Subscribe first: the earlier the subscription, the less there is to wait for.
        let iopub = connect_sub(
            &endpoint(info, Channel::IoPub),
            session.clone(),
            timeout,
            stats("iopub"),
            Limits::DATA,
        )
        .await?;
        let (shell, shell_replies) = connect_dealer(
            &endpoint(info, Channel::Shell),
            session.clone(),
            Some(identity.clone()),
            timeout,
            stats("shell"),
            Limits::DATA,
            &parallax_net::Security::Null,
        )
        .await?;
        let (stdin, stdin_requests) = connect_dealer(
            &endpoint(info, Channel::Stdin),
            session.clone(),
            Some(identity),
            timeout,
            stats("stdin"),
            Limits::DATA,
            &parallax_net::Security::Null,
        )
        .await?;
        let (control, control_replies) = connect_dealer(
            &endpoint(info, Channel::Control),
            session.clone(),
            None,
            timeout,
            stats("control"),
            Limits::DATA,
            &parallax_net::Security::Null,
        )
        .await?;
        Ok(KernelClient {
            session,
            shell,
            shell_replies,
            control,
            control_replies,
            stdin,
            stdin_requests,
            iopub,
        })
    }

    /// Asks for `kernel_info` until the kernel answers on shell and iopub has shown a message,
    /// and returns the reply. Iopub messages seen meanwhile are consumed.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut reply: Option<Message> = None;
        let mut iopub_seen = false;
        let mut resend = Instant::now();
        loop {
            if let (Some(reply), true) = (&reply, iopub_seen) {
                return Ok(reply.clone());
            }
            if Instant::now() >= deadline {
                return Err(ClientError::NotReady(timeout));
            }
            // Not ready yet (the check above returned otherwise): ask again now and then.
            if Instant::now() >= resend {
                let request = self.session.message("kernel_info_request", &empty());
                self.shell
                    .send(request)
                    .await
                    .map_err(|_| ClientError::Closed)?;
                resend = Instant::now() + Duration::from_millis(250);
            }
            tokio::select! {
                received = self.shell_replies.recv() => {
                    let message = received.ok_or(ClientError::Closed)?;
                    if message.msg_type() == "kernel_info_reply" {
                        reply = Some(message);
                    }
                }
                received = self.iopub.recv() => {
                    received.ok_or(ClientError::Closed)?;
                    iopub_seen = true;
                }
                _ = tokio::time::sleep_until(resend.min(deadline)) => {}
            }
        }
    }
}

fn empty() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}
