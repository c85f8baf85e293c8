//! Recent invalidations: a bounded ring of the last [`HISTORY_LEN`] invalidations this instance
//! made or heard of, for operators ("what was dropped, when, by whom?") and dashboards.
//!
//! Own invalidations are recorded where `coherence` applies them (before Redis is reached, so a
//! deferred one is listed too); other instances' where `bus` applies their notices. Only a cache
//! with an in-process tier subscribes to the invalidation channel, so a cache without one lists
//! its own invalidations only. Overwrites (`insert`) are not invalidations and are not listed.
//!
//! Recording is off the read path (only changes record) and cheap: a std `Mutex` around a
//! `VecDeque`, held for a push or a copy, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;

/// How many invalidations [`Cache::recent_invalidations`](crate::Cache::recent_invalidations)
/// can return.
pub const HISTORY_LEN: usize = 100;

/// What an invalidation targeted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidationKind {
    /// Single keys.
    Key,
    /// Tags (every entry carrying one).
    Tag,
    /// Keys matching a glob pattern.
    Pattern,
    /// The whole namespace.
    Clear,
}

impl InvalidationKind {
    /// `key`, `tag`, `pattern` or `clear`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Tag => "tag",
            Self::Pattern => "pattern",
            Self::Clear => "clear",
        }
    }
}

/// One invalidation, as [`Cache::recent_invalidations`](crate::Cache::recent_invalidations)
/// lists it.
///
/// Serialized as `{"at": "<RFC 3339, UTC, ms>", "at_unix_ms": …, "kind": "key"|"tag"|"pattern"|
/// "clear", "targets": [...], "instance": "<16 hex digits>", "own": bool}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidationRecord {
    /// When this instance made it or heard of it.
    pub at: SystemTime,
    /// What it targeted.
    pub kind: InvalidationKind,
    /// The keys, tags or patterns it named (empty for a clear).
    pub targets: Vec<String>,
    /// The instance that made it, as 16 hex digits (see
    /// [`Cache::instance_id`](crate::Cache::instance_id)).
    pub instance: String,
    /// Whether this instance made it.
    pub own: bool,
}

impl InvalidationRecord {
    /// Milliseconds since the Unix epoch of [`at`](Self::at).
    pub fn at_unix_ms(&self) -> u64 {
        self.at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl serde::Serialize for InvalidationRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let at = chrono::DateTime::<chrono::Utc>::from(self.at)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut st = s.serialize_struct("InvalidationRecord", 6)?;
        st.serialize_field("at", &at)?;
        st.serialize_field("at_unix_ms", &self.at_unix_ms())?;
        st.serialize_field("kind", self.kind.as_str())?;
        st.serialize_field("targets", &self.targets)?;
        st.serialize_field("instance", &self.instance)?;
        st.serialize_field("own", &self.own)?;
        st.end()
    }
}

/// The ring of recent invalidations of one cache.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// A std lock: held for one push or one copy, never across an `.await`; shared by the
    /// façade (own changes) and the channel task (heard ones).
    ring: Mutex<VecDeque<InvalidationRecord>>,
}

impl History {
    /// Records an invalidation made now by `instance`.
    pub(crate) fn record(
        &self,
        kind: InvalidationKind,
        targets: Vec<String>,
        instance: u64,
        own: bool,
    ) {
        let record = InvalidationRecord {
            at: SystemTime::now(),
            kind,
            targets,
            instance: format!("{instance:016x}"),
            own,
        };
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == HISTORY_LEN {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// Up to `limit` records, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<InvalidationRecord> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_hundred_newest_first() {
        let h = History::default();
        for i in 0..(HISTORY_LEN + 5) {
            h.record(InvalidationKind::Key, vec![format!("k{i}")], 0xab, true);
        }
        let all = h.recent(usize::MAX);
        assert_eq!(all.len(), HISTORY_LEN);
        assert_eq!(all[0].targets, [format!("k{}", HISTORY_LEN + 4)]);
        assert_eq!(all[HISTORY_LEN - 1].targets, ["k5"]);
        assert_eq!(h.recent(2).len(), 2);
        assert_eq!(all[0].instance, "00000000000000ab");
    }

    #[test]
    fn a_record_serializes_with_both_timestamps() {
        let r = InvalidationRecord {
            at: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            kind: InvalidationKind::Tag,
            targets: vec!["image:{nginx}".into()],
            instance: "00000000000000ab".into(),
            own: false,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "at": "2023-11-14T22:13:20.123Z",
                "at_unix_ms": 1_700_000_000_123u64,
                "kind": "tag",
                "targets": ["image:{nginx}"],
                "instance": "00000000000000ab",
                "own": false,
            })
        );
    }
}
