//! Shared set-up: caches in each mode on a test's own Redis, with unique namespaces.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tiercache::{Cache, CacheBuilder, Category, Mode};
use tiercache_testkit::RedisServer;

pub(crate) use tiercache_testkit::wait_until;

/// A category with a TTL of its own in every test cache.
pub(crate) const REPORTS: Category = Category::from_static("reports");
pub(crate) const REPORTS_TTL: Duration = Duration::from_secs(900);

/// A namespace no other cache in this process uses.
pub(crate) fn unique_namespace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("m{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn builder() -> CacheBuilder {
    // Logs go to the test output only when `TEST_LOG` is set.
    tiercache_testkit::init_test_logs("tiercache=debug");
    Cache::builder()
        .env_prefix("test")
        .namespace(unique_namespace())
        .jitter(0.0)
        .ttl(REPORTS, REPORTS_TTL)
}

/// A cache on `server`, without an in-process tier.
pub(crate) async fn redis(server: &RedisServer) -> Cache {
    builder().url(server.url()).build().await.unwrap()
}

/// A cache on `server` with an in-process tier, once the tier serves.
pub(crate) async fn tiered(server: &RedisServer) -> Cache {
    let cache = builder()
        .url(server.url())
        .local_capacity(8 << 20)
        .build()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the in-process tier to serve",
        || async { cache.stats().await.local.is_some_and(|l| l.live) },
    )
    .await;
    cache
}

/// A standalone cache: the in-process tier alone, never connecting.
pub(crate) async fn standalone() -> Cache {
    builder()
        .mode(Mode::Standalone)
        .local_capacity(8 << 20)
        .build()
        .await
        .unwrap()
}

/// One cache of each kind, named for the failure messages.
pub(crate) async fn every_mode(server: &RedisServer) -> Vec<(&'static str, Cache)> {
    vec![
        ("redis", redis(server).await),
        ("redis + tier", tiered(server).await),
        ("standalone", standalone().await),
    ]
}

/// A counter of body runs.
#[derive(Debug, Default)]
pub(crate) struct Runs(AtomicU32);

impl Runs {
    pub(crate) const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// Counts a run; returns how many ran before it.
    pub(crate) fn count(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}
