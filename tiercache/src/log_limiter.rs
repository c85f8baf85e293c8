//! Rate limiting for outage logs.
//!
//! When Redis goes away every cache call fails the same way; logging each one would flood the log
//! exactly when an operator needs to read it. A [`LogLimiter`] lets one message through per
//! interval and reports how many it held back in between.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Lets one event through per interval; lock-free, shared by all callers.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` before which events are suppressed.
    next_allowed_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            epoch: Instant::now(),
            next_allowed_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this event should be logged, `n` being how many were suppressed since the
    /// last one that was; `None` if it should be dropped.
    pub(crate) fn check(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_allowed_ms.load(Relaxed);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_allowed_ms
                .compare_exchange(next, now.saturating_add(interval), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_with_a_count_of_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        for _ in 0..99 {
            assert_eq!(l.check(), None);
        }
        let l2 = LogLimiter::new(Duration::ZERO);
        assert_eq!(l2.check(), Some(0));
        assert_eq!(l2.check(), Some(0));
    }
}
