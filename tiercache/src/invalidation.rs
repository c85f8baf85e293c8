//! Changes that could not reach Redis, kept until they do.
//!
//! A cache may serve a value only while every invalidation of it has been applied. When a
//! change fails (Redis timed out, refused, or could not be reached), the old value may still be
//! in Redis: a paused or partitioned Redis comes back with its data. So a failed change
//! 1. is recorded here (keys, patterns and tags; an overwrite as an invalidation of its keys;
//!    past [`MAX_PENDING`] entries the whole namespace is marked for clearing instead), and
//! 2. opens the circuit breaker, so nothing is read from Redis from then on.
//!
//! The recovery probe replays everything recorded here, with the notices to other instances,
//! **before** it closes the breaker, and once more right after, to catch changes recorded while
//! it was closing. A caller records first and opens the breaker second, so a change recorded
//! after the probe's last look reopens the breaker and recovery runs again. So no read is served
//! from Redis while an acknowledged change is still missing there. Only the probe replays, so
//! replays never run concurrently.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use crate::bus::Channel;
use crate::error::Result;
use crate::key::{Pattern, Tag};
use crate::remote::{Remote, Via};

/// Beyond this many recorded keys, patterns and tags, recovery clears the whole namespace
/// instead (and invalidates the recorded tags, which a clear does not touch).
pub const MAX_PENDING: usize = 10_000;

#[derive(Debug, Default)]
struct Pending {
    keys: BTreeSet<String>,
    patterns: BTreeSet<Pattern>,
    tags: BTreeSet<Tag>,
    /// Clear the namespace on recovery (asked for, or too many entries were recorded).
    clear: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && self.tags.is_empty() && !self.clear
    }

    fn len(&self) -> usize {
        self.keys.len() + self.patterns.len()
    }

    fn merge(&mut self, other: Pending) {
        self.keys.extend(other.keys);
        self.patterns.extend(other.patterns);
        self.tags.extend(other.tags);
        self.clear |= other.clear;
    }
}

/// The changes still owed to Redis.
#[derive(Debug)]
pub(crate) struct PendingInvalidations {
    /// A std mutex: held only to move entries in or out, never across an `.await`.
    pending: Mutex<Pending>,
    namespace: Pattern,
}

impl PendingInvalidations {
    pub(crate) fn new(namespace: Pattern) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            namespace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record_key(&self, key: &str) {
        let mut p = self.lock();
        if p.len() >= MAX_PENDING {
            p.clear = true;
        } else {
            p.keys.insert(key.to_owned());
        }
    }

    pub(crate) fn record_pattern(&self, pattern: &Pattern) {
        let mut p = self.lock();
        if p.len() >= MAX_PENDING {
            p.clear = true;
        } else {
            p.patterns.insert(pattern.clone());
        }
    }

    /// Tags are always kept (a clear does not reach them); past [`MAX_PENDING`] the replay
    /// invalidates them in chunks like keys.
    pub(crate) fn record_tag(&self, tag: &Tag) {
        self.lock().tags.insert(tag.clone());
    }

    pub(crate) fn record_clear(&self) {
        self.lock().clear = true;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Applies every recorded change, ignoring the breaker, and tells the other instances. On
    /// failure the unapplied ones are put back and the error returned.
    pub(crate) async fn replay(
        &self,
        remote: &Remote,
        channel: &Channel,
        tag_prefix: &str,
    ) -> Result<u64> {
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        let result = apply(remote, channel, tag_prefix, &self.namespace, &batch).await;
        match &result {
            Ok(removed) => tracing::info!(
                keys = batch.keys.len(),
                patterns = batch.patterns.len(),
                tags = batch.tags.len(),
                namespace_cleared = batch.clear,
                removed,
                "replayed changes that failed while redis was unreachable"
            ),
            Err(_) => self.lock().merge(batch),
        }
        result
    }
}

async fn apply(
    remote: &Remote,
    channel: &Channel,
    tag_prefix: &str,
    namespace: &Pattern,
    batch: &Pending,
) -> Result<u64> {
    let via = Via::Recovery;
    let mut removed = 0;
    let tags: Vec<&Tag> = batch.tags.iter().collect();
    for chunk in tags.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|t| format!("{tag_prefix}{}", t.as_str()))
            .collect();
        let payload = channel.notice_of(&[], &[], chunk, false);
        remote
            .invalidate_tags(&keys, Some(channel.shared_notice(&payload)), via)
            .await?;
    }
    if batch.clear {
        let payload = channel.notice_of(&[], &[], &[], true);
        let notice = Some(channel.shared_notice(&payload));
        return Ok(removed + remote.invalidate_matching(namespace, notice, via).await?);
    }
    let keys: Vec<&str> = batch.keys.iter().map(String::as_str).collect();
    for chunk in keys.chunks(500) {
        let payload = channel.notice_of(chunk, &[], &[], false);
        removed += remote
            .invalidate_keys(chunk, Some(channel.shared_notice(&payload)), via)
            .await?;
    }
    for p in &batch.patterns {
        let payload = channel.notice_of(&[], &[p], &[], false);
        removed += remote
            .invalidate_matching(p, Some(channel.shared_notice(&payload)), via)
            .await?;
    }
    Ok(removed)
}
