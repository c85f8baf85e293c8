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
use crate::model::{ScanDetail, ScanSummary};
use crate::openapi::{CacheStatus, ErrorBody, StoredScan};
use crate::trivy::{self, RawReport};

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

/// Stores a Trivy report; the cache entries it makes stale are purged before the answer.
#[utoipa::path(
    post,
    path = "/api/scan-results",
    tag = "scans",
    request_body(
        content = RawReport,
        content_type = "application/json",
        description = "A Trivy JSON report (`trivy image --format json`, SchemaVersion 2); fields not named here are ignored"
    ),
    responses(
        (status = 201, description = "Stored", body = StoredScan),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 422, description = "JSON that is not a usable Trivy report (the field is named)", body = ErrorBody)
    )
)]
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

/// Stored scans, newest first, without their findings.
#[utoipa::path(
    get,
    path = "/api/scan-results",
    tag = "scans",
    params(
        ("image" = Option<String>, Query, description = "Only this image's scans"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Most scans returned (default 100)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Scans skipped (default 0)")
    ),
    responses(
        (
            status = 200, description = "The scans", body = [ScanSummary],
            headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
        ),
        (status = 400, description = "Bad `limit` or `offset`", body = ErrorBody)
    )
)]
async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let limit = parse_limit(params.get("limit").map(String::as_str))?;
    let offset = parse_offset(params.get("offset").map(String::as_str))?;
    let image = params.get("image").map(String::as_str);
    Ok(Json(state.store.list_scans(image, limit, offset).await?).into_response())
}

/// One scan with its findings.
#[utoipa::path(
    get,
    path = "/api/scan-results/{id}",
    tag = "scans",
    params(("id" = i64, Path, minimum = 1, description = "The scan's id")),
    responses(
        (
            status = 200, description = "The scan", body = ScanDetail,
            headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
        ),
        (status = 400, description = "The id is not a positive whole number", body = ErrorBody),
        (status = 404, description = "No such scan", body = ErrorBody)
    )
)]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let scan = state
        .store
        .get_scan(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no scan with id {id}")))?;
    Ok(Json(scan).into_response())
}

/// Deletes a scan; the cache entries it makes stale are purged before the answer.
#[utoipa::path(
    delete,
    path = "/api/scan-results/{id}",
    tag = "scans",
    params(("id" = i64, Path, minimum = 1, description = "The scan's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a positive whole number", body = ErrorBody),
        (status = 404, description = "No such scan", body = ErrorBody)
    )
)]
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
