//! tiercache: a cache layer for Rust backends that puts an in-process tier and Redis between a
//! service and its database, and never fails its caller.
//!
//! Repeated reads stop reaching the database; when Redis is absent, slow, hung or restarting,
//! every call still answers within a bounded time and the service serves from its database.
//!
//! # Examples
//! ```no_run
//! use tiercache::{Cache, Category};
//!
//! # async fn load_image_from_db(name: &str) -> Result<String, std::io::Error> { Ok(name.into()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder().env_prefix("prod").namespace("scan-api").build().await?;
//! let key = cache.key(&Category::IMAGE_METADATA, ["bkimminich/juice-shop"]);
//! // One load per key at a time; later calls are served from Redis until the TTL or an
//! // invalidation.
//! let image = cache
//!     .try_get_with(&key, load_image_from_db("bkimminich/juice-shop"))
//!     .await?;
//! cache.invalidate(&key).await;
//! # let _ = image; Ok(()) }
//! ```
//!
//! # Layout
//! - `cache`: the [`Cache`] handle: `get`, `get_with` / `try_get_with`, `insert`, `invalidate`,
//!   batches, stats.
//! - `builder`: [`CacheBuilder`], every setting validated in one place.
//! - `remote`: the only module that issues Redis commands; timeouts and the breaker wrap each.
//! - `breaker`: the circuit breaker; `probe`: the background task that closes it again.
//! - `local`: the in-process tier (moka); `bus`: the invalidation channel that keeps the tiers
//!   of all instances coherent, and drops a tier whose channel is lost.
//! - `coalesce`: one loader per key at a time.
//! - `invalidation`: invalidations owed to Redis after a failure, replayed before reads resume.
//! - `key`: key and pattern building from untrusted input; `ttl`: per-category TTL with jitter.
//! - `codec`: the versioned, optionally compressed value envelope.
//! - `stats`: counters and the [`Stats`] snapshot; `error`: [`Error`].
//!
//! # Feature flags
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tls` | off | `rediss://` URLs through rustls (ring), with `CacheBuilder::tls_root_certificate` for a private CA and `tls_client_certificate` for mutual TLS |
//!
//! Redis Cluster is not supported yet: besides the data keys (which carry hash tags), the cache
//! uses one generation hash per namespace and scripts that touch both, which Cluster would
//! reject across slots.
//!
//! # Failure model
//! Every Redis call is bounded by `op_timeout` (default 50 ms). After `breaker_threshold`
//! consecutive failures the breaker opens and calls skip Redis entirely (a few nanoseconds); a
//! background probe PINGs every `breaker_cooldown` and closes it when Redis answers; after three
//! probe timeouts in a row it replaces the connection, in case its peer vanished without a
//! reset (a partition or a failover) and only a new connection can reach Redis. A failed
//! invalidation opens the breaker at once and is replayed before the breaker closes, so a value
//! invalidated by an acknowledged write is never served.
//!
//! # Two tiers
//! With [`CacheBuilder::local_capacity`], reads are answered from a bounded in-process tier
//! first, filled from Redis with each entry's remaining TTL. Invalidations, clears and inserts are
//! published on a Redis pub/sub channel per namespace, and every other instance drops the named
//! entries from its tier. The tier is used only while that channel is subscribed (and heard from:
//! each instance publishes a heartbeat every [`HEARTBEAT`]) and the breaker is closed; whenever
//! either was lost, it is cleared before it is used again. The writing instance never serves an
//! old value after its write returned; another instance drops it when the notice arrives.

mod breaker;
mod builder;
mod bus;
mod cache;
mod coalesce;
mod codec;
mod coherence;
mod error;
mod invalidation;
mod key;
mod local;
mod log_limiter;
mod probe;
mod remote;
mod stats;
mod ttl;

pub use builder::{CacheBuilder, DEFAULT_LOCAL_MAX_TTL, DEFAULT_MAX_LOAD_TIME, DEFAULT_URL};
pub use bus::CHANNEL_SILENCE;
pub use cache::{Cache, CacheStatus, Mode};
pub use codec::{Codec, ENVELOPE_VERSION};
pub use coherence::DEFAULT_LOCAL_LEASE;
pub use error::{Error, Result};
pub use invalidation::MAX_PENDING;
pub use key::{Category, Key, KeySpace, MAX_PART_LEN, MAX_TAGS, Pattern, Tag};
pub use stats::{CategoryStats, LocalStats, Stats};
pub use ttl::{DEFAULT_JITTER, DEFAULT_TTL, MAX_TTL, TtlPolicy};
