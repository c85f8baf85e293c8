//! What the benches share: the ~2 KB JSON-like scan summary `scan-api` caches, the round length,
//! waiting for a tier to serve, and Redis's command counts.
// Each bench compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiercache::Cache;
use tiercache_testkit::RedisServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finding {
    pub(crate) id: String,
    pub(crate) package: String,
    pub(crate) installed: String,
    pub(crate) fixed: Option<String>,
    pub(crate) severity: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScanSummary {
    pub(crate) id: u64,
    pub(crate) artifact_name: String,
    pub(crate) created_at: String,
    pub(crate) counts: Vec<(String, u32)>,
    pub(crate) findings: Vec<Finding>,
}

/// About 2 KB as JSON.
pub(crate) fn value() -> ScanSummary {
    let severities = ["CRITICAL", "HIGH", "MEDIUM", "LOW"];
    ScanSummary {
        id: 123_456,
        artifact_name: "bkimminich/juice-shop:v12.10.2".into(),
        created_at: "2026-11-21T12:00:00Z".into(),
        counts: severities.iter().map(|s| ((*s).to_owned(), 7)).collect(),
        findings: (0..19)
            .map(|i| Finding {
                id: format!("CVE-2021-{:05}", 3000 + i),
                package: format!("package-{i}"),
                installed: format!("1.{i}.0"),
                fixed: (i % 3 != 0).then(|| format!("1.{i}.5")),
                severity: severities[i % 4].to_owned(),
            })
            .collect(),
    }
}

/// The length of one round: `BENCH_SECS` (default 1 s).
pub(crate) fn bench_secs() -> Duration {
    Duration::from_secs_f64(env_f64("BENCH_SECS", 1.0))
}

/// The benches' runtime: multi-threaded, one worker per core.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A number from the environment, or `default`.
pub(crate) fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Waits (5 s at most) until `cache`'s in-process tier serves.
pub(crate) async fn wait_live(cache: &Cache) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.stats().await.local.is_some_and(|l| l.live) {
        assert!(
            Instant::now() < deadline,
            "the in-process tier did not go live"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `calls=N` of every command in `INFO commandstats`.
pub(crate) fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
    let info = server
        .command(&["INFO", "commandstats"])
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}
