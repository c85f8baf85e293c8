//! `/api/images`: every image with its latest scan, and per image its latest scan and its
//! scanned versions. `{name}` is the percent-encoded image name; it may contain `/` and `:`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::AppState;
use crate::cache_policy::Policies;
use crate::error::AppError;
use crate::model::{ImageEntry, ScanSummary, VersionEntry};
use crate::openapi::{CacheStatus, ErrorBody};

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

/// Every image with its latest scan.
#[utoipa::path(
    get,
    path = "/api/images",
    tag = "images",
    responses((
        status = 200, description = "The images", body = [ImageEntry],
        headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
    ))
)]
async fn index(State(state): State<AppState>) -> Result<Response, AppError> {
    Ok(Json(state.store.images().await?).into_response())
}

/// The two documented views below are served by this one wildcard route.
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

/// `GET /api/images/{name}/latest`, one of the views [`image`] serves (its description only:
/// the wildcard route has no handler per view).
#[utoipa::path(
    get,
    path = "/api/images/{name}/latest",
    tag = "images",
    params(("name" = String, Path, description = "The image name, percent-encoded (it may contain `/` and `:`)")),
    responses(
        (
            status = 200, description = "The image's latest scan", body = ScanSummary,
            headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
        ),
        (status = 404, description = "No scans of this image", body = ErrorBody)
    )
)]
#[expect(dead_code, reason = "a description only: `image` serves this view")]
fn latest() {}

/// `GET /api/images/{name}/versions`, one of the views [`image`] serves (its description only).
#[utoipa::path(
    get,
    path = "/api/images/{name}/versions",
    tag = "images",
    params(("name" = String, Path, description = "The image name, percent-encoded (it may contain `/` and `:`)")),
    responses(
        (
            status = 200, description = "The image's scanned tags and digests", body = [VersionEntry],
            headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
        ),
        (status = 404, description = "No scans of this image", body = ErrorBody)
    )
)]
#[expect(dead_code, reason = "a description only: `image` serves this view")]
fn versions() {}
