//! The Clusters page: `parallax dashboard` serves a web page and a REST API to start, scale and
//! stop the clusters of every profile under `$PARALLAX_DIR`, and streams their engines live.
//!
//! # Layout
//!
//! - this module: [`DashboardOptions`], [`serve`], the token check every request passes.
//! - `api`: the REST handlers (`/api/clusters…`), errors as `{"error": "..."}` with a 4xx/5xx.
//! - `events`: one task polls every profile (and each running cluster's controller) every
//!   500 ms and publishes a versioned snapshot when it changed; an operation that ends publishes
//!   the profile's new state under the next version, which no older poll may overwrite;
//!   `GET /api/events` streams the snapshots (server-sent events).
//! - `tasks`: recent tasks, read from the profile's `tasks.db` (read-only; the controller
//!   writes it).
//! - `static/`: the page (HTML, CSS, JS) compiled into the binary; no CDN, no build step.
//!
//! The token works like Jupyter's: random unless given, required on every request as `?token=`,
//! `Authorization: token T`, or the cookie the server sets when a request carries a valid
//! `?token=`. Every path in the page is relative, so the page also works behind a proxy that
//! mounts it elsewhere (the Jupyter server extension mounts it at `/parallax/`).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

mod api;
mod events;
mod tasks;

/// The name of the cookie that carries the token.
pub const COOKIE: &str = "parallax-dashboard-token";

/// Why the dashboard could not run.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the dashboard server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Profile(#[from] parallax_wire::profile::ProfileError),
}

/// How to run the dashboard.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// The address to listen on (127.0.0.1 unless told otherwise).
    pub ip: String,
    /// The port (0: one the OS picks).
    pub port: u16,
    /// The token every request must carry (random when `None`).
    pub token: Option<String>,
    /// The `parallax` binary that runs clusters' supervisors, controllers and engines.
    pub exe: PathBuf,
    /// The most engines a cluster may be started or scaled to.
    pub max_engines: usize,
}

/// What every handler shares.
pub(crate) struct App {
    pub token: String,
    pub exe: PathBuf,
    pub max_engines: usize,
    /// `$PARALLAX_DIR`.
    pub root: PathBuf,
    /// Profiles with a start, stop or scale in progress. A std `Mutex`: held only to insert or
    /// remove a name, never across an `.await`.
    pub busy: Mutex<HashSet<String>>,
    /// The latest snapshot of every cluster (see `events`).
    pub live: Arc<events::Live>,
    /// Turns true when the server shuts down, so that event streams end.
    pub stopping: watch::Receiver<bool>,
}

/// Serves the dashboard until `shutdown` resolves. Prints
/// `Parallax dashboard: http://IP:PORT/?token=TOKEN` on stdout once listening.
pub async fn serve(
    options: DashboardOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DashboardError> {
    let root = parallax_wire::profile::parallax_dir()?;
    let token = options
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let addr = format!("{}:{}", options.ip, options.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| DashboardError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(DashboardError::Serve)?;

    let (stop_tx, stopping) = watch::channel(false);
    let live = events::spawn_poller(root.clone(), stopping.clone());
    let app = Arc::new(App {
        token: token.clone(),
        exe: options.exe,
        max_engines: options.max_engines,
        root,
        busy: Mutex::new(HashSet::new()),
        live,
        stopping,
    });
    let router = router(app);

    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "Parallax dashboard: http://{host}:{}/?token={token}",
            local.port()
        );
        let _ = out.flush();
    }
    tracing::info!(%local, "dashboard listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
        .map_err(DashboardError::Serve)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
        .merge(api::routes())
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

async fn page() -> Response {
    static_file(
        "text/html; charset=utf-8",
        include_str!("../static/index.html"),
    )
}

async fn script() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    )
}

async fn style() -> Response {
    static_file(
        "text/css; charset=utf-8",
        include_str!("../static/style.css"),
    )
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Where a request's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenSource {
    Query,
    Header,
    Cookie,
}

/// The source of a valid token in the request, if it carries one.
fn valid_token(token: &str, request: &Request) -> Option<TokenSource> {
    let query = request.uri().query().unwrap_or("");
    let from_query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(key, value)| key == "token" && value == token);
    if from_query {
        return Some(TokenSource::Query);
    }
    let headers = request.headers();
    let from_header = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.strip_prefix("token ")
                .or_else(|| v.strip_prefix("Token "))
                .is_some_and(|t| t.trim() == token)
        });
    if from_header {
        return Some(TokenSource::Header);
    }
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(key, value)| key == COOKIE && value == token);
    from_cookie.then_some(TokenSource::Cookie)
}

/// Lets a request through only with the token; a valid `?token=` also sets the cookie.
async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(source) = valid_token(&app.token, &request) else {
        return api::error(
            StatusCode::FORBIDDEN,
            "a valid token is required: open the URL `parallax dashboard` printed (…/?token=…)",
        );
    };
    let mut response = next.run(request).await;
    if source == TokenSource::Query {
        let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", app.token);
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(axum::body::Body::empty()).expect("request")
    }

    /// A request's uri and headers, and where a valid token is found in it.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<TokenSource>,
    );

    #[test]
    fn the_token_is_taken_from_query_header_or_cookie() {
        let t = "abc";
        let cases: &[Case] = &[
            ("/", &[], None),
            ("/?token=abc", &[], Some(TokenSource::Query)),
            ("/?x=1&token=abc", &[], Some(TokenSource::Query)),
            ("/?token=abcd", &[], None),
            (
                "/",
                &[("authorization", "token abc")],
                Some(TokenSource::Header),
            ),
            ("/", &[("authorization", "token xyz")], None),
            ("/", &[("authorization", "Bearer abc")], None),
            (
                "/",
                &[("cookie", "a=1; parallax-dashboard-token=abc")],
                Some(TokenSource::Cookie),
            ),
            ("/", &[("cookie", "parallax-dashboard-token=ab")], None),
        ];
        for (uri, headers, want) in cases {
            assert_eq!(
                valid_token(t, &request(uri, headers)),
                *want,
                "{uri} {headers:?}"
            );
        }
    }
}
