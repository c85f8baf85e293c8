//! Redis full (`maxmemory` reached under `noeviction`, so every write is refused with `OOM`):
//! every request still answers 200 with the database's data, cached answers keep coming from
//! Redis, writes are reflected at once, and the refusals are counted as failed writes, not as
//! Redis being down. Redis-only: a standalone cache has no Redis to fill.

use crate::helpers::{Db, TestEnv, report};

/// Fills the test's Redis with foreign keys until it refuses a write for memory.
fn fill_until_oom(env: &TestEnv) {
    let filler = "x".repeat(64 << 10);
    for i in 0..1000 {
        let reply = env
            .redis
            .command(&["SET", &format!("filler:{i}"), &filler])
            .unwrap();
        if reply.starts_with("-OOM") {
            return;
        }
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    panic!("redis never refused a write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_answers_200_while_redis_refuses_writes() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    let truth = env.uncached_app().await;
    let created = app
        .post_report(report("oom/app", "v1", &["HIGH", "MEDIUM"]))
        .await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_i64().unwrap();
    let warmed = [
        format!("/api/scan-results/{id}"),
        "/api/images/oom%2Fapp/latest".to_string(),
    ];
    for p in &warmed {
        app.get(p).await;
    }
    env.redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    env.redis
        .command(&["CONFIG", "SET", "maxmemory", "1mb"])
        .unwrap();
    fill_until_oom(&env);

    let (mut requests, mut not_200) = (0, Vec::new());
    // Answers cached before Redis filled up are still hits, from Redis (the breaker stays
    // closed), whatever the in-process tier holds.
    for p in &warmed {
        let a = app.get(p).await;
        requests += 1;
        if a.status != 200 {
            not_200.push((p.clone(), a.status));
        }
        assert_eq!(a.x_cache.as_deref(), Some("HIT"), "{p}");
    }
    // A write is acknowledged, and every read reflects it (the invalidations went through).
    let second = app
        .post_report(report("oom/app", "v2", &["CRITICAL"]))
        .await;
    requests += 1;
    assert_eq!(second.status, 201, "{:?}", second.body);
    let paths = [
        "/api/scan-results".to_string(),
        format!("/api/scan-results/{id}"),
        "/api/vulnerabilities?severity=HIGH".to_string(),
        "/api/images".to_string(),
        "/api/images/oom%2Fapp/latest".to_string(),
        "/api/insights".to_string(),
    ];
    for round in 0..3 {
        for p in &paths {
            let a = app.get(p).await;
            requests += 1;
            if a.status != 200 {
                not_200.push((p.clone(), a.status));
            }
            assert_eq!(
                a.body,
                truth.get(p).await.body,
                "{p} (round {round}) answers as the database does"
            );
            assert_ne!(
                a.x_cache.as_deref(),
                Some("BYPASS"),
                "{p}: Redis is up, only full"
            );
        }
    }
    assert!(not_200.is_empty(), "{not_200:?} of {requests} requests");

    let stats = app.get("/api/cache/stats").await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["connected"], true);
    assert_eq!(stats.body["maxmemory_policy"], "noeviction");
    assert!(
        stats.body["oom_write_failures"].as_u64().unwrap() > 0,
        "{}",
        stats.body
    );
    assert_eq!(app.get("/api/cache/health").await.body["status"], "up");
}
