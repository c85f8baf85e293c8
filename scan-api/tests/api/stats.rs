//! Cache statistics move exactly as the requests made, in both cache modes.

use std::time::Duration;

use tiercache::Mode;

use crate::helpers::{Db, TestEnv, in_each_mode, report, wait_until};

in_each_mode!(hits_and_misses_move_exactly_as_the_requests);

async fn hits_and_misses_move_exactly_as_the_requests(mode: Mode) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app().await;
    let created = app
        .post_report(report("stats/app", "v1", &["CRITICAL", "HIGH"]))
        .await;
    let id = created.body["id"].as_i64().unwrap();
    let paths = [
        "/api/scan-results".to_string(),
        "/api/scan-results?image=stats%2Fapp".to_string(),
        format!("/api/scan-results/{id}"),
        "/api/vulnerabilities".to_string(),
        "/api/vulnerabilities/active?severity=CRITICAL".to_string(),
        "/api/images".to_string(),
        "/api/images/stats%2Fapp/latest".to_string(),
        "/api/images/stats%2Fapp/versions".to_string(),
        "/api/insights".to_string(),
    ];
    // The in-process tier goes live once its invalidation channel is subscribed.
    wait_until(Duration::from_secs(5), "the in-process tier", || async {
        app.cache.stats().await.local.is_some_and(|l| l.live)
    })
    .await;
    let before = app.get("/api/cache/stats").await.body;
    let (h0, m0, l0) = (
        before["hits"].as_u64().unwrap(),
        before["misses"].as_u64().unwrap(),
        before["local_hits"].as_u64().unwrap(),
    );
    for (round, expect) in [(1, "MISS"), (2, "HIT"), (3, "HIT")] {
        for p in &paths {
            let a = app.get(p).await;
            assert_eq!(a.status, 200, "{p}");
            assert_eq!(a.x_cache.as_deref(), Some(expect), "round {round}: {p}");
        }
    }
    let after = app.get("/api/cache/stats").await.body;
    let n = paths.len() as u64;
    // One miss per path, and one for the insights computation, cached as data under its own
    // category behind the insights response (reached once, on that response's miss).
    assert_eq!(after["misses"].as_u64().unwrap() - m0, n + 1);
    assert_eq!(after["hits"].as_u64().unwrap() - h0, 2 * n);
    assert_eq!(
        after["local_hits"].as_u64().unwrap() - l0,
        2 * n,
        "every hit served in process"
    );
    assert_eq!(after["local"]["live"], true);
    assert!(after["local"]["entries"].as_u64().unwrap() <= n + 1);
    assert_eq!(after["categories"]["analysis"]["hits"], 2);
    assert_eq!(after["categories"]["analysis"]["misses"], 1);
    assert_eq!(after["categories"]["image_metadata"]["misses"], 3);
    assert_eq!(after["categories"]["insights_data"]["misses"], 1);
    assert_eq!(after["categories"]["insights_data"]["hits"], 0);
    assert_eq!(after["mode"], mode.as_str());
    for field in ["hit_rate", "connected", "uptime"] {
        assert!(!after[field].is_null(), "{field} in {after}");
    }
    if mode == Mode::Redis {
        assert_eq!(after["total_keys"].as_u64().unwrap(), n + 1);
        assert_eq!(after["connected"], true);
        // The test's redis-server runs without a limit: Redis says 0.
        assert_eq!(after["maxmemory_bytes"], 0, "{after}");
        for field in ["memory_used", "memory_used_bytes", "evictions"] {
            assert!(!after[field].is_null(), "{field} in {after}");
        }
        assert!(
            after["memory_used"]
                .as_str()
                .unwrap()
                .ends_with(['K', 'M', 'B'])
        );
    } else {
        // Redis's figures are absent: there is no Redis.
        assert_eq!(after["connected"], false);
        for field in [
            "total_keys",
            "memory_used",
            "memory_used_bytes",
            "maxmemory_bytes",
            "evictions",
        ] {
            assert!(after[field].is_null(), "{field} in {after}");
        }
    }
    // The database was asked once per distinct query, not once per request.
    let queries_before = app.store.queries();
    for p in &paths {
        app.get(p).await;
    }
    assert_eq!(
        app.store.queries(),
        queries_before,
        "hits never reach the database"
    );
}
