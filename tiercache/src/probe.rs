//! The background recovery task: reconnects the cache to Redis after an outage.
//!
//! It sleeps until the circuit breaker opens, then PINGs Redis every cool-down (default 250 ms).
//! After three timeouts in a row it replaces the connection, whose peer may have vanished
//! without a reset. After a refused login (an ACL user switched off, a password being rotated)
//! it replaces the connection at once and PINGs again: the driver keeps a failed login as its
//! connection for good (see `remote::kept_by_the_manager`), so without this the cache would
//! stay off until the process restarts. Hits resume within a cool-down of the login working.
//! When Redis answers, it replays the changes that were lost during the outage (see
//! `invalidation`), waits one cool-down more (plus 100 ms) so that the other instances that
//! lost Redis too have replayed theirs, and only then closes the breaker, so the cache never
//! serves a value that an acknowledged write invalidated (unless that write's instance is still
//! cut off: see `coherence`). With the defaults the first hit after Redis returns follows within
//! about 650 ms.
//!
//! The task is owned by a [`TaskGuard`] inside the cache: dropping the last cache handle aborts
//! it, so nothing outlives the cache (or leaks from one test into the next).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::coherence::Coherence;
use crate::memory;
use crate::remote::kept_by_the_manager;

/// Aborts the task it holds when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(JoinHandle<()>);

impl TaskGuard {
    pub(crate) fn new(task: JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the recovery task.
pub(crate) fn spawn(coherence: Arc<Coherence>, cooldown: Duration) -> TaskGuard {
    TaskGuard(tokio::spawn(recover_forever(coherence, cooldown)))
}

/// Added to a cool-down after Redis answers again, before the breaker closes: time for the
/// other instances' replays (see `recover_forever`).
const SETTLE_MARGIN: Duration = Duration::from_millis(100);

/// Probe timeouts in a row after which the connection is replaced: its peer may be gone
/// without a reset, and the connection manager would wait for TCP to give up.
const RECONNECT_AFTER_TIMEOUTS: u32 = 3;

async fn recover_forever(coherence: Arc<Coherence>, cooldown: Duration) {
    let remote = &coherence.remote;
    loop {
        remote.breaker.wait_open().await;
        let outage = Instant::now();
        let mut timeouts = 0;
        let mut refused_logged = false;
        loop {
            tokio::time::sleep(cooldown).await;
            let probed = match remote.probe().await {
                Err(e) if kept_by_the_manager(&e) => {
                    if !refused_logged {
                        refused_logged = true;
                        tracing::warn!(addr = %remote.addr, error = %e, "redis refused the connection; retrying on a new one every cool-down");
                    }
                    match remote.reconnect() {
                        Ok(()) => remote.probe().await,
                        Err(_) => Err(e),
                    }
                }
                probed => probed,
            };
            let rtt = match probed {
                Ok(rtt) => rtt,
                Err(e) => {
                    timeouts = if e.is_timeout() { timeouts + 1 } else { 0 };
                    if timeouts >= RECONNECT_AFTER_TIMEOUTS {
                        timeouts = 0;
                        tracing::warn!(addr = %remote.addr, "redis does not answer on its connection; opening a new one");
                        if let Err(e) = remote.reconnect() {
                            tracing::warn!(addr = %remote.addr, error = %e, "cannot create a new redis connection");
                        }
                    }
                    continue;
                }
            };
            if coherence.replay().await.is_err() {
                continue;
            }
            // Other instances that lost Redis with this one may owe changes too (a write they
            // acknowledged during the outage), replayed when *their* probe succeeds: within a
            // cool-down of Redis returning, as here. Reading Redis before then could serve what
            // such a change removes, so the breaker stays open (reads go to the source) for one
            // cool-down more, plus a margin for their replay's round trip.
            tokio::time::sleep(cooldown + SETTLE_MARGIN).await;
            if coherence.replay().await.is_err() {
                continue;
            }
            remote.breaker.close();
            // Changes recorded while we were closing are applied now; callers that record one
            // after this point see the breaker closed and apply it themselves.
            if coherence.owes() && coherence.replay().await.is_err() {
                if remote.breaker.trip() {
                    coherence.counters.breaker_trip();
                }
                continue;
            }
            tracing::info!(
                addr = %remote.addr,
                rtt_us = rtt.as_micros() as u64,
                outage_ms = outage.elapsed().as_millis() as u64,
                "redis answers again; circuit breaker closed"
            );
            // If Redis was away at start-up, this is the cache's first connection.
            memory::check_settings(remote).await;
            break;
        }
    }
}
