//! Redis stopped mid-test: every endpoint still answers correctly from the database, health
//! says down, `X-Cache` says BYPASS. Redis back: health is up and hits resume within 1 s.
//! Redis-only: a standalone cache has no Redis to lose.

use std::time::Duration;

use crate::helpers::{Db, TestEnv, report, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_survives_redis_going_away_and_coming_back() {
    let mut env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    let truth = env.uncached_app().await;
    let created = app
        .post_report(report("fault/app", "v1", &["HIGH", "MEDIUM"]))
        .await;
    let id = created.body["id"].as_i64().unwrap();
    let paths = [
        "/api/scan-results".to_string(),
        format!("/api/scan-results/{id}"),
        "/api/vulnerabilities?severity=HIGH".to_string(),
        "/api/images".to_string(),
        "/api/images/fault%2Fapp/latest".to_string(),
        "/api/insights".to_string(),
    ];
    for p in &paths {
        app.get(p).await; // warm
    }
    assert_eq!(app.get("/api/cache/health").await.body["status"], "up");

    env.redis.stop();
    // A write while Redis is down is still acknowledged and reflected.
    let second = app
        .post_report(report("fault/app", "v2", &["CRITICAL"]))
        .await;
    assert_eq!(second.status, 201);
    for p in &paths {
        let a = app.get(p).await;
        let t = truth.get(p).await;
        assert_eq!(a.status, 200, "{p}");
        assert_eq!(a.body, t.body, "{p} must answer from the database");
    }
    wait_until(Duration::from_secs(2), "the breaker to open", || async {
        !app.cache.is_connected()
    })
    .await;
    for p in &paths {
        let a = app.get(p).await;
        assert_eq!(a.x_cache.as_deref(), Some("BYPASS"), "{p}");
    }
    let health = app.get("/api/cache/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(health.body["status"], "down");
    assert!(health.body["detail"].as_str().unwrap().contains("database"));
    assert_eq!(
        app.get("/health").await.status,
        200,
        "the service itself is alive"
    );
    assert_eq!(app.get("/api/cache/stats").await.body["connected"], false);

    env.redis.restart();
    let recovered = wait_until(
        Duration::from_secs(5),
        "a cache hit after restart",
        || async { app.get("/api/insights").await.x_cache.as_deref() == Some("HIT") },
    )
    .await;
    assert!(
        recovered < Duration::from_secs(1),
        "hits resumed after {recovered:?}"
    );
    assert_eq!(app.get("/api/cache/health").await.body["status"], "up");
    for p in &paths {
        assert_eq!(
            app.get(p).await.body,
            truth.get(p).await.body,
            "{p} after recovery"
        );
    }
}
