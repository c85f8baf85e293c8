//! `/api/images`: every image with its latest scan, and per image its latest scan and its
//! scanned versions. `{name}` is the percent-encoded image name; it may contain `/` and `:`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::AppState;
use crate::cache_policy::Policies;
use crate::error::AppError;

/// The routes of this resource, cached by `policies`.
pub fn router(policies: &Policies) -> Router<AppState> {
    Router::new()
        .route("/api/images", policies.get(index, Policies::image_index()))
        // A wildcard, so that a name sent with literal `/` (not %2F) still routes.
        .route(
            "/api/images/{*rest}",
            policies.get(image, Policies::image()),
        )
}

async fn index(State(state): State<AppState>) -> Result<Response, AppError> {
    Ok(Json(state.store.images().await?).into_response())
}

async fn image(
    State(state): State<AppState>,
    Path(rest): Path<String>,
) -> Result<Response, AppError> {
    let (name, view) = rest
        .rsplit_once('/')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "no such route: /api/images/{rest} (use /api/images/{{name}}/latest or /versions)"
            ))
        })?;
    let missing = || AppError::NotFound(format!("no scans of image {name:?}"));
    match view {
        "latest" => {
            Ok(Json(state.store.image_latest(name).await?.ok_or_else(missing)?).into_response())
        }
        "versions" => Ok(Json(
            state
                .store
                .image_versions(name)
                .await?
                .ok_or_else(missing)?,
        )
        .into_response()),
        other => Err(AppError::NotFound(format!(
            "unknown image view {other:?}: use /latest or /versions"
        ))),
    }
}
