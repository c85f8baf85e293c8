//! The clock of the in-process tier: read on every tier hit (for the tier's lease and the
//! entry's expiry), so it must be cheap, and it must never make a lease look longer than it is.
//!
//! On Linux it is `CLOCK_MONOTONIC_COARSE` (through rustix, from the vDSO): a few nanoseconds a
//! reading instead of the few tens that `Instant::now` costs on a virtual machine, but it only
//! moves once per kernel tick, so it may lag real time by up to its resolution (1–4 ms). Stamps
//! taken with it are therefore at most as late as the truth, which only shortens a lease, and
//! [`Clock::lag`] is what a check of "now" against a deadline must allow for. Elsewhere it is
//! `Instant`, with no lag.

use std::time::Duration;
#[cfg(not(target_os = "linux"))]
use std::time::Instant;

/// Nanoseconds on a monotonic clock, cheap to read.
#[derive(Debug)]
pub(crate) struct Clock {
    #[cfg(not(target_os = "linux"))]
    base: Instant,
    /// How far a reading may trail real time.
    lag: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            let res = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
            let lag = nanos(res.tv_sec, res.tv_nsec)
                // A resolution the kernel cannot report is taken as a generous tick.
                .clamp(1, 10_000_000);
            Self { lag }
        }
        #[cfg(not(target_os = "linux"))]
        Self {
            base: Instant::now(),
            lag: 0,
        }
    }

    /// The time now, in nanoseconds since an arbitrary start (never 0).
    pub(crate) fn now(&self) -> u64 {
        #[cfg(target_os = "linux")]
        {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
            nanos(t.tv_sec, t.tv_nsec).max(1)
        }
        #[cfg(not(target_os = "linux"))]
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX / 2)
            .max(1)
    }

    /// How far [`now`](Self::now) may trail real time, in nanoseconds.
    pub(crate) fn lag(&self) -> u64 {
        self.lag
    }

    /// `d` in nanoseconds, saturating.
    pub(crate) fn span(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4)
    }
}

#[cfg(target_os = "linux")]
fn nanos(secs: i64, nsecs: i64) -> u64 {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nsecs = u64::try_from(nsecs).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_forward_and_trails_real_time_by_at_most_its_lag() {
        let c = Clock::new();
        assert!(c.lag() <= 10_000_000);
        let start = std::time::Instant::now();
        let first = c.now();
        std::thread::sleep(Duration::from_millis(30));
        let second = c.now();
        let real = Clock::span(start.elapsed());
        assert!(second >= first);
        assert!(
            second - first + 2 * c.lag() >= real,
            "{} ns on the clock, {real} ns real",
            second - first
        );
    }
}
