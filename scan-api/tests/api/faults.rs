//! Redis stopped mid-test, or the service's ACL user switched off: every endpoint still
//! answers correctly from the database, health says down, `X-Cache` says BYPASS. Redis back (or
//! the user on again): health is up and hits resume within 1 s. Redis-only: a standalone cache
//! has no Redis to lose.

use std::time::{Duration, Instant};

use tiercache_testkit::RedisServer;

use crate::helpers::{ADMIN_TOKEN, Db, TestEnv, report, wait_until};

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

/// The reported case: scan-api logs in as the ACL user `svc`; `ACL SETUSER svc off` and
/// `CLIENT KILL USER svc`, then `ACL SETUSER svc on` a moment later. The cache used to stay
/// off (BYPASS, health 503 "authentication failed") until the service restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_again_after_its_acl_user_is_switched_off_and_on() {
    let mut env = TestEnv::new(Db::Sqlite);
    env.redis = RedisServer::start_with_user("svc", "pw");
    let app = env
        .app_with(
            |b| b.username("svc").password("pw"),
            32 * 1024 * 1024,
            Some(ADMIN_TOKEN),
        )
        .await;
    let truth = env.uncached_app().await;
    app.post_report(report("acl/app", "v1", &["HIGH"])).await;
    let path = "/api/insights";
    app.get(path).await; // warm
    assert_eq!(app.get(path).await.x_cache.as_deref(), Some("HIT"));
    assert_eq!(app.get("/api/cache/health").await.status, 200);

    let admin = |args: &[&str]| {
        let reply = env.redis.command(args).unwrap();
        assert!(!reply.starts_with('-'), "{args:?}: {reply}");
    };
    admin(&["ACL", "SETUSER", "svc", "off"]);
    admin(&["CLIENT", "KILL", "USER", "svc"]);
    let refused = env.redis.refused_logins();
    for _ in 0..5 {
        let a = app.get(path).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, truth.get(path).await.body, "from the database");
    }
    wait_until(Duration::from_secs(2), "the breaker to open", || async {
        !app.cache.is_connected()
    })
    .await;
    // As reported: the user stays off for about a second, while the cache keeps trying.
    wait_until(
        Duration::from_secs(3),
        "three more refused logins",
        || async { env.redis.refused_logins() >= refused + 3 },
    )
    .await;
    assert_eq!(app.get(path).await.x_cache.as_deref(), Some("BYPASS"));
    assert_eq!(app.get("/api/cache/health").await.status, 503);

    admin(&["ACL", "SETUSER", "svc", "on"]);
    let on = Instant::now();
    wait_until(Duration::from_secs(5), "a cache hit after `on`", || async {
        app.get(path).await.x_cache.as_deref() == Some("HIT")
    })
    .await;
    let recovered = on.elapsed();
    eprintln!("ACL user switched on: X-Cache HIT again after {recovered:?}");
    assert!(
        recovered <= Duration::from_secs(1),
        "hits resumed only {recovered:?} after the user was switched on"
    );
    let health = app.get("/api/cache/health").await;
    assert_eq!(
        (health.status.as_u16(), &health.body["status"]),
        (200, &"up".into())
    );
    assert_eq!(app.get(path).await.body, truth.get(path).await.body);
}
