//! Redis absent, stopped, hung (SIGSTOP) or restarted: callers still get their values within
//! the operation timeout plus the loader's time, and the cache comes back by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tiercache::Cache;
use tiercache_testkit::RedisServer;

use crate::helpers::{builder, cat, wait_until};

pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(50);
const LOADER_TIME: Duration = Duration::from_millis(5);
/// Scheduling noise allowed on a busy 2-core machine on top of the bound under test. Without the
/// bound a hung call would take the 1 s connect timeout or forever, so this still fails loudly.
const SLACK: Duration = Duration::from_millis(100);

async fn fault_cache(server: &RedisServer) -> Cache {
    builder(server)
        .op_timeout(OP_TIMEOUT)
        .build()
        .await
        .unwrap()
}

/// Runs `rounds` get_with calls on distinct keys, checking every value and every latency.
/// Returns the slowest call.
pub(crate) async fn calls_stay_bounded(cache: &Cache, label: &str, rounds: u32) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..rounds {
        let key = cache.key(&cat::SCAN_RESULTS, [label, &i.to_string()]);
        let start = Instant::now();
        let v = cache
            .get_with(&key, async {
                tokio::time::sleep(LOADER_TIME).await;
                i
            })
            .await;
        let took = start.elapsed();
        assert_eq!(v, i, "{label}: the loader's value");
        assert!(
            took <= OP_TIMEOUT + LOADER_TIME + SLACK,
            "{label}: call {i} took {took:?}, over the op timeout plus the loader time"
        );
        slowest = slowest.max(took);
        // The other fast paths must be bounded too.
        let start = Instant::now();
        cache.insert(&key, &i).await;
        cache.invalidate(&key).await;
        let _ = cache.get::<u32>(&key).await;
        assert!(
            start.elapsed() <= 3 * OP_TIMEOUT + SLACK,
            "{label}: insert/invalidate/get took {:?}",
            start.elapsed()
        );
    }
    slowest
}

/// Measures how long after Redis answers again the first cache hit is served.
pub(crate) async fn first_hit_after_recovery(cache: &Cache) -> Duration {
    let key = cache.key(&cat::SCAN_RESULTS, ["recovery-probe"]);
    wait_until(
        Duration::from_secs(5),
        "a cache hit after recovery",
        || async {
            let load = async { Ok::<_, std::convert::Infallible>(7u32) };
            let (_, status) = cache.try_get_with_status(&key, load).await.unwrap();
            status == tiercache::CacheStatus::Hit
        },
    )
    .await
}

#[tokio::test]
async fn redis_absent_at_start_up_is_a_pass_through_that_connects_later() {
    let mut server = RedisServer::start();
    server.stop();
    let start = Instant::now();
    let cache = fault_cache(&server).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "build waits at most the connect timeout"
    );
    assert!(!cache.is_connected());
    calls_stay_bounded(&cache, "absent", 20).await;
    let s = cache.stats().await;
    assert_eq!(s.hits, 0);
    assert_eq!(s.loader_runs, 20);
    assert!(!s.connected);
    assert_eq!(s.used_memory_bytes, None);

    server.restart();
    let recovered = first_hit_after_recovery(&cache).await;
    assert!(
        recovered < Duration::from_secs(1),
        "first hit {recovered:?} after Redis came up"
    );
    assert!(cache.is_connected());
}

#[tokio::test]
async fn stopped_mid_run_every_call_still_answers_in_time() {
    let mut server = RedisServer::start();
    let cache = fault_cache(&server).await;
    calls_stay_bounded(&cache, "before", 5).await;
    server.stop();
    calls_stay_bounded(&cache, "stopped", 30).await;
    wait_until(Duration::from_secs(2), "the breaker to open", || async {
        !cache.is_connected()
    })
    .await;
    // With the breaker open a call does not touch Redis at all.
    let start = Instant::now();
    for i in 0..1000u32 {
        let key = cache.key(&cat::SCAN_RESULTS, ["open", &i.to_string()]);
        assert_eq!(cache.get_with(&key, async { i }).await, i);
    }
    let per_call = start.elapsed() / 1000;
    assert!(
        per_call < Duration::from_millis(1),
        "open breaker: {per_call:?} per call"
    );
    assert!(cache.stats().await.short_circuits > 0);

    server.restart();
    let recovered = first_hit_after_recovery(&cache).await;
    assert!(
        recovered < Duration::from_secs(1),
        "first hit {recovered:?} after restart"
    );
}

#[tokio::test]
async fn paused_redis_never_holds_a_caller_past_the_timeout() {
    let mut server = RedisServer::start();
    let cache = fault_cache(&server).await;
    let key = cache.key(&cat::SCAN_RESULTS, ["warm"]);
    cache.insert(&key, &1u32).await;
    assert_eq!(cache.get::<u32>(&key).await, Some(1));

    server.pause();
    calls_stay_bounded(&cache, "paused", 30).await;
    assert!(!cache.is_connected(), "repeated timeouts open the breaker");
    assert!(cache.stats().await.timeouts > 0);

    // Concurrent callers are bounded too.
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let key = cache.key(&cat::SCAN_RESULTS, ["concurrent", &i.to_string()]);
                let start = Instant::now();
                let v = cache.get_with(&key, async { i }).await;
                (v == i, start.elapsed())
            })
        })
        .collect();
    for t in tasks {
        let (ok, took) = t.await.unwrap();
        assert!(ok);
        assert!(took <= OP_TIMEOUT + SLACK, "{took:?}");
    }

    server.resume();
    let recovered = first_hit_after_recovery(&cache).await;
    assert!(
        recovered < Duration::from_secs(1),
        "first hit {recovered:?} after resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_in_the_middle_of_load_never_fail_a_caller() {
    let mut server = RedisServer::start();
    let cache = fault_cache(&server).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wrong = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let (cache, stop, wrong) = (cache.clone(), stop.clone(), wrong.clone());
        workers.push(tokio::spawn(async move {
            let mut calls = 0u32;
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let n = calls % 20;
                let key = cache.key(&cat::SCAN_RESULTS, [w.to_string(), n.to_string()]);
                let start = Instant::now();
                if cache.get_with(&key, async { w * 1000 + n }).await != w * 1000 + n {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                slowest = slowest.max(start.elapsed());
                calls += 1;
                tokio::task::yield_now().await;
            }
            (calls, slowest)
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.restart();
    }
    server.pause();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.resume();
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let (calls, slowest) = w.await.unwrap();
        assert!(calls > 10, "worker made progress: {calls}");
        // The restart itself blocks this thread briefly; allow for one op timeout and noise.
        assert!(
            slowest <= 2 * OP_TIMEOUT + SLACK,
            "slowest call {slowest:?}"
        );
    }
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "every call returned the loader's value"
    );
    let recovered = first_hit_after_recovery(&cache).await;
    assert!(
        recovered < Duration::from_secs(1),
        "first hit {recovered:?}"
    );
}

/// A connection whose peer vanished without a reset never answers again, though a new
/// connection would: recovery replaces it as soon as a new connection answers where the old one
/// did not, instead of waiting minutes for TCP to give up (or, as it once did, for three probes
/// to time out: about 4 s with this connect timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_is_replaced() {
    let server = RedisServer::start();
    let proxy = tiercache_testkit::FaultProxy::start(server.addr());
    let cache = builder(&server)
        .url(proxy.url())
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["through-proxy"]);
    cache.insert(&key, &1u32).await;
    assert_eq!(cache.get::<u32>(&key).await, Some(1));

    proxy.blackhole_existing();
    calls_stay_bounded(&cache, "black-holed", 5).await;
    wait_until(Duration::from_secs(2), "the breaker to open", || async {
        !cache.is_connected()
    })
    .await;
    // A cool-down, the old connection's head start (the op timeout, at most 50 ms), a new
    // connection's PING, and the settling wait: about 0.5 s. Well below three probe timeouts.
    let took = wait_until(
        Duration::from_secs(2),
        "recovery on a new connection",
        || async { cache.is_connected() },
    )
    .await;
    assert_eq!(
        cache.get::<u32>(&key).await,
        Some(1),
        "served again, on the new connection"
    );
    eprintln!("recovered from a black-holed connection in {took:?}");
}
