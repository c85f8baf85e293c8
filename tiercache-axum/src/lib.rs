//! axum integration for [`tiercache`]: response caching for routes, and the cache's operational
//! HTTP routes.
//!
//! [`response_cache::ResponseCacheLayer`] caches a route's GET and HEAD answers by a policy
//! declared beside the route (TTL, tags, `Vary`, per-user keys, cached 404s, a body limit), with
//! strong `ETag`s, `304 Not Modified`, `Age` and `X-Cache`; [`response_cache::PurgeLayer`] purges
//! tags after a write route succeeds, with the same tag invalidation as the data cache's. See
//! [`response_cache`] for the rules and an example.
//!
//! [`admin::router`] serves statistics and health to monitoring, and clearing and key
//! inspection to operators holding the admin token. It returns a `Router<S>` for any state `S`,
//! so it merges into an application's router as it is. [`dashboard::router`] serves a live
//! page drawn from those JSON routes, with every asset embedded in the binary.
//!
//! ```no_run
//! use axum::Router;
//! use tiercache::Cache;
//! use tiercache_axum::admin;
//!
//! # async fn demo(cache: Cache) {
//! let app: Router = Router::new().merge(admin::router(admin::Admin::new(
//!     cache,
//!     std::env::var("ADMIN_TOKEN").ok(),
//! )));
//! # }
//! ```
//!
//! # Layout
//! - `response_cache`: the response-cache and purge layers, laid out as tower-http lays out a
//!   middleware (`layer`, `service`, `future`, with `policy`, `key` and `stored` beside them).
//! - `admin`: the routes, bearer-token authorization with constant-time comparison, and JSON
//!   errors; `admin/openapi.rs` their OpenAPI description (feature `openapi`).
//! - `alerts`: the alert evaluator (memory, hit ratio, error rate, disconnection) whose active
//!   alerts health lists.
//! - `dashboard`: the dashboard page's routes; the page itself (HTML, CSS, JS) is in
//!   `assets/dashboard/`.
//! - `metrics`: the Prometheus recorder (installed once per process) and `GET /metrics`, with
//!   the cache's states sampled at each scrape.
//!
//! # Feature flags
//! axum is used with `default-features = false` and only the features the routes need.
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `openapi` | off | `admin::openapi()`: the admin routes as an OpenAPI document (utoipa), with the bearer-token security scheme, to merge into an application's own document |

pub mod admin;
pub mod alerts;
pub mod dashboard;
pub mod metrics;
pub mod response_cache;
