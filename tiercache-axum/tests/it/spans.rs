//! Each request's span records its cache outcome in the field the layer documents
//! (`response_cache::SPAN_FIELD`), when the application's span declares it.

use axum::Router;
use axum::routing::get;
use tiercache::Category;
use tiercache_axum::response_cache::{CachePolicy, ResponseCacheLayer, SPAN_FIELD};
use tiercache_testkit::RedisServer;
use tower_http::trace::TraceLayer;

use crate::helpers::{cache_in, serve};
use tiercache_testkit::capture;

const PAGES: Category = Category::from_static("pages");

// A current-thread runtime: the server's tasks run on this thread, whose subscriber captures.
#[tokio::test]
async fn the_request_span_carries_miss_then_hit_and_bypass() {
    let (captured, _guard) = capture();
    let redis = RedisServer::start();
    let cache = cache_in(&redis, "spans").await;
    let app = Router::new()
        .route(
            "/page",
            get(|| async { "hello" }).layer(ResponseCacheLayer::new(cache, CachePolicy::new(PAGES))),
        )
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            tracing::info_span!("request", uri = %req.uri(), cache = tracing::field::Empty)
        }));
    let server = serve(app).await;
    assert_eq!(server.get("/page").await.x_cache(), "MISS");
    assert_eq!(server.get("/page").await.x_cache(), "HIT");
    let no_store = [(reqwest::header::CACHE_CONTROL, "no-store")];
    assert_eq!(
        server.get_with("/page", &no_store).await.x_cache(),
        "BYPASS"
    );
    let outcomes: Vec<String> = captured
        .spans()
        .iter()
        .filter(|s| s.name == "request")
        .map(|s| s.fields.get(SPAN_FIELD).cloned().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["MISS", "HIT", "BYPASS"]);
}
