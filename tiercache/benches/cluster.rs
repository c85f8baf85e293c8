//! Hit throughput on a Redis Cluster (three masters, three replicas, on loopback) against one
//! Redis node, at 64 concurrent tasks, in one run: plain hits (`get`, one `GET` routed to the
//! key's master) and tagged hits (`get` through a key with a tag: the value and the tag's
//! version, which lie in two slots, fetched per slot). Reads spread over 64 keys, so that the
//! cluster's three masters share the load. Rounds alternate between the two sides so that
//! machine noise hits both alike; the ratios are what to read. On one machine the cluster's
//! masters share its cores with the client, so the figures show the client's cost of routing,
//! not the capacity a cluster of machines adds.
//!
//! Run with: `cargo bench -p tiercache --bench cluster`
//! (`BENCH_SECS=2` sets the length of each round; default 1.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{ScanSummary, value};
use tiercache::{Cache, Category, Key, Tag};
use tiercache_testkit::{RedisCluster, RedisServer};

const ROUNDS: usize = 3;

/// Reads that found nothing (a Redis call past the operation timeout falls back to a miss):
/// counted and printed, not a failure of the bench.
static MISSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const TASKS: usize = 64;
const KEYS: usize = 64;

#[derive(Default)]
struct Tally {
    ops: u64,
    elapsed: Duration,
    latencies_us: Vec<f64>,
}

impl Tally {
    fn add(&mut self, (ops, elapsed, mut latencies): (u64, Duration, Vec<f64>)) {
        self.ops += ops;
        self.elapsed += elapsed;
        self.latencies_us.append(&mut latencies);
    }

    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_by(f64::total_cmp);
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i]
    }
}

/// `TASKS` concurrent loops of hits on `keys` (each task walks them in turn) for `secs`;
/// returns (ops, elapsed, latencies in µs).
async fn round(cache: &Cache, keys: &Arc<Vec<Key>>, secs: Duration) -> (u64, Duration, Vec<f64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, keys, next) = (cache.clone(), keys.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while start.elapsed() < secs {
                    let key = &keys[next.fetch_add(1, Ordering::Relaxed) % keys.len()];
                    let t = Instant::now();
                    if std::hint::black_box(cache.get::<ScanSummary>(key).await).is_none() {
                        MISSES.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    (all.len() as u64, start.elapsed(), all)
}

/// `KEYS` keys holding the value, with one tag each if `tagged`.
async fn filled(cache: &Cache, tagged: bool) -> Arc<Vec<Key>> {
    let v = value();
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let mut key = cache.key(&Category::new("scans"), [format!("image-{i}")]);
        if tagged {
            key = key.with_tags([Tag::new("image", [format!("image-{}", i % 8)])]);
        }
        cache.insert(&key, &v).await;
        assert_eq!(cache.get::<ScanSummary>(&key).await, Some(v.clone()));
        keys.push(key);
    }
    Arc::new(keys)
}

fn main() {
    let secs = support::bench_secs();
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let rt = support::runtime();
    rt.block_on(async {
        let node = Cache::builder().url(server.url()).namespace("bench").build().await.unwrap();
        let on_cluster = Cache::builder()
            .cluster_urls(cluster.urls())
            .namespace("bench")
            .build()
            .await
            .unwrap();
        println!(
            "{TASKS} tasks, hits on {KEYS} keys of a ~2 KB value; {ROUNDS} alternating rounds of {secs:?} per side"
        );
        println!("| reads | node ops/s | cluster ops/s | ratio | node p50 µs | cluster p50 µs | node p99 µs | cluster p99 µs |");
        println!("|-------|-----------:|--------------:|------:|------------:|---------------:|------------:|---------------:|");
        for tagged in [false, true] {
            let (node_keys, cluster_keys) = (filled(&node, tagged).await, filled(&on_cluster, tagged).await);
            let (mut one, mut many) = (Tally::default(), Tally::default());
            for _ in 0..ROUNDS {
                one.add(round(&node, &node_keys, secs).await);
                many.add(round(&on_cluster, &cluster_keys, secs).await);
            }
            println!(
                "| {} | {:>10.0} | {:>13.0} | {:>5.2} | {:>11.1} | {:>14.1} | {:>11.1} | {:>14.1} |",
                if tagged { "tagged (value + tag, 2 slots)" } else { "plain (one GET)" },
                one.throughput(),
                many.throughput(),
                many.throughput() / one.throughput(),
                one.percentile(0.5),
                many.percentile(0.5),
                one.percentile(0.99),
                many.percentile(0.99),
            );
        }
        for (side, cache) in [("node", &node), ("cluster", &on_cluster)] {
            let s = cache.stats().await;
            println!(
                "{side}: errors {}, timeouts {}, misses {}",
                s.errors, s.timeouts, s.misses
            );
        }
        println!("reads that missed during the rounds: {}", MISSES.load(Ordering::Relaxed));
    });
}
