//! The invalidation epoch: orders fills against invalidations.
//!
//! Every change that may make cached values stale (an invalidation or insert by this cache, a
//! notice from another instance, a clear of the in-process tier) *advances* the epoch before it
//! drops entries. A read notes the epoch before it asks Redis (or runs its loader), and may store
//! what it got only if the epoch has not moved since: the store happens
//! [`if_current`](Epoch::if_current), under the read side of a lock whose write side every
//! advance takes. So a store either completes before an advance (and the drop that follows the
//! advance removes it) or sees the advance and stores nothing; no other thread can observe the
//! stored value in between.
//!
//! The lock is a std one: both sides hold it for a few instructions, never across an `.await`.
//! (Stores into Redis are ordered by the cache's async `fill_guard` instead, since they await.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

/// A counter of stale-making changes, with the lock that orders stores against them.
#[derive(Debug, Default)]
pub(crate) struct Epoch {
    value: AtomicU64,
    gate: RwLock<()>,
}

impl Epoch {
    /// The current epoch, to note before a read.
    pub(crate) fn current(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    /// Marks a stale-making change. The caller drops the affected entries afterwards.
    pub(crate) fn advance(&self) {
        let _exclusive = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.value.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs `store` if the epoch is still `noted`, atomically with respect to [`advance`](
    /// Self::advance). Returns whether it ran.
    pub(crate) fn if_current(&self, noted: u64, store: impl FnOnce()) -> bool {
        let _shared = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if self.value.load(Ordering::SeqCst) != noted {
            return false;
        }
        store();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_after_an_advance_does_not_run() {
        let e = Epoch::default();
        let noted = e.current();
        assert!(e.if_current(noted, || {}));
        e.advance();
        let mut ran = false;
        assert!(!e.if_current(noted, || ran = true));
        assert!(!ran);
        assert!(e.if_current(e.current(), || {}));
    }
}
