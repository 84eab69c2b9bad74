//! The REST API under `/api/`. Every failure answers `{"error": "..."}` with a status that says
//! whose fault it is: 400 bad input, 404 unknown profile, 409 wrong state (starting a running
//! cluster, stopping a stopped one, an operation already in progress), 500 a cluster that did
//! not come up (which the launcher has stopped again, so nothing is left half-started).
//!
//! A start, stop or scale answers only once the event stream carries the cluster's new state,
//! and says under which `version` (see `events`); `GET /api/clusters` sends the version it
//! began under in the header `x-parallax-version` (and the server's run in
//! `x-parallax-server`), so the page can tell an answer older than what it shows.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parallax_client::ControllerClient;
use parallax_launcher::{ClusterStatus, LaunchError};
use parallax_wire::profile::Profile;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{events, tasks, App};

/// How long a start may take before the launcher gives up and stops the cluster.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop waits before killing what is left.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/clusters", get(list).post(create))
        .route("/api/clusters/{profile}", get(one).patch(scale))
        .route("/api/clusters/{profile}/start", post(start))
        .route("/api/clusters/{profile}/stop", post(stop))
        .route("/api/clusters/{profile}/engines", get(engines))
        .route("/api/clusters/{profile}/tasks", get(recent_tasks))
        .route("/api/events", get(events::stream))
}

/// A failed request: its status and message.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::CONFLICT, message.into())
}

impl From<LaunchError> for ApiError {
    fn from(error: LaunchError) -> Self {
        let status = match error {
            LaunchError::AlreadyRunning { .. }
            | LaunchError::NotRunning { .. }
            | LaunchError::FixedSize { .. } => StatusCode::CONFLICT,
            LaunchError::NoEngines { .. } => StatusCode::BAD_REQUEST,
            // The profile's settings (cluster.toml) or its hosts are the problem.
            LaunchError::Config { .. }
            | LaunchError::Invalid { .. }
            | LaunchError::LoopbackController { .. }
            | LaunchError::Host { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, error.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Marks a profile busy for the life of the guard, so that two operations on one cluster do
/// not interleave.
struct Busy {
    app: Arc<App>,
    name: String,
}

impl Busy {
    fn claim(app: &Arc<App>, name: &str) -> Result<Busy, ApiError> {
        let mut busy = app
            .busy
            .lock()
            .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned".into()))?;
        if !busy.insert(name.to_owned()) {
            return Err(conflict(format!(
                "profile {name:?} is busy: another start, stop or scale is in progress"
            )));
        }
        Ok(Busy {
            app: app.clone(),
            name: name.to_owned(),
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.app.busy.lock() {
            busy.remove(&self.name);
        }
    }
}

/// A profile that exists under `$PARALLAX_DIR`, or 404.
fn existing(app: &App, name: &str) -> Result<Profile, ApiError> {
    Profile::in_dir(&app.root, name)
        .ok()
        .filter(|p| p.dir().is_dir())
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown profile {name:?}")))
}

/// The JSON object in a request body, or 400.
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("malformed JSON body: {e}"))),
    }
}

/// The engine count `n` of a body: an integer from 1 to `max_engines`, or 400.
fn engine_count(app: &App, body: &serde_json::Map<String, Value>) -> Result<usize, ApiError> {
    let max = app.max_engines;
    let Some(value) = body.get("n") else {
        return Err(bad("missing \"n\": the number of engines"));
    };
    let n = value
        .as_i64()
        .ok_or_else(|| bad(format!("\"n\" must be a whole number, not {value}")))?;
    match usize::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "\"n\" must be between 1 and {max} (--max-engines), not {n}"
        ))),
    }
}

/// The header that carries the version a list began under.
const VERSION_HEADER: HeaderName = HeaderName::from_static("x-parallax-version");
/// The header that carries the server's run id.
const SERVER_HEADER: HeaderName = HeaderName::from_static("x-parallax-server");

async fn list(State(app): State<Arc<App>>) -> ApiResult {
    // Read before listing: an operation that ends while the list is made raises the version,
    // so the page knows this list may be older than that operation.
    let version = app.live.version();
    let summaries = parallax_launcher::list(&app.root).await;
    let mut response = Json(summaries).into_response();
    let headers = response.headers_mut();
    headers.insert(VERSION_HEADER, HeaderValue::from(version));
    if let Ok(server) = HeaderValue::from_str(&app.live.server()) {
        headers.insert(SERVER_HEADER, server);
    }
    Ok(response)
}

async fn one(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    existing(&app, &name)?;
    let summaries = parallax_launcher::list(&app.root).await;
    let summary = summaries
        .into_iter()
        .find(|s| s.profile == name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown profile {name:?}")))?;
    Ok(Json(summary).into_response())
}

async fn create(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let body = body_object(&body)?;
    let name = body
        .get("profile")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing \"profile\": the profile's name"))?;
    let profile = Profile::in_dir(&app.root, name).map_err(|e| bad(e.to_string()))?;
    let n = engine_count(&app, &body)?;
    let response = start_profile(&app, profile, n).await?;
    Ok((StatusCode::CREATED, response).into_response())
}

async fn start(State(app): State<Arc<App>>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let profile = existing(&app, &name)?;
    let body = body_object(&body)?;
    let n = engine_count(&app, &body)?;
    Ok(start_profile(&app, profile, n).await?.into_response())
}

async fn start_profile(
    app: &Arc<App>,
    profile: Profile,
    n: usize,
) -> Result<Json<Value>, ApiError> {
    let _busy = Busy::claim(app, profile.name())?;
    if let ClusterStatus::Running(running) = parallax_launcher::state::status(&profile) {
        return Err(conflict(format!(
            "the cluster of profile {:?} is already running ({} engines)",
            profile.name(),
            running.n
        )));
    }
    // The profile's cluster.toml says what to start (launcher, hosts...); the page sets n.
    let flags = parallax_launcher::config::Settings {
        n: Some(n),
        timeout: Some(START_TIMEOUT.as_secs_f64()),
        ..Default::default()
    };
    let options = parallax_launcher::config::resolve(profile.clone(), app.exe.clone(), flags)?;
    let started = parallax_launcher::start_daemon(&options).await;
    // Published whether or not it came up: a failed start has stopped what it began.
    let version = app.live.changed(&profile).await;
    let engines = started?;
    tracing::info!(
        profile = profile.name(),
        n,
        "cluster started from the dashboard"
    );
    Ok(Json(json!({
        "profile": profile.name(),
        "state": "running",
        "n": n,
        "engines": engines.len(),
        "ids": engines.iter().map(|e| e.id).collect::<Vec<_>>(),
        "version": version,
    })))
}

async fn stop(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    let profile = existing(&app, &name)?;
    let _busy = Busy::claim(&app, &name)?;
    if parallax_launcher::state::status(&profile) == ClusterStatus::Stopped {
        return Err(conflict(format!(
            "the cluster of profile {name:?} is not running"
        )));
    }
    let stopped = parallax_launcher::stop(&profile, STOP_GRACE).await;
    let version = app.live.changed(&profile).await;
    let stopped = stopped?;
    Ok(Json(json!({
        "profile": name,
        "state": "stopped",
        "processes": stopped.pids().len(),
        "version": version,
    }))
    .into_response())
}

async fn scale(State(app): State<Arc<App>>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let profile = existing(&app, &name)?;
    let body = body_object(&body)?;
    let n = engine_count(&app, &body)?;
    let _busy = Busy::claim(&app, &name)?;
    if !matches!(
        parallax_launcher::state::status(&profile),
        ClusterStatus::Running(_)
    ) {
        return Err(conflict(format!(
            "the cluster of profile {name:?} is not running: start it first"
        )));
    }
    let scaled = parallax_launcher::scale(&profile, n).await;
    let version = app.live.changed(&profile).await;
    let state = scaled?;
    Ok(Json(json!({
        "profile": name,
        "state": "running",
        "n": state.n,
        "engines": state.engine_pids.len(),
        "version": version,
    }))
    .into_response())
}

async fn engines(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    let profile = existing(&app, &name)?;
    if !matches!(
        parallax_launcher::state::status(&profile),
        ClusterStatus::Running(_)
    ) {
        return Ok(Json(json!([])).into_response());
    }
    let client = ControllerClient::connect(&profile, Duration::from_secs(5))
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let engines = client
        .engines()
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(events::engine_rows(&engines)).into_response())
}

#[derive(Deserialize)]
struct TasksQuery {
    limit: Option<String>,
}

async fn recent_tasks(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(query): Query<TasksQuery>,
) -> ApiResult {
    let profile = existing(&app, &name)?;
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "limit must be between 1 and 10000, not {text:?}"
                )))
            }
        },
    };
    let rows = tasks::recent(&profile, limit)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(rows).into_response())
}
