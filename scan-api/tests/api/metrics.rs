//! `GET /metrics` on the running service: request counts move the counters exactly, the answer
//! is the Prometheus text format, each request's span records its cache outcome, and the
//! shipped alerting rules (`deploy/prometheus/alerts.yml`) name only metrics the service
//! exports.
//!
//! The recorder is global to the test binary: these tests install it before building their
//! apps' caches, each in its own namespace (a label of every series).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use tiercache_testkit::exposition::{self, Exposition};

use crate::helpers::{ADMIN_TOKEN, Db, TestApp, TestEnv, report, wait_until};

async fn app_in(env: &TestEnv, namespace: &str) -> TestApp {
    // Before the cache is built: its metrics handles are taken then.
    tiercache_axum::metrics::install().unwrap();
    let app = env
        .app_with(
            |b| b.namespace(namespace),
            32 * 1024 * 1024,
            Some(ADMIN_TOKEN),
        )
        .await;
    wait_until(Duration::from_secs(5), "the in-process tier", || async {
        app.cache.local_stats().is_some_and(|l| l.live)
    })
    .await;
    app
}

async fn scrape(app: &TestApp) -> Exposition {
    let resp = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The sum of `name` over every series of `namespace` with `labels`.
fn total(e: &Exposition, name: &str, namespace: &str, labels: &[(&str, &str)]) -> f64 {
    e.samples
        .iter()
        .filter(|s| {
            s.name == name
                && s.labels.get("namespace").map(String::as_str) == Some(namespace)
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_move_the_counters_exactly_and_the_scrape_parses() {
    let env = TestEnv::new(Db::Sqlite);
    let app = app_in(&env, "metrics-api").await;
    let ns = "test:metrics-api";
    app.post_report(report("metrics/app", "v1", &["HIGH"]))
        .await;
    let before = scrape(&app).await;
    let paths = ["/api/scan-results", "/api/vulnerabilities", "/api/images"];
    for expect in ["MISS", "HIT", "HIT"] {
        for p in paths {
            assert_eq!(app.get(p).await.x_cache.as_deref(), Some(expect), "{p}");
        }
    }
    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        total(&after, name, ns, labels) - total(&before, name, ns, labels)
    };
    let n = paths.len() as f64;
    assert_eq!(delta("tiercache_misses_total", &[]), n);
    assert_eq!(delta("tiercache_hits_total", &[("tier", "local")]), 2.0 * n);
    assert_eq!(delta("tiercache_hits_total", &[("tier", "redis")]), 0.0);
    assert_eq!(delta("tiercache_loads_total", &[]), n);
    assert_eq!(delta("tiercache_load_duration_seconds_count", &[]), n);
    assert_eq!(delta("tiercache_sets_total", &[]), n);
    assert_eq!(delta("tiercache_errors_total", &[]), 0.0);
    assert_eq!(
        total(&after, "tiercache_local_entries", ns, &[]),
        app.cache.local_stats().unwrap().entries as f64
    );
    assert_eq!(total(&after, "tiercache_breaker_open", ns, &[]), 0.0);
}

/// A current-thread runtime: the app's tasks log through this thread's capturing subscriber.
#[tokio::test]
async fn each_request_span_records_its_cache_outcome() {
    let (captured, _guard) = tiercache_testkit::capture();
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    wait_until(Duration::from_secs(5), "the in-process tier", || async {
        app.cache.local_stats().is_some_and(|l| l.live)
    })
    .await;
    for expect in ["MISS", "HIT"] {
        assert_eq!(
            app.get("/api/images").await.x_cache.as_deref(),
            Some(expect)
        );
    }
    // A route the response cache does not see: the field stays empty.
    app.get("/api/cache/stats").await;
    let outcomes: Vec<(String, Option<String>)> = captured
        .spans()
        .into_iter()
        .filter(|s| s.name == "request")
        .map(|s| (s.fields["uri"].clone(), s.fields.get("cache").cloned()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("/api/images".to_owned(), Some("MISS".to_owned())),
            ("/api/images".to_owned(), Some("HIT".to_owned())),
            ("/api/cache/stats".to_owned(), None),
        ]
    );
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// The metric names in a PromQL expression: every `tiercache_…` identifier.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tiercache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_parse_and_name_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/alerts.yml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file: RuleFile =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("alerts.yml does not parse: {e}"));
    assert_eq!(file.groups.len(), 1);
    assert_eq!(file.groups[0].name, "tiercache");
    let rules = &file.groups[0].rules;
    let alerts: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(
        alerts,
        [
            "TiercacheRedisMemoryHigh",
            "TiercacheHitRatioLow",
            "TiercacheErrorRateHigh",
            "TiercacheRedisDisconnected"
        ],
        "the service's four alerts (tiercache_axum::alerts::ALERTS), in the same order"
    );
    assert_eq!(alerts.len(), tiercache_axum::alerts::ALERTS.len());

    // What a running service exports, once each kind of series exists (a load, an invalidation
    // heard, the evaluator's first round).
    let env = TestEnv::new(Db::Sqlite);
    let app = app_in(&env, "metrics-rules").await;
    app.get("/api/images").await;
    let exported = scrape(&app).await;
    let families = exported.families();
    for rule in rules {
        assert!(
            rule.for_.ends_with('m') || rule.for_.ends_with('s'),
            "{}: for {}",
            rule.alert,
            rule.for_
        );
        assert!(
            matches!(
                rule.labels.get("severity").map(String::as_str),
                Some("warning" | "critical")
            ),
            "{}: {:?}",
            rule.alert,
            rule.labels
        );
        for key in ["summary", "description"] {
            assert!(
                rule.annotations.get(key).is_some_and(|v| !v.is_empty()),
                "{}: annotation {key}",
                rule.alert
            );
        }
        let names = metric_names(&rule.expr);
        assert!(
            !names.is_empty(),
            "{}: no metric in {}",
            rule.alert,
            rule.expr
        );
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(&name);
            assert!(
                families.contains(family),
                "{}: {name} is not exported (exported: {families:?})",
                rule.alert
            );
        }
    }
}
