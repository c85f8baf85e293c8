//! The [`Cache`] handle: typed cache-aside over Redis that never fails its caller.
//!
//! `get`, `get_with`, `try_get_with`, `insert` and `invalidate` treat every Redis problem as a
//! miss: the failure is logged (rate-limited) and counted, and the caller carries on with its
//! source of truth. Operations whose answer would be meaningless without Redis (`contains`,
//! `ttl`, `ping`, pattern invalidation, `clear`) return a [`Result`] instead.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::CacheBuilder;
use crate::coalesce::Coalescer;
use crate::codec::Envelope;
use crate::error::{Error, Result};
use crate::invalidation::PendingInvalidations;
use crate::key::{Category, Key, KeySpace, Pattern};
use crate::probe::TaskGuard;
use crate::remote::Remote;
use crate::stats::{Counters, Stats};
use crate::ttl::TtlPolicy;

/// Where a value returned by [`Cache::try_get_with_status`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Read from Redis.
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
    /// Number of invalidations started by this cache.
    pub(crate) epoch: AtomicU64,
    /// Held to keep the recovery task alive; `None` when the cache is disabled.
    pub(crate) _probe: Option<TaskGuard>,
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

    /// Reads and decodes without counting a hit or miss.
    async fn peek<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>> {
        Ok(match self.inner.remote.get(key.as_str()).await? {
            Some(bytes) => self.decode_or_discard(key.as_str(), &bytes).await,
            None => None,
        })
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

    /// Stores `value` under `key` with its category's TTL (with jitter), in one `SET ... PX`.
    /// Failures are logged and counted, never returned.
    pub async fn insert<T: Serialize + ?Sized>(&self, key: &Key, value: &T) {
        let ttl = self.inner.ttl.ttl(key.category());
        self.insert_with_ttl(key, value, ttl).await;
    }

    /// Stores `value` under `key` for exactly `ttl` (no jitter).
    pub async fn insert_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        ttl: Duration,
    ) {
        let Some(bytes) = self.encode(key.as_str(), value) else {
            return;
        };
        if self
            .inner
            .remote
            .set(key.as_str(), &bytes, ttl)
            .await
            .is_ok()
        {
            self.inner.counters.sets(1);
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
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[Key]) -> Vec<Option<T>> {
        let names: Vec<&str> = keys.iter().map(Key::as_str).collect();
        let raw = self
            .inner
            .remote
            .mget(&names)
            .await
            .unwrap_or_else(|_| vec![None; keys.len()]);
        let mut out = Vec::with_capacity(keys.len());
        for (key, bytes) in keys.iter().zip(raw) {
            let value = match bytes {
                Some(b) => self.decode_or_discard(key.as_str(), &b).await,
                None => None,
            };
            self.count_read(key, value.is_some());
            out.push(value);
        }
        out
    }

    /// Stores many values in one round trip (a pipeline of `SET ... PX`), each with its
    /// category's TTL.
    pub async fn insert_many<T: Serialize>(&self, entries: &[(Key, T)]) {
        let encoded: Vec<(&str, Vec<u8>, Duration)> = entries
            .iter()
            .filter_map(|(key, value)| {
                let bytes = self.encode(key.as_str(), value)?;
                Some((key.as_str(), bytes, self.inner.ttl.ttl(key.category())))
            })
            .collect();
        if self.inner.remote.set_many(&encoded).await.is_ok() {
            self.inner.counters.sets(encoded.len() as u64);
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
    /// A value is not stored if this cache started an invalidation while `init` ran: the value
    /// may predate the write that caused it, and storing it would make the invalidation undone.
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
        // Read before anything else: a value loaded from the source may be stored only if no
        // invalidation started since, and callers that arrive after an invalidation never join
        // a load that began before it (the flight is named by the epoch).
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        // Once a Redis call of this lookup has failed, the rest are skipped: a hung Redis costs
        // the caller at most one operation timeout on top of the loader.
        let reachable = match self.read(key).await {
            Ok(Some(v)) => return Ok((v, CacheStatus::Hit)),
            Ok(None) => true,
            Err(_) => false,
        };
        let flight = flight_name(epoch, key);
        let value = self
            .inner
            .loads
            .run(&flight, |publish| async move {
                let mut reachable = reachable;
                // A load that finished between our miss and our taking the lead has stored its
                // value: use it rather than load again.
                if reachable {
                    match self.peek(key).await {
                        Ok(Some(v)) => return Ok::<T, Arc<E>>(v),
                        Ok(None) => {}
                        Err(_) => reachable = false,
                    }
                }
                self.inner.counters.loader_run();
                let value = init.await.map_err(Arc::new)?;
                // Waiters need not wait for the store (up to an op timeout if Redis hangs).
                publish.publish(Ok::<T, Arc<E>>(value.clone()));
                if reachable {
                    self.fill(key, &value, epoch).await;
                }
                Ok(value)
            })
            .await?;
        let status = if reachable {
            CacheStatus::Miss
        } else {
            CacheStatus::Bypass
        };
        Ok((value, status))
    }

    /// Stores a loaded value unless an invalidation started since `epoch` was read.
    async fn fill<T: Serialize>(&self, key: &Key, value: &T, epoch: u64) {
        let _shared = self.inner.fill_guard.read().await;
        if self.inner.epoch.load(Ordering::SeqCst) != epoch {
            tracing::debug!(
                key = key.as_str(),
                "an invalidation ran during the load; not storing its value"
            );
            return;
        }
        self.insert(key, value).await;
    }

    /// Runs an invalidation exclusively of fills, after marking that it started.
    async fn invalidating<R>(&self, f: impl Future<Output = R>) -> R {
        let _exclusive = self.inner.fill_guard.write().await;
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        f.await
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
            .invalidating(self.inner.remote.unlink(&[key], true))
            .await;
        match &result {
            Ok(removed) => {
                self.inner.counters.deletes(*removed);
                tracing::info!(key, removed, "invalidated key");
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
        let result = self
            .invalidating(self.inner.remote.unlink_matching(pattern, true))
            .await;
        match result {
            Ok(removed) => {
                self.inner.counters.deletes(removed);
                tracing::info!(pattern = pattern.as_str(), removed, "{what}");
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
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        self.inner.loads.waiters(&flight_name(epoch, key))
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
