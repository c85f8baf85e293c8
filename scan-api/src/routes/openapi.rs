//! `/api/openapi.json`: the API's OpenAPI document (`crate::openapi`), rendered once.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::AppError;

/// The document as JSON, rendered on first use: it is the same for the life of the binary.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    crate::openapi::document()
        .to_json()
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(openapi_json))
}

/// This document: every route, its parameters, bodies and answers.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "service",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Result<Response, AppError> {
    match &*DOCUMENT {
        Ok(json) => Ok(([(CONTENT_TYPE, "application/json")], json.clone()).into_response()),
        Err(e) => Err(AppError::Internal(format!(
            "encoding the OpenAPI document: {e}"
        ))),
    }
}
