//! What is cached, for how long, with which tags, and which writes invalidate what — in one
//! table. The categories and TTLs are this service's; tiercache ships none.
//!
//! | endpoint | category (TTL) | key parts | tags |
//! |---|---|---|---|
//! | `GET /api/scan-results?image=&limit=&offset=` | scan results (5 min) | `list`, `all` or `image` + name, limit, offset | `scan-lists`, or `image:{name}` with `?image=` |
//! | `GET /api/scan-results/{id}` | scan results (5 min) | `scan`, id | `scan:{id}` |
//! | `GET /api/vulnerabilities[/active]?severity=` | vulnerabilities (10 min) | `all` or `active`, the severities (sorted) | `vulnerabilities` |
//! | `GET /api/images` | image metadata (15 min) | `index` | `images` |
//! | `GET /api/images/{name}/latest` | image metadata (15 min) | `image`, name, `latest` | `image:{name}` |
//! | `GET /api/images/{name}/versions` | image metadata (15 min) | `image`, name, `versions` | `image:{name}` |
//! | `GET /api/insights` | analysis (30 min) | `insights` | `insights` |
//!
//! A POST or DELETE of scan *N* of image *X* invalidates, after its transaction committed and
//! before it answers, the tags `scan-lists`, `scan:{N}`, `vulnerabilities`, `image:{X}`, `images`
//! and `insights`: one Redis command however many entries carry them, reaching every instance.
//! Other images' entries stay. Tags are built from the raw name by tiercache, so `*`, `?` or `[`
//! in a name are just characters.
//!
//! Cached values are the JSON response bodies, so a hit is served without re-encoding.
//!
//! Every instance keeps an in-process tier of [`LOCAL_CAPACITY`] bytes in front of Redis
//! (`CACHE_LOCAL_CAPACITY`, 0 to turn it off). Its entries live no longer than their Redis copy,
//! writes reach the other instances' tiers over Redis pub/sub, and a tier serves only while its
//! heartbeats come back through that channel within tiercache's lease (100 ms). In standalone
//! mode (no Redis) the tier is the whole cache: entries live their full TTL, and only this
//! instance's writes invalidate them.

use std::time::Duration;

use tiercache::{Cache, CacheBuilder, Category, Key, KeySpace, Tag};

use crate::model::Severity;

/// Scan lists and single scans.
pub const SCAN_RESULTS: Category = Category::from_static("scan_results");
/// Aggregated vulnerability lists.
pub const VULNERABILITIES: Category = Category::from_static("vulnerabilities");
/// The image index and each image's latest scan and versions.
pub const IMAGE_METADATA: Category = Category::from_static("image_metadata");
/// The insights view (expensive).
pub const ANALYSIS: Category = Category::from_static("analysis");

/// TTL per category.
pub const TTLS: [(Category, Duration); 4] = [
    (SCAN_RESULTS, Duration::from_secs(5 * 60)),
    (VULNERABILITIES, Duration::from_secs(10 * 60)),
    (IMAGE_METADATA, Duration::from_secs(15 * 60)),
    (ANALYSIS, Duration::from_secs(30 * 60)),
];

/// Default size of the in-process tier, in bytes.
pub const LOCAL_CAPACITY: u64 = 64 * 1024 * 1024;

/// Applies the TTL table and the default in-process tier to a cache builder.
pub fn configure(mut builder: CacheBuilder) -> CacheBuilder {
    for (category, ttl) in TTLS {
        builder = builder.ttl(category, ttl);
    }
    builder.local_capacity(LOCAL_CAPACITY)
}

/// A cached GET answer: which cache entry it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A page of scan summaries, of all images or one.
    ScanList {
        /// `?image=`.
        image: Option<&'a str>,
        /// `?limit=`.
        limit: i64,
        /// `?offset=`.
        offset: i64,
    },
    /// One scan with its findings.
    Scan(i64),
    /// Aggregated vulnerabilities.
    Vulnerabilities {
        /// `/active`: latest scan of each image only.
        latest_only: bool,
        /// The severity filter, sorted and deduplicated; empty for all.
        severities: &'a [Severity],
    },
    /// Every image with its latest scan.
    ImageIndex,
    /// One image's latest scan.
    ImageLatest(&'a str),
    /// One image's scanned versions.
    ImageVersions(&'a str),
    /// The insights view.
    Insights,
}

/// Every scan list.
fn scan_lists() -> Tag {
    Tag::new("scan-lists", Vec::<&str>::new())
}

/// One scan.
fn scan(id: i64) -> Tag {
    Tag::new("scan", [id.to_string()])
}

/// Everything about one image.
fn image(name: &str) -> Tag {
    Tag::new("image", [name])
}

fn whole(kind: &str) -> Tag {
    Tag::new(kind, Vec::<&str>::new())
}

impl Entry<'_> {
    /// The entry's key, with its tags.
    pub fn key(&self, keys: &KeySpace) -> Key {
        match self {
            Self::ScanList {
                image: name,
                limit,
                offset,
            } => {
                let (l, o) = (limit.to_string(), offset.to_string());
                match name {
                    Some(name) => keys
                        .key(&SCAN_RESULTS, ["list", "image", name, &l, &o])
                        .with_tags([image(name)]),
                    None => keys
                        .key(&SCAN_RESULTS, ["list", "all", &l, &o])
                        .with_tags([scan_lists()]),
                }
            }
            Self::Scan(id) => keys
                .key(&SCAN_RESULTS, ["scan", &id.to_string()])
                .with_tags([scan(*id)]),
            Self::Vulnerabilities {
                latest_only,
                severities,
            } => {
                let scope = if *latest_only { "active" } else { "all" };
                let filter: Vec<&str> = severities.iter().map(|s| s.as_str()).collect();
                keys.key(&VULNERABILITIES, [scope, &filter.join(",")])
                    .with_tags([whole("vulnerabilities")])
            }
            Self::ImageIndex => keys
                .key(&IMAGE_METADATA, ["index"])
                .with_tags([whole("images")]),
            Self::ImageLatest(name) => keys
                .key(&IMAGE_METADATA, ["image", name, "latest"])
                .with_tags([image(name)]),
            Self::ImageVersions(name) => keys
                .key(&IMAGE_METADATA, ["image", name, "versions"])
                .with_tags([image(name)]),
            Self::Insights => keys
                .key(&ANALYSIS, ["insights"])
                .with_tags([whole("insights")]),
        }
    }
}

/// The tags a stored or deleted scan `scan_id` of `image` makes stale (see the module table).
pub fn tags_changed_by_write(image_name: &str, scan_id: i64) -> Vec<Tag> {
    vec![
        scan_lists(),
        scan(scan_id),
        whole("vulnerabilities"),
        image(image_name),
        whole("images"),
        whole("insights"),
    ]
}

/// Invalidates everything a stored or deleted scan of `image` changes, and logs it. Never
/// fails: an invalidation Redis misses is replayed before the cache is read again (tiercache's
/// guarantee).
pub async fn invalidate_after_write(cache: &Cache, image: &str, scan_id: i64) {
    let tags = tags_changed_by_write(image, scan_id);
    cache.invalidate_tags(&tags).await;
    tracing::info!(
        image,
        scan_id,
        tags = ?tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
        "cache invalidated after write"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_reaches_exactly_the_entries_it_changes() {
        let keys = KeySpace::new("test", "scan-api").unwrap();
        let changed = tags_changed_by_write("a*", 7);
        let hit = |entry: Entry<'_>| entry.key(&keys).tags().iter().any(|t| changed.contains(t));
        assert!(hit(Entry::ImageLatest("a*")));
        assert!(hit(Entry::ImageVersions("a*")));
        assert!(hit(Entry::Scan(7)));
        assert!(hit(Entry::ImageIndex));
        assert!(hit(Entry::Insights));
        assert!(hit(Entry::ScanList {
            image: None,
            limit: 10,
            offset: 0
        }));
        assert!(hit(Entry::ScanList {
            image: Some("a*"),
            limit: 10,
            offset: 0
        }));
        assert!(hit(Entry::Vulnerabilities {
            latest_only: true,
            severities: &[]
        }));
        // Another image's entries, and other scans, stay: `*` in a name is just a character.
        assert!(!hit(Entry::ImageLatest("ab")));
        assert!(!hit(Entry::ImageLatest("a")));
        assert!(!hit(Entry::Scan(8)));
        assert!(!hit(Entry::ScanList {
            image: Some("other"),
            limit: 10,
            offset: 0
        }));
    }

    #[test]
    fn keys_are_distinct_per_query() {
        let keys = KeySpace::new("test", "scan-api").unwrap();
        let all = Entry::ScanList {
            image: None,
            limit: 10,
            offset: 0,
        }
        .key(&keys);
        let img = Entry::ScanList {
            image: Some("all"),
            limit: 10,
            offset: 0,
        }
        .key(&keys);
        assert_ne!(all, img);
        let crit = Entry::Vulnerabilities {
            latest_only: false,
            severities: &[Severity::Critical],
        }
        .key(&keys);
        let active = Entry::Vulnerabilities {
            latest_only: true,
            severities: &[Severity::Critical],
        }
        .key(&keys);
        assert_ne!(crit, active);
    }
}
