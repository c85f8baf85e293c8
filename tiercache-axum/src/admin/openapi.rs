//! The routes tiercache-axum serves as an OpenAPI document (feature `openapi`): the admin routes,
//! `GET /metrics` and the dashboard. [`openapi()`] returns it, for an application to merge into
//! its own (`OpenApi::merge`).
//!
//! The handlers in `admin.rs` build their JSON answers in place; the schemas here describe
//! those answers field by field, and the operations below are documentation only (the functions
//! they are attached to are never routed). They live in a file of their own so that the default
//! build never sees utoipa. scan-api's API tests call every route documented here and check the
//! answers against these schemas, so a change to a handler's answer that is not made here too
//! fails there.
//!
//! Admin routes carry the security requirement [`SECURITY_SCHEME`]: `Authorization: Bearer
//! <token>`.

// `#[utoipa::path]` describes an operation through the function it is attached to; these ones
// exist only to carry that description.
#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The name of the bearer-token security scheme the admin routes require (the operations below
/// spell it out: `#[utoipa::path]` takes a literal).
pub const SECURITY_SCHEME: &str = "admin_token";

/// The admin routes' OpenAPI description: paths, schemas, and the [`SECURITY_SCHEME`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    AdminApi::openapi()
}

/// The document [`openapi()`] returns, as a utoipa type to list in an application's own
/// `#[openapi(nest(..))]` or to merge.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        stats,
        health,
        invalidations,
        clear,
        list_keys,
        show_key,
        delete_key,
        metrics,
        dashboard,
        dashboard_css,
        dashboard_js
    ),
    components(schemas(
        ErrorBody,
        CacheStats,
        CategoryCounts,
        LocalTier,
        CacheHealth,
        Alert,
        Invalidations,
        Invalidation,
        Cleared,
        KeyList,
        KeyInfo
    )),
    modifiers(&BearerToken),
    tags(
        (name = "cache", description = "The cache's statistics, health and recent invalidations (open), and clearing and key inspection (admin token)"),
        (name = "monitoring", description = "Prometheus metrics and the live dashboard (open)")
    )
)]
pub struct AdminApi;

/// Adds the [`SECURITY_SCHEME`] to the document's components.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every error answer: `{"error": "..."}`, naming the problem.
#[derive(ToSchema)]
#[schema(as = Error)]
struct ErrorBody {
    /// What went wrong.
    error: String,
}

/// `GET /api/cache/stats`.
#[derive(ToSchema)]
struct CacheStats {
    /// `redis`, `standalone` or `disabled`.
    #[schema(pattern = "^(redis|standalone|disabled)$")]
    mode: String,
    /// Keys of this cache's namespace in Redis, counted with SCAN; `null` without Redis.
    total_keys: Option<u64>,
    /// Redis's used memory, human-readable; `null` without Redis.
    memory_used: Option<String>,
    /// Redis's used memory in bytes; `null` without Redis.
    memory_used_bytes: Option<u64>,
    /// Redis's `maxmemory` in bytes (0: no limit); `null` without Redis.
    maxmemory_bytes: Option<u64>,
    /// Redis's `maxmemory-policy` (such as `allkeys-lru`; `noeviction` refuses writes when
    /// full); `null` without Redis.
    maxmemory_policy: Option<String>,
    /// Reads answered from the cache (either tier).
    hits: u64,
    /// Of those, reads answered by the in-process tier.
    local_hits: u64,
    /// Reads that found nothing usable.
    misses: u64,
    /// `hits / (hits + misses)`, 0 before any read.
    hit_rate: f64,
    /// Keys Redis evicted (`evicted_keys`); `null` without Redis.
    evictions: Option<u64>,
    /// Entries written.
    sets: u64,
    /// Entries invalidated.
    deletes: u64,
    /// Failed Redis calls.
    errors: u64,
    /// Redis calls that timed out.
    timeouts: u64,
    /// Values not stored because, encoded (after compression), they exceed the cache's
    /// `max_value_bytes`; their callers still got them.
    oversized: u64,
    /// Writes Redis refused with `OOM` (at `maxmemory` under `noeviction`): not stored, no
    /// caller failed, the breaker stayed closed; not counted in `errors`.
    oom_write_failures: u64,
    /// Loads run on a miss.
    loader_runs: u64,
    /// Whether Redis answers now.
    connected: bool,
    /// Seconds since the cache was built.
    uptime: f64,
    /// Hits and misses per category.
    categories: BTreeMap<String, CategoryCounts>,
    /// The in-process tier; `null` without one.
    local: Option<LocalTier>,
}

/// Hits and misses of one category.
#[derive(ToSchema)]
struct CategoryCounts {
    /// Reads answered from the cache (the in-process tier or Redis).
    hits: u64,
    /// Reads that found nothing usable.
    misses: u64,
}

/// The in-process tier's figures.
#[derive(ToSchema)]
struct LocalTier {
    /// Whether it serves now.
    live: bool,
    /// Entries held (approximate).
    entries: u64,
    /// Bytes held.
    size_bytes: u64,
    /// Entries dropped to stay within the capacity.
    evictions: u64,
    /// Times the lease lapsed and the tier was dropped.
    lapses: u64,
    /// Times the invalidation channel was lost.
    channel_losses: u64,
}

/// `GET /api/cache/health`: `status` says whether the cache works; the other fields depend on
/// the mode (see the operation).
#[derive(ToSchema)]
struct CacheHealth {
    /// `up` or `down`.
    #[schema(pattern = "^(up|down)$")]
    status: String,
    /// `redis`, `standalone` or `disabled`.
    #[schema(pattern = "^(redis|standalone|disabled)$")]
    mode: String,
    /// A PING's round trip, while Redis answers.
    latency_ms: Option<f64>,
    /// Why it is down, or what standalone means.
    detail: Option<String>,
    /// Redis's error, while it is away.
    error: Option<String>,
    /// The in-process tier; `null` without one.
    local: Option<LocalTier>,
    /// The active alerts (empty when none, or when no evaluator is attached).
    alerts: Vec<Alert>,
}

/// An active alert (see `alerts`).
#[derive(ToSchema)]
struct Alert {
    /// `redis_memory_high`, `hit_ratio_low`, `error_rate_high` or `redis_disconnected`.
    #[schema(pattern = "^(redis_memory_high|hit_ratio_low|error_rate_high|redis_disconnected)$")]
    name: String,
    /// When it started, in milliseconds since the Unix epoch.
    since_unix_ms: u64,
    /// The figure measured at the last evaluation.
    value: f64,
    /// The threshold it crossed.
    threshold: f64,
    /// What it means, for a person.
    message: String,
}

/// `GET /api/cache/invalidations`.
#[derive(ToSchema)]
struct Invalidations {
    /// This instance's id (16 hex digits).
    instance: String,
    /// Whether the records name their targets (only for a request with the admin token).
    named: bool,
    /// Newest first.
    invalidations: Vec<Invalidation>,
}

/// One invalidation this instance made or heard of.
#[derive(ToSchema)]
struct Invalidation {
    /// When this instance made it or heard of it (RFC 3339, UTC).
    at: String,
    /// The same, in milliseconds since the Unix epoch.
    at_unix_ms: u64,
    /// `key`, `tag`, `pattern` or `clear`.
    #[schema(pattern = "^(key|tag|pattern|clear)$")]
    kind: String,
    /// The keys, tags or patterns it named (empty for a clear); only with the admin token,
    /// since keys hold request paths and queries.
    targets: Option<Vec<String>>,
    /// How many keys, tags or patterns it named.
    target_count: u64,
    /// The instance that made it (16 hex digits).
    instance: String,
    /// Whether this instance made it.
    own: bool,
}

/// `POST /api/cache/clear`.
#[derive(ToSchema)]
struct Cleared {
    /// Keys removed.
    removed: u64,
    /// The namespace cleared (the key prefix).
    namespace: String,
}

/// `GET /api/cache/keys`.
#[derive(ToSchema)]
struct KeyList {
    /// The pattern used, confined to the namespace.
    pattern: String,
    /// Keys returned.
    count: u64,
    /// The keys.
    keys: Vec<String>,
}

/// `GET /api/cache/keys/{key}`.
#[derive(ToSchema)]
struct KeyInfo {
    /// The key.
    key: String,
    /// Its stored size.
    size_bytes: u64,
    /// Its remaining time to live; `null` without one.
    ttl_ms: Option<u64>,
}

/// Cache statistics, for monitoring (no token).
#[utoipa::path(
    get,
    path = "/api/cache/stats",
    tag = "cache",
    responses((status = 200, description = "The cache's figures", body = CacheStats))
)]
fn stats() {}

/// Cache health, for monitoring (no token). `redis` mode: 200 `up` with `latency_ms` while
/// Redis answers, 503 `down` with `detail` and `error` while it is away (reads go to the
/// source); `standalone`: 200 `up`; `disabled`: 503 `down`.
#[utoipa::path(
    get,
    path = "/api/cache/health",
    tag = "cache",
    responses(
        (status = 200, description = "The cache works", body = CacheHealth),
        (status = 503, description = "Redis is away, or the cache is disabled", body = CacheHealth)
    )
)]
fn health() {}

/// The last invalidations this instance made or heard of from others: open, with counts; with
/// the admin token (optional), also what they named.
#[utoipa::path(
    get,
    path = "/api/cache/invalidations",
    tag = "cache",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Most invalidations returned (default 50)")
    ),
    responses(
        (status = 200, description = "Newest first", body = Invalidations),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 401, description = "An `Authorization` header that is not a bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or no token configured", body = ErrorBody)
    )
)]
fn invalidations() {}

/// The cache's metrics in the Prometheus text format (no token).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitoring",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
fn metrics() {}

/// The live dashboard: a page that reads the open JSON routes above (no token).
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "monitoring",
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
fn dashboard() {}

/// The dashboard's stylesheet (embedded in the binary).
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.css",
    tag = "monitoring",
    responses((status = 200, description = "The stylesheet", content_type = "text/css", body = String))
)]
fn dashboard_css() {}

/// The dashboard's script (embedded in the binary).
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.js",
    tag = "monitoring",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String))
)]
fn dashboard_js() {}

/// Removes every key of this cache's namespace (and empties the in-process tiers).
#[utoipa::path(
    post,
    path = "/api/cache/clear",
    tag = "cache",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Cleared", body = Cleared),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or no token configured", body = ErrorBody),
        (status = 503, description = "Redis is away; the clear is applied when it returns", body = ErrorBody)
    )
)]
fn clear() {}

/// Lists keys by `SCAN`, the pattern confined to the namespace. Needs Redis.
#[utoipa::path(
    get,
    path = "/api/cache/keys",
    tag = "cache",
    security(("admin_token" = [])),
    params(
        ("pattern" = Option<String>, Query, description = "Glob, with or without the namespace prefix (at most 256 characters; default `*`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Most keys returned (default 100)")
    ),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 400, description = "Bad `limit` or `pattern`", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or no token configured", body = ErrorBody),
        (status = 409, description = "The cache does not use Redis (standalone or disabled)", body = ErrorBody),
        (status = 503, description = "Redis is away", body = ErrorBody)
    )
)]
fn list_keys() {}

/// A key's stored size and TTL. Needs Redis.
#[utoipa::path(
    get,
    path = "/api/cache/keys/{key}",
    tag = "cache",
    security(("admin_token" = [])),
    params(("key" = String, Path, description = "The full key, namespace prefix included")),
    responses(
        (status = 200, description = "The key", body = KeyInfo),
        (status = 400, description = "The key is outside this cache's namespace", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or no token configured", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 409, description = "The cache does not use Redis (standalone or disabled)", body = ErrorBody),
        (status = 503, description = "Redis is away", body = ErrorBody)
    )
)]
fn show_key() {}

/// Removes a key (from Redis and every in-process tier).
#[utoipa::path(
    delete,
    path = "/api/cache/keys/{key}",
    tag = "cache",
    security(("admin_token" = [])),
    params(("key" = String, Path, description = "The full key, namespace prefix included")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "The key is outside this cache's namespace", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or no token configured", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "Redis is away; the delete is applied when it returns", body = ErrorBody)
    )
)]
fn delete_key() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_needs_the_token_where_it_should() {
        let doc = openapi();
        let json = serde_json::to_value(&doc).expect("the document serializes");
        let paths = json["paths"].as_object().expect("paths");
        let mut seen: Vec<(String, String)> = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let secured = op.get("security").is_some();
                let open = !path.starts_with("/api/cache/")
                    || [
                        "/api/cache/stats",
                        "/api/cache/health",
                        "/api/cache/invalidations",
                    ]
                    .contains(&path.as_str());
                assert_eq!(secured, !open, "{method} {path}");
                seen.push((method.clone(), path.clone()));
            }
        }
        seen.sort();
        let expected = [
            ("delete", "/api/cache/keys/{key}"),
            ("get", "/api/cache/health"),
            ("get", "/api/cache/invalidations"),
            ("get", "/api/cache/keys"),
            ("get", "/api/cache/keys/{key}"),
            ("get", "/api/cache/stats"),
            ("get", "/dashboard"),
            ("get", "/dashboard/dashboard.css"),
            ("get", "/dashboard/dashboard.js"),
            ("get", "/metrics"),
            ("post", "/api/cache/clear"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(
            json["components"]["securitySchemes"][SECURITY_SCHEME]["scheme"],
            "bearer"
        );
    }
}
