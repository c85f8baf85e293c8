//! Standalone mode: the in-process tier alone, never connecting to Redis, for one instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tiercache::{Cache, CacheStatus, Mode, Tag};

use crate::helpers::{cat, held_load, unique_namespace};

/// A standalone cache whose Redis URL points nowhere (port 1): it must never be used.
async fn standalone() -> Cache {
    tiercache_testkit::init_test_logs("tiercache=debug");
    let start = Instant::now();
    let cache = Cache::builder()
        // Not even a Redis URL: a cache that never connects does not judge it.
        .url("not a redis url")
        .namespace(unique_namespace())
        .mode(Mode::Standalone)
        .local_capacity(1 << 20)
        .build()
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "no connection attempt"
    );
    cache
}

#[tokio::test]
async fn values_are_cached_in_process_and_changes_apply() {
    let cache = standalone().await;
    assert_eq!(cache.mode(), Mode::Standalone);
    let key = cache.key(&cat::SCAN_RESULTS, ["a"]);
    let runs = Arc::new(AtomicU32::new(0));
    let load = |v: u32| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(v)
        }
    };
    assert_eq!(
        cache.try_get_with_status(&key, load(1)).await.unwrap(),
        (1, CacheStatus::Miss)
    );
    assert_eq!(
        cache.try_get_with_status(&key, load(9)).await.unwrap(),
        (1, CacheStatus::Hit)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(cache.contains(&key).await.unwrap());

    cache.invalidate(&key).await;
    assert_eq!(cache.get::<u32>(&key).await, None);
    cache.insert(&key, &3u32).await;
    assert_eq!(cache.get::<u32>(&key).await, Some(3));
    assert_eq!(
        cache.get_many::<u32>(std::slice::from_ref(&key)).await,
        vec![Some(3)]
    );

    let tag = Tag::new("t", ["x"]);
    let tagged = cache.key(&cat::SESSIONS, ["b"]).with_tags([tag.clone()]);
    assert_eq!(cache.get_with(&tagged, async { 4u32 }).await, 4);
    cache.invalidate_tag(&tag).await;
    assert_eq!(cache.get::<u32>(&tagged).await, None);
    cache.insert(&tagged, &7u32).await;
    assert_eq!(cache.get::<u32>(&tagged).await, Some(7));
    cache.invalidate_tag(&tag).await;
    assert_eq!(cache.get::<u32>(&tagged).await, None);

    let p = cache
        .key_space()
        .pattern(&cat::SCAN_RESULTS, Vec::<&str>::new());
    cache.insert(&key, &5u32).await;
    assert_eq!(cache.invalidate_pattern(&p).await.unwrap(), 1);
    assert_eq!(cache.get::<u32>(&key).await, None);
    cache.insert(&key, &6u32).await;
    cache.clear().await.unwrap();
    assert_eq!(cache.get::<u32>(&key).await, None);

    for err in [
        cache.ttl(&key).await.unwrap_err(),
        cache
            .keys(&cache.key_space().glob("*"), 10)
            .await
            .unwrap_err(),
        cache.ping().await.unwrap_err(),
    ] {
        assert!(err.is_no_redis(), "{err}");
        assert!(err.to_string().contains("standalone"), "{err}");
    }
    let s = cache.stats().await;
    assert_eq!(s.mode, "standalone");
    assert_eq!((s.errors, s.short_circuits), (0, 0), "Redis never tried");
    assert!(s.local.is_some_and(|l| l.live));
    assert!(!s.connected);
}

/// A load that overlaps an invalidation is not stored, and later callers do not join it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_never_undoes_an_invalidation() {
    let cache = standalone().await;
    let key = cache.key(&cat::SCAN_RESULTS, ["raced"]);
    let slow = held_load(&cache, &key, || "old".to_string()).await;
    cache.invalidate(&key).await;
    let fresh = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_with(&key, async { "new".to_string() }),
    )
    .await
    .expect("a caller after the invalidation does not wait for the older load");
    assert_eq!(fresh, "new");
    assert_eq!(slow.finish().await, "old");
    assert_eq!(cache.get::<String>(&key).await.as_deref(), Some("new"));
}

/// The same with a clear: a caller after it never joins a load that began before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_a_clear_never_joins_an_older_load() {
    let cache = standalone().await;
    let key = cache.key(&cat::SCAN_RESULTS, ["cleared"]);
    let slow = held_load(&cache, &key, || "old".to_string()).await;
    cache.clear().await.unwrap();
    let fresh = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_with(&key, async { "new".to_string() }),
    )
    .await
    .expect("a caller after the clear does not wait for the older load");
    assert_eq!(fresh, "new");
    assert_eq!(slow.finish().await, "old");
    assert_eq!(cache.get::<String>(&key).await.as_deref(), Some("new"));
}
