//! In-process tier hits against the floor they are built on: `Cache::get` served by the tier,
//! side by side with a bare `moka::sync::Cache<String, Arc<ScanSummary>>::get` of the same
//! values, at 1, 16 and 64 concurrent tasks on a multi-thread runtime (two workers on this
//! machine). What the cache adds to a tier hit (its coherence checks: the tier's lease, the
//! session, the key's stripe, the counters) is the difference; the ratio is what to read (target:
//! at least 0.8× the bare moka get).
//!
//! Both sides hold the same 1,024 values (~2 KB `ScanSummary`, each behind one `Arc`), read in
//! the same order by the same loop: each task reads 64 keys (`get` + `std::hint::black_box`),
//! then checks the clock and yields to the scheduler once, so all C tasks take turns on the
//! workers (without a yield, a task that never waits would hold its worker for the whole round
//! and C would not matter); the yield costs both sides alike, about 1/64 of a scheduler pass per
//! get. One get in 16 is timed on its own for the latency columns (the time inside that get:
//! waiting for a core between batches is not in it); throughput counts all gets. Rounds alternate
//! between the sides. Besides the ratio of the totals, the bench prints the median of the five
//! rounds' ratios (each round of the tier against the moka round just before it): on a shared
//! machine a burst of stolen time slows one round, and the median of adjacent pairs is the
//! figure that burst moves least. The bare moka cache is built with `Cache::new(2048)`: no weigher and no
//! expiry policy (the tier's moka has both, for its byte capacity and per-entry TTLs), so those
//! count against the tier too.
//!
//! The cache's value type is `Shared`, a newtype around `Arc<ScanSummary>` whose `Clone` is the
//! `Arc` clone and whose serde impls are the inner value's: a hit is an `Arc` clone, as with
//! `Arc<ScanSummary>` itself, which would need serde's `rc` feature (not enabled in this
//! workspace). The tier is filled with `get_with` once it is live; the bench checks that every
//! measured hit was counted in `stats().local_hits` and that Redis saw no read meanwhile.
//!
//! Run with: `cargo bench -p tiercache --bench tier`
//! (`BENCH_SECS=2` sets the length of each round; default 1.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use support::{ScanSummary, command_calls, value, wait_live};
use tiercache::{Cache, Category, Key};
use tiercache_testkit::RedisServer;

/// A power of two: keys are picked with a mask.
const KEYS: usize = 1024;
const TASKS: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 5;
/// Gets per batch; each task yields once per batch.
const BATCH: usize = 64;
/// One get in this many is timed.
const SAMPLE_EVERY: usize = 16;
/// Odd, so that a task visits every key.
const STRIDE: usize = 389;

/// `Arc<ScanSummary>` as a cache value.
#[derive(Clone, Debug, PartialEq)]
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

/// One side: a read of key `i`, true if it was found.
trait Reader: Send + Sync + 'static {
    fn read(&self, i: usize) -> impl Future<Output = bool> + Send;
}

struct Moka {
    cache: moka::sync::Cache<String, Arc<ScanSummary>>,
    keys: Vec<String>,
}

impl Reader for Moka {
    async fn read(&self, i: usize) -> bool {
        black_box(self.cache.get(self.keys[i].as_str())).is_some()
    }
}

struct Tier {
    cache: Cache,
    keys: Vec<Key>,
}

impl Reader for Tier {
    async fn read(&self, i: usize) -> bool {
        black_box(self.cache.get::<Shared>(&self.keys[i]).await).is_some()
    }
}

#[derive(Default)]
struct Tally {
    ops: u64,
    misses: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

impl Tally {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Where the tally stands, for [`since`](Self::since).
    fn mark(&self) -> (u64, Duration) {
        (self.ops, self.elapsed)
    }

    /// Throughput of what was added since `mark`.
    fn since(&self, (ops, elapsed): (u64, Duration)) -> f64 {
        (self.ops - ops) as f64 / (self.elapsed - elapsed).as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> u64 {
        self.latencies_ns.sort_unstable();
        let i = ((self.latencies_ns.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ns[i]
    }
}

/// `tasks` loops of batched reads for `secs`, added to `tally`.
async fn round<R: Reader>(reader: &Arc<R>, tasks: usize, secs: Duration, tally: &mut Tally) {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let reader = reader.clone();
            tokio::spawn(async move {
                let mut i = t * 131 % KEYS;
                let (mut ops, mut misses) = (0u64, 0u64);
                let mut lat = Vec::with_capacity(1 << 16);
                loop {
                    for j in 0..BATCH {
                        i = (i + STRIDE) & (KEYS - 1);
                        let found = if j % SAMPLE_EVERY == 0 {
                            let t = Instant::now();
                            let found = reader.read(i).await;
                            lat.push(t.elapsed().as_nanos() as u64);
                            found
                        } else {
                            reader.read(i).await
                        };
                        misses += u64::from(!found);
                    }
                    ops += BATCH as u64;
                    if start.elapsed() >= secs {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                (ops, misses, lat)
            })
        })
        .collect();
    for h in handles {
        let (ops, misses, mut lat) = h.await.unwrap();
        tally.ops += ops;
        tally.misses += misses;
        tally.latencies_ns.append(&mut lat);
    }
    tally.elapsed += start.elapsed();
}

/// Calls of the commands that read a value: GET (and the PTTL that comes with it when the cache
/// has a tier), MGET and the load lease.
fn reads(calls: &HashMap<String, u64>) -> u64 {
    ["get", "pttl", "mget", "evalsha"]
        .iter()
        .map(|c| calls.get(*c).copied().unwrap_or(0))
        .sum()
}

fn main() {
    let secs = support::bench_secs();
    let server = RedisServer::start();
    let rt = support::runtime();
    rt.block_on(run(&server, secs));
}

async fn run(server: &RedisServer, secs: Duration) {
    let cache = Cache::builder()
        .url(server.url())
        .namespace("tier")
        .local_capacity(16 << 20)
        // Longer than the whole run (30 rounds): no entry expires while it is measured.
        .default_ttl(Duration::from_secs(3600))
        .local_max_ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    wait_live(&cache).await;
    let cat = Category::new("scans");
    let values: Vec<Arc<ScanSummary>> = (0..KEYS)
        .map(|i| {
            let mut v = value();
            v.id = i as u64;
            Arc::new(v)
        })
        .collect();
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| cache.key(&cat, [i.to_string()]))
        .collect();
    for (key, v) in keys.iter().zip(&values) {
        let got = cache.get_with(key, async { Shared(v.clone()) }).await;
        assert!(Arc::ptr_eq(&got.0, v));
    }
    let moka = moka::sync::Cache::new(2 * KEYS as u64);
    for (key, v) in keys.iter().zip(&values) {
        moka.insert(key.as_str().to_owned(), v.clone());
    }
    let moka = Arc::new(Moka {
        cache: moka,
        keys: keys.iter().map(|k| k.as_str().to_owned()).collect(),
    });
    let tier = Arc::new(Tier {
        cache: cache.clone(),
        keys,
    });
    // Every value is in the tier now: one more pass must be served there.
    let s0 = cache.stats().await;
    for i in 0..KEYS {
        assert!(tier.read(i).await);
    }
    let s1 = cache.stats().await;
    assert_eq!(
        s1.local_hits - s0.local_hits,
        KEYS as u64,
        "the fill put every value in the tier"
    );

    let before = cache.stats().await;
    let calls_before = command_calls(server);
    println!(
        "{KEYS} values of {} bytes stored, each behind one Arc; {ROUNDS} alternating rounds of {secs:?} per side; batches of {BATCH} gets, one timed in {SAMPLE_EVERY}",
        cache.stored_size(tier.keys[0].as_str()).await.unwrap()
    );
    println!(
        "| tasks | moka ops/s | tier ops/s | ratio | median round ratio | moka p50 ns | tier p50 ns | moka p99 ns | tier p99 ns |"
    );
    println!(
        "|------:|-----------:|-----------:|------:|-------------------:|------------:|------------:|------------:|------------:|"
    );
    let mut tier_ops = 0;
    let mut misses = 0;
    for tasks in TASKS {
        let (mut m, mut t) = (Tally::default(), Tally::default());
        let mut ratios = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let (m0, t0) = (m.mark(), t.mark());
            round(&moka, tasks, secs, &mut m).await;
            round(&tier, tasks, secs, &mut t).await;
            ratios.push(t.since(t0) / m.since(m0));
        }
        ratios.sort_by(f64::total_cmp);
        tier_ops += t.ops;
        misses += m.misses + t.misses;
        println!(
            "| {tasks:>5} | {:>10.0} | {:>10.0} | {:>5.2} | {:>18.2} | {:>11} | {:>11} | {:>11} | {:>11} |",
            m.throughput(),
            t.throughput(),
            t.throughput() / m.throughput(),
            ratios[ROUNDS / 2],
            m.percentile(0.5),
            t.percentile(0.5),
            m.percentile(0.99),
            t.percentile(0.99),
        );
    }
    let calls_after = command_calls(server);
    let after = cache.stats().await;
    let local = after.local.unwrap();
    println!(
        "tier gets measured {tier_ops}; stats: local hits +{}, other hits +{}, misses +{}, errors {}; Redis reads meanwhile {}; tier lapses {}, channel losses {}",
        after.local_hits - before.local_hits,
        (after.hits - after.local_hits) - (before.hits - before.local_hits),
        after.misses - before.misses,
        after.errors,
        reads(&calls_after) - reads(&calls_before),
        local.lapses,
        local.channel_losses,
    );
    assert_eq!(misses, 0, "every get found its value");
    assert_eq!(after.errors, 0, "no errors during the run");
    assert_eq!(
        after.local_hits - before.local_hits,
        tier_ops,
        "every measured tier get was a tier hit"
    );
    assert_eq!(
        reads(&calls_after),
        reads(&calls_before),
        "no Redis reads during the tier rounds"
    );
}
