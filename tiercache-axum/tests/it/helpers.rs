//! Shared set-up: a cache on a test's own Redis, a router served on a free port, run counters
//! for its handlers, and a client that reads whole answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use reqwest::header::{HeaderMap, HeaderName};
use reqwest::{Method, StatusCode};
use tiercache::{Cache, CacheBuilder};
use tiercache_testkit::RedisServer;

pub(crate) use tiercache_testkit::wait_until;

/// The namespace of the tests' caches (each test has its own Redis).
pub(crate) const NAMESPACE: &str = "rc-test";

/// How long a test waits for something that should happen at once on an idle machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A bound on every Redis call of the tests' caches. Generous: the tests assert what `X-Cache`
/// says on a 2-core machine that also runs the rest of the suite, where a Redis call that a
/// starved scheduler stretches past the default 50 ms would answer `BYPASS`.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// A builder for a cache on `redis` in `namespace`, with an in-process tier.
pub(crate) fn builder(redis: &RedisServer, namespace: &str) -> CacheBuilder {
    // Logs go to the test output only when `TEST_LOG` is set.
    tiercache_testkit::init_test_logs("tiercache=debug,tiercache_axum=trace");
    Cache::builder()
        .url(redis.url())
        .namespace(namespace)
        .local_capacity(8 << 20)
        .op_timeout(OP_TIMEOUT)
}

/// A cache on `redis` in [`NAMESPACE`], once its in-process tier serves.
pub(crate) async fn cache(redis: &RedisServer) -> Cache {
    cache_in(redis, NAMESPACE).await
}

/// A cache on `redis` in `namespace`, once its in-process tier serves.
pub(crate) async fn cache_in(redis: &RedisServer, namespace: &str) -> Cache {
    let cache = builder(redis, namespace)
        .build()
        .await
        .expect("valid test configuration");
    wait_live(&cache, true).await;
    cache
}

/// Waits until `cache`'s in-process tier serves (`live`) or not.
pub(crate) async fn wait_live(cache: &Cache, live: bool) {
    wait_until(PATIENCE, "the in-process tier's state", || async {
        cache.stats().await.local.is_some_and(|l| l.live == live)
    })
    .await;
}

/// How many times a handler ran. Each route has its own; handlers take it as their state.
#[derive(Clone, Debug, Default)]
pub(crate) struct Runs(Arc<AtomicUsize>);

impl Runs {
    /// Counts one run (called by the handler).
    pub(crate) fn tick(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A router served on `127.0.0.1:0` by `axum::serve`, and a client for it. The server task is
/// aborted on drop.
pub(crate) struct TestServer {
    pub(crate) base: String,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn serve(app: Router) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer {
        base: format!("http://{addr}"),
        // Loopback only: no proxy from the environment.
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        task,
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    /// A header's value as text, `None` when absent.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// `X-Cache`, which every answer of a cached route carries.
    pub(crate) fn x_cache(&self) -> &str {
        self.header("x-cache")
            .unwrap_or_else(|| panic!("no X-Cache in {:?}", self.headers))
    }

    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

impl TestServer {
    /// `method path` with `headers`, read whole.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, &[]).await
    }

    pub(crate) async fn get_with(&self, path: &str, headers: &[(HeaderName, &str)]) -> Answer {
        self.request(Method::GET, path, headers).await
    }
}
