//! tiercache: a cache layer for Rust backends that puts an in-process tier and Redis between a
//! service and its database, and never fails its caller.
//!
//! Repeated reads stop reaching the database; an acknowledged write is never followed by an
//! older read (in the writing instance at once, in the others within a bounded Δ); and when
//! Redis is absent, slow, hung or restarting, every call still answers within a bounded time
//! and the service serves from its database.
//!
//! # Examples
//! ```no_run
//! use std::time::Duration;
//! use tiercache::{Cache, Category, Tag};
//!
//! const IMAGES: Category = Category::from_static("images");
//!
//! # async fn load_image_from_db(name: &str) -> Result<String, std::io::Error> { Ok(name.into()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder()
//!     .env_prefix("prod")
//!     .namespace("scan-api")
//!     .ttl(IMAGES, Duration::from_secs(900))
//!     .local_capacity(64 << 20)
//!     .build()
//!     .await?;
//! let key = cache
//!     .key(&IMAGES, ["bkimminich/juice-shop"])
//!     .with_tags([Tag::new("image", ["bkimminich/juice-shop"])]);
//! // One load per key at a time; later calls are served from the tier or Redis until the TTL
//! // or an invalidation.
//! let image = cache
//!     .try_get_with(&key, load_image_from_db("bkimminich/juice-shop"))
//!     .await?;
//! // After a write: by key, or every entry tagged with the image, in every instance.
//! cache.invalidate(&key).await;
//! cache.invalidate_tag(&Tag::new("image", ["bkimminich/juice-shop"])).await;
//! # let _ = image; Ok(()) }
//! ```
//!
//! # Layout
//! - `cache`: the [`Cache`] façade: `get`, `get_with` / `try_get_with`, `insert`,
//!   `invalidate`, `invalidate_tag`, batches, stats. It decides *what* each operation does.
//! - `coherence`: the one home of the rules that keep reads fresh: per-key leases in Redis,
//!   tag versions, in-process tickets, the tier's lease, how a change is applied everywhere
//!   (its module docs name each race and the test that catches it).
//! - `builder`: [`CacheBuilder`], every setting validated in one place.
//! - `remote`: the only module that issues Redis commands; timeouts and the breaker wrap each.
//!   `connection`: how they travel, to one server or to a Redis Cluster (pipelines split per
//!   slot, scans on every master, the channel's node).
//! - `local`: the in-process tier (moka), the only module that names moka.
//! - `bus`: the invalidation channel and its heartbeats; `invalidation`: changes owed to Redis
//!   after a failure, replayed before reads resume; `breaker` and `probe`: the circuit breaker
//!   and the background task that closes it again.
//! - `coalesce`: one loader per key at a time; `clock`: the tier's cheap clock.
//! - `key`: keys, patterns and tags built from untrusted input; `ttl`: per-category TTL with
//!   jitter; `codec`: the versioned, optionally compressed value envelope; `encryption`: the
//!   sensitive categories, encrypted in Redis ([`Encryption`]).
//! - `memory`: Redis's memory kept in check: the start-up warning about `maxmemory` and its
//!   policy, and the per-value size limit.
//! - `stats`: counters, the metrics they report (a table in its docs) and the [`Stats`]
//!   snapshot; `history`: the recent invalidations ([`Cache::recent_invalidations`]);
//!   `error`: [`Error`].
//! - `macro_support`: what `#[cached]` expands to, exported hidden as `tiercache::__private`
//!   (`macros` feature); its module docs define the default key and how errors are returned.
//!
//! # Feature flags
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tls` | off | `rediss://` URLs through rustls (ring), with `CacheBuilder::tls_root_certificate` for a private CA and `tls_client_certificate` for mutual TLS |
//! | `macros` | off | `#[cached]` on async fns (`tiercache::cached`, from the proc-macro crate `tiercache-macros`): the fn's results are cached, keyed by its arguments |
//!
//! Redis 7.0 or later is needed.
//!
//! # Redis Cluster
//! [`CacheBuilder::cluster_urls`] (or `REDIS_CLUSTER_URLS` for [`CacheBuilder::from_env`]) runs
//! the same cache on a Redis Cluster, with no change to callers. Every Lua script touches one key
//! (a value's lease and fill); a value's key and its tags' version keys lie in different slots by
//! design (a tag groups keys of every slot), so a read, a lease or a fill that needs both is split
//! per slot, in an order that keeps every guarantee (see `connection`). Pattern invalidation,
//! `clear`, `keys` and the key count scan every master. The invalidation channel's names share
//! one hash tag, so every notice and heartbeat goes through the one master of that slot, where
//! the subscriber listens: the tier's lease and loss detection hold as on one server. One circuit
//! breaker covers the whole cluster: while a master is down (until its replica is promoted), every
//! read is served from the source.
//!
#![cfg_attr(
    feature = "macros",
    doc = r#"
# Caching a function: `#[cached]`
With the `macros` feature, [`cached`] turns an `async fn` into a cached one: calls with equal
arguments run the body once and share its value until the TTL or an invalidation, through
[`Cache::get_with`] (or [`Cache::try_get_with`] for a `Result`, whose errors are never cached).
```no_run
use std::sync::LazyLock;
use std::time::Duration;
use tiercache::{Cache, Tag, cached};

static CACHE: LazyLock<Cache> = LazyLock::new(|| todo!("built at start-up"));

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Report { critical: u32 }

/// Keyed by a hash of `image` and `tag`; tagged so that a write can invalidate it.
#[cached(cache = CACHE, ttl = Duration::from_secs(600), tags = ["image:{image}"])]
async fn analyse(image: &str, tag: &str) -> Result<Report, std::io::Error> {
    Ok(Report { critical: 3 })
}

# async fn demo() -> Result<(), std::io::Error> {
let report = analyse("nginx", "1.27").await?; // runs the body
let again = analyse("nginx", "1.27").await?; // served by the cache
CACHE.invalidate_tag(&Tag::new("image", ["nginx"])).await; // the next call runs it again
# Ok(()) }
```
"#
)]
//!
//! # Modes
//! [`Mode::Redis`] (the default) shares Redis between instances, with an optional in-process
//! tier in front. [`Mode::Standalone`] keeps values in the in-process tier alone, for one
//! instance without Redis. [`Mode::Disabled`] passes every read to the source.
//!
//! # Encrypted categories
//! A category marked [`CacheBuilder::sensitive`] (sessions, user profiles) is stored in Redis
//! encrypted (XChaCha20-Poly1305) with the keys of [`CacheBuilder::encryption`], each value
//! bound to its full key name: a value copied under another key, altered, or under a key the
//! cache does not have is a miss, and is deleted. Writes use the first key, reads any (key
//! rotation). The in-process tier keeps decoded values, as for every category. See
//! [`Encryption`] for the format, rotation and what is not hidden (key names, lengths).
//!
//! # Failure model
//! Every Redis call is bounded by `op_timeout` (default 50 ms). After `breaker_threshold`
//! consecutive failures the breaker opens and reads skip Redis entirely (a few nanoseconds); a
//! background probe PINGs every `breaker_cooldown` and closes it when Redis answers; after three
//! probe timeouts in a row it replaces the connection, in case its peer vanished without a
//! reset. Changes (invalidations, inserts) are always sent, even while the breaker is open; one
//! that fails opens the breaker at once and is replayed before the breaker closes, so a value
//! invalidated by an acknowledged write is never read from Redis again.
//!
//! A full Redis is not an unreachable one. Writes it refuses with `OOM` (at `maxmemory` under
//! `noeviction`) are failed writes: the caller gets its value, reads keep being served from
//! Redis, the breaker stays closed, and an `insert` refused this way invalidates the key instead
//! (`UNLINK` is allowed at `maxmemory`). They are counted in `Stats::oom_write_failures`. The
//! cache warns once when it first connects if Redis has no `maxmemory` or uses `noeviction`, and
//! values larger than `CacheBuilder::max_value_bytes` (1 MiB encoded) are not stored (see the
//! `memory` module).
//!
//! # Two tiers and Δ
//! With [`CacheBuilder::local_capacity`], reads are answered from a bounded in-process tier of
//! decoded values first. Changes are published on a Redis pub/sub channel per namespace, and
//! every other instance drops the named entries from its tier. A tier serves only while its own
//! heartbeats come back through that channel within its lease ([`DEFAULT_LOCAL_LEASE`], 100 ms),
//! and a writer whose change cannot reach Redis waits out that lease before it returns. So
//! another instance may serve a value older than an acknowledged write for the notice's
//! delivery time (well under a millisecond on a LAN) and, whatever Redis does, for at most one
//! lease: that is Δ. The writing instance never does.

mod breaker;
mod builder;
mod bus;
mod cache;
mod clock;
mod coalesce;
mod codec;
mod coherence;
mod connection;
mod encryption;
mod error;
mod history;
mod invalidation;
mod key;
mod local;
mod log_limiter;
#[cfg(feature = "macros")]
mod macro_support;
mod memory;
mod probe;
mod remote;
mod stats;
mod ttl;

pub use builder::{CacheBuilder, DEFAULT_LOCAL_MAX_TTL, DEFAULT_MAX_LOAD_TIME, DEFAULT_URL};
pub use bus::CHANNEL_SILENCE;
pub use cache::{Cache, CacheStatus, Mode};
pub use codec::{Codec, ENVELOPE_VERSION};
pub use coherence::DEFAULT_LOCAL_LEASE;
pub use encryption::{
    ENCRYPTION_OVERHEAD, Encryption, KEY_LEN, KeyError, REJECTION_LOG_INTERVAL, Rejected,
};
pub use error::{Error, Result};
pub use history::{HISTORY_LEN, InvalidationKind, InvalidationRecord};
pub use invalidation::MAX_PENDING;
pub use key::{Category, Key, KeySpace, MAX_PART_LEN, MAX_TAGS, Pattern, Tag};
pub use memory::DEFAULT_MAX_VALUE_BYTES;
pub use stats::{CategoryStats, LocalStats, Stats};
pub use ttl::{DEFAULT_JITTER, DEFAULT_TTL, MAX_TTL, TtlPolicy};

#[cfg(feature = "macros")]
#[doc(inline)]
pub use tiercache_macros::cached;

/// What `#[cached]` expands to. Not public API: no semver promise (see `macro_support`).
#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod __private {
    pub use crate::macro_support::*;
}
