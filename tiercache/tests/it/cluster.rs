//! The same cache on a Redis Cluster (three masters, three replicas, on loopback): every
//! operation, coalescing, tags across slots, the stale-set guard, two instances' tiers, pattern
//! invalidation and clear on every master, and faults (a `CLUSTER FAILOVER` under load, a master
//! killed). The behaviour tests share one cluster per test binary (each with its own namespace);
//! the fault tests start their own.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tiercache::{Cache, CacheBuilder, Key, Tag};
use tiercache_testkit::{RedisCluster, Role};

use crate::helpers::{cat, held_load, unique_namespace, wait_live, wait_until};

/// A builder for `cluster` with a fresh namespace.
fn builder(cluster: &RedisCluster) -> CacheBuilder {
    tiercache_testkit::init_test_logs("tiercache=debug");
    Cache::builder()
        .cluster_urls(cluster.urls())
        .env_prefix("test")
        .namespace(unique_namespace())
        .jitter(0.0)
        .ttl(cat::SCAN_RESULTS, Duration::from_secs(300))
}

async fn cache(cluster: &RedisCluster) -> Cache {
    let cache = builder(cluster).build().await.unwrap();
    assert!(
        cache.is_connected(),
        "the cache reached the cluster at start-up"
    );
    cache
}

/// `n` keys of `cache`, spread (as the test checks) over every master.
fn spread_keys(cache: &Cache, cluster: &RedisCluster, n: usize) -> Vec<Key> {
    let keys: Vec<Key> = (0..n)
        .map(|i| cache.key(&cat::SCAN_RESULTS, [format!("image-{i}")]))
        .collect();
    let masters: HashSet<usize> = keys
        .iter()
        .map(|k| cluster.master_of(k.as_str()).unwrap())
        .collect();
    assert_eq!(masters.len(), 3, "the keys span every master");
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_a_cluster() {
    let cluster = RedisCluster::shared();
    let cache = cache(cluster).await;
    let keys = spread_keys(&cache, cluster, 12);

    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.get::<u64>(key).await, None);
        cache.insert(key, &(i as u64)).await;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.get::<u64>(key).await, Some(i as u64));
        assert!(cache.contains(key).await.unwrap());
        let ttl = cache.ttl(key).await.unwrap().unwrap();
        assert!(
            ttl <= Duration::from_secs(300) && ttl > Duration::from_secs(290),
            "{ttl:?}"
        );
    }
    let many: Vec<Option<u64>> = cache.get_many(&keys).await;
    assert_eq!(many, (0..12).map(Some).collect::<Vec<_>>());

    cache.invalidate(&keys[0]).await;
    assert_eq!(cache.get::<u64>(&keys[0]).await, None);
    assert!(!cache.contains(&keys[0]).await.unwrap());

    let entries: Vec<(Key, u64)> = keys.iter().map(|k| (k.clone(), 100)).collect();
    cache.insert_many(&entries).await;
    assert_eq!(cache.get_many::<u64>(&keys).await, vec![Some(100); 12]);

    let fresh = cache.key(&cat::SCAN_RESULTS, ["loaded"]);
    assert_eq!(cache.get_with(&fresh, async { 7u64 }).await, 7);
    assert_eq!(cache.get_with(&fresh, async { 8u64 }).await, 7);

    let stats = cache.stats().await;
    assert_eq!((stats.errors, stats.timeouts), (0, 0), "{stats:?}");
    assert_eq!(stats.keys, Some(13), "stats count the keys of every master");
    assert!(
        stats.used_memory_bytes.is_some() && stats.maxmemory_bytes.is_some(),
        "INFO is summed over the masters: {stats:?}"
    );
    assert_eq!(
        cache.stats().await.errors,
        0,
        "the stats' own calls failed nowhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_coalesce_on_a_cluster() {
    let cluster = RedisCluster::shared();
    let cache = cache(cluster).await;
    for key in spread_keys(&cache, cluster, 6) {
        let runs = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, key, runs) = (cache.clone(), key.clone(), runs.clone());
                tokio::spawn(async move {
                    let (c, k) = (cache.clone(), key.clone());
                    cache
                        .get_with(&key, async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            wait_until(Duration::from_secs(20), "callers to join", || async {
                                c.loads_waiting(&k) >= 49
                            })
                            .await;
                            42u64
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one load for {}",
            key.as_str()
        );
    }
    let stats = cache.stats().await;
    assert_eq!((stats.loader_runs, stats.sets), (6, 6));
    assert_eq!((stats.errors, stats.timeouts), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_reaches_keys_in_every_slot() {
    let cluster = RedisCluster::shared();
    let cache = cache(cluster).await;
    let image = Tag::new("image", ["nginx"]);
    let other = Tag::new("image", ["redis"]);
    let keys: Vec<Key> = spread_keys(&cache, cluster, 9)
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            k.with_tags([if i % 3 == 0 {
                other.clone()
            } else {
                image.clone()
            }])
        })
        .collect();
    let runs = AtomicU32::new(0);
    let load = |i: usize| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move { i as u64 }
    };
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.get_with(key, load(i)).await, i as u64);
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.get_with(key, load(i + 100)).await, i as u64, "a hit");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        18,
        "the loader futures were built, not run"
    );
    assert_eq!(cache.stats().await.loader_runs, 9);

    cache.invalidate_tag(&image).await;
    for (i, key) in keys.iter().enumerate() {
        let expected = if i % 3 == 0 { i as u64 } else { i as u64 + 200 };
        assert_eq!(
            cache.get_with(key, load(i + 200)).await,
            expected,
            "key {i}"
        );
        assert_eq!(
            cache.get::<u64>(key).await,
            Some(expected),
            "key {i} read back"
        );
    }
    assert_eq!(
        cache.stats().await.loader_runs,
        15,
        "the six tagged keys were loaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_never_undoes_an_invalidation_on_a_cluster() {
    let cluster = RedisCluster::shared();
    for write in ["clear", "key", "pattern", "tag", "insert"] {
        let ns = unique_namespace();
        let a = builder(cluster)
            .namespace(ns.as_str())
            .build()
            .await
            .unwrap();
        let b = builder(cluster)
            .namespace(ns.as_str())
            .build()
            .await
            .unwrap();
        let tag = Tag::new("image", ["raced"]);
        let key = b
            .key(&cat::SCAN_RESULTS, ["raced", write])
            .with_tags([tag.clone()]);
        let reader = held_load(&b, &key, || "old".to_string()).await;
        let expected = match write {
            "clear" => {
                a.clear().await.unwrap();
                None
            }
            "key" => {
                a.invalidate(&key).await;
                None
            }
            "pattern" => {
                let p = a.key_space().pattern(&cat::SCAN_RESULTS, ["raced"]);
                assert_eq!(a.invalidate_pattern(&p).await.unwrap(), 1, "the lease");
                None
            }
            "tag" => {
                a.invalidate_tag(&tag).await;
                None
            }
            _ => {
                a.insert(&key, "new").await;
                Some("new".to_string())
            }
        };
        assert_eq!(reader.finish().await, "old", "{write}: B gets what it read");
        assert_eq!(a.get::<String>(&key).await, expected, "{write}: not undone");
        assert_eq!(
            b.get::<String>(&key).await,
            expected,
            "{write}: not undone for B"
        );
    }
}

/// Writes `value` (a `u32` below 128) into `key` on its master, as the cache stores it, with no
/// notice: a write the channel never carried.
fn silent_set(cluster: &RedisCluster, key: &Key, value: u8) {
    let stored: String = [tiercache::ENVELOPE_VERSION, 1, 0, value]
        .iter()
        .map(|&b| char::from(b))
        .collect();
    let master = cluster.master_of(key.as_str()).unwrap();
    let reply = cluster
        .node(master)
        .command(&["SET", key.as_str(), &stored])
        .unwrap();
    assert!(reply.starts_with("+OK"), "{reply:?}");
}

async fn tiered(cluster: &RedisCluster, ns: &str) -> Cache {
    let cache = builder(cluster)
        .namespace(ns)
        .local_capacity(8 << 20)
        .local_lease(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    wait_live(&cache, true).await;
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_tiers_of_other_instances_on_a_cluster() {
    let cluster = RedisCluster::shared();
    let ns = unique_namespace();
    let (a, b) = (tiered(cluster, &ns).await, tiered(cluster, &ns).await);
    let keys = spread_keys(&b, cluster, 6);
    // Sharded pub/sub: both instances subscribe to the shared channel and each to its own, on
    // the shard that carries them, and nothing uses the cluster-wide (classic) channels.
    let channel = format!("{{test:{ns}:}}__invalidations");
    let master = cluster.node(cluster.master_of(&channel).unwrap());
    let pattern = format!("{channel}*");
    let sharded = master
        .command(&["PUBSUB", "SHARDCHANNELS", &pattern])
        .unwrap();
    assert!(sharded.starts_with("*3\r\n"), "{sharded}");
    assert!(sharded.contains(&format!("{channel}\r\n")), "{sharded}");
    assert_eq!(
        master.command(&["PUBSUB", "CHANNELS", &pattern]).unwrap(),
        "*0\r\n"
    );
    for key in &keys {
        assert_eq!(b.get_with(key, async { 1u32 }).await, 1);
        silent_set(cluster, key, 2);
        assert_eq!(b.get::<u32>(key).await, Some(1), "served by b's tier");
    }
    for key in &keys {
        a.insert(key, &3u32).await;
        assert!(b.catch_up().await, "b's channel is up");
        assert_eq!(
            b.get::<u32>(key).await,
            Some(3),
            "a's insert dropped b's entry"
        );
    }
    a.invalidate(&keys[0]).await;
    assert!(b.catch_up().await);
    assert_eq!(b.get::<u32>(&keys[0]).await, None);
    assert_eq!(b.get_with(&keys[1], async { 9u32 }).await, 3);
    a.clear().await.unwrap();
    assert!(b.catch_up().await);
    for key in &keys {
        assert_eq!(b.get::<u32>(key).await, None, "a's clear dropped b's tier");
    }
    assert!(b.stats().await.local_hits >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_invalidation_and_clear_reach_every_master() {
    let cluster = RedisCluster::shared();
    let cache = cache(cluster).await;
    let scans = spread_keys(&cache, cluster, 30);
    let images: Vec<Key> = (0..30)
        .map(|i| cache.key(&cat::IMAGE_METADATA, [format!("image-{i}")]))
        .collect();
    for key in scans.iter().chain(&images) {
        cache.insert(key, &1u32).await;
    }
    let all = cache.key_space().namespace_pattern();
    assert_eq!(cache.keys(&all, 1000).await.unwrap().len(), 60);

    let scans_pattern = cache
        .key_space()
        .pattern(&cat::SCAN_RESULTS, Vec::<String>::new());
    assert_eq!(cache.invalidate_pattern(&scans_pattern).await.unwrap(), 30);
    for key in &scans {
        assert!(!cache.contains(key).await.unwrap());
    }
    for key in &images {
        assert!(cache.contains(key).await.unwrap());
    }
    assert_eq!(cache.clear().await.unwrap(), 30);
    assert_eq!(cache.keys(&all, 1000).await.unwrap().len(), 0);
    assert_eq!(cache.stats().await.keys, Some(0));
}

/// Every `get_with` on `keys` (each loads `i`) returns `i`; returns the slowest call.
async fn read_all(cache: &Cache, keys: &[Key]) -> Duration {
    let mut worst = Duration::ZERO;
    for (i, key) in keys.iter().enumerate() {
        let started = Instant::now();
        assert_eq!(cache.get_with(key, async move { i as u64 }).await, i as u64);
        worst = worst.max(started.elapsed());
    }
    worst
}

/// Load from `tasks` tasks until `stop`: reads through `get_with` and inserts, every answer
/// checked; returns (calls, the slowest call).
fn load(
    cache: &Cache,
    keys: &[Key],
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, Duration)>> {
    (0..tasks)
        .map(|t| {
            let (cache, keys, stop) = (cache.clone(), keys.to_vec(), stop.clone());
            tokio::spawn(async move {
                let (mut calls, mut worst) = (0u64, Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    let i = (calls as usize * 7 + t) % keys.len();
                    let started = Instant::now();
                    if calls % 10 == 0 {
                        cache.insert(&keys[i], &(i as u64)).await;
                    } else {
                        let v = cache.get_with(&keys[i], async move { i as u64 }).await;
                        assert_eq!(v, i as u64, "key {i}");
                    }
                    worst = worst.max(started.elapsed());
                    calls += 1;
                }
                (calls, worst)
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<(u64, Duration)>>) -> (u64, Duration) {
    let mut total = (0, Duration::ZERO);
    for t in tasks {
        let (calls, worst) = t.await.unwrap();
        total = (total.0 + calls, total.1.max(worst));
    }
    total
}

/// A coordinated `CLUSTER FAILOVER` of the master that serves some of the keys, under load from
/// eight tasks: every call answers, correctly and promptly, and Redis serves again afterwards
/// (redis-rs follows the MOVED to the new master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_fails_no_call() {
    let cluster = Arc::new(RedisCluster::start());
    let cache = cache(&cluster).await;
    let keys = spread_keys(&cache, &cluster, 24);
    read_all(&cache, &keys).await;
    let master = cluster.master_of(keys[0].as_str()).unwrap();
    let replica = cluster
        .nodes_with_role(Role::Replica)
        .into_iter()
        .find(|&r| cluster.master_of_replica(r) == Some(master))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&cache, &keys, 8, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await; // load before the failover
    let before = cache.stats().await;
    let c = cluster.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || c.failover(replica))
        .await
        .unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await; // and after
    stop.store(true, Ordering::SeqCst);
    let (calls, worst) = finish(tasks).await;
    let after = cache.stats().await;
    println!(
        "CLUSTER FAILOVER in {took:?} under load: {calls} calls, none failed, slowest {worst:?}; \
         redis errors {} and timeouts {} meanwhile",
        after.errors - before.errors,
        after.timeouts - before.timeouts
    );
    assert!(worst < Duration::from_secs(1), "slowest call {worst:?}");
    assert_eq!(cluster.master_of(keys[0].as_str()), Some(replica));

    // Redis serves every key again, the new master's included.
    wait_until(
        Duration::from_secs(10),
        "the cache to use the cluster again",
        || async { cache.is_connected() },
    )
    .await;
    let runs = cache.stats().await.loader_runs;
    for (i, key) in keys.iter().enumerate() {
        cache.insert(key, &(i as u64 + 1000)).await;
        assert_eq!(
            cache.get::<u64>(key).await,
            Some(i as u64 + 1000),
            "key {i}"
        );
    }
    assert_eq!(cache.stats().await.loader_runs, runs);
}

/// A master killed with -9 (the one that carries the invalidation channel, too): the cache falls
/// back to the source at once (every call answers, within a bound), and once the master's replica
/// has been promoted it uses the cluster again, tier included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_falls_back_then_recovers_after_its_promotion() {
    let mut cluster = RedisCluster::start();
    let ns = unique_namespace();
    let cache = tiered(&cluster, &ns).await;
    let keys = spread_keys(&cache, &cluster, 24);
    read_all(&cache, &keys).await;
    let channel = format!("{{test:{ns}:}}__invalidations");
    let master = cluster.master_of(&channel).unwrap();
    assert!(
        keys.iter()
            .any(|k| cluster.master_of(k.as_str()) == Some(master))
    );

    cluster.node_mut(master).kill();
    let killed = Instant::now();
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    let promoted = tokio::task::spawn_blocking(move || {
        c.wait_until_replaced(master);
        killed.elapsed()
    });
    // Until the replica takes over, and after: every call answers, from the source if need be.
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    while !promoted.is_finished() {
        worst = worst.max(read_all(&cache, &keys).await);
        rounds += 1;
    }
    let promoted = promoted.await.unwrap();
    println!(
        "master killed; replica promoted after {promoted:?}; {rounds} rounds of reads, slowest {worst:?}"
    );
    assert!(worst < Duration::from_millis(500), "slowest call {worst:?}");

    let recovered = wait_until(
        Duration::from_secs(15),
        "the cache to use the cluster again",
        || async {
            cache.is_connected()
                && cache.contains(&keys[0]).await.is_ok()
                && cache.stats().await.local.is_some_and(|l| l.live)
        },
    )
    .await;
    println!("cache back on the cluster {recovered:?} after the promotion was seen");
    let runs = cache.stats().await.loader_runs;
    for (i, key) in keys.iter().enumerate() {
        cache.insert(key, &(i as u64 + 1000)).await;
        assert_eq!(
            cache.get::<u64>(key).await,
            Some(i as u64 + 1000),
            "key {i}"
        );
    }
    assert_eq!(
        cache.stats().await.loader_runs,
        runs,
        "every read was a hit"
    );
}

/// The master that carries the invalidation channel hangs (`SIGSTOP`: its connections stay open
/// and silent) until its replica is promoted: the tiers stop serving (no heartbeat comes back),
/// the silent subscription is given up and replaced by one on the new master, and a write on one
/// instance then drops the other's tier entry again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_channel_master_is_replaced_and_the_tiers_come_back() {
    let mut cluster = RedisCluster::start();
    let ns = unique_namespace();
    let (a, b) = (tiered(&cluster, &ns).await, tiered(&cluster, &ns).await);
    let channel = format!("{{test:{ns}:}}__invalidations");
    let master = cluster.master_of(&channel).unwrap();
    let key = b.key(&cat::SCAN_RESULTS, ["after"]);

    cluster.node_mut(master).pause();
    let paused = Instant::now();
    wait_live(&b, false).await;
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    let promoted = tokio::task::spawn_blocking(move || c.wait_until_replaced(master))
        .await
        .unwrap();
    let back = wait_until(
        Duration::from_secs(20),
        "both tiers to serve again",
        || async {
            a.stats().await.local.is_some_and(|l| l.live)
                && b.stats().await.local.is_some_and(|l| l.live)
        },
    )
    .await;
    println!(
        "channel master hung: replica promoted after {promoted:?}, tiers live again {back:?} \
         later ({:?} in all)",
        paused.elapsed()
    );
    assert_ne!(cluster.master_of(&channel), Some(master));

    assert_eq!(b.get_with(&key, async { 1u32 }).await, 1);
    assert_eq!(b.get::<u32>(&key).await, Some(1));
    a.insert(&key, &2u32).await;
    assert!(
        b.catch_up().await,
        "b hears its heartbeats on the new master"
    );
    assert_eq!(
        b.get::<u32>(&key).await,
        Some(2),
        "a's insert dropped b's entry"
    );
}

/// Slots (with their keys) move from one master to another under load (`redis-cli --cluster
/// reshard`: ASK redirections during the move, MOVED after it): every call answers correctly
/// and promptly, and the moved keys are still hits afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_under_load_fails_no_call() {
    let cluster = Arc::new(RedisCluster::start());
    let cache = cache(&cluster).await;
    let keys = spread_keys(&cache, &cluster, 48);
    read_all(&cache, &keys).await;
    let masters = cluster.nodes_with_role(Role::Master);
    let (from, to) = (masters[0], masters[1]);
    let on_from: Vec<usize> = (0..keys.len())
        .filter(|&i| cluster.master_of(keys[i].as_str()) == Some(from))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&cache, &keys, 8, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cache.stats().await;
    let c = cluster.clone();
    let started = Instant::now();
    // 3,000 of `from`'s 5,461 slots (all of them would leave it empty, and Redis would turn it
    // into a replica).
    tokio::task::spawn_blocking(move || c.reshard(from, to, 3000))
        .await
        .unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (calls, worst) = finish(tasks).await;
    let after = cache.stats().await;
    let moved = on_from
        .iter()
        .filter(|&&i| cluster.master_of(keys[i].as_str()) == Some(to))
        .count();
    println!(
        "reshard of 3000 slots ({moved} of the keys) in {took:?} under load: {calls} calls, none \
         failed, slowest {worst:?}; redis errors {} meanwhile",
        after.errors - before.errors,
    );
    assert!(moved > 0, "some keys moved");
    assert!(worst < Duration::from_secs(1), "slowest call {worst:?}");

    wait_until(
        Duration::from_secs(10),
        "the cache to use the cluster again",
        || async { cache.is_connected() },
    )
    .await;
    let runs = cache.stats().await.loader_runs;
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cache.get::<u64>(key).await,
            Some(i as u64),
            "key {i} is still a hit"
        );
    }
    assert_eq!(cache.stats().await.loader_runs, runs);
}
