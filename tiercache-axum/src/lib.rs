//! axum integration for [`tiercache`]: the cache's operational HTTP routes.
//!
//! [`admin::router`] serves statistics and health to monitoring, and clearing and key
//! inspection to operators holding the admin token. It returns a `Router<S>` for any state `S`,
//! so it merges into an application's router as it is.
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
//! - `admin`: the routes, bearer-token authorization with constant-time comparison, and JSON
//!   errors.
//!
//! # Feature flags
//! None. axum is used with `default-features = false` and only the features the routes need.
//! The response-caching tower layer will arrive here too.

pub mod admin;
