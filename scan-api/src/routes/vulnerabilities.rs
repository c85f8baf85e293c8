//! `/api/vulnerabilities`: findings aggregated across all scans, or across each image's latest
//! scan (`/active`), with `?severity=` filtering.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use super::parse_severities;
use crate::AppState;
use crate::cache_policy::Policies;
use crate::error::AppError;
use crate::model::VulnerabilityEntry;
use crate::openapi::{CacheStatus, ErrorBody};

/// The routes of this resource, cached by `policies`.
pub fn router(policies: &Policies) -> Router<AppState> {
    Router::new()
        .route(
            "/api/vulnerabilities",
            policies.get(all, Policies::vulnerabilities()),
        )
        .route(
            "/api/vulnerabilities/active",
            policies.get(active, Policies::vulnerabilities()),
        )
}

/// Findings aggregated across every stored scan.
#[utoipa::path(
    get,
    path = "/api/vulnerabilities",
    tag = "vulnerabilities",
    params(("severity" = Option<String>, Query, description = "Comma-separated severities to keep: CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN (any case; default all)")),
    responses(
        (
            status = 200, description = "The findings", body = [VulnerabilityEntry],
            headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
        ),
        (status = 400, description = "Unknown severity", body = ErrorBody)
    )
)]
async fn all(
    state: State<AppState>,
    params: Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    answer(state, params, false).await
}

/// Findings aggregated across each image's latest scan.
#[utoipa::path(
    get,
    path = "/api/vulnerabilities/active",
    tag = "vulnerabilities",
    params(("severity" = Option<String>, Query, description = "Comma-separated severities to keep: CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN (any case; default all)")),
    responses(
        (
            status = 200, description = "The findings", body = [VulnerabilityEntry],
            headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
        ),
        (status = 400, description = "Unknown severity", body = ErrorBody)
    )
)]
async fn active(
    state: State<AppState>,
    params: Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    answer(state, params, true).await
}

async fn answer(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    latest_only: bool,
) -> Result<Response, AppError> {
    let severities = parse_severities(params.get("severity").map(String::as_str))?;
    let found = state
        .store
        .vulnerabilities(&severities, latest_only)
        .await?;
    Ok(Json(found).into_response())
}
