//! Invalidations that could not reach Redis, kept until they do.
//!
//! A cache may serve a value only while every invalidation of it has been applied. When an
//! invalidation fails (Redis timed out, refused, or the breaker was already open), the value may
//! still be in Redis: a paused or partitioned Redis comes back with its data. So a failed
//! invalidation
//! 1. is recorded here (keys and patterns; past [`MAX_PENDING`] entries the whole namespace is
//!    marked for clearing instead), and
//! 2. opens the circuit breaker, so nothing is read from Redis from then on.
//!
//! The recovery probe replays everything recorded here **before** it closes the breaker, and once
//! more right after, to catch invalidations recorded while it was closing. A caller records first
//! and opens the breaker second, so an invalidation recorded after the probe's last look reopens
//! the breaker and recovery runs again. So no read is served from Redis while an acknowledged
//! invalidation is still missing there. Only the probe replays, so replays never run
//! concurrently.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::bus::Bus;
use crate::error::Result;
use crate::key::Pattern;
use crate::remote::Remote;

/// Beyond this many recorded keys and patterns, recovery clears the whole namespace instead.
pub const MAX_PENDING: usize = 10_000;

#[derive(Debug, Default)]
struct Pending {
    keys: BTreeSet<String>,
    patterns: BTreeSet<Pattern>,
    /// Too many entries were recorded: clear the namespace on recovery.
    overflow: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && !self.overflow
    }
}

/// The invalidations still owed to Redis.
#[derive(Debug)]
pub(crate) struct PendingInvalidations {
    /// A std mutex: held only to move entries in or out, never across an `.await`.
    pending: Mutex<Pending>,
    namespace: Pattern,
    /// With an in-process tier: replays are also announced to the other instances.
    bus: Option<Arc<Bus>>,
}

impl PendingInvalidations {
    pub(crate) fn new(namespace: Pattern, bus: Option<Arc<Bus>>) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            namespace,
            bus,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record_key(&self, key: &str) {
        let mut p = self.lock();
        if p.keys.len() + p.patterns.len() >= MAX_PENDING {
            p.overflow = true;
        } else {
            p.keys.insert(key.to_owned());
        }
    }

    pub(crate) fn record_pattern(&self, pattern: &Pattern) {
        let mut p = self.lock();
        if p.keys.len() + p.patterns.len() >= MAX_PENDING {
            p.overflow = true;
        } else {
            p.patterns.insert(pattern.clone());
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Applies every recorded invalidation, ignoring the breaker. On failure the unapplied ones
    /// are put back and the error returned.
    pub(crate) async fn replay(&self, remote: &Remote) -> Result<u64> {
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        let result = self.apply(remote, &batch).await;
        match &result {
            Ok(removed) => tracing::info!(
                keys = batch.keys.len(),
                patterns = batch.patterns.len(),
                namespace_cleared = batch.overflow,
                removed,
                "replayed invalidations that failed while redis was unreachable"
            ),
            Err(_) => {
                let mut p = self.lock();
                p.keys.extend(batch.keys);
                p.patterns.extend(batch.patterns);
                p.overflow |= batch.overflow;
            }
        }
        result
    }

    async fn apply(&self, remote: &Remote, batch: &Pending) -> Result<u64> {
        if batch.overflow {
            let removed = remote.unlink_matching(&self.namespace, false).await?;
            if let Some(bus) = &self.bus {
                bus.publish(remote, &[], &[], true, false).await?;
            }
            return Ok(removed);
        }
        let mut removed = 0;
        let keys: Vec<&str> = batch.keys.iter().map(String::as_str).collect();
        for chunk in keys.chunks(500) {
            removed += remote.invalidate_keys(chunk, false).await?;
        }
        for p in &batch.patterns {
            removed += remote.unlink_matching(p, false).await?;
        }
        if let Some(bus) = &self.bus {
            let patterns: Vec<&Pattern> = batch.patterns.iter().collect();
            for chunk in keys.chunks(500) {
                bus.publish(remote, chunk, &[], false, false).await?;
            }
            if !patterns.is_empty() {
                bus.publish(remote, &[], &patterns, false, false).await?;
            }
        }
        Ok(removed)
    }
}
