//! L1: the in-process tier, and the only module that names moka.
//!
//! It keeps **decoded** values (the caller's `T`, as `dyn Any`), so a hit costs a hash lookup,
//! a few atomic loads and a clone of `T` (an `Arc` clone when `T = Arc<U>`), never a decode. It
//! stays bounded in bytes: each entry weighs what its encoded value does (plus its key), through
//! moka's weigher.
//!
//! moka hands out a clone of every entry it finds, so an entry is held behind one `Arc`: a hit
//! clones that pointer (one reference count, however many tags the entry carries), reads the
//! entry's expiry, session and tag versions through it, and clones `T` out of it (`T` is stored
//! in the entry's own allocation). No allocation, and one reference count more than a bare moka
//! `get` of an `Arc` (measured in `benches/tier.rs`).
//!
//! Whether an entry may be served is not decided here: an entry carries when it expires (at most
//! when its Redis copy does, and in front of Redis after the longest time an entry may live
//! here), the tier session it was filled in and the versions of its tags, and `coherence` checks
//! them (and the tier's lease) on every hit, with one reading of its clock. moka itself only
//! drops entries for room: its own expiry would cost every hit about 15 ns more (a second
//! reading of a clock and its bookkeeping; measured with `benches/tier.rs`), checking what
//! `coherence` already checks. An expired entry is dropped when it is read, and
//! [`Local::sweep`] (every [`SWEEP_EVERY`], from a task of the cache) drops the ones nobody
//! reads, so they do not hold the tier's room until they are evicted.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::key::Pattern;

/// One stored value and what `coherence` needs to know whether it may still be served. The
/// tier holds entries of every value type as `Arc<Entry>`: the value, last, is unsized to
/// `dyn Any`, so it lives in the entry's own allocation (one pointer from moka's entry to the
/// value, no second allocation).
pub(crate) struct Entry<V: ?Sized = dyn Any + Send + Sync> {
    /// The tier session it was filled in.
    pub(crate) session: u64,
    /// Its tags' stripes and their versions when its read began (see `coherence`); `None` when
    /// it has none.
    pub(crate) tags: Option<Box<[crate::coherence::TagSeen]>>,
    /// Bytes it stands for: its encoded size.
    pub(crate) weight: u32,
    /// When it expires, on `coherence`'s clock (nanoseconds).
    pub(crate) expires: u64,
    /// The decoded value (a `T`, or encoded bytes).
    pub(crate) value: V,
}

impl<V: ?Sized> std::fmt::Debug for Entry<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("session", &self.session)
            .field("weight", &self.weight)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// How often [`Local::sweep`] runs.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The in-process tier.
pub(crate) struct Local {
    entries: moka::sync::Cache<String, Arc<Entry>>,
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
            .weigher(|key: &String, entry: &Arc<Entry>| {
                u32::try_from(key.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(entry.weight)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self { entries, evictions }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>) {
        self.entries.insert(key.to_owned(), entry);
    }

    /// Invalidates `key`; returns whether it was held. (moka's `remove` would clone the value
    /// to return it.)
    pub(crate) fn invalidate(&self, key: &str) -> bool {
        let held = self.entries.contains_key(key);
        self.entries.invalidate(key);
        held
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
        self.invalidate_where(|key, _| pattern.matches(key).unwrap_or(true))
    }

    /// Drops every entry that expired by `now` (on `coherence`'s clock); returns how many. An
    /// entry filled again between the walk and its removal goes too: a miss, never a stale read.
    pub(crate) fn sweep(&self, now: u64) -> u64 {
        self.invalidate_where(|_, entry| entry.expires <= now)
    }

    /// Walks the entries and invalidates those `doomed` picks; returns how many were held.
    fn invalidate_where(&self, doomed: impl Fn(&str, &Entry) -> bool) -> u64 {
        // moka's iterator hands out each key and a clone of each entry's `Arc`.
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(key, entry)| doomed(key, entry))
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .map(|key| u64::from(self.invalidate(key.as_str())))
            .sum()
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

    fn entry(v: u32, weight: u32) -> Arc<Entry> {
        expiring(v, weight, u64::MAX)
    }

    fn expiring(v: u32, weight: u32, expires: u64) -> Arc<Entry> {
        Arc::new(Entry {
            session: 0,
            tags: None,
            weight,
            expires,
            value: v,
        })
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
        l.insert(a.as_str(), entry(1, 1));
        l.insert(b.as_str(), entry(2, 1));
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
    fn a_sweep_drops_the_expired_entries_only() {
        let l = Local::new(1 << 20);
        l.insert("old", expiring(1, 1, 100));
        l.insert("due", expiring(2, 1, 200));
        l.insert("new", expiring(3, 1, 201));
        assert_eq!(l.sweep(200), 2);
        assert_eq!(value(&l, "old"), None);
        assert_eq!(value(&l, "due"), None);
        assert_eq!(value(&l, "new"), Some(3));
        assert_eq!(l.sweep(200), 0);
    }

    #[test]
    fn capacity_is_bounded_by_encoded_size() {
        let l = Local::new(10_000);
        for i in 0..100 {
            l.insert(&format!("k{i}"), entry(i, 1000));
        }
        l.run_pending_tasks();
        assert!(l.size_bytes() <= 10_000, "{}", l.size_bytes());
        assert!(l.evictions() > 0 || l.entry_count() <= 10);
    }
}
