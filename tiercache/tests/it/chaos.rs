//! Chaos: three instances with in-process tiers on one Redis, a writer and readers across them,
//! and a fault loop that pauses Redis (SIGSTOP, 0.2–1.5 s), kills the subscriber connections
//! (`CLIENT KILL TYPE pubsub`) and kills Redis (`kill -9`) and restarts it empty, for a bounded
//! time with a printed seed (`CHAOS_SEED` replays one, `CHAOS_SECS` sets the length).
//!
//! Every read must be at least as new as every write acknowledged more than Δ (the tier's
//! lease) before the read began, and as every write its own instance acknowledged before it;
//! every call must return; and the instances converge once the faults stop. The same harness
//! run against a naive two-tier cache-aside (a local map in front of Redis, invalidated over
//! pub/sub, no lease) must report violations: that is how we know it can fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tiercache::{Cache, DEFAULT_LOCAL_LEASE, Key, Tag};
use tiercache_testkit::RedisServer;

use crate::helpers::{cat, tiered_with, unique_namespace, wait_live, wait_until};

const KEYS: usize = 12;
/// Key `k` carries the tag of group `k % GROUPS`.
const GROUPS: usize = 3;
const READERS_PER_INSTANCE: usize = 2;
const DELTA: Duration = DEFAULT_LOCAL_LEASE;
/// Calls slower than this count as failed: "no request waits long because of the cache".
const SLOW: Duration = Duration::from_secs(2);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The source of truth, the writes acknowledged so far, and what the readers saw.
#[derive(Default)]
struct World {
    versions: Vec<AtomicU64>,
    /// Per key: (acknowledged at, by instance, version), in order.
    acked: Vec<Mutex<Vec<(Instant, usize, u64)>>>,
    violations: Mutex<Vec<String>>,
    reads: AtomicU64,
    writes: AtomicU64,
    slowest_read: Mutex<Duration>,
    slowest_write: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    fn new() -> Self {
        Self {
            versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..KEYS).map(|_| Mutex::new(Vec::new())).collect(),
            ..Self::default()
        }
    }

    /// A write of `k` is committed in the source: its new version.
    fn commit(&self, k: usize) -> u64 {
        self.versions[k].fetch_add(1, SeqCst) + 1
    }

    fn ack(&self, k: usize, instance: usize, version: u64, started: Instant) {
        let now = Instant::now();
        lock(&self.acked[k]).push((now, instance, version));
        self.writes.fetch_add(1, SeqCst);
        let mut slowest = lock(&self.slowest_write);
        *slowest = (*slowest).max(now - started);
    }

    /// Checks a read of `k` by `instance` that began at `start` and returned `got`.
    fn check(&self, instance: usize, k: usize, start: Instant, got: u64) {
        let took = start.elapsed();
        self.reads.fetch_add(1, SeqCst);
        {
            let mut slowest = lock(&self.slowest_read);
            *slowest = (*slowest).max(took);
        }
        let acked = lock(&self.acked[k]);
        let floor = acked
            .iter()
            .filter(|(at, by, _)| *at + DELTA <= start || (*by == instance && *at <= start))
            .map(|(_, _, v)| *v)
            .max()
            .unwrap_or(0);
        if got < floor {
            let (at, by, _) = acked
                .iter()
                .find(|(_, _, v)| *v == floor)
                .copied()
                .unwrap_or((start, 0, 0));
            let late = start.saturating_duration_since(at);
            lock(&self.violations).push(format!(
                "instance {instance} read key {k} = v{got}, but v{floor} was acknowledged by \
                 instance {by} {late:?} before the read began"
            ));
        }
    }
}

fn key(cache: &Cache, k: usize) -> Key {
    cache
        .key(&cat::SCAN_RESULTS, [k.to_string()])
        .with_tags([group(k % GROUPS)])
}

fn group(g: usize) -> Tag {
    Tag::new("group", [g.to_string()])
}

/// One instance of the service: tiercache, or the naive cache it is compared with.
enum Node {
    Tiered(Cache),
    Naive(Arc<Naive>),
}

/// How a write reaches the cache.
#[derive(Clone, Copy, Debug)]
enum Write {
    Invalidate,
    Insert,
    Tag,
}

impl Node {
    async fn read(&self, world: &Arc<World>, k: usize) -> u64 {
        let load = {
            let world = world.clone();
            async move {
                // A load takes a little while, so writes overlap it.
                tokio::task::yield_now().await;
                let v = world.versions[k].load(SeqCst);
                tokio::task::yield_now().await;
                v
            }
        };
        match self {
            Node::Tiered(cache) => cache.get_with(&key(cache, k), load).await,
            Node::Naive(naive) => naive.read(k, load).await,
        }
    }

    async fn write(&self, world: &World, instance: usize, k: usize, how: Write) {
        let started = Instant::now();
        match how {
            Write::Tag => {
                let g = k % GROUPS;
                let members: Vec<usize> = (0..KEYS).filter(|m| m % GROUPS == g).collect();
                let versions: Vec<u64> = members.iter().map(|m| world.commit(*m)).collect();
                match self {
                    Node::Tiered(cache) => cache.invalidate_tag(&group(g)).await,
                    Node::Naive(naive) => naive.invalidate(&members).await,
                }
                for (m, v) in members.into_iter().zip(versions) {
                    world.ack(m, instance, v, started);
                }
            }
            Write::Insert | Write::Invalidate => {
                let v = world.commit(k);
                match (self, how) {
                    (Node::Tiered(cache), Write::Insert) => cache.insert(&key(cache, k), &v).await,
                    (Node::Tiered(cache), _) => cache.invalidate(&key(cache, k)).await,
                    (Node::Naive(naive), _) => naive.invalidate(&[k]).await,
                }
                world.ack(k, instance, v, started);
            }
        }
    }
}

/// What a run saw.
struct Outcome {
    violations: Vec<String>,
    reads: u64,
    writes: u64,
    slowest_read: Duration,
    slowest_write: Duration,
}

/// Runs readers on every node and a writer across them while `faults` runs (on a blocking
/// thread: it owns the server), then stops them.
async fn run<R: Send + 'static>(
    nodes: Arc<Vec<Node>>,
    world: Arc<World>,
    seed: u64,
    faults: impl FnOnce() -> R + Send + 'static,
) -> (Outcome, R) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, _) in nodes.iter().enumerate() {
        for r in 0..READERS_PER_INSTANCE {
            let (nodes, world, stop) = (nodes.clone(), world.clone(), stop.clone());
            let mut rng = fastrand::Rng::with_seed(seed ^ (i * 16 + r + 1) as u64);
            tasks.push(tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    let k = rng.usize(0..KEYS);
                    let start = Instant::now();
                    let got = nodes[i].read(&world, k).await;
                    world.check(i, k, start, got);
                    tokio::time::sleep(Duration::from_micros(rng.u64(100..800))).await;
                }
            }));
        }
    }
    let writer = {
        let (nodes, world, stop) = (nodes.clone(), world.clone(), stop.clone());
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xbeef);
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let i = rng.usize(0..nodes.len());
                let how = match rng.u8(0..10) {
                    0..=5 => Write::Invalidate,
                    6..=7 => Write::Insert,
                    _ => Write::Tag,
                };
                nodes[i].write(&world, i, rng.usize(0..KEYS), how).await;
                tokio::time::sleep(Duration::from_millis(rng.u64(2..12))).await;
            }
        })
    };
    let faulted = tokio::task::spawn_blocking(faults).await.unwrap();
    stop.store(true, SeqCst);
    for t in tasks {
        tokio::time::timeout(SLOW, t)
            .await
            .expect("a reader returned")
            .unwrap();
    }
    tokio::time::timeout(SLOW, writer)
        .await
        .expect("the writer returned")
        .unwrap();
    let outcome = Outcome {
        violations: lock(&world.violations).clone(),
        reads: world.reads.load(SeqCst),
        writes: world.writes.load(SeqCst),
        slowest_read: *lock(&world.slowest_read),
        slowest_write: *lock(&world.slowest_write),
    };
    (outcome, faulted)
}

/// Pauses, pub/sub kills and kill -9 + empty restarts for `length`, chosen by `seed`; returns
/// what it did.
fn inject_faults(server: &mut RedisServer, seed: u64, length: Duration) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = Instant::now() + length;
    let mut log = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.u64(200..900)));
        match rng.u8(0..3) {
            0 => {
                let pause = Duration::from_millis(rng.u64(200..1500));
                server.pause();
                std::thread::sleep(pause);
                server.resume();
                log.push(format!("pause {pause:?}"));
            }
            1 => {
                let reply = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                log.push(format!("CLIENT KILL TYPE pubsub: {reply:?}"));
            }
            _ => {
                let down = Duration::from_millis(rng.u64(50..400));
                server.kill();
                std::thread::sleep(down);
                server.restart();
                log.push(format!("kill -9, restart empty after {down:?}"));
            }
        }
    }
    log
}

fn seed() -> u64 {
    let seed = env_or("CHAOS_SEED", fastrand::u64(..));
    println!("chaos seed {seed} (CHAOS_SEED={seed} replays it)");
    seed
}

/// Once faults stop, every node reads the source's latest version of every key.
async fn converge(nodes: &[Node], world: &Arc<World>) -> Duration {
    wait_until(
        Duration::from_secs(15),
        "all instances converge",
        || async {
            for node in nodes {
                for k in 0..KEYS {
                    if node.read(world, k).await != world.versions[k].load(SeqCst) {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_under_faults() {
    let seed = seed();
    let length = Duration::from_secs(env_or("CHAOS_SECS", 12));
    let mut server = RedisServer::start();
    let ns = unique_namespace();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::Tiered(tiered_with(&server, &ns, DELTA).await));
    }
    let nodes = Arc::new(nodes);
    let world = Arc::new(World::new());
    let (outcome, (server, log)) = run(nodes.clone(), world.clone(), seed, move || {
        let log = inject_faults(&mut server, seed, length);
        (server, log)
    })
    .await;
    println!("faults: {}", log.join("; "));
    let took = converge(&nodes, &world).await;
    for node in nodes.iter() {
        if let Node::Tiered(cache) = node {
            wait_live(cache, true).await;
        }
    }
    println!(
        "{} reads, {} writes, {} violations (Δ = {DELTA:?}); slowest read {:?}, slowest write {:?}; converged {took:?} after the faults",
        outcome.reads,
        outcome.writes,
        outcome.violations.len(),
        outcome.slowest_read,
        outcome.slowest_write
    );
    for (i, node) in nodes.iter().enumerate() {
        if let Node::Tiered(cache) = node {
            let s = cache.stats().await;
            println!(
                "instance {i}: {} hits ({} in process), {} loads, {} errors, tier {:?}",
                s.hits, s.local_hits, s.loader_runs, s.errors, s.local
            );
        }
    }
    drop(server);
    assert!(
        outcome.violations.is_empty(),
        "seed {seed}: {} reads went back in time, first: {:#?}",
        outcome.violations.len(),
        &outcome.violations[..outcome.violations.len().min(5)]
    );
    assert!(
        outcome.reads > 1000 && outcome.writes > 100,
        "the run did work"
    );
    assert!(outcome.slowest_read < SLOW, "{:?}", outcome.slowest_read);
    assert!(outcome.slowest_write < SLOW, "{:?}", outcome.slowest_write);
}

/// The same harness against a naive two-tier cache: it must report violations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_two_tier_cache_goes_back_in_time() {
    let seed = seed();
    let mut server = RedisServer::start();
    let prefix = format!("naive:{}", unique_namespace());
    let world = Arc::new(World::new());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::Naive(Naive::start(&server, &prefix).await));
    }
    let nodes = Arc::new(nodes);
    let (outcome, (_server, log)) = run(nodes.clone(), world.clone(), seed, move || {
        let log = inject_faults(&mut server, seed, Duration::from_secs(6));
        (server, log)
    })
    .await;
    println!("faults: {}", log.join("; "));
    println!(
        "naive: {} reads, {} writes, {} violations",
        outcome.reads,
        outcome.writes,
        outcome.violations.len()
    );
    assert!(
        !outcome.violations.is_empty(),
        "seed {seed}: the naive cache should have gone back in time"
    );
    println!("first: {}", outcome.violations[0]);
}

/// The naive two-tier cache-aside many services write by hand: a local map in front of Redis
/// (`GET`, `SET ... PX` on a miss, `DEL` and a pub/sub notice on a write), the map invalidated by
/// notices; no lease, no stale-set guard, the map kept across a lost subscription.
struct Naive {
    conn: redis::aio::ConnectionManager,
    local: Mutex<HashMap<usize, u64>>,
    channel: String,
    prefix: String,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Naive {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.listener).take() {
            task.abort();
        }
    }
}

const NAIVE_TIMEOUT: Duration = Duration::from_millis(50);

impl Naive {
    async fn start(server: &RedisServer, prefix: &str) -> Arc<Naive> {
        let client = redis::Client::open(server.url()).unwrap();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_with_config(client.clone(), config)
            .await
            .unwrap();
        let naive = Arc::new(Naive {
            conn,
            local: Mutex::new(HashMap::new()),
            channel: format!("{prefix}:notices"),
            prefix: prefix.to_owned(),
            listener: Mutex::new(None),
        });
        let weak = Arc::downgrade(&naive);
        let channel = naive.channel.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(Ok(mut pubsub)) =
                    tokio::time::timeout(Duration::from_millis(200), client.get_async_pubsub())
                        .await
                    && pubsub.subscribe(&channel).await.is_ok()
                {
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(naive) = weak.upgrade() else { return };
                        if let Ok(k) = msg.get_payload::<usize>() {
                            lock(&naive.local).remove(&k);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        *lock(&naive.listener) = Some(task);
        naive
    }

    async fn read(&self, k: usize, load: impl std::future::Future<Output = u64>) -> u64 {
        if let Some(v) = lock(&self.local).get(&k).copied() {
            return v;
        }
        let name = format!("{}:{k}", self.prefix);
        let mut conn = self.conn.clone();
        let got = tokio::time::timeout(
            NAIVE_TIMEOUT,
            redis::cmd("GET")
                .arg(&name)
                .query_async::<Option<u64>>(&mut conn),
        )
        .await;
        if let Ok(Ok(Some(v))) = got {
            lock(&self.local).insert(k, v);
            return v;
        }
        let v = load.await;
        let _ = tokio::time::timeout(
            NAIVE_TIMEOUT,
            redis::cmd("SET")
                .arg(&name)
                .arg(v)
                .arg("PX")
                .arg(300_000)
                .exec_async(&mut conn),
        )
        .await;
        lock(&self.local).insert(k, v);
        v
    }

    async fn invalidate(&self, keys: &[usize]) {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("DEL").arg(format!("{}:{k}", self.prefix)).ignore();
            pipe.cmd("PUBLISH").arg(&self.channel).arg(*k).ignore();
        }
        let mut conn = self.conn.clone();
        let _ = tokio::time::timeout(NAIVE_TIMEOUT, pipe.exec_async(&mut conn)).await;
        let mut local = lock(&self.local);
        for k in keys {
            local.remove(k);
        }
    }
}
