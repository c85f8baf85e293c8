//! The OpenAPI document of the whole HTTP API, served at `GET /api/openapi.json`.
//!
//! Each route is described where it is declared, by `#[utoipa::path]` on its handler in
//! `routes/*.rs` (parameters, request body, responses with their schemas, and the `X-Cache`
//! header on cached reads); [`ApiDoc`] lists them and the schemas, and [`document`] adds the
//! cache admin routes' description from tiercache-axum (feature `openapi`), with its
//! bearer-token security scheme.
//!
//! A route added to the router and not listed here fails the API test `openapi`, which reads
//! the router's own route table, calls every documented operation on a running app, and checks
//! the answers against the documented schemas. To add a route: annotate its handler with
//! `#[utoipa::path(..)]` and name the handler in [`ApiDoc`]'s `paths(..)` (and any new body
//! type in `components(schemas(..))`).
//!
//! The schemas below describe answers that handlers build in place (`json!`); the others are
//! the model's types (`model.rs`) and the Trivy report (`trivy.rs`), derived from the types
//! themselves.

use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::model;
use crate::routes;

/// The scan-api routes' description (without the admin routes: see [`document`]).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "scan-api",
        description = "Trivy container-scan results, cached with tiercache. Errors are JSON \
            `{\"error\": \"...\"}` naming the problem; a 5xx says only `internal error`. Cached \
            reads say where their answer came from in `X-Cache` (`HIT`, `MISS` or `BYPASS`), \
            and carry a strong `ETag` (`If-None-Match` gets `304`).",
    ),
    paths(
        routes::health::health,
        routes::scans::list,
        routes::scans::create,
        routes::scans::show,
        routes::scans::remove,
        routes::vulnerabilities::all,
        routes::vulnerabilities::active,
        routes::images::index,
        routes::images::latest,
        routes::images::versions,
        routes::insights::insights,
        routes::openapi::openapi_json,
    ),
    components(schemas(
        ErrorBody,
        CacheStatus,
        Health,
        HealthDown,
        StoredScan,
        crate::trivy::RawReport,
        model::Severity,
        model::SeverityCounts,
        model::VersionKind,
        model::ImageVersion,
        model::Finding,
        model::ScanSummary,
        model::ScanDetail,
        model::VulnerabilityEntry,
        model::ImageEntry,
        model::VersionEntry,
        model::ImageRisk,
        model::CveImpact,
        model::Insights,
    )),
    modifiers(&XCacheOnEveryAnswer),
    tags(
        (name = "scans", description = "Store, list, show and delete Trivy reports"),
        (name = "vulnerabilities", description = "Findings aggregated across scans"),
        (name = "images", description = "Images and their latest scans and versions"),
        (name = "insights", description = "The expensive analysis view"),
        (name = "service", description = "Liveness and this document"),
    )
)]
pub struct ApiDoc;

/// The whole API's document: [`ApiDoc`] and the cache admin routes
/// (`tiercache_axum::admin::openapi`).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi().merge_from(tiercache_axum::admin::openapi())
}

/// Copies the `X-Cache` header a cached read declares on its 200 to its other answers: the
/// cache layer sets it on every answer of the route (a 404 says `MISS`), so each route
/// declares it once, where the route's success is described.
struct XCacheOnEveryAnswer;

impl Modify for XCacheOnEveryAnswer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let Some(get) = item.get.as_mut() else {
                continue;
            };
            let responses = &mut get.responses.responses;
            let header = match responses.get("200") {
                Some(RefOr::T(ok)) => ok.headers.get("X-Cache").cloned(),
                _ => None,
            };
            let Some(header) = header else { continue };
            for response in responses.values_mut() {
                if let RefOr::T(response) = response {
                    response
                        .headers
                        .entry("X-Cache".to_owned())
                        .or_insert_with(|| header.clone());
                }
            }
        }
    }
}

/// Every error answer: `{"error": "..."}`, naming the problem (a 5xx says `internal error`).
#[derive(ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// The `X-Cache` header of a cached read: `HIT` (from the cache), `MISS` (from the database;
/// stored when it can be), `BYPASS` (the cache was not consulted: the request has
/// `Authorization`, `Cookie` or `Cache-Control: no-store`, or Redis is away, or the cache is
/// disabled).
#[derive(ToSchema)]
#[schema(rename_all = "UPPERCASE")]
pub enum CacheStatus {
    /// From the cache.
    Hit,
    /// From the database.
    Miss,
    /// The cache was not consulted.
    Bypass,
}

/// `GET /health` while the database answers.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
    /// `up`.
    #[schema(pattern = "^up$")]
    pub database: String,
    /// `redis`, `standalone` or `disabled`.
    #[schema(pattern = "^(redis|standalone|disabled)$")]
    pub cache_mode: String,
    /// Whether Redis answers now.
    pub cache_connected: bool,
    /// Database queries run since start.
    pub db_queries: u64,
}

/// `GET /health` while the database does not answer.
#[derive(ToSchema)]
pub struct HealthDown {
    /// `down`.
    #[schema(pattern = "^down$")]
    pub status: String,
    /// `down`.
    #[schema(pattern = "^down$")]
    pub database: String,
}

/// `POST /api/scan-results`: the stored scan's summary and its number of findings.
#[derive(ToSchema)]
pub struct StoredScan {
    /// The summary.
    #[serde(flatten)]
    pub summary: model::ScanSummary,
    /// Findings stored.
    pub vulnerability_total: u32,
}
