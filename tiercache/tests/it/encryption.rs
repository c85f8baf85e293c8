//! Encrypted categories against a real Redis: the stored bytes (read with redis-rs) never hold
//! the plaintext; a value copied to another key, under a key the cache does not have, or not
//! encrypted at all is a miss and is deleted; a rotated key list reads old values and writes
//! with the new key; other categories are unaffected; keys never show in `Debug` or the logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use tiercache::{Cache, CacheBuilder, CacheStatus, Encryption, Key, Mode};
use tiercache_testkit::RedisServer;

use crate::helpers::{builder, cat, unique_namespace};

/// Written in every value, so that its absence from the stored bytes means something.
const MARKER: &str = "PLAINTEXT-MARKER-4d1f";

/// Three keys, as configuration gives them: hex, base64, hex.
const K1: &str = "6b31000000000000000000000000000000000000000000000000000000000001";
const K2: &str = "azIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAI=";
const K3: &str = "6b33000000000000000000000000000000000000000000000000000000000003";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
    token: String,
    roles: Vec<String>,
}

fn session(user: &str) -> Session {
    Session {
        user: user.to_owned(),
        token: format!("{MARKER}-{user}"),
        roles: vec!["admin".into(), "reader".into()],
    }
}

/// A builder in namespace `ns` with `sessions` sensitive and the key list `keys`.
fn sensitive(server: &RedisServer, ns: &str, keys: &str) -> CacheBuilder {
    builder(server)
        .namespace(ns)
        .sensitive(cat::SESSIONS)
        .encryption(Encryption::parse(keys).unwrap())
}

async fn build(b: CacheBuilder) -> Cache {
    b.build().await.unwrap()
}

/// The test's own connection to its Redis, for the raw bytes.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get_raw(conn: &mut redis::aio::MultiplexedConnection, key: &Key) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key.as_str())
        .query_async(conn)
        .await
        .unwrap()
}

async fn set_raw(conn: &mut redis::aio::MultiplexedConnection, key: &Key, bytes: &[u8]) {
    redis::cmd("SET")
        .arg(key.as_str())
        .arg(bytes)
        .query_async::<()>(conn)
        .await
        .unwrap();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn sensitive_values_are_stored_encrypted_and_other_categories_in_clear() {
    let server = RedisServer::start();
    let cache = build(sensitive(&server, &unique_namespace(), K1)).await;
    let mut conn = raw(&server).await;
    // Through every write path: insert, a load's fill (the lease script), insert_many.
    let (inserted, loaded, batch) = (
        cache.key(&cat::SESSIONS, ["a"]),
        cache.key(&cat::SESSIONS, ["b"]),
        cache.key(&cat::SESSIONS, ["c"]),
    );
    cache.insert(&inserted, &session("a")).await;
    let (v, status) = cache
        .try_get_with_status(&loaded, async { Ok::<_, ()>(session("b")) })
        .await
        .unwrap();
    assert_eq!((v, status), (session("b"), CacheStatus::Miss));
    cache.insert_many(&[(batch.clone(), session("c"))]).await;
    for (key, user) in [(&inserted, "a"), (&loaded, "b"), (&batch, "c")] {
        let stored = get_raw(&mut conn, key).await.expect("stored in redis");
        assert_eq!(stored[0], 3, "envelope version 3: encrypted");
        for clear in [MARKER, "admin", "reader"] {
            assert!(!contains(&stored, clear), "{clear:?} in clear under {key}");
        }
        assert_eq!(cache.get::<Session>(key).await, Some(session(user)));
    }
    // Another category of the same cache: stored in clear, as before.
    let plain = cache.key(&cat::SCAN_RESULTS, ["a"]);
    cache.insert(&plain, &session("p")).await;
    let stored = get_raw(&mut conn, &plain).await.unwrap();
    assert_eq!(stored[0], tiercache::ENVELOPE_VERSION);
    assert!(contains(&stored, MARKER));
    assert_eq!(cache.get::<Session>(&plain).await, Some(session("p")));
    let s = cache.stats().await;
    assert_eq!((s.hits, s.errors, s.unauthenticated_values), (4, 0, 0));
}

#[tokio::test]
async fn a_value_copied_to_another_key_fails_to_authenticate_and_is_deleted() {
    let server = RedisServer::start();
    let cache = build(sensitive(&server, &unique_namespace(), K1)).await;
    let mut conn = raw(&server).await;
    let (alice, mallory) = (
        cache.key(&cat::SESSIONS, ["alice"]),
        cache.key(&cat::SESSIONS, ["mallory"]),
    );
    cache.insert(&alice, &session("alice")).await;
    let stolen = get_raw(&mut conn, &alice).await.unwrap();
    set_raw(&mut conn, &mallory, &stolen).await;

    assert_eq!(cache.get::<Session>(&mallory).await, None);
    assert_eq!(
        get_raw(&mut conn, &mallory).await,
        None,
        "the copy is deleted"
    );
    assert_eq!(cache.get::<Session>(&alice).await, Some(session("alice")));
    let s = cache.stats().await;
    assert_eq!(
        (s.unauthenticated_values, s.misses, s.hits, s.errors),
        (1, 1, 1, 0)
    );
    // The key is usable again: the next load stores a value of its own.
    set_raw(&mut conn, &mallory, &stolen).await;
    let (v, status) = cache
        .try_get_with_status(&mallory, async { Ok::<_, ()>(session("mallory")) })
        .await
        .unwrap();
    assert_eq!((v, status), (session("mallory"), CacheStatus::Miss));
    assert_eq!(
        cache.get::<Session>(&mallory).await,
        Some(session("mallory"))
    );
    assert_eq!(cache.stats().await.unauthenticated_values, 2);
}

#[tokio::test]
async fn a_rotated_key_list_reads_old_values_and_writes_with_the_new_key() {
    let server = RedisServer::start();
    let ns = unique_namespace();
    let old = build(sensitive(&server, &ns, K1)).await;
    let (before, after) = (
        old.key(&cat::SESSIONS, ["before"]),
        old.key(&cat::SESSIONS, ["after"]),
    );
    old.insert(&before, &session("before")).await;

    // Rotated: the new key first, the old one second.
    let rotated = build(sensitive(&server, &ns, &format!("{K2},{K1}"))).await;
    assert_eq!(
        rotated.get::<Session>(&before).await,
        Some(session("before"))
    );
    rotated.insert(&after, &session("after")).await;

    // Only the new key: the new write reads, so it was encrypted with the new key.
    let new_only = build(sensitive(&server, &ns, K2)).await;
    assert_eq!(
        new_only.get::<Session>(&after).await,
        Some(session("after"))
    );
    // And not with the old one.
    assert_eq!(old.get::<Session>(&after).await, None);
    assert_eq!(old.stats().await.unauthenticated_values, 1);
    for cache in [&rotated, &new_only] {
        assert_eq!(cache.stats().await.unauthenticated_values, 0);
    }
}

#[tokio::test]
async fn a_wrong_key_is_a_miss_never_an_error_and_the_value_is_deleted() {
    let server = RedisServer::start();
    let ns = unique_namespace();
    let writer = build(sensitive(&server, &ns, K1)).await;
    let reader = build(sensitive(&server, &ns, K3)).await;
    let mut conn = raw(&server).await;
    let key = writer.key(&cat::SESSIONS, ["s"]);
    writer.insert(&key, &session("s")).await;

    assert_eq!(reader.get::<Session>(&key).await, None);
    assert_eq!(get_raw(&mut conn, &key).await, None, "deleted");
    writer.insert(&key, &session("s")).await;
    let many = reader.get_many::<Session>(std::slice::from_ref(&key)).await;
    assert_eq!(many, vec![None]);
    assert_eq!(
        get_raw(&mut conn, &key).await,
        None,
        "deleted by get_many too"
    );
    writer.insert(&key, &session("s")).await;
    let loads = AtomicU32::new(0);
    let (v, status) = reader
        .try_get_with_status(&key, async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(session("fresh"))
        })
        .await
        .unwrap();
    assert_eq!((v, status), (session("fresh"), CacheStatus::Miss));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // Stored again, under the reader's key.
    assert_eq!(reader.get::<Session>(&key).await, Some(session("fresh")));
    let s = reader.stats().await;
    assert_eq!((s.unauthenticated_values, s.errors), (3, 0));
}

#[tokio::test]
async fn a_value_in_clear_in_a_sensitive_category_is_refused() {
    let server = RedisServer::start();
    let ns = unique_namespace();
    // A cache that does not know the category is sensitive (a misconfigured instance, or an
    // attacker with write access) stores it in clear.
    let careless = build(builder(&server).namespace(ns.as_str())).await;
    let cache = build(sensitive(&server, &ns, K1)).await;
    let mut conn = raw(&server).await;
    let key = cache.key(&cat::SESSIONS, ["downgrade"]);
    careless.insert(&key, &session("x")).await;
    assert!(contains(&get_raw(&mut conn, &key).await.unwrap(), MARKER));

    assert_eq!(cache.get::<Session>(&key).await, None);
    assert_eq!(get_raw(&mut conn, &key).await, None, "deleted");
    assert_eq!(cache.stats().await.unauthenticated_values, 1);
    // A category that is not sensitive reads values written by either.
    let other = cache.key(&cat::ANALYSIS, ["o"]);
    careless.insert(&other, &session("o")).await;
    assert_eq!(cache.get::<Session>(&other).await, Some(session("o")));
}

#[tokio::test]
async fn a_sensitive_category_without_keys_is_never_cached() {
    let server = RedisServer::start();
    let cache = build(
        builder(&server)
            .sensitive(cat::SESSIONS)
            .local_capacity(1 << 20),
    )
    .await;
    let mut conn = raw(&server).await;
    let key = cache.key(&cat::SESSIONS, ["k"]);
    let loads = Arc::new(AtomicU32::new(0));
    for _ in 0..3 {
        let loads = loads.clone();
        let (v, status) = cache
            .try_get_with_status(&key, async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(session("k"))
            })
            .await
            .unwrap();
        assert_eq!((v, status), (session("k"), CacheStatus::Bypass));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3, "every read loads");
    cache.insert(&key, &session("k")).await;
    assert_eq!(cache.get::<Session>(&key).await, None);
    assert_eq!(get_raw(&mut conn, &key).await, None, "nothing in redis");
    // An insert removes what an earlier configuration may have stored in clear.
    set_raw(&mut conn, &key, b"\x01\x01\x00old").await;
    cache.insert(&key, &session("k")).await;
    assert_eq!(get_raw(&mut conn, &key).await, None);
    // Other categories are cached as ever.
    let other = cache.key(&cat::SCAN_RESULTS, ["k"]);
    cache.insert(&other, &1u32).await;
    assert_eq!(cache.get::<u32>(&other).await, Some(1));
    let s = cache.stats().await;
    assert_eq!((s.errors, s.unauthenticated_values), (0, 0));
}

#[tokio::test]
async fn standalone_keeps_sensitive_values_in_process_without_keys() {
    let cache = Cache::builder()
        .namespace(unique_namespace())
        .mode(Mode::Standalone)
        .local_capacity(1 << 20)
        .sensitive(cat::SESSIONS)
        .build()
        .await
        .unwrap();
    let key = cache.key(&cat::SESSIONS, ["k"]);
    cache.insert(&key, &session("k")).await;
    assert_eq!(cache.get::<Session>(&key).await, Some(session("k")));
}

#[tokio::test]
async fn the_in_process_tier_keeps_decoded_values_and_redis_the_encrypted_ones() {
    let server = RedisServer::start();
    let ns = unique_namespace();
    let tiered = |keys: &'static str| {
        let b = sensitive(&server, &ns, keys).local_capacity(8 << 20);
        async move {
            let cache = build(b).await;
            crate::helpers::wait_live(&cache, true).await;
            cache
        }
    };
    let (a, b) = (tiered(K1).await, tiered(K1).await);
    let mut conn = raw(&server).await;
    let key = a.key(&cat::SESSIONS, ["t"]);
    a.insert(&key, &session("t")).await;
    assert!(!contains(&get_raw(&mut conn, &key).await.unwrap(), MARKER));
    // b reads it from Redis (decrypting), then from its tier.
    for _ in 0..3 {
        assert_eq!(b.get::<Session>(&key).await, Some(session("t")));
    }
    let s = b.stats().await;
    assert_eq!((s.hits, s.local_hits), (3, 2));
}

#[tokio::test]
async fn keys_never_show_in_debug_errors_or_logs() {
    let (logs, _guard) = tiercache_testkit::capture();
    let server = RedisServer::start();
    let ns = unique_namespace();
    let configured = |keys: &str| {
        let keys = keys.to_owned();
        CacheBuilder::from_lookup(move |name| {
            (name == "CACHE_ENCRYPTION_KEYS").then(|| keys.clone())
        })
        .url(server.url())
        .namespace(ns.as_str())
        .sensitive(cat::SESSIONS)
    };
    let b = configured(&format!("{K1}, {K2}"));
    let shown = format!("{b:?} {b:#?}");
    assert!(shown.contains("Encryption { keys: 2, .. }"), "{shown}");
    let cache = b.build().await.unwrap();
    let shown = format!("{shown} {cache:?}");
    // A bad list is an error that names the variable and the key's position only.
    let err = configured(&format!("{K1},{}", &K3[..60]))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_config());
    let err = err.to_string();
    assert!(
        err.contains("`CACHE_ENCRYPTION_KEYS`") && err.contains("encryption key 2 is 30 bytes"),
        "{err}"
    );
    // Failures to authenticate are logged, once per interval however many there are.
    let other = build(sensitive(&server, &ns, K3)).await;
    let mut conn = raw(&server).await;
    for i in 0..3 {
        let key = cache.key(&cat::SESSIONS, [i.to_string()]);
        other.insert(&key, &session("x")).await;
        assert_eq!(cache.get::<Session>(&key).await, None);
        assert_eq!(get_raw(&mut conn, &key).await, None);
    }
    assert_eq!(cache.stats().await.unauthenticated_values, 3);
    let events = logs.events();
    let rejections: Vec<_> = events
        .iter()
        .filter(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m.starts_with("cached value failed to authenticate"))
        })
        .collect();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(
        rejections[0].fields["key"],
        cache.key(&cat::SESSIONS, ["0"]).as_str()
    );
    assert_eq!(
        rejections[0].fields["reason"],
        "encrypted under a key this cache does not have"
    );
    assert!(
        events.iter().any(|e| e
            .fields
            .get("message")
            .is_some_and(|m| m.starts_with("sensitive categories are encrypted"))),
        "the start-up line"
    );
    let logged = format!("{events:?}");
    for key in [K1, K2, K3, &K3[..60]] {
        for text in [&shown, &err, &logged] {
            assert!(!text.contains(key), "a key in {text}");
        }
    }
    for bytes in ["107, 49, 0", "107, 50, 0", "[107, 49", "[107, 50"] {
        assert!(
            !shown.contains(bytes) && !logged.contains(bytes),
            "key bytes shown"
        );
    }
}
