//! `/api/insights`: the expensive analysis view (risk per image, most widespread CVEs, severity
//! totals), cached for 30 minutes and invalidated by every write.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use super::cached_json;
use crate::AppState;
use crate::cache_policy::Entry;

/// The routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/insights", get(insights))
}

async fn insights(State(state): State<AppState>) -> Response {
    cached_json(&state, Entry::Insights, async {
        Ok(state.store.insights().await?)
    })
    .await
}
