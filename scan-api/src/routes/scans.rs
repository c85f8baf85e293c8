//! `/api/scan-results`: store a Trivy report, list scans, show one, delete one.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{cached_json, parse_id, parse_limit, parse_offset};
use crate::AppState;
use crate::cache_policy::{Entry, invalidate_after_write};
use crate::error::AppError;
use crate::trivy;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/scan-results", get(list).post(create))
        .route("/api/scan-results/{id}", get(show).delete(delete))
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
    // In a task of its own: if the client goes away, the handler future is dropped, but a
    // committed write must still be followed by its invalidation.
    let writer = state.clone();
    let stored = tokio::spawn(async move {
        let stored = writer.store.insert_scan(&scan).await?;
        invalidate_after_write(&writer.cache, &stored.image, stored.id).await;
        Ok::<_, AppError>(stored)
    })
    .await
    .map_err(|e| AppError::Internal(format!("write task failed: {e}")))??;
    tracing::info!(id = stored.id, image = %stored.image, findings, "scan stored");
    let mut body = serde_json::to_value(&stored)
        .map_err(|e| AppError::Internal(format!("encoding JSON: {e}")))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "vulnerability_total".into(),
            json!(stored.vulnerability_counts.total()),
        );
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let limit = parse_limit(params.get("limit").map(String::as_str))?;
    let offset = parse_offset(params.get("offset").map(String::as_str))?;
    let image = params.get("image").map(String::as_str);
    let entry = Entry::ScanList {
        image,
        limit,
        offset,
    };
    Ok(cached_json(&state, entry, async {
        Ok(state.store.list_scans(image, limit, offset).await?)
    })
    .await)
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    Ok(cached_json(&state, Entry::Scan(id), async {
        state
            .store
            .get_scan(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no scan with id {id}")))
    })
    .await)
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    // In a task of its own, like `create`: the invalidation must follow the commit.
    let writer = state.clone();
    let image = tokio::spawn(async move {
        let image = writer.store.delete_scan(id).await?;
        if let Some(image) = &image {
            invalidate_after_write(&writer.cache, image, id).await;
        }
        Ok::<_, AppError>(image)
    })
    .await
    .map_err(|e| AppError::Internal(format!("write task failed: {e}")))??
    .ok_or_else(|| AppError::NotFound(format!("no scan with id {id}")))?;
    tracing::info!(id, image = %image, "scan deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
