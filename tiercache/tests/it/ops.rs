//! Typed operations: round trips, TTLs, batches, decode failures, and the cache-aside property.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tiercache::{Category, Codec};
use tiercache_testkit::RedisServer;

use crate::helpers::{builder, cache, cat, dbsize, wait_until};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scan {
    id: u64,
    image: String,
    counts: Vec<(String, u32)>,
}

fn scan(id: u64) -> Scan {
    Scan {
        id,
        image: format!("img/{id}"),
        counts: vec![("CRITICAL".into(), 1), ("HIGH".into(), id as u32)],
    }
}

#[tokio::test]
async fn insert_then_get_round_trips_typed_values() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::SCAN_RESULTS, ["1"]);
    assert_eq!(cache.get::<Scan>(&key).await, None);
    assert!(!cache.contains(&key).await.unwrap());
    cache.insert(&key, &scan(1)).await;
    assert_eq!(cache.get::<Scan>(&key).await, Some(scan(1)));
    assert!(cache.contains(&key).await.unwrap());
    cache.invalidate(&key).await;
    assert_eq!(cache.get::<Scan>(&key).await, None);
}

#[tokio::test]
async fn every_codec_round_trips_and_reads_the_others() {
    let server = RedisServer::start();
    let ns = crate::helpers::unique_namespace();
    let mut caches = Vec::new();
    for codec in [Codec::Postcard, Codec::MessagePack, Codec::Json] {
        caches.push(
            builder(&server)
                .namespace(ns.clone())
                .codec(codec)
                .build()
                .await
                .unwrap(),
        );
    }
    for (i, writer) in caches.iter().enumerate() {
        let key = writer.key(&cat::SCAN_RESULTS, [i.to_string()]);
        writer.insert(&key, &scan(i as u64)).await;
        for reader in &caches {
            assert_eq!(reader.get::<Scan>(&key).await, Some(scan(i as u64)));
        }
    }
}

#[tokio::test]
async fn values_are_written_with_their_expiry_in_one_set() {
    let server = RedisServer::start();
    let cache = builder(&server)
        .ttl(cat::SCAN_RESULTS, Duration::from_secs(300))
        .jitter(0.1)
        .build()
        .await
        .unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["ttl"]);
    cache.insert(&key, &scan(2)).await;
    let ttl = cache.ttl(&key).await.unwrap().expect("a TTL");
    assert!(
        ttl > Duration::from_secs(260) && ttl <= Duration::from_secs(330),
        "{ttl:?}"
    );
    assert_eq!(server.command_calls("set"), 1);
    for cmd in ["expire", "pexpire"] {
        assert_eq!(server.command_calls(cmd), 0, "{cmd} must never be used");
    }
    let missing = cache.key(&cat::SCAN_RESULTS, ["missing"]);
    assert_eq!(cache.ttl(&missing).await.unwrap(), None);
}

#[tokio::test]
async fn after_the_ttl_a_fresh_load_happens() {
    let server = RedisServer::start();
    let short = Category::from_static("short");
    let cache = builder(&server)
        .ttl(short.clone(), Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let key = cache.key(&short, ["k"]);
    let loads = std::sync::atomic::AtomicU32::new(0);
    let load = || async { loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 };
    assert_eq!(cache.get_with(&key, load()).await, 1);
    assert_eq!(
        cache.get_with(&key, load()).await,
        1,
        "served from the cache"
    );
    wait_until(Duration::from_secs(5), "the key to expire", || async {
        !cache.contains(&key).await.unwrap()
    })
    .await;
    assert_eq!(
        cache.get_with(&key, load()).await,
        2,
        "expired: loaded again"
    );
    assert_eq!(cache.stats().await.loader_runs, 2);
}

#[tokio::test]
async fn batches_take_one_round_trip() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let keys: Vec<_> = (0..50)
        .map(|i| cache.key(&cat::VULNERABILITIES, [i.to_string()]))
        .collect();
    let entries: Vec<_> = keys
        .iter()
        .take(40)
        .cloned()
        .zip((0..40).map(scan))
        .collect();
    cache.insert_many(&entries).await;
    let got = cache.get_many::<Scan>(&keys).await;
    assert_eq!(got.len(), 50);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.as_ref(), (i < 40).then(|| scan(i as u64)).as_ref());
    }
    assert_eq!(server.command_calls("mget"), 1);
    // One pipeline: 40 SETs but a single round trip is not visible in INFO; the number of
    // commands is, and every value carries its TTL.
    assert_eq!(server.command_calls("set"), 40);
    assert!(cache.ttl(&keys[0]).await.unwrap().is_some());
    let s = cache.stats().await;
    assert_eq!((s.hits, s.misses, s.sets), (40, 10, 40));
}

#[tokio::test]
async fn a_value_that_does_not_decode_is_a_miss_and_is_deleted() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::IMAGE_METADATA, ["corrupt"]);
    server
        .command(&["SET", key.as_str(), "not an envelope"])
        .unwrap();
    assert_eq!(cache.get::<Scan>(&key).await, None);
    assert_eq!(
        server.command(&["EXISTS", key.as_str()]).unwrap(),
        ":0\r\n",
        "the undecodable value is deleted"
    );
    // A value of another type also fails to decode, and get_with replaces it.
    cache.insert(&key, &"a string").await;
    assert_eq!(cache.get_with(&key, async { scan(3) }).await, scan(3));
    assert_eq!(cache.get::<Scan>(&key).await, Some(scan(3)));
    let s = cache.stats().await;
    assert_eq!((s.misses, s.hits, s.errors), (2, 1, 0));
}

#[tokio::test]
async fn acl_users_and_passwords_are_supported() {
    let server = RedisServer::start_with_args(&[
        "--requirepass",
        "defaultpw",
        "--user",
        "alice",
        "on",
        ">wonder",
        "~*",
        "&*",
        "+@all",
    ]);
    let alice = builder(&server)
        .username("alice")
        .password("wonder")
        .build()
        .await
        .unwrap();
    assert!(alice.is_connected());
    let key = alice.key(&cat::SESSIONS, ["s1"]);
    alice.insert(&key, &1u8).await;
    assert_eq!(alice.get::<u8>(&key).await, Some(1));

    // AUTH with a password only (the default user), here through the URL.
    let url = server.url().replace("redis://", "redis://:defaultpw@");
    let default_user = builder(&server).url(url).build().await.unwrap();
    assert!(default_user.is_connected());
    default_user.insert(&key, &1u8).await;
    assert_eq!(default_user.get::<u8>(&key).await, Some(1));

    // A wrong password is not a build error: the cache serves without Redis.
    let wrong = builder(&server)
        .username("alice")
        .password("nope")
        .build()
        .await
        .unwrap();
    assert!(!wrong.is_connected());
    assert_eq!(wrong.get_with(&key, async { 2u8 }).await, 2);
}

#[derive(Debug, Clone)]
enum Op {
    Read(u8),
    Write(u8, u32),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u8..6).prop_map(Op::Read),
            1 => (0u8..6, any::<u32>()).prop_map(|(k, v)| Op::Write(k, v)),
        ],
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Cache-aside: every read through `get_with` equals the source of truth, as long as every
    /// write to the source invalidates its key.
    #[test]
    fn cached_equals_the_source_until_invalidated(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = RedisServer::start();
        rt.block_on(async {
            let cache = cache(&server).await;
            let mut source: HashMap<u8, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Read(k) => {
                        let key = cache.key(&cat::SCAN_RESULTS, [k.to_string()]);
                        let truth = source.get(&k).copied();
                        let got = cache.get_with(&key, async { truth }).await;
                        prop_assert_eq!(got, truth);
                    }
                    Op::Write(k, v) => {
                        source.insert(k, v);
                        cache.invalidate(&cache.key(&cat::SCAN_RESULTS, [k.to_string()])).await;
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn the_status_says_where_a_value_came_from() {
    use tiercache::CacheStatus;
    let mut server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::ANALYSIS, ["status"]);
    let load = || async { Ok::<_, std::io::Error>(1u8) };
    assert_eq!(
        cache.try_get_with_status(&key, load()).await.unwrap(),
        (1, CacheStatus::Miss)
    );
    assert_eq!(
        cache.try_get_with_status(&key, load()).await.unwrap(),
        (1, CacheStatus::Hit)
    );
    server.stop();
    assert_eq!(
        cache.try_get_with_status(&key, load()).await.unwrap(),
        (1, CacheStatus::Bypass)
    );
    assert_eq!(CacheStatus::Bypass.as_str(), "BYPASS");
}

#[tokio::test]
async fn a_disabled_cache_never_touches_redis() {
    use tiercache::CacheStatus;
    let server = RedisServer::start();
    let cache = builder(&server).enabled(false).build().await.unwrap();
    let key = cache.key(&cat::ANALYSIS, ["off"]);
    for _ in 0..3 {
        let (v, status) = cache
            .try_get_with_status(&key, async { Ok::<_, std::io::Error>(5u8) })
            .await
            .unwrap();
        assert_eq!((v, status), (5, CacheStatus::Bypass));
    }
    cache.insert(&key, &1u8).await;
    cache.invalidate(&key).await;
    assert!(!cache.is_connected());
    assert!(cache.ping().await.unwrap_err().is_unavailable());
    let s = cache.stats().await;
    assert_eq!((s.loader_runs, s.misses, s.sets), (3, 3, 0));
    assert_eq!(dbsize(&server), 0);
    assert_eq!(server.command_calls("get"), 0);
}

/// The least privileges the README documents are enough for everything, the in-process tier
/// and its channel included: keys of the namespace and its tag versions, the namespace's
/// channels, and the listed commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_least_privileges_are_enough() {
    let user = least_privileged("&test:least:__invalidations*", &["+publish", "+subscribe"]);
    let server = RedisServer::start_with_args(&user);
    every_operation_as_a_least_privileged_user(builder(&server)).await;
}

/// The same on a cluster, where the channel's names carry a hash tag and sharded pub/sub
/// replaces `PUBLISH`/`SUBSCRIBE`, and the cluster's topology is read with `CLUSTER SLOTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_least_privileges_are_enough_on_a_cluster() {
    let user = least_privileged(
        "&{test:least:}__invalidations*",
        &["+spublish", "+ssubscribe", "+cluster|slots"],
    );
    let cluster = tiercache_testkit::RedisCluster::start_with_args(&user);
    let builder = tiercache::Cache::builder()
        .cluster_urls(cluster.urls())
        .env_prefix("test");
    every_operation_as_a_least_privileged_user(builder).await;
}

/// `redis-server` arguments for the user `app` (password `pw`) with the README's least
/// privileges: the namespace `least`'s keys and tag versions, `channels`, and the common
/// commands plus `extra`.
fn least_privileged(channels: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "--user",
        "app",
        "on",
        ">pw",
        "~test:least:*",
        "~tiercache#tag:test:least:*",
        channels,
        "-@all",
        "+get",
        "+set",
        "+mget",
        "+unlink",
        "+scan",
        "+pttl",
        "+pexpire",
        "+getrange",
        "+strlen",
        "+eval",
        "+evalsha",
        "+script|load",
        "+ping",
        "+info",
    ];
    args.extend_from_slice(extra);
    args
}

/// Builds a cache from `builder` as the user of [`least_privileged`], in its namespace, with a
/// tier, and runs every operation, asserting that none was refused.
async fn every_operation_as_a_least_privileged_user(builder: tiercache::CacheBuilder) {
    let cache = builder
        .username("app")
        .password("pw")
        .namespace("least")
        .local_capacity(1 << 20)
        .build()
        .await
        .unwrap();
    assert!(cache.is_connected());
    wait_until(Duration::from_secs(5), "the tier to go live", || async {
        cache.stats().await.local.is_some_and(|l| l.live)
    })
    .await;
    let key = cache.key(&cat::SESSIONS, ["s"]);
    assert_eq!(cache.get_with(&key, async { 1u8 }).await, 1);
    assert_eq!(cache.get::<u8>(&key).await, Some(1));
    cache.insert(&key, &2u8).await;
    assert_eq!(cache.get::<u8>(&key).await, Some(2));
    let many = [(cache.key(&cat::SESSIONS, ["m"]), 3u8)];
    cache.insert_many(&many).await;
    assert_eq!(
        cache.get_many::<u8>(&[many[0].0.clone()]).await,
        vec![Some(3)]
    );
    assert!(cache.ttl(&key).await.unwrap().is_some());
    assert!(cache.contains(&key).await.unwrap());
    let user = tiercache::Tag::new("user", ["1"]);
    let tagged = cache.key(&cat::SESSIONS, ["t"]).with_tags([user.clone()]);
    assert_eq!(cache.get_with(&tagged, async { 4u8 }).await, 4);
    assert_eq!(cache.get::<u8>(&tagged).await, Some(4));
    cache.invalidate_tag(&user).await;
    assert_eq!(cache.get::<u8>(&tagged).await, None);
    // A tag invalidation leaves the stale value to its TTL; this test counts what a clear finds.
    cache.invalidate(&tagged).await;
    cache.invalidate(&key).await;
    let p = cache.key_space().pattern(&cat::SESSIONS, ["m"]);
    assert_eq!(cache.invalidate_pattern(&p).await.unwrap(), 1);
    assert_eq!(cache.clear().await.unwrap(), 0);
    assert!(
        cache.catch_up().await,
        "the channel carries this cache's heartbeats"
    );
    let stats = cache.stats().await;
    assert_eq!(stats.errors, 0, "no command was refused: {stats:?}");
    assert!(stats.used_memory_bytes.is_some());
    assert!(cache.is_connected());
}
