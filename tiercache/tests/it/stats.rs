//! Statistics equal the operations performed, and the Redis-side figures are real.

use proptest::prelude::*;
use tiercache::Category;
use tiercache_testkit::RedisServer;

use crate::helpers::{builder, cache, cat};

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Insert(u8),
    Invalidate(u8),
    GetWith(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..5;
    prop_oneof![
        k.clone().prop_map(Op::Get),
        k.clone().prop_map(Op::Insert),
        k.clone().prop_map(Op::Invalidate),
        k.prop_map(Op::GetWith),
    ]
}

fn category(k: u8) -> Category {
    if k.is_multiple_of(2) {
        cat::SCAN_RESULTS
    } else {
        cat::VULNERABILITIES
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn stats_equal_the_operations_performed(ops in prop::collection::vec(op(), 1..50)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = RedisServer::start();
        rt.block_on(async {
            let cache = cache(&server).await;
            let mut present = [false; 5];
            let (mut hits, mut misses, mut sets, mut deletes, mut loads) = (0, 0, 0, 0, 0);
            let mut per_cat = std::collections::BTreeMap::<String, (u64, u64)>::new();
            for op in ops {
                match op {
                    Op::Get(k) | Op::GetWith(k) => {
                        let key = cache.key(&category(k), [k.to_string()]);
                        let slot = per_cat.entry(category(k).name().to_owned()).or_default();
                        if present[k as usize] { hits += 1; slot.0 += 1 } else { misses += 1; slot.1 += 1 }
                        if let Op::GetWith(_) = op {
                            cache.get_with(&key, async { k }).await;
                            if !present[k as usize] { loads += 1; sets += 1; present[k as usize] = true; }
                        } else {
                            cache.get::<u8>(&key).await;
                        }
                    }
                    Op::Insert(k) => {
                        cache.insert(&cache.key(&category(k), [k.to_string()]), &k).await;
                        sets += 1;
                        present[k as usize] = true;
                    }
                    Op::Invalidate(k) => {
                        cache.invalidate(&cache.key(&category(k), [k.to_string()])).await;
                        if present[k as usize] { deletes += 1; }
                        present[k as usize] = false;
                    }
                }
            }
            let s = cache.stats().await;
            prop_assert_eq!((s.hits, s.misses, s.sets, s.deletes, s.loader_runs), (hits, misses, sets, deletes, loads));
            prop_assert_eq!((s.errors, s.timeouts), (0, 0));
            for (cat, (h, m)) in per_cat {
                prop_assert_eq!((s.categories[&cat].hits, s.categories[&cat].misses), (h, m));
            }
            prop_assert_eq!(s.keys, Some(present.iter().filter(|p| **p).count() as u64));
            prop_assert!(s.connected);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn redis_side_figures_come_from_info() {
    let server =
        RedisServer::start_with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let cache = builder(&server)
        .compress_threshold(usize::MAX)
        .build()
        .await
        .unwrap();
    let value = "x".repeat(2048);
    for chunk in (0..3000).collect::<Vec<u32>>().chunks(100) {
        let entries: Vec<_> = chunk
            .iter()
            .map(|i| {
                (
                    cache.key(&cat::SCAN_RESULTS, [i.to_string()]),
                    value.clone(),
                )
            })
            .collect();
        cache.insert_many(&entries).await;
    }
    let s = cache.stats().await;
    assert!(
        s.evicted_keys.unwrap() > 0,
        "a 2 MB Redis must evict 6 MB of values"
    );
    assert!(s.used_memory_bytes.unwrap() > 1_000_000);
    assert!(
        s.used_memory_human.as_deref().unwrap().ends_with('M'),
        "{:?}",
        s.used_memory_human
    );
    let keys = s.keys.unwrap();
    assert!(keys > 0 && keys < 3000, "{keys}");
    assert!(s.uptime > std::time::Duration::ZERO);
    let json = serde_json::to_value(&s).unwrap();
    for field in [
        "hits",
        "misses",
        "hit_rate",
        "evicted_keys",
        "used_memory_bytes",
        "keys",
        "connected",
        "uptime",
    ] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
}
