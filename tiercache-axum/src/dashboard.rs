//! A live dashboard for a [`Cache`](tiercache::Cache): one HTML page, its stylesheet and its
//! script, embedded in the binary, that poll the admin routes' JSON and draw it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /dashboard` | the page (`?refresh=SECONDS` sets the polling period: default 5, at least 0.5, since each poll of the stats counts the namespace's keys with SCAN) |
//! | `GET /dashboard/dashboard.css` | its stylesheet |
//! | `GET /dashboard/dashboard.js` | its script |
//!
//! The page shows the hit rate over time (a chart drawn as inline SVG from the points its polls
//! collect), hits and misses by tier and by category, Redis memory against `maxmemory`, keys,
//! the health of Redis, of the invalidation channel and of the circuit breaker, the active
//! alerts and the most recent invalidations. It reads only the read-only JSON routes, none of
//! which needs the admin token: `GET /api/cache/stats`, `GET /api/cache/health` and
//! `GET /api/cache/invalidations` (served by [`admin::router`](crate::admin::router), which must
//! be mounted beside it at the root). A failed poll marks the page "unreachable" and keeps the
//! last figures.
//!
//! Why embedded files and no framework: an operator opens the page where the service runs,
//! often without Internet access, and a page that loads nothing from elsewhere cannot break
//! when a CDN does. The answers carry a `Content-Security-Policy` that allows only this origin,
//! so the browser itself enforces that. Every figure is an element with `data-figure="name"`
//! (and its raw number in `data-value`), which a test or a scraper can read unambiguously.
//!
//! ```no_run
//! use axum::Router;
//! use tiercache::Cache;
//! use tiercache_axum::{admin, dashboard};
//!
//! # async fn demo(cache: Cache) {
//! let app: Router = Router::new()
//!     .merge(admin::router(admin::Admin::new(cache, None)))
//!     .merge(dashboard::router());
//! # }
//! ```

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The page.
const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
/// Its stylesheet.
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard/dashboard.css");
/// Its script.
const DASHBOARD_JS: &str = include_str!("../assets/dashboard/dashboard.js");

/// Only this origin, for scripts, styles and polls; nothing inline, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, ready to merge into any application router beside
/// [`admin::router`](crate::admin::router).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/dashboard",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| asset("text/css; charset=utf-8", DASHBOARD_CSS)),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| asset("text/javascript; charset=utf-8", DASHBOARD_JS)),
        )
}

/// One embedded file, with its type and the headers that keep it to this origin.
async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Revalidated on each load: a new binary serves its own page at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_stays_small() {
        let all = [INDEX_HTML, DASHBOARD_CSS, DASHBOARD_JS];
        for text in all {
            // The SVG namespace is a name, not a request.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn")
            );
        }
        assert!(all.iter().map(|t| t.len()).sum::<usize>() < 30 * 1024);
        for path in ["/dashboard/dashboard.css", "/dashboard/dashboard.js"] {
            assert!(INDEX_HTML.contains(path), "{path}");
        }
    }
}
