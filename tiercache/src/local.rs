//! L1: the in-process tier, and the only module that names moka.
//!
//! It keeps **decoded** values (a [`Value`]: the caller's `T`, boxed), so a hit costs a hash
//! lookup, a few atomic loads and a clone of `T` (an `Arc` clone when `T = Arc<U>`), never a
//! decode. It stays bounded in bytes: each entry weighs what its encoded value does (plus its
//! key), through moka's weigher.
//!
//! moka hands out a clone of every entry it finds. An entry's value is therefore not a shared
//! pointer to `T` (whose clone would add a contended reference count, increment and decrement,
//! to every hit) but `T` itself behind a box that clones `T`: the clone moka makes *is* the
//! caller's value, moved out of its box. A hit costs `T::clone` and one small allocation, the
//! floor of a bare moka `get` of a `T` plus that allocation (measured in `benches/tier.rs`).
//!
//! Whether an entry may be served is not decided here: an entry carries when it expires (at most
//! when its Redis copy does), the tier session it was filled in and the versions of its tags, and
//! `coherence` checks them (and the tier's lease) on every hit, with one reading of the clock.
//! moka itself only drops entries for room and, in front of Redis, after the longest time an
//! entry may live here; an expired entry is dropped when it is read. (moka's per-entry expiry
//! would cost every read a second reading of the clock and more bookkeeping.)

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::key::Pattern;

/// A decoded value of any type, cloned as itself (see the module docs).
pub(crate) trait Value: Send + Sync + 'static {
    /// A boxed clone of the value.
    fn clone_value(&self) -> Box<dyn Value>;
    /// The value, for downcasting.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Clone + Send + Sync + 'static> Value for T {
    fn clone_value(&self) -> Box<dyn Value> {
        Box::new(self.clone())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl Clone for Box<dyn Value> {
    fn clone(&self) -> Self {
        // Through the trait object: `Box<dyn Value>` is itself a `Value`, and its own
        // `clone_value` would box the box.
        (**self).clone_value()
    }
}

/// One stored value and what `coherence` needs to know whether it may still be served.
#[derive(Clone)]
pub(crate) struct Entry {
    /// The decoded value (a `T`).
    pub(crate) value: Box<dyn Value>,
    /// The tier session it was filled in.
    pub(crate) session: u64,
    /// Its tags' stripes and their versions when its read began (see `coherence`); `None` when
    /// it has none.
    pub(crate) tags: Option<Arc<[crate::coherence::TagSeen]>>,
    /// Bytes it stands for: its encoded size.
    pub(crate) weight: u32,
    /// When it expires, on `coherence`'s clock (nanoseconds).
    pub(crate) expires: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("session", &self.session)
            .field("weight", &self.weight)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
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
    /// A tier of at most `capacity_bytes` (keys plus encoded sizes), whose entries moka drops
    /// after `max_ttl` at the latest.
    pub(crate) fn new(capacity_bytes: u64, max_ttl: Option<Duration>) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let mut builder = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(entry.weight)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
        if let Some(ttl) = max_ttl {
            builder = builder.time_to_live(ttl);
        }
        Self {
            entries: builder.build(),
            evictions,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&self, key: &str, entry: Entry) {
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
        // moka's iterator clones each value it yields; they are dropped at once.
        let doomed: Vec<Arc<String>> = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| pattern.matches(key).unwrap_or(true))
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

    fn entry(v: u32, weight: u32) -> Entry {
        Entry {
            value: Box::new(v),
            session: 0,
            tags: None,
            weight,
            expires: u64::MAX,
        }
    }

    fn value(l: &Local, key: &str) -> Option<u32> {
        l.get(key)
            .and_then(|e| e.value.into_any().downcast::<u32>().ok().map(|v| *v))
    }

    #[test]
    fn pattern_removal_drops_matches_only() {
        let l = Local::new(1 << 20, None);
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
    fn entries_go_after_the_longest_time_they_may_live() {
        let l = Local::new(1 << 20, Some(Duration::from_millis(30)));
        l.insert("k", entry(1, 1));
        assert_eq!(value(&l, "k"), Some(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while l.get("k").is_some() {
            assert!(std::time::Instant::now() < deadline, "entry did not expire");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn capacity_is_bounded_by_encoded_size() {
        let l = Local::new(10_000, None);
        for i in 0..100 {
            l.insert(&format!("k{i}"), entry(i, 1000));
        }
        l.run_pending_tasks();
        assert!(l.size_bytes() <= 10_000, "{}", l.size_bytes());
        assert!(l.evictions() > 0 || l.entry_count() <= 10);
    }
}
