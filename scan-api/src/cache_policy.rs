//! What is cached, for how long, and which writes purge what: the categories and TTLs, the tags,
//! and the route policies, in one place. The categories and TTLs are this service's; tiercache
//! ships none.
//!
//! Read routes are cached whole (status, headers, JSON body) by tiercache-axum's
//! `ResponseCacheLayer`, each with the policy below, applied where the route is declared
//! (`routes/*.rs`). Writes return the tags they changed ([`written`]) and a `PurgeLayer` purges
//! them: one Redis command however many entries carry them, reaching every instance. The
//! insights computation is also cached as data, with `#[tiercache::cached]`
//! (`routes/insights.rs`), for every caller of it.
//!
//! | route | category (TTL) | tags |
//! |---|---|---|
//! | `GET /api/scan-results?image=&limit=&offset=` | scan results (5 min) | `scan-lists`, or `image:{name}` with `?image=` |
//! | `GET /api/scan-results/{id}` | scan results (5 min) | `scan:{id}` |
//! | `GET /api/vulnerabilities[/active]?severity=` | vulnerabilities (10 min) | `vulnerabilities` |
//! | `GET /api/images` | image metadata (15 min) | `images` |
//! | `GET /api/images/{name}/latest`, `/versions` | image metadata (15 min) | `image:{name}` |
//! | `GET /api/insights` | analysis (30 min) | `insights` |
//! | (data) the insights computation | insights data (30 min) | `insights` |
//! | (data) user sessions, for an auth layer | sessions (30 min), **sensitive** | |
//!
//! A POST or DELETE of scan *N* of image *X* purges, after its transaction committed and before
//! it answers, `scan-lists`, `scan:{N}`, `vulnerabilities`, `image:{X}`, `images` and
//! `insights`. Other images' entries stay. Tags are built from the raw name by tiercache, so
//! `*`, `?` or `[` in a name are just characters.
//!
//! Keys are the request's path and normalized query and its `Accept-Encoding` (answers are
//! gzip-compressed inside the cache, once per variant; tiercache-axum's `DefaultCacheKey`).
//! Requests with `Authorization` or `Cookie`, or `Cache-Control: no-store`, bypass the cache.
//!
//! The `sessions` category is [sensitive](SENSITIVE): its values are stored in Redis encrypted
//! (XChaCha20-Poly1305, bound to their key name) with the keys of `CACHE_ENCRYPTION_KEYS`
//! (comma-separated, 32 bytes each as base64 or hex, the newest first; read by
//! `tiercache::CacheBuilder::from_env`). Without keys the service still starts, and sessions are
//! simply never cached (tiercache warns once at start-up): a missing secret costs database
//! reads, never an outage, and never a session in clear in Redis. A malformed key list stops
//! the service at start-up, naming the variable and the key's position (never the key).
//!
//! Every instance keeps an in-process tier of [`LOCAL_CAPACITY`] bytes in front of Redis
//! (`CACHE_LOCAL_CAPACITY`, 0 to turn it off). Its entries live no longer than their Redis copy,
//! writes reach the other instances' tiers over Redis pub/sub, and a tier serves only while its
//! heartbeats come back through that channel within tiercache's lease (100 ms). In standalone
//! mode (no Redis) the tier is the whole cache: entries live their full TTL, and only this
//! instance's writes invalidate them.

use std::time::Duration;

use axum::handler::Handler;
use axum::http::header::ACCEPT_ENCODING;
use axum::routing::{MethodRouter, get};
use tiercache::{Cache, CacheBuilder, Category, Tag};
use tiercache_axum::response_cache::{CachePolicy, PurgeLayer, ResponseCacheLayer};
use tower_http::compression::CompressionLayer;

use crate::AppState;

/// Scan lists and single scans.
pub const SCAN_RESULTS: Category = Category::from_static("scan_results");
/// Aggregated vulnerability lists.
pub const VULNERABILITIES: Category = Category::from_static("vulnerabilities");
/// The image index and each image's latest scan and versions.
pub const IMAGE_METADATA: Category = Category::from_static("image_metadata");
/// The insights view (expensive).
pub const ANALYSIS: Category = Category::from_static("analysis");
/// The insights computation's result, as data (see `routes::insights`).
pub const INSIGHTS_DATA: Category = Category::from_static("insights_data");

/// User sessions (for an auth layer): sensitive, see [`SENSITIVE`].
pub const SESSIONS: Category = Category::from_static("sessions");

/// TTL per category.
pub const TTLS: [(Category, Duration); 6] = [
    (SCAN_RESULTS, Duration::from_secs(5 * 60)),
    (VULNERABILITIES, Duration::from_secs(10 * 60)),
    (IMAGE_METADATA, Duration::from_secs(15 * 60)),
    (ANALYSIS, Duration::from_secs(30 * 60)),
    (INSIGHTS_DATA, Duration::from_secs(30 * 60)),
    (SESSIONS, Duration::from_secs(30 * 60)),
];

/// Categories stored encrypted in Redis (with `CACHE_ENCRYPTION_KEYS`; never cached without).
pub const SENSITIVE: [Category; 1] = [SESSIONS];

/// Default size of the in-process tier, in bytes.
pub const LOCAL_CAPACITY: u64 = 64 * 1024 * 1024;

/// Default largest response body cached, in bytes (`CACHE_MAX_RESPONSE_BYTES`); larger ones
/// stream through uncached.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Applies the TTL table, the sensitive categories and the default in-process tier to a cache
/// builder.
pub fn configure(mut builder: CacheBuilder) -> CacheBuilder {
    for (category, ttl) in TTLS {
        builder = builder.ttl(category, ttl);
    }
    for category in SENSITIVE {
        builder = builder.sensitive(category);
    }
    builder.local_capacity(LOCAL_CAPACITY)
}

/// The tags, built from untrusted text by tiercache.
pub mod tags {
    use tiercache::Tag;

    /// Every page of every scan list.
    pub fn scan_lists() -> Tag {
        Tag::new("scan-lists", Vec::<&str>::new())
    }

    /// One scan.
    pub fn scan(id: i64) -> Tag {
        Tag::new("scan", [id.to_string()])
    }

    /// Everything about one image.
    pub fn image(name: &str) -> Tag {
        Tag::new("image", [name])
    }

    /// The vulnerability lists.
    pub fn vulnerabilities() -> Tag {
        Tag::new("vulnerabilities", Vec::<&str>::new())
    }

    /// The image index.
    pub fn images() -> Tag {
        Tag::new("images", Vec::<&str>::new())
    }

    /// The insights, as response and as data.
    pub fn insights() -> Tag {
        Tag::new("insights", Vec::<&str>::new())
    }
}

/// The tags a stored or deleted scan `scan_id` of `image` makes stale (see the module table).
pub fn written(image: &str, scan_id: i64) -> Vec<Tag> {
    vec![
        tags::scan_lists(),
        tags::scan(scan_id),
        tags::vulnerabilities(),
        tags::image(image),
        tags::images(),
        tags::insights(),
    ]
}

/// The route policies of the table above. Each route applies its own with [`Policies::layer`].
#[derive(Clone, Debug)]
pub struct Policies {
    cache: Cache,
    max_body: usize,
}

impl Policies {
    /// Policies caching in `cache`, storing bodies of up to `max_body` bytes.
    pub fn new(cache: Cache, max_body: usize) -> Self {
        Self { cache, max_body }
    }

    /// A cached read route: `handler` for GET (and HEAD), its answers gzip-compressed for
    /// clients that accept it, cached by `policy`. Compression sits inside the cache, so each
    /// encoding's variant is compressed once and kept apart (`Vary: accept-encoding`, declared
    /// here so that the first answer is stored already).
    pub fn get<H, T>(&self, handler: H, policy: CachePolicy) -> MethodRouter<AppState>
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        get(handler)
            .layer(CompressionLayer::new().gzip(true))
            .layer(self.layer(policy))
    }

    /// The layer that caches a route by `policy`.
    pub fn layer(&self, policy: CachePolicy) -> ResponseCacheLayer {
        ResponseCacheLayer::new(
            self.cache.clone(),
            policy.vary([ACCEPT_ENCODING]).max_body(self.max_body),
        )
    }

    /// The layer that purges what a write route's handler returned as changed.
    pub fn purge(&self) -> PurgeLayer {
        PurgeLayer::new(self.cache.clone())
    }

    /// `GET /api/scan-results`: one image's lists carry its tag, the others `scan-lists`.
    pub fn scan_list() -> CachePolicy {
        CachePolicy::new(SCAN_RESULTS).tags_from(|req| {
            vec![match req.query("image") {
                Some(name) => tags::image(&name),
                None => tags::scan_lists(),
            }]
        })
    }

    /// `GET /api/scan-results/{id}`.
    pub fn scan() -> CachePolicy {
        CachePolicy::new(SCAN_RESULTS).tags_from(|req| {
            req.path_param("id")
                .and_then(|id| id.parse::<i64>().ok())
                .map(tags::scan)
                .into_iter()
                .collect()
        })
    }

    /// `GET /api/vulnerabilities` and `/active`.
    pub fn vulnerabilities() -> CachePolicy {
        CachePolicy::new(VULNERABILITIES).tag(tags::vulnerabilities())
    }

    /// `GET /api/images`.
    pub fn image_index() -> CachePolicy {
        CachePolicy::new(IMAGE_METADATA).tag(tags::images())
    }

    /// `GET /api/images/{name}/latest` and `/versions` (one wildcard route, `{*rest}`).
    pub fn image() -> CachePolicy {
        CachePolicy::new(IMAGE_METADATA).tags_from(|req| {
            req.path_param("rest")
                .and_then(|rest| rest.rsplit_once('/'))
                .map(|(name, _)| tags::image(name))
                .into_iter()
                .collect()
        })
    }

    /// `GET /api/insights`.
    pub fn insights() -> CachePolicy {
        CachePolicy::new(ANALYSIS).tag(tags::insights())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_names_its_image_and_scan_only() {
        let changed = written("a*", 7);
        assert!(changed.contains(&tags::image("a*")));
        assert!(changed.contains(&tags::scan(7)));
        for tag in [
            tags::scan_lists(),
            tags::vulnerabilities(),
            tags::images(),
            tags::insights(),
        ] {
            assert!(changed.contains(&tag), "{tag:?}");
        }
        // Another image's entries, and other scans, stay: `*` in a name is just a character.
        assert!(!changed.contains(&tags::image("ab")));
        assert!(!changed.contains(&tags::image("a")));
        assert!(!changed.contains(&tags::scan(8)));
    }
}
