//! The invalidation channel: carries every change to the in-process tiers of all instances, and
//! proves, heartbeat by heartbeat, that it still does.
//!
//! Every cache publishes each change (keys, patterns, tags, a clear, inserts) on one Redis
//! pub/sub channel per namespace (`{env}:{namespace}:__invalidations`) as a small JSON
//! [`Notice`], in the same round trip as the change itself, after it (see `remote`). Caches
//! without a tier publish too, so that a writer configured without one (a batch job) still
//! reaches the tiers of the others. Each cache with a tier subscribes, on one connection, to
//! that channel and to its own heartbeat channel (`{env}:{namespace}:__invalidations:{id}`),
//! and hands what it hears to `coherence`: notices drop entries, and each heartbeat that comes
//! back renews the tier's lease. A heartbeat goes out every fifth of the lease, through the
//! command connection, stamped with the time it was sent (see `coherence` for why hearing it
//! back makes the tier trustworthy until a lease after that stamp).
//!
//! Redis pub/sub delivers at most once, so any doubt counts as loss: the subscription closing
//! (Redis restarted, `CLIENT KILL`, output buffer overflow), an unreadable notice, or no
//! heartbeat heard back for [`CHANNEL_SILENCE`] while Redis answers (a subscription that
//! silently stopped delivering), or within [`RECOVERY_SILENCE`] of Redis answering again after
//! an outage (a subscription that outlived its server, hung and replaced by a failover). Each
//! drops the tier; a silent or closed subscription is replaced.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::coherence::{Change, Coherence, Target};
use crate::history::InvalidationKind;
use crate::key::{KeySpace, Pattern, Tag};
use crate::log_limiter::LogLimiter;
use crate::probe::TaskGuard;
use crate::remote::Via;

/// A subscription that brings no heartbeat back for this long, while Redis answers commands, is
/// replaced (the tier stopped serving long before: after one lease).
pub const CHANNEL_SILENCE: Duration = Duration::from_secs(3);

/// Once Redis answers again after an outage (the breaker closes), a subscription that brings no
/// heartbeat back within this is replaced sooner than [`CHANNEL_SILENCE`]: it lived through the
/// outage (its server may have been the one that hung, and been replaced by a failover), and the
/// tier it would keep has lapsed anyway, so replacing it costs a reconnection and nothing more.
const RECOVERY_SILENCE: Duration = Duration::from_secs(1);

/// What goes over the shared channel.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Notice {
    /// The sending instance (its own notices are not applied twice).
    pub(crate) from: u64,
    /// When it was published: nanoseconds since the Unix epoch on the sender's clock (0 in
    /// notices from versions that did not send it). The receiver measures the propagation lag
    /// against its own clock: exact between caches on one host, and as good as the clocks'
    /// synchronization (NTP: about a millisecond) across machines.
    #[serde(default)]
    pub(crate) at: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) clear: bool,
    /// The keys were overwritten (`insert`), not invalidated: dropped from the tier all the
    /// same, but not listed among the invalidations heard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) insert: bool,
}

/// Nanoseconds since the Unix epoch, now (0 if the clock is before it).
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A notice as JSON.
fn encode(notice: &Notice) -> Vec<u8> {
    // Serializing strings, numbers and bools to JSON cannot fail.
    serde_json::to_vec(notice).unwrap_or_default()
}

/// This instance's ends of the channel.
#[derive(Debug)]
pub(crate) struct Channel {
    /// Every instance's changes.
    shared: String,
    /// This instance's heartbeats.
    own: String,
    /// Random per cache, so two caches in one process are two instances.
    id: u64,
}

/// Whether the channel lives on one server or on a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    Single,
    Cluster,
}

impl Channel {
    /// The channels of `keys`' namespace. On a cluster (`Layout::Cluster`) both names carry the
    /// hash tag `{env:namespace:}`, so that every notice and heartbeat goes to the one master of
    /// that slot and reaches the subscriber in the order that master ran them (see
    /// `connection`); one server keeps the names of earlier versions.
    pub(crate) fn new(keys: &KeySpace, layout: Layout) -> Self {
        let id = fastrand::u64(..);
        let shared = match layout {
            Layout::Single => format!("{}__invalidations", keys.prefix()),
            Layout::Cluster => format!("{{{}}}__invalidations", keys.prefix()),
        };
        Self {
            own: format!("{shared}:{id:016x}"),
            shared,
            id,
        }
    }

    /// The notice of `change`.
    pub(crate) fn notice(&self, change: &Change<'_>) -> Vec<u8> {
        let notice = match change {
            Change::Invalidate(Target::Keys(keys)) => self.naming(keys, &[], &[], false),
            Change::Invalidate(Target::Pattern(p)) => self.naming(&[], &[p], &[], false),
            Change::Invalidate(Target::Tags(tags)) => {
                let tags: Vec<&Tag> = tags.iter().collect();
                self.naming(&[], &[], &tags, false)
            }
            Change::Invalidate(Target::Clear) => self.naming(&[], &[], &[], true),
            Change::Overwrite(entries) => {
                let keys: Vec<&str> = entries.iter().map(|(k, _, _)| *k).collect();
                Notice {
                    insert: true,
                    ..self.naming(&keys, &[], &[], false)
                }
            }
        };
        encode(&notice)
    }

    /// A notice naming `keys`, `patterns`, `tags` and (`clear`) everything.
    pub(crate) fn notice_of(
        &self,
        keys: &[&str],
        patterns: &[&Pattern],
        tags: &[&Tag],
        clear: bool,
    ) -> Vec<u8> {
        encode(&self.naming(keys, patterns, tags, clear))
    }

    fn naming(&self, keys: &[&str], patterns: &[&Pattern], tags: &[&Tag], clear: bool) -> Notice {
        Notice {
            from: self.id,
            at: unix_nanos(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            patterns: patterns.iter().map(|p| p.as_str().to_owned()).collect(),
            tags: tags.iter().map(|t| t.as_str().to_owned()).collect(),
            clear,
            insert: false,
        }
    }

    /// This instance's id (random per cache), as notices carry it.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// This instance's heartbeat channel.
    pub(crate) fn own(&self) -> &str {
        &self.own
    }

    /// `payload`, addressed to every instance.
    pub(crate) fn shared_notice<'a>(&'a self, payload: &'a [u8]) -> crate::remote::Notice<'a> {
        crate::remote::Notice {
            channel: &self.shared,
            payload,
        }
    }
}

/// Starts the channel's tasks: the listener and the heartbeat. Both stop when the guards drop.
pub(crate) fn spawn(coherence: Arc<Coherence>, retry: Duration) -> [TaskGuard; 2] {
    [
        TaskGuard::new(tokio::spawn(listen_forever(coherence.clone(), retry))),
        TaskGuard::new(tokio::spawn(beat_forever(coherence))),
    ]
}

/// Publishes this instance's heartbeat every fifth of the lease, stamped with its send time.
async fn beat_forever(c: Arc<Coherence>) {
    let mut tick = tokio::time::interval(c.local_lease() / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = c.stamp();
        let _ = c
            .remote
            .publish(&c.channel.own, &sent.to_le_bytes(), Via::Breaker)
            .await;
    }
}

async fn listen_forever(c: Arc<Coherence>, retry: Duration) {
    let failures = LogLimiter::new(Duration::from_secs(30));
    let channels = [c.channel.shared.as_str(), c.channel.own.as_str()];
    loop {
        let stream = match c.remote.subscribe(&channels).await {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(suppressed) = failures.check() {
                    tracing::warn!(channel = %c.channel.shared, error = %e, suppressed, "cannot subscribe to the invalidation channel; the in-process tier stays off");
                }
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        tracing::info!(channel = %c.channel.shared, "invalidation channel up; the in-process tier serves while its heartbeats come back");
        let why = listen(&c, stream).await;
        c.lost(true);
        tracing::warn!(channel = %c.channel.shared, reason = why, "invalidation channel lost; in-process tier dropped until it is back");
        tokio::time::sleep(retry).await;
    }
}

/// Hands notices and heartbeats to `coherence` until the channel counts as lost; returns why.
async fn listen(
    c: &Coherence,
    stream: impl futures_util::Stream<Item = (String, Vec<u8>)>,
) -> &'static str {
    let mut stream = pin!(stream);
    let mut check = tokio::time::interval(RECOVERY_SILENCE / 4);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // When Redis last answered again after an outage, until a heartbeat comes back.
    let mut recovered: Option<Instant> = None;
    let mut away = false;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some((channel, payload)) if channel == c.channel.own => {
                    if let Ok(stamp) = <[u8; 8]>::try_from(payload.as_slice()) {
                        c.renew(u64::from_le_bytes(stamp));
                        last_heard = Instant::now();
                        recovered = None;
                    }
                }
                Some((_, payload)) => match serde_json::from_slice::<Notice>(&payload) {
                    Ok(notice) if notice.from == c.channel.id => {}
                    Ok(notice) => {
                        c.apply_notice(&notice);
                        heard(c, &notice);
                        tracing::debug!(from = notice.from, "applied a change from another instance");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable message on the invalidation channel; dropping the in-process tier");
                        c.invalidate_tier();
                    }
                },
                None => return "the subscription connection closed",
            },
            _ = check.tick() => {
                if !c.remote.breaker.is_closed() {
                    // Heartbeats are not sent while Redis is away: silence says nothing of the
                    // subscription then.
                    last_heard = Instant::now();
                    away = true;
                } else {
                    if away {
                        away = false;
                        recovered = Some(Instant::now());
                    }
                    if last_heard.elapsed() > CHANNEL_SILENCE {
                        return "no heartbeat came back for 3 s";
                    }
                    if recovered.is_some_and(|at| at.elapsed() > RECOVERY_SILENCE) {
                        return "no heartbeat came back within 1 s of Redis answering again";
                    }
                }
            }
        }
    }
}

/// Records another instance's notice, just applied: its propagation lag (publication to now),
/// and the invalidations it names in the history and the counters.
fn heard(c: &Coherence, notice: &Notice) {
    if notice.at != 0 {
        let lag = unix_nanos().saturating_sub(notice.at);
        c.counters.propagation_lag(Duration::from_nanos(lag));
    }
    if notice.insert {
        return;
    }
    let named = [
        (InvalidationKind::Key, &notice.keys),
        (InvalidationKind::Pattern, &notice.patterns),
        (InvalidationKind::Tag, &notice.tags),
    ];
    for (kind, targets) in named {
        if !targets.is_empty() {
            c.invalidated(kind, targets.clone(), notice.from);
        }
    }
    if notice.clear {
        c.invalidated(InvalidationKind::Clear, Vec::new(), notice.from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clusters_channels_share_one_slot() {
        let keys = KeySpace::new("t", "ns").unwrap();
        let ch = Channel::new(&keys, Layout::Cluster);
        assert_eq!(ch.shared, "{t:ns:}__invalidations");
        assert!(ch.own.starts_with("{t:ns:}__invalidations:"));
    }

    #[test]
    fn notices_name_what_changed() {
        let keys = KeySpace::new("t", "ns").unwrap();
        let ch = Channel::new(&keys, Layout::Single);
        assert!(ch.own.starts_with("t:ns:__invalidations:"));
        assert_ne!(ch.own, Channel::new(&keys, Layout::Single).own);
        let tag = Tag::new("img", ["a"]);
        let n: Notice =
            serde_json::from_slice(&ch.notice(&Change::Invalidate(Target::Tags(&[tag])))).unwrap();
        assert_eq!(
            (n.from, n.tags.as_slice()),
            (ch.id, &["img:{a}".to_owned()][..])
        );
        assert!(n.keys.is_empty() && !n.clear && !n.insert);
        assert!(n.at > 0);
        let set = [("t:ns:k:{a}", &b"v"[..], Duration::from_secs(1))];
        let n: Notice = serde_json::from_slice(&ch.notice(&Change::Overwrite(&set))).unwrap();
        assert_eq!(n.keys, vec!["t:ns:k:{a}".to_owned()]);
        assert!(n.insert, "an overwrite is not listed as an invalidation");
        let n: Notice =
            serde_json::from_slice(&ch.notice(&Change::Invalidate(Target::Clear))).unwrap();
        assert!(n.clear);
        // Notices from versions without a timestamp still parse.
        let old: Notice = serde_json::from_str(r#"{"from":7,"keys":["k"]}"#).unwrap();
        assert_eq!((old.from, old.at, old.insert), (7, 0, false));
    }
}
