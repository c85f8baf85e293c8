//! Invalidation by key, by pattern (SCAN + UNLINK across many pages) and by namespace, and
//! invalidations that survive an outage.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use tiercache_testkit::RedisServer;

use crate::helpers::{builder, cache, cat, dbsize, held_load, two_instances, wait_until};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("a*".to_string()),
        Just("a?".to_string()),
        Just("[a]".to_string()),
        Just("a\\".to_string()),
        Just("ab".to_string()),
        "[a-c*?\\[\\]]{1,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Invalidating one image's keys removes exactly them, across many SCAN pages, and nothing
    /// of other images (even with glob characters in names), other categories, other
    /// namespaces, or outside the cache.
    #[test]
    fn pattern_invalidation_removes_exactly_the_matching_keys(
        images in prop::collection::btree_set(name(), 2..5),
        per_image in 30usize..120,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = RedisServer::start();
        rt.block_on(async {
            // A small COUNT forces many SCAN pages.
            let cache = builder(&server).scan_count(7).build().await.unwrap();
            let other_ns = builder(&server).build().await.unwrap();
            server.command(&["SET", "unrelated", "1"]).unwrap();
            let images: Vec<String> = images.into_iter().collect();
            for image in &images {
                let entries: Vec<_> = (0..per_image)
                    .map(|i| (cache.key(&cat::IMAGE_METADATA, [image.as_str(), &i.to_string()]), i))
                    .collect();
                cache.insert_many(&entries).await;
                cache.insert(&cache.key(&cat::IMAGE_METADATA, [image.as_str()]), &0).await;
                cache.insert(&cache.key(&cat::SCAN_RESULTS, [image.as_str()]), &0).await;
                other_ns.insert(&other_ns.key(&cat::IMAGE_METADATA, [image.as_str()]), &0).await;
            }
            let target = &images[0];
            let before = dbsize(&server);
            let removed = cache
                .invalidate_pattern(&cache.key_space().pattern(&cat::IMAGE_METADATA, [target]))
                .await
                .unwrap();
            prop_assert_eq!(removed, per_image as u64 + 1);
            prop_assert_eq!(dbsize(&server), before - removed);
            for image in &images {
                let gone = image == target;
                prop_assert_eq!(cache.contains(&cache.key(&cat::IMAGE_METADATA, [image.as_str()])).await.unwrap(), !gone);
                prop_assert_eq!(cache.contains(&cache.key(&cat::IMAGE_METADATA, [image.as_str(), "0"])).await.unwrap(), !gone);
                prop_assert!(cache.contains(&cache.key(&cat::SCAN_RESULTS, [image.as_str()])).await.unwrap());
                prop_assert!(other_ns.contains(&other_ns.key(&cat::IMAGE_METADATA, [image.as_str()])).await.unwrap());
            }
            prop_assert_eq!(server.command_calls("keys"), 0, "KEYS must never be used");
            prop_assert!(server.command_calls("scan") > 5, "many SCAN pages");
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn clear_removes_this_namespace_only() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let other = cache_with_same_env(&server).await;
    let entries: Vec<_> = (0..2500)
        .map(|i| (cache.key(&cat::SESSIONS, [i.to_string()]), i))
        .collect();
    cache.insert_many(&entries).await;
    other.insert(&other.key(&cat::SESSIONS, ["keep"]), &1).await;
    server.command(&["SET", "outside", "1"]).unwrap();
    assert_eq!(cache.stats().await.keys, Some(2500));
    assert_eq!(cache.clear().await.unwrap(), 2500);
    // Left: `outside` and the other namespace's key.
    assert_eq!(dbsize(&server), 2);
    assert_eq!(cache.stats().await.keys, Some(0));
    assert_eq!(other.stats().await.keys, Some(1));
    for cmd in ["flushdb", "flushall", "keys"] {
        assert_eq!(server.command_calls(cmd), 0, "{cmd} must never be used");
    }
}

async fn cache_with_same_env(server: &RedisServer) -> tiercache::Cache {
    builder(server).build().await.unwrap()
}

#[tokio::test]
async fn patterns_from_another_namespace_are_refused() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let other = cache_with_same_env(&server).await;
    let err = cache
        .invalidate_pattern(&other.key_space().namespace_pattern())
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    // A user glob is confined to the namespace.
    other.insert(&other.key(&cat::SESSIONS, ["x"]), &1).await;
    let found = cache.keys(&cache.key_space().glob("*"), 100).await.unwrap();
    assert!(found.is_empty(), "{found:?}");
}

/// An invalidation that cannot reach Redis (hung) is not lost: once Redis answers, it is
/// applied before any value is read from Redis again, so the stale value is never served.
#[tokio::test]
async fn an_invalidation_during_an_outage_is_applied_before_reads_resume() {
    let mut server = RedisServer::start();
    let cache = builder(&server)
        .op_timeout(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["stale"]);
    let pattern_key = cache.key(&cat::IMAGE_METADATA, ["img", "1"]);
    cache.insert(&key, &"old").await;
    cache.insert(&pattern_key, &"old").await;
    server.pause();
    cache.invalidate(&key).await;
    assert!(
        !cache.is_connected(),
        "a lost invalidation stops reads from Redis at once"
    );
    assert!(
        cache
            .invalidate_pattern(&cache.key_space().pattern(&cat::IMAGE_METADATA, ["img"]))
            .await
            .is_err()
    );
    // The source changed; while Redis is away we serve the source.
    assert_eq!(
        cache.get_with(&key, async { "new".to_string() }).await,
        "new"
    );
    server.resume();
    wait_until(Duration::from_secs(2), "the cache to reconnect", || async {
        cache.is_connected()
    })
    .await;
    assert_eq!(
        cache.get::<String>(&key).await,
        None,
        "the stale value was removed"
    );
    assert_eq!(cache.get::<String>(&pattern_key).await, None);
    assert_eq!(dbsize(&server), 0, "nothing stale is left");
}

#[tokio::test]
async fn invalidations_report_what_they_removed() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let names: BTreeSet<String> = (0..10).map(|i| format!("n{i}")).collect();
    for n in &names {
        cache
            .insert(&cache.key(&cat::VULNERABILITIES, [n.as_str()]), &1)
            .await;
    }
    cache
        .invalidate(&cache.key(&cat::VULNERABILITIES, ["n0"]))
        .await;
    let removed = cache
        .invalidate_pattern(
            &cache
                .key_space()
                .pattern(&cat::VULNERABILITIES, Vec::<&str>::new()),
        )
        .await
        .unwrap();
    assert_eq!(removed, 9);
    assert_eq!(cache.stats().await.deletes, 10);
}

/// The stale-fill race: a reader loads the old value, a writer changes the source and
/// invalidates while the reader is still loading, then the reader finishes. The old value must
/// not be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_never_stores_a_value_an_invalidation_made_stale() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::SCAN_RESULTS, ["raced"]);
    // The reader reads the source before the write...
    let reader = held_load(&cache, &key, || "old".to_string()).await;
    cache.invalidate(&key).await; // ...the writer's invalidation, after its commit...
    assert_eq!(
        reader.finish().await,
        "old",
        "the reader itself gets what it read"
    );
    assert_eq!(
        cache.get::<String>(&key).await,
        None,
        "but the stale value was not stored"
    );
    assert_eq!(
        cache.get_with(&key, async { "new".to_string() }).await,
        "new"
    );
}

/// The same race across instances: instance B loads slowly while instance A invalidates (by
/// key, by pattern, by clearing the namespace, or by overwriting). B's process never hears of it
/// (no in-process tier, so no subscription); only the Redis-side generation stops B's stale
/// value from being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_elsewhere_never_undoes_an_invalidation() {
    let server = RedisServer::start();
    for write in ["clear", "key", "pattern", "insert", "insert_many"] {
        // A fresh namespace each time: the generation starts absent, the hardest case.
        let (a, b) = two_instances(&server).await;
        let key = b.key(&cat::SCAN_RESULTS, ["raced", write]);
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
                a.invalidate_pattern(&p).await.unwrap();
                None
            }
            "insert" => {
                a.insert(&key, "new").await;
                Some("new".to_string())
            }
            _ => {
                a.insert_many(&[(key.clone(), "new")]).await;
                Some("new".to_string())
            }
        };
        assert_eq!(reader.finish().await, "old", "{write}: B gets what it read");
        assert_eq!(a.get::<String>(&key).await, expected, "{write}: not undone");
        assert_eq!(b.stats().await.sets, 0, "{write}: B stored nothing");
    }
}

/// With Redis out of memory (`noeviction`), it refuses to move the generation but still runs the
/// UNLINK, which frees memory: a slow load noted before must not then store its old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_while_redis_is_out_of_memory_is_not_undone() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server).await;
    let key = b.key(&cat::SCAN_RESULTS, ["oom"]);
    let reader = held_load(&b, &key, || "old".to_string()).await;
    let config = |value: &str| {
        let reply = server
            .command(&["CONFIG", "SET", "maxmemory", value])
            .unwrap();
        assert!(reply.starts_with("+OK"), "{reply:?}");
    };
    config("1");
    a.invalidate(&key).await;
    assert!(a.is_connected(), "the invalidation itself succeeded");
    config("0");
    assert_eq!(reader.finish().await, "old");
    assert_eq!(a.get::<String>(&key).await, None, "not undone");
    assert_eq!(b.get_with(&key, async { "new".to_string() }).await, "new");
    assert_eq!(a.get::<String>(&key).await.as_deref(), Some("new"));
}

/// Across instances, coalescing must not hand a value to a caller that arrived after another
/// instance's invalidation was acknowledged: B's process cannot know when that was, so when the
/// leader's store is refused (the generation moved), its waiters load for themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_an_invalidation_elsewhere_never_gets_an_older_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let server = RedisServer::start();
    let (a, b) = two_instances(&server).await;
    let key = b.key(&cat::SCAN_RESULTS, ["coalesced"]);
    let source = Arc::new(AtomicU32::new(1));
    let leader = {
        let source = source.clone();
        held_load(&b, &key, move || source.load(Ordering::SeqCst)).await
    };
    source.store(2, Ordering::SeqCst);
    a.invalidate(&key).await; // acknowledged from here on
    let late = {
        let (b, key, source) = (b.clone(), key.clone(), source.clone());
        tokio::spawn(async move {
            b.get_with(&key, async move { source.load(Ordering::SeqCst) })
                .await
        })
    };
    wait_until(
        Duration::from_secs(10),
        "the late caller joins the load",
        || async { b.loads_waiting(&key) >= 1 },
    )
    .await;
    assert_eq!(
        leader.finish().await,
        1,
        "the leader's own caller overlapped the write"
    );
    assert_eq!(
        late.await.unwrap(),
        2,
        "a caller after the write gets the new value"
    );
    assert_eq!(
        a.get::<u32>(&key).await,
        Some(2),
        "and that is what got stored"
    );
}

/// A caller that arrives after an invalidation does not join a load that began before it: that
/// load may have read the source before the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_after_an_invalidation_never_join_an_older_load() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = cache.key(&cat::ANALYSIS, ["slow"]);
    let old_reader = held_load(&cache, &key, || "old".to_string()).await;
    cache.invalidate(&key).await;
    let fresh = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_with(&key, async { "new".to_string() }),
    )
    .await
    .expect("the new caller must not wait for the older load");
    assert_eq!(fresh, "new");
    assert_eq!(old_reader.finish().await, "old");
    assert_eq!(cache.get::<String>(&key).await.as_deref(), Some("new"));
}

/// A writer whose breaker is open (its recovery probe has not run yet) still sends its
/// invalidations: Redis is back, and another instance reading it at once must not find the old
/// value waiting for the writer's replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_is_sent_even_while_the_writers_breaker_is_open() {
    let mut server = RedisServer::start();
    let ns = crate::helpers::unique_namespace();
    let writer = builder(&server)
        .namespace(ns.as_str())
        // Its probe will not close the breaker during this test.
        .breaker_cooldown(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let reader = builder(&server)
        .namespace(ns.as_str())
        .build()
        .await
        .unwrap();
    let key = reader.key(&cat::SCAN_RESULTS, ["open"]);
    reader.insert(&key, &"old").await;
    server.pause();
    for _ in 0..3 {
        let _ = writer.get::<String>(&key).await;
    }
    server.resume();
    assert!(!writer.is_connected(), "the writer's breaker is open");
    assert_eq!(reader.get::<String>(&key).await.as_deref(), Some("old"));
    writer.invalidate(&key).await;
    assert_eq!(
        reader.get::<String>(&key).await,
        None,
        "the invalidation reached Redis although the writer's breaker was open"
    );
}
