//! Invalidation completeness: after any sequence of writes, every GET equals the same query
//! answered by the database with the cache off. And invalidation does not over-reach.

use std::time::Duration;

use proptest::prelude::*;
use tiercache::Mode;

use crate::helpers::{Db, TestEnv, encode, in_each_mode, report, wait_until};

const IMAGES: [&str; 5] = ["a*", "a?", "[a]", "ab", "team/app"];
const SEVERITIES: [&str; 5] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"];

#[derive(Debug, Clone)]
enum Op {
    Post {
        image: usize,
        tag: u8,
        severities: Vec<usize>,
    },
    Delete(usize),
    Get(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..IMAGES.len(), 0u8..3, prop::collection::vec(0..SEVERITIES.len(), 0..6))
            .prop_map(|(image, tag, severities)| Op::Post { image, tag, severities }),
        1 => (0usize..8).prop_map(Op::Delete),
        5 => (0usize..13, 0..IMAGES.len()).prop_map(|(e, i)| Op::Get(e, i)),
    ]
}

fn path(endpoint: usize, image: &str, ids: &[i64]) -> String {
    let img = encode(image);
    let id = ids.last().copied().unwrap_or(1);
    match endpoint {
        0 => "/api/scan-results".into(),
        1 => "/api/scan-results?limit=2&offset=1".into(),
        2 => format!("/api/scan-results?image={img}"),
        3 => format!("/api/scan-results/{id}"),
        4 => format!("/api/scan-results/{}", ids.first().copied().unwrap_or(1)),
        5 => "/api/vulnerabilities".into(),
        6 => "/api/vulnerabilities?severity=CRITICAL,HIGH".into(),
        7 => "/api/vulnerabilities/active".into(),
        8 => "/api/vulnerabilities/active?severity=LOW".into(),
        9 => "/api/images".into(),
        10 => format!("/api/images/{img}/latest"),
        11 => format!("/api/images/{img}/versions"),
        _ => "/api/insights".into(),
    }
}

async fn run(db: Db, mode: Mode, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let env = TestEnv::in_mode(db, mode);
    let app = env.app().await;
    let truth = env.uncached_app().await;
    let mut ids: Vec<i64> = Vec::new();
    for op in ops {
        match op {
            Op::Post {
                image,
                tag,
                severities,
            } => {
                let sev: Vec<&str> = severities.iter().map(|i| SEVERITIES[*i]).collect();
                let a = app
                    .post_report(report(IMAGES[image], &format!("v{tag}"), &sev))
                    .await;
                prop_assert_eq!(a.status.as_u16(), 201);
                ids.push(a.body["id"].as_i64().unwrap());
            }
            Op::Delete(i) => {
                if !ids.is_empty() {
                    let id = ids.remove(i % ids.len());
                    prop_assert_eq!(
                        app.delete(&format!("/api/scan-results/{id}"))
                            .await
                            .status
                            .as_u16(),
                        204
                    );
                }
            }
            Op::Get(endpoint, image) => {
                let p = path(endpoint, IMAGES[image], &ids);
                // Twice: the second is usually a hit, and must still be right.
                for _ in 0..2 {
                    let cached = app.get(&p).await;
                    let expected = truth.get(&p).await;
                    prop_assert_eq!(cached.status, expected.status, "{}", p);
                    prop_assert_eq!(&cached.body, &expected.body, "{}", p);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_get_equals_the_database_on_sqlite(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(Db::Sqlite, Mode::Redis, ops))?;
    }

    #[test]
    fn every_get_equals_the_database_standalone(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(Db::Sqlite, Mode::Standalone, ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, max_shrink_iters: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_get_equals_the_database_on_postgres(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(Db::Postgres, Mode::Redis, ops))?;
    }
}

in_each_mode!(invalidation_does_not_over_reach);

/// A write for one image leaves other images' entries cached, even with glob characters.
async fn invalidation_does_not_over_reach(mode: Mode) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app().await;
    for image in IMAGES {
        assert_eq!(
            app.post_report(report(image, "v1", &["HIGH"])).await.status,
            201
        );
    }
    let views = |image: &str| {
        let img = encode(image);
        [
            format!("/api/images/{img}/latest"),
            format!("/api/images/{img}/versions"),
        ]
    };
    for image in IMAGES {
        for p in views(image) {
            assert_eq!(app.get(&p).await.x_cache.as_deref(), Some("MISS"), "{p}");
            assert_eq!(app.get(&p).await.x_cache.as_deref(), Some("HIT"), "{p}");
        }
    }
    for written in IMAGES {
        assert_eq!(
            app.post_report(report(written, "v2", &["LOW"]))
                .await
                .status,
            201
        );
        for image in IMAGES {
            for p in views(image) {
                let expected = if image == written { "MISS" } else { "HIT" };
                assert_eq!(
                    app.get(&p).await.x_cache.as_deref(),
                    Some(expected),
                    "after writing {written}: {p}"
                );
            }
        }
    }
}

/// Two instances on one database and one Redis, each with its in-process tier: a write on one
/// reaches the other's tier over the invalidation channel, so every GET there soon equals the
/// database (within the channel's delivery time, which is printed; on loopback it is well under
/// a millisecond). Without the channel, the reader would serve its tier's copy for a minute.
/// Redis-only: standalone instances share nothing, by design.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_instance_reach_the_others_tier() {
    let env = TestEnv::new(Db::Sqlite);
    let (a, b) = (env.app().await, env.app().await);
    let truth = env.uncached_app().await;
    for app in [&a, &b] {
        wait_until(Duration::from_secs(5), "the in-process tier", || async {
            app.cache.stats().await.local.is_some_and(|l| l.live)
        })
        .await;
    }
    let image = "multi/app";
    let paths = (0..13).map(|e| path(e, image, &[])).collect::<Vec<_>>();
    let mut slowest = Duration::ZERO;
    let mut ids = Vec::new();
    for round in 0..6u8 {
        // Both tiers hold every view before the write (errors such as a 404 are not cached).
        for p in &paths {
            a.get(p).await;
            b.get(p).await;
            let again = b.get(p).await;
            if again.status.is_success() {
                assert_eq!(again.x_cache.as_deref(), Some("HIT"), "{p}");
            }
        }
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        if round < 4 {
            let created = writer
                .post_report(report(image, &format!("v{round}"), &["HIGH"]))
                .await;
            assert_eq!(created.status.as_u16(), 201);
            ids.push(created.body["id"].as_i64().unwrap());
        } else {
            let id = ids.remove(0);
            let deleted = writer.delete(&format!("/api/scan-results/{id}")).await;
            assert_eq!(deleted.status.as_u16(), 204);
        }
        for p in &paths {
            let expected = truth.get(p).await.body;
            let took = wait_until(Duration::from_secs(2), p, || async {
                reader.get(p).await.body == expected
            })
            .await;
            slowest = slowest.max(took);
        }
    }
    println!("the other instance reflected each write within {slowest:?}");
}
