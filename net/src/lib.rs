//! ZeroMQ sockets for Jupyter links.
//!
//! This crate is the seam between Parallax and its ZeroMQ implementation, libzmq (through the
//! `zmq` crate, linked to the system's libzmq). Each socket is owned by one task; the rest of the
//! program sees only channels of decoded [`Message`]s:
//!
//! - an [`Outbox`] (a bounded sender) whose messages the socket task signs and sends, and
//! - an [`Inbox`] (a bounded receiver) of messages that arrived, decoded and verified.
//!
//! Frames that do not decode (bad signature, malformed JSON, missing delimiter...) are dropped by
//! the socket task, logged, and counted in the link's [`LinkStats`]; they never reach the program.
//! Frames larger than the link's [`Limits`] never reach memory: libzmq refuses them when their
//! header arrives and disconnects the peer. A bound ROUTER also refuses a message whose signature
//! it accepted before ([`Replays`]), as jupyter_client does.
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
//!   (shell/control/stdin, iopub, heartbeat) and of the controller.
//! - [`connect_dealer`], [`connect_sub`], [`Heartbeat`]: the client side, used to drive a kernel
//!   and to reach the controller. libzmq connects and reconnects in the background.
//! - `socket`: the task that drives one libzmq socket, and the options every socket gets.
//! - [`Security`]: CurveZMQ for links between hosts (`curve`), with the ZAP handler that admits
//!   only known client keys; `replay`: refusing a message accepted before.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parallax_wire::pack::{self, PACK_BYTES_LIMIT, PACK_COUNT_LIMIT, PACK_MESSAGE_LIMIT};
use parallax_wire::{Message, Session};
use tokio::sync::mpsc;

mod curve;
mod handshake;
mod heartbeat;
mod replay;
mod socket;

pub use curve::{key_from_z85, z85, CurveKeys, Security};
pub use heartbeat::{bind_heartbeat, Heartbeat};
pub use replay::Replays;
pub use socket::Limits;

use socket::{Inbound, Replay};

/// Messages to send on a link.
pub type Outbox = mpsc::Sender<Message>;
/// Messages received on a link, decoded and verified.
pub type Inbox = mpsc::Receiver<Message>;

/// How often at most the same handshake refusal is logged for one link.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many messages may wait in a link's channel before the sender waits.
const CHANNEL_CAPACITY: usize = 1024;

/// Errors setting up a link. Errors on an established link are logged by its task.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot set up a socket: {0}")]
    Socket(#[from] zmq::Error),
    #[error("cannot watch a socket: {0}")]
    Watch(#[from] std::io::Error),
    #[error("invalid socket identity ({len} bytes; 1 to 255)")]
    Identity { len: usize },
    #[error("cannot start the CURVE key check: {reason}")]
    Zap { reason: String },
    #[error("the connection file's CURVE keys are not usable: {reason}")]
    CurveKeys { reason: String },
}

impl NetError {
    /// Whether binding failed because the address (the port) is taken.
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, NetError::Bind { source, .. } if *source == zmq::Error::EADDRINUSE)
    }
}

/// Counters of one link, shared between its socket task and whoever reports on it.
#[derive(Debug)]
pub struct LinkStats {
    name: String,
    rejected: AtomicU64,
    /// Why the peer last refused this link's handshake (a CURVE key it does not admit, say),
    /// until a handshake succeeds.
    refused: Mutex<Option<String>>,
    /// The last peer refusal logged, when, and how many like it went unlogged since.
    refusals_logged: Mutex<Option<(String, Instant, u64)>>,
    /// Whether a connecting link's handshakes are watched even when it is plain and local.
    watched: bool,
    /// A watched connecting link: whether it is connected now, and whether it ever was.
    connected: AtomicBool,
    ever_connected: AtomicBool,
}

impl LinkStats {
    /// Counters for the link called `name` (used in logs).
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        LinkStats::make(name.into(), false)
    }

    /// Counters for a connecting link whose connection is always watched, so that
    /// [`LinkStats::connection`] can say what happened when the peer stays silent.
    pub fn watched(name: impl Into<String>) -> Arc<Self> {
        LinkStats::make(name.into(), true)
    }

    fn make(name: String, watched: bool) -> Arc<Self> {
        Arc::new(LinkStats {
            name,
            rejected: AtomicU64::new(0),
            refused: Mutex::new(None),
            refusals_logged: Mutex::new(None),
            watched,
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
        })
    }

    /// What a watched connecting link's connection is like: refused (and why), connected,
    /// dropped, or never made.
    pub fn connection(&self) -> String {
        if let Some(why) = self.refused() {
            return why;
        }
        if self.connected.load(Ordering::Relaxed) {
            "connected".into()
        } else if self.ever_connected.load(Ordering::Relaxed) {
            "the connection dropped".into()
        } else {
            "no connection was made (nothing accepted one at that address)".into()
        }
    }

    /// Records that a watched link connected (handshake done) or disconnected.
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if connected {
            self.ever_connected.store(true, Ordering::Relaxed);
        }
    }

    /// Why the peer refused this link's last handshake, if it did and none has succeeded since:
    /// what to tell the user when the link stays silent.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|refused| refused.clone())
    }

    /// Records the outcome of a handshake (`None`: it succeeded); returns whether that changed
    /// what [`LinkStats::refused`] says.
    fn set_refused(&self, why: Option<String>) -> bool {
        match self.refused.lock() {
            Ok(mut refused) if *refused != why => {
                *refused = why;
                true
            }
            _ => false,
        }
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
        let count = self.count_rejection();
        tracing::warn!(link = %self.name, rejected = count, %error, "dropped a message");
    }

    /// Counts one refused message or peer; returns the new count.
    fn count_rejection(&self) -> u64 {
        self.rejected.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a peer refused during its handshake, and logs why, at most once per 10 s for the
    /// same reason: a peer that keeps retrying with a wrong key must not flood the log.
    fn refuse_peer(&self, why: String) {
        let count = self.count_rejection();
        let Ok(mut logged) = self.refusals_logged.lock() else {
            return;
        };
        if let Some((last, at, unlogged)) = logged.as_mut() {
            if *last == why && at.elapsed() < REFUSAL_LOG_INTERVAL {
                *unlogged += 1;
                return;
            }
        }
        let similar = logged.as_ref().map_or(0, |(_, _, unlogged)| *unlogged);
        tracing::warn!(
            link = %self.name,
            rejected = count,
            unlogged_since_last_report = similar,
            "{why}"
        );
        *logged = Some((why, Instant::now(), 0));
    }
}

/// Decodes received frames (one message, or each message of a pack), counting and logging the
/// ones that do not decode. With `replays`, a message or pack whose signature was accepted before
/// is refused too.
fn decode(
    session: &Session,
    stats: &LinkStats,
    replays: Option<&mut Replays>,
    frames: Vec<Bytes>,
) -> Vec<Message> {
    let signature = replays.as_ref().and_then(|_| replay::signature_of(&frames));
    let messages = if !pack::is_pack(&frames) {
        match session.decode(frames) {
            Ok(message) => vec![Ok(message)],
            Err(error) => {
                stats.reject(&error);
                return Vec::new();
            }
        }
    } else {
        match pack::unpack(session.signer(), frames) {
            Ok(messages) => messages,
            Err(error) => {
                stats.reject(&error);
                return Vec::new();
            }
        }
    };
    // The signature verified: refuse it if it was seen before, else remember it.
    if let (Some(replays), Some(signature)) = (replays, signature) {
        if !replays.first_time(&signature, std::time::Instant::now()) {
            stats.reject(&"a replayed message (its signature was accepted before)");
            return Vec::new();
        }
    }
    messages
        .into_iter()
        .filter_map(|message| {
            message
                .map_err(|error| stats.reject(&format!("in a pack: {error}")))
                .ok()
        })
        .collect()
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

/// Binds a ROUTER (shell, control, stdin on a kernel; the controller's client and engine links).
/// Messages in the inbox carry the sender's routing identity in `identities`; messages sent
/// through the outbox are routed by theirs. Returns the endpoint it bound (with the port the OS
/// chose, if the endpoint asked for port 0).
pub async fn bind_router(
    endpoint: &str,
    session: Session,
    stats: Arc<LinkStats>,
    packing: Packing,
    limits: Limits,
    security: &Security,
) -> Result<(String, Outbox, Inbox), NetError> {
    let socket = socket::new_socket(zmq::ROUTER, limits)?;
    curve::apply(&socket, security, &stats)?;
    // Never drop a message for a slow peer (the program bounds what it queues), and say so when
    // a message is for a peer that is gone instead of dropping it silently.
    socket.set_sndhwm(0)?;
    socket.set_router_mandatory(true)?;
    let bound = socket::bind(&socket, endpoint)?;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    socket::spawn(
        socket,
        session,
        stats,
        Inbound::Decode(in_tx, Replay::Refuse),
        Some(out_rx),
        packing,
    )?;
    Ok((bound, out_tx, in_rx))
}

/// Binds the iopub publisher. Each message's `identities` is its topic. Every new subscription is
/// answered with an `iopub_welcome` message, so a client knows when it is subscribed instead of
/// guessing; messages are never dropped for a slow subscriber.
pub async fn bind_pub(endpoint: &str, session: Session) -> Result<(String, Outbox), NetError> {
    let socket = socket::new_socket(zmq::XPUB, Limits::FRONTEND)?;
    socket.set_xpub_verbose(true)?;
    socket.set_sndhwm(0)?;
    let bound = socket::bind(&socket, endpoint)?;
    let (out_tx, out_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    socket::spawn(
        socket,
        session,
        LinkStats::new("iopub"),
        Inbound::Welcome,
        Some(out_rx),
        Packing::Never,
    )?;
    Ok((bound, out_tx))
}

/// Connects a DEALER (a client's shell, control and stdin; an engine's link to the controller).
/// `identity` is the routing identity the peer sees; a kernel routes stdin requests to the
/// identity of the shell request's sender, so a client's shell and stdin sockets share one.
///
/// libzmq connects in the background and reconnects after the peer restarts; what is sent
/// before the connection is made waits in the socket. `timeout` bounds how long a connection
/// attempt (TCP and handshake) may take before libzmq tries again.
pub async fn connect_dealer(
    endpoint: &str,
    session: Session,
    identity: Option<Bytes>,
    timeout: Duration,
    stats: Arc<LinkStats>,
    limits: Limits,
    security: &Security,
) -> Result<(Outbox, Inbox), NetError> {
    let socket = socket::new_socket(zmq::DEALER, limits)?;
    curve::apply(&socket, security, &stats)?;
    if let Some(identity) = identity {
        let len = identity.len();
        if !(1..=255).contains(&len) {
            return Err(NetError::Identity { len });
        }
        socket.set_identity(&identity)?;
    }
    if !security.is_curve() && (stats.watched || !is_loopback_endpoint(endpoint)) {
        // A plain link off this host (say so if the peer turns out to want encryption), or one
        // whose connection the program asks about.
        handshake::watch(
            &socket,
            handshake::Side::Connecting { curve: false },
            stats.clone(),
        )?;
    }
    socket::connect(&socket, endpoint, timeout)?;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel::<Message>(CHANNEL_CAPACITY);
    socket::spawn(
        socket,
        session,
        stats,
        Inbound::Decode(in_tx, Replay::Allow),
        Some(out_rx),
        Packing::Never,
    )?;
    Ok((out_tx, in_rx))
}

/// Whether a `tcp://host:port` endpoint names a loopback address (`127.0.0.0/8`, `::1`,
/// `localhost`), where nothing crosses a network; `ipc://` and `inproc://` count as local too.
pub fn is_loopback_endpoint(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://");
    };
    is_loopback_host(rest.rsplit_once(':').map_or(rest, |(host, _)| host))
}

/// Whether a host (an address, `[v6]`, or a name) is reachable only from this machine:
/// `127.0.0.0/8`, `::1` or `localhost`. `0.0.0.0` and `::` are every interface, not loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Connects a SUB to a publisher and subscribes to every topic.
pub async fn connect_sub(
    endpoint: &str,
    session: Session,
    timeout: Duration,
    stats: Arc<LinkStats>,
    limits: Limits,
) -> Result<Inbox, NetError> {
    let socket = socket::new_socket(zmq::SUB, limits)?;
    socket.set_subscribe(b"")?;
    socket::connect(&socket, endpoint, timeout)?;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    socket::spawn(
        socket,
        session,
        stats,
        Inbound::Decode(in_tx, Replay::Allow),
        None,
        Packing::Never,
    )?;
    Ok(in_rx)
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

    #[test]
    fn loopback_endpoints_are_told_apart_from_network_ones() {
        for local in [
            "tcp://127.0.0.1:5",
            "tcp://127.1.2.3:5",
            "tcp://[::1]:5",
            "tcp://localhost:5",
            "ipc:///tmp/k-1",
        ] {
            assert!(is_loopback_endpoint(local), "{local}");
        }
        for remote in [
            "tcp://10.0.0.1:5",
            "tcp://node1:5",
            "tcp://[::]:5",
            "garbage",
        ] {
            assert!(!is_loopback_endpoint(remote), "{remote}");
        }
        // What a controller's --ip may be: only loopback addresses stay unencrypted.
        for ip in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_host(ip), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.0.0.1", "node1"] {
            assert!(!is_loopback_host(ip), "{ip}");
        }
    }

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
            for message in decode(&session, &LinkStats::new("test"), None, frames) {
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
                decode(&session, &LinkStats::new("test"), None, frames)
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
        let received = decode(
            &session,
            &stats,
            None,
            pack::pack(other.signer(), &[], &burst),
        );
        assert!(
            received.is_empty(),
            "a pack signed with another key is dropped"
        );
        assert_eq!(stats.rejected(), 1);
        let mut truncated = pack::pack(session.signer(), &[], &burst);
        truncated.pop();
        assert!(decode(&session, &stats, None, truncated).is_empty());
        assert_eq!(stats.rejected(), 2);
        let whole = decode(
            &session,
            &stats,
            None,
            pack::pack(session.signer(), &[], &burst),
        );
        assert_eq!(whole.iter().map(number).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(stats.rejected(), 2);
    }

    /// A ROUTER on an OS-chosen port and a DEALER connected to it.
    async fn router_and_dealer(
        session: &Session,
        stats: Arc<LinkStats>,
        packing: Packing,
    ) -> (Outbox, Inbox, Outbox, Inbox) {
        let (url, outbox, inbox) = bind_router(
            "tcp://127.0.0.1:0",
            session.clone(),
            stats,
            packing,
            Limits::DATA,
            &Security::Null,
        )
        .await
        .expect("bind");
        let (dealer_out, dealer_in) = connect_dealer(
            &url,
            session.clone(),
            None,
            Duration::from_secs(5),
            LinkStats::new("dealer"),
            Limits::DATA,
            &Security::Null,
        )
        .await
        .expect("connect");
        (outbox, inbox, dealer_out, dealer_in)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_packing_router_delivers_a_burst_to_a_dealer_in_order() {
        let session = Session::new(b"key", "test");
        let peers = PackPeers::default();
        let (outbox, mut inbox, dealer_out, mut dealer_in) = router_and_dealer(
            &session,
            LinkStats::new("router"),
            Packing::To(peers.clone()),
        )
        .await;
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_router_refuses_a_message_it_accepted_before() {
        let session = Session::new(b"key", "test");
        let stats = LinkStats::new("router");
        let (_outbox, mut inbox, dealer_out, _dealer_in) =
            router_and_dealer(&session, stats.clone(), Packing::Never).await;
        let captured = session.message("execute_request", &json!({ "i": 1 }));
        let fresh = session.message("execute_request", &json!({ "i": 2 }));
        for message in [captured.clone(), captured, fresh] {
            dealer_out.send(message).await.expect("send");
        }
        let mut got = Vec::new();
        for _ in 0..2 {
            let message = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .expect("in time")
                .expect("open");
            got.push(number(&message));
        }
        assert_eq!(got, [1, 2], "the replayed copy never reaches the program");
        assert_eq!(stats.rejected(), 1);
    }
}
