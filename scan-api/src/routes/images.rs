//! `/api/images`: every image with its latest scan, and per image its latest scan and its
//! scanned versions. `{name}` is the percent-encoded image name; it may contain `/` and `:`.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;

use super::cached_json;
use crate::AppState;
use crate::cache_policy::Entry;
use crate::error::AppError;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/images", get(index))
        // A wildcard, so that a name sent with literal `/` (not %2F) still routes.
        .route("/api/images/{*rest}", get(image))
}

async fn index(State(state): State<AppState>) -> Response {
    cached_json(&state, Entry::ImageIndex, async {
        Ok(state.store.images().await?)
    })
    .await
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
    match view {
        "latest" => Ok(cached_json(&state, Entry::ImageLatest(name), async {
            state
                .store
                .image_latest(name)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("no scans of image {name:?}")))
        })
        .await),
        "versions" => Ok(cached_json(&state, Entry::ImageVersions(name), async {
            state
                .store
                .image_versions(name)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("no scans of image {name:?}")))
        })
        .await),
        other => Err(AppError::NotFound(format!(
            "unknown image view {other:?}: use /latest or /versions"
        ))),
    }
}
