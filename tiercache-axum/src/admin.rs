//! Operational routes for a [`Cache`]: stats, health, recent invalidations, clear, and key
//! inspection.
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `GET /api/cache/stats` | none | mode, hits, misses, hit rate, memory (`memory_used_bytes`, `maxmemory_bytes`, `maxmemory_policy`), evictions, values too large to store (`oversized`), writes refused for memory (`oom_write_failures`), keys, uptime, per-category figures |
//! | `GET /api/cache/health` | none | 200 `{"status":"up",…}` or 503 `{"status":"down",…}`, with the mode and the active `alerts` (below) |
//! | `GET /api/cache/invalidations?limit=` | none (names: admin) | `{"instance": "<this instance's id>", "named": bool, "invalidations": [...]}`: the last `limit` (default 50, at most 100) invalidations made or heard here, newest first; each with `target_count`, and its `targets` (keys, tags, patterns) only for a request with the admin token |
//! | `POST /api/cache/clear` | admin | removes this namespace's keys only; logs who, when, how many |
//! | `GET /api/cache/keys?pattern=&limit=` | admin | keys by SCAN, the pattern confined to the namespace |
//! | `GET /api/cache/keys/{key}` | admin | a key's TTL and stored size |
//! | `DELETE /api/cache/keys/{key}` | admin | removes a key |
//!
//! Health depends on the cache's [`Mode`]; every answer has `status`, `mode`, `local` (the
//! in-process tier's figures, with `live`: whether it serves now; `null` without a tier) and
//! `alerts`: the alerts active now (see [`crate::alerts`]), each
//! `{"name", "since_unix_ms", "value", "threshold", "message"}`; an empty list when none is, or
//! when no evaluator is attached ([`Admin::alerts`]). Alerts never change the status: health
//! stays 200 while Redis answers, whatever is alerting.
//!
//! | mode | answer |
//! |---|---|
//! | `redis` | 200 `"up"` with `latency_ms` (a PING) while Redis answers; 503 `"down"` with `detail` and `error` while it is away (reads go to the source) |
//! | `standalone` | 200 `"up"`: the cache works without Redis (in process, one instance) |
//! | `disabled` | 503 `"down"`: nothing is cached |
//!
//! Admin routes need `Authorization: Bearer <token>`: 401 without it, 403 with a wrong token,
//! and 403 for everyone when no token is configured. The comparison is constant-time. Errors are
//! JSON `{"error": "..."}`.
//!
//! `maxmemory_bytes` is Redis's `maxmemory`: 0 means no limit (Redis's own way to say it), and
//! `null` that Redis did not answer. Each invalidation is `{"at": "<RFC 3339>", "at_unix_ms",
//! "kind": "key"|"tag"|"pattern"|"clear", "targets": [...], "instance": "<id>", "own": bool}`
//! (see [`tiercache::InvalidationRecord`]); a cache without an in-process tier does not
//! subscribe to the invalidation channel and lists its own only. Listing and inspecting keys read Redis, so without it (standalone or
//! disabled) they answer 409; clearing and deleting a key work in every mode.
//!
//! With the `openapi` feature, [`openapi()`] describes these routes as an OpenAPI document
//! (`admin/openapi.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tiercache::{Cache, Mode};

use crate::alerts::Alerts;
#[cfg(feature = "openapi")]
mod openapi;
#[cfg(feature = "openapi")]
pub use openapi::{AdminApi, SECURITY_SCHEME, openapi};

/// Default `limit` of `GET /api/cache/keys`.
pub const DEFAULT_KEYS_LIMIT: usize = 100;
/// Largest accepted `limit` of `GET /api/cache/keys`.
pub const MAX_KEYS_LIMIT: usize = 1000;

/// Default `limit` of `GET /api/cache/invalidations`.
pub const DEFAULT_INVALIDATIONS_LIMIT: usize = 50;

/// What the admin routes need: the cache, the admin token and, if any, the alert evaluator.
#[derive(Clone)]
pub struct Admin {
    cache: Cache,
    /// `None`: admin routes answer 403 to everyone.
    token: Option<Arc<str>>,
    /// Listed by the health route; `None`: no alerts.
    alerts: Option<Alerts>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Routes for `cache`, with admin routes open to holders of `token` (an empty token counts
    /// as none).
    pub fn new(cache: Cache, token: Option<String>) -> Self {
        Self {
            cache,
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            alerts: None,
        }
    }

    /// Lists `alerts`' active alerts in `GET /api/cache/health`.
    #[must_use]
    pub fn alerts(mut self, alerts: Alerts) -> Self {
        self.alerts = Some(alerts);
        self
    }
}

/// The routes, ready to merge into any application router.
pub fn router<S: Clone + Send + Sync + 'static>(admin: Admin) -> Router<S> {
    Router::new()
        .route("/api/cache/stats", get(stats))
        .route("/api/cache/health", get(health))
        .route("/api/cache/invalidations", get(invalidations))
        .route("/api/cache/clear", post(clear))
        .route("/api/cache/keys", get(list_keys))
        .route("/api/cache/keys/{key}", get(show_key).delete(delete_key))
        .with_state(admin)
}

/// A JSON error response.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A refused request: its status and message, answered as JSON.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

/// Checks the bearer token; `Err` is the response to send.
fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(expected) = &admin.token else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "admin routes are disabled: ADMIN_TOKEN is not set",
        ));
    };
    // The scheme is case-insensitive (RFC 7235).
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header",
        ));
    };
    // Digests first, so that neither the comparison's time nor its early exit on a length
    // mismatch says anything about the token.
    let (presented, expected) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    if bool::from(presented.as_slice().ct_eq(expected.as_slice())) {
        Ok(())
    } else {
        Err(Refusal::new(StatusCode::FORBIDDEN, "invalid admin token"))
    }
}

async fn stats(State(admin): State<Admin>) -> Response {
    let s = admin.cache.stats().await;
    Json(json!({
        "mode": s.mode,
        "total_keys": s.keys,
        "memory_used": s.used_memory_human,
        "memory_used_bytes": s.used_memory_bytes,
        "maxmemory_bytes": s.maxmemory_bytes,
        "maxmemory_policy": s.maxmemory_policy,
        "hits": s.hits,
        "local_hits": s.local_hits,
        "misses": s.misses,
        "hit_rate": s.hit_rate,
        "evictions": s.evicted_keys,
        "sets": s.sets,
        "deletes": s.deletes,
        "errors": s.errors,
        "timeouts": s.timeouts,
        "oversized": s.oversized,
        "oom_write_failures": s.oom_write_failures,
        "loader_runs": s.loader_runs,
        "connected": s.connected,
        "uptime": s.uptime.as_secs_f64(),
        "categories": s.categories,
        "local": s.local,
    }))
    .into_response()
}

async fn health(State(admin): State<Admin>) -> Response {
    let cache = &admin.cache;
    let mode = cache.mode();
    let answer = match mode {
        Mode::Standalone => Ok(json!({
            "status": "up",
            "detail": "in-process cache without redis: one instance, which hears of its own writes only",
        })),
        Mode::Disabled => Err(json!({
            "status": "down",
            "detail": "the cache is disabled; requests are served from the database",
        })),
        _ => match cache.ping().await {
            Ok(rtt) => Ok(json!({
                "status": "up",
                "latency_ms": rtt.as_secs_f64() * 1e3,
            })),
            Err(e) => Err(json!({
                "status": "down",
                "detail": "redis is unavailable; requests are served from the database",
                "error": e.to_string(),
            })),
        },
    };
    // The tier's figures (no Redis call), read after the PING so that `live` is no older.
    let local = cache.local_stats();
    let (status, mut body) = match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    };
    body["mode"] = json!(mode.as_str());
    body["local"] = json!(local);
    body["alerts"] = json!(
        admin
            .alerts
            .as_ref()
            .map(Alerts::active)
            .unwrap_or_default()
    );
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct InvalidationsQuery {
    limit: Option<String>,
}

async fn invalidations(
    State(admin): State<Admin>,
    headers: HeaderMap,
    query: Result<Query<InvalidationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // What was invalidated is named only to holders of the admin token: response-cache keys
    // hold request paths and query strings, and tags the application's names (as key listing
    // needs the token). Without the header the list is open, with counts in place of names; a
    // header with a wrong token is refused like on any admin route.
    let named = if headers.contains_key(header::AUTHORIZATION) {
        if let Err(refusal) = authorize(&admin, &headers) {
            return refusal.into_response();
        }
        true
    } else {
        false
    };
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "invalid query string");
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_INVALIDATIONS_LIMIT,
        Some(Ok(n)) if (1..=tiercache::HISTORY_LEN).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`limit` must be a whole number from 1 to {}",
                    tiercache::HISTORY_LEN
                ),
            );
        }
    };
    let records: Vec<serde_json::Value> = admin
        .cache
        .recent_invalidations(limit)
        .into_iter()
        .map(|record| {
            let count = record.targets.len();
            let mut v = json!(record);
            v["target_count"] = json!(count);
            if !named && let Some(fields) = v.as_object_mut() {
                fields.remove("targets");
            }
            v
        })
        .collect();
    Json(json!({
        "instance": admin.cache.instance_id(),
        "named": named,
        "invalidations": records,
    }))
    .into_response()
}

/// Refuses key listing and inspection, which read Redis, when the cache does not use it.
fn needs_redis(admin: &Admin) -> Result<(), Refusal> {
    let why = match admin.cache.mode() {
        Mode::Standalone => {
            "this cache is standalone (in process, without redis): its keys can be cleared and \
             deleted, not listed or inspected"
        }
        Mode::Disabled => "the cache is disabled: it holds no keys",
        _ => return Ok(()),
    };
    Err(Refusal::new(StatusCode::CONFLICT, why))
}

async fn clear(State(admin): State<Admin>, request: Request) -> Response {
    if let Err(denied) = authorize(&admin, request.headers()) {
        return denied.into_response();
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    match admin.cache.clear().await {
        Ok(removed) => {
            tracing::warn!(
                who = %format!("admin token holder at {peer} ({agent})"),
                when = %chrono::Utc::now().to_rfc3339(),
                namespace = admin.cache.key_space().prefix(),
                removed,
                "cache cleared by an administrator"
            );
            Json(json!({ "removed": removed, "namespace": admin.cache.key_space().prefix() }))
                .into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis is unavailable, the clear will be applied when it returns: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct KeysQuery {
    pattern: Option<String>,
    limit: Option<String>,
}

async fn list_keys(
    State(admin): State<Admin>,
    headers: HeaderMap,
    query: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied.into_response();
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "invalid query string");
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_KEYS_LIMIT,
        Some(Ok(n)) if (1..=MAX_KEYS_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`limit` must be a whole number from 1 to {MAX_KEYS_LIMIT}"),
            );
        }
    };
    let glob = query.pattern.unwrap_or_else(|| "*".to_owned());
    if glob.len() > 256 {
        return error(
            StatusCode::BAD_REQUEST,
            "`pattern` is longer than 256 characters",
        );
    }
    if let Err(refused) = needs_redis(&admin) {
        return refused.into_response();
    }
    let prefix = admin.cache.key_space().prefix().to_owned();
    // A pattern may be given with or without the namespace prefix; either way it is confined.
    let relative = glob.strip_prefix(prefix.as_str()).unwrap_or(&glob);
    let pattern = admin.cache.key_space().glob(relative);
    match admin.cache.keys(&pattern, limit).await {
        Ok(keys) => Json(json!({
            "pattern": pattern.as_str(),
            "count": keys.len(),
            "keys": keys,
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis is unavailable: {e}"),
        ),
    }
}

fn check_key(admin: &Admin, key: &str) -> Result<(), Refusal> {
    if admin.cache.key_space().contains(key) {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "key {key:?} is outside this cache's namespace `{}`",
                admin.cache.key_space().prefix()
            ),
        ))
    }
}

async fn show_key(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&admin, &headers)
        .and_then(|()| check_key(&admin, &key))
        .and_then(|()| needs_redis(&admin))
    {
        return denied.into_response();
    }
    let exists = admin.cache.stored_size(&key).await;
    let ttl = admin.cache.raw_ttl(&key).await;
    match (exists, ttl) {
        (Ok(0), _) => error(StatusCode::NOT_FOUND, format!("no such key: {key}")),
        (Ok(size), Ok(ttl)) => Json(json!({
            "key": key,
            "size_bytes": size,
            "ttl_ms": ttl.map(|t| t.as_millis() as u64),
        }))
        .into_response(),
        (Err(e), _) | (_, Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis is unavailable: {e}"),
        ),
    }
}

async fn delete_key(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&admin, &headers).and_then(|()| check_key(&admin, &key)) {
        return denied.into_response();
    }
    match admin.cache.invalidate_raw(&key).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no such key: {key}")),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis is unavailable, the delete will be applied when it returns: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;

    async fn call(
        app: Router,
        method: &str,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = HttpRequest::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn app(token: Option<&str>) -> Router {
        let cache = Cache::builder().enabled(false).build().await.unwrap();
        router(Admin::new(cache, token.map(str::to_owned)))
    }

    #[tokio::test]
    async fn the_token_is_checked_before_anything_else() {
        let a = app(Some("s3cret")).await;
        let (s, body) = call(a.clone(), "POST", "/api/cache/clear", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body["error"].as_str().unwrap().contains("Bearer"));
        assert_eq!(
            call(a.clone(), "POST", "/api/cache/clear", Some("Bearer nope"))
                .await
                .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(a.clone(), "POST", "/api/cache/clear", Some("Basic s3cret"))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        // Authorized (scheme in any case); a disabled cache has nothing to clear.
        let (s, body) = call(a.clone(), "POST", "/api/cache/clear", Some("bearer s3cret")).await;
        assert_eq!((s, body["removed"].as_u64()), (StatusCode::OK, Some(0)));
        let (s, body) = call(
            a.clone(),
            "GET",
            "/api/cache/keys/elsewhere:x",
            Some("Bearer s3cret"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            call(
                a,
                "GET",
                "/api/cache/keys?limit=5000",
                Some("Bearer s3cret")
            )
            .await
            .0,
            StatusCode::BAD_REQUEST
        );
        // No token configured, or an empty one: closed to everyone.
        for token in [None, Some("")] {
            let (s, body) = call(
                app(token).await,
                "POST",
                "/api/cache/clear",
                Some("Bearer "),
            )
            .await;
            assert_eq!(s, StatusCode::FORBIDDEN);
            assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"));
        }
    }

    async fn app_in(mode: Mode, url: &str) -> Router {
        let cache = Cache::builder()
            .mode(mode)
            .url(url)
            .local_capacity(1 << 20)
            .build()
            .await
            .unwrap();
        router(Admin::new(cache, Some("s3cret".into())))
    }

    /// A Redis URL where nothing listens (a port just released).
    fn nothing_there() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("redis://{}", listener.local_addr().unwrap())
    }

    async fn health_in(mode: Mode, url: &str) -> (StatusCode, serde_json::Value) {
        call(app_in(mode, url).await, "GET", "/api/cache/health", None).await
    }

    #[tokio::test]
    async fn health_names_the_mode_and_is_up_only_when_the_cache_works() {
        let redis = tiercache_testkit::RedisServer::start();
        let (s, body) = health_in(Mode::Redis, &redis.url()).await;
        assert_eq!(
            (s, &body["status"], &body["mode"]),
            (StatusCode::OK, &json!("up"), &json!("redis")),
            "{body}"
        );
        assert!(body["latency_ms"].as_f64().is_some(), "{body}");
        assert_eq!(body["alerts"], json!([]), "no evaluator attached: {body}");
        assert!(body["local"]["live"].is_boolean(), "{body}");

        // Redis away: down, and says where the reads go.
        let (s, body) = health_in(Mode::Redis, &nothing_there()).await;
        assert_eq!(
            (s, &body["mode"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("redis"))
        );
        assert_eq!(body["status"], "down");
        assert!(
            body["detail"].as_str().unwrap().contains("database"),
            "{body}"
        );
        assert_eq!(body["local"]["live"], false, "{body}");

        // Standalone: up without any Redis.
        let (s, body) = health_in(Mode::Standalone, &nothing_there()).await;
        assert_eq!(
            (s, &body["status"], &body["mode"]),
            (StatusCode::OK, &json!("up"), &json!("standalone")),
            "{body}"
        );
        assert_eq!(body["local"]["live"], true, "{body}");

        // Disabled: nothing is cached.
        let (s, body) = call(app(None).await, "GET", "/api/cache/health", None).await;
        assert_eq!(
            (s, &body["status"], &body["mode"]),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &json!("down"),
                &json!("disabled")
            )
        );
        assert!(body["local"].is_null(), "{body}");
        assert_eq!(body["alerts"], json!([]), "{body}");
        let (s, body) = call(app(None).await, "GET", "/api/cache/stats", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            (&body["connected"], &body["mode"]),
            (&json!(false), &json!("disabled"))
        );
    }

    #[tokio::test]
    async fn without_redis_keys_are_cleared_and_deleted_not_listed() {
        for (mode, needle) in [
            (Mode::Standalone, "standalone"),
            (Mode::Disabled, "disabled"),
        ] {
            let a = app_in(mode, &nothing_there()).await;
            let auth = Some("Bearer s3cret");
            for path in ["/api/cache/keys", "/api/cache/keys/dev:tiercache:x"] {
                let (s, body) = call(a.clone(), "GET", path, auth).await;
                assert_eq!(s, StatusCode::CONFLICT, "{mode:?} {path}: {body}");
                assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
            }
            let (s, _) = call(a.clone(), "DELETE", "/api/cache/keys/dev:tiercache:x", auth).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{mode:?}");
            let (s, body) = call(a, "POST", "/api/cache/clear", auth).await;
            assert_eq!(
                (s, body["removed"].as_u64()),
                (StatusCode::OK, Some(0)),
                "{mode:?}"
            );
        }
    }
}
