//! Response caching for axum routes: [`ResponseCacheLayer`] caches a route's GET and HEAD
//! answers by a [`CachePolicy`] declared beside the route; [`PurgeLayer`] purges tags after a
//! write route succeeds.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Json, Router, routing::{get, post}, extract::Path, http::StatusCode};
//! use tiercache::{Cache, Category, Tag};
//! use tiercache_axum::response_cache::{CachePolicy, Purge, PurgeLayer, ResponseCacheLayer};
//!
//! const IMAGES: Category = Category::from_static("images");
//!
//! fn image_tag(name: &str) -> Tag {
//!     Tag::new("image", [name])
//! }
//!
//! # async fn demo(cache: Cache) {
//! let app: Router = Router::new()
//!     .route(
//!         "/images/{name}",
//!         get(|Path(name): Path<String>| async move { Json(name) }).layer(
//!             ResponseCacheLayer::new(
//!                 cache.clone(),
//!                 CachePolicy::new(IMAGES)
//!                     .ttl(Duration::from_secs(300))
//!                     .tags_from(|req| req.path_param("name").map(image_tag).into_iter().collect()),
//!             ),
//!         ),
//!     )
//!     .route(
//!         "/images/{name}/scans",
//!         post(|Path(name): Path<String>| async move {
//!             // ... store the scan, then name what it changed:
//!             (StatusCode::CREATED, Purge::tags([image_tag(&name)]), "stored")
//!         })
//!         .layer(PurgeLayer::new(cache.clone())),
//!     );
//! # }
//! ```
//!
//! What is cached, and what passes through untouched (but for `X-Cache`):
//!
//! | | |
//! |---|---|
//! | cached | `GET` answers `200` (and `404` on routes that opt in, for their own short TTL) without `Set-Cookie`, without `Cache-Control: no-store`, `private` or `no-cache`, whose body fits the route's limit (1 MiB by default) |
//! | `X-Cache: BYPASS` | requests with a body, with `Cache-Control: no-store` or `private`, or with `Authorization` or `Cookie` (unless the route caches per user); every request while Redis is away or the cache is disabled (an answer that would not have been stored anyway says `MISS` until the cache's breaker has opened, after its first failed calls) |
//! | `X-Cache: MISS`, not stored | other statuses, `Set-Cookie`, `no-store`/`private`/`no-cache`, `Vary: *`; bodies over the limit, streamed as they come |
//! | `HEAD` | answered from the `GET` entry (headers, `Content-Length`, no body) when there is one |
//!
//! Every answer from the cache has an `ETag`: the handler's own, or a strong one from a SHA-256
//! of the body and its content headers, the same in every process; `If-None-Match` (weak
//! comparison) gets `304 Not Modified`
//! with the headers RFC 9110 asks for. Hits say `Age`. `Vary` is kept, and its headers are part
//! of the key (declared with [`CachePolicy::vary`], or learned from a response's `Vary`).
//!
//! # Tracing
//! The outcome of each request the layer sees (`HIT`, `MISS`, `BYPASS`: what `X-Cache` says) is
//! recorded on the current span's field [`SPAN_FIELD`] (`cache`). A span records only fields it
//! declared, so declare it, empty, where the request span is made:
//!
//! ```no_run
//! use tower_http::trace::TraceLayer;
//! let trace = TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<axum::body::Body>| {
//!     tracing::info_span!("request", method = %req.method(), uri = %req.uri(),
//!         cache = tracing::field::Empty)
//! });
//! # let _ = trace;
//! ```
//!
//! Concurrent misses of one key run the route once ([`tiercache::Cache::try_get_with`]), and the
//! core's stale-set guard keeps a response rendered before a purge from being stored after it.
//!
//! # Layout
//! - `policy`: [`CachePolicy`] and the [`RequestView`] it reads tags from.
//! - `key`: the [`MakeCacheKey`] trait and [`DefaultCacheKey`].
//! - `stored`: the stored response and the HTTP rules (storable, `ETag`, `304`, `Age`).
//! - `layer`, `service`, `future`: the tower layer, its service and its future.
//! - `purge`: [`PurgeLayer`] and [`Purge`].

mod future;
mod key;
mod layer;
mod policy;
mod purge;
mod service;
mod stored;

pub use future::ResponseFuture;
pub use key::{DefaultCacheKey, MakeCacheKey};
pub use layer::ResponseCacheLayer;
pub use policy::{CachePolicy, DEFAULT_MAX_BODY, RequestView};
pub use purge::{Purge, PurgeLayer, PurgeService};
pub use service::ResponseCache;
pub use stored::X_CACHE;

/// The span field on which the layer records each request's cache outcome (see the module
/// docs).
pub const SPAN_FIELD: &str = "cache";
