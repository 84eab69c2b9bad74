//! The Parallax controller: one per cluster. Engines and clients dial in to it; it tracks the
//! engines (registration, ids, heartbeats, deaths), routes each client's requests to the engine
//! they name, relays the engines' outputs and replies back to the client that asked, tells every
//! connected client when an engine comes or goes, and records every task in SQLite so that
//! results outlive clients. The protocol is documented in [`parallax_wire::cluster`].
//!
//! ```text
//! clients ── DEALER ─► client ROUTER ─┐                  ┌─► DB thread ─► tasks.db (WAL)
//!                                     ├─► hub (one task) ─┤
//! engines ── DEALER ─► engine ROUTER ─┘                  └─► outboxes ─► ROUTERs
//! ```
//!
//! # Layout
//!
//! - [`run`] / [`ControllerOptions`]: binding, the security files, serving until shutdown.
//! - `hub`: the task that owns the state (engines, requests in flight, clients) and handles
//!   every message; `hub::clients` and `hub::engines` hold the two sides' handlers.
//! - `registry`: the engine table and the rules for engine ids.
//! - `scheduler`: the load-balanced queue and the choice of engine (no I/O).
//! - `db`: the task database, written by its own thread in batches; `query`: `db_query`'s
//!   query language, as SQL.
//! - `files`: `security/controller-{client,engine}.json` and the addresses they advertise.
//! - `fuzzing` (tests and the `fuzzing` feature only): the check of the `db_query` fuzz target.

use std::future::Future;

use parallax_net::{
    bind_router, z85, CurveKeys, Limits, LinkStats, NetError, PackPeers, Packing, Security,
};
use parallax_wire::profile::{ControllerFile, Profile, ProfileError};
use parallax_wire::Session;

mod db;
mod deps;
mod files;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod hub;
mod query;
mod registry;
mod scheduler;

pub use db::DbError;

/// How the controller was asked to run.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// The profile whose files the controller writes (`security/`, `tasks.db`).
    pub profile: Profile,
    /// The address both ROUTERs bind to, on OS-chosen ports: `127.0.0.1` unless engines on
    /// other hosts must reach the controller (`0.0.0.0`, or one interface's address).
    pub ip: String,
    /// The largest `apply` result, in bytes of its buffers, kept in the task database for
    /// clients that ask later (`get_result`); larger ones are recorded by size.
    pub result_limit: usize,
    /// The largest frame a peer may send, in bytes. A peer announcing a larger one is
    /// disconnected before memory is reserved for it.
    pub max_message_size: u64,
    /// Encrypt the links (CurveZMQ) even on loopback. Links are always encrypted when `ip` is
    /// not a loopback address ([`ControllerOptions::encrypted`]).
    pub curve: bool,
    /// The host or address written in the engine file, what engines dial (`None`: `ip`, or for
    /// `0.0.0.0` this host's address).
    pub location: Option<String>,
    /// The ports to bind, from this range (first..=last): the client link takes the first free
    /// one, the engine link the next. `None`: chosen by the OS.
    pub ports: Option<(u16, u16)>,
    /// How many engines may die while running one load-balanced task before it fails with
    /// `TaskKilledEngines` instead of running again (at least 1).
    pub max_task_deaths: u32,
}

/// The default [`ControllerOptions::max_task_deaths`], as Dask's `allowed-failures`.
pub const DEFAULT_MAX_TASK_DEATHS: u32 = 3;

/// The default [`ControllerOptions::max_message_size`]: 2 GiB, room for real arrays.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = Limits::DATA.max_frame;

/// The default [`ControllerOptions::result_limit`]: 1 MiB.
pub const DEFAULT_RESULT_LIMIT: usize = 1 << 20;

impl ControllerOptions {
    /// Options for `profile`, listening on 127.0.0.1.
    pub fn new(profile: Profile) -> Self {
        ControllerOptions {
            profile,
            ip: "127.0.0.1".into(),
            result_limit: DEFAULT_RESULT_LIMIT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            curve: false,
            location: None,
            ports: None,
            max_task_deaths: DEFAULT_MAX_TASK_DEATHS,
        }
    }

    /// Whether the links are encrypted: asked for, or reachable from other hosts (`ip` is not a
    /// loopback address).
    pub fn encrypted(&self) -> bool {
        self.curve || !parallax_net::is_loopback_host(&self.ip)
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "a controller (pid {pid}) is already running for profile {profile:?} at {url}; stop it \
         first"
    )]
    AlreadyRunning {
        profile: String,
        pid: u32,
        url: String,
    },
    #[error("the socket bound to {endpoint} did not report its port")]
    NoPort { endpoint: String },
    #[error("no free port left in {first}-{last} (--ports needs two free ports)")]
    NoFreePort { first: u16, last: u16 },
    #[error("startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The CurveZMQ keys of an encrypted controller: its own, and one pair for each side, so that a
/// holder of the engine file cannot connect as a client, nor the reverse.
struct Keys {
    server: CurveKeys,
    client: CurveKeys,
    engine: CurveKeys,
}

impl Keys {
    fn generate() -> Result<Self, NetError> {
        Ok(Keys {
            server: CurveKeys::generate()?,
            client: CurveKeys::generate()?,
            engine: CurveKeys::generate()?,
        })
    }

    /// The server side of the link that admits `side`'s key only.
    fn server_for(&self, side: &CurveKeys) -> Security {
        Security::Server {
            keys: self.server.clone(),
            clients: vec![side.public],
        }
    }
}

/// The ports the two links bind: OS-chosen, or the next free ones of a range.
struct Ports {
    range: Option<(u16, u16)>,
    next: u16,
}

impl Ports {
    fn new(range: Option<(u16, u16)>) -> Self {
        Ports {
            range,
            next: range.map_or(0, |(first, _)| first),
        }
    }

    /// Binds with `bind` on `host` at the next free port (or one the OS chooses).
    async fn bind<T, F, Fut>(&mut self, host: &str, bind: F) -> Result<T, ControllerError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, NetError>>,
    {
        let Some((first, last)) = self.range else {
            return Ok(bind(format!("tcp://{host}:0")).await?);
        };
        while self.next != 0 && self.next <= last {
            let port = self.next;
            self.next = port.checked_add(1).unwrap_or(0);
            match bind(format!("tcp://{host}:{port}")).await {
                Ok(bound) => return Ok(bound),
                Err(error) if error.is_address_in_use() => {
                    tracing::debug!(port, "port in use; trying the next");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(ControllerError::NoFreePort { first, last })
    }
}

/// The signature scheme written in the security files.
const SIGNATURE_SCHEME: &str = "hmac-sha256";

/// Runs a controller for `options.profile` until `shutdown` resolves.
///
/// Creates the profile's folders, opens `tasks.db`, binds the client and engine ROUTERs on
/// OS-chosen ports with a fresh random key, and only then writes the two security files. When
/// `shutdown` resolves it asks every live engine to shut down, waits up to 2 s for their
/// answers, fails the requests still in flight, closes the database and removes the security
/// files.
pub async fn run(
    options: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let encrypted = options.encrypted();
    let profile = options.profile;
    let result_limit = options.result_limit;
    let max_task_deaths = options.max_task_deaths;
    profile.create()?;
    let check = profile.clone();
    tokio::task::spawn_blocking(move || files::check_not_running(&check)).await??;
    let db = db::TaskDb::open(&profile.tasks_db())?;

    // A uuid4, as jupyter_client makes kernel keys: 122 random bits.
    let key = uuid::Uuid::new_v4().to_string();
    let session = Session::new(key.as_bytes(), "parallax-controller");
    let host = files::endpoint_host(&options.ip);
    let mut ports = Ports::new(options.ports);
    let client_stats = LinkStats::new("controller client link");
    let engine_stats = LinkStats::new("controller engine link");
    let client_packs = PackPeers::default();
    let engine_packs = PackPeers::default();
    let limits = Limits::data(options.max_message_size);
    let keys = encrypted.then(Keys::generate).transpose()?;
    let (client_security, engine_security) = match &keys {
        Some(keys) => (keys.server_for(&keys.client), keys.server_for(&keys.engine)),
        None => (Security::Null, Security::Null),
    };
    let (client_bound, clients_out, clients_in) = ports
        .bind(&host, |endpoint| {
            let (session, stats) = (session.clone(), client_stats.clone());
            let (packs, security) = (client_packs.clone(), client_security.clone());
            async move {
                let packing = Packing::To(packs);
                bind_router(&endpoint, session, stats, packing, limits, &security).await
            }
        })
        .await?;
    let (engine_bound, engines_out, engines_in) = ports
        .bind(&host, |endpoint| {
            let (session, stats) = (session.clone(), engine_stats.clone());
            let (packs, security) = (engine_packs.clone(), engine_security.clone());
            async move {
                let packing = Packing::To(packs);
                bind_router(&endpoint, session, stats, packing, limits, &security).await
            }
        })
        .await?;

    let ip = options.ip.clone();
    let (client_host, advertised) =
        tokio::task::spawn_blocking(move || files::advertised_hosts(&ip)).await?;
    let engine_host = options
        .location
        .as_deref()
        .map_or(advertised, files::endpoint_host);
    let file = |bound: &str,
                host: &str,
                side: Option<&CurveKeys>|
     -> Result<ControllerFile, ControllerError> {
        let port = files::port_of(bound).ok_or_else(|| ControllerError::NoPort {
            endpoint: bound.to_owned(),
        })?;
        let server = keys.as_ref().map(|keys| z85(&keys.server.public));
        Ok(ControllerFile {
            url: format!("tcp://{host}:{port}"),
            key: key.clone(),
            signature_scheme: SIGNATURE_SCHEME.into(),
            profile: profile.name().to_owned(),
            controller_pid: std::process::id(),
            max_message_size: Some(options.max_message_size),
            curve_serverkey: server,
            curve_publickey: side.map(|pair| z85(&pair.public)),
            curve_secretkey: side.map(|pair| z85(&pair.secret)),
        })
    };
    let client_file = file(
        &client_bound,
        &client_host,
        keys.as_ref().map(|k| &k.client),
    )?;
    let engine_file = file(
        &engine_bound,
        &engine_host,
        keys.as_ref().map(|k| &k.engine),
    )?;
    tracing::info!(
        profile = profile.name(),
        client = %client_file.url,
        engine = %engine_file.url,
        encrypted = keys.is_some(),
        "controller listening"
    );
    let security = files::SecurityFiles::write(&profile, client_file, engine_file)?;

    let links = hub::Links {
        session,
        clients_out,
        clients_in,
        client_stats,
        client_packs,
        engines_out,
        engines_in,
        engine_stats,
        engine_packs,
    };
    let policy = hub::Policy {
        result_limit,
        max_task_deaths,
    };
    let db = hub::Hub::new(profile.name().to_owned(), links, db, policy)
        .run(shutdown)
        .await;
    db.close().await;
    drop(security);
    // zmq.rs `send` only queues: give the last replies a moment to reach the wire before the
    // caller exits.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tracing::info!(profile = profile.name(), "controller stopped");
    Ok(())
}
