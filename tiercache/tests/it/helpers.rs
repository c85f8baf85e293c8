//! Shared set-up: a cache on a test's own Redis, unique namespaces, and deadline polling.

use std::sync::atomic::{AtomicU32, Ordering};

use tiercache::{Cache, CacheBuilder};
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
}

pub(crate) async fn cache(server: &RedisServer) -> Cache {
    builder(server)
        .build()
        .await
        .expect("valid test configuration")
}

pub(crate) use tiercache_testkit::wait_until;

/// `calls=N` of one command in `INFO commandstats`, 0 if it was never called.
pub(crate) fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.command(&["INFO", "commandstats"]).expect("INFO");
    let needle = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Number of keys in the server's database 0.
pub(crate) fn dbsize(server: &RedisServer) -> u64 {
    let reply = server.command(&["DBSIZE"]).expect("DBSIZE");
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("integer reply")
}
