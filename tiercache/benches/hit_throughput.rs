//! Cache hits served from Redis, side by side with a raw redis-crate `GET` + decode of the same
//! value on the same server, at 1, 16 and 64 concurrent tasks, and hits served by the in-process
//! tier (a cache built with `local_capacity`). Rounds alternate between the three so that
//! machine noise hits all alike; the ratios are what to read. A tier hit never waits, so its
//! loop yields to the scheduler once per call (as a request handler would at its I/O), which is
//! included in its figures.
//!
//! Run with: `cargo bench -p tiercache --bench hit_throughput`
//! (`BENCH_SECS=2` sets the length of each round; default 1.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{ScanSummary, value};
use tiercache::{Cache, Category};
use tiercache_testkit::RedisServer;

const ROUNDS: usize = 3;

#[derive(Default)]
struct Tally {
    ops: u64,
    elapsed: Duration,
    latencies_us: Vec<f64>,
}

impl Tally {
    fn add(&mut self, ops: u64, elapsed: Duration, mut latencies: Vec<f64>) {
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

/// Runs `tasks` concurrent loops of `op` for `secs`; returns (ops, elapsed, latencies in µs).
async fn round<F, Fut>(tasks: usize, secs: Duration, op: F) -> (u64, Duration, Vec<f64>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while start.elapsed() < secs {
                    let t = Instant::now();
                    op().await;
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

fn decode_raw(bytes: &[u8]) -> ScanSummary {
    // The same work the cache does after GET: skip the envelope header, decompress if needed,
    // decode with postcard.
    match bytes[2] {
        0 => postcard::from_bytes(&bytes[3..]).unwrap(),
        _ => postcard::from_bytes(&lz4_flex::decompress_size_prepended(&bytes[3..]).unwrap())
            .unwrap(),
    }
}

fn main() {
    let secs = support::bench_secs();
    let server = RedisServer::start();
    let rt = support::runtime();
    rt.block_on(async {
        let cache = Cache::builder().url(server.url()).namespace("bench").build().await.unwrap();
        let tiered = Cache::builder().url(server.url()).namespace("bench").local_capacity(16 << 20).build().await.unwrap();
        let key = cache.key(&Category::new("scans"), ["hit"]);
        let v = value();
        cache.insert(&key, &v).await;
        assert_eq!(cache.get::<ScanSummary>(&key).await, Some(v.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tiered.stats().await.local.is_some_and(|l| l.live) {
            assert!(Instant::now() < deadline, "the in-process tier did not go live");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tiered.get::<ScanSummary>(&key).await, Some(v.clone()));

        let client = redis::Client::open(server.url()).unwrap();
        let raw_conn = client.get_multiplexed_async_connection().await.unwrap();
        let raw_key: Arc<str> = key.as_str().into();
        let stored: Vec<u8> = redis::cmd("GET").arg(&*raw_key).query_async(&mut raw_conn.clone()).await.unwrap();
        assert_eq!(decode_raw(&stored), v);
        println!(
            "value: {} bytes as JSON, {} bytes stored (envelope, compressed: {}); {ROUNDS} alternating rounds of {secs:?} per side",
            serde_json::to_vec(&v).unwrap().len(),
            stored.len(),
            stored[2] != 0,
        );
        println!("| tasks | raw ops/s | cache ops/s | ratio | raw p50 µs | cache p50 µs | raw p99 µs | cache p99 µs | tier ops/s | tier ratio | tier p50 µs | tier p99 µs |");
        println!("|------:|----------:|------------:|------:|-----------:|-------------:|-----------:|-------------:|-----------:|-----------:|------------:|------------:|");
        for tasks in [1usize, 16, 64] {
            let (mut raw, mut cached, mut tier) = (Tally::default(), Tally::default(), Tally::default());
            for _ in 0..ROUNDS {
                let (conn, k) = (raw_conn.clone(), raw_key.clone());
                let (n, e, l) = round(tasks, secs, move || {
                    let (mut conn, k) = (conn.clone(), k.clone());
                    async move {
                        let b: Vec<u8> = redis::cmd("GET").arg(&*k).query_async(&mut conn).await.unwrap();
                        std::hint::black_box(decode_raw(&b));
                    }
                })
                .await;
                raw.add(n, e, l);
                let (c, k) = (cache.clone(), key.clone());
                let (n, e, l) = round(tasks, secs, move || {
                    let (c, k) = (c.clone(), k.clone());
                    async move {
                        std::hint::black_box(c.get::<ScanSummary>(&k).await.unwrap());
                    }
                })
                .await;
                cached.add(n, e, l);
                let (c, k) = (tiered.clone(), key.clone());
                let (n, e, l) = round(tasks, secs, move || {
                    let (c, k) = (c.clone(), k.clone());
                    async move {
                        std::hint::black_box(c.get::<ScanSummary>(&k).await.unwrap());
                        tokio::task::yield_now().await;
                    }
                })
                .await;
                tier.add(n, e, l);
            }
            println!(
                "| {tasks:>5} | {:>9.0} | {:>11.0} | {:>5.2} | {:>10.1} | {:>12.1} | {:>10.1} | {:>12.1} | {:>10.0} | {:>10.1} | {:>11.1} | {:>11.1} |",
                raw.throughput(),
                cached.throughput(),
                cached.throughput() / raw.throughput(),
                raw.percentile(0.5),
                cached.percentile(0.5),
                raw.percentile(0.99),
                cached.percentile(0.99),
                tier.throughput(),
                tier.throughput() / raw.throughput(),
                tier.percentile(0.5),
                tier.percentile(0.99),
            );
        }
        let s = cache.stats().await;
        assert_eq!(s.errors, 0, "no errors during the run");
        let t = tiered.stats().await;
        assert_eq!(t.errors, 0, "no errors during the run");
        assert!(t.hits - t.local_hits <= 1, "every tier hit but the first was served in process");
    });
}
