//! `/api/insights`: the expensive analysis view (risk per image, most widespread CVEs, severity
//! totals), cached twice: the response by the route's layer (30 minutes), and the computation
//! as data with `#[cached]`, for every caller of it (a request that bypasses the response
//! cache, such as one with `Authorization`, still reuses it). Every write purges both (tag
//! `insights`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::AppState;
use crate::cache_policy::Policies;
use crate::error::AppError;
use crate::model::Insights;
use crate::openapi::CacheStatus;
use crate::store::StoreError;

/// The routes of this resource, cached by `policies`.
pub fn router(policies: &Policies) -> Router<AppState> {
    Router::new().route(
        "/api/insights",
        policies.get(insights, Policies::insights()),
    )
}

/// Risk per image, the most widespread CVEs and severity totals.
#[utoipa::path(
    get,
    path = "/api/insights",
    tag = "insights",
    responses((
        status = 200, description = "The analysis", body = Insights,
        headers(("X-Cache" = CacheStatus, description = "HIT, MISS or BYPASS"))
    ))
)]
async fn insights(State(state): State<AppState>) -> Result<Response, AppError> {
    Ok(Json(compute(&state).await?).into_response())
}

/// The insights computation, cached as data under `insights_data:{insights}`.
#[tiercache::cached(
    cache = state.cache,
    category = crate::cache_policy::INSIGHTS_DATA,
    tags = ["insights"],
    key = "insights"
)]
pub async fn compute(state: &AppState) -> Result<Insights, StoreError> {
    state.store.insights().await
}
