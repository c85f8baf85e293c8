//! The [`Cache`] handle: typed cache-aside over Redis that never fails its caller.
//!
//! `get`, `get_with`, `try_get_with`, `insert` and `invalidate` treat every Redis problem as a
//! miss: the failure is logged (rate-limited) and counted, and the caller carries on with its
//! source of truth. Operations whose answer would be meaningless without Redis (`contains`,
//! `ttl`, `ping`, pattern invalidation, `clear`) return a [`Result`] instead.
//!
//! With an in-process tier (`CacheBuilder::local_capacity`), reads look there first and fill it
//! from Redis; writes and invalidations drop their entries there and tell the other instances
//! through the invalidation channel (`bus`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::CacheBuilder;
use crate::bus::Bus;
use crate::coalesce::Coalescer;
use crate::codec::Envelope;
use crate::epoch::Epoch;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::invalidation::PendingInvalidations;
use crate::key::{Category, Key, KeySpace, Pattern};
use crate::local::Local;
use crate::probe::TaskGuard;
use crate::remote::Remote;
use crate::stats::{Counters, LocalStats, Stats};
use crate::ttl::TtlPolicy;

/// Where a value returned by [`Cache::try_get_with_status`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Read from the in-process tier or from Redis.
    Hit,
    /// Not in Redis: loaded (by this caller or a coalesced one) and stored.
    Miss,
    /// Redis was not used (unreachable, circuit open, or the cache is disabled): loaded from the
    /// source.
    Bypass,
}

impl CacheStatus {
    /// `HIT`, `MISS` or `BYPASS`, as an `X-Cache` header says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// A cache handle. Cloning is cheap (one `Arc`); all clones share the connection, the counters
/// and the in-flight loads. Dropping the last clone stops the background recovery task.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) keys: KeySpace,
    /// Shared with the recovery task, which must outlive no cache: it holds the `Arc` but is
    /// aborted by `_probe` when this `Inner` drops.
    pub(crate) remote: Arc<Remote>,
    /// Shared with `remote`, which counts errors and timeouts.
    pub(crate) counters: Arc<Counters>,
    pub(crate) envelope: Envelope,
    pub(crate) ttl: TtlPolicy,
    pub(crate) loads: Coalescer,
    /// Shared with the recovery task, which replays these before trusting Redis again.
    pub(crate) pending: Arc<PendingInvalidations>,
    pub(crate) started: Instant,
    /// Guards against a slow loader storing a value that an invalidation made stale while it
    /// was loading: fills hold it shared while they check `epoch` and write; invalidations hold
    /// it exclusively while they bump `epoch` and delete. A tokio lock because both sides hold it
    /// across their Redis round trip.
    pub(crate) fill_guard: tokio::sync::RwLock<()>,
    /// Advanced by invalidations started by this cache or received from other instances, and by
    /// clears of the in-process tier. Shared with the channel task.
    pub(crate) epoch: Arc<Epoch>,
    /// The in-process tier, if configured.
    pub(crate) local: Option<Arc<Local>>,
    /// The invalidation channel, present when the cache is enabled.
    pub(crate) bus: Option<Arc<Bus>>,
    /// Held to keep the recovery task alive; `None` when the cache is disabled.
    pub(crate) _probe: Option<TaskGuard>,
    /// Held to keep the channel task alive; `None` without an in-process tier.
    pub(crate) _bus_task: Option<TaskGuard>,
    /// `false`: a pass-through that never touches Redis and never coalesces.
    pub(crate) enabled: bool,
}

impl Cache {
    /// A [`CacheBuilder`] with the defaults.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// This cache's key space (`{env}:{namespace}:`), for building keys and patterns.
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// Shorthand for `self.key_space().key(category, parts)`.
    pub fn key<I, P>(&self, category: &Category, parts: I) -> Key
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.inner.keys.key(category, parts)
    }

    /// The TTL policy.
    pub fn ttl_policy(&self) -> &TtlPolicy {
        &self.inner.ttl
    }

    /// The cached value for `key`, or `None` on a miss. A value that fails to decode is
    /// deleted and counted as a miss; Redis failures are misses too.
    pub async fn get<T: DeserializeOwned>(&self, key: &Key) -> Option<T> {
        self.read(key).await.ok().flatten()
    }

    /// Reads, decodes and counts a hit or a miss. `Err` means Redis was not reachable (counted
    /// as a miss), so that `try_get_with` can skip its remaining Redis calls.
    async fn read<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>> {
        let value = self.peek(key).await;
        self.count_read(key, matches!(value, Ok(Some(_))));
        value
    }

    fn count_read(&self, key: &Key, hit: bool) {
        if hit {
            self.inner.counters.hit(key.category());
        } else {
            self.inner.counters.miss(key.category());
        }
    }

    /// Reads and decodes without counting a hit or miss: from the in-process tier if it holds
    /// the key, else from Redis (filling the tier).
    async fn peek<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>> {
        let Some(local) = self.local() else {
            return Ok(match self.inner.remote.get(key.as_str()).await? {
                Some(bytes) => self.decode_or_discard(key.as_str(), &bytes).await,
                None => None,
            });
        };
        if let Some(bytes) = local.get(key.as_str()) {
            if let Ok(v) = self.inner.envelope.decode(&bytes) {
                self.inner.counters.local_hit();
                return Ok(Some(v));
            }
            // Another type than the one stored: let the Redis path below decide.
            local.remove(key.as_str());
        }
        let epoch = self.inner.epoch.current();
        let Some((bytes, ttl)) = self.inner.remote.get_with_ttl(key.as_str()).await? else {
            return Ok(None);
        };
        let value = self.decode_or_discard(key.as_str(), &bytes).await;
        // No TTL: the key expired between GET and PTTL, so it must not outlive that here.
        if let (Some(_), Some(ttl)) = (&value, ttl) {
            self.fill_local(local, key.as_str(), bytes.into(), ttl, epoch);
        }
        Ok(value)
    }

    /// The in-process tier, if there is one and it may be used now: its invalidation channel is
    /// up and the breaker is closed. After the breaker has opened, the tier is cleared before it
    /// is used again: invalidations may have been missed meanwhile.
    fn local(&self) -> Option<&Local> {
        let local = self.inner.local.as_deref()?;
        let breaker = &self.inner.remote.breaker;
        if !local.is_live() || !breaker.is_closed() {
            return None;
        }
        let trips = breaker.trips();
        if local.trips_seen() != trips {
            self.inner.epoch.advance();
            local.clear();
            local.saw_trips(trips);
            // Had the breaker opened again meanwhile, this clear would not count for it.
            if !breaker.is_closed() {
                return None;
            }
        }
        Some(local)
    }

    /// Puts a value read from Redis when the epoch was `epoch` into the tier, unless the epoch
    /// moved since (see `epoch`).
    fn fill_local(&self, local: &Local, key: &str, bytes: Arc<[u8]>, ttl: Duration, epoch: u64) {
        self.inner
            .epoch
            .if_current(epoch, || local.insert(key, bytes, ttl));
    }

    /// Drops keys from the in-process tier (whether or not it is live: dropping is always safe).
    fn forget_local(&self, keys: &[&str]) {
        if let Some(local) = &self.inner.local {
            for key in keys {
                local.remove(key);
            }
        }
    }

    /// Tells the other instances to drop `keys` / `patterns` / everything. A notice that cannot
    /// be sent is owed like a failed invalidation: it is replayed (with the Redis side, which is
    /// harmless to repeat) before anything is read from Redis again.
    async fn notify(&self, keys: &[&str], patterns: &[&Pattern], clear: bool) {
        let Some(bus) = &self.inner.bus else {
            return;
        };
        if let Err(e) = bus
            .publish(&self.inner.remote, keys, patterns, clear, true)
            .await
        {
            let pending = &self.inner.pending;
            if clear {
                pending.record_pattern(&self.inner.keys.namespace_pattern());
            }
            keys.iter().for_each(|k| pending.record_key(k));
            patterns.iter().for_each(|p| pending.record_pattern(p));
            self.owe_invalidation();
            log_deferred(&e, "invalidation channel", "notice to other instances");
        }
    }

    async fn decode_or_discard<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<T> {
        match self.inner.envelope.decode(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key, error = %e, "cached value does not decode; deleting it");
                // Best effort: if this fails, the next read finds the same bytes and tries again.
                let _ = self.inner.remote.unlink(&[key], true).await;
                None
            }
        }
    }

    /// Stores `value` under `key` with its category's TTL (with jitter): one round trip that moves
    /// the category's invalidation generation and then `SET ... PX`s the value.
    /// Failures are logged and counted, never returned.
    pub async fn insert<T: Serialize + ?Sized>(&self, key: &Key, value: &T) {
        let ttl = self.inner.ttl.ttl(key.category());
        self.insert_with_ttl(key, value, ttl).await;
    }

    /// Stores `value` under `key` for exactly `ttl` (no jitter).
    ///
    /// The previous value must not outlive this call: the in-process tiers (this one's and,
    /// through the invalidation channel, the other instances') drop the key, and if the value
    /// cannot be stored the key is invalidated instead (replayed later if Redis is unreachable).
    pub async fn insert_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        ttl: Duration,
    ) {
        if !self.inner.enabled {
            return;
        }
        let stored = match self.encode(key.as_str(), value) {
            Some(bytes) => {
                self.invalidating(
                    || self.forget_local(&[key.as_str()]),
                    self.inner.remote.set(key.as_str(), &bytes, ttl),
                )
                .await
            }
            None => Err(Error::Unavailable),
        };
        if stored.is_err() {
            self.invalidate(key).await;
            return;
        }
        self.inner.counters.sets(1);
        self.notify(&[key.as_str()], &[], false).await;
    }

    /// Stores a value loaded by `get_with` with its category's TTL, unless the generation moved
    /// since `noted` (an invalidation by any instance), and without telling other instances:
    /// their tiers cannot hold this key, or it would not have been missing here.
    async fn store<T: Serialize + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        noted: &Generation,
    ) -> Option<(Vec<u8>, Duration)> {
        let ttl = self.inner.ttl.ttl(key.category());
        let bytes = self.encode(key.as_str(), value)?;
        match self
            .inner
            .remote
            .set_if_generation(key.as_str(), &bytes, ttl, noted)
            .await
        {
            Ok(true) => {
                self.inner.counters.sets(1);
                Some((bytes, ttl))
            }
            Ok(false) => {
                tracing::debug!(
                    key = key.as_str(),
                    "an invalidation (maybe by another instance) ran during the load; not storing its value"
                );
                None
            }
            Err(_) => None,
        }
    }

    fn encode<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Option<Vec<u8>> {
        match self.inner.envelope.encode(value) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.inner.counters.error();
                tracing::warn!(key, error = %e, "value cannot be encoded; not cached");
                None
            }
        }
    }

    /// Values for many keys in one round trip (`MGET`), in the order of `keys`.
    ///
    /// Keys found in the in-process tier are not asked of Redis; the others are not added to
    /// the tier (a batch read does not learn their remaining TTLs).
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[Key]) -> Vec<Option<T>> {
        let mut out: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut remote_names = Vec::new();
        let local = self.local();
        for key in keys {
            let found = local
                .and_then(|l| l.get(key.as_str()))
                .and_then(|bytes| self.inner.envelope.decode(&bytes).ok());
            if found.is_some() {
                self.inner.counters.local_hit();
            } else {
                remote_names.push(key.as_str());
            }
            out.push(found);
        }
        let mut raw = self
            .inner
            .remote
            .mget(&remote_names)
            .await
            .unwrap_or_else(|_| vec![None; remote_names.len()])
            .into_iter();
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            if slot.is_none()
                && let Some(Some(b)) = raw.next()
            {
                *slot = self.decode_or_discard(key.as_str(), &b).await;
            }
            self.count_read(key, slot.is_some());
        }
        out
    }

    /// Stores many values in one round trip (a pipeline of `SET ... PX`), each with its
    /// category's TTL.
    pub async fn insert_many<T: Serialize>(&self, entries: &[(Key, T)]) {
        if !self.inner.enabled {
            return;
        }
        let encoded: Vec<(&str, Vec<u8>, Duration)> = entries
            .iter()
            .filter_map(|(key, value)| {
                let bytes = self.encode(key.as_str(), value)?;
                Some((key.as_str(), bytes, self.inner.ttl.ttl(key.category())))
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        let stored = encoded.len() == entries.len()
            && self
                .invalidating(
                    || self.forget_local(&names),
                    self.inner.remote.set_many(&encoded),
                )
                .await
                .is_ok();
        if stored {
            self.inner.counters.sets(encoded.len() as u64);
            self.notify(&names, &[], false).await;
        } else {
            // Some old values may remain: invalidate them all (replayed later if need be).
            for (key, _) in entries {
                self.invalidate(key).await;
            }
        }
    }

    /// The cached value, or the value of `init`, which is then cached.
    ///
    /// Concurrent callers for one key in this process run one `init` between them and share its
    /// value. If the running caller is cancelled, a waiting caller runs its own `init` (see
    /// [`try_get_with`](Self::try_get_with)).
    pub async fn get_with<T, F>(&self, key: &Key, init: F) -> T
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: Future<Output = T>,
    {
        match self
            .try_get_with(key, async { Ok::<T, Infallible>(init.await) })
            .await
        {
            Ok(v) => v,
            Err(e) => match *e {},
        }
    }

    /// The cached value, or the value of `init`, which is then cached; errors are not cached.
    ///
    /// One loader per key at a time: callers that arrive while a load runs wait for it and get
    /// its value, or its error as the same `Arc<E>`. If the leading caller's future is dropped,
    /// the waiters wake and one of them runs its own `init`, so none is stranded. If Redis is
    /// unreachable, loads still coalesce and every caller still gets a value.
    ///
    /// A value is not stored if, while `init` ran, this cache started an invalidation, or any
    /// instance invalidated or overwrote a key of the same category or cleared the namespace:
    /// the value may predate the write that caused it, and storing it would undo the
    /// invalidation. Callers that joined such a load after its `init` started then run their own
    /// (coalesced among themselves) instead of sharing a value that may predate a write they saw
    /// acknowledged; those that joined before share it, since it was read after they arrived.
    /// While Redis is unreachable, other instances' invalidations cannot be seen, and all
    /// callers of a load share its value.
    pub async fn try_get_with<T, E, F>(&self, key: &Key, init: F) -> Result<T, Arc<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>>,
    {
        self.try_get_with_status(key, init).await.map(|(v, _)| v)
    }

    /// [`try_get_with`](Self::try_get_with), also telling where the value came from (for an
    /// `X-Cache` header).
    pub async fn try_get_with_status<T, E, F>(
        &self,
        key: &Key,
        init: F,
    ) -> Result<(T, CacheStatus), Arc<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>>,
    {
        if !self.inner.enabled {
            // A disabled cache is a plain pass-through: no Redis, no coalescing.
            self.inner.counters.miss(key.category());
            self.inner.counters.loader_run();
            return init
                .await
                .map(|v| (v, CacheStatus::Bypass))
                .map_err(Arc::new);
        }
        // Read before anything else: callers that arrive after an invalidation never join a
        // load that began before it (the flight is named by the epoch). The leader notes the
        // epoch again before it loads, for deciding whether to store.
        let epoch = self.inner.epoch.current();
        // Once a Redis call of this lookup has failed, the rest are skipped: a hung Redis costs
        // the caller at most one operation timeout on top of the loader.
        let reachable = match self.read(key).await {
            Ok(Some(v)) => return Ok((v, CacheStatus::Hit)),
            Ok(None) => true,
            Err(_) => false,
        };
        let flight = flight_name(epoch, key);
        self.inner
            .loads
            .run(&flight, |publish| async move {
                // Noted again now: only invalidations from here on can make our value stale.
                let epoch = self.inner.epoch.current();
                // A load that finished between our miss and our taking the lead has stored its
                // value: use it rather than load again. The same round trip notes the
                // generation that our value will be stored against.
                let mut noted = None;
                if reachable {
                    match self.inner.remote.get_noting_generation(key.as_str()).await {
                        Ok((Some(bytes), generation)) => {
                            if let Some(v) = self.decode_or_discard(key.as_str(), &bytes).await {
                                return Ok((v, CacheStatus::Miss));
                            }
                            noted = Some(generation);
                        }
                        Ok((None, generation)) => noted = Some(generation),
                        Err(_) => {}
                    }
                }
                self.inner.counters.loader_run();
                let load_started = Instant::now();
                let value = init.await.map_err(Arc::new)?;
                let Some(noted) = noted else {
                    // Redis is away: shared with every waiter (see the method docs).
                    return Ok((value, CacheStatus::Bypass));
                };
                let filled = self.fill(key, &value, epoch, &noted).await;
                let result = Ok((value, CacheStatus::Miss));
                if !filled {
                    // An invalidation overlapped the load, or the store failed so that we cannot
                    // tell: the value read from the source after a waiter arrived is good for
                    // that waiter, not for one who may have arrived after the invalidation.
                    publish.publish_until(result.clone(), load_started);
                }
                result
            })
            .await
    }

    /// Stores a loaded value unless an invalidation started since `epoch` was read here, or since
    /// `noted` anywhere; returns whether it was stored.
    async fn fill<T: Serialize>(
        &self,
        key: &Key,
        value: &T,
        epoch: u64,
        noted: &Generation,
    ) -> bool {
        let _shared = self.inner.fill_guard.read().await;
        if self.inner.epoch.current() != epoch {
            tracing::debug!(
                key = key.as_str(),
                "an invalidation ran during the load; not storing its value"
            );
            return false;
        }
        let Some((bytes, ttl)) = self.store(key, value, noted).await else {
            return false;
        };
        if let Some(local) = self.local() {
            self.fill_local(local, key.as_str(), bytes.into(), ttl, epoch);
        }
        true
    }

    /// Runs a change of Redis (`f`: a delete or an overwrite) exclusively of fills, and drops its
    /// entries from the in-process tier (`drop_local`) both before and after it, each time after
    /// bumping the epoch.
    ///
    /// Before: the change has started, so no fill that loaded earlier may store its value, and
    /// this process stops serving the old one. After: a read whose Redis command was sent
    /// before the change was applied can have seen the old value *and* the first bump, so it
    /// would pass `fill_local`'s check; the second bump fails it (or the second drop removes
    /// its entry), and the callers that start after this returns name a new coalescing flight,
    /// so none of them joins a load that may have read the old value.
    async fn invalidating<R>(&self, drop_local: impl Fn(), f: impl Future<Output = R>) -> R {
        let _exclusive = self.inner.fill_guard.write().await;
        self.inner.epoch.advance();
        drop_local();
        let result = f.await;
        self.inner.epoch.advance();
        drop_local();
        result
    }

    /// Removes `key`. Never fails: if Redis cannot be reached the invalidation is kept and
    /// applied before anything is read from Redis again (see `invalidation`).
    pub async fn invalidate(&self, key: &Key) {
        let _ = self.unlink_key(key.as_str()).await;
    }

    /// Removes one key, exclusively of fills; a failure is recorded for replay. Returns how
    /// many keys were removed (0 or 1).
    async fn unlink_key(&self, key: &str) -> Result<u64> {
        if !self.inner.enabled {
            return Ok(0);
        }
        let result = self
            .invalidating(
                || self.forget_local(&[key]),
                self.inner.remote.invalidate_keys(&[key], true),
            )
            .await;
        match &result {
            Ok(removed) => {
                self.inner.counters.deletes(*removed);
                tracing::info!(key, removed, "invalidated key");
                self.notify(&[key], &[], false).await;
            }
            Err(e) => {
                self.inner.pending.record_key(key);
                self.owe_invalidation();
                log_deferred(e, key, "invalidation");
            }
        }
        result
    }

    /// Removes every key matching `pattern` (SCAN + UNLINK in batches, never KEYS) and returns
    /// how many were removed. On failure the invalidation is also kept and applied before
    /// anything is read from Redis again.
    pub async fn invalidate_pattern(&self, pattern: &Pattern) -> Result<u64> {
        self.check_pattern(pattern)?;
        self.unlink_matching(pattern, "invalidated keys by pattern")
            .await
    }

    /// Removes every key of this cache's namespace, and nothing else (never FLUSHDB).
    pub async fn clear(&self) -> Result<u64> {
        let pattern = self.inner.keys.namespace_pattern();
        self.unlink_matching(&pattern, "cleared namespace").await
    }

    async fn unlink_matching(&self, pattern: &Pattern, what: &'static str) -> Result<u64> {
        if !self.inner.enabled {
            return Ok(0);
        }
        let clear = *pattern == self.inner.keys.namespace_pattern();
        let result = self
            .invalidating(
                || match (&self.inner.local, clear) {
                    (Some(local), true) => local.clear(),
                    (Some(local), false) => local.remove_matching(pattern),
                    (None, _) => {}
                },
                self.inner.remote.unlink_matching(pattern, true),
            )
            .await;
        match result {
            Ok(removed) => {
                self.inner.counters.deletes(removed);
                tracing::info!(pattern = pattern.as_str(), removed, "{what}");
                if clear {
                    self.notify(&[], &[], true).await;
                } else {
                    self.notify(&[], &[pattern], false).await;
                }
                Ok(removed)
            }
            Err(e) => {
                self.inner.pending.record_pattern(pattern);
                self.owe_invalidation();
                log_deferred(&e, pattern.as_str(), what);
                Err(e)
            }
        }
    }

    /// After a failed invalidation: Redis may still hold the value, so stop reading from it
    /// until the recovery task has replayed what is owed (it replays before closing the
    /// breaker). Called after the invalidation was recorded, so if recovery closed the breaker
    /// in between, this reopens it and recovery runs again.
    fn owe_invalidation(&self) {
        self.inner.remote.breaker.trip();
    }

    /// Whether `key` is in Redis.
    pub async fn contains(&self, key: &Key) -> Result<bool> {
        self.inner.remote.exists(key.as_str()).await
    }

    /// Remaining TTL of `key`; `None` if it is absent or has no expiry.
    pub async fn ttl(&self, key: &Key) -> Result<Option<Duration>> {
        self.inner.remote.pttl(key.as_str()).await
    }

    /// Size in bytes of the stored (encoded) value of a raw key of this namespace; 0 if absent.
    pub async fn stored_size(&self, raw_key: &str) -> Result<u64> {
        self.check_raw(raw_key)?;
        self.inner.remote.strlen(raw_key).await
    }

    /// Remaining TTL of a raw key of this namespace (as listed by [`keys`](Self::keys)).
    pub async fn raw_ttl(&self, raw_key: &str) -> Result<Option<Duration>> {
        self.check_raw(raw_key)?;
        self.inner.remote.pttl(raw_key).await
    }

    /// Removes a raw key of this namespace; returns whether it existed.
    pub async fn invalidate_raw(&self, raw_key: &str) -> Result<bool> {
        self.check_raw(raw_key)?;
        Ok(self.unlink_key(raw_key).await? > 0)
    }

    fn check_pattern(&self, pattern: &Pattern) -> Result<()> {
        if pattern.as_str().starts_with(self.inner.keys.prefix()) {
            Ok(())
        } else {
            Err(Error::config(
                "pattern",
                format!("{pattern} is outside this cache's namespace"),
            ))
        }
    }

    /// Number of callers waiting for the load of `key` now in flight in this process (0 when
    /// none is). For diagnostics and tests.
    pub fn loads_waiting(&self, key: &Key) -> usize {
        self.inner
            .loads
            .waiters(&flight_name(self.inner.epoch.current(), key))
    }

    fn check_raw(&self, raw_key: &str) -> Result<()> {
        if self.inner.keys.contains(raw_key) {
            Ok(())
        } else {
            Err(Error::config(
                "key",
                format!("{raw_key:?} is outside this cache's namespace"),
            ))
        }
    }

    /// Up to `limit` keys matching `pattern`, found with SCAN.
    pub async fn keys(&self, pattern: &Pattern, limit: usize) -> Result<Vec<String>> {
        self.check_pattern(pattern)?;
        self.inner.remote.scan_keys(pattern, limit).await
    }

    /// Round-trip time of a PING. Fails at once while the circuit breaker is open.
    pub async fn ping(&self) -> Result<Duration> {
        self.inner.remote.ping().await
    }

    /// Whether the cache is using Redis (the circuit breaker is closed).
    pub fn is_connected(&self) -> bool {
        self.inner.remote.breaker.is_closed()
    }

    /// A snapshot of the statistics. The Redis-side fields (memory, evictions, key count) are
    /// `None` when Redis does not answer.
    pub async fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.uptime = self.inner.started.elapsed();
        stats.local = self.local_stats();
        // Skipped while the breaker is open, so reading stats does not count short circuits.
        if !self.is_connected() {
            return stats;
        }
        if let Ok(info) = self.inner.remote.info().await {
            stats.evicted_keys = info.evicted_keys;
            stats.used_memory_bytes = info.used_memory;
            stats.used_memory_human = info.used_memory_human;
            stats.keys = self
                .inner
                .remote
                .count_matching(&self.inner.keys.namespace_pattern())
                .await
                .ok();
        }
        stats.connected = self.is_connected();
        stats
    }

    fn local_stats(&self) -> Option<LocalStats> {
        let local = self.inner.local.as_deref()?;
        Some(LocalStats {
            live: local.is_live() && self.is_connected(),
            entries: local.entry_count(),
            size_bytes: local.size_bytes(),
            evictions: local.evictions(),
            channel_losses: local.channel_losses(),
        })
    }
}

/// The coalescing name of a load of `key` that started at invalidation `epoch`.
fn flight_name(epoch: u64, key: &Key) -> String {
    format!("{epoch}#{}", key.as_str())
}

/// Logs an invalidation that will be replayed later. While the breaker is open the outage has
/// been logged already, so each deferral is only a debug line: an outage must not flood the log.
fn log_deferred(e: &Error, target: &str, what: &str) {
    if e.is_unavailable() {
        tracing::debug!(target, "{what}: deferred until redis answers");
    } else {
        tracing::warn!(target, error = %e, "{what}: deferred until redis answers");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The futures of every operation are `Send`, so they can run on a multi-threaded runtime
    /// and inside axum handlers.
    #[allow(dead_code, clippy::unwrap_used)]
    async fn futures_are_send(cache: Cache, key: Key) {
        assert_send(&cache.get::<String>(&key));
        assert_send(&cache.insert(&key, "v"));
        assert_send(&cache.get_with(&key, async { String::new() }));
        assert_send(&cache.try_get_with(&key, async { Ok::<_, std::io::Error>(String::new()) }));
        assert_send(&cache.invalidate(&key));
        assert_send(&cache.get_many::<String>(std::slice::from_ref(&key)));
        assert_send(&cache.insert_many(&[(key.clone(), 1u8)]));
        assert_send(&cache.stats());
        assert_send(&cache.clear());
    }

    #[test]
    fn cache_is_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Cache>();
    }
}
