//! `/health`: the service's own liveness — 200 while the database answers, whatever the cache
//! does; it names the cache mode (`redis`, `standalone`, `disabled`) and whether Redis is in
//! use. The cache's health is `/api/cache/health` (tiercache-axum).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;
use crate::openapi::{Health, HealthDown};

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// The service's liveness: 200 while the database answers, whatever the cache does.
#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "The database does not answer", body = HealthDown)
    )
)]
async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({
            "status": "ok",
            "database": "up",
            "cache_mode": state.cache.mode().as_str(),
            "cache_connected": state.cache.is_connected(),
            "db_queries": state.store.queries(),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "down", "database": "down" })),
            )
                .into_response()
        }
    }
}
