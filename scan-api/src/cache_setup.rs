//! Which cache a process runs with: `CACHE_MODE`, `REDIS_URL` and `CACHE_LOCAL_CAPACITY`
//! resolved into a [`tiercache::Mode`], said once at start-up with the reason.
//!
//! | `CACHE_MODE` | `REDIS_URL` | cache |
//! |---|---|---|
//! | `auto` (default) | set | Redis at that URL, exactly as `redis` |
//! | `auto` or `redis` | `REDIS_CLUSTER_URLS` set instead | the Redis Cluster those seed nodes belong to, exactly as a named Redis (setting both is an error) |
//! | `auto` | unset | Redis at `127.0.0.1:6379` if it answers a PING within [`PROBE_TIMEOUT`] at start-up, else standalone |
//! | `redis` | set or unset | Redis at `REDIS_URL`, or at `redis://127.0.0.1:6379` |
//! | `standalone` | ignored | the in-process tier alone, of `CACHE_LOCAL_CAPACITY` bytes (0 is an error) |
//! | `off`, or `CACHE_ENABLED=false` | ignored | none: every read from the database |
//!
//! A Redis the user named is never replaced by a standalone tier: the instances sharing it
//! would each keep a tier that hears nothing of the others' writes. While it is away the
//! service serves from the database (`X-Cache: BYPASS`) and reconnects by itself. Without a
//! named Redis the probe decides once, at start-up: a Redis started later is not picked up until
//! the service restarts (or `REDIS_URL` is set).
//!
//! In `auto`, `CACHE_LOCAL_CAPACITY=0` means "no tier in front of Redis"; if the probe then
//! finds no Redis, the default capacity ([`LOCAL_CAPACITY`](crate::cache_policy::LOCAL_CAPACITY))
//! is used, and the start-up line says so. Explicit `standalone` with 0 is an error.
//!
//! `CACHE_ENCRYPTION_KEYS` holds the keys of the sensitive categories (see
//! [`cache_policy`]); without it they are not cached, with a bad one the
//! cache, and so the process, does not start.
//!
//! `seed` and `import` resolve the same way, except that where the server would run standalone
//! they run without a cache: a one-off process's private tier would serve nobody, and a server
//! running standalone hears nothing of another process's writes either way (it serves its
//! cached answers until their TTLs expire, at most 30 minutes; restart it to see the new reports
//! at once).

use std::time::Duration;

use tiercache::{Cache, CacheBuilder, Mode};

use crate::cache_policy;
use crate::config::{CacheMode, Common, redact};

/// How long `auto` waits at start-up for a Redis at the default address to answer a PING.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the process does with its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Serve the HTTP API.
    Serve,
    /// A one-off bulk write (`seed`, `import`): it only invalidates.
    Batch,
}

/// The cache a process runs with, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// How values are stored.
    pub mode: Mode,
    /// The Redis URL (used in [`Mode::Redis`] only, without `cluster_urls`).
    pub url: String,
    /// Seed nodes of a Redis Cluster (`REDIS_CLUSTER_URLS`); empty for one server at `url`.
    pub cluster_urls: Vec<String>,
    /// Bytes of the in-process tier.
    pub local_capacity: u64,
    /// Why this mode, for the start-up line.
    pub reason: String,
}

/// Cache settings that cannot work, or a cache that cannot be built from them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Standalone mode was asked for without a tier to keep values in.
    #[error(
        "CACHE_MODE=standalone keeps values in the in-process tier alone, but \
         CACHE_LOCAL_CAPACITY is 0: set it to a size in bytes (default {})",
        cache_policy::LOCAL_CAPACITY
    )]
    NoCapacity,
    /// Both `REDIS_URL` and `REDIS_CLUSTER_URLS` are set.
    #[error(
        "REDIS_URL and REDIS_CLUSTER_URLS are both set: set REDIS_URL for one Redis server, or \
         REDIS_CLUSTER_URLS (comma-separated seed-node URLs) for a Redis Cluster, not both"
    )]
    TwoRedis,
    /// `CACHE_ENABLED=false` with a `CACHE_MODE` that caches.
    #[error(
        "CACHE_ENABLED=false turns the cache off, but CACHE_MODE={0}: set CACHE_MODE=off, or \
         remove CACHE_ENABLED"
    )]
    Contradiction(&'static str),
    /// The cache refused its settings (an invalid `REDIS_URL`, namespace, ...).
    #[error(transparent)]
    Cache(#[from] tiercache::Error),
}

/// Resolves the cache settings, logs the outcome, and builds the cache: what `main` calls.
/// Only `auto` without a `REDIS_URL` touches the network here, for at most [`PROBE_TIMEOUT`].
pub async fn build_cache(common: &Common, purpose: Purpose) -> Result<Cache, SetupError> {
    let plan = Plan::resolve(common, purpose, tiercache::DEFAULT_URL).await?;
    plan.log();
    Ok(plan.build(common).await?)
}

impl Plan {
    /// The plan for `common`; `default_url` is the Redis used (and, in `auto`, probed) when
    /// `REDIS_URL` is not set (tests point it elsewhere).
    pub async fn resolve(
        common: &Common,
        purpose: Purpose,
        default_url: &str,
    ) -> Result<Self, SetupError> {
        let capacity = common.cache_local_capacity;
        let named = common.named_redis_url();
        let cluster_urls = common.cluster_urls();
        if named.is_some() && !cluster_urls.is_empty() {
            return Err(SetupError::TwoRedis);
        }
        let url = named.unwrap_or(default_url).to_owned();
        let plan = |mode, local_capacity, reason: String| Self {
            mode,
            url: url.clone(),
            cluster_urls: if mode == Mode::Redis {
                cluster_urls.clone()
            } else {
                Vec::new()
            },
            local_capacity,
            reason,
        };
        let requested = match (common.cache_enabled, common.cache_mode) {
            (true, mode) => mode,
            (false, CacheMode::Auto | CacheMode::Off) => {
                return Ok(plan(Mode::Disabled, 0, "CACHE_ENABLED=false".into()));
            }
            (false, mode) => return Err(SetupError::Contradiction(mode.as_str())),
        };
        let resolved = match requested {
            CacheMode::Off => plan(Mode::Disabled, 0, "CACHE_MODE=off".into()),
            CacheMode::Redis => plan(Mode::Redis, capacity, "CACHE_MODE=redis".into()),
            CacheMode::Standalone if capacity == 0 => return Err(SetupError::NoCapacity),
            CacheMode::Standalone => {
                plan(Mode::Standalone, capacity, "CACHE_MODE=standalone".into())
            }
            CacheMode::Auto if !cluster_urls.is_empty() => plan(
                Mode::Redis,
                capacity,
                "REDIS_CLUSTER_URLS is set: that Redis Cluster only, never replaced by an \
                 in-process cache"
                    .into(),
            ),
            CacheMode::Auto if named.is_some() => plan(
                Mode::Redis,
                capacity,
                "REDIS_URL is set: Redis only, never replaced by an in-process cache".into(),
            ),
            CacheMode::Auto => {
                let addr = host_port(default_url);
                match probe(default_url).await {
                    Ok(reply) if reply.starts_with('-') => plan(
                        Mode::Redis,
                        capacity,
                        format!("no REDIS_URL set; a Redis answered at {addr}, with {reply:?}"),
                    ),
                    Ok(_) => plan(
                        Mode::Redis,
                        capacity,
                        format!("no REDIS_URL set; a Redis answered at {addr}"),
                    ),
                    Err(why) if capacity == 0 => plan(
                        Mode::Standalone,
                        cache_policy::LOCAL_CAPACITY,
                        format!(
                            "no REDIS_URL set and no Redis at {addr}: {why}; CACHE_LOCAL_CAPACITY=0 \
                             means no tier in front of Redis, so the default {} bytes are used",
                            cache_policy::LOCAL_CAPACITY
                        ),
                    ),
                    Err(why) => plan(
                        Mode::Standalone,
                        capacity,
                        format!("no REDIS_URL set and no Redis at {addr}: {why}"),
                    ),
                }
            }
        };
        Ok(match (purpose, resolved.mode) {
            (Purpose::Batch, Mode::Standalone) => Self {
                mode: Mode::Disabled,
                local_capacity: 0,
                reason: format!(
                    "{}; a bulk write skips a standalone cache: this process's own tier would \
                     serve nobody, and a server running standalone shows these reports once its \
                     cached answers expire (at most 30 min) or it restarts",
                    resolved.reason
                ),
                ..resolved
            },
            _ => resolved,
        })
    }

    /// Logs the start-up line: the mode, why, and what it means.
    pub fn log(&self) {
        let meaning = match self.mode {
            Mode::Standalone => "in-process only, one instance",
            Mode::Disabled => "no cache, every read from the database",
            _ => {
                "shared by every instance on this Redis; reads go to the database while it is away"
            }
        };
        let redis = match self.mode {
            Mode::Redis if !self.cluster_urls.is_empty() => {
                let seeds: Vec<String> = self.cluster_urls.iter().map(|u| redact(u)).collect();
                format!("cluster {}", seeds.join(","))
            }
            Mode::Redis => redact(&self.url),
            _ => "-".to_owned(),
        };
        tracing::info!(
            mode = self.mode.as_str(),
            redis,
            local_capacity = self.local_capacity,
            "cache mode: {} ({}): {meaning}",
            self.mode.as_str(),
            self.reason,
        );
    }

    /// Builds the cache this plan describes, with this service's TTLs and namespace.
    pub async fn build(&self, common: &Common) -> Result<Cache, tiercache::Error> {
        self.build_with(common, |name| std::env::var(name).ok())
            .await
    }

    /// [`build`](Self::build) with the variables read through `lookup` rather than from the
    /// environment (for tests).
    pub async fn build_with(
        &self,
        common: &Common,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Cache, tiercache::Error> {
        // From the environment for REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB and
        // CACHE_ENCRYPTION_KEYS; the plan and the flags (which read the same variables) win for
        // the rest.
        let builder = CacheBuilder::from_lookup(lookup).mode(self.mode);
        // The plan names the one server or the cluster (`resolve` refused both).
        let builder = if self.cluster_urls.is_empty() {
            builder
                .url(self.url.clone())
                .cluster_urls(Vec::<String>::new())
        } else {
            builder.cluster_urls(self.cluster_urls.clone())
        };
        let builder = builder
            .namespace(common.cache_namespace.clone())
            .env_prefix(common.app_env.clone());
        cache_policy::configure(builder)
            .local_capacity(self.local_capacity)
            .max_value_bytes(common.cache_max_value_bytes)
            .build()
            .await
    }
}

/// `host:port` of a Redis URL (port 6379 when it has none).
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:6379")
    }
}

/// Sends one PING (through redis-rs, without credentials) to the Redis at `url` and returns
/// its answer: `PONG`, or an error such as `NOAUTH` (a Redis either way); or why there is no
/// Redis there.
async fn probe(url: &str) -> Result<String, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let exchange = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Ok(pong)) => Ok(pong),
        // Refusing us is still an answer from a Redis.
        Ok(Err(e))
            if matches!(
                e.kind(),
                redis::ErrorKind::Server(_)
                    | redis::ErrorKind::Extension
                    | redis::ErrorKind::AuthenticationFailed
            ) =>
        {
            Ok(format!("-{e}"))
        }
        Ok(Err(e)) if e.kind() == redis::ErrorKind::Parse => {
            Err("something answers there, but not as Redis".into())
        }
        Ok(Err(e)) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn common(mode: CacheMode, redis_url: Option<&str>, capacity: u64) -> Common {
        Common {
            database_url: "sqlite://unused.db".into(),
            cache_mode: mode,
            redis_url: redis_url.map(str::to_owned),
            redis_cluster_urls: None,
            cache_namespace: "scan-api".into(),
            app_env: "test".into(),
            cache_local_capacity: capacity,
            cache_max_value_bytes: tiercache::DEFAULT_MAX_VALUE_BYTES,
            cache_enabled: true,
        }
    }

    /// A URL where nothing listens (a port just released).
    async fn nothing_there() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("redis://{}", listener.local_addr().unwrap())
    }

    /// A URL where something answers every connection with `reply`.
    async fn answering(reply: &'static [u8]) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply);
            }
        });
        url
    }

    async fn resolve(common: &Common, purpose: Purpose, default_url: &str) -> Plan {
        Plan::resolve(common, purpose, default_url).await.unwrap()
    }

    #[tokio::test]
    async fn auto_caches_in_process_when_no_redis_answers() {
        let none = nothing_there().await;
        let plan = resolve(&common(CacheMode::Auto, None, 1000), Purpose::Serve, &none).await;
        assert_eq!((plan.mode, plan.local_capacity), (Mode::Standalone, 1000));
        assert!(
            plan.reason
                .starts_with("no REDIS_URL set and no Redis at 127.0.0.1:")
        );
        // 0 there means "no tier in front of Redis": the default capacity, and the line says so.
        let plan = resolve(&common(CacheMode::Auto, None, 0), Purpose::Serve, &none).await;
        assert_eq!(
            (plan.mode, plan.local_capacity),
            (Mode::Standalone, cache_policy::LOCAL_CAPACITY)
        );
        assert!(
            plan.reason.contains("CACHE_LOCAL_CAPACITY=0"),
            "{}",
            plan.reason
        );
        // Not Redis at that address: the same.
        let http = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let plan = resolve(&common(CacheMode::Auto, None, 1000), Purpose::Serve, &http).await;
        assert_eq!(plan.mode, Mode::Standalone, "{}", plan.reason);
        assert!(plan.reason.contains("not as Redis"), "{}", plan.reason);
    }

    #[tokio::test]
    async fn auto_uses_a_redis_that_answers_or_one_that_was_named() {
        let server = tiercache_testkit::RedisServer::start();
        let redis = server.url();
        let plan = resolve(&common(CacheMode::Auto, None, 1000), Purpose::Serve, &redis).await;
        assert_eq!((plan.mode, &plan.url), (Mode::Redis, &redis));
        let locked_server =
            tiercache_testkit::RedisServer::start_with_args(&["--requirepass", "pw"]);
        let locked = locked_server.url();
        let plan = resolve(&common(CacheMode::Auto, None, 0), Purpose::Serve, &locked).await;
        assert_eq!(
            (plan.mode, plan.local_capacity),
            (Mode::Redis, 0),
            "{}",
            plan.reason
        );
        assert!(plan.reason.contains("NOAUTH"), "{}", plan.reason);
        // Named: Redis, even where nothing answers (never probed, never replaced).
        let none = nothing_there().await;
        let named = common(CacheMode::Auto, Some(&none), 1000);
        let plan = resolve(&named, Purpose::Serve, &redis).await;
        assert_eq!((plan.mode, &plan.url), (Mode::Redis, &none));
        assert!(plan.reason.contains("REDIS_URL is set"), "{}", plan.reason);
        // An empty REDIS_URL counts as unset.
        let empty = common(CacheMode::Auto, Some(" "), 1000);
        assert_eq!(
            resolve(&empty, Purpose::Serve, &none).await.mode,
            Mode::Standalone
        );
    }

    #[tokio::test]
    async fn explicit_modes_are_taken_as_given() {
        let none = nothing_there().await;
        let plan = resolve(&common(CacheMode::Redis, None, 0), Purpose::Serve, &none).await;
        assert_eq!((plan.mode, &plan.url), (Mode::Redis, &none));
        let plan = resolve(
            &common(CacheMode::Standalone, Some("redis://h:1"), 5),
            Purpose::Serve,
            &none,
        )
        .await;
        assert_eq!((plan.mode, plan.local_capacity), (Mode::Standalone, 5));
        let plan = resolve(&common(CacheMode::Off, None, 5), Purpose::Serve, &none).await;
        assert_eq!(plan.mode, Mode::Disabled);
        let err = Plan::resolve(
            &common(CacheMode::Standalone, None, 0),
            Purpose::Serve,
            &none,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SetupError::NoCapacity));
        assert!(err.to_string().contains("CACHE_LOCAL_CAPACITY"), "{err}");
    }

    #[tokio::test]
    async fn cache_enabled_false_is_off_and_contradictions_are_named() {
        let none = nothing_there().await;
        let mut off = common(CacheMode::Auto, Some("redis://h:1"), 5);
        off.cache_enabled = false;
        let plan = resolve(&off, Purpose::Serve, &none).await;
        assert_eq!(plan.mode, Mode::Disabled);
        assert_eq!(plan.reason, "CACHE_ENABLED=false");
        off.cache_mode = CacheMode::Redis;
        let err = Plan::resolve(&off, Purpose::Serve, &none)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("CACHE_MODE=redis"), "{err}");
    }

    #[tokio::test]
    async fn bulk_writes_skip_a_standalone_cache_and_keep_redis() {
        let none = nothing_there().await;
        for mode in [CacheMode::Auto, CacheMode::Standalone] {
            let plan = resolve(&common(mode, None, 1000), Purpose::Batch, &none).await;
            assert_eq!(plan.mode, Mode::Disabled, "{mode:?}");
            assert!(plan.reason.contains("bulk write"), "{}", plan.reason);
        }
        let server = tiercache_testkit::RedisServer::start();
        let plan = resolve(
            &common(CacheMode::Auto, None, 1000),
            Purpose::Batch,
            &server.url(),
        )
        .await;
        assert_eq!(plan.mode, Mode::Redis);
    }

    #[test]
    fn the_probe_address_comes_from_the_url() {
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("redis://u:p@cache.local/2"), "cache.local:6379");
        assert_eq!(host_port("redis://[::1]:7000/0"), "[::1]:7000");
        assert_eq!(host_port("redis://[::1]"), "[::1]:6379");
    }
}
