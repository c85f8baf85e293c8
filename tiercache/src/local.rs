//! L1: the in-process tier in front of Redis, and the only module that names moka.
//!
//! A hit here costs a hash lookup and a decode instead of a Redis round trip. It holds the
//! encoded envelope bytes of values read from or written to Redis, bounded by their total size
//! (moka's weigher), each expiring no later than its Redis copy (or the configured maximum,
//! whichever comes first).
//!
//! The tier is only as trustworthy as the invalidation channel that keeps it coherent with other
//! instances (`bus`). It is therefore *live* only while that channel is up: the channel task
//! clears it and marks it dead whenever the channel is lost, and clears it again before marking it
//! live once the channel is back, so an invalidation missed during the gap cannot leave a stale
//! entry behind. The cache also skips it (and clears it after) while the circuit breaker is open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::Expiry;

use crate::key::Pattern;

/// One stored value: its envelope bytes and how long it may live here.
#[derive(Clone, Debug)]
struct Entry {
    bytes: Arc<[u8]>,
    ttl: Duration,
}

/// Expires each entry after its own TTL.
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Settings of the in-process tier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalConfig {
    /// Bound on the total size of the stored values, in bytes.
    pub(crate) capacity_bytes: u64,
    /// Longest time an entry stays here, whatever its Redis TTL.
    pub(crate) max_ttl: Duration,
}

/// The in-process tier.
pub(crate) struct Local {
    entries: moka::sync::Cache<String, Entry>,
    max_ttl: Duration,
    /// Whether the invalidation channel is up (set by the channel task).
    live: AtomicBool,
    /// The breaker openings this tier has been cleared for (see `Cache::local`).
    trips_seen: AtomicU64,
    /// Entries dropped to stay within the capacity.
    evictions: Arc<AtomicU64>,
    /// Times the invalidation channel was lost.
    channel_losses: AtomicU64,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("entries", &self.entries.entry_count())
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

impl Local {
    pub(crate) fn new(config: LocalConfig) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.capacity_bytes)
            // The key is stored too; a value over 4 GiB would not be cached at all.
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self {
            entries,
            max_ttl: config.max_ttl,
            live: AtomicBool::new(false),
            trips_seen: AtomicU64::new(0),
            evictions,
            channel_losses: AtomicU64::new(0),
        }
    }

    /// Whether the tier may be used (its invalidation channel is up).
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Marks the tier usable (the caller clears it first) or not.
    pub(crate) fn set_live(&self, live: bool) {
        if !self.live.swap(live, Ordering::SeqCst) || live {
            return;
        }
        self.channel_losses.fetch_add(1, Ordering::Relaxed);
    }

    /// Times the tier went from live to dead.
    pub(crate) fn channel_losses(&self) -> u64 {
        self.channel_losses.load(Ordering::Relaxed)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.entries.get(key).map(|e| e.bytes)
    }

    /// Stores `bytes` for at most `ttl` (capped by the configured maximum).
    pub(crate) fn insert(&self, key: &str, bytes: Arc<[u8]>, ttl: Duration) {
        let ttl = ttl.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        self.entries.insert(key.to_owned(), Entry { bytes, ttl });
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Drops every entry `pattern` may match, walking the entries (O(entries), on the writer's
    /// side; moka's lazy invalidation closures would instead pile up and be evaluated on every
    /// read until housekeeping has visited every entry). A pattern this tier cannot match exactly
    /// clears everything: dropping too much costs a Redis read, keeping too much would serve
    /// stale data.
    ///
    /// Entries inserted while the walk runs are not guaranteed to be visited; the epoch (advanced
    /// before this is called) keeps stale ones out.
    pub(crate) fn remove_matching(&self, pattern: &Pattern) {
        if pattern.matches("").is_none() {
            self.clear();
            return;
        }
        let doomed: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(key, _)| pattern.matches(key).unwrap_or(true))
            .map(|(key, _)| key)
            .collect();
        for key in doomed {
            self.entries.invalidate(key.as_str());
        }
    }

    pub(crate) fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// The breaker openings the tier was last cleared for.
    pub(crate) fn trips_seen(&self) -> u64 {
        self.trips_seen.load(Ordering::SeqCst)
    }

    /// Records that the tier was cleared after `trips` openings.
    pub(crate) fn saw_trips(&self, trips: u64) {
        self.trips_seen.fetch_max(trips, Ordering::SeqCst);
    }

    /// Number of entries (approximate: moka applies writes in batches).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Total size of the entries, in bytes (approximate, like `entry_count`).
    pub(crate) fn size_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Category, KeySpace};

    fn local() -> Local {
        Local::new(LocalConfig {
            capacity_bytes: 1 << 20,
            max_ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn pattern_removal_drops_matches_only() {
        let l = local();
        let s = KeySpace::new("t", "ns").unwrap();
        let a = s.key(&Category::IMAGE_METADATA, ["a*"]);
        let b = s.key(&Category::IMAGE_METADATA, ["ab"]);
        l.insert(a.as_str(), Arc::from(&b"1"[..]), Duration::from_secs(10));
        l.insert(b.as_str(), Arc::from(&b"2"[..]), Duration::from_secs(10));
        l.remove_matching(&s.pattern(&Category::IMAGE_METADATA, ["a*"]));
        assert!(l.get(a.as_str()).is_none());
        assert_eq!(l.get(b.as_str()).as_deref(), Some(&b"2"[..]));
        l.remove_matching(&s.glob("[^x]*"));
        assert!(
            l.get(b.as_str()).is_none(),
            "an unsupported pattern clears all"
        );
    }

    #[test]
    fn entries_expire_with_their_ttl() {
        let l = local();
        l.insert("k", Arc::from(&b"v"[..]), Duration::from_millis(30));
        assert!(l.get("k").is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.get("k").is_some() {
            assert!(Instant::now() < deadline, "entry did not expire");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn capacity_is_bounded_in_bytes() {
        let l = Local::new(LocalConfig {
            capacity_bytes: 10_000,
            max_ttl: Duration::from_secs(60),
        });
        for i in 0..100 {
            l.insert(
                &format!("k{i}"),
                Arc::from(vec![0u8; 1000]),
                Duration::from_secs(60),
            );
        }
        l.entries.run_pending_tasks();
        assert!(l.size_bytes() <= 10_000, "{}", l.size_bytes());
        assert!(l.evictions() > 0 || l.entry_count() <= 10);
    }
}
