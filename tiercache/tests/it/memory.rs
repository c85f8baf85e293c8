//! Redis's memory: the start-up warning about `maxmemory` and its policy, the per-value size
//! limit, and `OOM` refusals as failed writes (never failed requests, never a tripped breaker).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tiercache::{Cache, CacheStatus, Key, Tag};
use tiercache_testkit::capture::Captured;
use tiercache_testkit::{RedisServer, capture};

use crate::helpers::{builder, cat, wait_live, wait_until};

/// Warnings logged about Redis's memory settings (they name the `setting`).
fn memory_warnings(captured: &Captured) -> Vec<String> {
    captured
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::WARN)
        .filter_map(|e| e.fields.get("setting").cloned())
        .collect()
}

/// Builds a cache on `server`, uses it a little (a warning must come once, at start-up, not per
/// call), and returns the memory warnings logged.
async fn warnings_for(server: &RedisServer) -> Vec<String> {
    let (captured, _guard) = capture();
    let cache = builder(server).build().await.unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["w"]);
    for _ in 0..3 {
        assert_eq!(cache.get_with(&key, async { 1u32 }).await, 1);
    }
    let stats = cache.stats().await;
    assert!(stats.connected);
    memory_warnings(&captured)
}

#[tokio::test]
async fn a_redis_without_maxmemory_is_warned_about_once() {
    let server = RedisServer::start();
    assert_eq!(warnings_for(&server).await, ["maxmemory"]);
}

#[tokio::test]
async fn redis_away_at_start_up_is_checked_when_it_first_answers() {
    let (captured, _guard) = capture();
    let mut server = RedisServer::start();
    server.stop();
    let cache = builder(&server).build().await.unwrap();
    assert!(!cache.is_connected());
    assert!(memory_warnings(&captured).is_empty());
    server.restart();
    wait_until(
        Duration::from_secs(5),
        "the warning, on connecting",
        || async { memory_warnings(&captured) == ["maxmemory"] },
    )
    .await;
    // Another outage and recovery: still one warning.
    server.stop();
    let key = cache.key(&cat::SCAN_RESULTS, ["x"]);
    wait_until(Duration::from_secs(5), "the breaker to open", || async {
        cache.get::<u32>(&key).await;
        !cache.is_connected()
    })
    .await;
    server.restart();
    wait_until(Duration::from_secs(5), "the cache to reconnect", || async {
        cache.is_connected()
    })
    .await;
    assert_eq!(memory_warnings(&captured), ["maxmemory"]);
}

#[tokio::test]
async fn noeviction_is_warned_about_once() {
    let server =
        RedisServer::start_with_args(&["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
    assert_eq!(warnings_for(&server).await, ["maxmemory-policy"]);
}

#[tokio::test]
async fn evicting_policies_are_not_warned_about() {
    // Every key the cache writes has a TTL, so `volatile-*` can evict all of them.
    for policy in ["allkeys-lru", "volatile-lru", "volatile-ttl"] {
        let server =
            RedisServer::start_with_args(&["--maxmemory", "100mb", "--maxmemory-policy", policy]);
        assert_eq!(
            warnings_for(&server).await,
            Vec::<String>::new(),
            "{policy}"
        );
        let cache = builder(&server).build().await.unwrap();
        assert_eq!(
            cache.stats().await.maxmemory_policy.as_deref(),
            Some(policy)
        );
    }
}

#[tokio::test]
async fn every_key_the_cache_writes_has_a_ttl() {
    let server = RedisServer::start();
    let cache = builder(&server).build().await.unwrap();
    let tag = Tag::new("image", ["nginx"]);
    let tagged = cache
        .key(&cat::SCAN_RESULTS, ["tagged"])
        .with_tags([tag.clone()]);
    cache.get_with(&tagged, async { 1u32 }).await;
    cache
        .insert(
            &cache
                .key(&cat::SESSIONS, ["s"])
                .with_tags([Tag::new("user", ["u"])]),
            &2u32,
        )
        .await;
    cache.invalidate_tag(&Tag::new("user", ["other"])).await;
    // A load in flight holds a lease in Redis.
    let held =
        crate::helpers::held_load(&cache, &cache.key(&cat::ANALYSIS, ["held"]), || 3u32).await;
    let keys = server.command(&["KEYS", "*"]).unwrap();
    let names: Vec<&str> = keys
        .lines()
        .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
        .collect();
    assert!(names.len() >= 5, "values, tags and a lease: {names:?}");
    for name in names {
        let ttl = server.command(&["PTTL", name]).unwrap();
        let ms: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
        assert!(ms > 0, "{name} has no TTL ({ms})");
    }
    held.finish().await;
}

#[tokio::test]
async fn an_acl_user_without_info_skips_the_check_quietly() {
    let server = RedisServer::start();
    server
        .command(&[
            "ACL", "SETUSER", "svc", "on", ">pw", "~*", "&*", "+@all", "-info",
        ])
        .unwrap();
    let (captured, _guard) = capture();
    let cache = builder(&server)
        .username("svc")
        .password("pw")
        .build()
        .await
        .unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["acl"]);
    cache.get_with(&key, async { 1u32 }).await;
    let warnings: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::WARN)
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cache.stats_without_keys().await.sets, 1);
    assert!(cache.is_connected());
}

/// `n` bytes that LZ4 cannot shrink.
fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `EXISTS key` on the server.
fn exists(server: &RedisServer, key: &Key) -> bool {
    server.command(&["EXISTS", key.as_str()]).unwrap().trim() == ":1"
}

/// Waits until `key` is absent from the server: no value was stored, and the load's lease has
/// been given back (that happens in the background).
async fn absent(server: &RedisServer, key: &Key) {
    wait_until(Duration::from_secs(1), "the key to be absent", || async {
        !exists(server, key)
    })
    .await;
}

/// The keys named in warnings about oversized values.
fn oversized_logs(captured: &Captured) -> Vec<String> {
    captured
        .events()
        .into_iter()
        .filter(|e| e.fields.contains_key("max_value_bytes"))
        .filter_map(|e| e.fields.get("key").cloned())
        .collect()
}

#[tokio::test]
async fn oversized_values_are_returned_counted_logged_once_per_key_and_not_stored() {
    let (captured, _guard) = capture();
    let server = RedisServer::start();
    let cache = builder(&server)
        .max_value_bytes(4096)
        .local_capacity(8 << 20)
        .build()
        .await
        .unwrap();
    wait_live(&cache, true).await;
    let big = incompressible(8192, 7);
    let key = cache.key(&cat::SCAN_RESULTS, ["big"]);
    let runs = Arc::new(AtomicU32::new(0));
    for _ in 0..5 {
        let runs = runs.clone();
        let value = big.clone();
        let got: Vec<u8> = cache
            .get_with(&key, async move {
                runs.fetch_add(1, Ordering::SeqCst);
                value
            })
            .await;
        assert_eq!(got, big, "the caller gets its value");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "stored neither in Redis nor in the tier"
    );
    assert!(!cache.contains(&key).await.unwrap());
    absent(&server, &key).await;
    let other = cache.key(&cat::SCAN_RESULTS, ["big2"]);
    cache
        .get_with(&other, async { incompressible(8192, 9) })
        .await;

    // Measured after compression: 64 KiB of one byte encodes to a few hundred bytes.
    let compressible = cache.key(&cat::SCAN_RESULTS, ["zeros"]);
    cache
        .get_with(&compressible, async { vec![0u8; 65536] })
        .await;
    assert!(exists(&server, &compressible));

    // An insert too large invalidates the key: the older value does not outlive it.
    let small = cache.key(&cat::VULNERABILITIES, ["v"]);
    cache.insert(&small, &vec![1u8; 10]).await;
    assert_eq!(cache.get::<Vec<u8>>(&small).await, Some(vec![1u8; 10]));
    cache.insert(&small, &big).await;
    assert_eq!(cache.get::<Vec<u8>>(&small).await, None);
    assert!(!exists(&server, &small));

    let stats = cache.stats_without_keys().await;
    assert_eq!(stats.oversized, 7);
    assert_eq!(stats.errors, 0);
    let mut logged = oversized_logs(&captured);
    logged.sort();
    let mut expected = [key.as_str(), other.as_str(), small.as_str()];
    expected.sort_unstable();
    assert_eq!(logged, expected, "once per key");
}

#[tokio::test]
async fn the_size_limit_comes_from_the_environment() {
    let server = RedisServer::start();
    let cache = tiercache::CacheBuilder::from_lookup(|name| match name {
        "CACHE_MAX_VALUE_BYTES" => Some("100".into()),
        "REDIS_URL" => Some(server.url()),
        "CACHE_NAMESPACE" => Some(crate::helpers::unique_namespace()),
        _ => None,
    })
    .build()
    .await
    .unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["env"]);
    cache.get_with(&key, async { incompressible(200, 3) }).await;
    absent(&server, &key).await;
    assert_eq!(cache.stats_without_keys().await.oversized, 1);
}

#[tokio::test]
async fn oom_is_a_failed_write_never_a_failed_request() {
    let server = RedisServer::start();
    let cache: Cache = builder(&server).build().await.unwrap();
    let kept: Vec<Key> = (0..5)
        .map(|i| cache.key(&cat::SCAN_RESULTS, [format!("kept{i}")]))
        .collect();
    for (i, key) in kept.iter().enumerate() {
        cache.insert(key, &(i as u32)).await;
    }
    let doomed = cache.key(&cat::VULNERABILITIES, ["doomed"]);
    cache.insert(&doomed, &1u32).await;
    let tag = Tag::new("image", ["nginx"]);
    let tagged = cache
        .key(&cat::IMAGE_METADATA, ["nginx"])
        .with_tags([tag.clone()]);
    cache.get_with(&tagged, async { 1u32 }).await;
    server
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    server
        .command(&["CONFIG", "SET", "maxmemory", "1mb"])
        .unwrap();
    server.fill_until_oom();
    let before = cache.stats_without_keys().await;

    // Loads return their values; nothing is stored; the breaker stays closed.
    for i in 0..20u32 {
        let key = cache.key(&cat::ANALYSIS, [format!("new{i}")]);
        let (v, status) = cache
            .try_get_with_status(&key, async move { Ok::<_, ()>(i) })
            .await
            .unwrap();
        assert_eq!((v, status), (i, CacheStatus::Miss));
        assert!(!cache.contains(&key).await.unwrap());
        assert!(cache.is_connected(), "an OOM never opens the breaker");
    }
    // Existing keys are still Redis hits.
    for (i, key) in kept.iter().enumerate() {
        let (v, status) = cache
            .try_get_with_status(&key.clone(), async { Ok::<_, ()>(99u32) })
            .await
            .unwrap();
        assert_eq!((v, status), (i as u32, CacheStatus::Hit));
    }
    // An overwrite refused for memory removes the old value instead.
    cache.insert(&kept[0], &100u32).await;
    assert!(cache.is_connected(), "a refused overwrite is not a fault");
    assert_eq!(cache.get::<u32>(&kept[0]).await, None);
    assert!(!exists(&server, &kept[0]));
    // Invalidations go through (UNLINK is allowed at maxmemory), by key and by tag.
    cache.invalidate(&doomed).await;
    assert!(!exists(&server, &doomed));
    cache.invalidate_tag(&tag).await;
    assert_eq!(
        cache
            .try_get_with_status(&tagged, async { Ok::<_, ()>(2u32) })
            .await
            .unwrap(),
        (2, CacheStatus::Miss),
        "the tag's invalidation was not lost"
    );
    assert!(cache.is_connected());

    let during = cache.stats_without_keys().await;
    assert!(
        during.oom_write_failures >= 21,
        "20 leases and an overwrite refused: {}",
        during.oom_write_failures
    );
    assert_eq!(during.errors, before.errors, "OOM is not an error");
    assert_eq!(during.short_circuits, 0);
    assert_eq!(during.maxmemory_policy.as_deref(), Some("noeviction"));

    // Room again: values are stored again, at once.
    server
        .command(&["CONFIG", "SET", "maxmemory", "0"])
        .unwrap();
    let key = cache.key(&cat::ANALYSIS, ["after"]);
    cache.get_with(&key, async { 7u32 }).await;
    wait_until(Duration::from_secs(1), "a value stored again", || async {
        exists(&server, &key)
    })
    .await;
}
