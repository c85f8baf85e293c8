//! Shared set-up: a cache on a test's own Redis, unique namespaces, and deadline polling.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tiercache::{Cache, CacheBuilder, Key};

/// The categories the tests use (the library ships none).
pub(crate) mod cat {
    use tiercache::Category;

    pub(crate) const SCAN_RESULTS: Category = Category::from_static("scan_results");
    pub(crate) const VULNERABILITIES: Category = Category::from_static("vulnerabilities");
    pub(crate) const IMAGE_METADATA: Category = Category::from_static("image_metadata");
    pub(crate) const ANALYSIS: Category = Category::from_static("analysis");
    pub(crate) const SESSIONS: Category = Category::from_static("sessions");
}
use tiercache_testkit::RedisServer;

/// A namespace no other cache in this process uses.
pub(crate) fn unique_namespace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A builder for `server` with a fresh namespace and test-friendly recovery timing.
pub(crate) fn builder(server: &RedisServer) -> CacheBuilder {
    // Logs go to the test output only when `TEST_LOG` is set.
    tiercache_testkit::init_test_logs("tiercache=debug");
    Cache::builder()
        .url(server.url())
        .env_prefix("test")
        .namespace(unique_namespace())
        .jitter(0.0)
        .ttl(cat::SCAN_RESULTS, Duration::from_secs(300))
        .ttl(cat::VULNERABILITIES, Duration::from_secs(600))
        .ttl(cat::IMAGE_METADATA, Duration::from_secs(900))
        .ttl(cat::ANALYSIS, Duration::from_secs(1800))
        .ttl(cat::SESSIONS, Duration::from_secs(86_400))
}

pub(crate) async fn cache(server: &RedisServer) -> Cache {
    builder(server)
        .build()
        .await
        .expect("valid test configuration")
}

pub(crate) use tiercache_testkit::wait_until;

/// Number of keys in the server's database 0.
pub(crate) fn dbsize(server: &RedisServer) -> u64 {
    let reply = server.command(&["DBSIZE"]).expect("DBSIZE");
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("integer reply")
}

/// A cache with an in-process tier of 8 MiB and the given lease in namespace `ns`, once its
/// tier serves.
pub(crate) async fn tiered_with(server: &RedisServer, ns: &str, lease: Duration) -> Cache {
    let cache = builder(server)
        .namespace(ns)
        .local_capacity(8 << 20)
        .local_lease(lease)
        .build()
        .await
        .expect("valid test configuration");
    wait_live(&cache, true).await;
    cache
}

/// Waits (5 s at most) until `cache`'s tier serves (`live`) or not; returns how long it took.
pub(crate) async fn wait_live(cache: &Cache, live: bool) -> Duration {
    wait_until(
        Duration::from_secs(5),
        "the in-process tier's state",
        || async { cache.stats().await.local.is_some_and(|l| l.live == live) },
    )
    .await
}

/// Two caches on `server` sharing one fresh namespace, without in-process tiers: two
/// instances of one service, neither hearing of the other but through Redis.
pub(crate) async fn two_instances(server: &RedisServer) -> (Cache, Cache) {
    let ns = unique_namespace();
    let a = builder(server).namespace(ns.as_str()).build().await;
    let b = builder(server).namespace(ns.as_str()).build().await;
    (
        a.expect("valid test configuration"),
        b.expect("valid test configuration"),
    )
}

/// A `get_with` held inside its loader, for staging races: when [`held_load`] returns, the
/// loader has run `read` (its read of the source); [`HeldLoad::finish`] lets the load complete.
pub(crate) struct HeldLoad<T> {
    task: tokio::task::JoinHandle<T>,
    release: tokio::sync::oneshot::Sender<()>,
}

pub(crate) async fn held_load<T>(
    cache: &Cache,
    key: &Key,
    read: impl FnOnce() -> T + Send + 'static,
) -> HeldLoad<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (cache, key) = (cache.clone(), key.clone());
    let task = tokio::spawn(async move {
        cache
            .get_with(&key, async move {
                let value = read();
                read_tx.send(()).expect("the test waits for the read");
                release_rx.await.expect("the test releases the load");
                value
            })
            .await
    });
    read_rx.await.expect("the loader ran");
    HeldLoad { task, release }
}

impl<T> HeldLoad<T> {
    /// Lets the loader return; the value its caller got.
    pub(crate) async fn finish(self) -> T {
        self.release.send(()).expect("the load is still held");
        self.task.await.expect("the held load did not panic")
    }
}
