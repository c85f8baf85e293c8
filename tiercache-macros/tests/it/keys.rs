//! What a `#[cached]` fn stores under: template keys, the default key's stable hash, TTLs and
//! tags.

use std::time::Duration;

use serde::Serialize;
use tiercache::{Cache, Category, Key, Tag, cached};
use tiercache_testkit::RedisServer;

use crate::helpers::{
    REPORTS, REPORTS_TTL, Runs, every_mode, redis, standalone, tiered, wait_until,
};

#[cached(cache = cache, key = "{image}:{tag}")]
async fn image(cache: &Cache, image: &str, tag: &str) -> String {
    format!("{image}:{tag}")
}

#[derive(Serialize)]
struct User {
    id: u64,
    name: String,
}

#[cached(cache = cache, category = REPORTS, key = "v2:user-{user.id}:{user.name}")]
async fn user_report(cache: &Cache, user: &User) -> String {
    format!("report of {}", user.name)
}

struct Tenant {
    id: u32,
    cache: Cache,
}

impl Tenant {
    #[cached(cache = self.cache, key = "{self.id}:{x}")]
    async fn lookup(&self, x: u64) -> u64 {
        u64::from(self.id) * 1000 + x
    }
}

#[tokio::test]
async fn template_keys_are_the_documented_keys() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let prefix = cache.key_space().prefix().to_owned();
        assert_eq!(
            image(&cache, "library/nginx", "1.27").await,
            "library/nginx:1.27"
        );
        let key = cache.key(&Category::from_static("image"), ["library/nginx", "1.27"]);
        // The fn's name is the category; each `:`-separated part is escaped on its own.
        assert_eq!(
            key.as_str(),
            format!("{prefix}image:{{library%2Fnginx:1.27}}")
        );
        assert_eq!(
            cache.get::<String>(&key).await.as_deref(),
            Some("library/nginx:1.27"),
            "{mode}"
        );
        // A `:` inside an argument stays inside its part.
        image(&cache, "a:b", "c").await;
        let key = cache.key(&Category::from_static("image"), ["a:b", "c"]);
        assert_eq!(key.as_str(), format!("{prefix}image:{{a%3Ab:c}}"));
        assert!(cache.get::<String>(&key).await.is_some(), "{mode}");

        let user = User {
            id: 7,
            name: "ann".into(),
        };
        user_report(&cache, &user).await;
        let key = cache.key(&REPORTS, ["v2", "user-7", "ann"]);
        assert_eq!(key.as_str(), format!("{prefix}reports:{{v2:user-7:ann}}"));
        assert_eq!(
            cache.get::<String>(&key).await.as_deref(),
            Some("report of ann"),
            "{mode}"
        );

        let tenant = Tenant {
            id: 3,
            cache: cache.clone(),
        };
        assert_eq!(tenant.lookup(4).await, 3004);
        let key = cache.key(&Category::from_static("lookup"), ["3", "4"]);
        assert_eq!(cache.get::<u64>(&key).await, Some(3004), "{mode}");
    }
}

/// With a `name`, the default key's scope is that name alone.
#[cached(cache = cache, name = "known")]
async fn known(cache: &Cache, id: u64, label: &str) -> String {
    format!("{label}{id}")
}

/// Without one, it is `module_path!()::fn name`.
#[cached(cache = cache, skip(runs))]
async fn default_scope(cache: &Cache, runs: &Runs, id: u64) -> u64 {
    runs.count();
    id
}

/// `cache`'s entry under `category` for a default key with `hash`.
fn default_key(cache: &Cache, category: &str, name: &str, hash: &str) -> Key {
    cache.key(&Category::new(category.to_owned()), [name, hash])
}

#[tokio::test]
async fn the_default_key_is_a_stable_hash_of_the_arguments() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        assert_eq!(known(&cache, 42, "x").await, "x42");
        // SHA-256 of the postcard encoding of ("known", [], (42u64, "x")), the bytes
        // 05 "known" 00 2a 01 "x", cut to 32 hex digits (checked with Python's hashlib): a
        // change in the encoding, the hash or the key's shape fails here.
        let hash = "381121fc34b3073f4a61de374337db61";
        assert_eq!(
            tiercache::__private::key_hash("known", &[], &(42u64, "x")).unwrap(),
            hash
        );
        let key = default_key(&cache, "known", "known", hash);
        assert_eq!(
            key.as_str(),
            format!("{}known:{{known:{hash}}}", cache.key_space().prefix())
        );
        assert_eq!(
            cache.get::<String>(&key).await.as_deref(),
            Some("x42"),
            "{mode}"
        );

        let runs = Runs::default();
        default_scope(&cache, &runs, 7).await;
        let hash =
            tiercache::__private::key_hash("it::keys::default_scope", &[], &(7u64,)).unwrap();
        let key = default_key(&cache, "default_scope", "default_scope", &hash);
        assert_eq!(cache.get::<u64>(&key).await, Some(7), "{mode}");
        // The counter is skipped: a call with another counter shares the entry.
        let other = Runs::default();
        default_scope(&cache, &other, 7).await;
        assert_eq!((runs.get(), other.get()), (1, 0), "{mode}");
    }
}

#[cached(cache = cache, category = REPORTS, key = "short:{id}", ttl = Duration::from_secs(42))]
async fn own_ttl(cache: &Cache, id: u64) -> u64 {
    id
}

#[cached(cache = cache, category = REPORTS, key = "long:{id}")]
async fn category_ttl(cache: &Cache, id: u64) -> u64 {
    id
}

#[tokio::test]
async fn the_ttl_option_overrides_the_categorys() {
    let server = RedisServer::start();
    for cache in [redis(&server).await, tiered(&server).await] {
        own_ttl(&cache, 1).await;
        category_ttl(&cache, 1).await;
        let own = cache.key(&REPORTS, ["short", "1"]);
        let ttl = cache.ttl(&own).await.unwrap().unwrap();
        assert!(
            ttl > Duration::from_secs(40) && ttl <= Duration::from_secs(42),
            "{ttl:?}"
        );
        let pttl = server.command(&["PTTL", own.as_str()]).unwrap();
        let pttl: u64 = pttl.trim().trim_start_matches(':').parse().unwrap();
        assert!((40_000..=42_000).contains(&pttl), "PTTL {pttl}");
        let theirs = cache
            .ttl(&cache.key(&REPORTS, ["long", "1"]))
            .await
            .unwrap()
            .unwrap();
        assert!(
            theirs > REPORTS_TTL - Duration::from_secs(2) && theirs <= REPORTS_TTL,
            "{theirs:?}"
        );
    }
}

#[cached(cache = cache, skip(runs), ttl = Duration::from_secs(1))]
async fn one_second(cache: &Cache, runs: &Runs, id: u64) -> u64 {
    runs.count();
    id
}

#[tokio::test]
async fn entries_expire_after_the_ttl_in_standalone_mode() {
    let cache = standalone().await;
    let runs = Runs::default();
    one_second(&cache, &runs, 1).await;
    one_second(&cache, &runs, 1).await;
    assert_eq!(runs.get(), 1);
    let hash = tiercache::__private::key_hash("it::keys::one_second", &[], &(1u64,)).unwrap();
    let key = default_key(&cache, "one_second", "one_second", &hash);
    wait_until(Duration::from_secs(5), "the entry to expire", || async {
        cache.get::<u64>(&key).await.is_none()
    })
    .await;
    one_second(&cache, &runs, 1).await;
    assert_eq!(runs.get(), 2, "the expired entry was loaded again");
}

#[cached(
    cache = cache,
    skip(runs),
    tags = ["image:{image}", "insights", Tag::new("owner", [owner.as_str()])],
)]
async fn summary(cache: &Cache, runs: &Runs, image: &str, owner: String) -> String {
    runs.count();
    format!("{image} of {owner}")
}

#[tokio::test]
async fn invalidating_a_tag_makes_the_next_call_run_the_body() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let runs = Runs::default();
        let call = || summary(&cache, &runs, "nginx", "ann".to_owned());
        assert_eq!(call().await, "nginx of ann");
        call().await;
        assert_eq!(runs.get(), 1, "{mode}");
        for (tag, expected) in [
            (Tag::new("image", ["nginx"]), 2),
            (Tag::new("insights", Vec::<&str>::new()), 3),
            (Tag::new("owner", ["ann"]), 4),
            // Other tags leave the entry alone.
            (Tag::new("image", ["redis"]), 4),
            (Tag::new("owner", ["bob"]), 4),
        ] {
            cache.invalidate_tag(&tag).await;
            assert_eq!(call().await, "nginx of ann");
            assert_eq!(runs.get(), expected, "{mode}: after invalidating {tag}");
        }
    }
}
