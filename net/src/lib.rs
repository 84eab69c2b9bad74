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
//!
//! Every receiving task unpacks packs ([`parallax_wire::pack`]): the messages in one arrive in the
//! inbox one by one, in order. A ROUTER bound with [`Packing::To`] also sends them, to the peers
//! in its [`PackPeers`] (those that said they unpack): the messages that wait in its outbox when
//! the socket task gets to run go to each such peer as one pack (small ones only), so a burst
//! costs one ZeroMQ message per peer while a lone message goes as it is. Any other peer (a
//! `jupyter_client` session, say) gets plain Jupyter messages.
//! A socket task ends when the program drops its side of the channels, which closes the socket.
//!
//! # Layout
//!
//! - [`bind_router`], [`bind_pub`], [`bind_heartbeat`]: the server side of a kernel
//!   (shell/control/stdin, iopub, heartbeat).
//! - [`connect_dealer`], [`connect_sub`], [`Heartbeat`]: the client side, used to drive a kernel.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use parallax_wire::pack::{self, PACK_BYTES_LIMIT, PACK_COUNT_LIMIT, PACK_MESSAGE_LIMIT};
use parallax_wire::{Message, Session};
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

    fn reject(&self, error: &dyn std::fmt::Display) {
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

/// Decodes received frames (one message, or each message of a pack), counting and logging the
/// ones that do not decode.
fn decode(session: &Session, stats: &LinkStats, frames: Vec<Bytes>) -> Vec<Message> {
    if !pack::is_pack(&frames) {
        return match session.decode(frames) {
            Ok(message) => vec![message],
            Err(error) => {
                stats.reject(&error);
                Vec::new()
            }
        };
    }
    match pack::unpack(session.signer(), frames) {
        Ok(messages) => messages
            .into_iter()
            .filter_map(|message| {
                message
                    .map_err(|error| stats.reject(&format!("in a pack: {error}")))
                    .ok()
            })
            .collect(),
        Err(error) => {
            stats.reject(&error);
            Vec::new()
        }
    }
}

/// Whether a link's socket task packs what it sends.
#[derive(Clone, Debug)]
pub enum Packing {
    /// Never: the peers may be any Jupyter software (a kernel, a notebook front end).
    Never,
    /// To the peers in this set, which said they unpack.
    To(PackPeers),
}

/// The routes (identities) of a link's peers that take packs; shared by the program, which
/// learns them, and the link's socket task.
#[derive(Clone, Debug, Default)]
pub struct PackPeers(Arc<Mutex<HashSet<Vec<Bytes>>>>);

impl PackPeers {
    /// The peer at `route` takes packs from now on.
    pub fn allow(&self, route: &[Bytes]) {
        if let Ok(mut peers) = self.0.lock() {
            peers.insert(route.to_vec());
        }
    }

    /// The peer at `route` is gone (or no longer takes packs).
    pub fn forget(&self, route: &[Bytes]) {
        if let Ok(mut peers) = self.0.lock() {
            peers.remove(route);
        }
    }

    /// Whether the peer at `route` takes packs.
    pub fn accepts(&self, route: &[Bytes]) -> bool {
        self.0.lock().is_ok_and(|peers| peers.contains(route))
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
    packing: Packing,
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
    tokio::spawn(pump_out(send_half, session, out_rx, packing));
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
    tokio::spawn(pump_out(send_half, session, out_rx, Packing::Never));
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
                    for message in decode(&session, &stats, frames_of(frames)) {
                        if inbox.send(message).await.is_err() {
                            return;
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
    packing: Packing,
) {
    let mut waiting = Vec::new();
    while let Some(message) = outbox.recv().await {
        waiting.push(message);
        let peers = match &packing {
            Packing::Never => None,
            Packing::To(peers) => {
                while waiting.len() < PACK_COUNT_LIMIT {
                    match outbox.try_recv() {
                        Ok(message) => waiting.push(message),
                        Err(_) => break,
                    }
                }
                Some(peers)
            }
        };
        for (msg_type, frames) in outgoing(&session, waiting.drain(..), peers) {
            let Some(frames) = zmq_message(frames) else {
                continue;
            };
            if let Err(error) = socket.send(frames).await {
                // Routing to a peer that has gone is not fatal (libzmq drops such messages
                // silently).
                tracing::debug!(%error, msg_type, "send failed");
            }
        }
    }
}

type Outgoing = Vec<(&'static str, Vec<Bytes>)>;

/// The ZeroMQ messages for `messages`: each alone, except that the small ones to a peer in
/// `peers` go as packs (up to the pack limits). Each peer gets its messages in the order they
/// came; messages to different peers are not ordered (ZeroMQ delivers to each peer on its own),
/// so tasks handed out to several engines in turn still reach each engine as one pack. Each
/// comes with a message type for logs.
fn outgoing(
    session: &Session,
    messages: impl Iterator<Item = Message>,
    peers: Option<&PackPeers>,
) -> Outgoing {
    /// Small messages waiting to go to one peer as a pack, and their size.
    struct Run {
        messages: Vec<Message>,
        bytes: usize,
    }
    fn flush(session: &Session, run: &mut Run, out: &mut Outgoing) {
        match run.messages.len() {
            0 => {}
            1 => out.extend(
                run.messages
                    .pop()
                    .map(|message| ("message", session.encode(&message))),
            ),
            _ => out.push((
                "pack",
                pack::pack(session.signer(), &run.messages[0].identities, &run.messages),
            )),
        }
        run.messages.clear();
        run.bytes = 0;
    }
    let mut out = Vec::new();
    // One run per peer, in the order the peers first came (a handful of peers at a time).
    let mut runs: Vec<(Vec<Bytes>, Run)> = Vec::new();
    for message in messages {
        let size = pack::size(&message);
        let takes_packs = peers.is_some_and(|peers| peers.accepts(&message.identities));
        let at = runs
            .iter()
            .position(|(identities, _)| *identities == message.identities);
        if !takes_packs || size > PACK_MESSAGE_LIMIT {
            if let Some(at) = at {
                flush(session, &mut runs[at].1, &mut out);
            }
            out.push(("message", session.encode(&message)));
            continue;
        }
        let at = at.unwrap_or_else(|| {
            let run = Run {
                messages: Vec::new(),
                bytes: 0,
            };
            runs.push((message.identities.clone(), run));
            runs.len() - 1
        });
        let run = &mut runs[at].1;
        if run.messages.len() == PACK_COUNT_LIMIT || run.bytes >= PACK_BYTES_LIMIT {
            flush(session, run, &mut out);
        }
        run.bytes += size;
        run.messages.push(message);
    }
    for (_, run) in &mut runs {
        flush(session, run, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn numbered(session: &Session, i: usize, size: usize) -> Message {
        session
            .message("apply_request", &json!({ "i": i }))
            .with_buffers(vec![Bytes::from(vec![0u8; size])])
    }

    fn number(message: &Message) -> u64 {
        let content: serde_json::Value = message.content_as().unwrap_or_default();
        content["i"].as_u64().unwrap_or(u64::MAX)
    }

    #[test]
    fn small_messages_to_each_peer_are_packed_in_order() {
        let session = Session::new(b"key", "test");
        let to = |peer: &'static [u8], i: usize, size: usize| {
            let mut message = numbered(&session, i, size);
            message.identities = vec![Bytes::from_static(peer)];
            message
        };
        // Handed out in turn, as tasks to two engines are.
        let burst = vec![
            to(b"a", 0, 10),
            to(b"b", 1, 10),
            to(b"a", 2, 10),
            to(b"b", 3, 10),
            to(b"b", 4, 100_000),
            to(b"a", 5, 10),
            to(b"b", 6, 10),
        ];
        let peers = PackPeers::default();
        let plain = outgoing(&session, burst.clone().into_iter(), Some(&peers));
        assert!(
            plain.iter().all(|(kind, _)| *kind == "message"),
            "nothing is packed for a peer that did not ask"
        );
        assert_eq!(plain.len(), burst.len());
        peers.allow(&[Bytes::from_static(b"a")]);
        peers.allow(&[Bytes::from_static(b"b")]);
        let sent = outgoing(&session, burst.into_iter(), Some(&peers));
        let kinds: Vec<&str> = sent.iter().map(|(kind, _)| *kind).collect();
        // b's small ones go before its large one, as one pack; a's three as one pack; b's last.
        assert_eq!(kinds, ["pack", "message", "pack", "message"]);
        let mut by_peer: HashMap<Vec<Bytes>, Vec<u64>> = HashMap::new();
        let mut received = Vec::new();
        for (_, frames) in sent {
            for message in decode(&session, &LinkStats::new("test"), frames) {
                by_peer
                    .entry(message.identities.clone())
                    .or_default()
                    .push(number(&message));
                received.push(message);
            }
        }
        assert_eq!(by_peer[&vec![Bytes::from_static(b"a")]], [0, 2, 5]);
        assert_eq!(
            by_peer[&vec![Bytes::from_static(b"b")]],
            [1, 3, 4, 6],
            "each peer gets its messages once, in order"
        );
        assert!(received.iter().any(|m| m.buffers[0].len() == 100_000));

        // A long burst is cut into packs of a bounded size.
        let many = (0..100).map(|i| to(b"a", i, 40_000));
        let sent = outgoing(&session, many, Some(&peers));
        assert!(sent.len() > 1, "100 × 40 kB is more than one pack");
        let biggest = sent
            .iter()
            .map(|(_, frames)| frames.iter().map(Bytes::len).sum::<usize>())
            .max();
        assert!(biggest.unwrap_or(0) < PACK_BYTES_LIMIT + PACK_MESSAGE_LIMIT + 1024);
        let mut numbers = Vec::new();
        for (_, frames) in sent {
            numbers.extend(
                decode(&session, &LinkStats::new("test"), frames)
                    .iter()
                    .map(number),
            );
        }
        assert_eq!(numbers, (0..100).collect::<Vec<u64>>());
    }

    #[test]
    fn a_bad_pack_is_dropped_and_counted() {
        let session = Session::new(b"key", "test");
        let other = Session::new(b"other key", "test");
        let burst: Vec<Message> = (0..3).map(|i| numbered(&session, i, 1)).collect();
        let stats = LinkStats::new("test");
        let received = decode(&session, &stats, pack::pack(other.signer(), &[], &burst));
        assert!(
            received.is_empty(),
            "a pack signed with another key is dropped"
        );
        assert_eq!(stats.rejected(), 1);
        let mut truncated = pack::pack(session.signer(), &[], &burst);
        truncated.pop();
        assert!(decode(&session, &stats, truncated).is_empty());
        assert_eq!(stats.rejected(), 2);
        let whole = decode(&session, &stats, pack::pack(session.signer(), &[], &burst));
        assert_eq!(whole.iter().map(number).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(stats.rejected(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_packing_router_delivers_a_burst_to_a_dealer_in_order() {
        let session = Session::new(b"key", "test");
        let peers = PackPeers::default();
        let (url, outbox, mut inbox) = bind_router(
            "tcp://127.0.0.1:0",
            session.clone(),
            LinkStats::new("router"),
            Packing::To(peers.clone()),
        )
        .await
        .expect("bind");
        let (dealer_out, mut dealer_in) = connect_dealer(
            &url,
            session.clone(),
            None,
            Duration::from_secs(5),
            LinkStats::new("dealer"),
        )
        .await
        .expect("connect");
        dealer_out
            .send(session.message("hello", &json!({})))
            .await
            .expect("send");
        let hello = inbox.recv().await.expect("hello");
        peers.allow(&hello.identities);
        for i in 0..300 {
            let reply = numbered(&session, i, 100).with_parent(&hello);
            outbox.send(reply).await.expect("queue");
        }
        for i in 0..300 {
            let message = tokio::time::timeout(Duration::from_secs(5), dealer_in.recv())
                .await
                .expect("in time")
                .expect("open");
            assert_eq!(number(&message), i);
        }
    }
}
