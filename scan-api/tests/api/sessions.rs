//! The sensitive `sessions` category of scan-api's configuration, built the way the service
//! builds its cache (`cache_setup::Plan`, the variables read through a lookup instead of the
//! process environment): with `CACHE_ENCRYPTION_KEYS` its values are encrypted in Redis (the
//! test reads the raw bytes) while the other categories stay in clear; without it sessions are
//! not cached and the service still starts; a malformed list stops it, naming the variable.

use scan_api::cache_policy::{SCAN_RESULTS, SESSIONS};
use scan_api::cache_setup::{Plan, Purpose};
use scan_api::config::{CacheMode, Common};
use tiercache::{Cache, CacheStatus};
use tiercache_testkit::RedisServer;

/// Written in the session, so that its absence from the stored bytes means something.
const MARKER: &str = "SESSION-MARKER-91c2";
const KEYS: &str = "c2NhbkFwaVRlc3RLZXlOdW1iZXJPbmUtLS0tLS0tLTE=,\
                    7363616e2d617069206f6c64206b65792c207365636f6e6420696e206c697374";

fn common(server: &RedisServer) -> Common {
    Common {
        database_url: "sqlite://unused.db".into(),
        cache_mode: CacheMode::Redis,
        redis_url: Some(server.url()),
        redis_cluster_urls: None,
        cache_namespace: "scan-api".into(),
        app_env: "test".into(),
        cache_local_capacity: 0,
        cache_max_value_bytes: tiercache::DEFAULT_MAX_VALUE_BYTES,
        cache_enabled: true,
    }
}

/// scan-api's cache, with `CACHE_ENCRYPTION_KEYS` set to `keys` (unset for `None`).
async fn service_cache(
    server: &RedisServer,
    keys: Option<&str>,
) -> Result<Cache, tiercache::Error> {
    let common = common(server);
    let plan = Plan::resolve(&common, Purpose::Serve, &server.url())
        .await
        .unwrap();
    let keys = keys.map(str::to_owned);
    plan.build_with(&common, move |name| {
        (name == "CACHE_ENCRYPTION_KEYS")
            .then(|| keys.clone())
            .flatten()
    })
    .await
}

async fn get_raw(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn has(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_encrypted_in_redis_with_the_configured_keys() {
    let server = RedisServer::start();
    let cache = service_cache(&server, Some(KEYS)).await.unwrap();
    let session = cache.key(&SESSIONS, ["user-1"]);
    let value = format!("{MARKER} admin");
    cache.insert(&session, &value).await;
    let stored = get_raw(&server, session.as_str()).await.unwrap();
    assert_eq!(stored[0], 3, "an encrypted envelope");
    assert!(!has(&stored, MARKER), "the session is not in clear");
    assert_eq!(cache.get::<String>(&session).await, Some(value.clone()));

    // Scan results are not sensitive: in clear, as ever.
    let scans = cache.key(&SCAN_RESULTS, ["x"]);
    cache.insert(&scans, &value).await;
    assert!(has(
        &get_raw(&server, scans.as_str()).await.unwrap(),
        MARKER
    ));

    // Copied under another user's key, the session is refused and deleted.
    let other = cache.key(&SESSIONS, ["user-2"]);
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(other.as_str())
        .arg(&stored)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(cache.get::<String>(&other).await, None);
    assert_eq!(get_raw(&server, other.as_str()).await, None);
    let stats = cache.stats().await;
    assert_eq!((stats.unauthenticated_values, stats.errors), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_sessions_are_not_cached_and_the_service_still_starts() {
    let server = RedisServer::start();
    let cache = service_cache(&server, None).await.unwrap();
    let session = cache.key(&SESSIONS, ["user-1"]);
    for _ in 0..2 {
        let (_, status) = cache
            .try_get_with_status(&session, async { Ok::<_, ()>(MARKER.to_owned()) })
            .await
            .unwrap();
        assert_eq!(status, CacheStatus::Bypass);
    }
    cache.insert(&session, &MARKER).await;
    assert_eq!(get_raw(&server, session.as_str()).await, None);
    // The rest of the cache works.
    let scans = cache.key(&SCAN_RESULTS, ["x"]);
    cache.insert(&scans, &1u8).await;
    assert_eq!(cache.get::<u8>(&scans).await, Some(1));
    // An empty variable (`CACHE_ENCRYPTION_KEYS=` in a compose file) counts as unset.
    assert!(service_cache(&server, Some(" ")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_list_stops_the_service_naming_the_variable_not_the_key() {
    let server = RedisServer::start();
    let bad = "c2NhbkFwaVRlc3RLZXlOdW1iZXJPbmUtLS0tLS0tLTE=,not-a-key";
    let err = service_cache(&server, Some(bad)).await.unwrap_err();
    let shown = err.to_string();
    assert!(err.is_config(), "{shown}");
    assert!(
        shown.contains("`CACHE_ENCRYPTION_KEYS`") && shown.contains("encryption key 2"),
        "{shown}"
    );
    assert!(
        !shown.contains("not-a-key") && !shown.contains("c2Nhbk"),
        "{shown}"
    );
}
