//! What is cached, for how long, and which writes invalidate what — in one table.
//!
//! | endpoint | category (TTL) | key parts |
//! |---|---|---|
//! | `GET /api/scan-results?image=&limit=&offset=` | scan results (5 min) | `list`, `all` or `image` + name, limit, offset |
//! | `GET /api/scan-results/{id}` | scan results (5 min) | `scan`, id |
//! | `GET /api/vulnerabilities[/active]?severity=` | vulnerabilities (10 min) | `all` or `active`, the severities (sorted) |
//! | `GET /api/images` | image metadata (15 min) | `index` |
//! | `GET /api/images/{name}/latest` | image metadata (15 min) | `image`, name, `latest` |
//! | `GET /api/images/{name}/versions` | image metadata (15 min) | `image`, name, `versions` |
//! | `GET /api/insights` | analysis (30 min) | `insights` |
//!
//! A POST or DELETE of a scan of image *X* invalidates, after its transaction committed and
//! before it answers:
//! every scan list (pattern `scan_results: list…`), the scan itself, every vulnerability list
//! (the whole category), *X*'s entries (pattern `image_metadata: image, X…`), the image index,
//! and the insights. Other images' entries stay: the pattern is built from the encoded name, so
//! `*`, `?` or `[` in a name match only themselves.
//!
//! Cached values are the JSON response bodies, so a hit is served without re-encoding.
//!
//! Every instance also keeps an in-process tier of [`LOCAL_CAPACITY`] bytes in front of Redis
//! (`CACHE_LOCAL_CAPACITY`, 0 to turn it off). Its entries live no longer than their Redis copy,
//! writes reach the other instances' tiers over Redis pub/sub, and a tier whose channel or Redis
//! is lost is cleared and unused until both are back.

use std::time::Duration;

use tiercache::{Cache, CacheBuilder, Category, Key, KeySpace, Pattern};

use crate::model::Severity;

/// TTL per category.
pub const TTLS: [(Category, Duration); 4] = [
    (Category::SCAN_RESULTS, Duration::from_secs(5 * 60)),
    (Category::VULNERABILITIES, Duration::from_secs(10 * 60)),
    (Category::IMAGE_METADATA, Duration::from_secs(15 * 60)),
    (Category::ANALYSIS, Duration::from_secs(30 * 60)),
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

impl Entry<'_> {
    /// The entry's key.
    pub fn key(&self, keys: &KeySpace) -> Key {
        match self {
            Self::ScanList {
                image,
                limit,
                offset,
            } => {
                let (l, o) = (limit.to_string(), offset.to_string());
                match image {
                    Some(name) => {
                        keys.key(&Category::SCAN_RESULTS, ["list", "image", name, &l, &o])
                    }
                    None => keys.key(&Category::SCAN_RESULTS, ["list", "all", &l, &o]),
                }
            }
            Self::Scan(id) => keys.key(&Category::SCAN_RESULTS, ["scan", &id.to_string()]),
            Self::Vulnerabilities {
                latest_only,
                severities,
            } => {
                let scope = if *latest_only { "active" } else { "all" };
                let filter: Vec<&str> = severities.iter().map(|s| s.as_str()).collect();
                keys.key(&Category::VULNERABILITIES, [scope, &filter.join(",")])
            }
            Self::ImageIndex => keys.key(&Category::IMAGE_METADATA, ["index"]),
            Self::ImageLatest(name) => {
                keys.key(&Category::IMAGE_METADATA, ["image", name, "latest"])
            }
            Self::ImageVersions(name) => {
                keys.key(&Category::IMAGE_METADATA, ["image", name, "versions"])
            }
            Self::Insights => keys.key(&Category::ANALYSIS, ["insights"]),
        }
    }
}

/// Invalidates everything a stored or deleted scan of `image` changes (see the module table),
/// and logs it. Never fails: an invalidation Redis misses is replayed before the cache is read
/// again (tiercache's guarantee).
pub async fn invalidate_after_write(cache: &Cache, image: &str, scan_id: i64) {
    let keys = cache.key_space();
    let patterns: [Pattern; 3] = [
        keys.pattern(&Category::SCAN_RESULTS, ["list"]),
        keys.pattern(&Category::VULNERABILITIES, Vec::<&str>::new()),
        keys.pattern(&Category::IMAGE_METADATA, ["image", image]),
    ];
    let mut removed = 0;
    for pattern in &patterns {
        removed += cache.invalidate_pattern(pattern).await.unwrap_or(0);
    }
    for entry in [Entry::Scan(scan_id), Entry::ImageIndex, Entry::Insights] {
        cache.invalidate(&entry.key(keys)).await;
    }
    tracing::info!(
        image,
        scan_id,
        patterns_removed = removed,
        invalidated = "scan lists, the scan, vulnerability lists, the image's entries, the image index, insights",
        "cache invalidated after write"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_pattern_is_literal_for_glob_characters() {
        let keys = KeySpace::new("test", "scan-api").unwrap();
        let pattern = keys.pattern(&Category::IMAGE_METADATA, ["image", "a*"]);
        let rest = &pattern.as_str()[keys.prefix().len()..];
        // The only glob syntax left is the pattern's own tail; the name's `*` is encoded.
        assert!(rest.ends_with("[:}]*"), "{rest}");
        let head = &rest[..rest.len() - "[:}]*".len()];
        assert!(!head.contains(['*', '?', '[', ']', '\\']), "{head}");
        let own = Entry::ImageLatest("a*").key(&keys);
        let other = Entry::ImageLatest("ab").key(&keys);
        assert!(
            own.as_str()
                .starts_with(&pattern.as_str()[..pattern.as_str().len() - "[:}]*".len()])
        );
        assert!(
            !other
                .as_str()
                .starts_with(&pattern.as_str()[..pattern.as_str().len() - "[:}]*".len()])
        );
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
