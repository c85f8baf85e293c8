//! scan-api on a Redis Cluster, configured as an operator would (`REDIS_CLUSTER_URLS`, resolved
//! by scan-api's own `Plan`): reads are cached (MISS, then HIT without the database), writes
//! invalidate every view they change, the health route says the cache is up, and the admin clear
//! empties the namespace on every master. Setting `REDIS_URL` as well is refused at start-up.

use reqwest::Method;
use scan_api::cache_setup::{Plan, Purpose, SetupError};
use scan_api::config::{CacheMode, Common};
use tiercache::Mode;
use tiercache_testkit::RedisCluster;

use crate::helpers::{Db, TestEnv, report};

fn settings(redis_url: Option<String>, cluster_urls: Option<String>) -> Common {
    Common {
        database_url: String::new(),
        cache_mode: CacheMode::Auto,
        redis_url,
        redis_cluster_urls: cluster_urls,
        cache_namespace: "scan-api".into(),
        app_env: "test".into(),
        cache_local_capacity: scan_api::cache_policy::LOCAL_CAPACITY,
        cache_max_value_bytes: tiercache::DEFAULT_MAX_VALUE_BYTES,
        cache_enabled: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_api_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let env = TestEnv::new(Db::Sqlite);
    let common = settings(None, Some(cluster.urls().join(",")));
    let plan = Plan::resolve(&common, Purpose::Serve, tiercache::DEFAULT_URL)
        .await
        .unwrap();
    assert_eq!((plan.mode, plan.cluster_urls.len()), (Mode::Redis, 6));
    let cache = plan.build(&common).await.unwrap();
    assert!(cache.is_connected());
    let app = env
        .app_on(cache, 32 * 1024 * 1024, Some(crate::helpers::ADMIN_TOKEN))
        .await;

    let first = app.post_report(report("shop/api", "v1", &["HIGH"])).await;
    assert_eq!(first.status, 201);
    let views = [
        "/api/images/shop%2Fapi/latest",
        "/api/scan-results?image=shop%2Fapi",
        "/api/vulnerabilities",
        "/api/images",
    ];
    app.assert_miss_then_hit(&views).await;
    let queries = app.store.queries();
    for p in views {
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("HIT"), "{p}");
    }
    assert_eq!(
        app.store.queries(),
        queries,
        "hits never reach the database"
    );

    // A newer scan: every view it changes misses and shows it.
    let second = app
        .post_report(report("shop/api", "v2", &["CRITICAL"]))
        .await;
    assert_eq!(second.status, 201);
    let latest = app.get(views[0]).await;
    assert_eq!(
        (latest.x_cache.as_deref(), &latest.body["id"]),
        (Some("MISS"), &second.body["id"])
    );
    for p in &views[1..] {
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("MISS"), "{p}");
    }

    let health = app.get("/api/cache/health").await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["status"], "up");
    let stats = app.cache.stats().await;
    assert_eq!((stats.errors, stats.timeouts), (0, 0), "{stats:?}");
    assert!(
        stats.keys.unwrap() >= 4,
        "keys counted on every master: {stats:?}"
    );

    // `scan-api cache` on the cluster, configured the same way: it counts and clears the
    // namespace on every master.
    let seeds = cluster.urls().join(",");
    let keys = app.cache.stats().await.keys.unwrap();
    let stats = cache_cli(&["stats", "--json"], &seeds).await;
    assert_eq!(stats["total_keys"], keys, "{stats}");
    let cleared = cache_cli(&["clear", "--json"], &seeds).await;
    assert_eq!(cleared["removed"], keys, "{cleared}");
    assert_eq!(app.cache.stats().await.keys, Some(0));
    assert_eq!(app.get(views[0]).await.x_cache.as_deref(), Some("MISS"));

    // The admin clear empties the namespace on every master.
    assert_eq!(app.get(views[1]).await.x_cache.as_deref(), Some("MISS"));
    let cleared = app.admin(Method::POST, "/api/cache/clear").await;
    assert_eq!(cleared.status, 200, "{:?}", cleared.body);
    assert_eq!(app.cache.stats().await.keys, Some(0));
    assert_eq!(app.get(views[1]).await.x_cache.as_deref(), Some("MISS"));
}

/// Runs the real binary, `scan-api cache ARGS`, with only `REDIS_CLUSTER_URLS` (and the test
/// apps' key space) in its environment; its JSON output.
async fn cache_cli(args: &[&str], seeds: &str) -> serde_json::Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scan-api"));
    cmd.env_clear()
        .env("APP_ENV", "test")
        .env("REDIS_CLUSTER_URLS", seeds)
        .arg("cache")
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running the scan-api binary");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn redis_url_and_redis_cluster_urls_together_are_refused() {
    let common = settings(
        Some("redis://127.0.0.1:1".into()),
        Some("redis://127.0.0.1:2,redis://127.0.0.1:3".into()),
    );
    let err = Plan::resolve(&common, Purpose::Serve, tiercache::DEFAULT_URL)
        .await
        .unwrap_err();
    assert!(matches!(err, SetupError::TwoRedis), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("REDIS_URL") && message.contains("REDIS_CLUSTER_URLS"),
        "{message}"
    );

    // `scan-api cache` refuses them together too, before connecting anywhere.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scan-api"));
    cmd.env_clear()
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("REDIS_CLUSTER_URLS", "redis://127.0.0.1:2")
        .args(["cache", "stats"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("REDIS_URL and REDIS_CLUSTER_URLS are both set"),
        "{stderr}"
    );
}
