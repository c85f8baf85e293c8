//! The cost of a tag invalidation as the number of entries carrying the tag grows: 10, 10,000
//! and 1,000,000. A tag's entries carry its version, and `invalidate_tag` removes only that
//! version (one `UNLINK`, with the notice for other instances' tiers in the same round trip), so
//! its cost must stay flat across N; each read of an entry then finds it stale.
//!
//! For each N, N entries (a `u32` each, keys `cache.key(&cat, [i])` carrying one shared tag
//! `Tag::new("group", [N])`) are written with `insert_many` in batches of 1,000, eight batches in
//! flight (the fill time and the Redis commands per entry are shown too). A read through a sample
//! of the keys must hit (a batch that failed, over the 50 ms operation timeout on a busy machine,
//! is shown as fewer entries stored and as a fill timeout; the bench waits for the breaker it
//! opened to close). Then the tag is invalidated 200 times, each one timed alone; before each,
//! one entry is written again so that the tag has a version to remove (the other entries stay
//! stale: the cost does not depend on them). The Redis commands each invalidation caused are
//! counted from `INFO commandstats` (taken before and after each one, `INFO` itself left out).
//! Last, reads through the sample must all miss.
//!
//! Redis needs about 170 MB for the million entries; the bench starts its own server without
//! a memory limit. Filling the million takes most of the run (25-40 s on the 2-core VM): with a tag, each
//! entry of an `insert_many` costs its own round trip to note the tag's version before the one
//! pipeline of `SET`s. The cache has no in-process tier, so no heartbeat traffic mixes into the
//! command counts. `BENCH_SECS` does not apply: the number of invalidations is fixed.
//!
//! Run with: `cargo bench -p tiercache --bench tags`

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::command_calls;
use tiercache::{Cache, Category, Key, Tag};
use tiercache_testkit::RedisServer;

const SIZES: [usize; 3] = [10, 10_000, 1_000_000];
const BATCH: usize = 1_000;
/// `insert_many` calls in flight while filling.
const IN_FLIGHT: usize = 8;
const INVALIDATIONS: usize = 200;
/// Keys read before and after the invalidations.
const SAMPLE: usize = 100;

/// Commands called between two snapshots, `INFO` left out, by name.
fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn describe(per_name: &HashMap<String, u64>, times: usize) -> String {
    let mut v: Vec<_> = per_name.iter().collect();
    v.sort();
    v.iter()
        .map(|(name, n)| format!("{name} {}", fmt_ratio(**n as f64 / times as f64)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_ratio(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes one `u32` per key, `IN_FLIGHT` batches at a time.
async fn fill(cache: &Cache, keys: &Arc<Vec<Key>>) {
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (cache, keys, next) = (cache.clone(), keys.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(BATCH, Ordering::Relaxed);
                    if start >= keys.len() {
                        break;
                    }
                    let end = (start + BATCH).min(keys.len());
                    let batch: Vec<(Key, u32)> =
                        (start..end).map(|i| (keys[i].clone(), i as u32)).collect();
                    cache.insert_many(&batch).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
}

fn main() {
    let server = RedisServer::start_with_args(&["--maxmemory", "0"]);
    let rt = support::runtime();
    rt.block_on(run(&server));
}

async fn run(server: &RedisServer) {
    let cache = Cache::builder()
        .url(server.url())
        .namespace("tags")
        .build()
        .await
        .unwrap();
    println!(
        "{INVALIDATIONS} timed invalidations per N; fill with insert_many in batches of {BATCH}, {IN_FLIGHT} in flight"
    );
    println!(
        "| entries with the tag | stored | fill s | fill cmds/entry | fill timeouts | median µs | p99 µs | max µs | commands per invalidation | errors meanwhile | sample reads before → after |"
    );
    println!(
        "|---------------------:|-------:|-------:|----------------:|--------------:|----------:|-------:|-------:|---------------------------|-----------------:|-----------------------------|"
    );
    let mut notes = Vec::new();
    for n in SIZES {
        let cat = Category::new(format!("n{n}"));
        let tag = Tag::new("group", [n.to_string()]);
        let keys: Arc<Vec<Key>> = Arc::new(
            (0..n)
                .map(|i| cache.key(&cat, [i.to_string()]).with_tags([tag.clone()]))
                .collect(),
        );
        let mut sample: Vec<usize> = (0..SAMPLE.min(n))
            .map(|j| j * n / SAMPLE.min(n))
            .chain([n - 1])
            .collect();
        sample.dedup();

        let s0 = cache.stats().await;
        let calls0 = command_calls(server);
        let t = Instant::now();
        fill(&cache, &keys).await;
        let fill_time = t.elapsed();
        let fill_calls: u64 = delta(&calls0, &command_calls(server)).values().sum();
        // A write that fails (a batch over the 50 ms operation timeout on a busy machine)
        // opens the breaker until recovery has replayed its invalidation: wait for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cache.is_connected() {
            assert!(Instant::now() < deadline, "the breaker did not close again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s1 = cache.stats().await;
        let mut hits_before = 0;
        for &i in &sample {
            hits_before += usize::from(cache.get::<u32>(&keys[i]).await == Some(i as u32));
        }

        let mut times_us = Vec::with_capacity(INVALIDATIONS);
        let mut per_name: HashMap<String, u64> = HashMap::new();
        for _ in 0..INVALIDATIONS {
            // A version for the invalidation to remove (the first one removes the fill's).
            cache.insert(&keys[0], &0u32).await;
            let before = command_calls(server);
            let t = Instant::now();
            cache.invalidate_tag(&tag).await;
            times_us.push(t.elapsed().as_secs_f64() * 1e6);
            for (name, c) in delta(&before, &command_calls(server)) {
                *per_name.entry(name).or_default() += c;
            }
        }
        times_us.sort_by(f64::total_cmp);
        let mut hits_after = 0;
        for &i in &sample {
            hits_after += usize::from(cache.get::<u32>(&keys[i]).await.is_some());
        }
        let s2 = cache.stats().await;
        let total: u64 = per_name.values().sum();
        println!(
            "| {n:>20} | {:>6} | {:>6.2} | {:>15} | {:>13} | {:>9.1} | {:>6.1} | {:>6.1} | {} ({}) | {:>16} | {hits_before} of {} hit → {hits_after} hit |",
            s1.sets - s0.sets,
            fill_time.as_secs_f64(),
            fmt_ratio(fill_calls as f64 / n as f64),
            s1.timeouts - s0.timeouts,
            percentile(&times_us, 0.5),
            percentile(&times_us, 0.99),
            times_us[times_us.len() - 1],
            fmt_ratio(total as f64 / INVALIDATIONS as f64),
            describe(&per_name, INVALIDATIONS),
            s2.errors - s1.errors,
            sample.len(),
        );
        notes.push((n, hits_before, hits_after, s2.errors - s1.errors));
    }
    // `stats` reads the counters first, then asks Redis (INFO, and a SCAN that counts the
    // namespace): a second call shows whether the first one's own Redis calls failed.
    let t = Instant::now();
    let s = cache.stats().await;
    let took = t.elapsed();
    let again = cache.stats().await;
    let memory = server.command(&["INFO", "memory"]).unwrap();
    let used = memory
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_human:"))
        .unwrap_or("?");
    println!(
        "stats: tag invalidations {}, sets {}, errors {}, timeouts {}; Redis used memory {used}",
        s.tag_invalidations, s.sets, s.errors, s.timeouts,
    );
    println!(
        "stats() itself took {took:.2?} (keys in the namespace {:?}, used_memory_human {:?}); its own Redis calls: {} errors, {} timeouts",
        s.keys,
        s.used_memory_human,
        again.errors - s.errors,
        again.timeouts - s.timeouts,
    );
    for (n, hits_before, hits_after, errors) in notes {
        assert!(hits_before > 0, "N={n}: sampled entries hit before");
        assert_eq!(hits_after, 0, "N={n}: every sampled entry missed after");
        assert_eq!(errors, 0, "N={n}: no errors while timing the invalidations");
    }
}
