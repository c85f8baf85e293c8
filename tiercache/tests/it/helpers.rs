//! Shared set-up: a cache on a test's own Redis, unique namespaces, and deadline polling.

use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use tiercache::{Cache, CacheBuilder};
use tiercache_testkit::RedisServer;

/// Logs go to the test output only when `TEST_LOG` is set.
pub(crate) fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "tiercache=debug".into()),
                )
                .with_test_writer()
                .init();
        }
    });
}

/// A namespace no other cache in this process uses.
pub(crate) fn unique_namespace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A builder for `server` with a fresh namespace and test-friendly recovery timing.
pub(crate) fn builder(server: &RedisServer) -> CacheBuilder {
    init_tracing();
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
