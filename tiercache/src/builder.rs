//! [`CacheBuilder`]: every setting of a cache, validated in one place.
//!
//! Setters take bare names and return the builder; problems are reported by [`build`]
//! (`CacheBuilder::build`) as [`Error::Config`] naming the setting, so a typo fails at start-up,
//! not on the first request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::bus;
use crate::cache::{Cache, Inner, Mode};
use crate::coalesce::Coalescer;
use crate::codec::{Codec, Envelope};
use crate::coherence::{Coherence, CoherenceConfig, DEFAULT_LOCAL_LEASE, Scope};
use crate::encryption::{Encryption, Protection};
use crate::error::{Error, Result};
use crate::key::{Category, KeySpace};
use crate::memory::{self, DEFAULT_MAX_VALUE_BYTES, ValueLimit};
use crate::probe::{self, TaskGuard};
use crate::remote::{Remote, RemoteConfig};
use crate::stats::Counters;
use crate::ttl::TtlPolicy;

/// Default Redis address.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Default bound on how long the in-process tier keeps an entry.
pub const DEFAULT_LOCAL_MAX_TTL: Duration = Duration::from_secs(60);

/// Default bound on how long a load may take and still be stored.
pub const DEFAULT_MAX_LOAD_TIME: Duration = Duration::from_secs(10);

/// Builds a [`Cache`].
///
/// ```no_run
/// use std::time::Duration;
/// use tiercache::{Cache, Category, Codec, Encryption, Mode};
///
/// const SCANS: Category = Category::from_static("scans");
/// const SESSIONS: Category = Category::from_static("sessions");
///
/// # async fn demo(keys: String) -> Result<(), tiercache::Error> {
/// let cache = Cache::builder()
///     .mode(Mode::Redis)                        // or Mode::Standalone: in process, no Redis
///     .url("redis://127.0.0.1:6379")
///     .username("app")                          // ACL user (optional)
///     .password("secret")                       // AUTH (optional)
///     .db(0)
///     .env_prefix("prod")                       // keys start with `prod:scan-api:`
///     .namespace("scan-api")
///     .op_timeout(Duration::from_millis(50))    // bound on every Redis call
///     .connect_timeout(Duration::from_secs(1))  // bound on (re)connecting
///     .breaker_threshold(3)                     // failures before the breaker opens
///     .breaker_cooldown(Duration::from_millis(250))
///     .ttl(SCANS, Duration::from_secs(300))     // per category ...
///     .default_ttl(Duration::from_secs(300))    // ... and for the others
///     .jitter(0.1)                              // ±10%
///     .sensitive(SESSIONS)                      // encrypted in Redis, with ...
///     .encryption(Encryption::parse(&keys)?)    // ... keys from configuration, new first
///     .codec(Codec::Postcard)
///     .compress_threshold(1024)                 // LZ4 above 1 KiB
///     .local_capacity(64 << 20)                 // in-process tier of 64 MiB in front of Redis
///     .local_max_ttl(Duration::from_secs(60))
///     .local_lease(Duration::from_millis(100))  // Δ across instances during a fault
///     .max_load_time(Duration::from_secs(10))   // slower loads are returned, not stored
///     .max_value_bytes(1 << 20)                 // larger values (encoded) are returned, not stored
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct CacheBuilder {
    url: String,
    /// Whether `url` was set (it conflicts with `cluster_urls`).
    url_set: bool,
    /// Seed nodes of a Redis Cluster; empty for one server at `url`.
    cluster_urls: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
    env_prefix: String,
    namespace: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    ttl: TtlPolicy,
    /// The keys of the sensitive categories; never shown (its `Debug` says how many).
    encryption: Option<Encryption>,
    sensitive: Vec<Category>,
    codec: Codec,
    compress_threshold: usize,
    scan_count: usize,
    mode: Mode,
    /// Bytes for the in-process tier; 0 for none.
    local_capacity: u64,
    local_max_ttl: Duration,
    local_lease: Duration,
    max_load_time: Duration,
    max_value_bytes: usize,
    #[cfg(feature = "tls")]
    tls_root: Option<Vec<u8>>,
    #[cfg(feature = "tls")]
    tls_client: Option<(Vec<u8>, Vec<u8>)>,
    /// The first invalid setting seen by a setter that cannot fail, reported by `build`.
    deferred: Option<Error>,
}

impl std::fmt::Debug for CacheBuilder {
    /// Never shows the password, in the URL or on its own.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("url", &redact(&self.url))
            .field(
                "cluster_urls",
                &self
                    .cluster_urls
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("env_prefix", &self.env_prefix)
            .field("namespace", &self.namespace)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("ttl", &self.ttl)
            .field("encryption", &self.encryption)
            .field("sensitive", &self.sensitive)
            .field("codec", &self.codec)
            .field("compress_threshold", &self.compress_threshold)
            .field("mode", &self.mode)
            .field("local_capacity", &self.local_capacity)
            .field("local_max_ttl", &self.local_max_ttl)
            .field("local_lease", &self.local_lease)
            .field("max_load_time", &self.max_load_time)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            url_set: false,
            cluster_urls: Vec::new(),
            username: None,
            password: None,
            db: None,
            env_prefix: "dev".to_owned(),
            namespace: "tiercache".to_owned(),
            op_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(250),
            ttl: TtlPolicy::default(),
            encryption: None,
            sensitive: Vec::new(),
            codec: Codec::default(),
            compress_threshold: 1024,
            scan_count: 1000,
            mode: Mode::Redis,
            local_capacity: 0,
            local_max_ttl: DEFAULT_LOCAL_MAX_TTL,
            local_lease: DEFAULT_LOCAL_LEASE,
            max_load_time: DEFAULT_MAX_LOAD_TIME,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            #[cfg(feature = "tls")]
            tls_root: None,
            #[cfg(feature = "tls")]
            tls_client: None,
            deferred: None,
        }
    }
}

impl CacheBuilder {
    /// A builder with the defaults: Redis at [`DEFAULT_URL`], env `dev`, namespace `tiercache`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder configured from the environment: `REDIS_URL` (or `REDIS_CLUSTER_URLS`,
    /// comma-separated seed-node URLs of a Redis Cluster), `REDIS_USERNAME`,
    /// `REDIS_PASSWORD`, `REDIS_DB`, `CACHE_NAMESPACE`, `APP_ENV`, `CACHE_LOCAL_CAPACITY`
    /// (bytes for the in-process tier, 0 for none), `CACHE_MAX_VALUE_BYTES` (see
    /// [`max_value_bytes`](Self::max_value_bytes)) and `CACHE_ENCRYPTION_KEYS` (the keys of the
    /// [`sensitive`](Self::sensitive) categories, comma-separated, as [`Encryption::parse`]
    /// reads them). Unset (or empty) variables keep the defaults; an invalid one is reported by
    /// `build`, naming the variable (never echoing a key).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with a custom lookup (for tests and config files).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut b = Self::default();
        // An empty REDIS_URL (`REDIS_URL=` in a file of settings) counts as unset.
        if let Some(url) = lookup("REDIS_URL").filter(|u| !u.trim().is_empty()) {
            b = b.url(url);
        }
        if let Some(urls) = lookup("REDIS_CLUSTER_URLS") {
            b = b.cluster_urls(urls.split(',').map(str::trim).filter(|u| !u.is_empty()));
            if b.cluster_urls.is_empty() {
                b.defer(Error::config(
                    "REDIS_CLUSTER_URLS",
                    "is set but names no node; give comma-separated redis:// URLs",
                ));
            }
        }
        if let Some(user) = lookup("REDIS_USERNAME") {
            b = b.username(user);
        }
        if let Some(password) = lookup("REDIS_PASSWORD") {
            b = b.password(password);
        }
        if let Some(db) = lookup("REDIS_DB") {
            match db.trim().parse::<i64>() {
                Ok(db) => b = b.db(db),
                Err(_) => b.defer(Error::config("REDIS_DB", format!("{db:?} is not a number"))),
            }
        }
        if let Some(ns) = lookup("CACHE_NAMESPACE") {
            b = b.namespace(ns);
        }
        if let Some(env) = lookup("APP_ENV") {
            b = b.env_prefix(env);
        }
        if let Some(bytes) = lookup("CACHE_LOCAL_CAPACITY") {
            match bytes.trim().parse::<u64>() {
                Ok(bytes) => b = b.local_capacity(bytes),
                Err(_) => b.defer(Error::config(
                    "CACHE_LOCAL_CAPACITY",
                    format!("{bytes:?} is not a number of bytes"),
                )),
            }
        }
        if let Some(bytes) = lookup("CACHE_MAX_VALUE_BYTES") {
            match bytes.trim().parse::<usize>() {
                Ok(bytes) => b = b.max_value_bytes(bytes),
                Err(_) => b.defer(Error::config(
                    "CACHE_MAX_VALUE_BYTES",
                    format!("{bytes:?} is not a number of bytes"),
                )),
            }
        }
        if let Some(keys) = lookup("CACHE_ENCRYPTION_KEYS").filter(|k| !k.trim().is_empty()) {
            match Encryption::parse(&keys) {
                Ok(encryption) => b = b.encryption(encryption),
                Err(e) => b.defer(Error::config("CACHE_ENCRYPTION_KEYS", e.to_string())),
            }
        }
        b
    }

    fn defer(&mut self, e: Error) {
        self.deferred.get_or_insert(e);
    }

    /// Redis URL: `redis://[user[:password]@]host[:port][/db]`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self.url_set = true;
        self
    }

    /// Seed nodes of a Redis Cluster (`redis://host:port` each; one that answers is enough, the
    /// rest of the cluster is discovered from it): the cache then runs on the cluster, with the
    /// same API. [`username`](Self::username) and [`password`](Self::password) apply to every
    /// node; a cluster has only database 0. Conflicts with [`url`](Self::url).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tiercache::Error> {
    /// let cache = tiercache::Cache::builder()
    ///     .cluster_urls(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .namespace("scan-api")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_urls<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.cluster_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// ACL user name (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Password for AUTH (overrides one in the URL).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Database number (overrides one in the URL).
    pub fn db(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// Environment prefix, the first key segment (`prod`, `staging`).
    pub fn env_prefix(mut self, env: impl Into<String>) -> Self {
        self.env_prefix = env.into();
        self
    }

    /// Namespace, the second key segment: clearing the cache clears only this namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Bound on each Redis call (default 50 ms). A call that takes longer is abandoned and
    /// treated as a miss.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Bound on connecting and reconnecting (default 1 s). Callers never wait for it: the
    /// start-up probe and the background recovery do.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Consecutive failures (errors or timeouts) that open the circuit breaker (default 3).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// Time between recovery probes while the breaker is open (default 250 ms).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Base TTL of one category.
    pub fn ttl(mut self, category: Category, ttl: Duration) -> Self {
        if let Err(e) = self.ttl.set(category, ttl) {
            self.defer(e);
        }
        self
    }

    /// Base TTL of categories without their own.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        if let Err(e) = self.ttl.set_fallback(ttl) {
            self.defer(e);
        }
        self
    }

    /// Marks `category` sensitive (sessions, user profiles): its values are stored in Redis
    /// encrypted with the [`encryption`](Self::encryption) keys, bound to their key name, and a
    /// value of it that does not authenticate is a miss (and is deleted). Without keys it is
    /// not cached at all (said once, at build). See [`Encryption`] for the format and rotation.
    ///
    /// ```no_run
    /// use tiercache::{Cache, Category, Encryption};
    ///
    /// const SESSIONS: Category = Category::from_static("sessions");
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = Cache::builder()
    ///     .sensitive(SESSIONS)
    ///     .encryption(Encryption::parse(&std::env::var("CACHE_ENCRYPTION_KEYS")?)?)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn sensitive(mut self, category: Category) -> Self {
        if !self.sensitive.contains(&category) {
            self.sensitive.push(category);
        }
        self
    }

    /// The keys of the [`sensitive`](Self::sensitive) categories: the first encrypts new
    /// values, every one decrypts (for rotation). Read from `CACHE_ENCRYPTION_KEYS` by
    /// [`from_env`](Self::from_env).
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// TTL jitter as a fraction in `[0, 0.5]` (default 0.1, that is ±10%).
    pub fn jitter(mut self, jitter: f64) -> Self {
        if let Err(e) = self.ttl.set_jitter(jitter) {
            self.defer(e);
        }
        self
    }

    /// Value codec for writes (default [`Codec::Postcard`]). Reads accept every codec.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Serialized values larger than this many bytes are LZ4-compressed (default 1024).
    pub fn compress_threshold(mut self, bytes: usize) -> Self {
        self.compress_threshold = bytes;
        self
    }

    /// `COUNT` hint for SCAN in pattern invalidation and key counting (default 1000).
    pub fn scan_count(mut self, count: usize) -> Self {
        self.scan_count = count;
        self
    }

    /// Whether to cache at all (default true); `false` is [`Mode::Disabled`]. A disabled cache
    /// never connects: every read is a miss with status
    /// [`CacheStatus::Bypass`](crate::CacheStatus), every load runs (not coalesced either), and
    /// nothing is stored. For benchmarks and for comparing against the source.
    pub fn enabled(mut self, enabled: bool) -> Self {
        if !enabled {
            self.mode = Mode::Disabled;
        } else if self.mode == Mode::Disabled {
            self.mode = Mode::Redis;
        }
        self
    }

    /// How values are stored (default [`Mode::Redis`]).
    ///
    /// [`Mode::Standalone`] keeps them in the in-process tier alone and never connects to
    /// Redis: for a single instance (a CLI, a demo, a machine without Redis), since no other
    /// instance hears of its changes. It needs a [`local_capacity`](Self::local_capacity);
    /// entries live their full TTL. A deployment of several instances must use Redis: a
    /// standalone tier in each would serve values another instance changed.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Puts an in-process tier of up to `bytes` (keys plus encoded sizes of the values) in
    /// front of Redis; 0, the default, means none.
    ///
    /// It keeps decoded values, so a hit costs a lookup and a clone of `T` (make `T` an `Arc`
    /// for large values). Each entry lives no longer than its Redis copy nor
    /// [`local_max_ttl`](Self::local_max_ttl). Changes reach the tiers of other instances over a
    /// Redis pub/sub channel, and a tier serves only while its own heartbeats come back through
    /// that channel within [`local_lease`](Self::local_lease); otherwise it is dropped. Another
    /// instance's tier drops an entry when the notice arrives (well under a millisecond on a
    /// LAN), and within one lease whatever Redis does; a read in the writing instance never
    /// sees the old value after the write returned.
    pub fn local_capacity(mut self, bytes: u64) -> Self {
        self.local_capacity = bytes;
        self
    }

    /// Longest time an entry stays in the in-process tier (default 60 s), whatever its TTL in
    /// Redis.
    pub fn local_max_ttl(mut self, ttl: Duration) -> Self {
        self.local_max_ttl = ttl;
        self
    }

    /// The in-process tier's lease (default [`DEFAULT_LOCAL_LEASE`], 100 ms): a tier serves
    /// only while a heartbeat it sent less than this long ago has come back through the
    /// invalidation channel, and a writer whose change cannot reach Redis waits this long (once
    /// per fault) before it returns. It is the Δ of the consistency promise: no read in any
    /// instance returns a value older than a write acknowledged more than this long before.
    /// Shorter means a smaller Δ but more heartbeats (one per fifth of it) and a tier dropped
    /// sooner when the process is starved; give every instance of a deployment the same value.
    pub fn local_lease(mut self, lease: Duration) -> Self {
        self.local_lease = lease;
        self
    }

    /// The longest a load may take and still be stored (default 10 s): it is the lifetime of
    /// the lease a load holds in Redis. A slower load still returns its value to its callers.
    pub fn max_load_time(mut self, limit: Duration) -> Self {
        self.max_load_time = limit;
        self
    }

    /// The largest value stored, in bytes of its encoded envelope after compression, which is
    /// what Redis would hold (default [`DEFAULT_MAX_VALUE_BYTES`], 1 MiB).
    ///
    /// A larger value is stored neither in Redis nor in the in-process tier: `get_with` still
    /// returns it (so every call for that key runs its loader), and `insert` invalidates the key
    /// instead (no older value outlives it). Each is counted ([`Stats::oversized`](crate::Stats),
    /// metric `tiercache_oversized_total`) and logged once per key. Large values are slow for
    /// Redis to move (one connection carries every command) and sweep a tier's byte budget.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Trusts this CA (PEM) for `rediss://` instead of the system's roots: for Redis behind a
    /// private CA.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// Presents this certificate and key (PEM) for mutual TLS.
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Validates the settings, connects to Redis and returns the cache.
    ///
    /// Waits at most the connect timeout. If Redis is not reachable the cache is still built: it
    /// works as a pass-through (every read a miss, loaders always run) and connects in the
    /// background as soon as Redis answers. Only invalid settings are errors. A standalone or
    /// disabled cache never connects.
    pub async fn build(self) -> Result<Cache> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        let keys = KeySpace::new(&self.env_prefix, &self.namespace)?;
        for (setting, d) in [
            ("op_timeout", self.op_timeout),
            ("connect_timeout", self.connect_timeout),
            ("breaker_cooldown", self.breaker_cooldown),
            ("local_max_ttl", self.local_max_ttl),
            ("local_lease", self.local_lease),
            ("max_load_time", self.max_load_time),
        ] {
            if d.is_zero() {
                return Err(Error::config(setting, "must be greater than zero"));
            }
        }
        if self.breaker_threshold == 0 {
            return Err(Error::config("breaker_threshold", "must be at least 1"));
        }
        if self.max_value_bytes == 0 {
            return Err(Error::config(
                "max_value_bytes",
                "must be at least 1 (a value of 0 bytes cannot be stored)",
            ));
        }
        if self.scan_count == 0 {
            return Err(Error::config("scan_count", "must be at least 1"));
        }
        if self.mode == Mode::Standalone && self.local_capacity == 0 {
            return Err(Error::config(
                "local_capacity",
                "standalone mode keeps values in the in-process tier: give it a capacity",
            ));
        }
        // A cache that never connects does not judge the Redis settings (a stale REDIS_URL must
        // not stop a standalone service from starting).
        let mut cluster = Vec::new();
        if self.mode == Mode::Redis && !self.cluster_urls.is_empty() {
            if self.url_set {
                return Err(Error::config(
                    "cluster_urls",
                    "both a Redis URL and cluster seed URLs are set; set one (REDIS_URL for one \
                     server, REDIS_CLUSTER_URLS for a cluster)",
                ));
            }
            if self.db.is_some_and(|db| db != 0) {
                return Err(Error::config("db", "a Redis Cluster has only database 0"));
            }
            for url in &self.cluster_urls {
                let info = connection_info(url, self.username.clone(), self.password.clone(), None)
                    .map_err(|e| match e {
                        Error::Config { reason, .. } => Error::config("cluster_urls", reason),
                        other => other,
                    })?;
                if info.redis_settings().db() != 0 {
                    return Err(Error::config(
                        "cluster_urls",
                        format!(
                            "{:?} names a database; a Redis Cluster has only 0",
                            redact(url)
                        ),
                    ));
                }
                cluster.push(info);
            }
        }
        let info = match (self.mode, cluster.first()) {
            (Mode::Redis, Some(first)) => first.clone(),
            (Mode::Redis, None) => {
                connection_info(&self.url, self.username, self.password, self.db)?
            }
            _ => connection_info(DEFAULT_URL, None, None, None)?,
        };
        #[cfg(feature = "tls")]
        let tls = match self.mode {
            Mode::Redis => tls_certificates(&info, self.tls_root, self.tls_client)?,
            _ => None,
        };

        let protection = Protection::new(self.encryption, self.sensitive, self.mode != Mode::Redis);
        protection.log_start();
        let counters = Arc::new(Counters::new(keys.label(), self.ttl.categories()));
        let remote = Arc::new(Remote::new(
            RemoteConfig {
                info,
                cluster,
                #[cfg(feature = "tls")]
                tls,
                op_timeout: self.op_timeout,
                connect_timeout: self.connect_timeout,
                breaker_threshold: self.breaker_threshold,
                scan_count: self.scan_count,
            },
            counters.clone(),
        )?);
        let local_capacity = match self.mode {
            Mode::Disabled => 0,
            _ => self.local_capacity,
        };
        let coherence = Arc::new(Coherence::new(
            CoherenceConfig {
                keys: keys.clone(),
                scope: match self.mode {
                    Mode::Standalone => Scope::Standalone,
                    _ => Scope::Shared,
                },
                local_capacity,
                local_max_ttl: self.local_max_ttl,
                local_lease: self.local_lease,
                max_load_time: self.max_load_time,
            },
            remote.clone(),
            counters.clone(),
        ));
        let mut tasks = Vec::new();
        match self.mode {
            Mode::Redis => {
                match remote.probe().await {
                    Ok(rtt) => {
                        tracing::info!(
                            addr = %remote.addr,
                            rtt_us = rtt.as_micros() as u64,
                            namespace = %keys.prefix(),
                            tier = local_capacity > 0,
                            "cache mode: redis; connected"
                        );
                        if let Err(e) = remote.load_scripts().await {
                            tracing::warn!(
                                addr = %remote.addr,
                                error = %e,
                                "cannot load the cache's Lua scripts (an ACL without eval, evalsha and script|load?): loaded values will not be stored"
                            );
                        }
                        memory::check_settings(&remote).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            addr = %remote.addr,
                            error = %e,
                            namespace = %keys.prefix(),
                            "cache mode: redis, but redis is unreachable at start-up: serving from the source and reconnecting in the background"
                        );
                        if remote.breaker.trip() {
                            counters.breaker_trip();
                        }
                    }
                }
                tasks.push(probe::spawn(coherence.clone(), self.breaker_cooldown));
                if local_capacity > 0 {
                    tasks.extend(bus::spawn(coherence.clone(), self.breaker_cooldown));
                }
            }
            Mode::Standalone => {
                tracing::info!(
                    namespace = %keys.prefix(),
                    capacity_bytes = local_capacity,
                    "cache mode: standalone (in process, no redis): one instance, its own changes only"
                );
                remote.breaker.trip();
            }
            Mode::Disabled => {
                tracing::info!("cache mode: disabled; every read goes to the source");
                remote.breaker.trip();
            }
        }
        if coherence.has_tier() {
            tasks.push(TaskGuard::new(tokio::spawn(
                coherence.clone().sweep_forever(),
            )));
        }
        Ok(Cache::from_inner(Inner {
            keys,
            coherence,
            counters,
            envelope: Envelope::new(self.codec, self.compress_threshold),
            value_limit: ValueLimit::new(self.max_value_bytes),
            protection,
            ttl: self.ttl,
            loads: Coalescer::default(),
            started: Instant::now(),
            mode: self.mode,
            _tasks: tasks,
        }))
    }
}

/// Parses the URL and applies the separate credential and database settings.
fn connection_info(
    url: &str,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
) -> Result<redis::ConnectionInfo> {
    let info = url.into_connection_info().map_err(|e| {
        Error::config(
            "url",
            format!("{:?} is not a valid Redis URL: {e}", redact(url)),
        )
    })?;
    if !info.addr().is_supported() {
        let reason = match info.addr() {
            ConnectionAddr::TcpTls { .. } => "rediss:// (TLS) is not supported by this build",
            _ => "this address type is not supported on this platform",
        };
        return Err(Error::config("url", reason));
    }
    let mut redis = info.redis_settings().clone();
    if let Some(u) = username {
        redis = redis.set_username(u);
    }
    if let Some(p) = password {
        redis = redis.set_password(p);
    }
    if let Some(db) = db {
        if db < 0 {
            return Err(Error::config("db", format!("{db} is negative")));
        }
        redis = redis.set_db(db);
    }
    Ok(info.set_redis_settings(redis))
}

/// The certificates for a `rediss://` connection, after checking that they go with the URL.
#[cfg(feature = "tls")]
fn tls_certificates(
    info: &redis::ConnectionInfo,
    root: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Option<redis::TlsCertificates>> {
    // redis-rs leaves the crypto provider to the application. Another part of the process may
    // have installed one already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if root.is_none() && client.is_none() {
        return Ok(None);
    }
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return Err(Error::config(
            "tls_root_certificate",
            "TLS certificates are set but the URL is not rediss://",
        ));
    }
    Ok(Some(redis::TlsCertificates {
        client_tls: client.map(|(client_cert, client_key)| redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        root_cert: root,
    }))
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_messages() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let key = "68756e746572342068756e746572342068756e746572342068756e7465723421";
        let b = CacheBuilder::from_lookup(|k| (k == "CACHE_ENCRYPTION_KEYS").then(|| key.into()))
            .url("redis://u:hunter2@h:1")
            .password("hunter3")
            .sensitive(Category::new("sessions"));
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3") && !shown.contains(key),
            "{shown}"
        );
        assert!(shown.contains("Encryption { keys: 1, .. }"), "{shown}");
    }

    #[test]
    fn a_bad_key_list_is_a_configuration_error_of_encryption() {
        let err: Error = Encryption::parse("aGVsbG8=").unwrap_err().into();
        let shown = err.to_string();
        assert!(err.is_config());
        assert!(
            shown.contains("`encryption`") && shown.contains("key 1 is 5 bytes"),
            "{shown}"
        );
        assert!(!shown.contains("aGVsbG8"), "{shown}");
    }

    #[test]
    fn env_overrides_the_url_parts() {
        let info = connection_info(
            "redis://127.0.0.1:7000/1",
            Some("bob".into()),
            Some("pw".into()),
            Some(3),
        )
        .unwrap();
        assert_eq!(info.redis_settings().username(), Some("bob"));
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().db(), 3);
    }

    #[tokio::test]
    async fn invalid_settings_name_the_setting() {
        let cases: Vec<(CacheBuilder, &str)> = vec![
            (CacheBuilder::new().url("http://nope"), "url"),
            (CacheBuilder::new().url("redis://u:hunter2@[::1"), "url"),
            (CacheBuilder::new().namespace(""), "namespace"),
            (CacheBuilder::new().env_prefix("a b"), "env_prefix"),
            (
                CacheBuilder::new().ttl(Category::new("sessions"), Duration::ZERO),
                "ttl",
            ),
            (CacheBuilder::new().mode(Mode::Standalone), "local_capacity"),
            (
                CacheBuilder::new().local_lease(Duration::ZERO),
                "local_lease",
            ),
            (
                CacheBuilder::new().default_ttl(Duration::ZERO),
                "default_ttl",
            ),
            (CacheBuilder::new().jitter(-0.1), "jitter"),
            (CacheBuilder::new().op_timeout(Duration::ZERO), "op_timeout"),
            (
                CacheBuilder::new().breaker_threshold(0),
                "breaker_threshold",
            ),
            (CacheBuilder::new().db(-1), "db"),
            (CacheBuilder::new().max_value_bytes(0), "max_value_bytes"),
            (
                CacheBuilder::from_lookup(|k| (k == "CACHE_MAX_VALUE_BYTES").then(|| "1M".into())),
                "CACHE_MAX_VALUE_BYTES",
            ),
            (
                CacheBuilder::from_lookup(|k| (k == "REDIS_DB").then(|| "x".into())),
                "REDIS_DB",
            ),
            (
                CacheBuilder::from_lookup(|k| (k == "CACHE_NAMESPACE").then(String::new)),
                "namespace",
            ),
            (
                CacheBuilder::new()
                    .url("redis://a:1")
                    .cluster_urls(["redis://b:1"]),
                "cluster_urls",
            ),
            (
                CacheBuilder::from_lookup(|k| match k {
                    "REDIS_URL" => Some("redis://a:1".into()),
                    "REDIS_CLUSTER_URLS" => Some("redis://b:1,redis://c:1".into()),
                    _ => None,
                }),
                "cluster_urls",
            ),
            (
                CacheBuilder::from_lookup(|k| (k == "REDIS_CLUSTER_URLS").then(|| " , ".into())),
                "REDIS_CLUSTER_URLS",
            ),
            (
                CacheBuilder::new().cluster_urls(["redis://u:hunter2@b:1/2"]),
                "cluster_urls",
            ),
            (
                CacheBuilder::new().cluster_urls(["http://b:1"]),
                "cluster_urls",
            ),
            (
                CacheBuilder::new().cluster_urls(["redis://b:1"]).db(1),
                "db",
            ),
            (
                CacheBuilder::from_lookup(|k| {
                    (k == "CACHE_ENCRYPTION_KEYS").then(|| "hunter2hunter2".into())
                }),
                "CACHE_ENCRYPTION_KEYS",
            ),
        ];
        for (builder, setting) in cases {
            let err = builder.build().await.unwrap_err();
            assert!(err.is_config(), "{err}");
            assert!(
                err.to_string().contains(&format!("`{setting}`")),
                "{setting}: {err}"
            );
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
