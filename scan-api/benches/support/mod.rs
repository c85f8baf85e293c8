//! What scan-api's benches share: serving the API on a free port with a given store and cache,
//! and percent-encoding an image name into a path segment.

use scan_api::AppState;
use scan_api::store::Store;
use tiercache::Cache;

/// Serves the whole API (no admin token) on a free loopback port; its base URL.
pub(crate) async fn serve(store: Store, cache: Cache) -> String {
    let state = AppState {
        store,
        cache,
        body_limit: 32 << 20,
        cache_max_body: scan_api::cache_policy::MAX_RESPONSE_BYTES,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(scan_api::run(
        listener,
        scan_api::app(state, None),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// `s` as one path segment or query value (unreserved characters kept, the rest `%XX`).
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
