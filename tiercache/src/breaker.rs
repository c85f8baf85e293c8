//! The circuit breaker in front of Redis.
//!
//! After `threshold` consecutive connection failures or timeouts the breaker opens: cache calls
//! stop reaching Redis and cost a relaxed atomic load instead of a timeout. Callers never probe a
//! dead Redis themselves; the cache's background task (see `Cache`'s guard) waits for the breaker
//! to open, then PINGs Redis every cool-down until it answers, and only then closes it. This keeps
//! every caller's latency bounded by the per-operation timeout, at most `threshold` times per
//! outage, and makes recovery independent of traffic.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

use tokio::sync::Notify;

/// Breaker state shared by every clone of a cache and its probe task.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    /// Consecutive failures; reset by any success.
    failures: AtomicU32,
    /// Relaxed is enough: a caller that reads a stale value makes at most one extra (bounded)
    /// call or skips one call.
    open: AtomicBool,
    /// Wakes the probe task when the breaker opens. `Notify` keeps a permit, so an opening that
    /// happens before the task waits is not lost.
    opened: Notify,
    /// How many times it opened; the in-process tier is cleared when this moves.
    trips: AtomicU64,
}

impl Breaker {
    /// A breaker that opens after `threshold` consecutive failures, starting `open` or closed.
    pub(crate) fn new(threshold: u32, open: bool) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(open),
            opened: Notify::new(),
            trips: AtomicU64::new(u64::from(open)),
        }
    }

    /// Whether calls may go to Redis.
    pub(crate) fn is_closed(&self) -> bool {
        !self.open.load(Relaxed)
    }

    pub(crate) fn record_success(&self) {
        // Read first: on the hot path the counter is almost always 0 and a plain load keeps the
        // cache line shared between cores.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// Counts a failure; returns true if this one opened the breaker.
    pub(crate) fn record_failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        n >= self.threshold && self.trip()
    }

    /// Opens the breaker now (for failures that make Redis untrustworthy at once, such as a lost
    /// invalidation). Returns true if it was closed.
    pub(crate) fn trip(&self) -> bool {
        let was_closed = !self.open.swap(true, Relaxed);
        if was_closed {
            self.trips.fetch_add(1, SeqCst);
            self.opened.notify_one();
        }
        was_closed
    }

    /// Closes the breaker after a successful probe.
    pub(crate) fn close(&self) {
        self.failures.store(0, Relaxed);
        self.open.store(false, Relaxed);
    }

    /// How many times the breaker has opened.
    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(SeqCst)
    }

    /// Resolves once the breaker is open.
    pub(crate) async fn wait_open(&self) {
        while self.is_closed() {
            self.opened.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = Breaker::new(3, false);
        assert!(!b.record_failure());
        b.record_success();
        assert!(!b.record_failure());
        assert!(!b.record_failure());
        assert!(b.is_closed());
        assert!(b.record_failure());
        assert!(!b.is_closed());
        assert!(!b.record_failure(), "only the opening failure reports it");
        b.close();
        assert!(b.is_closed());
    }

    #[tokio::test]
    async fn wait_open_sees_a_trip_that_happened_first() {
        let b = Breaker::new(1, false);
        b.trip();
        tokio::time::timeout(std::time::Duration::from_secs(1), b.wait_open())
            .await
            .unwrap();
    }
}
