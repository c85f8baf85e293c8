//! The invalidation channel: keeps the in-process tiers of every instance coherent.
//!
//! Every cache publishes each invalidation, clear and explicit insert, after it reached Redis, on
//! one Redis pub/sub channel per namespace (`{env}:{namespace}:__invalidations`) as a small JSON
//! [`Notice`]; caches without an in-process tier publish too, so that a writer configured without
//! one (a batch job, an older deployment) still reaches the tiers of the others. Each cache with
//! a tier subscribes, and drops the named entries from it after advancing its epoch, so that a
//! read in flight there does not put a value the notice made stale back into the tier. (Redis
//! itself is protected by the invalidation generation, see `generation`.)
//!
//! Redis pub/sub delivers at most once, so the channel task treats any doubt as loss:
//! - the subscription connection closes (Redis restarted, `CLIENT KILL`, output buffer overflow),
//! - or this instance's own heartbeat, published each [`HEARTBEAT`] through its command
//!   connection, has not come back for [`MISSED_HEARTBEATS`] periods (a subscription that silently
//!   stopped delivering, or one that reaches another server than the commands do).
//!
//! On loss the tier is marked dead and cleared, and stays dead until a new subscription is up;
//! it is cleared once more before it is marked live again, so nothing cached before or during the
//! gap survives it.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;
use crate::error::Result;
use crate::key::{KeySpace, Pattern};
use crate::local::Local;
use crate::log_limiter::LogLimiter;
use crate::probe::TaskGuard;
use crate::remote::Remote;

/// How often each instance publishes a heartbeat on the channel.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Heartbeat periods without any message after which the channel counts as lost.
pub const MISSED_HEARTBEATS: u32 = 3;

/// What goes over the channel. A heartbeat is a notice that names nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Notice {
    /// The sending instance (its own notices are not applied twice).
    from: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    clear: bool,
}

/// This instance's end of the channel.
#[derive(Debug)]
pub(crate) struct Bus {
    channel: String,
    /// Random per cache, so two caches in one process are two instances.
    id: u64,
}

impl Bus {
    pub(crate) fn new(keys: &KeySpace) -> Self {
        Self {
            channel: format!("{}__invalidations", keys.prefix()),
            id: fastrand::u64(..),
        }
    }

    fn encode(&self, keys: &[&str], patterns: &[&Pattern], clear: bool) -> Vec<u8> {
        let notice = Notice {
            from: self.id,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            patterns: patterns.iter().map(|p| p.as_str().to_owned()).collect(),
            clear,
        };
        // Serializing strings and bools to JSON cannot fail.
        serde_json::to_vec(&notice).unwrap_or_default()
    }

    /// Tells the other instances to drop `keys`, everything matching `patterns`, or (`clear`)
    /// everything. `guarded: false` ignores the breaker (for replays during recovery).
    pub(crate) async fn publish(
        &self,
        remote: &Remote,
        keys: &[&str],
        patterns: &[&Pattern],
        clear: bool,
        guarded: bool,
    ) -> Result<()> {
        let payload = self.encode(keys, patterns, clear);
        remote.publish(&self.channel, &payload, guarded).await
    }

    /// Applies a notice from another instance; a message that does not parse clears the tier.
    /// Returns whether it was this instance's own.
    fn apply(&self, payload: &[u8], local: &Local, epoch: &Epoch) -> bool {
        let notice = match serde_json::from_slice::<Notice>(payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message on the invalidation channel; clearing the in-process tier");
                drop_all(local, epoch);
                return false;
            }
        };
        if notice.from == self.id {
            return true;
        }
        if notice.keys.is_empty() && notice.patterns.is_empty() && !notice.clear {
            return false;
        }
        // Before the entries go: a read that asked Redis before this notice must not put its
        // value back (see `epoch`).
        epoch.advance();
        if notice.clear {
            local.clear();
        }
        for key in &notice.keys {
            local.remove(key);
        }
        for pattern in notice.patterns {
            local.remove_matching(&Pattern::from_wire(pattern));
        }
        tracing::debug!(
            from = notice.from,
            clear = notice.clear,
            "applied an invalidation from another instance"
        );
        false
    }
}

/// Clears the tier, after advancing the epoch so that reads in flight do not refill it.
fn drop_all(local: &Local, epoch: &Epoch) {
    epoch.advance();
    local.clear();
}

/// Starts the channel task.
pub(crate) fn spawn(
    bus: Arc<Bus>,
    remote: Arc<Remote>,
    local: Arc<Local>,
    epoch: Arc<Epoch>,
    retry: Duration,
) -> TaskGuard {
    TaskGuard::new(tokio::spawn(run(bus, remote, local, epoch, retry)))
}

async fn run(
    bus: Arc<Bus>,
    remote: Arc<Remote>,
    local: Arc<Local>,
    epoch: Arc<Epoch>,
    retry: Duration,
) {
    let failures = LogLimiter::new(Duration::from_secs(30));
    loop {
        let stream = match remote.subscribe(&bus.channel).await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(suppressed) = failures.check() {
                    tracing::warn!(channel = %bus.channel, error = %e, suppressed, "cannot subscribe to the invalidation channel; the in-process tier stays off");
                }
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        drop_all(&local, &epoch);
        local.set_live(true);
        tracing::info!(channel = %bus.channel, "invalidation channel up; in-process tier on");
        let why = listen(&bus, &remote, &local, &epoch, stream).await;
        local.set_live(false);
        drop_all(&local, &epoch);
        tracing::warn!(channel = %bus.channel, reason = why, "invalidation channel lost; in-process tier cleared and off until it is back");
        tokio::time::sleep(retry).await;
    }
}

/// Applies notices until the channel is lost; returns why it counts as lost.
async fn listen(
    bus: &Bus,
    remote: &Remote,
    local: &Local,
    epoch: &Epoch,
    stream: impl futures_util::Stream<Item = Vec<u8>>,
) -> &'static str {
    let mut stream = pin!(stream);
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only this instance's own messages prove the path from its commands to its subscription.
    let mut last_heard = Instant::now();
    let silence = HEARTBEAT * MISSED_HEARTBEATS;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(payload) => {
                    if bus.apply(&payload, local, epoch) {
                        last_heard = Instant::now();
                    }
                }
                None => return "the subscription connection closed",
            },
            _ = beat.tick() => {
                if !remote.breaker.is_closed() {
                    // Nobody can publish (the tier is unused meanwhile, and cleared when the
                    // breaker closes); silence now says nothing about the channel.
                    last_heard = Instant::now();
                    continue;
                }
                if last_heard.elapsed() > silence {
                    return "this instance's own heartbeat did not come back for 3 periods";
                }
                let _ = bus.publish(remote, &[], &[], false, true).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Category;
    use crate::local::LocalConfig;

    #[test]
    fn notices_from_others_drop_entries_and_bump_the_epoch() {
        let keys = KeySpace::new("t", "ns").unwrap();
        let (me, other) = (Bus::new(&keys), Bus::new(&keys));
        let local = Local::new(LocalConfig {
            capacity_bytes: 1 << 20,
            max_ttl: Duration::from_secs(60),
        });
        let epoch = Epoch::default();
        let a = keys.key(&Category::SESSIONS, ["a"]);
        let b = keys.key(&Category::SESSIONS, ["b"]);
        for k in [&a, &b] {
            local.insert(k.as_str(), Arc::from(&b"v"[..]), Duration::from_secs(60));
        }
        assert!(me.apply(&me.encode(&[a.as_str()], &[], false), &local, &epoch));
        assert!(
            local.get(a.as_str()).is_some(),
            "own notices are not re-applied"
        );
        assert_eq!(epoch.current(), 0);
        assert!(!me.apply(&other.encode(&[], &[], false), &local, &epoch));
        assert_eq!(epoch.current(), 0, "a heartbeat changes nothing");
        me.apply(&other.encode(&[a.as_str()], &[], false), &local, &epoch);
        assert!(local.get(a.as_str()).is_none());
        assert!(local.get(b.as_str()).is_some());
        assert_eq!(epoch.current(), 1);
        let p = keys.pattern(&Category::SESSIONS, ["b"]);
        me.apply(&other.encode(&[], &[&p], false), &local, &epoch);
        assert!(local.get(b.as_str()).is_none());
        local.insert(a.as_str(), Arc::from(&b"v"[..]), Duration::from_secs(60));
        me.apply(b"not json", &local, &epoch);
        assert!(local.get(a.as_str()).is_none(), "garbage clears the tier");
    }
}
