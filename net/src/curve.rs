//! CurveZMQ for links that leave the host: every byte encrypted and authenticated, buffers
//! included, and only peers holding a key the server knows admitted.
//!
//! A server link ([`Security::Server`]) has a secret key and a list of client public keys it
//! admits. libzmq asks a ZAP handler about every client that completes the CURVE handshake; this
//! module runs that handler once per process, on a thread of its own (it must answer whatever the
//! runtimes are doing), bound at `inproc://zeromq.zap.01` in the process's libzmq context. Each
//! server socket gets a ZAP domain of its own, under which its admitted keys are registered; a
//! client with another key is refused before any of its messages reaches the socket, and the
//! refusal is logged and counted in the link's [`LinkStats`]. A domain stays registered for the
//! life of the process (a process binds a handful of links).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use parallax_wire::profile::ControllerFile;

use crate::handshake::{self, Side};
use crate::{LinkStats, NetError};

/// A CurveZMQ key pair (raw 32-byte keys).
#[derive(Clone, PartialEq, Eq)]
pub struct CurveKeys {
    pub public: [u8; 32],
    pub secret: [u8; 32],
}

impl std::fmt::Debug for CurveKeys {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveKeys")
            .field("public", &z85(&self.public))
            .finish_non_exhaustive()
    }
}

impl CurveKeys {
    /// A new random key pair.
    pub fn generate() -> Result<Self, NetError> {
        let pair = zmq::CurveKeyPair::new()?;
        Ok(CurveKeys {
            public: pair.public_key,
            secret: pair.secret_key,
        })
    }

    /// A key pair from its Z85 text form (40 characters each), as connection files hold it.
    pub fn from_z85(public: &str, secret: &str) -> Option<Self> {
        Some(CurveKeys {
            public: key_from_z85(public)?,
            secret: key_from_z85(secret)?,
        })
    }
}

/// The Z85 text form of a 32-byte key.
pub fn z85(key: &[u8; 32]) -> String {
    zmq::z85_encode(key).unwrap_or_default()
}

/// A 32-byte key from its Z85 text form.
pub fn key_from_z85(text: &str) -> Option<[u8; 32]> {
    zmq::z85_decode(text).ok()?.try_into().ok()
}

/// How a link protects what it carries.
#[derive(Clone, Debug, Default)]
pub enum Security {
    /// Plain ZMTP (NULL mechanism): for loopback, where the HMAC signature is the guard.
    #[default]
    Null,
    /// The CURVE server side: our key pair, and the public keys of the clients we admit.
    Server {
        keys: CurveKeys,
        clients: Vec<[u8; 32]>,
    },
    /// The CURVE client side: the server's public key and our key pair.
    Client { server: [u8; 32], keys: CurveKeys },
}

impl Security {
    /// The client side of a link to the controller a connection file describes: CURVE when the
    /// file holds keys, plain otherwise. Keys that are present but incomplete or not Z85 are an
    /// error, never a silent fallback to an unencrypted link.
    pub fn for_file(file: &ControllerFile) -> Result<Security, NetError> {
        let fields = [
            ("curve_serverkey", &file.curve_serverkey),
            ("curve_publickey", &file.curve_publickey),
            ("curve_secretkey", &file.curve_secretkey),
        ];
        if fields.iter().all(|(_, value)| value.is_none()) {
            return Ok(Security::Null);
        }
        let key = |(name, value): (&str, &Option<String>)| {
            value
                .as_deref()
                .and_then(key_from_z85)
                .ok_or_else(|| NetError::CurveKeys {
                    reason: match value {
                        None => format!("{name} is missing"),
                        Some(_) => format!("{name} is not a 40-character Z85 key"),
                    },
                })
        };
        let [server, public, secret] = fields;
        Ok(Security::Client {
            server: key(server)?,
            keys: CurveKeys {
                public: key(public)?,
                secret: key(secret)?,
            },
        })
    }

    /// Whether the link is encrypted.
    pub fn is_curve(&self) -> bool {
        !matches!(self, Security::Null)
    }
}

/// The ZAP endpoint libzmq asks (fixed by the ZAP specification).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// Admitted client keys and the link's counters, per ZAP domain.
type Domains = HashMap<String, (HashSet<[u8; 32]>, Arc<LinkStats>)>;

fn domains() -> &'static Mutex<Domains> {
    static DOMAINS: OnceLock<Mutex<Domains>> = OnceLock::new();
    DOMAINS.get_or_init(Mutex::default)
}

/// Sets `security` on a socket before it binds or connects.
pub(crate) fn apply(
    socket: &zmq::Socket,
    security: &Security,
    stats: &Arc<LinkStats>,
) -> Result<(), NetError> {
    match security {
        Security::Null => Ok(()),
        Security::Server { keys, clients } => {
            start_zap_handler()?;
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let domain = format!("parallax-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            if let Ok(mut domains) = domains().lock() {
                domains.insert(
                    domain.clone(),
                    (clients.iter().copied().collect(), stats.clone()),
                );
            }
            socket.set_zap_domain(&domain)?;
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(&keys.secret)?;
            handshake::watch(socket, Side::Bound, stats.clone())
        }
        Security::Client { server, keys } => {
            socket.set_curve_serverkey(server)?;
            socket.set_curve_publickey(&keys.public)?;
            socket.set_curve_secretkey(&keys.secret)?;
            handshake::watch(socket, Side::Connecting { curve: true }, stats.clone())
        }
    }
}

/// Binds the ZAP handler and starts its thread, once per process.
fn start_zap_handler() -> Result<(), NetError> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        let socket = crate::socket::context()
            .socket(zmq::REP)
            .map_err(|e| e.to_string())?;
        socket.bind(ZAP_ENDPOINT).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("parallax-zap".into())
            .spawn(move || serve_zap(&socket))
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    started.clone().map_err(|reason| NetError::Zap { reason })
}

fn serve_zap(socket: &zmq::Socket) {
    loop {
        let request = match socket.recv_multipart(0) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(%error, "the CURVE key check stopped; no new peer can connect");
                return;
            }
        };
        let reply = answer(&request);
        if let Err(error) = socket.send_multipart(reply, 0) {
            tracing::warn!(%error, "cannot answer a CURVE key check");
        }
    }
}

/// The ZAP reply to one request: `[version, request id, domain, address, identity, mechanism,
/// credentials...]` → `[version, request id, status code, status text, user id, metadata]`.
fn answer(request: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let field = |i: usize| request.get(i).cloned().unwrap_or_default();
    let version = field(0);
    let request_id = field(1);
    let domain = String::from_utf8_lossy(&field(2)).into_owned();
    let address = String::from_utf8_lossy(&field(3)).into_owned();
    let mechanism = field(5);
    let client_key: Option<[u8; 32]> = field(6).try_into().ok();
    let verdict = if version != b"1.0" || mechanism != b"CURVE" {
        Err("not a CURVE request")
    } else {
        match domains().lock() {
            Ok(domains) => match (domains.get(&domain), client_key) {
                (Some((admitted, _)), Some(key)) if admitted.contains(&key) => Ok(()),
                (Some((_, stats)), _) => {
                    stats.refuse_peer(format!(
                        "refused a peer at {address}: its CURVE key is not one this link admits"
                    ));
                    Err("unknown client key")
                }
                (None, _) => Err("unknown ZAP domain"),
            },
            Err(_) => Err("key registry unavailable"),
        }
    };
    let (code, text): (&[u8], &str) = match verdict {
        Ok(()) => (b"200", "OK"),
        Err(why) => (b"400", why),
    };
    vec![
        b"1.0".to_vec(),
        request_id,
        code.to_vec(),
        text.as_bytes().to_vec(),
        Vec::new(),
        Vec::new(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_z85_and_never_print_the_secret() {
        let keys = CurveKeys::generate().expect("libzmq with CURVE");
        let public = z85(&keys.public);
        let secret = z85(&keys.secret);
        assert_eq!((public.len(), secret.len()), (40, 40));
        assert_eq!(CurveKeys::from_z85(&public, &secret), Some(keys.clone()));
        assert!(!format!("{keys:?}").contains(&secret));
        assert_eq!(key_from_z85("too short"), None);
    }

    #[test]
    fn the_zap_answer_admits_only_registered_keys() {
        let stats = LinkStats::new("zap test");
        let admitted = [7u8; 32];
        domains()
            .lock()
            .expect("registry")
            .insert("t".into(), ([admitted].into(), stats.clone()));
        let ask = |domain: &str, key: &[u8]| {
            let request: Vec<Vec<u8>> = vec![
                b"1.0".to_vec(),
                b"id".to_vec(),
                domain.as_bytes().to_vec(),
                b"10.0.0.2".to_vec(),
                Vec::new(),
                b"CURVE".to_vec(),
                key.to_vec(),
            ];
            answer(&request)[2].clone()
        };
        assert_eq!(ask("t", &admitted), b"200");
        assert_eq!(ask("t", &[8u8; 32]), b"400");
        assert_eq!(ask("other", &admitted), b"400");
        assert_eq!(ask("t", b"short"), b"400");
        assert_eq!(stats.rejected(), 2);
    }

    #[test]
    fn a_connection_file_gives_curve_only_with_all_three_keys() {
        let server = CurveKeys::generate().expect("libzmq with CURVE");
        let client = CurveKeys::generate().expect("libzmq with CURVE");
        let mut file = ControllerFile::default();
        assert!(!Security::for_file(&file).expect("plain").is_curve());
        file.curve_serverkey = Some(z85(&server.public));
        file.curve_publickey = Some(z85(&client.public));
        let missing = Security::for_file(&file).expect_err("no secret key");
        assert!(
            missing.to_string().contains("curve_secretkey is missing"),
            "{missing}"
        );
        file.curve_secretkey = Some("not z85".into());
        let bad = Security::for_file(&file).expect_err("bad secret key");
        assert!(
            bad.to_string().contains("not a 40-character Z85 key"),
            "{bad}"
        );
        file.curve_secretkey = Some(z85(&client.secret));
        match Security::for_file(&file).expect("curve") {
            Security::Client { server: key, keys } => {
                assert_eq!((key, keys), (server.public, client));
            }
            other => panic!("expected a CURVE client, got {other:?}"),
        }
    }
}
