//! A cache that logs in as an ACL user, whose login stops working for a while: the user
//! switched off, its password changed, its connections killed, Redis restarted. While the
//! login is refused every call falls back at once; once it works again, hits resume within
//! 1 s (the cache must never stay disabled until the process restarts).

use std::time::{Duration, Instant};

use tiercache::Cache;
use tiercache_testkit::RedisServer;

use crate::faults::{OP_TIMEOUT, calls_stay_bounded, first_hit_after_recovery};
use crate::helpers::{builder, cat, wait_live, wait_until};

const USER: &str = "svc";
const PASSWORD: &str = "pw";

/// A server with the user `svc`, and a cache logged in as it that has stored and read a value.
async fn acl_cache() -> (RedisServer, Cache) {
    let server = RedisServer::start_with_user(USER, PASSWORD);
    let cache = builder(&server)
        .username(USER)
        .password(PASSWORD)
        .op_timeout(OP_TIMEOUT)
        .build()
        .await
        .unwrap();
    let key = cache.key(&cat::SCAN_RESULTS, ["before"]);
    cache.insert(&key, &1u32).await;
    assert_eq!(cache.get::<u32>(&key).await, Some(1), "served by Redis");
    assert!(cache.ping().await.is_ok());
    (server, cache)
}

/// Runs an administrative command as the `default` user; panics on an error reply.
fn admin(server: &RedisServer, args: &[&str]) -> String {
    let reply = server.command(args).unwrap();
    assert!(!reply.starts_with('-'), "{args:?}: {reply}");
    reply
}

/// `CLIENT KILL USER svc`: ends every connection of the user (commands and subscriber).
fn kill_user_connections(server: &RedisServer) {
    let reply = admin(server, &["CLIENT", "KILL", "USER", USER]);
    let killed: u64 = reply.trim().trim_start_matches(':').parse().unwrap();
    assert!(killed >= 1, "the cache's connection was killed: {reply}");
}

/// While the cache cannot log in: every call answers in time with the loader's value, the
/// breaker opens, and the cache keeps trying (Redis sees its refused logins), so the failed
/// attempts are behind it when the login works again.
async fn falls_back_while_refused(server: &RedisServer, cache: &Cache, label: &str) {
    let refused = server.refused_logins();
    calls_stay_bounded(cache, label, 10).await;
    wait_until(Duration::from_secs(2), "the breaker to open", || async {
        !cache.is_connected()
    })
    .await;
    wait_until(
        Duration::from_secs(3),
        "three more refused logins",
        || async { server.refused_logins() >= refused + 3 },
    )
    .await;
    calls_stay_bounded(cache, label, 5).await;
    assert!(
        cache.ping().await.is_err(),
        "{label}: no PING while refused"
    );
}

/// Waits for the first Redis hit after the fault ended at `since`; asserts it came within
/// 1 s and that the cache reports itself connected. Returns the time taken.
async fn served_again(cache: &Cache, since: Instant, label: &str) -> Duration {
    first_hit_after_recovery(cache).await;
    let took = since.elapsed();
    eprintln!("{label}: first cache hit {took:?} after the fault ended");
    assert!(
        took <= Duration::from_secs(1),
        "{label}: first hit only {took:?} after the fault ended"
    );
    assert!(cache.is_connected(), "{label}");
    assert!(cache.ping().await.is_ok(), "{label}");
    took
}

/// The reported case: the user switched off and its connections killed, then switched on
/// again. The cache had kept the refused login as its connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_switched_off_and_on_again_is_served_within_a_second() {
    let (server, cache) = acl_cache().await;
    admin(&server, &["ACL", "SETUSER", USER, "off"]);
    kill_user_connections(&server);
    falls_back_while_refused(&server, &cache, "user off").await;

    admin(&server, &["ACL", "SETUSER", USER, "on"]);
    served_again(&cache, Instant::now(), "user switched on").await;
    assert!(cache.stats().await.connected);
}

/// The password changed (a rotation done in the wrong order) and changed back a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_and_changed_back_is_served_within_a_second() {
    let (server, cache) = acl_cache().await;
    let (old, new) = (format!("<{PASSWORD}"), ">rotated".to_owned());
    admin(&server, &["ACL", "SETUSER", USER, &old, &new]);
    kill_user_connections(&server);
    falls_back_while_refused(&server, &cache, "password changed").await;

    admin(
        &server,
        &["ACL", "SETUSER", USER, "<rotated", &format!(">{PASSWORD}")],
    );
    served_again(&cache, Instant::now(), "password changed back").await;
}

/// The reported follow-up: with the login refused, Redis killed and started again (the user is
/// back, on): the cache comes back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_then_a_redis_restart_is_served_within_a_second() {
    let (mut server, cache) = acl_cache().await;
    admin(&server, &["ACL", "SETUSER", USER, "off"]);
    kill_user_connections(&server);
    falls_back_while_refused(&server, &cache, "user off").await;

    server.kill();
    server.restart();
    served_again(&cache, Instant::now(), "restart after a refused login").await;
}

/// `kill -9` of Redis and a start on the same port, the cache logged in as an ACL user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_redis_is_served_within_a_second() {
    let (mut server, cache) = acl_cache().await;
    server.kill();
    calls_stay_bounded(&cache, "killed", 10).await;
    server.restart();
    served_again(&cache, Instant::now(), "redis restarted").await;
}

/// `CLIENT KILL` of the command connection only (the subscriber, if any, is left alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_command_connection_is_served_within_a_second() {
    let (server, cache) = acl_cache().await;
    let list = admin(&server, &["CLIENT", "LIST"]);
    let commands: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(&format!(" user={USER} ")) && !l.contains(" flags=P "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert!(!commands.is_empty(), "the command connection: {list}");
    for id in &commands {
        admin(&server, &["CLIENT", "KILL", "ID", id]);
    }
    let since = Instant::now();
    calls_stay_bounded(&cache, "command connection killed", 10).await;
    served_again(&cache, since, "command connection killed").await;
}

/// With an in-process tier: `CLIENT KILL USER` also ends the subscriber, so the tier stops
/// serving; once the user is on again, the tier is live again within 1 s (its heartbeats travel
/// on the command connection, which must come back too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_tier_serves_again_within_a_second_of_the_user_switched_on() {
    let server = RedisServer::start_with_user(USER, PASSWORD);
    let cache = builder(&server)
        .username(USER)
        .password(PASSWORD)
        .op_timeout(OP_TIMEOUT)
        .local_capacity(1 << 20)
        .build()
        .await
        .unwrap();
    wait_live(&cache, true).await;
    admin(&server, &["ACL", "SETUSER", USER, "off"]);
    kill_user_connections(&server);
    wait_live(&cache, false).await;
    falls_back_while_refused(&server, &cache, "user off, tiered").await;

    admin(&server, &["ACL", "SETUSER", USER, "on"]);
    let on = Instant::now();
    served_again(&cache, on, "user switched on, tiered").await;
    wait_live(&cache, true).await;
    let took = on.elapsed();
    eprintln!("user switched on, tiered: the tier serves again {took:?} after the fault ended");
    assert!(
        took <= Duration::from_secs(1),
        "the tier serves only {took:?} after the user was switched on"
    );
}
