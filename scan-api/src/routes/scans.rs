//! `/api/scan-results`: store a Trivy report, list scans, show one, delete one.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::json;
use tiercache_axum::response_cache::Purge;

use super::{parse_id, parse_limit, parse_offset};
use crate::AppState;
use crate::cache_policy::{Policies, written};
use crate::error::AppError;
use crate::trivy;

/// The routes of this resource: reads cached by `policies`, writes purging what they changed
/// (their purge layer runs each write in a task of its own, so a client that goes away cannot
/// stop a committed write's purge).
pub fn router(policies: &Policies) -> Router<AppState> {
    Router::new()
        .route(
            "/api/scan-results",
            policies
                .get(list, Policies::scan_list())
                .merge(post(create).layer(policies.purge())),
        )
        .route(
            "/api/scan-results/{id}",
            policies
                .get(show, Policies::scan())
                .merge(delete(remove).layer(policies.purge())),
        )
}

async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge {
                limit: state.body_limit,
            }
        } else {
            AppError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    let scan = trivy::parse_report(&body)?;
    let findings = scan.findings.len();
    let stored = state.store.insert_scan(&scan).await?;
    tracing::info!(id = stored.id, image = %stored.image, findings, "scan stored");
    let purge = Purge::tags(written(&stored.image, stored.id));
    let mut body = serde_json::to_value(&stored)
        .map_err(|e| AppError::Internal(format!("encoding JSON: {e}")))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "vulnerability_total".into(),
            json!(stored.vulnerability_counts.total()),
        );
    }
    Ok((StatusCode::CREATED, purge, Json(body)).into_response())
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let limit = parse_limit(params.get("limit").map(String::as_str))?;
    let offset = parse_offset(params.get("offset").map(String::as_str))?;
    let image = params.get("image").map(String::as_str);
    Ok(Json(state.store.list_scans(image, limit, offset).await?).into_response())
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let scan = state
        .store
        .get_scan(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no scan with id {id}")))?;
    Ok(Json(scan).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let image = state
        .store
        .delete_scan(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no scan with id {id}")))?;
    tracing::info!(id, image = %image, "scan deleted");
    Ok((StatusCode::NO_CONTENT, Purge::tags(written(&image, id)), ()).into_response())
}
