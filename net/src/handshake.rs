//! Watching a CURVE link's handshakes, so that a refused key is said plainly.
//!
//! libzmq retries a refused connection quietly for ever; without this, an engine whose key the
//! controller does not admit would only see its registration time out. Each CURVE socket gets a
//! monitor (libzmq's socket events, read on a thread of its own, which ends when the socket
//! closes). On the connecting side a failed handshake is logged once (not at every retry) and kept
//! in the link's [`LinkStats::refused`] for the program's error message; on the bound side every
//! failed handshake is counted as a rejection and logged, at most once per 10 s per reason (a key
//! the ZAP handler refused is logged there, with the peer's address).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{LinkStats, NetError};

/// Which end of the link the watched socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// It connects (an engine or client to the controller), with CURVE keys or without.
    Connecting { curve: bool },
    /// It is bound (the controller).
    Bound,
}

/// The libzmq events watched (zmq.h `ZMQ_EVENT_*`).
const EVENTS: u16 = 0x0200 // DISCONNECTED
    | 0x0400 // MONITOR_STOPPED
    | 0x0800 // HANDSHAKE_FAILED_NO_DETAIL
    | 0x1000 // HANDSHAKE_SUCCEEDED
    | 0x2000 // HANDSHAKE_FAILED_PROTOCOL
    | 0x4000; // HANDSHAKE_FAILED_AUTH

const DISCONNECTED: u16 = 0x0200;
const MONITOR_STOPPED: u16 = 0x0400;
const FAILED_NO_DETAIL: u16 = 0x0800;
const SUCCEEDED: u16 = 0x1000;
const FAILED_PROTOCOL: u16 = 0x2000;
const FAILED_AUTH: u16 = 0x4000;

/// zmq.h `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`.
const MECHANISM_MISMATCH: u32 = 0x1100_0002;
/// zmq.h `ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC`.
const CRYPTOGRAPHIC: u32 = 0x1100_0001;

/// Starts watching `socket`'s handshakes. Call before it binds or connects.
pub(crate) fn watch(
    socket: &zmq::Socket,
    side: Side,
    stats: Arc<LinkStats>,
) -> Result<(), NetError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let endpoint = format!(
        "inproc://parallax-handshakes-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    socket.monitor(&endpoint, i32::from(EVENTS))?;
    let events = crate::socket::context().socket(zmq::PAIR)?;
    events.connect(&endpoint)?;
    std::thread::Builder::new()
        .name("parallax-handshakes".into())
        .spawn(move || read_events(&events, side, &stats))
        .map_err(NetError::Watch)?;
    Ok(())
}

fn read_events(events: &zmq::Socket, side: Side, stats: &LinkStats) {
    loop {
        let Ok(frames) = events.recv_multipart(0) else {
            return;
        };
        let Some((event, value, address)) = parse(&frames) else {
            continue;
        };
        if event == MONITOR_STOPPED {
            return;
        }
        match side {
            Side::Connecting { .. } if event == DISCONNECTED => stats.set_connected(false),
            Side::Connecting { .. } if event == SUCCEEDED => {
                stats.set_connected(true);
                if stats.set_refused(None) {
                    tracing::info!(link = %stats.name(), %address, "handshake succeeded");
                }
            }
            Side::Connecting { .. } => {
                let why = describe(side, event, value, &address);
                if stats.set_refused(Some(why.clone())) {
                    tracing::error!(link = %stats.name(), "{why}");
                }
            }
            // The ZAP handler has counted and logged it, with the peer's address.
            Side::Bound if matches!(event, SUCCEEDED | FAILED_AUTH | DISCONNECTED) => {}
            Side::Bound => stats.refuse_peer(describe(side, event, value, &address)),
        }
    }
}

/// A monitor event: `[event (u16 LE) + value (u32 LE), endpoint]`.
fn parse(frames: &[Vec<u8>]) -> Option<(u16, u32, String)> {
    let head = frames.first()?;
    let event = u16::from_le_bytes(head.get(0..2)?.try_into().ok()?);
    let value = u32::from_le_bytes(head.get(2..6)?.try_into().ok()?);
    let address = frames
        .get(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    Some((event, value, address))
}

/// What a failed handshake means, in words for the user.
fn describe(side: Side, event: u16, value: u32, address: &str) -> String {
    match (side, event) {
        (Side::Connecting { curve: false }, _) if value == MECHANISM_MISMATCH => format!(
            "{address} encrypts its links (CURVE) and the connection file has no keys: use \
             the file the controller wrote"
        ),
        (Side::Connecting { curve: false }, _) => format!(
            "the handshake with {address} failed ({})",
            reason(event, value)
        ),
        (Side::Connecting { .. }, FAILED_AUTH) => format!(
            "{address} refused this link's CURVE key (status {value}): the connection file's \
             keys are not ones this cluster admits; use the file the controller wrote"
        ),
        (Side::Connecting { .. }, FAILED_PROTOCOL) if value == MECHANISM_MISMATCH => format!(
            "{address} does not use CURVE encryption: the connection file's keys are for \
             another controller"
        ),
        (Side::Connecting { .. }, _) => format!(
            "the CURVE handshake with {address} failed ({}): the connection file's server key \
             is not this controller's",
            reason(event, value)
        ),
        (Side::Bound, FAILED_PROTOCOL) if value == MECHANISM_MISMATCH => format!(
            "refused a peer on {address}: it connected without CURVE encryption (no keys, or \
             a connection file of another cluster)"
        ),
        (Side::Bound, _) => format!(
            "refused a peer on {address}: its CURVE handshake failed ({}; a stranger, or a \
             connection file of another cluster)",
            reason(event, value)
        ),
    }
}

fn reason(event: u16, value: u32) -> String {
    match (event, value) {
        (FAILED_PROTOCOL, CRYPTOGRAPHIC) => "it could not be decrypted".into(),
        (FAILED_PROTOCOL, MECHANISM_MISMATCH) => "another security mechanism".into(),
        (FAILED_PROTOCOL, value) => format!("protocol error {value:#x}"),
        (FAILED_AUTH, status) => format!("key refused, status {status}"),
        (FAILED_NO_DETAIL, _) => "the connection closed during the handshake".into(),
        (event, value) => format!("event {event:#x}, value {value:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_events_parse_and_short_ones_do_not() {
        let mut head = 0x4000u16.to_le_bytes().to_vec();
        head.extend(400u32.to_le_bytes());
        let frames = vec![head, b"tcp://10.0.0.1:5555".to_vec()];
        assert_eq!(
            parse(&frames),
            Some((FAILED_AUTH, 400, "tcp://10.0.0.1:5555".into()))
        );
        assert_eq!(parse(&[vec![0, 0x40, 1]]), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let auth = describe(
            Side::Connecting { curve: true },
            FAILED_AUTH,
            400,
            "tcp://h:1",
        );
        assert!(auth.contains("refused this link's CURVE key"), "{auth}");
        let plain = describe(
            Side::Connecting { curve: false },
            FAILED_PROTOCOL,
            MECHANISM_MISMATCH,
            "tcp://h:1",
        );
        assert!(plain.contains("has no keys"), "{plain}");
        let null = describe(
            Side::Bound,
            FAILED_PROTOCOL,
            MECHANISM_MISMATCH,
            "tcp://h:1",
        );
        assert!(null.contains("without CURVE"), "{null}");
    }
}
