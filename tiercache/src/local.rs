//! L1: the in-process tier, and the only module that names moka.
//!
//! It keeps **decoded** values (`Arc<dyn Any>` holding the caller's `T`), so a hit costs a hash
//! lookup, a few atomic loads and a clone of `T` (an `Arc` clone when `T = Arc<U>`), never a
//! decode. It stays bounded in bytes: each entry weighs what its encoded value does (plus its
//! key), through moka's weigher. Each entry expires after its own TTL (at most its Redis copy's,
//! see `coherence`).
//!
//! Whether an entry may be served is not decided here: an entry carries the tier session it was
//! filled in and the versions of its tags, and `coherence` checks both (and the tier's lease) on
//! every hit.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::Expiry;

use crate::key::Pattern;

/// One stored value and what `coherence` needs to know whether it may still be served.
#[derive(Clone)]
pub(crate) struct Entry {
    /// The decoded value (a `T`).
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    /// The tier session it was filled in.
    pub(crate) session: u64,
    /// Its tags as (stripe, version seen when its read began); `None` when it has none.
    pub(crate) tags: Option<Arc<[(u32, u64)]>>,
    /// Bytes it stands for: its encoded size.
    pub(crate) weight: u32,
    /// How long it may live here.
    pub(crate) ttl: Duration,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("session", &self.session)
            .field("weight", &self.weight)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
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

/// The in-process tier.
pub(crate) struct Local {
    entries: moka::sync::Cache<String, Entry>,
    /// Entries dropped to stay within the capacity. Shared with moka's eviction listener.
    evictions: Arc<AtomicU64>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl Local {
    /// A tier of at most `capacity_bytes` (keys plus encoded sizes).
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(entry.weight)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self { entries, evictions }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        self.entries.get(key)
    }

    /// Stores `entry` unless its TTL is zero.
    pub(crate) fn insert(&self, key: &str, entry: Entry) {
        if entry.ttl.is_zero() {
            return;
        }
        self.entries.insert(key.to_owned(), entry);
    }

    /// Invalidates `key`; returns whether it was held.
    pub(crate) fn invalidate(&self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Invalidates every entry `pattern` may match, walking the entries (O(entries), on the writer's
    /// side; moka's lazy invalidation closures would instead pile up and be evaluated on every
    /// read until housekeeping has visited every entry). A pattern this tier cannot match
    /// exactly clears everything: dropping too much costs a Redis read, keeping too much would
    /// serve stale data. Returns how many were dropped (or held, on a clear).
    ///
    /// Entries inserted while the walk runs are not guaranteed to be visited; `coherence` keeps
    /// those from being filled at all.
    pub(crate) fn invalidate_matching(&self, pattern: &Pattern) -> u64 {
        if pattern.matches("").is_none() {
            return self.invalidate_all();
        }
        let doomed: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(key, _)| pattern.matches(key).unwrap_or(true))
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for key in doomed {
            removed += u64::from(self.invalidate(key.as_str()));
        }
        removed
    }

    /// Invalidates everything (moka returns none of the entries held before); returns how many
    /// there were.
    pub(crate) fn invalidate_all(&self) -> u64 {
        // Pending writes applied first, so the count is exact rather than lagging.
        self.entries.run_pending_tasks();
        let held = self.entries.entry_count();
        self.entries.invalidate_all();
        held
    }

    /// Number of entries (approximate: moka applies writes in batches).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Total weight of the entries, in bytes (approximate, like `entry_count`).
    pub(crate) fn size_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Applies moka's pending housekeeping (for exact figures in tests).
    #[cfg(test)]
    pub(crate) fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Category, KeySpace};

    fn entry(v: u32, weight: u32, ttl: Duration) -> Entry {
        Entry {
            value: Arc::new(v),
            session: 0,
            tags: None,
            weight,
            ttl,
        }
    }

    fn value(l: &Local, key: &str) -> Option<u32> {
        l.get(key)
            .and_then(|e| e.value.downcast_ref::<u32>().copied())
    }

    #[test]
    fn pattern_removal_drops_matches_only() {
        let l = Local::new(1 << 20);
        let s = KeySpace::new("t", "ns").unwrap();
        let c = Category::new("images");
        let a = s.key(&c, ["a*"]);
        let b = s.key(&c, ["ab"]);
        l.insert(a.as_str(), entry(1, 1, Duration::from_secs(10)));
        l.insert(b.as_str(), entry(2, 1, Duration::from_secs(10)));
        assert_eq!(l.invalidate_matching(&s.pattern(&c, ["a*"])), 1);
        assert_eq!(value(&l, a.as_str()), None);
        assert_eq!(value(&l, b.as_str()), Some(2));
        l.invalidate_matching(&s.glob("[^x]*"));
        assert_eq!(
            value(&l, b.as_str()),
            None,
            "an unsupported pattern clears all"
        );
    }

    #[test]
    fn entries_expire_with_their_ttl() {
        let l = Local::new(1 << 20);
        l.insert("k", entry(1, 1, Duration::from_millis(30)));
        assert_eq!(value(&l, "k"), Some(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.get("k").is_some() {
            assert!(Instant::now() < deadline, "entry did not expire");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn capacity_is_bounded_by_encoded_size() {
        let l = Local::new(10_000);
        for i in 0..100 {
            l.insert(&format!("k{i}"), entry(i, 1000, Duration::from_secs(60)));
        }
        l.run_pending_tasks();
        assert!(l.size_bytes() <= 10_000, "{}", l.size_bytes());
        assert!(l.evictions() > 0 || l.entry_count() <= 10);
    }
}
