//! Chaos soak: two scan-api instances on one Redis (logged in as an ACL user, through the test
//! kit's `FaultProxy`) and one PostgreSQL, under a steady mixed load of reads and writes, while
//! a fault loop makes the fault matrix's faults (`tiercache_testkit::Fault`) at random, each
//! held 0.2–1.5 s, with healthy gaps of 0.3–1.2 s between them: Redis is faulty about half of
//! the time (the bench prints the share it measured; the target is at least 30 %).
//!
//! It prints:
//! - the success rate (answers 200/201 over requests; target ≥ 99.99 %: the database stays
//!   healthy, so no request may fail because of the cache);
//! - latency p50 / p99 / p99.9 / max, over all requests and over those made during faults;
//! - stale reads: reads of an image's latest scan older than a scan acknowledged more than Δ
//!   (the in-process tier's lease) before the read began (target 0);
//! - database queries saved: the queries the two instances made, against what the same
//!   requests cost an uncached instance in a short run on the same data before the soak;
//! - the time for both instances to serve the newest scan from their caches after the last
//!   fault.
//!
//! Run by hand, not in CI: `cargo bench -p scan-api --bench chaos`. `CHAOS_SECS` sets the
//! soak's length (default 60), `CHAOS_SEED` replays a fault schedule (printed at the start),
//! `CHAOS_CLIENTS` the concurrent readers (default 8). It starts its own PostgreSQL cluster
//! and redis-server through the test kit.

#![allow(missing_docs, clippy::unwrap_used, clippy::cast_precision_loss)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use scan_api::store::Store;
use scan_api::synth::Generator;
use scan_api::{cache_policy, ingest};
use support::{encode, serve};
use tiercache::{Cache, DEFAULT_LOCAL_LEASE};
use tiercache_testkit::{Fault, FaultProxy, PostgresServer, RedisServer};

const USER: &str = "svc";
const PASSWORD: &str = "pw";
/// Δ: how far behind an acknowledged write a read may be.
const DELTA: Duration = DEFAULT_LOCAL_LEASE;
/// Images whose latest scan the writer keeps replacing and the readers check.
const HOT: usize = 4;
/// Images seeded for the other reads.
const IMAGES: u64 = 200;
const BASELINE: Duration = Duration::from_secs(5);
const WRITE_EVERY: Duration = Duration::from_millis(50);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the readers may ask for.
struct Paths {
    /// `/api/images/{hot}/latest`, checked for staleness.
    latest: Vec<String>,
    /// `/api/scan-results?image=` and `/api/scan-results/{id}` of the seeded images.
    cold: Vec<String>,
    /// `/api/insights`, `/api/images`, `/api/vulnerabilities?severity=CRITICAL`.
    wide: Vec<String>,
}

#[derive(Clone, Copy)]
enum Op {
    Read = 0,
    Write = 1,
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    made: AtomicU64,
    failed: AtomicU64,
    made_faulted: AtomicU64,
    checked: AtomicU64,
    stale: AtomicU64,
    /// Latencies in µs: `[reads, writes][all, during faults]`.
    latencies: [[Mutex<Vec<u32>>; 2]; 2],
    /// Per hot image: (when the write's 201 arrived, its scan id), in order.
    acked: Vec<Mutex<Vec<(Instant, i64)>>>,
    /// The first few failures, to print.
    failures: Mutex<Vec<String>>,
    /// Whether a fault is being made now.
    faulted: AtomicBool,
    /// The fault made last: its name, when it began and ended (`None` while it holds).
    last_fault: Mutex<Option<(&'static str, Instant, Option<Instant>)>>,
    /// What each stale read was, to print.
    stale_reads: Mutex<Vec<String>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            acked: (0..HOT).map(|_| Mutex::new(Vec::new())).collect(),
            ..Self::default()
        }
    }

    fn took(&self, op: Op, during_fault: bool, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        self.made.fetch_add(1, SeqCst);
        lock(&self.latencies[op as usize][0]).push(us);
        if during_fault {
            self.made_faulted.fetch_add(1, SeqCst);
            lock(&self.latencies[op as usize][1]).push(us);
        }
    }

    /// The percentiles of `op`, all (`faulted` false) or during faults.
    fn latency(&self, op: Op, faulted: bool) -> String {
        percentiles(&mut lock(
            &self.latencies[op as usize][usize::from(faulted)],
        ))
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, SeqCst);
        let mut failures = lock(&self.failures);
        if failures.len() < 10 {
            failures.push(what);
        }
    }

    /// The newest scan of hot image `h` acknowledged more than Δ before `started`.
    fn due_by(&self, h: usize, started: Instant) -> Option<i64> {
        lock(&self.acked[h])
            .iter()
            .filter(|(at, _)| *at + DELTA <= started)
            .map(|(_, id)| *id)
            .max()
    }

    /// Counts a stale read and notes what it was and which fault it followed.
    fn stale(&self, what: String) {
        self.stale.fetch_add(1, SeqCst);
        let fault = match *lock(&self.last_fault) {
            None => "before any fault".to_owned(),
            Some((name, began, None)) => {
                format!("during {name} (began {:.0?} ago)", began.elapsed())
            }
            Some((name, began, Some(ended))) => format!(
                "{:.0?} after {name} (held {:.0?})",
                ended.elapsed(),
                ended - began
            ),
        };
        lock(&self.stale_reads).push(format!("{what}, {fault}"));
    }

    fn newest(&self, h: usize) -> Option<i64> {
        lock(&self.acked[h]).iter().map(|(_, id)| *id).max()
    }
}

/// Database queries and requests, split between the times Redis was healthy and faulty.
struct Split {
    /// [healthy, faulty]: (queries, requests).
    totals: [(u64, u64); 2],
    last: (u64, u64),
}

impl Split {
    const HEALTHY: usize = 0;
    const FAULTY: usize = 1;

    fn new(queries: u64, tally: &Tally) -> Self {
        Self {
            totals: [(0, 0); 2],
            last: (queries, tally.made.load(SeqCst)),
        }
    }

    fn add(&mut self, which: usize, queries: u64, tally: &Tally) {
        let now = (queries, tally.made.load(SeqCst));
        self.totals[which].0 += now.0 - self.last.0;
        self.totals[which].1 += now.1 - self.last.1;
        self.last = now;
    }

    fn healthy_until(&mut self, queries: u64, tally: &Tally) {
        self.add(Self::HEALTHY, queries, tally);
    }

    fn faulty_until(&mut self, queries: u64, tally: &Tally) {
        self.add(Self::FAULTY, queries, tally);
    }

    /// The share of the uncached queries saved during `which`.
    fn saved(&self, which: usize, uncached_per_request: f64) -> f64 {
        let (q, n) = self.totals[which];
        1.0 - (q as f64 / n.max(1) as f64) / uncached_per_request
    }
}

fn percentiles(v: &mut [u32]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let at = |p: f64| f64::from(v[((v.len() - 1) as f64 * p).round() as usize]) / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

fn hot_image(h: usize) -> String {
    format!("chaos/hot-{h}")
}

/// A small report of `image`, new each time.
fn report(image: &str, n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "SchemaVersion": 2,
        "ArtifactName": format!("{image}:w{n}"),
        "ArtifactType": "container_image",
        "Metadata": { "RepoTags": [format!("{image}:w{n}")], "OS": {"Family": "alpine", "Name": "3.19"} },
        "Results": [{ "Target": "t", "Class": "os-pkgs", "Type": "alpine", "Vulnerabilities": [{
            "VulnerabilityID": format!("CVE-2099-{:05}", n % 50),
            "PkgName": "pkg",
            "InstalledVersion": "1.0",
            "FixedVersion": "1.1",
            "Severity": "HIGH",
        }] }],
    }))
    .unwrap()
}

/// One request: `Ok((X-Cache, body))` on 200/201, else what went wrong.
async fn send(request: reqwest::RequestBuilder) -> Result<(String, serde_json::Value), String> {
    let resp = request.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let x_cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if status == 200 || status == 201 {
        serde_json::from_slice(&body)
            .map(|b| (x_cache, b))
            .map_err(|e| format!("{status}: {e}"))
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// Readers over every base (checking staleness) and a writer of the hot images, until `stop`.
fn start_load(
    bases: &[String],
    paths: &Arc<Paths>,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
    clients: usize,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for reader in 0..clients {
        let (bases, paths, tally, stop, client) = (
            bases.to_vec(),
            paths.clone(),
            tally.clone(),
            stop.clone(),
            client.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ ((reader as u64 + 1) << 32));
            while !stop.load(SeqCst) {
                let base = &bases[rng.usize(..bases.len())];
                let roll = rng.u32(..100);
                let (path, hot) = if roll < 40 {
                    let h = rng.usize(..HOT);
                    (&paths.latest[h], Some(h))
                } else if roll < 90 {
                    (&paths.cold[rng.usize(..paths.cold.len())], None)
                } else {
                    (&paths.wide[rng.usize(..paths.wide.len())], None)
                };
                let started = Instant::now();
                let during_fault = tally.faulted.load(SeqCst);
                let due = hot.and_then(|h| tally.due_by(h, started));
                let answer = send(client.get(format!("{base}{path}"))).await;
                tally.took(Op::Read, during_fault, started.elapsed());
                match answer {
                    Ok((x_cache, body)) => {
                        if let (Some(due), Some(h)) = (due, hot) {
                            tally.checked.fetch_add(1, SeqCst);
                            let got = body["id"].as_i64().unwrap_or(0);
                            if got < due {
                                tally.stale(format!(
                                    "hot-{h} on {base}: {x_cache} id {got}, due {due}, read took {:.0?}",
                                    started.elapsed()
                                ));
                            }
                        }
                    }
                    Err(e) => tally.fail(format!("GET {path}: {e}")),
                }
            }
        }));
    }
    let (bases, tally, stop) = (bases.to_vec(), tally.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(SeqCst) {
            n += 1;
            let h = (n % HOT as u64) as usize;
            let base = &bases[(n / HOT as u64) as usize % bases.len()];
            let started = Instant::now();
            let during_fault = tally.faulted.load(SeqCst);
            let answer = send(
                client
                    .post(format!("{base}/api/scan-results"))
                    .header("content-type", "application/json")
                    .body(report(&hot_image(h), n)),
            )
            .await;
            tally.took(Op::Write, during_fault, started.elapsed());
            match answer {
                Ok((_, body)) => {
                    lock(&tally.acked[h]).push((Instant::now(), body["id"].as_i64().unwrap_or(0)))
                }
                Err(e) => tally.fail(format!("POST: {e}")),
            }
            tokio::time::sleep(WRITE_EVERY).await;
        }
    }));
    tasks
}

async fn stop_load(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
}

fn queries(stores: &[Store]) -> u64 {
    stores.iter().map(Store::queries).sum()
}

fn main() {
    let secs = Duration::from_secs_f64(env_or("CHAOS_SECS", 60.0));
    let clients: usize = env_or("CHAOS_CLIENTS", 8);
    let seed: u64 = env_or("CHAOS_SEED", fastrand::u64(..));
    println!(
        "chaos soak: {secs:?}, {clients} readers and a writer on two instances, seed {seed} (CHAOS_SEED={seed} replays the fault schedule)"
    );
    let pg = PostgresServer::start();
    let mut redis = RedisServer::start_with_user(USER, PASSWORD);
    let proxy = FaultProxy::start(redis.addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db_url = pg.create_database();
        let seed_store = Store::connect(&db_url).await.unwrap();
        let no_cache = Cache::builder().enabled(false).build().await.unwrap();
        ingest::seed(&seed_store, &no_cache, 11, 0, IMAGES, &|_, _| {}).await.unwrap();
        // As shipped, but for the login: Redis, through the proxy, with the in-process tier.
        let mut caches = Vec::new();
        for _ in 0..2 {
            let builder = Cache::builder()
                .url(proxy.url())
                .username(USER)
                .password(PASSWORD)
                .namespace("chaos");
            caches.push(cache_policy::configure(builder).build().await.unwrap());
        }
        let mut stores = Vec::new();
        let mut bases = Vec::new();
        for cache in &caches {
            let store = Store::connect(&db_url).await.unwrap();
            bases.push(serve(store.clone(), cache.clone()).await);
            stores.push(store);
        }
        let uncached_store = Store::connect(&db_url).await.unwrap();
        let uncached = serve(uncached_store.clone(), no_cache).await;

        // Each hot image has a scan; the cold reads are the seeded images and their scans.
        let client = reqwest::Client::new();
        for h in 0..HOT {
            send(client.post(format!("{}/api/scan-results", bases[0])).header("content-type", "application/json").body(report(&hot_image(h), 0)))
                .await
                .unwrap();
        }
        let generator = Generator::new(11);
        let mut cold = Vec::new();
        for i in 0..IMAGES {
            let image = encode(&generator.image_name(i));
            cold.push(format!("/api/scan-results?image={image}"));
            let (_, latest) = send(client.get(format!("{}/api/images/{image}/latest", bases[0]))).await.unwrap();
            cold.push(format!("/api/scan-results/{}", latest["id"]));
        }
        let paths = Arc::new(Paths {
            latest: (0..HOT).map(|h| format!("/api/images/{}/latest", encode(&hot_image(h)))).collect(),
            cold,
            wide: vec!["/api/insights".into(), "/api/images".into(), "/api/vulnerabilities?severity=CRITICAL".into()],
        });

        // What the same load costs the database without a cache.
        let tally = Arc::new(Tally::new());
        let stop = Arc::new(AtomicBool::new(false));
        let before = uncached_store.queries();
        let load = start_load(std::slice::from_ref(&uncached), &paths, &tally, &stop, clients, seed);
        tokio::time::sleep(BASELINE).await;
        stop_load(&stop, load).await;
        let base_queries = uncached_store.queries() - before;
        let base_made = tally.made.load(SeqCst);
        let per_request = base_queries as f64 / base_made as f64;
        println!(
            "uncached baseline: {base_made} requests in {BASELINE:?}, {base_queries} database queries ({per_request:.2} per request), reads {}",
            tally.latency(Op::Read, false)
        );

        // The soak.
        let tally = Arc::new(Tally::new());
        let stop = Arc::new(AtomicBool::new(false));
        let before = queries(&stores);
        let load = start_load(&bases, &paths, &tally, &stop, clients, seed);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut made: BTreeMap<&str, (u32, Duration)> = BTreeMap::new();
        let started = Instant::now();
        let end = started + secs;
        let mut faulted_for = Duration::ZERO;
        // (database queries, requests) while healthy and while faulty, from snapshots at each
        // fault's start and end.
        let mut split = Split::new(queries(&stores), &tally);
        loop {
            let gap = Duration::from_millis(rng.u64(300..=1200));
            tokio::time::sleep(gap.min(end.saturating_duration_since(Instant::now()))).await;
            if Instant::now() >= end {
                break;
            }
            let fault = Fault::ALL[rng.usize(..Fault::ALL.len())];
            let hold = Duration::from_millis(rng.u64(200..=1500));
            let t = Instant::now();
            split.healthy_until(queries(&stores), &tally);
            tally.faulted.store(true, SeqCst);
            *lock(&tally.last_fault) = Some((fault.name(), t, None));
            let (redis, proxy) = (&mut redis, &proxy);
            tokio::task::block_in_place(|| fault.inject(redis, proxy, USER, hold));
            tally.faulted.store(false, SeqCst);
            *lock(&tally.last_fault) = Some((fault.name(), t, Some(Instant::now())));
            split.faulty_until(queries(&stores), &tally);
            let took = t.elapsed();
            faulted_for += took;
            let entry = made.entry(fault.name()).or_default();
            entry.0 += 1;
            entry.1 += took;
        }
        let soak = started.elapsed();
        split.healthy_until(queries(&stores), &tally);
        // Both instances serve every hot image's newest scan from their caches.
        let last_fault_ended = Instant::now();
        let mut converged = true;
        for base in &bases {
            for (h, path) in paths.latest.iter().enumerate() {
                let newest = tally.newest(h).unwrap_or(0);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let resp = client.get(format!("{base}{path}")).send().await.unwrap();
                    let hit = resp.headers().get("x-cache").is_some_and(|v| v == "HIT");
                    let body: serde_json::Value = resp.json().await.unwrap();
                    if hit && body["id"].as_i64().unwrap_or(0) >= newest {
                        break;
                    }
                    if Instant::now() > deadline {
                        converged = false;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let convergence = last_fault_ended.elapsed();
        stop_load(&stop, load).await;
        let soak_queries = queries(&stores) - before;

        let made_all = tally.made.load(SeqCst);
        let failed = tally.failed.load(SeqCst);
        let success = 1.0 - failed as f64 / made_all as f64;
        let saved = 1.0 - (soak_queries as f64 / made_all as f64) / per_request;
        println!("\nfaults made (count, time held):");
        for (name, (n, d)) in &made {
            println!("  {name:<28} {n:>3}  {d:>8.1?}");
        }
        println!("\n| figure | value |\n|---|---|");
        println!("| soak | {soak:.1?}, Redis faulty {:.0} % of it (target ≥ 30 %) |", faulted_for.as_secs_f64() / soak.as_secs_f64() * 100.0);
        println!("| requests | {made_all} ({} during faults), {:.0}/s |", tally.made_faulted.load(SeqCst), made_all as f64 / soak.as_secs_f64());
        println!("| success rate | {:.4} % ({failed} not 200/201; target ≥ 99.99 %) |", success * 100.0);
        println!("| read latency, all | {} |", tally.latency(Op::Read, false));
        println!("| read latency, during faults | {} |", tally.latency(Op::Read, true));
        println!("| write latency, all | {} |", tally.latency(Op::Write, false));
        println!("| write latency, during faults | {} |", tally.latency(Op::Write, true));
        println!("| stale reads beyond Δ = {DELTA:?} | {} of {} checked (target 0) |", tally.stale.load(SeqCst), tally.checked.load(SeqCst));
        println!("| database queries | {soak_queries}, against ~{:.0} uncached: {:.1} % saved |", per_request * made_all as f64, saved * 100.0);
        println!(
            "| … while Redis is healthy / faulty | {:.1} % / {:.1} % saved |",
            split.saved(Split::HEALTHY, per_request) * 100.0,
            split.saved(Split::FAULTY, per_request) * 100.0
        );
        println!(
            "| both instances hit the newest scans | {} {convergence:.1?} after the last fault |",
            if converged { "within" } else { "NOT within 10 s:" }
        );
        for (i, cache) in caches.iter().enumerate() {
            let s = cache.stats_without_keys().await;
            println!(
                "instance {i}: {} hits ({} in-process), {} misses, {} loads, {} errors, {} timeouts, {} short circuits, {} OOM write failures",
                s.hits, s.local_hits, s.misses, s.loader_runs, s.errors, s.timeouts, s.short_circuits, s.oom_write_failures
            );
        }
        for f in lock(&tally.stale_reads).iter() {
            println!("stale: {f}");
        }
        for f in lock(&tally.failures).iter() {
            println!("failure: {f}");
        }
    });
}
