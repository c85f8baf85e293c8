//! The circuit breaker in front of Redis.
//!
//! After `threshold` consecutive connection failures or timeouts the breaker opens: cache calls
//! stop reaching Redis and cost a relaxed atomic load instead of a timeout. Callers never probe a
//! dead Redis themselves; the cache's background task (see `Cache`'s guard) waits for the breaker
//! to open, then PINGs Redis every cool-down until it answers, and only then closes it. This keeps
//! every caller's latency bounded by the per-operation timeout, at most `threshold` times per
//! outage, and makes recovery independent of traffic.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

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
    /// When the current streak of failures began, in nanoseconds since `base` plus one (0: no
    /// streak). A writer whose change failed uses it to tell how long Redis has been failing.
    failing_since: AtomicU64,
    base: Instant,
}

impl Breaker {
    /// A breaker that opens after `threshold` consecutive failures, starting `open` or closed.
    pub(crate) fn new(threshold: u32, open: bool) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(open),
            opened: Notify::new(),
            failing_since: AtomicU64::new(0),
            base: Instant::now(),
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
            self.failing_since.store(0, Relaxed);
        }
    }

    /// Counts a failure; returns true if this one opened the breaker.
    pub(crate) fn record_failure(&self) -> bool {
        let before = self.failures.fetch_add(1, Relaxed);
        if before == 0 {
            let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            let _ = self
                .failing_since
                .compare_exchange(0, now + 1, Relaxed, Relaxed);
        }
        before.saturating_add(1) >= self.threshold && self.trip()
    }

    /// When the current streak of failed calls began, if one is under way.
    pub(crate) fn failing_since(&self) -> Option<Instant> {
        match self.failing_since.load(Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }

    /// Opens the breaker now (for failures that make Redis untrustworthy at once, such as a lost
    /// invalidation). Returns true if it was closed.
    pub(crate) fn trip(&self) -> bool {
        let was_closed = !self.open.swap(true, Relaxed);
        if was_closed {
            self.opened.notify_one();
        }
        was_closed
    }

    /// Closes the breaker after a successful probe.
    pub(crate) fn close(&self) {
        self.failures.store(0, Relaxed);
        self.failing_since.store(0, Relaxed);
        self.open.store(false, Relaxed);
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
        assert!(b.failing_since().is_some());
        b.close();
        assert!(b.is_closed());
        assert!(b.failing_since().is_none());
        assert!(!b.record_failure());
        let since = b.failing_since().unwrap();
        assert!(!b.record_failure());
        assert_eq!(b.failing_since(), Some(since), "the streak keeps its start");
        b.record_success();
        assert!(b.failing_since().is_none());
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
