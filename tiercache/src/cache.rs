//! The [`Cache`] handle: the public façade.
//!
//! `get`, `get_with`, `try_get_with`, `insert` and `invalidate` treat every Redis problem as a
//! miss: the failure is logged (rate-limited) and counted, and the caller carries on with its
//! source of truth. Operations whose answer would be meaningless without Redis (`contains`,
//! `ttl`, `ping`, pattern invalidation, `clear`) return a [`Result`] instead.
//!
//! This file says *what* each operation does: look in the tier, read Redis, coalesce a load,
//! encode and decode. *Whether* a value may be served or stored, and how a change reaches every
//! copy, is decided in one place, `coherence`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::CacheBuilder;
use crate::coalesce::Coalescer;
use crate::codec::{Envelope, LEASE_BYTE, Sealed};
use crate::coherence::{Change, Coherence, Lease, Leasing, Target, Ticket};
use crate::encryption::{Protection, Rejected};
use crate::error::{Error, Result};
use crate::history::InvalidationRecord;
use crate::key::{Category, Key, KeySpace, Pattern, Tag};
use crate::memory::ValueLimit;
use crate::probe::TaskGuard;
use crate::remote::{Take, Via};
use crate::stats::{Counters, LocalStats, Stats};
use crate::ttl::TtlPolicy;

/// Where a value returned by [`Cache::try_get_with_status`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Read from the in-process tier or from Redis.
    Hit,
    /// Not cached: loaded (by this caller or a coalesced one) and stored.
    Miss,
    /// The cache was not used (Redis unreachable, circuit open, or the cache is disabled):
    /// loaded from the source.
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

/// How a cache stores values, chosen with [`CacheBuilder::mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Redis, shared by every instance, with an in-process tier in front of it when
    /// [`CacheBuilder::local_capacity`] is set. While Redis is away, reads go to the source.
    #[default]
    Redis,
    /// The in-process tier alone, no Redis: for one instance (its own changes are the only
    /// ones it hears of). Needs a [`CacheBuilder::local_capacity`].
    Standalone,
    /// No caching: every read goes to the source.
    Disabled,
}

impl Mode {
    /// `redis`, `standalone` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Standalone => "standalone",
            Self::Disabled => "disabled",
        }
    }
}

/// A cache handle. Cloning is cheap (one `Arc`); all clones share the connection, the counters
/// and the in-flight loads. Dropping the last clone stops the background tasks.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) keys: KeySpace,
    /// Shared with the background tasks, which the guards below abort when this drops.
    pub(crate) coherence: Arc<Coherence>,
    /// Shared with `remote`, which counts errors and timeouts.
    pub(crate) counters: Arc<Counters>,
    pub(crate) envelope: Envelope,
    /// The per-value size limit (`max_value_bytes`).
    pub(crate) value_limit: ValueLimit,
    /// Which categories are encrypted in Redis, with which keys (see `encryption`).
    pub(crate) protection: Protection,
    pub(crate) ttl: TtlPolicy,
    pub(crate) loads: Coalescer,
    pub(crate) started: Instant,
    pub(crate) mode: Mode,
    /// The recovery probe and the channel's tasks, stopped when the last handle drops.
    pub(crate) _tasks: Vec<TaskGuard>,
}

/// A value written with `insert` into a standalone tier, kept encoded (shared: a hit clones it).
#[derive(Clone)]
struct Encoded(Arc<[u8]>);

/// What encoding a value for storage gave.
enum Encoding {
    Bytes(Vec<u8>),
    /// Not to be stored, and an older value must go: larger than `max_value_bytes` (counted
    /// and logged), or of a sensitive category that is not cached (no keys).
    NotStored,
    /// Could not be encoded (counted and logged).
    Failed,
}

/// What one look for a key found.
enum Lookup<T> {
    /// A value, and whether the tags it carries are all the key's (only then may the tier keep
    /// it: a ticket noted for the key covers no other tag).
    Hit(T, bool),
    Miss,
    /// A value whose tags moved since it was loaded: a miss, and the next load replaces it.
    Stale,
}

/// Gives a load's lease back if the load ends without filling (cancelled or failed).
struct LeaseGuard<'a> {
    coherence: &'a Coherence,
    key: &'a Key,
    lease: Option<Lease>,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.coherence.release(self.key, lease);
        }
    }
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

    /// How this cache stores values.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    fn enabled(&self) -> bool {
        self.inner.mode != Mode::Disabled
    }

    /// Whether `key`'s values are cached at all: not when the cache is disabled, nor for a
    /// sensitive category without encryption keys (see `encryption`).
    fn caches(&self, key: &Key) -> bool {
        self.enabled() && !self.inner.protection.not_cached(key)
    }

    fn coherence(&self) -> &Coherence {
        &self.inner.coherence
    }

    /// The cached value for `key`, or `None` on a miss. A value that fails to decode is
    /// deleted and counted as a miss; Redis failures are misses too.
    ///
    /// ```no_run
    /// # async fn demo(cache: tiercache::Cache) {
    /// use tiercache::Category;
    /// const IMAGES: Category = Category::from_static("images");
    /// let key = cache.key(&IMAGES, ["nginx"]);
    /// let name: Option<String> = cache.get(&key).await;
    /// # }
    /// ```
    pub async fn get<T>(&self, key: &Key) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        // A tier hit completes here, without building the (larger) future of a Redis read. (The
        // tier holds only values of cached categories: no need to ask first.)
        if let Some(v) = self.tier_value::<T>(key) {
            self.inner.counters.local_hit(key.category());
            return Some(v);
        }
        if !self.caches(key) {
            self.inner.counters.miss(key.category());
            return None;
        }
        let value = Box::pin(async {
            let ticket = self.coherence().note(key);
            match self.look_remote(key, &ticket).await {
                Ok(Lookup::Hit(v, _)) => Some(v),
                _ => None,
            }
        })
        .await;
        self.count_read(key, value.is_some());
        value
    }

    fn count_read(&self, key: &Key, hit: bool) {
        if hit {
            self.inner.counters.hit(key.category());
        } else {
            self.inner.counters.miss(key.category());
        }
    }

    /// Looks for `key` in Redis after a miss in the tier (filling the tier, with `ticket`, noted
    /// before), without counting a hit or miss. `Err` means Redis was not reachable.
    async fn look_remote<T>(&self, key: &Key, ticket: &Ticket) -> Result<Lookup<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let c = self.coherence();
        if c.is_standalone() {
            return Ok(Lookup::Miss);
        }
        let tag_keys = c.tag_keys(key);
        let read = c.remote.read(key.as_str(), c.has_tier(), &tag_keys).await?;
        let Some(bytes) = read.value else {
            return Ok(Lookup::Miss);
        };
        let found = self.open::<T>(key, &bytes, &read.tag_versions).await?;
        if let Lookup::Hit(v, true) = &found
            && let Some(ttl) = read.ttl
        {
            // No TTL: the key expired between GET and PTTL, so it must not outlive that here.
            c.tier_fill(key, ticket, v.clone(), bytes.len(), ttl);
        }
        Ok(found)
    }

    /// The tier's value for `key` as a `T`, if it may be served (the caller counts the hit). A
    /// value of another type is not one: Redis (or the loader) decides then.
    fn tier_value<T>(&self, key: &Key) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        // A clone of `T` out of the shared entry (see `local`).
        let entry = self.coherence().tier_get(key)?;
        if let Some(value) = entry.value.downcast_ref::<T>() {
            return Some(value.clone());
        }
        let Encoded(bytes) = entry.value.downcast_ref::<Encoded>()?;
        self.inner.envelope.decode::<T>(bytes).ok()
    }

    /// Turns bytes read from Redis into a value: a lease is a miss, a value whose tags moved is
    /// stale, one that does not decode is deleted.
    async fn open<T: DeserializeOwned>(
        &self,
        key: &Key,
        bytes: &[u8],
        tag_versions: &[Option<Vec<u8>>],
    ) -> Result<Lookup<T>> {
        if bytes.first() == Some(&LEASE_BYTE) {
            return Ok(Lookup::Miss);
        }
        let bytes = match self.inner.protection.open(key, bytes) {
            Ok(envelope) => envelope,
            Err(why) => return Ok(self.reject(key, why).await),
        };
        let sealed = match Sealed::open(&bytes) {
            Ok(sealed) => sealed,
            Err(e) => return Ok(self.discard(key, &e).await),
        };
        if !self
            .coherence()
            .is_current(key, &sealed, tag_versions)
            .await?
        {
            return Ok(Lookup::Stale);
        }
        let keys_tags_only = sealed
            .tags
            .iter()
            .all(|(tag, _)| key.tags().iter().any(|t| t.as_str() == *tag));
        match sealed.decode() {
            Ok(v) => Ok(Lookup::Hit(v, keys_tags_only)),
            Err(e) => Ok(self.discard(key, &e).await),
        }
    }

    /// A value that failed to authenticate: counted, logged (rate-limited), deleted, a miss.
    async fn reject<T>(&self, key: &Key, why: Rejected) -> Lookup<T> {
        self.inner.counters.unauthenticated_value();
        self.inner.protection.log_rejection(key, why);
        self.delete_unreadable(key).await;
        Lookup::Miss
    }

    async fn discard<T>(&self, key: &Key, e: &Error) -> Lookup<T> {
        tracing::warn!(key = key.as_str(), error = %e, "cached value does not decode; deleting it");
        self.delete_unreadable(key).await;
        Lookup::Miss
    }

    /// Deletes a value this cache cannot use. Best effort: if this fails, the next read finds
    /// the same bytes and tries again. No notice: removing an unusable copy changes no data (an
    /// instance that could read it, with other keys, keeps its decoded copy, as fresh as ever).
    async fn delete_unreadable(&self, key: &Key) {
        let _ = self
            .coherence()
            .remote
            .invalidate_keys(&[key.as_str()], None, Via::Breaker)
            .await;
    }

    /// Stores `value` under `key` with its TTL (its own, or its category's; with jitter), in one `SET ... PX`.
    /// Failures are logged and counted, never returned.
    pub async fn insert<T: Serialize + ?Sized>(&self, key: &Key, value: &T) {
        let ttl = self.inner.ttl.for_key(key);
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
        self.write(&[(key, value, ttl)]).await;
    }

    /// Stores many values in one round trip (a pipeline of `SET ... PX`), each with its
    /// category's TTL.
    pub async fn insert_many<T: Serialize>(&self, entries: &[(Key, T)]) {
        let entries: Vec<(&Key, &T, Duration)> = entries
            .iter()
            .map(|(k, v)| (k, v, self.inner.ttl.for_key(k)))
            .collect();
        self.write(&entries).await;
    }

    /// Overwrites (`insert`s): values and tags encoded, then one change.
    async fn write<T: Serialize + ?Sized>(&self, entries: &[(&Key, &T, Duration)]) {
        if !self.enabled() || entries.is_empty() {
            return;
        }
        let c = self.coherence();
        let mut encoded: Vec<(&Key, Vec<u8>, Duration)> = Vec::with_capacity(entries.len());
        // Too large to store: invalidated instead, so that no older value outlives the write.
        let mut oversized: Vec<&str> = Vec::new();
        let versions = c
            .tag_versions_for_write(entries.iter().map(|(k, _, ttl)| (*k, *ttl)))
            .await
            .unwrap_or_default();
        for (key, value, ttl) in entries {
            if !self.tags_fit(key) {
                break;
            }
            // Standalone, tags live in the tier's versions alone; the value carries none.
            let tags = if c.is_standalone() {
                Some(Vec::new())
            } else {
                key.tags()
                    .iter()
                    .map(|t| Some(versions.get(t)?.as_slice()))
                    .collect::<Option<Vec<&[u8]>>>()
            };
            // Without the versions (Redis away, or refusing writes) nothing can vouch for the
            // tags.
            let Some(tags) = tags else {
                break;
            };
            match self.encode(key, *value, &tags) {
                Encoding::Bytes(bytes) => encoded.push((key, bytes, *ttl)),
                Encoding::NotStored => oversized.push(key.as_str()),
                Encoding::Failed => break,
            }
        }
        let keys: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
        if encoded.len() + oversized.len() < entries.len() || encoded.is_empty() {
            // Some old values may remain: invalidate them all (replayed later if need be).
            let _ = c.apply(Change::Invalidate(Target::Keys(&keys))).await;
            return;
        }
        if !oversized.is_empty() {
            let _ = c.apply(Change::Invalidate(Target::Keys(&oversized))).await;
        }
        if c.is_standalone() {
            c.overwrite_here(&keys);
            // The tier is the store: the new values go in after the old ones were dropped,
            // unless another change of the key came in between. They stay encoded (the reader's
            // type is not known here) and are decoded on each read.
            for (key, bytes, ttl) in encoded {
                let ticket = c.note(key);
                let weight = bytes.len();
                if c.tier_fill(key, &ticket, Encoded(Arc::from(bytes)), weight, ttl) {
                    self.inner.counters.sets(1);
                }
            }
            return;
        }
        let overwrites: Vec<(&str, &[u8], Duration)> = encoded
            .iter()
            .map(|(k, b, t)| (k.as_str(), b.as_slice(), *t))
            .collect();
        if c.apply(Change::Overwrite(&overwrites)).await.is_ok() {
            self.inner.counters.sets(overwrites.len() as u64);
        }
    }

    /// Values for many keys in one round trip (`MGET`), in the order of `keys`.
    ///
    /// Keys found in the in-process tier are not asked of Redis; the others are not added to
    /// the tier (a batch read does not learn their remaining TTLs). A tagged value costs one
    /// more round trip for the versions of its tags.
    pub async fn get_many<T>(&self, keys: &[Key]) -> Vec<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let c = self.coherence();
        let mut out: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut remote_names = Vec::new();
        for key in keys {
            let found = if self.caches(key) {
                self.tier_value::<T>(key)
            } else {
                None
            };
            match found {
                Some(_) => self.inner.counters.local_hit(key.category()),
                None if self.caches(key) => remote_names.push(key.as_str()),
                None => {}
            }
            out.push(found);
        }
        let raw = if self.enabled() && !c.is_standalone() {
            c.remote.mget(&remote_names).await.ok()
        } else {
            None
        };
        let mut raw = raw
            .unwrap_or_else(|| vec![None; remote_names.len()])
            .into_iter();
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            // Filled so far: from the tier (counted above); the others are Redis's, in order.
            if slot.is_some() {
                continue;
            }
            if !self.caches(key) {
                self.count_read(key, false);
                continue;
            }
            if let Some(Some(bytes)) = raw.next()
                && let Ok(Lookup::Hit(v, _)) = self.open::<T>(key, &bytes, &[]).await
            {
                *slot = Some(v);
            }
            self.count_read(key, slot.is_some());
        }
        out
    }

    /// The cached value, or the value of `init`, which is then cached.
    ///
    /// Concurrent callers for one key in this process run one `init` between them and share its
    /// value. If the running caller is cancelled, a waiting caller runs its own `init` (see
    /// [`try_get_with`](Self::try_get_with)).
    ///
    /// ```no_run
    /// # async fn demo(cache: tiercache::Cache) {
    /// use tiercache::{Category, Tag};
    /// const IMAGES: Category = Category::from_static("images");
    /// // Tagged, so that `cache.invalidate_tag(&Tag::new("image", ["nginx"]))` reaches it.
    /// let key = cache
    ///     .key(&IMAGES, ["nginx", "latest"])
    ///     .with_tags([Tag::new("image", ["nginx"])]);
    /// let digest: String = cache.get_with(&key, async { "sha256:…".to_string() }).await;
    /// # }
    /// ```
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
    /// A value is not stored if, while `init` ran, its key was invalidated or overwritten (by
    /// any instance), one of its tags was invalidated, or a pattern or clear covered it: it may
    /// predate the write that caused the change, and storing it would undo the invalidation.
    /// Callers that joined such a load after its `init` started then run their own (coalesced
    /// among themselves) instead of sharing a value that may predate a write they saw
    /// acknowledged; those that joined before share it, since it was read after they arrived.
    /// While Redis is unreachable, other instances' invalidations cannot be seen: callers that
    /// joined within one [`local_lease`](CacheBuilder::local_lease) of the load's start share
    /// its value, later ones load again.
    ///
    /// ```no_run
    /// # async fn demo(cache: tiercache::Cache) {
    /// # async fn load_from_db(id: u64) -> Result<String, std::io::Error> { Ok(id.to_string()) }
    /// use tiercache::Category;
    /// const SCANS: Category = Category::from_static("scans");
    /// let key = cache.key(&SCANS, ["42"]);
    /// match cache.try_get_with(&key, load_from_db(42)).await {
    ///     Ok(scan) => println!("{scan}"),
    ///     Err(e) => eprintln!("shared by every caller of this load: {e}"),
    /// }
    /// # }
    /// ```
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
        if !self.caches(key) {
            // A disabled cache (or a category it must not cache) is a plain pass-through: no
            // Redis, no coalescing.
            self.inner.counters.miss(key.category());
            self.inner.counters.loader_run();
            return init
                .await
                .map(|v| (v, CacheStatus::Bypass))
                .map_err(Arc::new);
        }
        // A tier hit completes here, without building the (larger) future of a load.
        if let Some(v) = self.tier_value::<T>(key) {
            self.inner.counters.local_hit(key.category());
            return Ok((v, CacheStatus::Hit));
        }
        Box::pin(self.load(key, init)).await
    }

    /// The rest of [`try_get_with_status`](Self::try_get_with_status) after a miss in the tier:
    /// Redis, then a coalesced load.
    #[tracing::instrument(level = "trace", skip_all, fields(key = key.as_str()))]
    async fn load<T, E, F>(&self, key: &Key, init: F) -> Result<(T, CacheStatus), Arc<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>>,
    {
        // Noted before Redis is asked: callers that arrive after a change never join a load
        // that began before it (the flight is named by the ticket).
        let ticket = self.coherence().note(key);
        // Once a Redis call of this lookup has failed, the rest are skipped: a hung Redis costs
        // the caller at most one operation timeout on top of the loader.
        let (reachable, take) = match self.look_remote(key, &ticket).await {
            Ok(Lookup::Hit(v, _)) => {
                self.count_read(key, true);
                return Ok((v, CacheStatus::Hit));
            }
            Ok(Lookup::Miss) => (true, Take::IfEmpty),
            Ok(Lookup::Stale) => (true, Take::Replacing),
            Err(_) => (false, Take::IfEmpty),
        };
        self.count_read(key, false);
        let flight = ticket.flight(key);
        self.inner
            .loads
            .run(&flight, |publish| async move {
                self.lead(key, reachable, take, init, |result, started| {
                    publish.publish_until(result, started)
                })
                .await
            })
            .await
    }

    /// The leader's part of a load: lease, load, fill. `refused` hands the result to the waiters
    /// that joined before the load began (see [`try_get_with`](Self::try_get_with)).
    async fn lead<T, E, F>(
        &self,
        key: &Key,
        reachable: bool,
        mut take: Take,
        init: F,
        refused: impl FnOnce(Result<(T, CacheStatus), Arc<E>>, Instant),
    ) -> Result<(T, CacheStatus), Arc<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>>,
    {
        let c = self.coherence();
        // Noted again now: only changes from here on can make our value stale.
        let ticket = c.note(key);
        let ttl = self.inner.ttl.for_key(key);
        // Bypass when Redis is away: the value is then shared with waiters that joined within
        // one lease of the load's start (see the end of this function).
        let mut status = CacheStatus::Miss;
        let mut guard = LeaseGuard {
            coherence: c,
            key,
            lease: None,
        };
        if c.is_standalone() {
            // The tier is the store: nothing to lease.
        } else if !reachable {
            status = CacheStatus::Bypass;
        } else {
            // A load that finished between our miss and our taking the lead stored its value:
            // use it rather than load again. At most twice: a stale value is replaced.
            for _ in 0..2 {
                match c.lease(key, ttl, take).await {
                    Ok(Leasing::Leased(lease)) => {
                        guard.lease = Some(lease);
                        break;
                    }
                    Ok(Leasing::Found(bytes)) => match self.open::<T>(key, &bytes, &[]).await {
                        Ok(Lookup::Hit(v, _)) => return Ok((v, CacheStatus::Miss)),
                        Ok(Lookup::Stale) => take = Take::Replacing,
                        Ok(Lookup::Miss) => take = Take::IfEmpty,
                        Err(_) => break,
                    },
                    Err(e) => {
                        if e.is_unreachable() {
                            status = CacheStatus::Bypass;
                        }
                        break;
                    }
                }
            }
        }
        self.inner.counters.loader_run();
        let started = Instant::now();
        let value = init.await;
        self.inner
            .counters
            .loaded(started.elapsed(), value.is_err());
        let value = value.map_err(Arc::new)?;
        let stored = self
            .fill(key, &ticket, guard.lease.as_ref(), &value, ttl)
            .await;
        if stored {
            guard.lease = None;
        }
        let result = Ok((value, status));
        if !stored {
            // A change overlapped the load, or the store failed so that we cannot tell: the
            // value read from the source after a waiter arrived is good for that waiter, not for
            // one who may have arrived after the change. While Redis is away no change can be
            // seen at all; the value is then shared with callers that joined within one lease
            // (Δ) of its start: a write acknowledged more than Δ before they arrived came
            // before the load began.
            let cutoff = match status {
                CacheStatus::Bypass => started + c.local_lease(),
                _ => started,
            };
            refused(result.clone(), cutoff);
        }
        result
    }

    /// Encodes a loaded value with its tags' noted versions and stores it (see `coherence`).
    async fn fill<T>(
        &self,
        key: &Key,
        ticket: &Ticket,
        lease: Option<&Lease>,
        value: &T,
        ttl: Duration,
    ) -> bool
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let c = self.coherence();
        if lease.is_none() && !c.is_standalone() || !self.tags_fit(key) {
            return false;
        }
        let versions: Vec<&[u8]> = lease
            .map(|l| l.tag_versions.iter().map(Vec::as_slice).collect())
            .unwrap_or_default();
        let Encoding::Bytes(bytes) = self.encode(key, value, &versions) else {
            return false;
        };
        c.fill(key, ticket, lease, &bytes, ttl, value.clone()).await
    }

    /// `value` encoded with `key`'s tags at `versions` (in the key's order; none standalone),
    /// unless it cannot be (logged and counted), its category is sensitive and not cached (no
    /// keys: said at start-up), or it is larger than `max_value_bytes` (logged and counted). A
    /// sensitive category's value is encrypted; the limit applies to what Redis would hold.
    fn encode<T: Serialize + ?Sized>(&self, key: &Key, value: &T, versions: &[&[u8]]) -> Encoding {
        let tags: Vec<(&str, &[u8])> = key
            .tags()
            .iter()
            .map(Tag::as_str)
            .zip(versions.iter().copied())
            .collect();
        let encoded = self
            .inner
            .envelope
            .encode_tagged(value, &tags)
            .and_then(|envelope| self.inner.protection.seal(key, envelope));
        match encoded {
            Ok(Some(bytes))
                if self.inner.value_limit.admits(
                    key.as_str(),
                    bytes.len(),
                    &self.inner.counters,
                ) =>
            {
                Encoding::Bytes(bytes)
            }
            Ok(_) => Encoding::NotStored,
            Err(e) => {
                self.inner.counters.error();
                tracing::warn!(key = key.as_str(), error = %e, "value cannot be encoded; not cached");
                Encoding::Failed
            }
        }
    }

    /// Whether `key`'s tags fit in an entry; if not, says so (a value is then never stored).
    fn tags_fit(&self, key: &Key) -> bool {
        if key.tags_fit() {
            return true;
        }
        self.inner.counters.error();
        tracing::warn!(
            key = key.as_str(),
            tags = key.tags().len(),
            "more tags than an entry can carry ({}); not stored",
            crate::MAX_TAGS
        );
        false
    }

    /// Removes `key`. Never fails: if Redis cannot be reached the invalidation is kept and
    /// applied before anything is read from Redis again (see `invalidation`).
    ///
    /// ```no_run
    /// # async fn demo(cache: tiercache::Cache, key: tiercache::Key) {
    /// // After the write to the source has committed:
    /// cache.invalidate(&key).await;
    /// # }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(key = key.as_str()))]
    pub async fn invalidate(&self, key: &Key) {
        let _ = self.invalidate_keys(&[key.as_str()]).await;
    }

    /// Removes keys; returns how many were removed. A failure is owed (see `invalidation`).
    async fn invalidate_keys(&self, keys: &[&str]) -> Result<u64> {
        if !self.enabled() {
            return Ok(0);
        }
        let result = self
            .coherence()
            .apply(Change::Invalidate(Target::Keys(keys)))
            .await;
        match &result {
            Ok(removed) => {
                self.inner.counters.deletes(*removed);
                tracing::info!(keys = ?keys, removed, "invalidated");
            }
            Err(e) => log_deferred(e, &keys.join(" "), "invalidation"),
        }
        result
    }

    /// Makes every entry that carries `tag` stale, in every instance: one Redis command (the
    /// tag's version is removed) however many entries carry it. Never fails: if Redis cannot be
    /// reached the invalidation is kept and replayed before anything is read from Redis again.
    ///
    /// ```no_run
    /// # async fn demo(cache: tiercache::Cache) {
    /// cache.invalidate_tag(&tiercache::Tag::new("image", ["nginx"])).await;
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &Tag) {
        self.invalidate_tags(std::slice::from_ref(tag)).await;
    }

    /// [`invalidate_tag`](Self::invalidate_tag) for several tags, in one round trip.
    #[tracing::instrument(level = "debug", skip_all, fields(tags = tags.len()))]
    pub async fn invalidate_tags(&self, tags: &[Tag]) {
        if !self.enabled() || tags.is_empty() {
            return;
        }
        match self
            .coherence()
            .apply(Change::Invalidate(Target::Tags(tags)))
            .await
        {
            Ok(_) => {
                self.inner.counters.tag_invalidations(tags.len() as u64);
                tracing::info!(tags = ?tags.iter().map(Tag::as_str).collect::<Vec<_>>(), "invalidated tags");
            }
            Err(e) => log_deferred(&e, "tags", "tag invalidation"),
        }
    }

    /// Removes every key matching `pattern` (SCAN + UNLINK in batches, never KEYS) and returns
    /// how many were removed. On failure the invalidation is also kept and applied before
    /// anything is read from Redis again; until then, instances that still reach Redis may read
    /// keys the sweep had not reached (tags have no such window).
    pub async fn invalidate_pattern(&self, pattern: &Pattern) -> Result<u64> {
        self.check_pattern(pattern)?;
        self.invalidate_matching(
            Target::Pattern(pattern),
            pattern,
            "invalidated keys by pattern",
        )
        .await
    }

    /// Removes every key of this cache's namespace, and nothing else (never FLUSHDB).
    pub async fn clear(&self) -> Result<u64> {
        let pattern = self.inner.keys.namespace_pattern();
        self.invalidate_matching(Target::Clear, &pattern, "cleared namespace")
            .await
    }

    async fn invalidate_matching(
        &self,
        target: Target<'_>,
        pattern: &Pattern,
        what: &str,
    ) -> Result<u64> {
        if !self.enabled() {
            return Ok(0);
        }
        let result = self.coherence().apply(Change::Invalidate(target)).await;
        match &result {
            Ok(removed) => {
                self.inner.counters.deletes(*removed);
                tracing::info!(pattern = pattern.as_str(), removed, "{what}");
            }
            Err(e) => log_deferred(e, pattern.as_str(), what),
        }
        result
    }

    /// Whether `key` holds a value in Redis (or, standalone, in the tier).
    pub async fn contains(&self, key: &Key) -> Result<bool> {
        let c = self.coherence();
        if c.is_standalone() {
            return Ok(c.tier_get(key).is_some());
        }
        c.remote.contains(key.as_str()).await
    }

    /// Remaining TTL of `key` in Redis; `None` if it is absent or has no expiry.
    /// [`Error::NoRedis`] for a standalone cache.
    pub async fn ttl(&self, key: &Key) -> Result<Option<Duration>> {
        self.needs_redis("ttl")?;
        self.coherence().remote.pttl(key.as_str()).await
    }

    /// Size in bytes of the stored (encoded) value of a raw key of this namespace; 0 if absent.
    /// [`Error::NoRedis`] for a standalone cache.
    pub async fn stored_size(&self, raw_key: &str) -> Result<u64> {
        self.check_raw(raw_key)?;
        self.needs_redis("stored_size")?;
        self.coherence().remote.strlen(raw_key).await
    }

    /// Remaining TTL of a raw key of this namespace (as listed by [`keys`](Self::keys)).
    /// [`Error::NoRedis`] for a standalone cache.
    pub async fn raw_ttl(&self, raw_key: &str) -> Result<Option<Duration>> {
        self.check_raw(raw_key)?;
        self.needs_redis("raw_ttl")?;
        self.coherence().remote.pttl(raw_key).await
    }

    /// [`Error::NoRedis`] for a standalone cache; a disabled one answers
    /// [`Error::Unavailable`] from Redis calls, as its breaker stays open.
    fn needs_redis(&self, operation: &'static str) -> Result<()> {
        match self.inner.mode {
            Mode::Standalone => Err(Error::NoRedis {
                operation,
                mode: Mode::Standalone.as_str(),
            }),
            _ => Ok(()),
        }
    }

    /// Removes a raw key of this namespace; returns whether it existed.
    pub async fn invalidate_raw(&self, raw_key: &str) -> Result<bool> {
        self.check_raw(raw_key)?;
        Ok(self.invalidate_keys(&[raw_key]).await? > 0)
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
        let flight = self.coherence().note(key).flight(key);
        self.inner.loads.waiters(&flight)
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

    /// Up to `limit` keys matching `pattern`, found with SCAN (keys of loads in flight
    /// included). [`Error::NoRedis`] for a standalone cache.
    pub async fn keys(&self, pattern: &Pattern, limit: usize) -> Result<Vec<String>> {
        self.check_pattern(pattern)?;
        self.needs_redis("keys")?;
        self.coherence().remote.scan_keys(pattern, limit).await
    }

    /// Waits until this instance has applied every change that any instance had made (and
    /// Redis handled) before the call: one of its heartbeats sent after the call came back
    /// through the invalidation channel. For reading your writes across instances (a request
    /// routed to another instance after a write) and for tests. Returns at once without an
    /// in-process tier (Redis alone is always current); returns false if no heartbeat came back
    /// within the tier's lease, in which case the tier is not serving either.
    pub async fn catch_up(&self) -> bool {
        self.coherence().catch_up().await
    }

    /// Round-trip time of a PING. Fails at once while the circuit breaker is open, and with
    /// [`Error::NoRedis`] for a standalone cache.
    pub async fn ping(&self) -> Result<Duration> {
        self.needs_redis("ping")?;
        self.coherence().remote.ping().await
    }

    /// Whether the cache is using Redis (the circuit breaker is closed).
    pub fn is_connected(&self) -> bool {
        self.inner.mode == Mode::Redis && self.coherence().remote.breaker.is_closed()
    }

    /// A snapshot of the statistics. The Redis-side fields (memory, evictions, key count) are
    /// `None` when Redis does not answer.
    pub async fn stats(&self) -> Stats {
        let mut stats = self.stats_without_keys().await;
        if stats.connected {
            stats.keys = self
                .coherence()
                .remote
                .count_matching(&self.inner.keys.namespace_pattern())
                .await
                .ok();
        }
        stats
    }

    /// [`stats`](Self::stats) without the key count (`keys` is `None`): one `INFO` (bounded by
    /// the operation timeout, skipped while the breaker is open) and no SCAN, so it costs the
    /// same whatever the namespace holds. For periodic sampling: metrics scrapes, alerts.
    pub async fn stats_without_keys(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.uptime = self.inner.started.elapsed();
        stats.mode = self.inner.mode.as_str();
        stats.local = self.local_stats();
        // Skipped while the breaker is open, so reading stats does not count short circuits.
        if !self.is_connected() {
            return stats;
        }
        let remote = &self.coherence().remote;
        if let Ok(info) = remote.info().await {
            stats.evicted_keys = info.evicted_keys;
            stats.used_memory_bytes = info.used_memory;
            stats.maxmemory_bytes = info.maxmemory;
            stats.maxmemory_policy = info.maxmemory_policy;
            stats.used_memory_human = info.used_memory_human;
        }
        stats.connected = self.is_connected();
        stats
    }

    /// Up to `limit` of the last [`HISTORY_LEN`](crate::HISTORY_LEN) invalidations this
    /// instance made or heard of, newest first.
    ///
    /// Other instances' invalidations are heard through the invalidation channel, to which only
    /// a cache with an in-process tier subscribes: a cache without one lists its own only.
    /// Overwrites (`insert`) are not listed.
    ///
    /// ```no_run
    /// # async fn demo(cache: tiercache::Cache) {
    /// for record in cache.recent_invalidations(10) {
    ///     println!("{} {:?} by {}", record.kind.as_str(), record.targets, record.instance);
    /// }
    /// # }
    /// ```
    pub fn recent_invalidations(&self, limit: usize) -> Vec<InvalidationRecord> {
        self.coherence().history.recent(limit)
    }

    /// This cache's instance id as 16 hex digits: random per built cache, carried by its
    /// notices on the invalidation channel and by the records of
    /// [`recent_invalidations`](Self::recent_invalidations).
    pub fn instance_id(&self) -> String {
        format!("{:016x}", self.coherence().channel.id())
    }

    /// The in-process tier's figures (`None` without a tier), without asking Redis anything:
    /// cheap enough for a health check.
    pub fn local_stats(&self) -> Option<LocalStats> {
        let c = self.coherence();
        let (entries, size_bytes, evictions, lapses, channel_losses) = c.tier_figures()?;
        Some(LocalStats {
            live: c.tier_live(),
            entries,
            size_bytes,
            evictions,
            lapses,
            channel_losses,
        })
    }
}

/// Logs a change that will be replayed later. While the breaker is open the outage has been
/// logged already, so each deferral is only a debug line: an outage must not flood the log.
fn log_deferred(e: &Error, target: &str, what: &str) {
    if e.is_unreachable() {
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
        assert_send(&cache.invalidate_tag(&Tag::new("t", ["x"])));
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
