//! `/api/vulnerabilities`: findings aggregated across all scans, or across each image's latest
//! scan (`/active`), with `?severity=` filtering.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;

use super::{cached_json, parse_severities};
use crate::AppState;
use crate::cache_policy::Entry;
use crate::error::AppError;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/vulnerabilities", get(all))
        .route("/api/vulnerabilities/active", get(active))
}

async fn all(
    state: State<AppState>,
    params: Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    answer(state, params, false).await
}

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
    let entry = Entry::Vulnerabilities {
        latest_only,
        severities: &severities,
    };
    Ok(cached_json(&state, entry, async {
        Ok(state
            .store
            .vulnerabilities(&severities, latest_only)
            .await?)
    })
    .await)
}
