//! The background recovery task: reconnects the cache to Redis after an outage.
//!
//! It sleeps until the circuit breaker opens, then PINGs Redis every cool-down (default 250 ms).
//! When the cache's connection has not answered within a head start (the op timeout, at most
//! 50 ms), it PINGs on a new connection too, which replaces the old one if it answers first: the
//! old one's peer vanished without a reset (see `Remote::probe_fresh`). After a refused login
//! (an ACL user switched off, a password being rotated) it replaces the connection at once and
//! PINGs again: the driver keeps a failed login as its connection for good (see
//! `remote::kept_by_the_manager`), so without this the cache would stay off until the process
//! restarts. Hits resume within a cool-down of the login working. When Redis answers, it replays
//! the changes that were lost during the outage (see `invalidation`), waits one cool-down and one
//! head start more, plus 100 ms, so that the other instances that lost Redis too have replayed
//! theirs, and only then closes the breaker, so the cache never serves a value that an
//! acknowledged write invalidated (unless that write's instance is still cut off: see
//! `coherence`). With the defaults the first hit after Redis returns follows within about
//! 700 ms.
//!
//! The task is owned by a [`TaskGuard`] inside the cache: dropping the last cache handle aborts
//! it, so nothing outlives the cache (or leaks from one test into the next).

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::coherence::Coherence;
use crate::error::Result;
use crate::memory;
use crate::remote::{Remote, kept_by_the_manager};

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

/// Added to a cool-down and a head start after Redis answers again, before the breaker closes:
/// time for the other instances' handshakes and replays (see `recover_forever`).
const SETTLE_MARGIN: Duration = Duration::from_millis(100);

/// How long the probe on the cache's own connection goes alone before a new connection is
/// tried too: the op timeout, at most 50 ms (a generous op timeout must not slow every
/// recovery: the settling wait below includes this).
fn head_start(remote: &Remote) -> Duration {
    remote.op_timeout.min(MAX_HEAD_START)
}

/// The longest [`head_start`].
const MAX_HEAD_START: Duration = Duration::from_millis(50);

/// A PING on the cache's connection; if it has not answered within its [`head_start`], a
/// PING on a new connection too, and the first answer wins (a new connection that answers
/// replaces the old one: see `Remote::probe_fresh`). Racing the two keeps the recovery after a
/// partition that lost the connection's state as short as after any other fault: the old
/// connection never answers again, and waiting for its probe to time out first would add a
/// connect timeout to every recovery.
async fn probe_own_or_fresh(remote: &Remote) -> Result<Duration> {
    let own = remote.probe();
    let mut own = pin!(own);
    if let Ok(probed) = tokio::time::timeout(head_start(remote), &mut own).await {
        return probed;
    }
    let fresh = remote.probe_fresh();
    let mut fresh = pin!(fresh);
    tokio::select! {
        probed = &mut own => match probed {
            Ok(rtt) => Ok(rtt),
            Err(_) => fresh.await,
        },
        probed = &mut fresh => match probed {
            Ok(rtt) => {
                tracing::warn!(addr = %remote.addr, "redis answered a new connection but not its own; the new one replaces it");
                Ok(rtt)
            }
            Err(_) => own.await,
        },
    }
}

async fn recover_forever(coherence: Arc<Coherence>, cooldown: Duration) {
    let remote = &coherence.remote;
    loop {
        remote.breaker.wait_open().await;
        let outage = Instant::now();
        let mut refused_logged = false;
        loop {
            tokio::time::sleep(cooldown).await;
            let probed = match probe_own_or_fresh(remote).await {
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
            let Ok(rtt) = probed else {
                continue;
            };
            if coherence.replay().await.is_err() {
                continue;
            }
            // Other instances that lost Redis with this one may owe changes too (a write they
            // acknowledged during the outage), replayed when *their* probe succeeds: within a
            // cool-down and a head start of Redis returning (the head start of the probe on
            // the old connection before a new one is tried). Reading Redis before then could
            // serve what such a change removes, so the breaker stays open (reads go to the
            // source) that much longer, plus a margin for their new connection's handshake and
            // their replay's round trip.
            tokio::time::sleep(cooldown + head_start(remote) + SETTLE_MARGIN).await;
            if coherence.replay().await.is_err() {
                continue;
            }
            remote.breaker.close();
            remote.drop_candidate();
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
