//! The fault matrix: two scan-api instances on one Redis, logged in as the ACL user `svc`
//! through the test kit's `FaultProxy`, under a steady load of reads and writes, taken through
//! each fault in turn. For each fault it prints the requests made, those that did not answer
//! 200/201 (must be 0: the database stays healthy), the worst latency added over the healthy
//! median (bounded by the op timeout times the Redis calls of a request, plus scheduling noise),
//! the reads older than a write acknowledged more than Δ before they began (must be 0), and the
//! time from the fault's end to the first cache hit on both instances (must be ≤ 1 s).
//!
//! Redis-only, one long test (about 25 s): run it alone with
//! `cargo test -p scan-api --test api fault_matrix -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tiercache::DEFAULT_LOCAL_LEASE;
use tiercache_testkit::{Fault, FaultProxy, RedisServer};

use crate::helpers::{ADMIN_TOKEN, Db, TestApp, TestEnv, report, wait_until};

const USER: &str = "svc";
const PASSWORD: &str = "pw";
/// The apps' per-operation timeout: the bound the added latency is held to.
const OP_TIMEOUT: Duration = Duration::from_millis(100);
/// Redis calls one request may wait on before the breaker opens (the response cache's read,
/// the handler's reads and its fill), each bounded by the op timeout.
const CALLS_PER_REQUEST: u32 = 4;
/// Scheduling noise on a shared 2-core machine running two apps, Redis and the load.
const SLACK: Duration = Duration::from_millis(400);
/// How long a lasting fault holds.
const FAULT_TIME: Duration = Duration::from_secs(1);
/// Δ: how far behind an acknowledged write a read may be (the in-process tier's lease).
const DELTA: Duration = DEFAULT_LOCAL_LEASE;
/// The longest time from a fault's end to a cache hit on both instances.
const RECOVERY: Duration = Duration::from_secs(1);
const IMAGE: &str = "fm/app";
const LATEST: &str = "/api/images/fm%2Fapp/latest";

/// The two instances and what the load needs to reach them.
struct Rig {
    apps: [TestApp; 2],
    /// A scan no write touches: its detail page is the cache-hit probe.
    probe_path: String,
}

/// What the load saw during one fault.
#[derive(Default)]
struct Tally {
    made: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    /// Reads of the latest scan that a write was due to be seen by (the staleness check ran).
    checked: AtomicU64,
    worst_us: AtomicU64,
    /// (when the write's 201 arrived, its scan id), in order.
    acked: Mutex<Vec<(Instant, i64)>>,
    /// Failure descriptions, for the assertion message.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn took(&self, d: Duration) {
        self.made.fetch_add(1, SeqCst);
        self.worst_us
            .fetch_max(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), SeqCst);
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, SeqCst);
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }

    /// The newest scan acknowledged more than Δ before `started`.
    fn due_by(&self, started: Instant) -> Option<i64> {
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked
            .iter()
            .filter(|(at, _)| *at + DELTA <= started)
            .map(|(_, id)| *id)
            .max()
    }
}

/// One GET: status, `X-Cache` and body, or the transport error.
async fn get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(u16, Option<String>, serde_json::Value), String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let x_cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().await.map_err(|e| e.to_string())?;
    Ok((status, x_cache, body))
}

/// Runs readers (on both instances, checking staleness) and a writer (alternating instances)
/// until `stop`.
fn start_load(
    rig: &Rig,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let bases: Vec<String> = rig.apps.iter().map(|a| a.base.clone()).collect();
    let mut tasks = Vec::new();
    for reader in 0..2 {
        let (bases, tally, stop) = (bases.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = reader;
            while !stop.load(SeqCst) {
                n += 1;
                let base = &bases[n % 2];
                let path = if n % 3 == 0 { "/api/insights" } else { LATEST };
                let started = Instant::now();
                let due = tally.due_by(started);
                let answer = get(&client, &format!("{base}{path}")).await;
                tally.took(started.elapsed());
                match answer {
                    Ok((200, _, body)) => {
                        if path == LATEST {
                            let id = body["id"].as_i64().unwrap_or(0);
                            if let Some(due) = due {
                                tally.checked.fetch_add(1, SeqCst);
                                if id < due {
                                    tally.stale.fetch_add(1, SeqCst);
                                }
                            }
                        }
                    }
                    Ok((status, _, body)) => tally.fail(format!("GET {path}: {status} {body}")),
                    Err(e) => tally.fail(format!("GET {path}: {e}")),
                }
            }
        }));
    }
    let (tally, stop) = (tally.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut n = 0usize;
        while !stop.load(SeqCst) {
            n += 1;
            let url = format!("{}/api/scan-results", bases[n % 2]);
            let body = report(IMAGE, &format!("w{n}"), &["HIGH"]);
            let started = Instant::now();
            let sent = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let answer = match sent {
                Ok(resp) if resp.status() == 201 => resp
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| e.to_string()),
                Ok(resp) => Err(format!("{}", resp.status())),
                Err(e) => Err(e.to_string()),
            };
            tally.took(started.elapsed());
            match answer {
                Ok(body) => {
                    let id = body["id"].as_i64().unwrap_or(0);
                    tally
                        .acked
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((Instant::now(), id));
                }
                Err(e) => tally.fail(format!("POST: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    tasks
}

/// Waits until both instances serve the probe page from the cache; returns how long it took.
async fn first_hits(rig: &Rig, label: &str) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    for app in &rig.apps {
        let url = format!("{}{}", app.base, rig.probe_path);
        wait_until(
            Duration::from_secs(10),
            &format!("{label}: a cache hit on {}", app.base),
            || async { matches!(get(&client, &url).await, Ok((200, Some(x), _)) if x == "HIT") },
        )
        .await;
    }
    started.elapsed()
}

/// The fault's row label: its name, and how long it held.
fn label(fault: Fault) -> String {
    if fault.lasts() {
        format!("{} {} s", fault.name(), FAULT_TIME.as_secs_f64())
    } else {
        fault.name().to_owned()
    }
}

/// One row of the table.
struct Row {
    label: String,
    made: u64,
    failed: u64,
    worst_added: Duration,
    stale: u64,
    first_hit: Duration,
    /// Redis calls that failed, timed out or were skipped by the open breaker, and writes
    /// Redis refused (`OOM`: failed writes, not errors), on both instances: shows that the
    /// fault reached the cache.
    redis_failures: u64,
}

/// Subscriber connections the instances' tiers have lost so far.
async fn channel_losses(rig: &Rig) -> u64 {
    let mut n = 0;
    for app in &rig.apps {
        n += app
            .cache
            .stats_without_keys()
            .await
            .local
            .map_or(0, |l| l.channel_losses);
    }
    n
}

/// Redis calls that failed, timed out or were skipped, and writes refused, on both instances,
/// so far.
async fn redis_failures(rig: &Rig) -> u64 {
    let mut n = 0;
    for app in &rig.apps {
        let s = app.cache.stats_without_keys().await;
        n += s.errors + s.timeouts + s.short_circuits + s.oom_write_failures;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_in_turn_two_instances_under_load() {
    let mut env = TestEnv::new(Db::Sqlite);
    env.redis = RedisServer::start_with_user(USER, PASSWORD);
    let proxy = FaultProxy::start(env.redis.addr());
    let mut apps = Vec::new();
    for _ in 0..2 {
        let url = proxy.url();
        apps.push(
            env.app_with(
                |b| {
                    b.url(url)
                        .username(USER)
                        .password(PASSWORD)
                        .op_timeout(OP_TIMEOUT)
                },
                32 * 1024 * 1024,
                Some(ADMIN_TOKEN),
            )
            .await,
        );
    }
    let [a, b]: [TestApp; 2] = apps.try_into().unwrap_or_else(|_| unreachable!());
    let fixed = a.post_report(report("fm/fixed", "v1", &["LOW"])).await;
    let rig = Rig {
        probe_path: format!("/api/scan-results/{}", fixed.body["id"].as_i64().unwrap()),
        apps: [a, b],
    };
    rig.apps[0]
        .post_report(report(IMAGE, "w0", &["HIGH"]))
        .await;
    for app in &rig.apps {
        wait_until(Duration::from_secs(5), "the tier to serve", || async {
            app.cache.stats().await.local.is_some_and(|l| l.live)
        })
        .await;
    }
    first_hits(&rig, "start").await;

    // The healthy median, to tell what a fault adds.
    let client = reqwest::Client::new();
    let mut healthy = Vec::new();
    for n in 0..40 {
        let url = format!("{}{LATEST}", rig.apps[n % 2].base);
        let started = Instant::now();
        assert_eq!(get(&client, &url).await.unwrap().0, 200);
        healthy.push(started.elapsed());
    }
    healthy.sort();
    let median = healthy[healthy.len() / 2];

    let mut rows = Vec::new();
    for fault in Fault::ALL {
        let failures_before = redis_failures(&rig).await;
        let loads_before = env.redis.command_calls("script|load");
        let losses_before = channel_losses(&rig).await;
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let load = start_load(&rig, &tally, &stop);
        // Some healthy load first, so that the fault meets warm caches and writes in flight.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (redis, proxy) = (&mut env.redis, &proxy);
        tokio::task::block_in_place(|| fault.inject(redis, proxy, USER, FAULT_TIME));
        let ended = Instant::now();
        first_hits(&rig, &label(fault)).await;
        let first_hit = ended.elapsed();
        // The load goes on a little after recovery: stale reads would show there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, SeqCst);
        for task in load {
            task.await.unwrap();
        }
        let worst = Duration::from_micros(tally.worst_us.load(SeqCst));
        let row = Row {
            label: label(fault),
            made: tally.made.load(SeqCst),
            failed: tally.failed.load(SeqCst),
            worst_added: worst.saturating_sub(median),
            stale: tally.stale.load(SeqCst),
            first_hit,
            redis_failures: redis_failures(&rig).await - failures_before,
        };
        let checked = tally.checked.load(SeqCst);
        eprintln!(
            "{:<26} made {:>4}  not 2xx {:>2}  worst added {:>7.1?}  stale {:>2} of {checked:>3} checked  first hit after {:>7.1?}",
            row.label, row.made, row.failed, row.worst_added, row.stale, row.first_hit
        );
        assert!(
            checked > 0,
            "{}: no read was checked for staleness",
            row.label
        );
        // Each fault reached the cache: its calls failed, or (for the faults a cache rides
        // through without a failed call) it did what the fault requires.
        match fault {
            Fault::Flushall => {}
            Fault::KillSubscriber => assert!(
                channel_losses(&rig).await >= losses_before + 2,
                "both tiers noticed that their subscriber was killed"
            ),
            Fault::ScriptFlush => assert!(
                env.redis.command_calls("script|load") > loads_before,
                "the scripts are loaded again after SCRIPT FLUSH"
            ),
            _ => assert!(
                row.redis_failures > 0,
                "{}: no Redis call failed",
                row.label
            ),
        }
        let failures = tally
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(failures.is_empty(), "{}: {failures:?}", row.label);
        drop(failures);
        rows.push(row);
    }

    println!(
        "\n| fault | requests | not 200/201 | worst added latency | stale reads (beyond Δ) | first cache hit after the fault | failed Redis calls |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} ms | {} | {} ms | {} |",
            r.label,
            r.made,
            r.failed,
            r.worst_added.as_millis(),
            r.stale,
            r.first_hit.as_millis(),
            r.redis_failures
        );
    }
    println!("(healthy median {median:?}; op timeout {OP_TIMEOUT:?}; Δ {DELTA:?})\n");
    let bound = OP_TIMEOUT * CALLS_PER_REQUEST + SLACK;
    for r in &rows {
        assert_eq!(r.failed, 0, "{}: requests failed", r.label);
        assert_eq!(r.stale, 0, "{}: stale reads beyond Δ", r.label);
        assert!(
            r.first_hit <= RECOVERY,
            "{}: first hit {:?} after the fault ended",
            r.label,
            r.first_hit
        );
        assert!(
            r.worst_added <= bound,
            "{}: a request took {:?} more than the healthy median, over {bound:?}",
            r.label,
            r.worst_added
        );
    }
}
