//! The mixed workload of a service in front of its database: 10,000 keys holding ~2 KB values,
//! 95% reads and 5% writes of uniformly random keys, at 1, 16 and 64 concurrent tasks on a
//! multi-thread runtime, one Redis on loopback. Three sides in one run, on the same server, each
//! with its own namespace and its own copy of the source; rounds alternate between them so that
//! machine noise hits all alike:
//!
//! - `raw`: hand-written cache-aside with redis-rs (one multiplexed connection): `GET`; on a miss,
//!   load from the source, then `SET key value PX 300000`; a write bumps the source, then
//!   `UNLINK`s the key. The stored bytes are the cache's own (3-byte envelope, postcard, LZ4 above
//!   1 KiB), so both pay the same decode.
//! - `redis`: `Cache` without a tier: `get_with(&key, load)`; a write bumps the source, then
//!   `invalidate(&key)`.
//! - `tier`: the same with `.local_capacity(64 << 20)`, measured once its tier is live.
//!
//! Each side is warmed first with one read of every key, then 50,000 operations of the mix, so
//! that, as in the rounds, about 5% of the keys are invalidated at any time (after the read pass
//! alone none is, and a side that runs more operations in a round would re-read more of the keys
//! it invalidated, which skews loads per read at one task).
//!
//! The source is a version per key (an `AtomicU64`, read when a load begins) and a simulated
//! query latency, `BENCH_LOAD_US` (default 500 µs). From 1 ms up the loader sleeps on tokio's
//! timer. Below that, tokio's timer (1 ms granularity) would round the wait up, and a spin or
//! yield loop would burn one of the two cores that Redis and the bench share (at 64 tasks, loads
//! alone would want more than a core), so the loader waits on a blocking-pool thread in
//! `std::thread::sleep`, as a real query waits on a socket: no CPU, sub-ms resolution. Sleeps
//! overshoot (on the 2-core VM a 500 µs sleep took ~600 µs at the median, ~860 µs on average),
//! so the table shows the mean load time actually waited.
//!
//! What to read: loader runs per read, against the raw side's (the target: at most 1.1× at every
//! C, with and without the tier), and throughput against the raw side's. A *stale* read returned
//! a version older than one whose invalidation had returned before the read began: plain
//! cache-aside can store a value loaded before a write after that write's `UNLINK`; the cache
//! must never serve one. Each cache's `stats()` (errors must be 0) is printed at the end.
//!
//! To explain the throughput, the table also shows each side's read latency (p50/p99, loads
//! included), the Redis commands per operation (`INFO commandstats`, which also counts the
//! commands a Lua script runs; the tier side's heartbeats add ~50 a second), and the CPU time per
//! operation of the bench process and of redis-server (`/proc`, 10 ms ticks): on a 2-core machine
//! the bench, its blocking pool and Redis compete for the same cores, so CPU per operation bounds
//! ops/s at 16 and 64 tasks. The values are `ScanSummary`s, not `Arc`s, so a tier hit clones one
//! (~100 small allocations), much as a Redis hit decodes one.
//!
//! Run with: `cargo bench -p tiercache --bench mixed`
//! (`BENCH_SECS=2` sets the length of each round, default 1; `BENCH_LOAD_US=200` the simulated
//! load latency in µs, default 500.)

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use support::{ScanSummary, env_f64, value, wait_live};
use tiercache::{Cache, Category, Key};
use tiercache_testkit::RedisServer;

const KEYS: usize = 10_000;
/// Out of 100 operations.
const WRITE_PERCENT: u32 = 5;
const TASKS: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 3;
/// The raw side's TTL, in ms (the cache's default TTL is 300 s too).
const RAW_TTL_MS: u64 = 300_000;
/// Tasks of the warm-up.
const WARM_TASKS: usize = 64;
/// Operations of the mix in the warm-up: after five per key, all but e⁻⁵ ≈ 0.7% of the keys
/// have seen one.
const WARM_OPS: usize = 5 * KEYS;

/// The database: one version per key, a simulated query latency, and counters of the loads.
struct Source {
    versions: Vec<AtomicU64>,
    /// The newest version of each key whose invalidation has returned: a read that begins after
    /// that must not return an older one.
    acked: Vec<AtomicU64>,
    loads: AtomicU64,
    load_ns: AtomicU64,
    latency: Duration,
    template: ScanSummary,
}

impl Source {
    fn new(latency: Duration) -> Self {
        Self {
            versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            loads: AtomicU64::new(0),
            load_ns: AtomicU64::new(0),
            latency,
            template: value(),
        }
    }

    /// One query: the row as of when it began, returned after the latency.
    async fn load(&self, k: usize) -> ScanSummary {
        let started = Instant::now();
        self.loads.fetch_add(1, Relaxed);
        let version = self.versions[k].load(SeqCst);
        wait(self.latency).await;
        let mut row = self.template.clone();
        row.id = ((k as u64) << 32) | version;
        self.load_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        row
    }

    /// A write to the source; returns the new version.
    fn bump(&self, k: usize) -> u64 {
        self.versions[k].fetch_add(1, SeqCst) + 1
    }

    fn figures(&self) -> (u64, u64) {
        (self.loads.load(Relaxed), self.load_ns.load(Relaxed))
    }
}

/// The version a loaded row carries.
fn version_of(row: &ScanSummary) -> u64 {
    row.id & 0xFFFF_FFFF
}

/// Waits like a query does (see the module docs).
async fn wait(latency: Duration) {
    if latency >= Duration::from_millis(1) {
        tokio::time::sleep(latency).await;
    } else if !latency.is_zero() {
        tokio::task::spawn_blocking(move || std::thread::sleep(latency))
            .await
            .unwrap();
    }
}

/// The bytes the cache would store for `row`: envelope v1, postcard, LZ4 above 1 KiB.
fn encode_raw(row: &ScanSummary) -> Vec<u8> {
    let payload = postcard::to_allocvec(row).unwrap();
    if payload.len() > 1024 {
        let mut out = vec![1, 1, 1];
        out.extend(lz4_flex::compress_prepend_size(&payload));
        out
    } else {
        let mut out = vec![1, 1, 0];
        out.extend(payload);
        out
    }
}

fn decode_raw(bytes: &[u8]) -> ScanSummary {
    match bytes[2] {
        0 => postcard::from_bytes(&bytes[3..]).unwrap(),
        _ => postcard::from_bytes(&lz4_flex::decompress_size_prepended(&bytes[3..]).unwrap())
            .unwrap(),
    }
}

/// How one side reaches its cache. Cloned into each task.
#[derive(Clone)]
enum Store {
    Raw {
        conn: MultiplexedConnection,
        keys: Arc<[String]>,
    },
    Cache {
        cache: Cache,
        keys: Arc<[Key]>,
    },
}

impl Store {
    async fn read(&mut self, source: &Source, k: usize) -> redis::RedisResult<ScanSummary> {
        match self {
            Store::Raw { conn, keys } => {
                let found: Option<Vec<u8>> =
                    redis::cmd("GET").arg(&*keys[k]).query_async(conn).await?;
                if let Some(bytes) = found {
                    return Ok(decode_raw(&bytes));
                }
                let row = source.load(k).await;
                let () = redis::cmd("SET")
                    .arg(&*keys[k])
                    .arg(encode_raw(&row))
                    .arg("PX")
                    .arg(RAW_TTL_MS)
                    .query_async(conn)
                    .await?;
                Ok(row)
            }
            Store::Cache { cache, keys } => Ok(cache.get_with(&keys[k], source.load(k)).await),
        }
    }

    /// One operation on a random key: a write (5%) or a read, counted in `c`.
    async fn op(&mut self, source: &Source, rng: &mut fastrand::Rng, c: &mut Counts) {
        let k = rng.usize(..KEYS);
        if rng.u32(..100) < WRITE_PERCENT {
            c.writes += 1;
            if self.write(source, k).await.is_err() {
                c.errors += 1;
            }
        } else {
            c.reads += 1;
            let floor = source.acked[k].load(SeqCst);
            let t = Instant::now();
            let read = self.read(source, k).await;
            c.read_us.push(t.elapsed().as_secs_f32() * 1e6);
            match read {
                Ok(row) => {
                    assert_eq!(row.id >> 32, k as u64, "the row of the key read");
                    if version_of(&row) < floor {
                        c.stale += 1;
                    }
                }
                Err(_) => c.errors += 1,
            }
        }
    }

    async fn write(&mut self, source: &Source, k: usize) -> redis::RedisResult<()> {
        let version = source.bump(k);
        match self {
            Store::Raw { conn, keys } => {
                let _: u64 = redis::cmd("UNLINK")
                    .arg(&*keys[k])
                    .query_async(conn)
                    .await?;
            }
            Store::Cache { cache, keys } => cache.invalidate(&keys[k]).await,
        }
        source.acked[k].fetch_max(version, SeqCst);
        Ok(())
    }
}

#[derive(Default)]
struct Counts {
    reads: u64,
    writes: u64,
    stale: u64,
    errors: u64,
    /// Of each read, in µs.
    read_us: Vec<f32>,
}

impl Counts {
    fn add(&mut self, mut o: Counts) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.stale += o.stale;
        self.errors += o.errors;
        self.read_us.append(&mut o.read_us);
    }
}

/// What one side did at one concurrency, summed over the rounds.
#[derive(Default)]
struct Tally {
    counts: Counts,
    loads: u64,
    load_ns: u64,
    /// Redis commands the side caused (`INFO commandstats`).
    commands: u64,
    /// CPU time of this process and of redis-server during the rounds.
    cpu: (Duration, Duration),
    elapsed: Duration,
}

impl Tally {
    fn ops_per_sec(&self) -> f64 {
        (self.counts.reads + self.counts.writes) as f64 / self.elapsed.as_secs_f64()
    }

    fn reads_per_sec(&self) -> f64 {
        self.counts.reads as f64 / self.elapsed.as_secs_f64()
    }

    fn loads_per_read(&self) -> f64 {
        self.loads as f64 / self.counts.reads as f64
    }

    fn loads_per_write(&self) -> f64 {
        self.loads as f64 / self.counts.writes as f64
    }

    fn mean_load_us(&self) -> f64 {
        self.load_ns as f64 / self.loads.max(1) as f64 / 1e3
    }

    fn ops(&self) -> f64 {
        (self.counts.reads + self.counts.writes) as f64
    }

    fn commands_per_op(&self) -> f64 {
        self.commands as f64 / self.ops()
    }

    /// CPU µs per operation, of the bench process and of redis-server.
    fn cpu_per_op(&self) -> (f64, f64) {
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / self.ops();
        (per_op(self.cpu.0), per_op(self.cpu.1))
    }

    fn read_percentile(&mut self, p: f64) -> f32 {
        let v = &mut self.counts.read_us;
        v.sort_unstable_by(f32::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    fn add(&mut self, o: Tally) {
        self.counts.add(o.counts);
        self.loads += o.loads;
        self.load_ns += o.load_ns;
        self.commands += o.commands;
        self.cpu.0 += o.cpu.0;
        self.cpu.1 += o.cpu.1;
        self.elapsed += o.elapsed;
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/{pid}/stat` (Linux; zero
/// elsewhere). In clock ticks of 10 ms: over rounds of a second the error is about 1%.
fn cpu_time(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time of this process and of the Redis server so far.
fn cpu_times(server: &RedisServer) -> (Duration, Duration) {
    let redis = server
        .pid()
        .map_or(Duration::ZERO, |pid| cpu_time(&pid.to_string()));
    (cpu_time("self"), redis)
}

/// Calls of every command but `INFO` so far, from `INFO commandstats`.
fn commands(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split_once(":calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

struct Side {
    name: &'static str,
    store: Store,
    source: Arc<Source>,
    cache: Option<Cache>,
}

impl Side {
    /// `tasks` loops of random reads and writes for `secs`.
    async fn round(&self, server: &RedisServer, tasks: usize, secs: Duration) -> Tally {
        let commands0 = commands(server);
        let cpu0 = cpu_times(server);
        let (loads0, ns0) = self.source.figures();
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let (mut store, source) = (self.store.clone(), self.source.clone());
                tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(fastrand::u64(..) ^ t as u64);
                    let mut c = Counts::default();
                    while start.elapsed() < secs {
                        store.op(&source, &mut rng, &mut c).await;
                    }
                    c
                })
            })
            .collect();
        let mut counts = Counts::default();
        for h in handles {
            counts.add(h.await.unwrap());
        }
        let elapsed = start.elapsed();
        let cpu1 = cpu_times(server);
        let (loads1, ns1) = self.source.figures();
        Tally {
            counts,
            loads: loads1 - loads0,
            load_ns: ns1 - ns0,
            commands: commands(server) - commands0,
            cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
            elapsed,
        }
    }

    /// One read of every key, then `WARM_OPS` operations of the mix: from then on about 5% of
    /// the keys are invalidated at any time, as in the rounds (after the read pass alone none
    /// is, and a round at one task is too short to get there).
    async fn warm(&self) {
        let handles: Vec<_> = (0..WARM_TASKS)
            .map(|t| {
                let (mut store, source) = (self.store.clone(), self.source.clone());
                tokio::spawn(async move {
                    for k in (t..KEYS).step_by(WARM_TASKS) {
                        store.read(&source, k).await.unwrap();
                    }
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    let mut c = Counts::default();
                    for _ in 0..WARM_OPS / WARM_TASKS {
                        store.op(&source, &mut rng, &mut c).await;
                    }
                    assert_eq!(c.errors, 0, "no errors while warming");
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    }
}

fn main() {
    let secs = support::bench_secs();
    let latency = Duration::from_secs_f64(env_f64("BENCH_LOAD_US", 500.0) / 1e6);
    let server = RedisServer::start();
    let rt = support::runtime();
    rt.block_on(run(&server, secs, latency));
}

async fn run(server: &RedisServer, secs: Duration, latency: Duration) {
    let cat = Category::new("rows");
    let redis_cache = Cache::builder()
        .url(server.url())
        .namespace("mixed-redis")
        .build()
        .await
        .unwrap();
    let tier_cache = Cache::builder()
        .url(server.url())
        .namespace("mixed-tier")
        .local_capacity(64 << 20)
        .build()
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw_keys: Arc<[String]> = (0..KEYS)
        .map(|k| format!("bench:mixed-raw:rows:{{{k}}}"))
        .collect();
    let cache_keys =
        |c: &Cache| -> Arc<[Key]> { (0..KEYS).map(|k| c.key(&cat, [k.to_string()])).collect() };
    let sides = [
        Side {
            name: "raw",
            store: Store::Raw {
                conn,
                keys: raw_keys,
            },
            source: Arc::new(Source::new(latency)),
            cache: None,
        },
        Side {
            name: "redis",
            store: Store::Cache {
                cache: redis_cache.clone(),
                keys: cache_keys(&redis_cache),
            },
            source: Arc::new(Source::new(latency)),
            cache: Some(redis_cache.clone()),
        },
        Side {
            name: "tier",
            store: Store::Cache {
                cache: tier_cache.clone(),
                keys: cache_keys(&tier_cache),
            },
            source: Arc::new(Source::new(latency)),
            cache: Some(tier_cache.clone()),
        },
    ];
    wait_live(&tier_cache).await;
    for side in &sides {
        side.warm().await;
    }
    let before = [redis_cache.stats().await, tier_cache.stats().await];
    let loads_before: Vec<u64> = sides.iter().map(|s| s.source.figures().0).collect();
    let how = if latency >= Duration::from_millis(1) {
        "tokio::time::sleep"
    } else {
        "std::thread::sleep on the blocking pool"
    };
    println!(
        "{KEYS} keys, {} bytes stored per value; {}% reads / {WRITE_PERCENT}% writes, uniform keys; load latency {latency:?} ({how}); {ROUNDS} alternating rounds of {secs:?} per side",
        encode_raw(&value()).len(),
        100 - WRITE_PERCENT,
    );
    println!(
        "| tasks | side | ops/s | reads/s | loads/read | loads/write | loads vs raw | ops vs raw | read p50 µs | read p99 µs | redis cmds/op | bench CPU µs/op | redis CPU µs/op | stale reads | errors | mean load µs |"
    );
    println!(
        "|------:|------|------:|--------:|-----------:|------------:|-------------:|-----------:|------------:|------------:|--------------:|----------------:|----------------:|------------:|-------:|-------------:|"
    );
    for tasks in TASKS {
        let mut tallies: [Tally; 3] = Default::default();
        for _ in 0..ROUNDS {
            for (side, tally) in sides.iter().zip(tallies.iter_mut()) {
                tally.add(side.round(server, tasks, secs).await);
            }
        }
        let (raw_loads, raw_ops) = (tallies[0].loads_per_read(), tallies[0].ops_per_sec());
        for (side, t) in sides.iter().zip(tallies.iter_mut()) {
            println!(
                "| {tasks:>5} | {:<5} | {:>6.0} | {:>7.0} | {:>9.2}% | {:>11.3} | {:>11.2}× | {:>9.2}× | {:>11.1} | {:>11.1} | {:>13.2} | {:>15.1} | {:>15.1} | {:>11} | {:>6} | {:>12.0} |",
                side.name,
                t.ops_per_sec(),
                t.reads_per_sec(),
                100.0 * t.loads_per_read(),
                t.loads_per_write(),
                t.loads_per_read() / raw_loads,
                t.ops_per_sec() / raw_ops,
                t.read_percentile(0.5),
                t.read_percentile(0.99),
                t.commands_per_op(),
                t.cpu_per_op().0,
                t.cpu_per_op().1,
                t.counts.stale,
                t.counts.errors,
                t.mean_load_us(),
            );
        }
    }
    let mut errors = 0;
    for ((side, before), loads_before) in sides[1..].iter().zip(&before).zip(&loads_before[1..]) {
        let cache = side.cache.as_ref().unwrap();
        let s = cache.stats().await;
        let local = s.local.map_or_else(
            || "no tier".to_owned(),
            |l| {
                format!(
                    "tier: live {}, entries {}, evictions {}, lapses {}, channel losses {}",
                    l.live, l.entries, l.evictions, l.lapses, l.channel_losses
                )
            },
        );
        println!(
            "{}: stats errors {}, timeouts {}, short circuits {}; measured rounds: loader runs {} (source counted {}), hits {} (of which in process {}), misses {}; {local}",
            side.name,
            s.errors,
            s.timeouts,
            s.short_circuits,
            s.loader_runs - before.loader_runs,
            side.source.figures().0 - loads_before,
            s.hits - before.hits,
            s.local_hits - before.local_hits,
            s.misses - before.misses,
        );
        errors += s.errors;
    }
    assert_eq!(errors, 0, "no cache errors during the run");
}
