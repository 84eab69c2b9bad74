//! Strangers on every kind of socket this crate binds: raw TCP connections that speak broken or
//! hostile ZMTP. After each attack the process is alive, its resident memory has not grown by
//! more than a bound, and a real peer still gets its messages through.
//!
//! The attacks: a frame header claiming 2^62 bytes (as a command before the handshake ends, and as
//! a message after it), a truncated greeting, a greeting for another mechanism, garbage, 200
//! connections that each claim a 1 GiB frame and then stall, and a sender that trickles a frame a
//! few bytes at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use parallax_net::{
    bind_heartbeat, bind_pub, bind_router, connect_dealer, connect_sub, Heartbeat, Limits,
    LinkStats, Packing,
};
use parallax_wire::{Message, Session};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How much the resident memory may grow over one attack.
const RSS_BOUND: u64 = 64 << 20;

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// The 64-byte ZMTP 3.0 greeting for `mechanism`.
fn greeting(mechanism: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    let mut name = [0u8; 20];
    name[..mechanism.len()].copy_from_slice(mechanism);
    bytes.extend_from_slice(&name);
    bytes.push(0); // as-server
    bytes.extend_from_slice(&[0u8; 31]);
    bytes
}

/// A NULL-mechanism READY command for a peer of `socket_type`.
fn ready(socket_type: &[u8]) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&u32::try_from(socket_type.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(socket_type);
    let mut frame = vec![0x04, u8::try_from(body.len()).unwrap_or(0)];
    frame.extend_from_slice(&body);
    frame
}

/// A long frame header (flags, then an 8-byte length).
fn long_header(flags: u8, length: u64) -> Vec<u8> {
    let mut header = vec![flags];
    header.extend_from_slice(&length.to_be_bytes());
    header
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok();
    stream
}

/// Writes `bytes` and waits until the peer closes the connection (or a second passes).
fn send_and_wait_for_close(port: u16, bytes: &[u8]) {
    let mut stream = connect(port);
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// A real peer of the socket under attack.
trait Peer {
    /// One exchange that proves the socket still serves.
    async fn round_trip(&mut self);
}

/// Every attack, against the socket bound at `port` that expects peers of `peer_type`;
/// `peer` proves after each that the socket still serves.
async fn attack(port: u16, peer_type: &'static [u8], peer: &mut impl Peer) {
    peer.round_trip().await;
    let before = rss();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("oversized command frame", {
            let mut bytes = greeting(b"NULL");
            bytes.extend(long_header(0x06, 1 << 62));
            bytes
        }),
        ("oversized message frame", {
            let mut bytes = greeting(b"NULL");
            bytes.extend(ready(peer_type));
            bytes.extend(long_header(0x02, 1 << 62));
            bytes
        }),
        ("truncated greeting", greeting(b"NULL")[..10].to_vec()),
        ("greeting for another mechanism", greeting(b"CURVE")),
        (
            "garbage",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ];
    for (name, bytes) in attacks {
        tokio::task::spawn_blocking(move || send_and_wait_for_close(port, &bytes))
            .await
            .expect("attacker");
        peer.round_trip().await;
        let grown = rss().saturating_sub(before);
        assert!(
            grown < RSS_BOUND,
            "{name}: resident memory grew by {grown} bytes"
        );
    }

    // 200 connections that each claim a 1 GiB frame and then stall, held open while a real peer
    // is served.
    let stalled = tokio::task::spawn_blocking(move || {
        (0..200)
            .map(|_| {
                let mut stream = connect(port);
                let mut bytes = greeting(b"NULL");
                bytes.extend(ready(peer_type));
                bytes.extend(long_header(0x02, 1 << 30));
                bytes.extend_from_slice(&[0u8; 1000]);
                let _ = stream.write_all(&bytes);
                stream
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("stallers");
    peer.round_trip().await;
    let grown = rss().saturating_sub(before);
    assert!(
        grown < RSS_BOUND,
        "200 stalled 1 GiB frames: resident memory grew by {grown} bytes"
    );
    drop(stalled);

    // A slow sender: a valid frame trickled a few bytes at a time while a real peer is served.
    let trickle = tokio::task::spawn_blocking(move || {
        let mut stream = connect(port);
        let mut bytes = greeting(b"NULL");
        bytes.extend(ready(peer_type));
        bytes.extend(long_header(0x02, 4096));
        for chunk in bytes.chunks(7) {
            if stream.write_all(chunk).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        stream
    });
    peer.round_trip().await;
    let slow = trickle.await.expect("trickler");
    peer.round_trip().await;
    drop(slow);
    let grown = rss().saturating_sub(before);
    assert!(
        grown < RSS_BOUND,
        "slow sender: resident memory grew by {grown} bytes"
    );
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("port")
}

struct RouterPeer {
    session: Session,
    outbox: parallax_net::Outbox,
    inbox: parallax_net::Inbox,
    dealer_out: parallax_net::Outbox,
    dealer_in: parallax_net::Inbox,
    round: u64,
}

impl Peer for RouterPeer {
    async fn round_trip(&mut self) {
        self.round += 1;
        let ask = self
            .session
            .message("echo_request", &json!({ "round": self.round }));
        self.dealer_out.send(ask).await.expect("send");
        let request = tokio::time::timeout(TIMEOUT, self.inbox.recv())
            .await
            .expect("request in time")
            .expect("open");
        let reply = self
            .session
            .reply(&request, "echo_reply", &json!({ "round": self.round }));
        self.outbox.send(reply).await.expect("reply");
        let reply = tokio::time::timeout(TIMEOUT, self.dealer_in.recv())
            .await
            .expect("reply in time")
            .expect("open");
        assert_eq!(round_of(&reply), self.round);
    }
}

fn round_of(message: &Message) -> u64 {
    let content: serde_json::Value = message.content_as().unwrap_or_default();
    content["round"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "current_thread")]
async fn a_router_survives_hostile_peers() {
    let session = Session::new(b"key", "test");
    let (url, outbox, inbox) = bind_router(
        "tcp://127.0.0.1:0",
        session.clone(),
        LinkStats::new("router"),
        Packing::Never,
        Limits::DATA,
        &parallax_net::Security::Null,
    )
    .await
    .expect("bind");
    let (dealer_out, dealer_in) = connect_dealer(
        &url,
        session.clone(),
        None,
        TIMEOUT,
        LinkStats::new("dealer"),
        Limits::DATA,
        &parallax_net::Security::Null,
    )
    .await
    .expect("connect");
    let mut peer = RouterPeer {
        session,
        outbox,
        inbox,
        dealer_out,
        dealer_in,
        round: 0,
    };
    attack(port_of(&url), b"DEALER", &mut peer).await;
}

struct SubscriberPeer {
    session: Session,
    publish: parallax_net::Outbox,
    subscribed: parallax_net::Inbox,
    round: u64,
}

impl Peer for SubscriberPeer {
    async fn round_trip(&mut self) {
        self.round += 1;
        let mut message = self
            .session
            .message("stream", &json!({ "round": self.round }));
        message.identities = vec![bytes::Bytes::from_static(b"kernel.test.stream")];
        self.publish.send(message).await.expect("publish");
        loop {
            let got = tokio::time::timeout(TIMEOUT, self.subscribed.recv())
                .await
                .expect("published in time")
                .expect("open");
            if got.msg_type() == "stream" {
                assert_eq!(round_of(&got), self.round);
                return;
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_publisher_survives_hostile_peers() {
    let session = Session::new(b"key", "test");
    let (url, publish) = bind_pub("tcp://127.0.0.1:0", session.clone())
        .await
        .expect("bind");
    let mut subscribed = connect_sub(
        &url,
        session.clone(),
        TIMEOUT,
        LinkStats::new("sub"),
        Limits::DATA,
    )
    .await
    .expect("connect");
    let welcome = tokio::time::timeout(TIMEOUT, subscribed.recv())
        .await
        .expect("welcome in time")
        .expect("open");
    assert_eq!(welcome.msg_type(), "iopub_welcome");
    let mut peer = SubscriberPeer {
        session,
        publish,
        subscribed,
        round: 0,
    };
    attack(port_of(&url), b"SUB", &mut peer).await;
}

struct HeartbeatPeer(Heartbeat);

impl Peer for HeartbeatPeer {
    async fn round_trip(&mut self) {
        assert!(self.0.beat(TIMEOUT).await, "the heartbeat echoes");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_heartbeat_survives_hostile_peers() {
    let url = bind_heartbeat("tcp://127.0.0.1:0").await.expect("bind");
    let mut peer = HeartbeatPeer(Heartbeat::new(url.clone(), TIMEOUT));
    attack(port_of(&url), b"REQ", &mut peer).await;
}
