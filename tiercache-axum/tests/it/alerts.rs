//! The alert evaluator against a real Redis: each alert driven active and back to clear, seen
//! in `GET /api/cache/health`, in the `tiercache_alert_active` gauge, and logged once when it
//! starts and once when it clears. Short intervals and windows; each test on its own Redis, in
//! its own namespace (the gauge's label), on a current-thread runtime whose logs it captures.

use std::time::Duration;

use axum::Router;
use reqwest::StatusCode;
use serde_json::Value;
use tiercache::{Cache, CacheBuilder, Category};
use tiercache_axum::admin::{self, Admin};
use tiercache_axum::alerts::{AlertConfig, Alerts};
use tiercache_axum::metrics;
use tiercache_testkit::RedisServer;
use tiercache_testkit::exposition;
use tracing::Level;

use crate::helpers::{PATIENCE, TestServer, builder, serve, wait_until};
use tiercache_testkit::capture::{Captured, capture};

const THINGS: Category = Category::from_static("things");

/// A cache without a tier in `namespace`, its evaluator, and a server for its health and
/// metrics.
struct Watched {
    cache: Cache,
    server: TestServer,
    handle: metrics::PrometheusHandle,
    namespace: String,
    alerts: Alerts,
}

fn quick() -> AlertConfig {
    AlertConfig::default()
        .interval(Duration::from_millis(50))
        .window(Duration::from_secs(1))
        .min_reads(20)
        .min_calls(20)
}

async fn watched(
    redis: &RedisServer,
    namespace: &str,
    config: AlertConfig,
    tweak: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> Watched {
    let handle = metrics::install().unwrap();
    let cache = tweak(builder(redis, namespace).local_capacity(0))
        .build()
        .await
        .unwrap();
    let alerts = Alerts::spawn(cache.clone(), config).unwrap();
    // The window starts at the first evaluation: what a test does before it would not count.
    wait_until(PATIENCE, "the window's first sample", || async {
        alerts.evaluations() >= 1
    })
    .await;
    let app: Router = Router::new()
        .merge(admin::router(
            Admin::new(cache.clone(), None).alerts(alerts.clone()),
        ))
        .merge(metrics::router(handle.clone(), cache.clone()));
    Watched {
        server: serve(app).await,
        namespace: format!("dev:{namespace}"),
        cache,
        handle,
        alerts,
    }
}

impl Watched {
    async fn health(&self) -> (StatusCode, Value) {
        let a = self.server.get("/api/cache/health").await;
        (a.status, serde_json::from_slice(&a.body).unwrap())
    }

    async fn alert_names(&self) -> Vec<String> {
        let (_, body) = self.health().await;
        body["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait_for(&self, names: &[&str]) {
        wait_until(PATIENCE, &format!("alerts {names:?}"), || async {
            self.alert_names().await == names
        })
        .await;
    }

    fn gauge(&self, alert: &str) -> f64 {
        let e = exposition::parse(&self.handle.render()).unwrap();
        e.value(
            "tiercache_alert_active",
            &[("namespace", &self.namespace), ("alert", alert)],
        )
        .unwrap()
    }

    /// Asserts that `alert` was logged started (WARN) once and cleared (INFO) once.
    fn logged_once_each(&self, captured: &Captured, alert: &str) {
        let events = captured.events();
        let mine = |level: Level, what: &str| {
            events
                .iter()
                .filter(|e| {
                    e.level == level
                        && e.fields.get("alert").map(String::as_str) == Some(alert)
                        && e.fields.get("namespace") == Some(&self.namespace)
                        && e.fields["message"].starts_with(what)
                })
                .count()
        };
        assert_eq!(
            mine(Level::WARN, "cache alert started"),
            1,
            "{alert} started"
        );
        assert_eq!(
            mine(Level::INFO, "cache alert cleared"),
            1,
            "{alert} cleared"
        );
    }
}

fn used_memory(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "memory"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn redis_memory_high_while_used_memory_is_above_80_percent_of_maxmemory() {
    let (captured, _guard) = capture();
    let redis = RedisServer::start();
    let w = watched(&redis, "alert-memory", quick(), |b| b).await;
    w.wait_for(&[]).await;
    assert_eq!(w.gauge("redis_memory_high"), 0.0);
    // About 87 % of the limit.
    let limit = used_memory(&redis) * 115 / 100;
    redis
        .command(&["CONFIG", "SET", "maxmemory", &limit.to_string()])
        .unwrap();
    w.wait_for(&["redis_memory_high"]).await;
    let (status, body) = w.health().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an alert does not make Redis down: {body}"
    );
    let alert = &body["alerts"][0];
    assert_eq!(alert["threshold"], 0.8);
    assert!(alert["value"].as_f64().unwrap() > 0.8, "{alert}");
    assert!(alert["since_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(alert["message"].as_str().unwrap().contains("maxmemory"));
    assert_eq!(w.gauge("redis_memory_high"), 1.0);
    // No limit: never an alert.
    redis.command(&["CONFIG", "SET", "maxmemory", "0"]).unwrap();
    w.wait_for(&[]).await;
    assert_eq!(w.gauge("redis_memory_high"), 0.0);
    w.logged_once_each(&captured, "redis_memory_high");
}

#[tokio::test]
async fn hit_ratio_low_once_the_window_saw_enough_reads_mostly_missing() {
    let (captured, _guard) = capture();
    let redis = RedisServer::start();
    let w = watched(&redis, "alert-hits", quick(), |b| b).await;
    // 19 misses: fewer reads than the window needs to judge.
    for i in 0..19 {
        assert_eq!(
            w.cache
                .get::<u32>(&w.cache.key(&THINGS, [i.to_string()]))
                .await,
            None
        );
    }
    // Two evaluations after the misses (the first may have begun before the last of them): none
    // started.
    let seen = w.alerts.evaluations();
    wait_until(PATIENCE, "two more evaluations", || async {
        w.alerts.evaluations() >= seen + 2
    })
    .await;
    assert!(w.alert_names().await.is_empty());
    for i in 19..30 {
        assert_eq!(
            w.cache
                .get::<u32>(&w.cache.key(&THINGS, [i.to_string()]))
                .await,
            None
        );
    }
    w.wait_for(&["hit_ratio_low"]).await;
    let (status, body) = w.health().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["alerts"][0]["value"], 0.0);
    assert_eq!(body["alerts"][0]["threshold"], 0.6);
    assert_eq!(w.gauge("hit_ratio_low"), 1.0);
    // The misses leave the window: too few reads to judge again.
    w.wait_for(&[]).await;
    assert_eq!(w.gauge("hit_ratio_low"), 0.0);
    w.logged_once_each(&captured, "hit_ratio_low");
}

#[tokio::test]
async fn error_rate_high_while_redis_calls_fail_and_it_still_answers() {
    let (captured, _guard) = capture();
    let mut redis = RedisServer::start();
    // The breaker stays closed: errors without a disconnection. The failed reads are misses:
    // no hit-ratio alert here.
    let w = watched(&redis, "alert-errors", quick().hit_ratio_min(0.0), |b| {
        b.breaker_threshold(100_000)
            .op_timeout(Duration::from_millis(50))
    })
    .await;
    w.wait_for(&[]).await;
    redis.pause();
    let reads = (0..30).map(|i| {
        let cache = w.cache.clone();
        async move { cache.get::<u32>(&cache.key(&THINGS, [i.to_string()])).await }
    });
    assert!(
        futures_util::future::join_all(reads)
            .await
            .iter()
            .all(Option::is_none)
    );
    redis.resume();
    w.wait_for(&["error_rate_high"]).await;
    let (status, body) = w.health().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["alerts"][0]["value"].as_f64().unwrap() > 0.01,
        "{body}"
    );
    assert_eq!(w.gauge("error_rate_high"), 1.0);
    assert_eq!(w.gauge("redis_disconnected"), 0.0);
    w.wait_for(&[]).await;
    assert_eq!(w.gauge("error_rate_high"), 0.0);
    w.logged_once_each(&captured, "error_rate_high");
}

#[tokio::test]
async fn redis_disconnected_while_the_breaker_is_open() {
    let (captured, _guard) = capture();
    let mut redis = RedisServer::start();
    let w = watched(&redis, "alert-down", quick(), |b| b).await;
    w.wait_for(&[]).await;
    redis.stop();
    w.wait_for(&["redis_disconnected"]).await;
    let (status, body) = w.health().await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "Redis is away: {body}"
    );
    assert_eq!(body["alerts"][0]["name"], "redis_disconnected");
    assert_eq!(w.gauge("redis_disconnected"), 1.0);
    redis.restart();
    w.wait_for(&[]).await;
    assert!(w.cache.is_connected());
    assert_eq!(w.gauge("redis_disconnected"), 0.0);
    w.logged_once_each(&captured, "redis_disconnected");
}
