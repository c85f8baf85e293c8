//! `GET /api/cache/invalidations`: the recent invalidations an instance made or heard of, in
//! the JSON the dashboard reads, between two instances sharing one Redis.

use axum::Router;
use axum::http::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::Value;
use tiercache::{Cache, Category, Tag};
use tiercache_axum::admin::{self, Admin};
use tiercache_testkit::RedisServer;

use crate::helpers::{PATIENCE, builder, cache_in, serve, wait_until};

const THINGS: Category = Category::from_static("things");

const TOKEN: &str = "inv-token";

fn admin_app(cache: &Cache) -> Router {
    admin::router(Admin::new(cache.clone(), Some(TOKEN.to_owned())))
}

/// The route's answer; with `auth`, that `Authorization` header.
async fn listed_as(
    server: &crate::helpers::TestServer,
    query: &str,
    auth: Option<&str>,
) -> (StatusCode, Value) {
    let path = format!("/api/cache/invalidations{query}");
    let a = match auth {
        Some(auth) => server.get_with(&path, &[(AUTHORIZATION, auth)]).await,
        None => server.get(&path).await,
    };
    (a.status, serde_json::from_slice(&a.body).unwrap())
}

/// The route's answer with the admin token: targets named.
async fn listed(server: &crate::helpers::TestServer, query: &str) -> (StatusCode, Value) {
    listed_as(server, query, Some(&format!("Bearer {TOKEN}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_lists_its_own_and_the_invalidations_it_heard_newest_first() {
    let redis = RedisServer::start();
    let (a, b) = (cache_in(&redis, "inv").await, cache_in(&redis, "inv").await);
    let (sa, sb) = (serve(admin_app(&a)).await, serve(admin_app(&b)).await);
    let key = a.key(&THINGS, ["one"]);
    a.insert(&key, &1u32).await; // an overwrite: not an invalidation
    a.invalidate(&key).await;
    a.invalidate_tag(&Tag::new("img", ["nginx"])).await;
    let pattern = a.key_space().pattern(&THINGS, ["on"]);
    a.invalidate_pattern(&pattern).await.unwrap();
    a.clear().await.unwrap();
    let expected = [
        ("clear", Value::from(Vec::<String>::new())),
        ("pattern", serde_json::json!([pattern.as_str()])),
        ("tag", serde_json::json!(["img:{nginx}"])),
        ("key", serde_json::json!([key.as_str()])),
    ];
    wait_until(PATIENCE, "b hears a's four invalidations", || async {
        b.recent_invalidations(100).len() == 4
    })
    .await;
    for (server, cache, own) in [(&sa, &a, true), (&sb, &b, false)] {
        let (status, body) = listed(server, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["instance"], cache.instance_id());
        let list = body["invalidations"].as_array().unwrap();
        assert_eq!(list.len(), 4, "{body}");
        for (record, (kind, targets)) in list.iter().zip(&expected) {
            assert_eq!(record["kind"], *kind, "{body}");
            assert_eq!(record["targets"], *targets, "{body}");
            assert_eq!(record["instance"], a.instance_id(), "made by a: {body}");
            assert_eq!(record["own"], own, "{body}");
            assert!(record["at"].as_str().unwrap().ends_with('Z'), "{record}");
            assert!(record["at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        }
        let stamps: Vec<u64> = list
            .iter()
            .map(|r| r["at_unix_ms"].as_u64().unwrap())
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {stamps:?}"
        );
        // Without the token: the same records, counts in place of names.
        let (status, open) = listed_as(server, "", None).await;
        assert_eq!(status, StatusCode::OK, "{open}");
        assert_eq!(open["named"], false);
        assert_eq!(body["named"], true);
        let open_list = open["invalidations"].as_array().unwrap();
        assert_eq!(open_list.len(), 4, "{open}");
        for (record, (kind, targets)) in open_list.iter().zip(&expected) {
            assert_eq!(record["kind"], *kind, "{open}");
            assert!(record.get("targets").is_none(), "{open}");
            assert_eq!(
                record["target_count"],
                targets.as_array().unwrap().len(),
                "{open}"
            );
        }
        // A wrong token is refused, as on the admin routes.
        for (auth, status) in [
            ("Bearer wrong", StatusCode::FORBIDDEN),
            ("Basic abc", StatusCode::UNAUTHORIZED),
        ] {
            let (got, body) = listed_as(server, "", Some(auth)).await;
            assert_eq!(got, status, "{auth}: {body}");
        }
        let (status, body) = listed(server, "?limit=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["invalidations"].as_array().unwrap().len(), 2);
        assert_eq!(body["invalidations"][0]["kind"], "clear");
    }
    assert_ne!(a.instance_id(), b.instance_id());
    for bad in ["?limit=0", "?limit=101", "?limit=ten", "?limit=-1"] {
        let (status, body) = listed(&sa, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_without_a_tier_lists_only_its_own() {
    let redis = RedisServer::start();
    let tiered = cache_in(&redis, "inv").await;
    let plain = builder(&redis, "inv")
        .local_capacity(0)
        .build()
        .await
        .unwrap();
    plain.invalidate(&plain.key(&THINGS, ["p"])).await;
    tiered.invalidate(&tiered.key(&THINGS, ["t"])).await;
    // The tiered cache hears the plain one's change; the plain one hears nothing.
    wait_until(PATIENCE, "the tiered cache hears it", || async {
        tiered.recent_invalidations(10).len() == 2
    })
    .await;
    assert!(tiered.catch_up().await);
    let own = plain.recent_invalidations(10);
    assert_eq!(own.len(), 1);
    assert!(own[0].own);
    assert_eq!(own[0].instance, plain.instance_id());
    // Both, in whichever order they were recorded (the notice may arrive before the tiered
    // cache records its own change).
    let mut heard: Vec<(bool, String)> = tiered
        .recent_invalidations(10)
        .into_iter()
        .map(|r| (r.own, r.instance))
        .collect();
    heard.sort();
    assert_eq!(
        heard,
        [(false, plain.instance_id()), (true, tiered.instance_id())]
    );
}
