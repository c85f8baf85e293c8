//! Redis full (`maxmemory` reached under `noeviction`, so every write is refused with `OOM`):
//! every request still answers 200 with the database's data, cached answers keep coming from
//! Redis, writes are reflected at once, and the refusals are counted as failed writes, not as
//! Redis being down. Redis-only: a standalone cache has no Redis to fill.

use tiercache_testkit::exposition;

use crate::helpers::{ADMIN_TOKEN, Db, TestEnv, report};

/// This test's namespace: a label of its metrics (the recorder is global to the binary).
const NS: &str = "memory-oom";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_answers_200_while_redis_refuses_writes() {
    let env = TestEnv::new(Db::Sqlite);
    // Before the cache is built: its metrics handles are taken then.
    tiercache_axum::metrics::install().unwrap();
    let app = env
        .app_with(|b| b.namespace(NS), 32 * 1024 * 1024, Some(ADMIN_TOKEN))
        .await;
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
    env.redis.fill_until_oom();

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

    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scraped = exposition::parse(&text).unwrap();
    let series = |name: &str| -> Vec<(Option<String>, f64)> {
        scraped
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.get("namespace").map(String::as_str) == Some(&format!("test:{NS}"))
            })
            .map(|s| (s.labels.get("reason").cloned(), s.value))
            .collect()
    };
    let failures = series("tiercache_write_failures_total");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0.as_deref(), Some("oom"));
    assert!(failures[0].1 > 0.0, "{failures:?}");
    let trips = series("tiercache_breaker_trips_total");
    assert!(trips.iter().all(|(_, v)| *v == 0.0), "{trips:?}");
}
