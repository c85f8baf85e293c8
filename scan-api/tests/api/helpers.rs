//! `TestEnv::app`: the API on a free port, on its own Redis and its own database (SQLite file or
//! a fresh PostgreSQL database), with request helpers. Logs are silent unless `TEST_LOG` is set.
//!
//! An environment's apps cache in its [`Mode`]: Redis (the test's own server) by default, or
//! standalone (in process; the test's Redis is still started and named in the settings, so a
//! test can check that nothing reaches it). [`in_each_mode!`] runs one test body in both.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::{Method, StatusCode};
use scan_api::store::Store;
use scan_api::{AppState, cache_policy};
use serde_json::Value;
use tiercache::{Cache, Mode};
use tiercache_testkit::{PostgresServer, RedisServer};

pub(crate) const ADMIN_TOKEN: &str = "test-admin-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

/// A running API.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) store: Store,
    pub(crate) cache: Cache,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The Redis and database behind one or more apps of a test.
pub(crate) struct TestEnv {
    pub(crate) redis: RedisServer,
    pub(crate) db_url: String,
    /// How the apps from [`app`](Self::app) and [`app_with`](Self::app_with) cache.
    pub(crate) mode: Mode,
    /// Largest response body the apps cache.
    pub(crate) cache_max_body: usize,
    _dir: tempfile::TempDir,
}

/// Defines, for each `async fn name(mode: Mode)` named, the tests `name::redis` and
/// `name::standalone`.
macro_rules! in_each_mode {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$test(tiercache::Mode::Redis).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$test(tiercache::Mode::Standalone).await;
            }
        }
    )+};
}
pub(crate) use in_each_mode;

impl TestEnv {
    /// Redis mode.
    pub(crate) fn new(db: Db) -> Self {
        Self::in_mode(db, Mode::Redis)
    }

    pub(crate) fn in_mode(db: Db, mode: Mode) -> Self {
        // Logs go to the test output only when `TEST_LOG` is set.
        tiercache_testkit::init_test_logs("info");
        let dir = tempfile::tempdir().unwrap();
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("scan-api.db").display()),
            Db::Postgres => PostgresServer::shared().create_database(),
        };
        Self {
            redis: RedisServer::start(),
            db_url,
            mode,
            cache_max_body: cache_policy::MAX_RESPONSE_BYTES,
            _dir: dir,
        }
    }

    /// An app with the cache on, in the environment's mode.
    pub(crate) async fn app(&self) -> TestApp {
        self.app_with(|b| b, 32 * 1024 * 1024, Some(ADMIN_TOKEN))
            .await
    }

    /// An app on the same database with the cache off: the source of truth to compare with.
    pub(crate) async fn uncached_app(&self) -> TestApp {
        self.app_with(|b| b.enabled(false), 32 * 1024 * 1024, Some(ADMIN_TOKEN))
            .await
    }

    pub(crate) async fn app_with(
        &self,
        configure: impl FnOnce(tiercache::CacheBuilder) -> tiercache::CacheBuilder,
        body_limit: usize,
        admin_token: Option<&str>,
    ) -> TestApp {
        let builder = cache_policy::configure(
            Cache::builder()
                .mode(self.mode)
                .url(self.redis.url())
                .env_prefix("test")
                .namespace("scan-api")
                // These tests assert what `X-Cache` says on a 2-core machine that also runs the
                // rest of the suite: a Redis call that a starved scheduler stretches past the
                // default 50 ms would answer BYPASS. The bound itself is tiercache's to test.
                .op_timeout(std::time::Duration::from_millis(500)),
        );
        let cache = configure(builder).build().await.unwrap();
        self.app_on(cache, body_limit, admin_token).await
    }

    /// The app's router, not served (the cache disabled): for tests that read its route table.
    pub(crate) async fn router(&self) -> axum::Router {
        let state = AppState {
            store: Store::connect(&self.db_url).await.unwrap(),
            cache: Cache::builder().enabled(false).build().await.unwrap(),
            body_limit: 1 << 20,
            cache_max_body: self.cache_max_body,
        };
        scan_api::app(state, Some(ADMIN_TOKEN.to_owned()))
    }

    /// An app with the given cache.
    pub(crate) async fn app_on(
        &self,
        cache: Cache,
        body_limit: usize,
        admin_token: Option<&str>,
    ) -> TestApp {
        let store = Store::connect(&self.db_url).await.unwrap();
        let state = AppState {
            store: store.clone(),
            cache: cache.clone(),
            body_limit,
            cache_max_body: self.cache_max_body,
        };
        let app = scan_api::app(state, admin_token.map(str::to_owned));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = scan_api::run(listener, app, std::future::pending()).await;
        });
        TestApp {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            cache,
            server,
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) x_cache: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
    }
}

impl TestApp {
    /// Reads each of `views` twice, asserting a 200 `MISS` then a `HIT`.
    pub(crate) async fn assert_miss_then_hit(&self, views: &[&str]) {
        for p in views {
            let a = self.get(p).await;
            assert_eq!(
                (a.status.as_u16(), a.x_cache.as_deref()),
                (200, Some("MISS")),
                "{p}"
            );
            assert_eq!(self.get(p).await.x_cache.as_deref(), Some("HIT"), "{p}");
        }
    }

    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let x_cache = header("x-cache");
        let content_type = header("content-type");
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{path}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            x_cache,
            content_type,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, None, None).await
    }

    pub(crate) async fn post_report(&self, body: Vec<u8>) -> Answer {
        self.request(Method::POST, "/api/scan-results", Some(body), None)
            .await
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.request(Method::DELETE, path, None, None).await
    }

    pub(crate) async fn admin(&self, method: Method, path: &str) -> Answer {
        self.request(method, path, None, Some(ADMIN_TOKEN)).await
    }
}

/// The real Trivy fixtures, or `None` (with a message) when `../shared` is not beside the clone.
pub(crate) fn fixtures() -> Option<Vec<PathBuf>> {
    let dir = std::env::var("TRIVY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/trivy"
            ))
        });
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!(
            "SKIPPED: Trivy fixtures not found at {} (they live in ../shared beside the clone)",
            dir.display()
        );
        return None;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Some(files)
}

/// Percent-encodes a path segment.
pub(crate) fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) use tiercache_testkit::wait_until;

/// A small valid report for `image:tag` with the given severities.
pub(crate) fn report(image: &str, tag: &str, severities: &[&str]) -> Vec<u8> {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let vulns: Vec<Value> = severities
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "VulnerabilityID": format!("CVE-2099-{:05}", (i as u32 * 7 + n) % 50),
                "PkgName": format!("pkg{}", i % 4),
                "InstalledVersion": "1.0",
                "FixedVersion": if i % 2 == 0 { Value::from("1.1") } else { Value::Null },
                "Severity": s,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "SchemaVersion": 2,
        "ArtifactName": format!("{image}:{tag}"),
        "ArtifactType": "container_image",
        "Metadata": { "RepoTags": [format!("{image}:{tag}")], "OS": {"Family": "alpine", "Name": "3.19"} },
        "Results": [{ "Target": "t", "Class": "os-pkgs", "Type": "alpine", "Vulnerabilities": vulns }],
    }))
    .unwrap()
}
