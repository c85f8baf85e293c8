//! What `#[cached]` costs over the same `get_with` written by hand: cache hits through a
//! `#[cached]` fn, side by side with a hand-written fn that builds the same key and calls
//! `Cache::get_with` with the same loader, at 1 and 16 concurrent tasks, served by the
//! in-process tier (Redis behind it) and by Redis alone. The ratio is what to read (target: at
//! least 0.95× the hand-written call).
//!
//! Two pairs, each pair reading the same entries:
//! - `template`: `#[cached(key = "{id}")]` against `cache.key(&SCANS, [id.to_string()])`;
//! - `default`: the default key (a SHA-256 of the arguments' postcard encoding) against the same
//!   hash computed by hand with `tiercache::__private::key_hash` (hidden API: the macro's own
//!   helper, used here only to do the same work by hand).
//!
//! 1,024 values (~2 KB `ScanSummary` behind one `Arc`, so a tier hit is an `Arc` clone) are
//! loaded once through the macro; every measured call must then be a hit (the loader counts its
//! runs, and the bench checks that none ran). Each task calls 64 times, then checks the clock
//! and yields once, as in `benches/tier.rs`. Rounds alternate between the two sides of a pair,
//! six pairs per row, the side that goes first alternating too. `ratio` is the throughputs'
//! ratio over all rounds; `median ratio` the median of the six back-to-back pairs' ratios,
//! which a burst of load from outside the bench (2 cores, shared) moves less.
//!
//! Run with: `cargo bench -p tiercache --bench cached --features macros`
//! (`BENCH_SECS=2` sets the length of each round; default 1.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use support::{ScanSummary, value};
use tiercache::{Cache, Category, cached};
use tiercache_testkit::RedisServer;

/// A power of two: ids are picked with a mask.
const KEYS: u64 = 1024;
const TASKS: [usize; 2] = [1, 16];
/// Round pairs per row; the side that goes first alternates from pair to pair.
const ROUNDS: usize = 6;
/// Calls per batch; each task yields once per batch.
const BATCH: usize = 64;
/// Odd, so that a task visits every id.
const STRIDE: u64 = 389;
const SCANS: Category = Category::from_static("scans");

/// Runs of the loader: none may happen once the values are loaded.
static LOADS: AtomicU64 = AtomicU64::new(0);

/// `Arc<ScanSummary>` as a cache value (see `benches/tier.rs`).
#[derive(Clone, Debug)]
struct Shared(Arc<ScanSummary>);

impl Serialize for Shared {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Shared {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ScanSummary::deserialize(d).map(|v| Shared(Arc::new(v)))
    }
}

/// The source both sides load from.
async fn load(id: u64) -> Shared {
    LOADS.fetch_add(1, Ordering::Relaxed);
    let mut v = value();
    v.id = id;
    Shared(Arc::new(v))
}

#[cached(cache = cache, category = SCANS, key = "{id}")]
async fn by_template(cache: &Cache, id: u64) -> Shared {
    load(id).await
}

async fn by_template_by_hand(cache: &Cache, id: u64) -> Shared {
    let key = cache.key(&SCANS, [id.to_string()]);
    cache.get_with(&key, load(id)).await
}

#[cached(cache = cache, category = SCANS)]
async fn by_hash(cache: &Cache, id: u64) -> Shared {
    load(id).await
}

async fn by_hash_by_hand(cache: &Cache, id: u64) -> Shared {
    let scope = concat!(module_path!(), "::by_hash");
    let hash = tiercache::__private::key_hash(scope, &[], &(id,)).unwrap();
    let key = cache.key(&SCANS, ["by_hash", hash.as_str()]);
    cache.get_with(&key, load(id)).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    TemplateMacro,
    TemplateHand,
    DefaultMacro,
    DefaultHand,
}

impl Side {
    async fn call(self, cache: &Cache, id: u64) -> Shared {
        match self {
            Side::TemplateMacro => by_template(cache, id).await,
            Side::TemplateHand => by_template_by_hand(cache, id).await,
            Side::DefaultMacro => by_hash(cache, id).await,
            Side::DefaultHand => by_hash_by_hand(cache, id).await,
        }
    }
}

#[derive(Default)]
struct Tally {
    ops: u64,
    elapsed: Duration,
    /// Throughput of each round.
    rounds: Vec<f64>,
}

impl Tally {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// The median of `macro`'s round-by-round throughput over `hand`'s: each pair of rounds ran
/// back to back, so a burst of load from outside the bench moves one ratio, not the median.
fn median_ratio(hand: &Tally, by_macro: &Tally) -> f64 {
    let mut ratios: Vec<f64> = hand
        .rounds
        .iter()
        .zip(&by_macro.rounds)
        .map(|(h, m)| m / h)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    }
}

/// `tasks` loops of batched calls of one side for `secs`, added to `tally`. The side is fixed
/// per round, and matched once per call in both cases, so the dispatch costs both alike.
async fn round(cache: &Cache, side: Side, tasks: usize, secs: Duration, tally: &mut Tally) {
    let start = Instant::now();
    let mut ops = 0;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut id = (t as u64 * 131) % KEYS;
                let mut ops = 0u64;
                loop {
                    for _ in 0..BATCH {
                        id = (id + STRIDE) & (KEYS - 1);
                        let v = side.call(&cache, id).await;
                        assert_eq!(black_box(v).0.id, id);
                    }
                    ops += BATCH as u64;
                    if start.elapsed() >= secs {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                ops
            })
        })
        .collect();
    for h in handles {
        ops += h.await.unwrap();
    }
    let elapsed = start.elapsed();
    tally.ops += ops;
    tally.elapsed += elapsed;
    tally.rounds.push(ops as f64 / elapsed.as_secs_f64());
}

fn main() {
    let secs = support::bench_secs();
    let server = RedisServer::start();
    let rt = support::runtime();
    rt.block_on(run(&server, secs));
}

async fn run(server: &RedisServer, secs: Duration) {
    println!(
        "{KEYS} values, each behind one Arc; {ROUNDS} alternating rounds of {secs:?} per side; batches of {BATCH} calls"
    );
    println!(
        "| served by | key      | tasks | by hand ops/s | #[cached] ops/s | ratio | median ratio |"
    );
    println!(
        "|-----------|----------|------:|--------------:|----------------:|------:|-------------:|"
    );
    for (served_by, tier) in [("tier", true), ("redis", false)] {
        let mut builder = Cache::builder().url(server.url()).namespace("cached");
        if tier {
            builder = builder.local_capacity(16 << 20);
        }
        let cache = builder.build().await.unwrap();
        if tier {
            support::wait_live(&cache).await;
        }
        cache.clear().await.unwrap();
        // Load every value through the macro, then check that the hand-written side reads the
        // same entries.
        let loads = LOADS.load(Ordering::Relaxed);
        for id in 0..KEYS {
            by_template(&cache, id).await;
            by_hash(&cache, id).await;
        }
        assert_eq!(LOADS.load(Ordering::Relaxed) - loads, 2 * KEYS);
        for id in 0..KEYS {
            by_template_by_hand(&cache, id).await;
            by_hash_by_hand(&cache, id).await;
        }
        assert_eq!(
            LOADS.load(Ordering::Relaxed) - loads,
            2 * KEYS,
            "the hand-written calls read the macro's entries"
        );

        let before = cache.stats().await;
        let loads = LOADS.load(Ordering::Relaxed);
        let mut calls = 0;
        for (key, hand, by_macro) in [
            ("template", Side::TemplateHand, Side::TemplateMacro),
            ("default", Side::DefaultHand, Side::DefaultMacro),
        ] {
            for tasks in TASKS {
                let (mut h, mut m) = (Tally::default(), Tally::default());
                for r in 0..ROUNDS {
                    if r % 2 == 0 {
                        round(&cache, hand, tasks, secs, &mut h).await;
                        round(&cache, by_macro, tasks, secs, &mut m).await;
                    } else {
                        round(&cache, by_macro, tasks, secs, &mut m).await;
                        round(&cache, hand, tasks, secs, &mut h).await;
                    }
                }
                calls += h.ops + m.ops;
                println!(
                    "| {served_by:<9} | {key:<8} | {tasks:>5} | {:>13.0} | {:>15.0} | {:>5.2} | {:>12.2} |",
                    h.throughput(),
                    m.throughput(),
                    m.throughput() / h.throughput(),
                    median_ratio(&h, &m),
                );
            }
        }
        let after = cache.stats().await;
        println!(
            "{served_by}: {calls} calls measured; stats: hits +{} (of which the tier's +{}), misses +{}, errors {}; loads {}",
            after.hits - before.hits,
            after.local_hits - before.local_hits,
            after.misses - before.misses,
            after.errors,
            LOADS.load(Ordering::Relaxed) - loads,
        );
        assert_eq!(
            LOADS.load(Ordering::Relaxed),
            loads,
            "every measured call was a hit"
        );
        assert_eq!(
            after.hits - before.hits,
            calls,
            "every measured call was counted a hit"
        );
        if tier {
            assert_eq!(
                after.local_hits - before.local_hits,
                calls,
                "every measured call was served by the tier"
            );
        }
        cache.clear().await.unwrap();
    }
}
