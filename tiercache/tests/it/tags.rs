//! Tags: an invalidation of a tag reaches every entry that carries it, in every instance, at a
//! constant cost, and nothing undoes it: not a slow load elsewhere, not a Redis that was away.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tiercache::{Cache, Key, Tag};
use tiercache_testkit::RedisServer;

use crate::helpers::{cache, cat, held_load, tiered_with, unique_namespace, wait_until};

/// A value as the tests store it: which op produced it, so a read can tell how old it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Born(u64);

fn group(g: u8) -> Tag {
    Tag::new("group", [g.to_string()])
}

/// Key `k` carries the tags of the groups it belongs to: k % 3 and, for odd k, group 3.
fn tagged(cache: &Cache, k: u8) -> Key {
    let mut tags = vec![group(k % 3)];
    if k % 2 == 1 {
        tags.push(group(3));
    }
    cache
        .key(&cat::SCAN_RESULTS, [k.to_string()])
        .with_tags(tags)
}

fn groups_of(k: u8) -> Vec<u8> {
    let mut g = vec![k % 3];
    if k % 2 == 1 {
        g.push(3);
    }
    g
}

/// A tiered instance; its lease is 2 s so that a starved CI machine does not drop the tier
/// under a test that counts what it serves.
async fn tiered(server: &RedisServer, ns: &str) -> Cache {
    tiered_with(server, ns, Duration::from_secs(2)).await
}

#[derive(Debug, Clone)]
enum Op {
    /// `insert` of a fresh value on instance `.0`.
    Insert(usize, u8),
    /// `get_with` whose loader produces a fresh value.
    Load(usize, u8),
    Read(usize, u8),
    InvalidateTag(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..2;
    let k = 0u8..6;
    prop_oneof![
        1 => (i.clone(), k.clone()).prop_map(|(i, k)| Op::Insert(i, k)),
        2 => (i.clone(), k.clone()).prop_map(|(i, k)| Op::Load(i, k)),
        3 => (i.clone(), k).prop_map(|(i, k)| Op::Read(i, k)),
        1 => (i, 0u8..4).prop_map(|(i, g)| Op::InvalidateTag(i, g)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Two instances with tiers on one Redis, random interleavings of tagged inserts, loads,
    /// reads and tag invalidations: once `invalidate_tag` has returned, no read on either
    /// instance returns a value produced before it (the other instance reads after catching up
    /// with the channel, which is what separates it from the write in time here: Δ).
    #[test]
    fn tag_invalidations_hold_across_instances(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = RedisServer::start();
        rt.block_on(async {
            let ns = unique_namespace();
            let caches = [tiered(&server, &ns).await, tiered(&server, &ns).await];
            // The op count at which each group was last invalidated.
            let mut invalidated: HashMap<u8, u64> = HashMap::new();
            for (n, op) in ops.into_iter().enumerate() {
                let now = n as u64 + 1;
                match op {
                    Op::Insert(i, k) => {
                        let c = &caches[i];
                        c.insert(&tagged(c, k), &Born(now)).await;
                    }
                    Op::Load(i, k) | Op::Read(i, k) => {
                        let c = &caches[i];
                        prop_assert!(c.catch_up().await, "instance {i} caught up");
                        let got = if let Op::Load(..) = op {
                            Some(c.get_with(&tagged(c, k), async { Born(now) }).await)
                        } else {
                            c.get::<Born>(&tagged(c, k)).await
                        };
                        if let Some(Born(born)) = got {
                            for g in groups_of(k) {
                                let last = invalidated.get(&g).copied().unwrap_or(0);
                                prop_assert!(
                                    born > last,
                                    "op {now}: instance {i} read key {k} produced at {born}, \
                                     but group {g} was invalidated at {last}"
                                );
                            }
                        }
                    }
                    Op::InvalidateTag(i, g) => {
                        caches[i].invalidate_tag(&group(g)).await;
                        invalidated.insert(g, now);
                    }
                }
            }
            for c in &caches {
                prop_assert_eq!(c.stats().await.errors, 0);
            }
            Ok(())
        })?;
    }
}

/// Instance B loads a tagged key slowly while instance A invalidates the tag: B's value must not
/// be served afterwards, by either instance, and a caller of B arriving after the invalidation
/// gets a fresh load, not B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_elsewhere_never_undoes_a_tag_invalidation() {
    let server = RedisServer::start();
    let ns = unique_namespace();
    let a = tiered(&server, &ns).await;
    let b = tiered(&server, &ns).await;
    let key = tagged(&b, 1);
    let slow = held_load(&b, &key, || Born(1)).await;
    a.invalidate_tag(&group(1)).await;
    let late = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.get_with(&key, async { Born(2) }).await })
    };
    // A sync point, not a bound: on a loaded machine a call can time out and its writer wait
    // out the lease (2 s here) before the late caller gets its turn.
    wait_until(Duration::from_secs(10), "the late caller joins", || async {
        b.loads_waiting(&key) >= 1 || late.is_finished()
    })
    .await;
    assert_eq!(
        slow.finish().await,
        Born(1),
        "B's own caller gets what it read"
    );
    assert_eq!(
        late.await.unwrap(),
        Born(2),
        "a caller after the invalidation loads afresh"
    );
    assert!(a.catch_up().await && b.catch_up().await);
    for c in [&a, &b] {
        assert_eq!(
            c.get::<Born>(&key).await,
            Some(Born(2)),
            "never the older load"
        );
    }
}

/// The same with the tag invalidated by the loading instance itself, and without any tier:
/// Redis alone must refuse to serve the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_loaded_across_a_tag_invalidation_is_never_served() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = tagged(&cache, 2);
    let slow = held_load(&cache, &key, || Born(1)).await;
    cache.invalidate_tag(&group(2)).await;
    assert_eq!(slow.finish().await, Born(1));
    assert_eq!(cache.get::<Born>(&key).await, None);
    assert_eq!(cache.get_with(&key, async { Born(2) }).await, Born(2));
    assert_eq!(cache.get::<Born>(&key).await, Some(Born(2)));
}

/// A tag invalidation that cannot reach Redis (hung) is replayed before anything is read from
/// Redis again.
#[tokio::test]
async fn a_tag_invalidation_while_redis_is_away_is_replayed() {
    let mut server = RedisServer::start();
    let cache = cache(&server).await;
    let key = tagged(&cache, 0);
    cache.insert(&key, &Born(1)).await;
    assert_eq!(cache.get::<Born>(&key).await, Some(Born(1)));
    server.pause();
    cache.invalidate_tag(&group(0)).await;
    assert!(
        !cache.is_connected(),
        "the failed invalidation opened the breaker"
    );
    server.resume();
    wait_until(Duration::from_secs(3), "the cache to reconnect", || async {
        cache.is_connected()
    })
    .await;
    assert_eq!(
        cache.get::<Born>(&key).await,
        None,
        "the tag was invalidated"
    );
}

/// However many entries carry a tag, invalidating it is one command (plus its notice), and
/// every entry reads as a miss afterwards.
#[tokio::test]
async fn a_tag_invalidation_costs_one_command_whatever_it_covers() {
    let server = RedisServer::start();
    // A generous timeout: on a loaded machine, writing 2,000 entries at once could outlast the
    // default, and a failed write is followed by invalidations (more UNLINKs) this test counts.
    let cache = crate::helpers::builder(&server)
        .op_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let tag = Tag::new("bulk", ["all"]);
    let entries: Vec<(Key, u32)> = (0..2000u32)
        .map(|i| {
            let key = cache
                .key(&cat::SESSIONS, [i.to_string()])
                .with_tags([tag.clone()]);
            (key, i)
        })
        .collect();
    cache.insert_many(&entries).await;
    assert_eq!(cache.get::<u32>(&entries[7].0).await, Some(7));
    let before = server.command_calls("unlink");
    let scans = server.command_calls("scan");
    cache.invalidate_tag(&tag).await;
    assert_eq!(server.command_calls("unlink"), before + 1);
    assert_eq!(server.command_calls("scan"), scans, "no sweep");
    for (key, _) in entries.iter().step_by(97) {
        assert_eq!(cache.get::<u32>(key).await, None);
    }
    assert_eq!(cache.stats().await.tag_invalidations, 1);
}

/// Reading through a key without its tags still honours the tags the value carries (one more
/// round trip), and values written without tags are untouched by tag invalidations.
#[tokio::test]
async fn tags_are_honoured_whoever_reads() {
    let server = RedisServer::start();
    let cache = cache(&server).await;
    let key = tagged(&cache, 4);
    let bare = cache.key(&cat::SCAN_RESULTS, ["4"]);
    let other = cache.key(&cat::SCAN_RESULTS, ["untagged"]);
    cache.insert(&key, &Born(1)).await;
    cache.insert(&other, &Born(1)).await;
    assert_eq!(cache.get::<Born>(&bare).await, Some(Born(1)));
    assert_eq!(
        cache.get_many::<Born>(&[key.clone(), bare.clone()]).await,
        vec![Some(Born(1)), Some(Born(1))],
        "with or without its tags named"
    );
    cache.invalidate_tag(&group(1)).await;
    assert_eq!(cache.get::<Born>(&bare).await, None);
    assert_eq!(cache.get::<Born>(&other).await, Some(Born(1)));
    let many = cache.get_many::<Born>(&[bare.clone(), other.clone()]).await;
    assert_eq!(many, vec![None, Some(Born(1))]);
}

/// With a tier: a value read through a key that does not name its tags must not sit in the tier
/// where a tag invalidation cannot reach it.
#[tokio::test]
async fn a_tier_never_keeps_a_value_its_tags_cannot_reach() {
    let server = RedisServer::start();
    let cache = tiered(&server, &unique_namespace()).await;
    let key = tagged(&cache, 5);
    let bare = cache.key(&cat::SCAN_RESULTS, ["5"]);
    cache.insert(&key, &Born(1)).await;
    for _ in 0..3 {
        assert_eq!(cache.get::<Born>(&bare).await, Some(Born(1)));
        assert_eq!(cache.get::<Born>(&key).await, Some(Born(1)));
    }
    assert!(
        cache.stats().await.local_hits > 0,
        "the tagged reads used the tier"
    );
    cache.invalidate_tag(&group(3)).await;
    assert_eq!(cache.get::<Born>(&bare).await, None);
    assert_eq!(cache.get::<Born>(&key).await, None);
}
