//! One libzmq socket, driven by one tokio task.
//!
//! libzmq sockets are not thread-safe and their calls block, so each socket is owned by one task
//! that uses it only with `ZMQ_DONTWAIT` and sleeps on the socket's signalling descriptor
//! (`ZMQ_FD`) in between. That descriptor is edge-like: it becomes readable when *something*
//! changed, and reading `ZMQ_EVENTS` resets it. So the task always asks `ZMQ_EVENTS` after
//! clearing tokio's readiness, and does all the work it can before it waits again; nothing is
//! missed between the two.
//!
//! Every socket gets the same protection before it binds or connects ([`Limits`]): a frame larger
//! than the link's limit is refused by libzmq's decoder when its header arrives, before memory is
//! reserved for it, and the peer is disconnected; a handshake that does not finish in time is
//! dropped; TCP keepalive and ZMTP heartbeats notice a peer that vanished.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parallax_wire::{Message, Session};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::{decode, outgoing, LinkStats, NetError, Packing, Replays};

/// Frames below this size are copied out of libzmq's message; larger ones are kept in it.
const COPY_BELOW: usize = 4096;
/// Encoded messages that may wait for the socket before the outbox is read no further.
const PENDING_OUT: usize = 256;

/// The process's one libzmq context (its I/O thread serves every socket).
pub(crate) fn context() -> &'static zmq::Context {
    static CONTEXT: OnceLock<zmq::Context> = OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

/// What a link lets a peer do to this process before the program sees anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame accepted, in bytes. A peer announcing a larger one is disconnected.
    pub max_frame: u64,
}

impl Limits {
    /// For the channels a Jupyter front end talks to: code, comm messages and their buffers
    /// (a widget's file upload, say), never arrays of a computation.
    pub const FRONTEND: Limits = Limits {
        max_frame: 64 << 20,
    };
    /// The default for data links (client and engine links of the controller, an engine's link
    /// to its kernel): room for real arrays.
    pub const DATA: Limits = Limits { max_frame: 2 << 30 };

    /// Data-link limits with a given largest frame.
    pub fn data(max_frame: u64) -> Limits {
        Limits { max_frame }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DATA
    }
}

/// A new socket of `kind` with the options every link has.
pub(crate) fn new_socket(kind: zmq::SocketType, limits: Limits) -> Result<zmq::Socket, zmq::Error> {
    let socket = context().socket(kind)?;
    socket.set_maxmsgsize(i64::try_from(limits.max_frame).unwrap_or(i64::MAX))?;
    // A half-open connection (a greeting that never finishes) is dropped after 10 s.
    socket.set_handshake_ivl(10_000)?;
    // A peer that vanished without closing is noticed by ZMTP heartbeats (ZMTP 3.1 peers) and,
    // failing those, by TCP keepalive.
    socket.set_heartbeat_ivl(5_000)?;
    socket.set_heartbeat_timeout(15_000)?;
    socket.set_tcp_keepalive(1)?;
    socket.set_tcp_keepalive_idle(30)?;
    socket.set_tcp_keepalive_intvl(10)?;
    socket.set_tcp_keepalive_cnt(3)?;
    // What is still queued when a link closes gets a second to leave.
    socket.set_linger(1_000)?;
    Ok(socket)
}

/// Checks an endpoint before libzmq sees it (the crate panics on an interior NUL byte) and
/// spells an OS-chosen TCP port the way libzmq does (`:*`).
pub(crate) fn endpoint_for_libzmq(endpoint: &str) -> Option<String> {
    if endpoint.contains('\0') {
        return None;
    }
    match endpoint.strip_suffix(":0") {
        Some(head) if endpoint.starts_with("tcp://") => Some(format!("{head}:*")),
        _ => Some(endpoint.to_owned()),
    }
}

/// Binds `socket` to `endpoint`; returns the endpoint it resolved to.
pub(crate) fn bind(socket: &zmq::Socket, endpoint: &str) -> Result<String, NetError> {
    let error = |source| NetError::Bind {
        endpoint: endpoint.to_owned(),
        source,
    };
    let spelled = endpoint_for_libzmq(endpoint).ok_or(error(zmq::Error::EINVAL))?;
    socket.bind(&spelled).map_err(error)?;
    match socket.get_last_endpoint() {
        Ok(Ok(bound)) => Ok(bound),
        _ => Ok(endpoint.to_owned()),
    }
}

/// Connects `socket` to `endpoint`. libzmq connects (and reconnects) in the background: messages
/// sent meanwhile wait in the socket. `timeout` bounds one attempt (TCP and handshake) before
/// libzmq tries again.
pub(crate) fn connect(
    socket: &zmq::Socket,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), NetError> {
    let error = |source| NetError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    socket.set_connect_timeout(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))?;
    // Retries after a refused or failed attempt back off from 0.1 s to 2 s, so a peer that keeps
    // refusing us (a key it does not admit) is not knocked on ten times a second.
    socket.set_reconnect_ivl_max(2_000)?;
    let spelled = endpoint_for_libzmq(endpoint).ok_or(error(zmq::Error::EINVAL))?;
    socket.connect(&spelled).map_err(error)
}

/// The socket's signalling descriptor, owned by libzmq (closed with the socket, not by us).
struct Signal(RawFd);

impl AsRawFd for Signal {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A socket and the registration of its signalling descriptor with tokio.
pub(crate) struct Driven {
    // Declared first so that it is deregistered before the socket closes the descriptor.
    signal: AsyncFd<Signal>,
    socket: zmq::Socket,
}

impl Driven {
    /// Registers `socket` with the current tokio runtime.
    #[allow(unsafe_code)]
    pub(crate) fn new(socket: zmq::Socket) -> io::Result<Self> {
        let fd = socket.get_fd().map_err(io::Error::from)?;
        // SAFETY: `fd` is the socket's signalling descriptor, which libzmq keeps open, unchanged,
        // until the socket is closed. The socket is closed only when it is dropped, and it is
        // dropped after the `AsyncFd` (field order of `Driven`), which is never forgotten or
        // taken apart; `Signal::as_raw_fd` always returns this same `fd`.
        let signal =
            unsafe { AsyncFd::register_with_interest(Signal(fd), tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok(Driven { signal, socket })
    }

    pub(crate) fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    fn events(&self) -> io::Result<zmq::PollEvents> {
        self.socket.get_events().map_err(io::Error::from)
    }

    /// Waits until the socket has one of `wanted`.
    async fn ready(&mut self, wanted: zmq::PollEvents) -> io::Result<()> {
        loop {
            if self.events()?.intersects(wanted) {
                return Ok(());
            }
            let mut guard = self.signal.readable().await?;
            guard.clear_ready();
        }
    }

    /// Sends one multipart message, waiting while the socket cannot take it.
    pub(crate) async fn send(&mut self, frames: Vec<Bytes>) -> io::Result<()> {
        let mut frames = Some(frames);
        loop {
            self.ready(zmq::POLLOUT).await?;
            let Some(parts) = frames.take() else {
                return Ok(());
            };
            match try_send(&self.socket, parts) {
                Ok(()) => return Ok(()),
                Err((parts, zmq::Error::EAGAIN)) => frames = Some(parts),
                Err((_, error)) => return Err(error.into()),
            }
        }
    }

    /// Receives one multipart message, waiting until there is one.
    pub(crate) async fn recv(&mut self) -> io::Result<Vec<Bytes>> {
        loop {
            self.ready(zmq::POLLIN).await?;
            match try_recv(&self.socket) {
                Ok(frames) => return Ok(frames),
                Err(zmq::Error::EAGAIN) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

fn to_message(frame: Bytes) -> zmq::Message {
    // Our own frames usually own their bytes alone: then the vector is handed to libzmq as it is.
    zmq::Message::from(Vec::from(frame))
}

/// Sends a multipart message without waiting. On `EAGAIN` nothing was sent and the frames come
/// back; libzmq takes a multipart message whole or not at all.
fn try_send(socket: &zmq::Socket, frames: Vec<Bytes>) -> Result<(), (Vec<Bytes>, zmq::Error)> {
    let last = frames.len().saturating_sub(1);
    let mut parts = frames.into_iter().enumerate();
    let Some((_, first)) = parts.next() else {
        return Ok(());
    };
    let flags = |i: usize| zmq::DONTWAIT | if i < last { zmq::SNDMORE } else { 0 };
    // The first frame decides: if it cannot go, keep everything for later.
    let first_copy = first.clone();
    if let Err(error) = socket.send(to_message(first), flags(0)) {
        let mut back = vec![first_copy];
        back.extend(parts.map(|(_, frame)| frame));
        return Err((back, error));
    }
    drop(first_copy);
    for (i, frame) in parts {
        if let Err(error) = socket.send(to_message(frame), flags(i)) {
            // Only a closing socket fails here; the message is lost with it.
            return Err((Vec::new(), error));
        }
    }
    Ok(())
}

/// Receives one multipart message without waiting.
fn try_recv(socket: &zmq::Socket) -> Result<Vec<Bytes>, zmq::Error> {
    let mut frames = Vec::new();
    loop {
        let message = socket.recv_msg(zmq::DONTWAIT)?;
        let more = message.get_more();
        frames.push(if message.len() < COPY_BELOW {
            Bytes::copy_from_slice(&message)
        } else {
            Bytes::from_owner(Owned(message))
        });
        if !more {
            return Ok(frames);
        }
    }
}

/// A received libzmq message kept as the storage of a [`Bytes`] (no copy of large frames).
struct Owned(zmq::Message);

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What a link does with what arrives.
pub(crate) enum Inbound {
    /// Decodes Jupyter messages (and packs) into the inbox, refusing replays or not.
    Decode(mpsc::Sender<Message>, Replay),
    /// XPUB: answers each new subscription with an `iopub_welcome` message.
    Welcome,
    /// Nothing is expected to arrive (the socket only sends).
    Nothing,
}

/// Whether a link refuses a message whose signature it accepted before (servers do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    Refuse,
    Allow,
}

/// Registers `socket` with the runtime and starts the task that runs its link.
pub(crate) fn spawn(
    socket: zmq::Socket,
    session: Session,
    stats: Arc<LinkStats>,
    inbound: Inbound,
    outbox: Option<mpsc::Receiver<Message>>,
    packing: Packing,
) -> Result<(), NetError> {
    let driven = Driven::new(socket)?;
    tokio::spawn(pump(driven, session, stats, inbound, outbox, packing));
    Ok(())
}

/// Runs a link until the program has dropped both of its channels (and what it queued has been
/// handed to libzmq).
async fn pump(
    driven: Driven,
    session: Session,
    stats: Arc<LinkStats>,
    mut inbound: Inbound,
    mut outbox: Option<mpsc::Receiver<Message>>,
    packing: Packing,
) {
    let refuse = matches!(inbound, Inbound::Decode(_, Replay::Refuse));
    let mut replays = refuse.then(Replays::default);
    let mut pending_in: VecDeque<Message> = VecDeque::new();
    let mut pending_out: VecDeque<Vec<Bytes>> = VecDeque::new();
    let mut batch = Vec::new();
    loop {
        // Do everything that can be done without waiting.
        loop {
            let events = match driven.events() {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(link = %stats.name(), %error, "socket failed; closing the link");
                    return;
                }
            };
            let mut progress = false;
            if events.contains(zmq::POLLOUT) {
                if let Some(frames) = pending_out.pop_front() {
                    match try_send(driven.socket(), frames) {
                        Ok(()) => progress = true,
                        Err((frames, zmq::Error::EAGAIN)) => pending_out.push_front(frames),
                        // A peer that is gone (ROUTER_MANDATORY): libzmq's own ROUTER would drop
                        // the message silently; we say so in the log.
                        Err((_, error)) => {
                            tracing::debug!(link = %stats.name(), %error, "send failed");
                            progress = true;
                        }
                    }
                }
            }
            if events.contains(zmq::POLLIN) && pending_in.is_empty() {
                match try_recv(driven.socket()) {
                    Ok(frames) => {
                        progress = true;
                        match &inbound {
                            Inbound::Decode(..) => pending_in.extend(decode(
                                &session,
                                &stats,
                                replays.as_mut(),
                                frames,
                            )),
                            Inbound::Welcome => {
                                if let Some(welcome) = welcome(&session, &frames) {
                                    pending_out.push_back(welcome);
                                }
                            }
                            Inbound::Nothing => {}
                        }
                    }
                    Err(zmq::Error::EAGAIN) => {}
                    Err(error) => tracing::debug!(link = %stats.name(), %error, "receive failed"),
                }
            }
            if let Inbound::Decode(inbox, _) = &inbound {
                while let Some(message) = pending_in.pop_front() {
                    match inbox.try_send(message) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(message)) => {
                            pending_in.push_front(message);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            pending_in.clear();
                            inbound = Inbound::Nothing;
                            break;
                        }
                    }
                }
            }
            if !progress {
                break;
            }
        }
        let receiving = matches!(inbound, Inbound::Decode(..) | Inbound::Welcome);
        if !receiving && outbox.is_none() && pending_out.is_empty() {
            return;
        }
        let inbox = match &inbound {
            Inbound::Decode(inbox, _) => Some(inbox.clone()),
            _ => None,
        };
        tokio::select! {
            guard = driven.signal.readable() => match guard {
                Ok(mut guard) => guard.clear_ready(),
                Err(error) => {
                    tracing::warn!(link = %stats.name(), %error, "cannot wait on the socket");
                    return;
                }
            },
            queued = recv_some(&mut outbox, &mut batch, &packing), if outbox.is_some() && pending_out.len() < PENDING_OUT => {
                if queued {
                    let peers = match &packing {
                        Packing::Never => None,
                        Packing::To(peers) => Some(peers),
                    };
                    for (msg_type, frames) in outgoing(&session, batch.drain(..), peers) {
                        tracing::trace!(link = %stats.name(), msg_type, "queued");
                        pending_out.push_back(frames);
                    }
                } else {
                    outbox = None;
                }
            },
            permit = reserve(inbox.as_ref()), if !pending_in.is_empty() => match permit {
                Some(permit) => {
                    if let Some(message) = pending_in.pop_front() {
                        permit.send(message);
                    }
                }
                None => {
                    pending_in.clear();
                    inbound = Inbound::Nothing;
                }
            },
            () = closed(inbox.as_ref()), if inbox.is_some() && pending_in.is_empty() => {
                inbound = Inbound::Nothing;
            },
        }
    }
}

/// Waits for the next message of the outbox and takes whatever else is already there (up to a
/// pack's worth when packing). False when every sender is gone.
async fn recv_some(
    outbox: &mut Option<mpsc::Receiver<Message>>,
    batch: &mut Vec<Message>,
    packing: &Packing,
) -> bool {
    let Some(outbox) = outbox else {
        return false;
    };
    let Some(first) = outbox.recv().await else {
        return false;
    };
    batch.push(first);
    if matches!(packing, Packing::To(_)) {
        while batch.len() < parallax_wire::pack::PACK_COUNT_LIMIT {
            match outbox.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
    }
    true
}

async fn reserve(inbox: Option<&mpsc::Sender<Message>>) -> Option<mpsc::Permit<'_, Message>> {
    match inbox {
        Some(inbox) => inbox.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn closed(inbox: Option<&mpsc::Sender<Message>>) {
    match inbox {
        Some(inbox) => inbox.closed().await,
        None => std::future::pending().await,
    }
}

/// The `iopub_welcome` answering an XPUB subscription frame (`\x01topic`), if it is one.
fn welcome(session: &Session, frames: &[Bytes]) -> Option<Vec<Bytes>> {
    let frame = frames.first().filter(|f| f.first() == Some(&1))?;
    let topic = String::from_utf8_lossy(&frame[1..]).into_owned();
    let content: std::collections::BTreeMap<&str, String> =
        std::iter::once(("subscription", topic)).collect();
    let mut message = session.message("iopub_welcome", &content);
    message.identities = vec![frame.slice(1..)];
    Some(session.encode(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_spelled_for_libzmq() {
        assert_eq!(
            endpoint_for_libzmq("tcp://127.0.0.1:0").as_deref(),
            Some("tcp://127.0.0.1:*")
        );
        assert_eq!(
            endpoint_for_libzmq("tcp://127.0.0.1:5555").as_deref(),
            Some("tcp://127.0.0.1:5555")
        );
        assert_eq!(
            endpoint_for_libzmq("ipc:///tmp/x:0").as_deref(),
            Some("ipc:///tmp/x:0")
        );
        assert_eq!(endpoint_for_libzmq("tcp://a\0b:1"), None);
    }
}
