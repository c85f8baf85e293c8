//! Coherence: the one home for the rules that keep every read at least as new as every
//! acknowledged write, in this instance at once and in every other within a bounded Δ.
//!
//! The façade (`cache`) asks four things of it: *note* a ticket before a read or a load, *lease*
//! a key before a load reads the source, *fill* with the ticket and the lease (stored, or refused
//! because something changed since), and *apply* a change (keys, a pattern, tags, a clear, or
//! overwrites). The channel task (`bus`) hands it other instances' notices and this instance's
//! heartbeats. Each mechanism below closes one race, and names the test that fails without it
//! (each was checked by removing the mechanism and running the test).
//!
//! # In Redis: a lease per key ("Scaling Memcache at Facebook", §3.2.1)
//! A load first *leases* its key: a Lua script stores a lease (a random token, byte 0 = 0) where
//! the value would be, unless a value is there. The load then reads the source, and its value is
//! stored by a second script only if the key still holds that very lease. Any invalidation of
//! the key (UNLINK), overwrite (SET), pattern sweep or clear since the lease was taken removed
//! it, so a value loaded before a write, by any instance, can never be stored after the write's
//! invalidation; nor after a Redis restart, which loses the lease. Only *that key's* changes
//! refuse a load: loads of other keys, of the same category, are unaffected (the per-category
//! generation this replaces refused them all). Another loader's lease is taken over (its holder
//! may have died; it only loses its fill). Fails without it:
//! `invalidation::a_slow_load_elsewhere_never_undoes_an_invalidation`,
//! `invalidation::an_invalidation_while_redis_is_out_of_memory_is_not_undone`.
//!
//! # Tags: versions, checked when read and when filled
//! A tag's version is a random token under `tiercache#tag:{env}:{namespace}:{tag}`. A load notes
//! the versions of its key's tags in the lease's round trip (creating missing ones), and the value
//! carries them (see `codec`). Invalidating a tag removes its version key: one command, however
//! many entries carry it, no member sets, no clocks. A read compares the versions a value
//! carries with the current ones (fetched in the same round trip when the key names its tags),
//! so an entry filled before the invalidation is never served after it. Fails without it:
//! `tags::tag_invalidations_hold_across_instances`,
//! `tags::a_value_loaded_across_a_tag_invalidation_is_never_served` and three more in `tags`.
//! A fill also reads the versions back: if one moved during the load, the fill counts as
//! refused (below). In the tier, an entry records the versions of its tags' stripes, checked on
//! every hit; a value whose tags the reading key does not name stays out of the tier. Fails
//! without it: `tags::a_tier_never_keeps_a_value_its_tags_cannot_reach`.
//!
//! # Waiters of a refused load
//! Callers coalesced on a load (`coalesce`) share its value only if it was stored, or if they
//! joined before the load began to read the source: a refused store means some write overlapped
//! the load, and a caller that joined later may have seen that write acknowledged. While Redis
//! is away nothing can be stored or refused; the value is then shared with callers that joined
//! within one lease (Δ) of the load's start. Fails without it:
//! `invalidation::a_caller_after_an_invalidation_elsewhere_never_gets_an_older_load`.
//!
//! # In process: versions per key stripe, per tag stripe, per scope and per session
//! A [`Ticket`] notes, before a read is sent or a load begins, the version of the key's stripe
//! (one of 4096), of its tags' stripes (two of 4096 per tag; a tag counts as moved only when both
//! did, see [`TAG_STRIPES`]), of the pattern scope and of the tier session. Every change (local,
//! or a notice from another instance) moves the versions it concerns under the write side of a
//! lock (`gate`), and a fill of the tier checks its ticket under the read side,
//! so a fill either lands before the move (and the drop that follows removes it) or sees the move
//! and stores nothing. Fails without it: `local::no_read_after_an_invalidation_sees_an_older_value`
//! (10 runs of 10). Local changes move the versions both before and after their Redis change: a
//! read sent just before the change reached Redis may have seen the old value *and* the first
//! move. Fails without it: the same test (8 runs of 20; it found the missing second move). Callers
//! after a change never join a load that began before it: the coalescing flight is named by the
//! ticket. Fails without it: `invalidation::callers_after_an_invalidation_never_join_an_older_load`,
//! `standalone::a_caller_after_a_clear_never_joins_an_older_load`.
//!
//! # The tier's lease: no stale tier while Redis hangs
//! Other instances' changes reach this tier as notices on a Redis pub/sub channel, which may go
//! silent without closing (Redis paused, a connection black-holed). So the tier serves only
//! within a lease of [`DEFAULT_LOCAL_LEASE`] (`CacheBuilder::local_lease`): each instance
//! publishes a heartbeat on its own channel every fifth of the lease, through its command
//! connection, stamped with the time it was sent; hearing it back proves that every notice Redis
//! handled before it has been applied here (one subscription delivers in order). A hit needs the
//! last heartbeat heard to have been sent less than a lease ago, checked with the clock on every
//! hit (a task that flipped a flag could be starved exactly when the lease matters). Fails
//! without it: `local::a_hung_redis_never_leaves_a_stale_tier`, and the chaos test below (about
//! 2,000 violations in 8 s). When a lapsed lease is renewed, or the subscription is lost, the
//! tier is dropped (a new session) and fills noted in an older session are refused. No test
//! fails without the drop on renewal: it covers Redis handling, as it resumes from a pause, a
//! heartbeat sent after a notice before that notice (it reads the waiting connections in no set
//! order), a window of microseconds that no test here stages reliably.
//!
//! # Writers: changes always sent, owed when they fail, and the lease waited out
//! A change is sent even while the breaker is open (reads are not), together with its notice in
//! one round trip: a merely paused Redis then applies it, in order, before anything sent later.
//! Fails without it: `invalidation::an_invalidation_is_sent_even_while_the_writers_breaker_is_open`.
//! A change that fails fast (a connection being replaced) is sent again within the lease. One
//! that fails for good is owed (`invalidation`): the breaker opens, and recovery replays it before
//! Redis is read again. And before it returns, the writer waits until a lease has passed since
//! Redis began failing: by then no tier anywhere can still serve from before the write, because
//! none can have heard a heartbeat since. Fails without it:
//! `local::a_hung_redis_never_leaves_a_stale_tier`.
//!
//! An overwrite that Redis refuses with `OOM` (full, under `noeviction`) is not a fault:
//! Redis answers, serves reads and still removes keys. The keys are invalidated instead (the
//! old values must not outlive the write), nothing is owed and the breaker stays closed.
//! Invalidations themselves (`UNLINK`, `PUBLISH`) are never refused for memory; one refused
//! for another reason is owed like a failed one. Shown by `memory::oom_is_a_failed_write_never_a_failed_request`.
//!
//! So Δ, the time after a write's acknowledgement during which another instance may still serve
//! the older value, is the notice's delivery time while Redis works (well under a millisecond),
//! and at most one lease whatever Redis does (hangs, restarts empty, drops subscribers); a write
//! costs at most one lease more, once per fault. Checked over random faults by
//! `chaos::reads_never_go_back_under_faults`, which reports violations for a naive two-tier
//! cache. After an outage that several instances saw, each replays what it owes when its own
//! probe finds Redis again, and an instance whose probe came first must not read Redis before
//! the others have: recovery (`probe`) keeps the breaker open one cool-down and one probe head
//! start (the op timeout, at most 50 ms) more, plus 100 ms, after Redis answers. Fails without
//! it: `acl::a_write_during_a_shared_outage_is_never_read_back_old` (about 1,200 stale reads),
//! and the chaos soak (`scan-api/benches/chaos.rs`: 51 stale reads after an ACL user was
//! switched off and on, seed 4916927165201593319; 0 with it).
//! Not covered: a writer cut off from a Redis that the other instances still reach (a partition
//! around one instance), or one slower to come back than that. It cannot tell them; they serve
//! the old value until it reconnects and replays (its breaker stays open meanwhile, so it serves
//! its own reads from the source).
//!
//! # Standalone
//! Without Redis (`Mode::Standalone`) the tier is the cache: always live, changes local only.

use std::any::Any;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::bus::{Channel, Notice};
use crate::clock::Clock;
use crate::codec::Sealed;
use crate::error::Result;
use crate::history::{History, InvalidationKind};
use crate::invalidation::PendingInvalidations;
use crate::key::{Key, KeySpace, Pattern, Tag};
use crate::local::{Entry, Local, SWEEP_EVERY};
use crate::remote::{Leased, Remote, TagNote, Take, Via};
use crate::stats::Counters;

/// Default length of the in-process tier's lease: the Δ of a fault (see the module docs).
pub const DEFAULT_LOCAL_LEASE: Duration = Duration::from_millis(100);

/// Stripes of the per-key versions: two keys share one with probability 1/4096, which only
/// refuses an occasional fill of the tier or splits a coalesced load.
const KEY_STRIPES: usize = 4096;
/// Stripes of the per-tag versions. A tag moves two of them, and a value counts as invalidated
/// only when *both* of one of its tags' stripes moved (a counting Bloom filter with two hashes):
/// a tag invalidated always moves both, and another tag's invalidation moves both of an
/// unrelated tag's stripes with a probability of about (2n / 4096)² for n invalidations during
/// the value's life, instead of 2n / 4096 with one stripe. A false positive only costs a read
/// of Redis (or, standalone, of the source).
const TAG_STRIPES: usize = 4096;

/// After a change fails fast (a connection being replaced), it is sent again this much later,
/// within the lease.
const RESEND_AFTER: Duration = Duration::from_millis(10);

/// What a change targets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    Keys(&'a [&'a str]),
    Pattern(&'a Pattern),
    Tags(&'a [Tag]),
    /// The whole namespace.
    Clear,
}

/// A change of cached data, applied here, in Redis and in every other instance's tier.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Change<'a> {
    /// Removal.
    Invalidate(Target<'a>),
    /// New values (`insert`): each key, its encoded value and its TTL.
    Overwrite(&'a [(&'a str, &'a [u8], Duration)]),
}

/// How the cache is deployed, as coherence sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Redis is the shared store; a tier, if any, follows the channel.
    Shared,
    /// No Redis: the tier is the store and changes are local.
    Standalone,
}

/// In-process versions, moved by changes and checked by fills.
#[derive(Debug)]
struct Versions {
    keys: Box<[AtomicU64]>,
    tags: Box<[AtomicU64]>,
    /// Moved by pattern invalidations (which cannot name their keys in advance).
    scope: AtomicU64,
    /// Moved whenever the whole tier is dropped: a clear, a lapsed lease, a lost channel.
    session: AtomicU64,
    /// Fills of the tier check their ticket and insert under the read side; moves take the
    /// write side. A std lock: both sides hold it for a few instructions, never across an
    /// `.await`.
    gate: RwLock<()>,
    /// Fixed per process, so a key always maps to the same stripe.
    hasher: RandomState,
}

impl Versions {
    fn new() -> Self {
        Self {
            keys: (0..KEY_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            tags: (0..TAG_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            scope: AtomicU64::new(0),
            session: AtomicU64::new(0),
            gate: RwLock::new(()),
            hasher: RandomState::new(),
        }
    }

    fn key_stripe(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % KEY_STRIPES as u64) as usize
    }

    /// The two stripes of `tag` (distinct).
    fn tag_stripes(&self, tag: &Tag) -> [u32; 2] {
        let h = self.hasher.hash_one(tag.as_str());
        let first = (h % TAG_STRIPES as u64) as u32;
        let mut second = ((h >> 32) % TAG_STRIPES as u64) as u32;
        if second == first {
            second = (first + 1) % TAG_STRIPES as u32;
        }
        [first, second]
    }

    /// The versions of `tag`'s stripes now.
    fn tag_seen(&self, tag: &Tag) -> TagSeen {
        self.tag_stripes(tag)
            .map(|i| (i, self.tags[i as usize].load(SeqCst)))
    }

    /// Whether the tag seen as `seen` may have been invalidated since: both its stripes moved.
    fn tag_moved(&self, seen: &TagSeen) -> bool {
        seen.iter()
            .all(|&(i, version)| self.tags[i as usize].load(SeqCst) != version)
    }

    /// Runs `f` (which moves versions) exclusively of fills.
    fn moving(&self, f: impl FnOnce(&Self)) {
        let _exclusive = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        f(self);
    }
}

/// What a read or a load noted before it began: the versions its result must still match to be
/// put in the tier.
#[derive(Clone, Debug)]
pub(crate) struct Ticket {
    key: (usize, u64),
    scope: u64,
    session: u64,
    tags: Vec<TagSeen>,
}

/// A tag's two stripes and their versions when a read began.
pub(crate) type TagSeen = [(u32, u64); 2];

impl Ticket {
    fn is_current(&self, v: &Versions) -> bool {
        v.keys[self.key.0].load(SeqCst) == self.key.1
            && v.scope.load(SeqCst) == self.scope
            && v.session.load(SeqCst) == self.session
            && !self.tags.iter().any(|seen| v.tag_moved(seen))
    }

    /// The coalescing name of a load of `key` begun with this ticket: callers after a change of
    /// the key (or of one of its tags, a pattern, or a clear) name another flight.
    pub(crate) fn flight(&self, key: &Key) -> String {
        use std::fmt::Write;
        let mut name = format!("{}.{}.{}", self.key.1, self.scope, self.session);
        for [(_, first), (_, second)] in &self.tags {
            let _ = write!(name, ".{first}:{second}");
        }
        name.push('#');
        name.push_str(key.as_str());
        name
    }
}

/// A lease on a key in Redis, held by a load, and the tag versions it noted.
#[derive(Debug)]
pub(crate) struct Lease {
    token: Vec<u8>,
    /// The versions of the key's tags (in the key's order) when the lease was taken.
    pub(crate) tag_versions: Vec<Vec<u8>>,
}

/// What leasing a key found.
#[derive(Debug)]
pub(crate) enum Leasing {
    /// The lease is ours.
    Leased(Lease),
    /// A value was stored meanwhile (to be checked by the caller like any read).
    Found(Vec<u8>),
}

/// The tier's lease on the channel (see the module docs).
#[derive(Debug)]
struct TierLease {
    /// The clock of the stamps below (and of the tier's expiries).
    clock: Clock,
    /// When the last heartbeat heard back was sent, on `clock`, plus one; 0: none since the
    /// channel was last lost.
    heard: AtomicU64,
    length: Duration,
}

impl TierLease {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn length_ns(&self) -> u64 {
        Clock::span(self.length)
    }

    /// Whether the lease runs at `now` (read from `clock`, which may trail real time by its
    /// lag: allowed for, so the lease never looks longer than it is).
    fn is_live_at(&self, now: u64) -> bool {
        let heard = self.heard.load(SeqCst);
        heard != 0 && now.saturating_add(self.clock.lag()) < heard - 1 + self.length_ns()
    }

    fn is_live(&self) -> bool {
        self.is_live_at(self.now())
    }
}

/// Settings of coherence.
#[derive(Debug)]
pub(crate) struct CoherenceConfig {
    pub(crate) keys: KeySpace,
    pub(crate) scope: Scope,
    /// Bytes for the tier; 0 for none.
    pub(crate) local_capacity: u64,
    pub(crate) local_max_ttl: Duration,
    pub(crate) local_lease: Duration,
    /// The longest a load may take and still be stored (the Redis lease's TTL).
    pub(crate) max_load_time: Duration,
}

/// The coherence protocol of one cache (see the module docs).
#[derive(Debug)]
pub(crate) struct Coherence {
    keys: KeySpace,
    tag_prefix: String,
    scope: Scope,
    /// Shared with the recovery task.
    pub(crate) remote: Arc<Remote>,
    local: Option<Local>,
    local_max_ttl: Duration,
    max_load_time: Duration,
    versions: Versions,
    lease: TierLease,
    pub(crate) channel: Channel,
    pending: PendingInvalidations,
    pub(crate) counters: Arc<Counters>,
    /// The recent invalidations made here or heard of (see `history`).
    pub(crate) history: History,
    lapses: AtomicU64,
    channel_losses: AtomicU64,
    /// Woken on every renewal of the lease (for [`catch_up`](Self::catch_up)).
    renewed: tokio::sync::Notify,
}

impl Coherence {
    pub(crate) fn new(
        config: CoherenceConfig,
        remote: Arc<Remote>,
        counters: Arc<Counters>,
    ) -> Self {
        let channel = Channel::new(&config.keys, remote.layout());
        Self {
            tag_prefix: config.keys.tag_prefix(),
            pending: PendingInvalidations::new(config.keys.namespace_pattern()),
            keys: config.keys,
            scope: config.scope,
            remote,
            local: (config.local_capacity > 0).then(|| Local::new(config.local_capacity)),
            local_max_ttl: config.local_max_ttl,
            max_load_time: config.max_load_time,
            versions: Versions::new(),
            lease: TierLease {
                clock: Clock::new(),
                heard: AtomicU64::new(0),
                length: config.local_lease,
            },
            channel,
            counters,
            history: History::default(),
            lapses: AtomicU64::new(0),
            channel_losses: AtomicU64::new(0),
            renewed: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn is_standalone(&self) -> bool {
        self.scope == Scope::Standalone
    }

    /// Whether this cache has an in-process tier.
    pub(crate) fn has_tier(&self) -> bool {
        self.local.is_some()
    }

    /// Drops the tier's expired entries every [`SWEEP_EVERY`], for as long as the cache lives
    /// (see `local`). Returns at once without a tier.
    pub(crate) async fn sweep_forever(self: Arc<Self>) {
        let Some(local) = &self.local else {
            return;
        };
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let swept = local.sweep(self.lease.now());
            if swept > 0 {
                tracing::debug!(swept, "dropped expired entries from the in-process tier");
            }
        }
    }

    /// Whether the tier may serve now: always standalone, else within the lease.
    pub(crate) fn tier_live(&self) -> bool {
        self.local.is_some() && (self.is_standalone() || self.lease.is_live())
    }

    pub(crate) fn local_lease(&self) -> Duration {
        self.lease.length
    }

    /// The Redis keys of `key`'s tags' versions.
    pub(crate) fn tag_keys(&self, key: &Key) -> Vec<String> {
        key.tags().iter().map(|t| self.keys.tag_key(t)).collect()
    }

    /// A ticket for a read or load of `key` that begins now.
    pub(crate) fn note(&self, key: &Key) -> Ticket {
        let v = &self.versions;
        let stripe = v.key_stripe(key.as_str());
        Ticket {
            key: (stripe, v.keys[stripe].load(SeqCst)),
            scope: v.scope.load(SeqCst),
            session: v.session.load(SeqCst),
            tags: key.tags().iter().map(|t| v.tag_seen(t)).collect(),
        }
    }

    /// The tier's value for `key`, if it may be served: the tier is live, the entry was filled
    /// in the current session, and none of its tags moved since its read began.
    pub(crate) fn tier_get(&self, key: &Key) -> Option<Arc<Entry>> {
        let local = self.local.as_ref()?;
        // One reading of the clock for the lease and the entry's expiry.
        let now = self.lease.now();
        if !self.is_standalone() && !self.lease.is_live_at(now) {
            return None;
        }
        let entry = local.get(key.as_str())?;
        if now >= entry.expires {
            local.invalidate(key.as_str());
            return None;
        }
        let v = &self.versions;
        if entry.session != v.session.load(SeqCst) {
            return None;
        }
        if let Some(tags) = &entry.tags
            && tags.iter().any(|seen| v.tag_moved(seen))
        {
            return None;
        }
        Some(entry)
    }

    /// Puts `value` (read or loaded with `ticket`, `weight` bytes encoded) in the tier for at
    /// most `ttl`, unless something it depends on moved since the ticket was noted or the tier
    /// is not live. Returns whether it did.
    pub(crate) fn tier_fill<V: Any + Send + Sync>(
        &self,
        key: &Key,
        ticket: &Ticket,
        value: V,
        weight: usize,
        ttl: Duration,
    ) -> bool {
        let Some(local) = &self.local else {
            return false;
        };
        let ttl = if self.is_standalone() {
            ttl
        } else {
            ttl.min(self.local_max_ttl)
        };
        if ttl.is_zero() {
            return false;
        }
        let tags = (!ticket.tags.is_empty()).then(|| ticket.tags.clone().into_boxed_slice());
        let expires = self.lease.now().saturating_add(Clock::span(ttl));
        let _shared = self
            .versions
            .gate
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if !ticket.is_current(&self.versions) || !self.tier_live() {
            return false;
        }
        let entry: Arc<Entry> = Arc::new(Entry {
            session: ticket.session,
            tags,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            expires,
            value,
        });
        local.insert(key.as_str(), entry);
        true
    }

    /// Leases `key` in Redis for a load whose value will live `ttl`, noting its tags' versions:
    /// one round trip. `take` says whether a value found there may be replaced (it is stale).
    pub(crate) async fn lease(&self, key: &Key, ttl: Duration, take: Take) -> Result<Leasing> {
        let token = lease_token();
        let life = ttl.saturating_add(self.max_load_time);
        let tags: Vec<(&Tag, Duration)> = key.tags().iter().map(|t| (t, life)).collect();
        let (tag_keys, fresh) = self.tag_notes(&tags);
        let notes = notes(&tag_keys, &fresh, &tags);
        let (leased, tag_versions) = self
            .remote
            .lease(key.as_str(), &token, self.max_load_time, take, &notes)
            .await?;
        Ok(match leased {
            Leased::Taken => Leasing::Leased(Lease {
                token,
                tag_versions,
            }),
            Leased::Found(bytes) => Leasing::Found(bytes),
        })
    }

    /// Returns the lease of a load that will not fill (it failed or was cancelled), so that
    /// the next reader need not take it over. In the background: the caller may be gone.
    pub(crate) fn release(&self, key: &Key, lease: Lease) {
        let (remote, key) = (self.remote.clone(), key.as_str().to_owned());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = remote.release(&key, &lease.token).await;
            });
        }
    }

    /// Whether the tag versions that `sealed` carries are still current. `fetched` holds the
    /// current versions of `key`'s own tags, in order, if they were read with the value (it may
    /// be empty); the versions of any other tag the value carries are fetched here (one more
    /// round trip).
    pub(crate) async fn is_current(
        &self,
        key: &Key,
        sealed: &Sealed<'_>,
        fetched: &[Option<Vec<u8>>],
    ) -> Result<bool> {
        let mut unknown: Vec<(&[u8], String)> = Vec::new();
        for (tag, seen) in &sealed.tags {
            let known = key
                .tags()
                .iter()
                .position(|t| t.as_str() == *tag)
                .and_then(|i| fetched.get(i));
            match known {
                Some(now) => {
                    if now.as_deref() != Some(*seen) {
                        return Ok(false);
                    }
                }
                None => unknown.push((seen, format!("{}{tag}", self.tag_prefix))),
            }
        }
        if unknown.is_empty() {
            return Ok(true);
        }
        let keys: Vec<String> = unknown.iter().map(|(_, k)| k.clone()).collect();
        let now = self.remote.tag_versions(&keys).await?;
        Ok(unknown
            .iter()
            .zip(now)
            .all(|((seen, _), now)| now.as_deref() == Some(*seen)))
    }

    /// Stores a loaded value: in Redis if `lease` is still held there and the tags noted with
    /// it have not moved, then in the tier if `ticket` is still current. Standalone, the tier
    /// is the store. Returns whether the value was stored.
    pub(crate) async fn fill<V: Any + Send + Sync>(
        &self,
        key: &Key,
        ticket: &Ticket,
        lease: Option<&Lease>,
        bytes: &[u8],
        ttl: Duration,
        value: V,
    ) -> bool {
        if self.is_standalone() {
            let stored = self.tier_fill(key, ticket, value, bytes.len(), ttl);
            if stored {
                self.counters.sets(1);
            }
            return stored;
        }
        let Some(lease) = lease else {
            return false;
        };
        let tag_keys = self.tag_keys(key);
        let stored = match self
            .remote
            .fill(key.as_str(), &lease.token, bytes, ttl, &tag_keys)
            .await
        {
            Ok((true, now)) => {
                self.counters.sets(1);
                let same = now.len() == lease.tag_versions.len()
                    && now
                        .iter()
                        .zip(&lease.tag_versions)
                        .all(|(now, noted)| now.as_deref() == Some(noted.as_slice()));
                if !same {
                    tracing::debug!(
                        key = key.as_str(),
                        "a tag was invalidated during the load; its value is stored but stale"
                    );
                }
                same
            }
            Ok((false, _)) => {
                tracing::debug!(
                    key = key.as_str(),
                    "the key changed during the load (here or in another instance); not storing its value"
                );
                false
            }
            Err(_) => false,
        };
        if stored {
            self.tier_fill(key, ticket, value, bytes.len(), ttl);
        }
        stored
    }

    /// The current version of every tag that the values written now (`insert`, with their
    /// TTLs) carry, creating missing ones: one round trip for the whole batch.
    pub(crate) async fn tag_versions_for_write<'k>(
        &self,
        writes: impl Iterator<Item = (&'k Key, Duration)>,
    ) -> Result<HashMap<&'k Tag, Vec<u8>>> {
        // Each distinct tag once, kept for the longest TTL among the values carrying it.
        let mut lives: HashMap<&'k Tag, Duration> = HashMap::new();
        for (key, ttl) in writes {
            for tag in key.tags() {
                let life = lives.entry(tag).or_default();
                *life = (*life).max(ttl.saturating_add(self.max_load_time));
            }
        }
        if lives.is_empty() || self.is_standalone() {
            return Ok(HashMap::new());
        }
        let tags: Vec<(&'k Tag, Duration)> = lives.into_iter().collect();
        let (tag_keys, fresh) = self.tag_notes(&tags);
        let versions = self
            .remote
            .note_tags(&notes(&tag_keys, &fresh, &tags))
            .await?;
        Ok(tags.into_iter().map(|(t, _)| t).zip(versions).collect())
    }

    /// For noting `tags`: their Redis keys, and a fresh version for each in case it has none.
    fn tag_notes(&self, tags: &[(&Tag, Duration)]) -> (Vec<String>, Vec<String>) {
        tags.iter()
            .map(|(t, _)| (self.keys.tag_key(t), version_token()))
            .unzip()
    }

    /// Invalidates in this process: moves the versions that `change` concerns and invalidates
    /// its entries in the tier; returns how many entries there were (all of them, for a clear).
    fn invalidate_here(&self, change: &Change<'_>) -> u64 {
        let v = &self.versions;
        let overwritten: Vec<&str>;
        let (target, keys): (Target<'_>, &[&str]) = match change {
            Change::Invalidate(Target::Keys(keys)) => (Target::Keys(keys), keys),
            Change::Invalidate(target) => (*target, &[]),
            Change::Overwrite(entries) => {
                overwritten = entries.iter().map(|(k, _, _)| *k).collect();
                (Target::Keys(&overwritten), &overwritten)
            }
        };
        v.moving(|v| match target {
            Target::Keys(_) => {
                for key in keys {
                    v.keys[v.key_stripe(key)].fetch_add(1, SeqCst);
                }
            }
            Target::Pattern(_) => {
                v.scope.fetch_add(1, SeqCst);
            }
            Target::Tags(tags) => {
                for tag in tags {
                    for i in v.tag_stripes(tag) {
                        v.tags[i as usize].fetch_add(1, SeqCst);
                    }
                }
            }
            Target::Clear => {
                v.session.fetch_add(1, SeqCst);
            }
        });
        let Some(local) = &self.local else {
            return 0;
        };
        match target {
            Target::Keys(_) => keys.iter().map(|k| u64::from(local.invalidate(k))).sum(),
            Target::Pattern(pattern) => local.invalidate_matching(pattern),
            // Lazily: each entry carries its tags' versions, checked on every hit.
            Target::Tags(_) => 0,
            Target::Clear => local.invalidate_all(),
        }
    }

    /// Drops `keys` here before a standalone `insert` puts their new values in: an overwrite,
    /// not an invalidation, so neither listed among the recent invalidations nor counted as one.
    pub(crate) fn overwrite_here(&self, keys: &[&str]) {
        self.invalidate_here(&Change::Invalidate(Target::Keys(keys)));
    }

    /// Applies `change` here, in Redis and (through the channel) in every other instance's
    /// tier; returns how many keys it removed (entries of the tier, standalone). See the module
    /// docs for the order of steps and why; on failure the change is owed and replayed.
    pub(crate) async fn apply(&self, change: Change<'_>) -> Result<u64> {
        if let Change::Invalidate(target) = change {
            let (kind, targets) = match target {
                Target::Keys(keys) => (
                    InvalidationKind::Key,
                    keys.iter().map(|k| (*k).to_owned()).collect(),
                ),
                Target::Pattern(p) => (InvalidationKind::Pattern, vec![p.as_str().to_owned()]),
                Target::Tags(tags) => (
                    InvalidationKind::Tag,
                    tags.iter().map(|t| t.as_str().to_owned()).collect(),
                ),
                Target::Clear => (InvalidationKind::Clear, Vec::new()),
            };
            self.invalidated(kind, targets, self.channel.id());
        }
        let dropped = self.invalidate_here(&change);
        if self.is_standalone() {
            return Ok(dropped);
        }
        let notice = self.channel.notice(&change);
        let first = Instant::now();
        let mut deadline = None;
        let result = loop {
            let result = self.send(&change, &notice).await;
            let Err(e) = &result else {
                break result;
            };
            // Since when Redis may have been out of reach: every tier has stopped serving (its
            // lease lapsed) one lease after that.
            let since = self
                .remote
                .breaker
                .failing_since()
                .map_or(first, |s| s.min(first));
            let until = *deadline.get_or_insert(since + self.lease.length);
            if e.is_timeout() || e.is_oom() || Instant::now() + RESEND_AFTER >= until {
                break result;
            }
            tokio::time::sleep(RESEND_AFTER).await;
        };
        // Refused for memory, and the old values removed instead: nothing is owed.
        let mut refused_write = false;
        let result = match (result, &change) {
            (Err(e), Change::Overwrite(entries)) if e.is_oom() => {
                match self.refused_for_memory(entries).await {
                    Ok(()) => {
                        refused_write = true;
                        Err(e)
                    }
                    Err(failed) => Err(failed),
                }
            }
            (result, _) => result,
        };
        self.invalidate_here(&change);
        match result {
            Ok(removed) => Ok(removed),
            Err(e) if refused_write => Err(e),
            Err(e) => {
                self.owe(&change);
                if let Some(until) = deadline {
                    tokio::time::sleep_until(until.into()).await;
                }
                Err(e)
            }
        }
    }

    /// An overwrite that Redis refused with `OOM` (full, under `noeviction`): it is answering,
    /// and still removes keys, so the old values are invalidated instead (they must not outlive
    /// the write), with a notice for the other instances' tiers. A failed write, not a fault:
    /// `Ok` unless that invalidation failed too (then it is owed like any other).
    async fn refused_for_memory(&self, entries: &[(&str, &[u8], Duration)]) -> Result<()> {
        let keys: Vec<&str> = entries.iter().map(|(k, _, _)| *k).collect();
        let change = Change::Invalidate(Target::Keys(&keys));
        let notice = self.channel.notice(&change);
        self.send(&change, &notice).await.map(|_| ())
    }

    /// One attempt at `change` and its notice in Redis.
    async fn send(&self, change: &Change<'_>, notice: &[u8]) -> Result<u64> {
        let notice = Some(self.channel.shared_notice(notice));
        match change {
            Change::Invalidate(Target::Keys(keys)) => {
                self.remote.invalidate_keys(keys, notice, Via::Always).await
            }
            Change::Invalidate(Target::Pattern(pattern)) => {
                self.remote
                    .invalidate_matching(pattern, notice, Via::Always)
                    .await
            }
            Change::Invalidate(Target::Tags(tags)) => {
                let keys: Vec<String> = tags.iter().map(|t| self.keys.tag_key(t)).collect();
                self.remote
                    .invalidate_tags(&keys, notice, Via::Always)
                    .await
                    .map(|()| 0)
            }
            Change::Invalidate(Target::Clear) => {
                let pattern = self.keys.namespace_pattern();
                self.remote
                    .invalidate_matching(&pattern, notice, Via::Always)
                    .await
            }
            Change::Overwrite(entries) => self
                .remote
                .set_many(entries, notice, Via::Always)
                .await
                .map(|()| 0),
        }
    }

    /// Records a change that did not reach Redis, then opens the breaker, so nothing is read
    /// from Redis until recovery has replayed it (in that order: see `invalidation`). An
    /// overwrite is owed as an invalidation of its keys: the old values must go.
    fn owe(&self, change: &Change<'_>) {
        let p = &self.pending;
        match change {
            Change::Invalidate(Target::Keys(keys)) => keys.iter().for_each(|k| p.record_key(k)),
            Change::Invalidate(Target::Pattern(pattern)) => p.record_pattern(pattern),
            Change::Invalidate(Target::Tags(tags)) => tags.iter().for_each(|t| p.record_tag(t)),
            Change::Invalidate(Target::Clear) => p.record_clear(),
            Change::Overwrite(entries) => entries.iter().for_each(|(k, _, _)| p.record_key(k)),
        }
        if self.remote.breaker.trip() {
            self.counters.breaker_trip();
        }
    }

    /// Replays what is owed to Redis (and the notices), ignoring the breaker: for recovery,
    /// before it closes the breaker.
    pub(crate) async fn replay(&self) -> Result<u64> {
        self.pending
            .replay(&self.remote, &self.channel, &self.tag_prefix)
            .await
    }

    /// Whether changes are still owed to Redis.
    pub(crate) fn owes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Applies another instance's notice to the tier. Redis applied the change before the
    /// notice was published, so one move of the versions suffices.
    pub(crate) fn apply_notice(&self, notice: &Notice) {
        let keys: Vec<&str> = notice.keys.iter().map(String::as_str).collect();
        if !keys.is_empty() {
            self.invalidate_here(&Change::Invalidate(Target::Keys(&keys)));
        }
        for pattern in &notice.patterns {
            let pattern = Pattern::from_wire(pattern.clone());
            self.invalidate_here(&Change::Invalidate(Target::Pattern(&pattern)));
        }
        if !notice.tags.is_empty() {
            let tags: Vec<Tag> = notice
                .tags
                .iter()
                .map(|t| Tag::from_encoded(t.clone()))
                .collect();
            self.invalidate_here(&Change::Invalidate(Target::Tags(&tags)));
        }
        if notice.clear {
            self.invalidate_here(&Change::Invalidate(Target::Clear));
        }
    }

    /// Records an invalidation made by instance `from` (this one or another) in the history
    /// and the counters.
    pub(crate) fn invalidated(&self, kind: InvalidationKind, targets: Vec<String>, from: u64) {
        let own = from == self.channel.id();
        self.counters.invalidation(kind, own);
        self.history.record(kind, targets, from, own);
    }

    /// Drops the whole tier (a new session): after an unreadable notice (whatever it said is
    /// unknown), a lapsed lease or a lost channel.
    pub(crate) fn invalidate_tier(&self) {
        self.invalidate_here(&Change::Invalidate(Target::Clear));
    }

    /// The current time as heartbeats are stamped.
    pub(crate) fn stamp(&self) -> u64 {
        self.lease.now()
    }

    /// This instance's heartbeat stamped `sent` came back: everything Redis handled before it
    /// has been applied, so the tier may serve for a lease after `sent`. If the lease had
    /// lapsed, notices may have been missed meanwhile: the tier is dropped first.
    pub(crate) fn renew(&self, sent: u64) {
        let heard = self.lease.heard.load(SeqCst);
        // Lapsed, or may have (the clock may trail real time by its lag).
        if heard == 0 || !self.lease.is_live_at(self.lease.now()) {
            self.invalidate_tier();
            if heard != 0 {
                self.lapses.fetch_add(1, SeqCst);
                tracing::debug!("the in-process tier's lease lapsed; dropped it");
            }
        }
        self.lease.heard.fetch_max(sent.saturating_add(1), SeqCst);
        self.renewed.notify_waiters();
    }

    /// Waits until this instance has applied every change that Redis had handled when the
    /// call began: a heartbeat sent after that has come back. Returns false if none came back
    /// within a lease (the tier is not live then, so it serves nothing stale either). True at
    /// once without a tier, or standalone.
    pub(crate) async fn catch_up(&self) -> bool {
        if self.local.is_none() || self.is_standalone() {
            return true;
        }
        let wait = async {
            // A heartbeat proves it was sent after the call only if its stamp is later than the
            // call's: the clock is coarse, and a heartbeat sent just before the call can carry
            // the same stamp. So ours is stamped from the next tick on.
            let since = self.stamp();
            let mut stamp = self.stamp();
            while stamp <= since {
                tokio::time::sleep(Duration::from_millis(1)).await;
                stamp = self.stamp();
            }
            let _ = self
                .remote
                .publish(self.channel.own(), &stamp.to_le_bytes(), Via::Breaker)
                .await;
            loop {
                let renewed = self.renewed.notified();
                // `heard` is the latest heartbeat's stamp plus one.
                if self.lease.heard.load(SeqCst) > since.saturating_add(1) {
                    return;
                }
                renewed.await;
            }
        };
        tokio::time::timeout(self.lease.length, wait).await.is_ok()
    }

    /// The channel is lost (or was never up): the tier stops serving and is dropped.
    pub(crate) fn lost(&self, counted: bool) {
        self.lease.heard.store(0, SeqCst);
        self.invalidate_tier();
        if counted {
            self.channel_losses.fetch_add(1, SeqCst);
            self.counters.channel_loss();
        }
    }

    /// Figures of the tier: (entries, bytes, evictions, lease lapses, channel losses).
    pub(crate) fn tier_figures(&self) -> Option<(u64, u64, u64, u64, u64)> {
        let local = self.local.as_ref()?;
        Some((
            local.entry_count(),
            local.size_bytes(),
            local.evictions(),
            self.lapses.load(SeqCst),
            self.channel_losses.load(SeqCst),
        ))
    }

    /// The key space.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> &KeySpace {
        &self.keys
    }
}

/// What [`Remote::lease`] and [`Remote::note_tags`] take: each tag's key, its fresh version
/// and how long it must live.
fn notes<'a>(
    keys: &'a [String],
    fresh: &'a [String],
    tags: &[(&Tag, Duration)],
) -> Vec<TagNote<'a>> {
    keys.iter()
        .zip(fresh)
        .zip(tags)
        .map(|((key, fresh), (_, life))| TagNote {
            key,
            fresh,
            life: *life,
        })
        .collect()
}

/// A fresh lease: byte 0 (never the first byte of a value) and a random token.
fn lease_token() -> Vec<u8> {
    let mut t = vec![crate::codec::LEASE_BYTE];
    t.extend_from_slice(format!("lease:{:016x}", fastrand::u64(..)).as_bytes());
    t
}

/// A fresh tag version. Random, not a counter, so a version can never come round again (after
/// a Redis restart, say).
fn version_token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Category;

    /// A coherence whose Redis is never reached (these tests stay in process). Needs a runtime:
    /// the connection manager is created (lazily) on it.
    fn coherence(scope: Scope) -> Coherence {
        let keys = KeySpace::new("t", "ns").unwrap();
        let counters = Arc::new(Counters::new("t:ns", []));
        let remote = Remote::new(
            crate::remote::RemoteConfig {
                info: redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1:1")
                    .unwrap(),
                cluster: Vec::new(),
                #[cfg(feature = "tls")]
                tls: None,
                op_timeout: Duration::from_millis(10),
                connect_timeout: Duration::from_millis(10),
                breaker_threshold: 1,
                scan_count: 10,
            },
            counters.clone(),
        )
        .unwrap();
        Coherence::new(
            CoherenceConfig {
                keys,
                scope,
                local_capacity: 1 << 20,
                local_max_ttl: Duration::from_secs(60),
                local_lease: Duration::from_millis(100),
                max_load_time: Duration::from_secs(10),
            },
            Arc::new(remote),
            counters,
        )
    }

    fn value(c: &Coherence, key: &Key) -> Option<u32> {
        c.tier_get(key)
            .and_then(|e| e.value.downcast_ref::<u32>().copied())
    }

    fn fill(c: &Coherence, key: &Key, t: &Ticket, v: u32) -> bool {
        c.tier_fill(key, t, v, 4, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_fill_noted_before_a_change_of_its_key_is_refused_and_others_are_not() {
        let c = coherence(Scope::Standalone);
        let keys = c.keys().clone();
        let cat = Category::new("c");
        let (a, b) = (keys.key(&cat, ["a"]), keys.key(&cat, ["b"]));
        let (ta, tb) = (c.note(&a), c.note(&b));
        c.invalidate_here(&Change::Invalidate(Target::Keys(&[a.as_str()])));
        assert!(
            !fill(&c, &a, &ta, 1),
            "a's load overlapped a's invalidation"
        );
        if c.versions.key_stripe(a.as_str()) != c.versions.key_stripe(b.as_str()) {
            assert!(fill(&c, &b, &tb, 2), "b's load is unaffected");
            assert_eq!(value(&c, &b), Some(2));
        }
        assert_ne!(
            ta.flight(&a),
            c.note(&a).flight(&a),
            "later callers fly apart"
        );
        assert_eq!(tb.flight(&b), c.note(&b).flight(&b));
    }

    #[tokio::test]
    async fn tags_patterns_and_clears_reach_the_entries_they_cover() {
        let c = coherence(Scope::Standalone);
        let keys = c.keys().clone();
        let cat = Category::new("c");
        let tag = Tag::new("img", ["x"]);
        let tagged = keys.key(&cat, ["t"]).with_tags([tag.clone()]);
        let plain = keys.key(&cat, ["p"]);
        let t = c.note(&tagged);
        assert!(fill(&c, &tagged, &t, 1));
        let t = c.note(&plain);
        assert!(fill(&c, &plain, &t, 2));
        c.invalidate_here(&Change::Invalidate(Target::Tags(std::slice::from_ref(
            &tag,
        ))));
        assert_eq!(value(&c, &tagged), None, "the tag's entries are stale");
        assert_eq!(value(&c, &plain), Some(2));
        let t = c.note(&plain);
        c.invalidate_here(&Change::Invalidate(Target::Pattern(
            &keys.pattern(&cat, ["zzz"]),
        )));
        assert!(
            !fill(&c, &plain, &t, 3),
            "a pattern refuses fills noted before it"
        );
        assert_eq!(value(&c, &plain), Some(2), "but drops only what it matches");
        c.invalidate_here(&Change::Invalidate(Target::Clear));
        assert_eq!(value(&c, &plain), None);
    }

    /// Two tags that share a stripe: invalidating one leaves the other's entries served (its
    /// second stripe did not move), and a load noted before is still stored; invalidating the
    /// other reaches them.
    #[tokio::test]
    async fn a_tag_sharing_a_stripe_with_an_invalidated_one_stays_served() {
        let c = coherence(Scope::Standalone);
        let keys = c.keys().clone();
        let cat = Category::new("c");
        let v = &c.versions;
        let mut candidates = (0..u32::MAX).map(|i| Tag::new("img", [i.to_string()]));
        let first = candidates.next().unwrap();
        let [shared, own] = v.tag_stripes(&first);
        let other = candidates
            .find(|t| {
                let stripes = v.tag_stripes(t);
                stripes.contains(&shared) && !stripes.contains(&own)
            })
            .unwrap();
        let key = keys.key(&cat, ["k"]).with_tags([first.clone()]);
        let t = c.note(&key);
        assert!(fill(&c, &key, &t, 1));
        let early = c.note(&key);
        c.invalidate_here(&Change::Invalidate(Target::Tags(std::slice::from_ref(
            &other,
        ))));
        assert_eq!(value(&c, &key), Some(1), "one shared stripe is not enough");
        assert!(fill(&c, &key, &early, 2), "nor does it refuse a fill");
        c.invalidate_here(&Change::Invalidate(Target::Tags(std::slice::from_ref(
            &first,
        ))));
        assert_eq!(value(&c, &key), None, "its own invalidation reaches it");
    }

    #[tokio::test]
    async fn entries_expire_with_their_ttl() {
        let c = coherence(Scope::Standalone);
        let key = c.keys().key(&Category::new("c"), ["k"]);
        let t = c.note(&key);
        assert!(c.tier_fill(&key, &t, 1u32, 4, Duration::from_millis(30)));
        assert_eq!(value(&c, &key), Some(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while value(&c, &key).is_some() {
            assert!(Instant::now() < deadline, "entry did not expire");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!c.tier_fill(&key, &c.note(&key), 2u32, 4, Duration::ZERO));
    }

    #[tokio::test]
    async fn the_tier_serves_only_within_its_lease() {
        let c = coherence(Scope::Shared);
        let key = c.keys().key(&Category::new("c"), ["k"]);
        let t = c.note(&key);
        assert!(!fill(&c, &key, &t, 1), "never heard a heartbeat: not live");
        c.renew(c.stamp());
        assert!(
            !fill(&c, &key, &t, 1),
            "noted in the session before the lease began"
        );
        let t = c.note(&key);
        assert!(fill(&c, &key, &t, 1));
        assert_eq!(value(&c, &key), Some(1));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(value(&c, &key), None, "lapsed");
        c.renew(c.stamp());
        assert_eq!(value(&c, &key), None, "dropped when the lease lapsed");
        assert_eq!(c.lapses.load(SeqCst), 1);
        let t = c.note(&key);
        assert!(fill(&c, &key, &t, 2));
        c.lost(true);
        assert_eq!(value(&c, &key), None);
        assert!(!fill(&c, &key, &t, 3));
    }
}
