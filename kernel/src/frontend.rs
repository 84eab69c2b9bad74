//! The notebook-facing side of the kernel: the five channels bound from the connection file the
//! front end (JupyterLab, nbclient, jupyter_client) wrote for us.

use std::sync::Arc;

use parallax_net::{
    bind_heartbeat, bind_pub, bind_router, Inbox, Limits, LinkStats, NetError, Outbox, Packing,
};
use parallax_wire::{endpoint, Bytes, Channel, ConnectionInfo, Message, Session};
use serde::Serialize;

/// The channels to the front end, and what it takes to write on them.
pub struct Frontend {
    /// Signs everything we send to the front end.
    pub session: Session,
    pub shell: Outbox,
    pub shell_requests: Inbox,
    pub control: Outbox,
    pub control_requests: Inbox,
    pub stdin: Outbox,
    pub stdin_replies: Inbox,
    pub iopub: Outbox,
    /// Rejected-message counters, one per channel.
    pub stats: Vec<Arc<LinkStats>>,
    /// Prefix of iopub topics: `kernel.<session id>.`.
    topic_prefix: String,
}

impl Frontend {
    /// Binds shell, control, stdin, iopub and heartbeat where `info` says.
    pub async fn bind(info: &ConnectionInfo) -> Result<Self, NetError> {
        let session = Session::new(info.key.as_bytes(), "parallax");
        let shell_stats = LinkStats::new("frontend/shell");
        let control_stats = LinkStats::new("frontend/control");
        let stdin_stats = LinkStats::new("frontend/stdin");
        let (_, shell, shell_requests) = bind_router(
            &endpoint(info, Channel::Shell),
            session.clone(),
            shell_stats.clone(),
            Packing::Never,
            Limits::FRONTEND,
            &parallax_net::Security::Null,
        )
        .await?;
        let (_, control, control_requests) = bind_router(
            &endpoint(info, Channel::Control),
            session.clone(),
            control_stats.clone(),
            Packing::Never,
            Limits::FRONTEND,
            &parallax_net::Security::Null,
        )
        .await?;
        let (_, stdin, stdin_replies) = bind_router(
            &endpoint(info, Channel::Stdin),
            session.clone(),
            stdin_stats.clone(),
            Packing::Never,
            Limits::FRONTEND,
            &parallax_net::Security::Null,
        )
        .await?;
        let (_, iopub) = bind_pub(&endpoint(info, Channel::IoPub), session.clone()).await?;
        bind_heartbeat(&endpoint(info, Channel::Heartbeat)).await?;
        let topic_prefix = format!("kernel.{}.", session.id());
        Ok(Frontend {
            session,
            shell,
            shell_requests,
            control,
            control_requests,
            stdin,
            stdin_replies,
            iopub,
            stats: vec![shell_stats, control_stats, stdin_stats],
            topic_prefix,
        })
    }

    /// The iopub topic for a message type.
    pub fn topic(&self, msg_type: &str) -> Bytes {
        Bytes::from(format!("{}{msg_type}", self.topic_prefix))
    }

    /// Publishes a message on iopub, setting its topic. Returns false when the channel is closed.
    pub async fn publish(&self, mut message: Message) -> bool {
        message.identities = vec![self.topic(message.msg_type())];
        message.set_session(self.session.id());
        self.iopub.send(message).await.is_ok()
    }

    /// Sends a message of the local kernel's on to the front end, on `channel` (shell or stdin),
    /// as our own. The front end sees one kernel session: JupyterLab drops a message whose
    /// header names another session than the last message it received (so a comm_open of the
    /// local kernel's that arrived just after a status of ours was lost, and with it the widget).
    pub async fn relay(&self, channel: &Outbox, mut message: Message) {
        message.set_session(self.session.id());
        let _ = channel.send(message).await;
    }

    /// Publishes new content of ours on iopub as an output of `parent`.
    pub async fn publish_new<T: Serialize + ?Sized>(
        &self,
        parent: &Message,
        msg_type: &str,
        content: &T,
    ) -> bool {
        let mut message = self.session.message(msg_type, content);
        message.set_parent(parent);
        self.publish(message).await
    }

    /// Publishes `execution_state` (busy, idle, starting) for `parent`.
    pub async fn status(&self, parent: Option<&Message>, state: &str) {
        let content = serde_json::json!({ "execution_state": state });
        let mut message = self.session.message("status", &content);
        if let Some(parent) = parent {
            message.set_parent(parent);
        }
        self.publish(message).await;
    }

    /// Total messages rejected on the front end's channels.
    pub fn rejected(&self) -> u64 {
        self.stats.iter().map(|s| s.rejected()).sum()
    }
}
