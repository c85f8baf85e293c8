//! `GET /metrics`: after known operations, every counter moved exactly as they did, the states
//! are sampled at the scrape, and the whole answer is the Prometheus text format.
//!
//! The recorder is global to the test process: this test's caches have their own namespace,
//! which every series carries, so other tests' caches (built before or after) do not count.

use std::time::Duration;

use reqwest::StatusCode;
use tiercache::{Category, Tag};
use tiercache_axum::metrics;
use tiercache_testkit::RedisServer;
use tiercache_testkit::exposition::{self, Exposition};

use crate::helpers::{builder, serve, wait_live};

const THINGS: Category = Category::from_static("things");
const NS: &str = "dev:metrics-exact";

async fn scrape(server: &crate::helpers::TestServer) -> Exposition {
    let a = server.get("/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    exposition::parse(a.text()).unwrap_or_else(|e| panic!("{e}\n{}", a.text()))
}

/// A counter's value for this test's namespace (0 when the series does not exist yet).
fn count(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("namespace", NS)];
    all.extend_from_slice(labels);
    e.value(name, &all).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_exactly_as_the_operations_and_the_output_parses() {
    let handle = metrics::install().unwrap();
    let redis = RedisServer::start();
    // A long lease: a tier hit must not become a Redis hit on a starved machine.
    let make = || {
        builder(&redis, "metrics-exact")
            .local_lease(Duration::from_secs(5))
            .ttl(THINGS, Duration::from_secs(60))
            .build()
    };
    let (a, b) = (make().await.unwrap(), make().await.unwrap());
    wait_live(&a, true).await;
    wait_live(&b, true).await;
    let server = serve(metrics::router(handle, a.clone())).await;
    let before = scrape(&server).await;

    // 3 misses.
    for i in 0..3 {
        assert_eq!(
            a.get::<u32>(&a.key(&THINGS, [format!("absent{i}")])).await,
            None
        );
    }
    // 2 sets, then 2 Redis hits (which fill the tier), then 3 tier hits.
    let (k4, k5) = (a.key(&THINGS, ["k4"]), a.key(&THINGS, ["k5"]));
    a.insert(&k4, &4u32).await;
    a.insert(&k5, &5u32).await;
    assert_eq!(a.get::<u32>(&k4).await, Some(4));
    assert_eq!(a.get::<u32>(&k5).await, Some(5));
    for _ in 0..3 {
        assert_eq!(a.get::<u32>(&k4).await, Some(4));
    }
    // A load that fails and one that succeeds (and is stored: one more set): 2 misses.
    let failed = a
        .try_get_with(&a.key(&THINGS, ["k6"]), async {
            Err::<u32, _>(std::io::Error::other("the source is down"))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(a.get_with(&a.key(&THINGS, ["k7"]), async { 7u32 }).await, 7);
    // One invalidation of each kind.
    a.invalidate(&k4).await;
    a.invalidate_tag(&Tag::new("img", ["nginx"])).await;
    a.invalidate_pattern(&a.key_space().pattern(&THINGS, ["k5"]))
        .await
        .unwrap();
    a.clear().await.unwrap();
    // b has heard all of a's notices: 2 inserts and 4 invalidations.
    assert!(b.catch_up().await);
    let after = scrape(&server).await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        count(&after, name, labels) - count(&before, name, labels)
    };
    let things = ("category", "things");
    assert_eq!(delta("tiercache_misses_total", &[things]), 5.0);
    assert_eq!(
        delta("tiercache_hits_total", &[things, ("tier", "redis")]),
        2.0
    );
    assert_eq!(
        delta("tiercache_hits_total", &[things, ("tier", "local")]),
        3.0
    );
    assert_eq!(delta("tiercache_loads_total", &[]), 2.0);
    assert_eq!(delta("tiercache_load_errors_total", &[]), 1.0);
    assert_eq!(delta("tiercache_load_duration_seconds_count", &[]), 2.0);
    assert_eq!(delta("tiercache_sets_total", &[]), 3.0);
    for kind in ["key", "tag", "pattern", "clear"] {
        for origin in ["own", "peer"] {
            assert_eq!(
                delta(
                    "tiercache_invalidations_total",
                    &[("kind", kind), ("origin", origin)]
                ),
                1.0,
                "{kind} {origin}"
            );
        }
    }
    assert_eq!(delta("tiercache_invalidation_lag_seconds_count", &[]), 6.0);
    for quiet in [
        "tiercache_errors_total",
        "tiercache_timeouts_total",
        "tiercache_breaker_trips_total",
        "tiercache_channel_losses_total",
        "tiercache_short_circuits_total",
        "tiercache_oversized_total",
    ] {
        assert_eq!(delta(quiet, &[]), 0.0, "{quiet}");
    }
    assert!(delta("tiercache_redis_call_duration_seconds_count", &[]) >= 10.0);
    // Histograms have the documented buckets.
    let buckets: Vec<&str> = after
        .samples
        .iter()
        .filter(|s| {
            s.name == "tiercache_load_duration_seconds_bucket" && s.labels["namespace"] == NS
        })
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert_eq!(buckets.first(), Some(&"0.0001"));
    assert_eq!(buckets.len(), metrics::BUCKETS.len() + 1, "{buckets:?}");
    assert_eq!(buckets.last(), Some(&"+Inf"));
    // States, sampled at the scrape.
    let local = a.local_stats().unwrap();
    assert_eq!(
        count(&after, "tiercache_local_entries", &[]),
        local.entries as f64
    );
    assert_eq!(count(&after, "tiercache_redis_maxmemory_bytes", &[]), 0.0);
    assert!(count(&after, "tiercache_redis_used_memory_bytes", &[]) > 0.0);
    assert_eq!(count(&after, "tiercache_breaker_open", &[]), 0.0);
    assert_eq!(count(&after, "tiercache_channel_up", &[]), 1.0);
    for family in ["tiercache_hits_total", "tiercache_invalidation_lag_seconds"] {
        assert!(!after.help[family].is_empty(), "HELP of {family}");
    }
    assert_eq!(
        after.types["tiercache_invalidation_lag_seconds"],
        "histogram"
    );
    assert_eq!(after.types["tiercache_hits_total"], "counter");
    assert_eq!(after.types["tiercache_local_entries"], "gauge");
    // Installing again returns the same recorder.
    let again = exposition::parse(&metrics::install().unwrap().render()).unwrap();
    assert_eq!(
        count(&again, "tiercache_misses_total", &[things]),
        count(&after, "tiercache_misses_total", &[things])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_never_hangs_the_scrape() {
    let handle = metrics::install().unwrap();
    let mut redis = RedisServer::start();
    let cache = builder(&redis, "metrics-hung").build().await.unwrap();
    let server = serve(metrics::router(handle, cache)).await;
    redis.pause();
    let started = std::time::Instant::now();
    let e = scrape(&server).await;
    // One INFO, bounded by the cache's operation timeout (500 ms in these tests).
    assert!(
        started.elapsed() < crate::helpers::OP_TIMEOUT * 4,
        "{:?}",
        started.elapsed()
    );
    assert!(e.families().contains("tiercache_hits_total"));
    redis.resume();
}
