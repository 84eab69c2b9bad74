//! ZeroMQ sockets for Jupyter links.
//!
//! This crate is the seam between Parallax and its ZeroMQ implementation (zmq.rs, the `zeromq`
//! crate). Each socket is owned by one task; the rest of the program sees only channels of decoded
//! [`Message`]s:
//!
//! - an [`Outbox`] (a bounded sender) whose messages the socket task signs and sends, and
//! - an [`Inbox`] (a bounded receiver) of messages that arrived, decoded and verified.
//!
//! Frames that do not decode (bad signature, malformed JSON, missing delimiter...) are dropped by
//! the socket task, logged, and counted in the link's [`LinkStats`]; they never reach the program.
//! A socket task ends when the program drops its side of the channels, which closes the socket.
//!
//! # Layout
//!
//! - [`bind_router`], [`bind_pub`], [`bind_heartbeat`]: the server side of a kernel
//!   (shell/control/stdin, iopub, heartbeat).
//! - [`connect_dealer`], [`connect_sub`], [`Heartbeat`]: the client side, used to drive a kernel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parallax_wire::{DecodeError, Message, Session};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

mod heartbeat;

pub use heartbeat::{bind_heartbeat, Heartbeat};

/// Messages to send on a link.
pub type Outbox = mpsc::Sender<Message>;
/// Messages received on a link, decoded and verified.
pub type Inbox = mpsc::Receiver<Message>;

/// How many messages may wait in a link's channel before the sender waits.
const CHANNEL_CAPACITY: usize = 1024;

/// Errors setting up a link. Errors on an established link are logged by its task.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        endpoint: String,
        source: zeromq::ZmqError,
    },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: zeromq::ZmqError,
    },
    #[error("cannot subscribe on {endpoint}: {source}")]
    Subscribe {
        endpoint: String,
        source: zeromq::ZmqError,
    },
    #[error("invalid socket identity ({len} bytes; at most 255)")]
    Identity { len: usize },
}

/// Counters of one link, shared between its socket task and whoever reports on it.
#[derive(Debug)]
pub struct LinkStats {
    name: String,
    rejected: AtomicU64,
}

impl LinkStats {
    /// Counters for the link called `name` (used in logs).
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(LinkStats {
            name: name.into(),
            rejected: AtomicU64::new(0),
        })
    }

    /// How many received messages were dropped because they did not decode.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn reject(&self, error: &DecodeError) {
        let count = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(link = %self.name, rejected = count, %error, "dropped a message");
    }
}

fn frames_of(message: ZmqMessage) -> Vec<Bytes> {
    message.into_vec()
}

fn zmq_message(frames: Vec<Bytes>) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// Decodes received frames, counting and logging the ones that do not decode.
fn decode(session: &Session, stats: &LinkStats, frames: Vec<Bytes>) -> Option<Message> {
    match session.decode(frames) {
        Ok(message) => Some(message),
        Err(error) => {
            stats.reject(&error);
            None
        }
    }
}

/// The endpoint a bind resolved to (port chosen by the OS when the endpoint asked for port 0).
fn resolved(endpoint: zeromq::Endpoint) -> String {
    endpoint.to_string()
}

/// Binds a ROUTER (shell, control, stdin on a kernel; the controller's client and engine links).
/// Messages in the inbox carry the sender's routing identity in `identities`; messages sent
/// through the outbox are routed by theirs.
pub async fn bind_router(
    endpoint: &str,
    session: Session,
    stats: Arc<LinkStats>,
) -> Result<(String, Outbox, Inbox), NetError> {
    let mut socket = zeromq::RouterSocket::new();
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|source| NetError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let (send_half, recv_half) = socket.split();
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);

    tokio::spawn(pump_in(recv_half, session.clone(), stats, in_tx));
    tokio::spawn(pump_out(send_half, session, out_rx));
    Ok((resolved(bound), out_tx, in_rx))
}

/// Binds the iopub publisher. Each message's `identities` is its topic. Every new subscription is
/// answered with an `iopub_welcome` message, so a client knows when it is subscribed instead of
/// guessing; messages are never dropped for a slow subscriber (the sender waits).
pub async fn bind_pub(endpoint: &str, session: Session) -> Result<(String, Outbox), NetError> {
    let mut socket = zeromq::XPubSocket::new();
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|source| NetError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        // The XPUB records a subscription only while `recv` runs, so this one task both sends and
        // receives (zmq.rs's XPUB cannot be split).
        loop {
            tokio::select! {
                outgoing = out_rx.recv() => {
                    let Some(message) = outgoing else { break };
                    if let Some(frames) = zmq_message(session.encode(&message)) {
                        if let Err(error) = socket.send(frames).await {
                            tracing::debug!(%error, "publish failed");
                        }
                    }
                }
                incoming = socket.recv() => {
                    let Ok(frames) = incoming else { continue };
                    let subscribe = frames.get(0).filter(|f| f.first() == Some(&1)).cloned();
                    if let Some(frame) = subscribe {
                        let topic = String::from_utf8_lossy(&frame[1..]).into_owned();
                        let mut welcome = session.message(
                            "iopub_welcome",
                            &serde_json_object("subscription", &topic),
                        );
                        welcome.identities = vec![frame.slice(1..)];
                        if let Some(frames) = zmq_message(session.encode(&welcome)) {
                            let _ = socket.send(frames).await;
                        }
                    }
                }
            }
        }
    });
    Ok((resolved(bound), out_tx))
}

fn serde_json_object(key: &str, value: &str) -> std::collections::BTreeMap<String, String> {
    std::iter::once((key.to_owned(), value.to_owned())).collect()
}

/// Connects `socket` to `endpoint`, retrying until `timeout`: a kernel that is still starting
/// refuses or resets connections for a moment.
async fn connect_with_retry<S: Socket>(
    socket: &mut S,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), NetError> {
    let deadline = Instant::now() + timeout;
    loop {
        match socket.connect(endpoint).await {
            Ok(()) => return Ok(()),
            Err(source) if Instant::now() >= deadline => {
                return Err(NetError::Connect {
                    endpoint: endpoint.to_owned(),
                    source,
                })
            }
            Err(error) => {
                tracing::trace!(%endpoint, %error, "connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn options_with(identity: Option<Bytes>, timeout: Duration) -> Result<SocketOptions, NetError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    if let Some(identity) = identity {
        let len = identity.len();
        let peer = zeromq::util::PeerIdentity::try_from(identity)
            .map_err(|_| NetError::Identity { len })?;
        options.peer_identity(peer);
    }
    Ok(options)
}

/// Connects a DEALER (a client's shell, control and stdin). `identity` is the routing identity
/// the peer sees; a kernel routes stdin requests to the identity of the shell request's sender, so
/// a client's shell and stdin sockets share one.
pub async fn connect_dealer(
    endpoint: &str,
    session: Session,
    identity: Option<Bytes>,
    timeout: Duration,
    stats: Arc<LinkStats>,
) -> Result<(Outbox, Inbox), NetError> {
    let mut socket = zeromq::DealerSocket::with_options(options_with(identity, timeout)?);
    connect_with_retry(&mut socket, endpoint, timeout).await?;
    let (send_half, recv_half) = socket.split();
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    tokio::spawn(pump_in(recv_half, session.clone(), stats, in_tx));
    tokio::spawn(pump_out(send_half, session, out_rx));
    Ok((out_tx, in_rx))
}

/// Connects a SUB to a publisher and subscribes to every topic.
pub async fn connect_sub(
    endpoint: &str,
    session: Session,
    timeout: Duration,
    stats: Arc<LinkStats>,
) -> Result<Inbox, NetError> {
    let mut socket = zeromq::SubSocket::with_options(options_with(None, timeout)?);
    connect_with_retry(&mut socket, endpoint, timeout).await?;
    socket
        .subscribe("")
        .await
        .map_err(|source| NetError::Subscribe {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(pump_in(socket, session, stats, in_tx));
    Ok(in_rx)
}

/// Receives, decodes and forwards messages until the inbox is dropped.
async fn pump_in<R: SocketRecv>(
    mut socket: R,
    session: Session,
    stats: Arc<LinkStats>,
    inbox: mpsc::Sender<Message>,
) {
    loop {
        tokio::select! {
            _ = inbox.closed() => break,
            received = socket.recv() => match received {
                Ok(frames) => {
                    if let Some(message) = decode(&session, &stats, frames_of(frames)) {
                        if inbox.send(message).await.is_err() {
                            break;
                        }
                    }
                }
                // A peer went away; the socket carries on with the others.
                Err(error) => {
                    tracing::debug!(link = %stats.name(), %error, "receive failed");
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Signs and sends messages until every outbox sender is dropped.
async fn pump_out<S: SocketSend>(
    mut socket: S,
    session: Session,
    mut outbox: mpsc::Receiver<Message>,
) {
    while let Some(message) = outbox.recv().await {
        let Some(frames) = zmq_message(session.encode(&message)) else {
            continue;
        };
        if let Err(error) = socket.send(frames).await {
            // Routing to a peer that has gone is not fatal (libzmq drops such messages silently).
            tracing::debug!(%error, msg_type = message.msg_type(), "send failed");
        }
    }
}
