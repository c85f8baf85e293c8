//! The cache admin routes: bearer-token auth, clear confined to the namespace, key inspection.
//! Auth runs in both cache modes; key listing and inspection read Redis, so their test is
//! Redis-only, and standalone has its own (clear empties the tier, listing answers 409).

use reqwest::Method;
use tiercache::{Category, Mode};

use crate::helpers::{ADMIN_TOKEN, Db, TestEnv, in_each_mode, report};

in_each_mode!(admin_routes_need_the_token);

async fn admin_routes_need_the_token(mode: Mode) {
    let env = TestEnv::in_mode(Db::Sqlite, mode);
    let app = env.app().await;
    for (method, path) in [
        (Method::POST, "/api/cache/clear"),
        (Method::GET, "/api/cache/keys"),
        (Method::GET, "/api/cache/keys/test:scan-api:x"),
        (Method::DELETE, "/api/cache/keys/test:scan-api:x"),
    ] {
        let none = app.request(method.clone(), path, None, None).await;
        assert_eq!(none.status, 401, "{path} without a token: {:?}", none.body);
        let wrong = app
            .request(method.clone(), path, None, Some("wrong-token"))
            .await;
        assert_eq!(wrong.status, 403, "{path} with a wrong token");
        let almost = app
            .request(
                method.clone(),
                path,
                None,
                Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
            )
            .await;
        assert_eq!(almost.status, 403, "{path} with a prefix of the token");
        let right = app
            .request(method.clone(), path, None, Some(ADMIN_TOKEN))
            .await;
        assert!(
            right.status != 401 && right.status != 403,
            "{path}: {:?}",
            right.body
        );
    }
    // No ADMIN_TOKEN configured: 403 for everyone, even with a header.
    let closed = env.app_with(|b| b, 1 << 20, None).await;
    let a = closed
        .request(Method::POST, "/api/cache/clear", None, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(a.status, 403);
    assert!(a.error().contains("ADMIN_TOKEN"));
    // Stats and health are for monitoring: no token.
    assert_eq!(app.get("/api/cache/stats").await.status, 200);
    assert_eq!(app.get("/api/cache/health").await.status, 200);
}

/// Redis-only: Redis keys, other namespaces on the same Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_this_namespace_only_and_keys_are_confined() {
    let env = TestEnv::new(Db::Sqlite);
    let app = env.app().await;
    assert_eq!(
        app.post_report(report("team/app", "v1", &["HIGH", "LOW"]))
            .await
            .status,
        201
    );
    for path in [
        "/api/scan-results",
        "/api/images",
        "/api/insights",
        "/api/vulnerabilities",
    ] {
        app.get(path).await;
    }
    // Another service's namespace on the same Redis, and a key outside any namespace.
    let other = other_namespace(&env).await;
    other
        .insert(&other.key(&Category::new("sessions"), ["keep"]), &1u8)
        .await;
    env.redis.command(&["SET", "unrelated", "1"]).unwrap();

    let listed = app.admin(Method::GET, "/api/cache/keys?limit=1000").await;
    assert_eq!(listed.status, 200);
    let keys: Vec<String> = serde_json::from_value(listed.body["keys"].clone()).unwrap();
    // Four responses, and the insights computation's own entry (cached as data too).
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("test:scan-api:")));
    // A pattern cannot reach outside the namespace.
    for glob in ["*", "../*", "test:other:*", "*unrelated*"] {
        let a = app
            .admin(
                Method::GET,
                &format!("/api/cache/keys?pattern={}", crate::helpers::encode(glob)),
            )
            .await;
        let found: Vec<String> = serde_json::from_value(a.body["keys"].clone()).unwrap();
        assert!(
            found.iter().all(|k| k.starts_with("test:scan-api:")),
            "{glob}: {found:?}"
        );
    }
    assert_eq!(
        app.admin(Method::GET, "/api/cache/keys?limit=0")
            .await
            .status,
        400
    );

    // One key: TTL and size, then delete.
    let key = &keys[0];
    let shown = app
        .admin(
            Method::GET,
            &format!("/api/cache/keys/{}", crate::helpers::encode(key)),
        )
        .await;
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    assert!(shown.body["size_bytes"].as_u64().unwrap() > 3);
    assert!(shown.body["ttl_ms"].as_u64().unwrap() > 0);
    let outside = app.admin(Method::GET, "/api/cache/keys/unrelated").await;
    assert_eq!(
        outside.status, 400,
        "keys outside the namespace are refused"
    );
    assert_eq!(
        app.admin(
            Method::DELETE,
            &format!("/api/cache/keys/{}", crate::helpers::encode(key))
        )
        .await
        .status,
        204
    );
    assert_eq!(
        app.admin(
            Method::DELETE,
            &format!("/api/cache/keys/{}", crate::helpers::encode(key))
        )
        .await
        .status,
        404
    );

    let cleared = app.admin(Method::POST, "/api/cache/clear").await;
    assert_eq!(cleared.status, 200);
    // Three responses and the insights computation's data entry (one response key was deleted).
    assert_eq!(cleared.body["removed"], 4);
    assert_eq!(app.get("/api/cache/stats").await.body["total_keys"], 0);
    assert!(
        other
            .contains(&other.key(&Category::new("sessions"), ["keep"]))
            .await
            .unwrap()
    );
    assert_eq!(
        env.redis.command(&["EXISTS", "unrelated"]).unwrap(),
        ":1\r\n"
    );
}

/// Standalone: a clear empties the tier (the next GETs miss), a key of the tier can be deleted,
/// and listing or inspecting keys answers 409 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_clear_empties_the_tier_and_keys_are_not_listed() {
    let env = TestEnv::in_mode(Db::Sqlite, Mode::Standalone);
    let app = env.app().await;
    assert_eq!(
        app.post_report(report("team/app", "v1", &["HIGH"]))
            .await
            .status,
        201
    );
    let paths = ["/api/scan-results", "/api/images", "/api/insights"];
    for p in paths {
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("MISS"), "{p}");
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("HIT"), "{p}");
    }
    for path in [
        "/api/cache/keys",
        "/api/cache/keys/test:scan-api:analysis:insights",
    ] {
        let a = app.admin(Method::GET, path).await;
        assert_eq!(a.status, 409, "{path}: {:?}", a.body);
        assert!(a.error().contains("standalone"), "{:?}", a.body);
    }
    let cleared = app.admin(Method::POST, "/api/cache/clear").await;
    assert_eq!(cleared.status, 200, "{:?}", cleared.body);
    // The count is the tier's entry count, which moka keeps approximately: not checked here.
    assert!(cleared.body["removed"].is_u64(), "{:?}", cleared.body);
    for p in paths {
        assert_eq!(app.get(p).await.x_cache.as_deref(), Some("MISS"), "{p}");
    }
    // The insights response's entry, by its key (`analysis` category; the response cache's
    // key parts: method, path, and the `Accept-Encoding` it varies on, none here).
    let key = app.cache.key(
        &scan_api::cache_policy::ANALYSIS,
        ["GET", "/api/insights", "vary:accept-encoding", ""],
    );
    let deleted = app
        .admin(
            Method::DELETE,
            &format!("/api/cache/keys/{}", crate::helpers::encode(key.as_str())),
        )
        .await;
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    assert_eq!(
        app.get("/api/insights").await.x_cache.as_deref(),
        Some("MISS")
    );
}

/// A cache of another service on the same Redis.
async fn other_namespace(env: &TestEnv) -> tiercache::Cache {
    tiercache::Cache::builder()
        .url(env.redis.url())
        .env_prefix("test")
        .namespace("other")
        .build()
        .await
        .unwrap()
}
