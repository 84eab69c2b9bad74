//! CurveZMQ links: a client holding an admitted key gets through, encrypted (a recording proxy
//! between the two never sees the plaintext, buffers included); a client with another key, or
//! without CURVE, gets nothing through, and the server counts the refusal.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use parallax_net::{
    bind_router, connect_dealer, CurveKeys, Inbox, Limits, LinkStats, Outbox, Packing, Security,
};
use parallax_wire::Session;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);
const SECRET_TEXT: &str = "a-pushed-string-nobody-may-read";

struct Server {
    url: String,
    port: u16,
    keys: CurveKeys,
    stats: Arc<LinkStats>,
    inbox: Inbox,
    _outbox: Outbox,
}

async fn server(admitted: &CurveKeys) -> Server {
    let keys = CurveKeys::generate().expect("libzmq with CURVE");
    let stats = LinkStats::new("curve server");
    let (url, outbox, inbox) = bind_router(
        "tcp://127.0.0.1:0",
        Session::new(b"key", "server"),
        stats.clone(),
        Packing::Never,
        Limits::DATA,
        &Security::Server {
            keys: keys.clone(),
            clients: vec![admitted.public],
        },
    )
    .await
    .expect("bind");
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    Server {
        url,
        port,
        keys,
        stats,
        inbox,
        _outbox: outbox,
    }
}

async fn dealer(url: &str, security: &Security) -> Outbox {
    let (outbox, _inbox) = connect_dealer(
        url,
        Session::new(b"key", "client"),
        None,
        TIMEOUT,
        LinkStats::new("curve client"),
        Limits::DATA,
        security,
    )
    .await
    .expect("connect");
    outbox
}

fn secret_message() -> parallax_wire::Message {
    Session::new(b"key", "client")
        .message("push_request", &json!({ "text": SECRET_TEXT }))
        .with_buffers(vec![Bytes::from(SECRET_TEXT.repeat(3))])
}

/// A TCP proxy on an OS-chosen port that forwards one connection to `port` and records every
/// byte it carries, both ways.
fn recording_proxy(port: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listens");
    let proxy_port = listener.local_addr().expect("address").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
            return;
        };
        let pipe = |mut from: TcpStream, mut to: TcpStream, record: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                while let Ok(n) = from.read(&mut buffer) {
                    if n == 0 || to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    if let Ok(mut seen) = record.lock() {
                        seen.extend_from_slice(&buffer[..n]);
                    }
                }
            })
        };
        let (c2, s2) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        pipe(client, server, record.clone());
        pipe(s2, c2, record);
    });
    (proxy_port, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "current_thread")]
async fn an_admitted_client_gets_through_encrypted() {
    let client_keys = CurveKeys::generate().expect("keys");
    let mut server = server(&client_keys).await;
    let (proxy_port, seen) = recording_proxy(server.port);
    let outbox = dealer(
        &format!("tcp://127.0.0.1:{proxy_port}"),
        &Security::Client {
            server: server.keys.public,
            keys: client_keys,
        },
    )
    .await;
    outbox.send(secret_message()).await.expect("send");
    let got = tokio::time::timeout(TIMEOUT, server.inbox.recv())
        .await
        .expect("delivered in time")
        .expect("open");
    let content: serde_json::Value = got.content_as().expect("content");
    assert_eq!(content["text"], SECRET_TEXT);
    assert_eq!(got.buffers[0], SECRET_TEXT.repeat(3).as_bytes());
    let seen = seen.lock().expect("recording").clone();
    assert!(
        seen.len() > 200,
        "the proxy carried the exchange ({} bytes)",
        seen.len()
    );
    assert!(
        !contains(&seen, SECRET_TEXT.as_bytes()),
        "plaintext crossed the wire"
    );
    assert!(
        !contains(&seen, b"push_request"),
        "a header crossed the wire in clear"
    );
    assert_eq!(server.stats.rejected(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_with_another_key_or_no_curve_gets_nothing_through() {
    let admitted = CurveKeys::generate().expect("keys");
    let mut server = server(&admitted).await;

    let stranger = dealer(
        &server.url,
        &Security::Client {
            server: server.keys.public,
            keys: CurveKeys::generate().expect("keys"),
        },
    )
    .await;
    stranger.send(secret_message()).await.expect("queued");
    let plain = dealer(&server.url, &Security::Null).await;
    plain.send(secret_message()).await.expect("queued");
    let wrong_server = dealer(
        &server.url,
        &Security::Client {
            server: CurveKeys::generate().expect("keys").public,
            keys: admitted.clone(),
        },
    )
    .await;
    wrong_server.send(secret_message()).await.expect("queued");

    let got = tokio::time::timeout(Duration::from_secs(2), server.inbox.recv()).await;
    assert!(
        got.is_err(),
        "nothing of theirs reaches the program: {got:?}"
    );
    assert!(
        server.stats.rejected() >= 1,
        "the stranger's key was refused and counted"
    );

    // The admitted client still gets through.
    let friend = dealer(
        &server.url,
        &Security::Client {
            server: server.keys.public,
            keys: admitted,
        },
    )
    .await;
    friend.send(secret_message()).await.expect("send");
    tokio::time::timeout(TIMEOUT, server.inbox.recv())
        .await
        .expect("the admitted client is served")
        .expect("open");
}
