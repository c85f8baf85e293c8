//! The cache modes end to end: the health routes name the mode, a standalone app caches and
//! sees its own writes without any Redis, and `auto` resolves against real Redis processes (a
//! named Redis is kept while it is away; without one, the app caches in process).

use std::time::Duration;

use scan_api::cache_setup::{Plan, Purpose};
use scan_api::config::{CacheMode, Common};
use serde_json::json;
use tiercache::Mode;

use crate::helpers::{Db, TestEnv, report, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_routes_name_the_mode() {
    for (mode, tier_live) in [(Mode::Redis, true), (Mode::Standalone, true)] {
        let env = TestEnv::in_mode(Db::Sqlite, mode);
        let app = env.app().await;
        if mode == Mode::Redis {
            wait_until(Duration::from_secs(5), "the in-process tier", || async {
                app.cache.stats().await.local.is_some_and(|l| l.live)
            })
            .await;
        }
        let health = app.get("/api/cache/health").await;
        assert_eq!(health.status, 200, "{mode:?}: {:?}", health.body);
        assert_eq!(health.body["status"], "up");
        assert_eq!(health.body["mode"], mode.as_str());
        assert_eq!(health.body["local"]["live"], tier_live, "{:?}", health.body);
        assert_eq!(
            health.body["latency_ms"].is_number(),
            mode == Mode::Redis,
            "a PING's round trip, in redis mode only: {:?}",
            health.body
        );
        let own = app.get("/health").await;
        assert_eq!(own.status, 200);
        assert_eq!(own.body["cache_mode"], mode.as_str());
        assert_eq!(own.body["cache_connected"], mode == Mode::Redis);
        assert_eq!(
            app.get("/api/cache/stats").await.body["mode"],
            mode.as_str()
        );
    }
    // Off: the cache health says so (503: nothing is cached); the service is alive.
    let env = TestEnv::new(Db::Sqlite);
    let off = env.uncached_app().await;
    let health = off.get("/api/cache/health").await;
    assert_eq!(
        (health.status.as_u16(), &health.body["mode"]),
        (503, &json!("disabled"))
    );
    assert_eq!(off.get("/health").await.body["cache_mode"], "disabled");
}

/// Standalone: MISS then HIT, a write is reflected by the next GET (its own invalidations),
/// errors say MISS rather than BYPASS, and the Redis named in the settings is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_caches_and_sees_its_own_writes() {
    let env = TestEnv::in_mode(Db::Sqlite, Mode::Standalone);
    let app = env.app().await;
    let first = app
        .post_report(report("solo/app", "v1", &["HIGH", "LOW"]))
        .await;
    assert_eq!(first.status, 201);
    let views = [
        "/api/images/solo%2Fapp/latest",
        "/api/scan-results?image=solo%2Fapp",
        "/api/vulnerabilities",
        "/api/images",
        "/api/insights",
    ];
    app.assert_miss_then_hit(&views).await;
    let queries = app.store.queries();
    for p in views {
        app.get(p).await;
    }
    assert_eq!(
        app.store.queries(),
        queries,
        "hits never reach the database"
    );

    // A newer scan of the image: every view that it changes misses and shows it.
    let second = app
        .post_report(report("solo/app", "v2", &["CRITICAL"]))
        .await;
    assert_eq!(second.status, 201);
    let latest = app.get(views[0]).await;
    assert_eq!(latest.x_cache.as_deref(), Some("MISS"));
    assert_eq!(latest.body["id"], second.body["id"]);
    let list = app.get(views[1]).await;
    assert_eq!(list.x_cache.as_deref(), Some("MISS"));
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    assert_eq!(list.body[0]["id"], second.body["id"]);
    for p in &views[2..] {
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("MISS"), "{p}");
    }
    assert_eq!(app.get(views[0]).await.x_cache.as_deref(), Some("HIT"));
    // A delete too.
    let id = second.body["id"].as_i64().unwrap();
    assert_eq!(
        app.delete(&format!("/api/scan-results/{id}")).await.status,
        204
    );
    let latest = app.get(views[0]).await;
    assert_eq!(
        (latest.x_cache.as_deref(), &latest.body["id"]),
        (Some("MISS"), &first.body["id"])
    );

    // An error is not cached, and says MISS: the cache works, it just holds no errors.
    let missing = app.get("/api/scan-results/987654").await;
    assert_eq!(
        (missing.status.as_u16(), missing.x_cache.as_deref()),
        (404, Some("MISS"))
    );
    // Nothing reached the Redis the builder was given.
    assert_eq!(env.redis.command(&["DBSIZE"]).unwrap(), ":0\r\n");
    assert!(!app.cache.is_connected());
}

fn settings(mode: CacheMode, redis_url: Option<String>) -> Common {
    Common {
        database_url: String::new(),
        cache_mode: mode,
        redis_url,
        redis_cluster_urls: None,
        cache_namespace: "scan-api".into(),
        app_env: "test".into(),
        cache_local_capacity: scan_api::cache_policy::LOCAL_CAPACITY,
        cache_max_value_bytes: tiercache::DEFAULT_MAX_VALUE_BYTES,
        cache_enabled: true,
    }
}

/// `auto` through scan-api's own resolution and builder, against a real Redis process standing
/// in for the default address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_the_redis_that_answers_keeps_a_named_one_and_else_caches_in_process() {
    let mut env = TestEnv::new(Db::Sqlite);
    let default_url = env.redis.url();
    let app = async |env: &TestEnv, common: Common| {
        let plan = Plan::resolve(&common, Purpose::Serve, &default_url)
            .await
            .unwrap();
        let cache = plan.build(&common).await.unwrap();
        assert_eq!(cache.mode(), plan.mode);
        (plan, env.app_on(cache, 1 << 20, None).await)
    };

    // No REDIS_URL, a Redis at the default address: Redis mode.
    let (plan, shared) = app(&env, settings(CacheMode::Auto, None)).await;
    assert_eq!(plan.mode, Mode::Redis, "{}", plan.reason);
    assert!(shared.cache.is_connected());
    let a = shared.get("/api/images").await;
    assert_eq!(a.x_cache.as_deref(), Some("MISS"));
    drop(shared);
    env.redis.stop();

    // A named Redis stays Redis while it is away: reads bypass to the database, health is 503,
    // and no standalone tier takes its place.
    let (plan, named) = app(&env, settings(CacheMode::Auto, Some(default_url.clone()))).await;
    assert_eq!(plan.mode, Mode::Redis, "{}", plan.reason);
    assert!(plan.reason.contains("REDIS_URL is set"), "{}", plan.reason);
    assert_eq!(
        named
            .post_report(report("a/b", "v1", &["LOW"]))
            .await
            .status,
        201
    );
    for _ in 0..2 {
        let a = named.get("/api/images").await;
        assert_eq!(
            (a.status.as_u16(), a.x_cache.as_deref()),
            (200, Some("BYPASS"))
        );
    }
    let health = named.get("/api/cache/health").await;
    assert_eq!(
        (health.status.as_u16(), &health.body["mode"]),
        (503, &json!("redis"))
    );

    // No REDIS_URL and nothing at the default address: standalone, MISS then HIT.
    let (plan, solo) = app(&env, settings(CacheMode::Auto, None)).await;
    assert_eq!(plan.mode, Mode::Standalone, "{}", plan.reason);
    assert!(
        plan.reason.contains("no REDIS_URL set and no Redis at"),
        "{}",
        plan.reason
    );
    let first = solo.get("/api/images").await;
    let second = solo.get("/api/images").await;
    assert_eq!(
        (first.x_cache.as_deref(), second.x_cache.as_deref()),
        (Some("MISS"), Some("HIT"))
    );
    assert_eq!(first.body, second.body);
    let health = solo.get("/api/cache/health").await;
    assert_eq!(
        (health.status.as_u16(), &health.body["mode"]),
        (200, &json!("standalone"))
    );

    // `seed` and `import` in the same situation run without a cache.
    let plan = Plan::resolve(
        &settings(CacheMode::Auto, None),
        Purpose::Batch,
        &default_url,
    )
    .await
    .unwrap();
    assert_eq!(plan.mode, Mode::Disabled, "{}", plan.reason);
}
