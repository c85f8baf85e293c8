//! One loader per key at a time: shared values, shared errors, and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tiercache_testkit::RedisServer;

use crate::helpers::{cache, cat, wait_until};

/// Holds a load open until `n` callers wait on it, so the test does not depend on timing.
async fn until_waiting(cache: &tiercache::Cache, key: &tiercache::Key, n: usize) {
    wait_until(
        Duration::from_secs(20),
        "callers to join the load",
        || async { cache.loads_waiting(key) >= n },
    )
    .await;
}

/// [`until_waiting`] for use inside a loader: gives up after 20 s and says so instead of
/// panicking. (A panicking loader is a cancelled leader: a waiter would take over, wait 20 s in
/// its turn, and so on for each of the waiters, turning one failure into a test that seems to
/// hang.)
async fn held_until_waiting(cache: &tiercache::Cache, key: &tiercache::Key, n: usize) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cache.loads_waiting(key) < n {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn thousand_callers_one_load(server: &RedisServer) -> (u32, tiercache::Stats) {
    let cache = cache(server).await;
    let key = cache.key(&cat::ANALYSIS, ["cold"]);
    let runs = Arc::new(AtomicU32::new(0));
    let all_joined = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, key, runs) = (cache.clone(), key.clone(), runs.clone());
            let all_joined = all_joined.clone();
            tokio::spawn(async move {
                let (c, k) = (cache.clone(), key.clone());
                cache
                    .get_with(&key, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        if held_until_waiting(&c, &k, 999).await {
                            all_joined.fetch_add(1, Ordering::SeqCst);
                        }
                        vec![42u64; 100]
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), vec![42u64; 100]);
    }
    assert_eq!(
        all_joined.load(Ordering::SeqCst),
        1,
        "the 999 other callers joined the load within 20 s (loads run: {})",
        runs.load(Ordering::SeqCst)
    );
    (runs.load(Ordering::SeqCst), cache.stats().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_on_a_cold_key_run_the_loader_once() {
    let server = RedisServer::start();
    let (runs, stats) = thousand_callers_one_load(&server).await;
    assert_eq!(runs, 1, "{stats:?}");
    assert_eq!(stats.loader_runs, 1);
    assert_eq!(stats.sets, 1);
    assert_eq!(stats.hits + stats.misses, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_coalesce_without_redis_too() {
    let mut server = RedisServer::start();
    server.stop();
    let (runs, stats) = thousand_callers_one_load(&server).await;
    assert_eq!(runs, 1);
    assert_eq!(stats.sets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_shared_with_every_waiter_and_not_cached() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::ANALYSIS, ["failing"]);
    let runs = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, key, runs) = (cache.clone(), key.clone(), runs.clone());
            tokio::spawn(async move {
                let (c, k) = (cache.clone(), key.clone());
                cache
                    .try_get_with(&key, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let message = if held_until_waiting(&c, &k, 99).await {
                            "database down"
                        } else {
                            "the 99 other callers did not join the load within 20 s"
                        };
                        Err::<u32, _>(std::io::Error::other(message))
                    })
                    .await
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "one shared Arc<E>"
    );
    assert_eq!(errors[0].to_string(), "database down");
    // The error was not cached: the next call loads again.
    let v = cache
        .try_get_with(&key, async { Ok::<_, std::io::Error>(5u32) })
        .await
        .unwrap();
    assert_eq!(v, 5);
    assert_eq!(cache.get::<u32>(&key).await, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::ANALYSIS, ["cancelled"]);
    let leader_started = Arc::new(AtomicU32::new(0));
    let leader = {
        let (cache, key, started) = (cache.clone(), key.clone(), leader_started.clone());
        tokio::spawn(async move {
            cache
                .get_with(&key, async {
                    started.store(1, Ordering::SeqCst);
                    std::future::pending::<u32>().await
                })
                .await
        })
    };
    wait_until(
        Duration::from_secs(5),
        "the leader to start loading",
        || async { leader_started.load(Ordering::SeqCst) == 1 },
    )
    .await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move { cache.get_with(&key, async { 9u32 }).await })
        })
        .collect();
    until_waiting(&cache, &key, 10).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "waiters wait for the leader"
    );
    leader.abort();
    for w in waiters {
        let v = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("waiter stranded")
            .unwrap();
        assert_eq!(v, 9);
    }
    assert_eq!(
        cache.stats().await.loader_runs,
        2,
        "the cancelled load and one replacement"
    );
}
