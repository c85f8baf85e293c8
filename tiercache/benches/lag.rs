//! Cross-instance invalidation lag: how long after instance A's `invalidate(&k)` returns does
//! instance B's in-process tier stop serving the old value? That is the Δ of the two-tier
//! consistency promise while Redis works: the time the notice takes over the invalidation
//! channel (Redis pub/sub) to reach B and drop its entry. Target: p99 ≤ 2 ms on loopback.
//!
//! A and B are two `build()`s on one Redis, same namespace, each with `.local_capacity(16 << 20)`,
//! measured once both tiers are live. Per iteration, with a fresh key k: B loads k with
//! `get_with` (Redis and B's tier now hold it), and a `get` of k is checked to be a tier hit
//! (`stats().local_hits` moves by one). Then a task on B spins `b.get::<u32>(&k)` (tier hits,
//! ~1 µs each) with a `tokio::task::yield_now()` after each, so that it never starves B's channel
//! task of its worker; the runtime has two workers. Once it spins, A invalidates k; the lag runs
//! from A's `invalidate` returning to the spinner's first `None`. That `None` comes from Redis (the
//! tier no longer has k, and Redis was changed before the notice went out), so each figure
//! includes one Redis round trip. A notice can reach B before A's own call has returned (it is in
//! the same round trip as A's `UNLINK`): such iterations count as a lag of 0 and are shown.
//! The spinner keeps one worker busy for the whole measurement; on a 2-core machine that leaves
//! one core for Redis, A, B's channel task and the bench, which shows in the tail of A's own
//! `invalidate` call (also printed).
//!
//! Run with: `cargo bench -p tiercache --bench lag`
//! (`BENCH_ITERS=5000` sets the number of invalidations, default 2,000; `BENCH_SECS` does not
//! apply.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tiercache::{Cache, Category, Key};
use tiercache_testkit::RedisServer;

/// Tries at getting k into B's tier before an iteration is skipped.
const FILL_TRIES: usize = 5;

async fn tiered(server: &RedisServer) -> Cache {
    let cache = Cache::builder()
        .url(server.url())
        .namespace("lag")
        .local_capacity(16 << 20)
        .build()
        .await
        .unwrap();
    support::wait_live(&cache).await;
    cache
}

/// Whether B serves k from its tier now (a read through Redis fills the tier, so a retry may).
async fn served_from_tier(b: &Cache, k: &Key, expected: u32) -> bool {
    for _ in 0..FILL_TRIES {
        let before = b.stats().await.local_hits;
        assert_eq!(b.get::<u32>(k).await, Some(expected));
        if b.stats().await.local_hits == before + 1 {
            return true;
        }
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&server, iters));
}

async fn run(server: &RedisServer, iters: usize) {
    let a = tiered(server).await;
    let b = tiered(server).await;
    let cat = Category::new("lag");
    let mut lags_us = Vec::with_capacity(iters);
    let mut calls_us = Vec::with_capacity(iters);
    let (mut early, mut skipped, mut spins_total) = (0usize, 0usize, 0u64);
    let started = Instant::now();
    for i in 0..iters {
        let k = b.key(&cat, [i.to_string()]);
        let v = i as u32;
        assert_eq!(b.get_with(&k, async { v }).await, v);
        if !served_from_tier(&b, &k, v).await {
            skipped += 1;
            a.invalidate(&k).await;
            continue;
        }
        let spinning = Arc::new(AtomicBool::new(false));
        let spinner = {
            let (b, k, spinning) = (b.clone(), k.clone(), spinning.clone());
            tokio::spawn(async move {
                let mut spins = 0u64;
                loop {
                    if b.get::<u32>(&k).await.is_none() {
                        return (Instant::now(), spins);
                    }
                    spins += 1;
                    spinning.store(true, Ordering::Release);
                    tokio::task::yield_now().await;
                }
            })
        };
        while !spinning.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        let t = Instant::now();
        a.invalidate(&k).await;
        let returned = Instant::now();
        let (gone, spins) = spinner.await.unwrap();
        spins_total += spins;
        calls_us.push((returned - t).as_secs_f64() * 1e6);
        match gone.checked_duration_since(returned) {
            Some(lag) => lags_us.push(lag.as_secs_f64() * 1e6),
            None => {
                early += 1;
                lags_us.push(0.0);
            }
        }
    }
    let run = started.elapsed();
    lags_us.sort_by(f64::total_cmp);
    calls_us.sort_by(f64::total_cmp);
    let measured = lags_us.len();
    println!(
        "{measured} invalidations measured ({skipped} skipped: k not in B's tier after {FILL_TRIES} reads), {:.0} tier reads spun per invalidation, run {:.1} s",
        spins_total as f64 / measured.max(1) as f64,
        run.as_secs_f64(),
    );
    println!("| what | p50 µs | p90 µs | p99 µs | max µs | mean µs |");
    println!("|------|-------:|-------:|-------:|-------:|--------:|");
    for (what, v) in [
        ("lag: A's invalidate returned → B's first None", &lags_us),
        ("A's invalidate call", &calls_us),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v[v.len() - 1],
            v.iter().sum::<f64>() / v.len() as f64,
        );
    }
    println!("B dropped k before A's call returned (counted as 0): {early} of {measured}");
    let mut errors = 0;
    for (name, c) in [("A", &a), ("B", &b)] {
        let s = c.stats().await;
        let l = s.local.unwrap();
        println!(
            "{name}: errors {}, timeouts {}, local hits {}, tier live {}, lapses {}, channel losses {}",
            s.errors, s.timeouts, s.local_hits, l.live, l.lapses, l.channel_losses
        );
        errors += s.errors;
    }
    assert_eq!(errors, 0, "no errors during the run");
}
