//! scan-api: the reference backend for Trivy container-scan results, cached with tiercache.
//!
//! It stores Trivy JSON reports in PostgreSQL or an embedded SQLite file and serves scan
//! results, vulnerability lists, image metadata and an expensive insights view. Every read
//! route's responses are cached by tiercache-axum's response-cache layer, and the insights
//! computation with `#[tiercache::cached]`; every write purges the tags of what it changed
//! before it answers, so no endpoint serves data older than an acknowledged write.
//!
//! The cache runs in one of three modes ([`tiercache::Mode`], chosen by `cache_setup` and
//! reported by `/health` and `/api/cache/health`):
//! - `redis`: shared by every instance, with an in-process tier in front; while Redis is away
//!   the service answers from the database (`X-Cache: BYPASS`) and reconnects by itself. One
//!   Redis server (`REDIS_URL`) or a Redis Cluster (`REDIS_CLUSTER_URLS`, comma-separated seed
//!   nodes).
//! - `standalone`: the in-process tier alone, for one instance (it hears of its own writes
//!   only); the default on a machine without Redis and without `REDIS_URL`.
//! - `disabled`: every read from the database.
//!
//! # Operating it
//! `GET /metrics` serves the cache's metrics in the Prometheus format (`tiercache_axum::metrics`,
//! whose recorder `main` installs before building the cache); every request's span records its
//! cache outcome in the field `cache`; an alert evaluator (`ALERT_*` settings, see `config`)
//! lists active alerts in `GET /api/cache/health` and as `tiercache_alert_active`; the rules
//! for a Prometheus server are in `deploy/prometheus/alerts.yml`.
//!
//! # Layout
//! - `config`: command line and environment (clap); `cache_setup`: which cache mode those
//!   settings give, and the cache built from them.
//! - `error`: [`error::AppError`] and its HTTP mapping.
//! - `model`: domain types; `trivy`: report parsing and validation; `synth`: synthetic reports.
//! - `store`: the database layer (sqlx), the source of truth.
//! - `cache_policy`: categories, TTLs, tags and route policies, and which writes purge what, in
//!   one table.
//! - `routes`: one file per resource; `ingest`: bulk seeding and importing for the CLI.
//! - `openapi`: the OpenAPI document of every route (`GET /api/openapi.json`).
//! - `warm`: pre-loading the common reads (`scan-api cache warm`, `CACHE_WARM_ON_START`);
//!   `cache_cli`: the `scan-api cache` subcommands.

pub mod cache_cli;
pub mod cache_policy;
pub mod cache_setup;
pub mod config;
pub mod error;
pub mod ingest;
pub mod model;
pub mod openapi;
pub mod routes;
pub mod store;
pub mod synth;
pub mod trivy;
pub mod warm;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tiercache::Cache;
use tiercache_axum::alerts::{AlertConfig, Alerts};
use tiercache_axum::{admin, dashboard};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::error::AppError;
use crate::store::Store;

/// What every handler shares. Cheap to clone: both handles are `Arc`s inside.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The cache.
    pub cache: Cache,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Largest response body cached, in bytes; larger ones stream through uncached.
    pub cache_max_body: usize,
}

/// The whole HTTP API: the resources, the cache admin routes and dashboard, `/metrics`, JSON
/// errors everywhere; cache alerts with the default thresholds.
pub fn app(state: AppState, admin_token: Option<String>) -> Router {
    app_with_alerts(state, admin_token, AlertConfig::default())
}

/// [`app`] with the given alert thresholds. Starts the alert evaluator (so it needs a tokio
/// runtime) and mounts `GET /metrics` on the process's Prometheus recorder (installed here if
/// `main` did not: install it before building the cache, whose metrics handles are taken then).
pub fn app_with_alerts(
    state: AppState,
    admin_token: Option<String>,
    alerts: AlertConfig,
) -> Router {
    let mut admin = admin::Admin::new(state.cache.clone(), admin_token);
    match Alerts::spawn(state.cache.clone(), alerts) {
        Ok(alerts) => admin = admin.alerts(alerts),
        Err(e) => tracing::error!(error = %e, "cache alerts are off"),
    }
    let metrics = match tiercache_axum::metrics::install() {
        Ok(handle) => tiercache_axum::metrics::router(handle, state.cache.clone()),
        Err(e) => {
            tracing::error!(error = %e, "GET /metrics is off");
            Router::new()
        }
    };
    let limit = state.body_limit;
    let policies = cache_policy::Policies::new(state.cache.clone(), state.cache_max_body);
    Router::new()
        .merge(routes::scans::router(&policies))
        .merge(routes::vulnerabilities::router(&policies))
        .merge(routes::images::router(&policies))
        .merge(routes::insights::router(&policies))
        .merge(routes::health::router())
        .merge(routes::openapi::router())
        .merge(admin::router(admin))
        .merge(metrics)
        .merge(dashboard::router())
        .fallback(|| async { AppError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(json_errors))
        // 5xx causes are logged once where they happen (AppError); a 503 from the cache health
        // route while Redis is away is an answer, not a failure worth an ERROR line each time.
        // Each request's span records its cache outcome (HIT, MISS, BYPASS) in `cache`, filled
        // by the response-cache layer (`tiercache_axum::response_cache::SPAN_FIELD`).
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<Body>| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        uri = %req.uri(),
                        version = ?req.version(),
                        cache = tracing::field::Empty,
                    )
                })
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        .with_state(state)
}

/// Turns the plain-text rejections of axum's extractors (bad query string, wrong method, …)
/// into the API's JSON errors, so every error has the same shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // A compressed body cannot be read as text here (the client asked for gzip): left as it is.
    let compressed = response.headers().contains_key(CONTENT_ENCODING);
    if !(status.is_client_error() || status.is_server_error()) || is_json || compressed {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let body = serde_json::json!({ "error": message }).to_string();
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %message, "internal error outside a handler");
    }
    Response::from_parts(parts, Body::from(body)).into_response()
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
