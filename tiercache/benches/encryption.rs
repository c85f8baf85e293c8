//! What an encrypted (sensitive) category costs per hit, in one run:
//!
//! 1. `Encryption::seal` and `Encryption::open` (XChaCha20-Poly1305, a random nonce from the OS
//!    per seal, the key name as associated data) of the bytes the cache stores for the ~2 KB
//!    `ScanSummary` (its envelope: postcard, LZ4 above 1 KiB) and of 2 KiB, with an empty and
//!    a 16 KiB buffer to separate the fixed cost from the per-byte one. A hit pays one `open`;
//!    a write one `seal`.
//! 2. `Cache::get` hits served by Redis (no in-process tier) of the same value in a sensitive
//!    and in a plain category of one cache, at 1 and 16 concurrent tasks, rounds alternating
//!    between the two so that machine noise hits both alike. The difference per hit is what the
//!    encryption adds to a Redis hit.
//!
//! Run with: `cargo bench -p tiercache --bench encryption`
//! (`BENCH_SECS=2` sets the length of each round; default 1.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use support::{ScanSummary, value};
use tiercache::{Cache, Category, Encryption, Key};
use tiercache_testkit::RedisServer;

const ITERS: u32 = 100_000;
const ROUNDS: usize = 3;
const SESSIONS: Category = Category::from_static("sessions");
const PLAIN: Category = Category::from_static("scans");

/// Mean time of `f` over `ITERS` calls, after a tenth as many to warm up.
fn time(mut f: impl FnMut()) -> Duration {
    for _ in 0..ITERS / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..ITERS {
        f();
    }
    start.elapsed() / ITERS
}

/// One line of the seal/open table.
fn seal_open(e: &Encryption, name: &str, what: &str, plaintext: &[u8]) {
    let sealed = e.seal(name, plaintext).unwrap();
    assert_eq!(e.open(name, &sealed).unwrap(), plaintext);
    let seal = time(|| {
        black_box(e.seal(black_box(name), black_box(plaintext)).unwrap());
    });
    let open = time(|| {
        black_box(e.open(black_box(name), black_box(&sealed)).unwrap());
    });
    println!(
        "| {what:<30} | {:>6} | {:>6} | {:>9.0} | {:>9.0} | {:>11.0} |",
        plaintext.len(),
        sealed.len(),
        seal.as_nanos() as f64,
        open.as_nanos() as f64,
        (seal + open).as_nanos() as f64,
    );
}

#[derive(Default)]
struct Tally {
    ops: u64,
    elapsed: Duration,
    latencies_us: Vec<f64>,
}

impl Tally {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_by(f64::total_cmp);
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i]
    }
}

/// `tasks` concurrent loops of `cache.get(key)` for `secs`, added to `tally`.
async fn round(tally: &mut Tally, tasks: usize, secs: Duration, cache: &Cache, key: &Key) {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while start.elapsed() < secs {
                    let t = Instant::now();
                    black_box(cache.get::<ScanSummary>(&key).await.unwrap());
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                lat
            })
        })
        .collect();
    for h in handles {
        let lat = h.await.unwrap();
        tally.ops += lat.len() as u64;
        tally.latencies_us.extend(lat);
    }
    tally.elapsed += start.elapsed();
}

fn main() {
    let secs = support::bench_secs();
    let server = RedisServer::start();
    let rt = support::runtime();
    // Keys as configuration gives them (fixed here, for the bench only).
    let encryption =
        Encryption::parse(&format!("{},{}", "6b".repeat(32), "31".repeat(32))).unwrap();
    rt.block_on(async {
        let cache = Cache::builder()
            .url(server.url())
            .namespace("bench")
            .sensitive(SESSIONS)
            .encryption(encryption.clone())
            .build()
            .await
            .unwrap();
        let v = value();
        let (sensitive, plain) = (cache.key(&SESSIONS, ["hit"]), cache.key(&PLAIN, ["hit"]));
        cache.insert(&sensitive, &v).await;
        cache.insert(&plain, &v).await;
        assert_eq!(cache.get::<ScanSummary>(&sensitive).await, Some(v.clone()));
        assert_eq!(cache.get::<ScanSummary>(&plain).await, Some(v.clone()));
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let envelope: Vec<u8> = redis::cmd("GET").arg(plain.as_str()).query_async(&mut conn).await.unwrap();
        let stored: Vec<u8> = redis::cmd("GET").arg(sensitive.as_str()).query_async(&mut conn).await.unwrap();
        assert_eq!(stored[0], 3, "the sensitive value is stored encrypted");

        println!(
            "value: {} bytes as JSON; stored: {} bytes plain (envelope, compressed: {}), {} bytes encrypted",
            serde_json::to_vec(&v).unwrap().len(),
            envelope.len(),
            envelope[2] != 0,
            stored.len(),
        );
        println!("\nseal and open, mean of {ITERS} each (key name of {} bytes):\n", sensitive.as_str().len());
        println!("| plaintext                      |  bytes | stored | seal (ns) | open (ns) | seal+open (ns) |");
        println!("|--------------------------------|-------:|-------:|----------:|----------:|---------------:|");
        let name = sensitive.as_str();
        seal_open(&encryption, name, "empty (the fixed cost)", &[]);
        seal_open(&encryption, name, "the ~2 KB value, as stored", &envelope);
        seal_open(&encryption, name, "2 KiB buffer", &[0x5a; 2048]);
        seal_open(&encryption, name, "16 KiB buffer (per-byte cost)", &[0x5a; 16384]);

        println!("\nRedis hits (`Cache::get`, no in-process tier), {ROUNDS} alternating rounds of {secs:?} per side:\n");
        println!("| tasks | plain ops/s | sensitive ops/s | ratio | plain p50 µs | sensitive p50 µs | plain p99 µs | sensitive p99 µs |");
        println!("|------:|------------:|----------------:|------:|-------------:|-----------------:|-------------:|-----------------:|");
        for tasks in [1usize, 16] {
            let (mut p, mut s) = (Tally::default(), Tally::default());
            for _ in 0..ROUNDS {
                round(&mut p, tasks, secs, &cache, &plain).await;
                round(&mut s, tasks, secs, &cache, &sensitive).await;
            }
            println!(
                "| {tasks:>5} | {:>11.0} | {:>15.0} | {:>5.3} | {:>12.1} | {:>16.1} | {:>12.1} | {:>16.1} |",
                p.throughput(),
                s.throughput(),
                s.throughput() / p.throughput(),
                p.percentile(0.5),
                s.percentile(0.5),
                p.percentile(0.99),
                s.percentile(0.99),
            );
        }
        let stats = cache.stats().await;
        assert_eq!((stats.errors, stats.unauthenticated_values), (0, 0), "a clean run");
    });
}
