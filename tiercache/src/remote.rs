//! L2: the only module that issues Redis commands (and holds the Lua scripts).
//!
//! One [`redis::aio::ConnectionManager`] carries every command: a single multiplexed connection
//! that reconnects by itself, which is what redis-rs recommends over a pool for async use. Its own
//! retries are tuned down (one quick retry) because its defaults would block a call for seconds
//! during an outage. With [`RemoteConfig::cluster`] set, a Redis Cluster connection takes its
//! place, tuned the same way (see `connection` for how a pipeline, a scan and the channel travel
//! on a cluster); the commands below are the same either way.
//!
//! Every call goes through [`Remote::call`], which
//! 1. skips Redis at once while the [`Breaker`] is open, for calls made [`Via::Breaker`],
//! 2. bounds the call by the per-operation timeout (default 50 ms), so a hung Redis (SIGSTOP,
//!    network partition) never holds a caller longer than that, and
//! 3. records the outcome: successes close the failure streak; connection errors and timeouts
//!    count towards opening the breaker and are logged at most once per interval. An `OOM`
//!    refusal (Redis at `maxmemory` under `noeviction`) is a failed write, counted apart and
//!    never towards the breaker: Redis is up and still serves reads.
//!
//! What the commands mean for coherence (leases, tag versions, notices) is decided in
//! `coherence`; this module only says how each is spelled, and keeps each change and its notice
//! in one round trip. Redis 7.0 or later is needed (`SET ... NX GET`, `PEXPIRE ... GT`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClient;
use redis::{Client, ConnectionInfo, RedisResult, Value};

use crate::breaker::Breaker;
use crate::codec::LEASE_BYTE;
use crate::connection::{Connection, Connector, Node, Subscription};
use crate::error::{Error, Result};
use crate::key::Pattern;
use crate::log_limiter::LogLimiter;
use crate::stats::Counters;

/// How a call treats the circuit breaker, and how long it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Skipped while the breaker is open; bounded by the operation timeout. Reads and fills.
    Breaker,
    /// Sent whatever the breaker says, bounded by the operation timeout: changes (invalidations
    /// and overwrites), which must reach a Redis that is merely slow (see `coherence`).
    Always,
    /// Sent whatever the breaker says, bounded by the connect timeout (it may have to
    /// reconnect): the recovery probe and the replays that precede closing the breaker.
    Recovery,
}

/// What the cache reads from Redis `INFO`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    pub(crate) evicted_keys: Option<u64>,
    pub(crate) used_memory: Option<u64>,
    pub(crate) maxmemory: Option<u64>,
    pub(crate) maxmemory_policy: Option<String>,
    pub(crate) used_memory_human: Option<String>,
}

/// Connection settings, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct RemoteConfig {
    pub(crate) info: ConnectionInfo,
    /// Seed nodes of a Redis Cluster (each with the credentials of `info`); empty for one
    /// server at `info`.
    pub(crate) cluster: Vec<ConnectionInfo>,
    /// A private CA and/or a client certificate for `rediss://`.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<redis::TlsCertificates>,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) scan_count: usize,
}

/// A notice to publish in the same round trip as the change it announces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notice<'a> {
    pub(crate) channel: &'a str,
    pub(crate) payload: &'a [u8],
}

/// What one read found: the value (`None` if absent), its remaining TTL if asked for
/// (`Duration::MAX` without expiry, `None` if it expired between the two commands), and the
/// current version of each tag asked for (`None` if the tag has none).
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) tag_versions: Vec<Option<Vec<u8>>>,
}

/// A tag version to note when taking a lease: create it as `fresh` if the tag has none, and
/// keep it for at least `life`.
#[derive(Debug)]
pub(crate) struct TagNote<'a> {
    pub(crate) key: &'a str,
    pub(crate) fresh: &'a str,
    pub(crate) life: Duration,
}

/// Whether taking a lease may replace a value found in the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Only an empty key (or another loader's lease): a value found is returned instead.
    IfEmpty,
    /// Whatever the key holds: the caller found its value stale (a tag moved).
    Replacing,
}

/// What taking a lease found.
#[derive(Debug)]
pub(crate) enum Leased {
    /// The key held no value: the lease is ours (it replaced another loader's, if any).
    Taken,
    /// A value was stored meanwhile.
    Found(Vec<u8>),
}

/// Takes a load lease on `KEYS[1]` (`ARGV[1]`: the lease, `ARGV[2]`: its TTL in ms) unless a value
/// is there, which it returns (with `ARGV[3]` = `replace`, it takes the lease anyway). A lease (a
/// string starting with byte 0) of another loader is replaced: its holder may have died, and
/// taking it over only refuses the other's fill.
const LEASE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.byte(v, 1) ~= 0 and ARGV[3] ~= 'replace' then
  return v
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Stores `ARGV[2]` for `ARGV[3]` ms in `KEYS[1]` if the key still holds the lease `ARGV[1]`:
/// an invalidation (UNLINK), an overwrite (SET) or a sweep since the lease was taken removed
/// it. Returns 1 if stored.
const FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Removes `KEYS[1]` if it still holds the lease `ARGV[1]` (a load that failed or was
/// cancelled gives its lease back).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('UNLINK', KEYS[1])
end
return 0
";

/// The Redis side of a cache, shared (`Arc`) by every clone of the cache and its tasks.
#[derive(Debug)]
pub(crate) struct Remote {
    /// Cheap to clone (an `Arc` or a channel sender inside); each call clones it because
    /// commands need `&mut`. Behind an `ArcSwap` so that recovery can replace it (see
    /// [`Remote::reconnect`]) while calls keep reading it without a lock.
    conn: ArcSwap<Connection>,
    /// What a replacement connection is built from.
    connector: Connector,
    /// A new connection that recovery is trying while the cache's own is silent (see
    /// [`Remote::probe_fresh`]); kept from one probe to the next, so that a connection that
    /// takes longer than one probe to set up (a cluster's, whose first seed node may be the
    /// hung one) is not started over every time.
    candidate: std::sync::Mutex<Option<Connection>>,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    scan_count: usize,
    pub(crate) breaker: Breaker,
    counters: Arc<Counters>,
    failure_log: LogLimiter,
    /// OOM refusals come with every write while Redis is full: one line per interval.
    oom_log: LogLimiter,
    /// Whether Redis's memory settings were checked: once per cache, on its first connection
    /// (at start-up, or on recovery if Redis was away then). See `memory`.
    pub(crate) memory_checked: std::sync::atomic::AtomicBool,
    /// `host:port/db` (and user), never the password: safe to log.
    pub(crate) addr: String,
    lease_script: redis::Script,
    fill_script: redis::Script,
    release_script: redis::Script,
}

impl Remote {
    /// Creates the connection manager without waiting for a connection; the first command (the
    /// start-up probe) connects. Fails only for settings the driver rejects.
    pub(crate) fn new(config: RemoteConfig, counters: Arc<Counters>) -> Result<Self> {
        let addr = if config.cluster.is_empty() {
            describe(&config.info)
        } else {
            let seeds: Vec<String> = config.cluster.iter().map(describe).collect();
            format!("cluster {}", seeds.join(","))
        };
        #[cfg(feature = "tls")]
        let client = match config.tls.clone() {
            Some(certs) => Client::build_with_tls(config.info.clone(), certs),
            None => Client::open(config.info.clone()),
        };
        #[cfg(not(feature = "tls"))]
        let client = Client::open(config.info.clone());
        let client = client.map_err(|e| Error::config("url", e.to_string()))?;
        let connector = if config.cluster.is_empty() {
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                // Our own per-operation timeout bounds every call; the driver's would only add a
                // second, longer one.
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            Connector::Single {
                client: Box::new(client),
                manager_config,
            }
        } else {
            let builder = || {
                let builder = ClusterClient::builder(config.cluster.clone())
                    .connection_timeout(config.connect_timeout)
                    // As for one server: our operation timeout bounds every call, and a few
                    // quick retries (a MOVED after a failover is one) fit in it; the defaults
                    // (16 retries, waits from 1.28 s) would hold a call for seconds.
                    .retries(2)
                    .min_retry_wait(5)
                    .max_retry_wait(50);
                #[cfg(feature = "tls")]
                let builder = match &config.tls {
                    Some(certs) => builder.certs(certs.clone()),
                    None => builder,
                };
                builder
            };
            let cluster = builder()
                .build()
                .map_err(|e| Error::config("cluster_urls", e.to_string()))?;
            // Sharded pub/sub needs RESP3 (its messages are pushes); the commands keep RESP2,
            // whose replies `remote` parses.
            let subscriber = builder()
                .use_protocol(redis::ProtocolVersion::RESP3)
                .build()
                .map_err(|e| Error::config("cluster_urls", e.to_string()))?;
            Connector::Cluster {
                cluster: Box::new(cluster),
                subscriber: Box::new(subscriber),
            }
        };
        let conn = connector
            .connect()
            .map_err(|e| Error::config("url", e.to_string()))?;
        Ok(Self {
            conn: ArcSwap::from_pointee(conn),
            connector,
            candidate: std::sync::Mutex::new(None),
            op_timeout: config.op_timeout,
            connect_timeout: config.connect_timeout,
            scan_count: config.scan_count,
            // Closed until the start-up probe says otherwise.
            breaker: Breaker::new(config.breaker_threshold, false),
            counters,
            failure_log: LogLimiter::new(Duration::from_secs(5)),
            oom_log: LogLimiter::new(Duration::from_secs(60)),
            memory_checked: std::sync::atomic::AtomicBool::new(false),
            addr,
            lease_script: redis::Script::new(LEASE_SCRIPT),
            fill_script: redis::Script::new(FILL_SCRIPT),
            release_script: redis::Script::new(RELEASE_SCRIPT),
        })
    }

    /// One server or a cluster (the invalidation channel is named accordingly).
    pub(crate) fn layout(&self) -> crate::bus::Layout {
        match self.connector {
            Connector::Single { .. } => crate::bus::Layout::Single,
            Connector::Cluster { .. } => crate::bus::Layout::Cluster,
        }
    }

    /// Runs one Redis call as `via` says: under the breaker or not, within its time bound.
    async fn call<T, F, Fut>(&self, op: &'static str, via: Via, f: F) -> Result<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let limit = match via {
            Via::Breaker => {
                if !self.breaker.is_closed() {
                    self.counters.short_circuit();
                    return Err(Error::Unavailable);
                }
                self.op_timeout
            }
            Via::Always => self.op_timeout,
            Via::Recovery => self.connect_timeout,
        };
        let conn = Connection::clone(&self.conn.load());
        self.call_on(conn, op, limit, f).await
    }

    /// Runs one Redis call on `conn` within `limit`, counting its outcome.
    async fn call_on<T, F, Fut>(
        &self,
        conn: Connection,
        op: &'static str,
        limit: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let outcome = tokio::time::timeout(limit, f(conn)).await;
        self.counters.redis_call(started.elapsed());
        match outcome {
            Ok(Ok(v)) => {
                self.breaker.record_success();
                Ok(v)
            }
            Ok(Err(e)) => {
                let err = Error::Redis(e);
                self.answered_with(op, &err);
                Err(err)
            }
            Err(_) => {
                self.counters.timeout();
                let err = Error::Timeout(limit);
                self.failed(op, &err);
                Err(err)
            }
        }
    }

    /// Counts and logs an error reply. Redis answered, so the breaker's streak is untouched
    /// (only unreachable errors count towards it); an `OOM` refusal is a failed write, counted
    /// apart from errors.
    fn answered_with(&self, op: &'static str, err: &Error) {
        if err.is_oom() {
            self.counters.oom_write_failure();
            if let Some(suppressed) = self.oom_log.check() {
                tracing::warn!(
                    op,
                    error = %err,
                    suppressed,
                    addr = %self.addr,
                    "redis refused a write: it is at maxmemory and its maxmemory-policy does not let it evict (noeviction); values are not being stored, reads and invalidations go on. Fix: set maxmemory-policy allkeys-lru (or volatile-lru), or raise maxmemory"
                );
            }
            return;
        }
        self.counters.error();
        self.failed(op, err);
    }

    fn failed(&self, op: &'static str, err: &Error) {
        if let Some(suppressed) = self.failure_log.check() {
            tracing::warn!(op, error = %err, suppressed, addr = %self.addr, "redis call failed; serving without the cache");
        }
        if err.is_unreachable() && self.breaker.record_failure() {
            self.counters.breaker_trip();
            tracing::warn!(addr = %self.addr, "circuit breaker opened: redis calls paused until it answers again");
        }
    }

    /// Runs `pipe` (built with `ignore_errors`, so each reply comes back even if another
    /// failed) and returns its replies. If Redis lost the scripts it uses (a restart empties
    /// its script cache), they are loaded and the pipeline sent once more.
    async fn pipeline(
        &self,
        op: &'static str,
        via: Via,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>> {
        let replies: Vec<Value> = self
            .call(op, via, |mut c| async move { c.pipeline(pipe).await })
            .await?;
        if !replies.iter().any(is_noscript) {
            return Ok(replies);
        }
        self.load_scripts().await?;
        self.call(op, via, |mut c| async move { c.pipeline(pipe).await })
            .await
    }

    /// Loads the scripts (at start-up: a refusal, such as an ACL without `script|load`, is
    /// reported early rather than on the first load).
    pub(crate) async fn load_scripts(&self) -> Result<()> {
        let mut load = redis::pipe();
        for script in [&self.lease_script, &self.fill_script, &self.release_script] {
            load.load_script(script);
        }
        let load = &load;
        // On a cluster, each SCRIPT LOAD goes to every node (see `connection`).
        let replies = self
            .call("SCRIPT LOAD", Via::Recovery, |mut c| async move {
                c.pipeline(load).await
            })
            .await?;
        self.refused("SCRIPT LOAD", &replies)
    }

    /// Counts and reports a server error among `replies` (a refused command) as the call's
    /// failure.
    fn refused(&self, op: &'static str, replies: &[Value]) -> Result<()> {
        for reply in replies {
            if let Value::ServerError(e) = reply {
                let err = Error::Redis(e.clone().into());
                self.answered_with(op, &err);
                return Err(err);
            }
        }
        Ok(())
    }

    /// `GET key`: one round trip, the whole cost of a Redis hit without tags or a tier.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.call("GET", Via::Breaker, |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// A read of `key` in one round trip, with its remaining TTL (`with_ttl`, for the
    /// in-process tier, whose copy must not outlive Redis's) and the versions of `tag_keys`.
    pub(crate) async fn read(
        &self,
        key: &str,
        with_ttl: bool,
        tag_keys: &[String],
    ) -> Result<Read> {
        if !with_ttl && tag_keys.is_empty() {
            return Ok(Read {
                value: self.get(key).await?,
                ..Read::default()
            });
        }
        // The value and its tags' versions in one MGET: one command for Redis to run, not one
        // per key (on a cluster, redis-rs splits it per slot).
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("MGET").arg(key).arg(tag_keys);
        if with_ttl {
            pipe.cmd("PTTL").arg(key);
        }
        let replies = self.pipeline("MGET (read)", Via::Breaker, &pipe).await?;
        self.refused("MGET (read)", &replies)?;
        let mut replies = replies.into_iter();
        let mut found: Vec<Option<Vec<u8>>> =
            redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
                .map_err(|e| Error::Redis(e.into()))?;
        let ttl = if with_ttl {
            let ms: i64 = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
                .map_err(|e| Error::Redis(e.into()))?;
            match ms {
                -1 => Some(Duration::MAX),
                ms => u64::try_from(ms).ok().map(Duration::from_millis),
            }
        } else {
            None
        };
        if found.is_empty() {
            return Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "MGET returned no value",
            ))));
        }
        let value = found.remove(0);
        Ok(Read {
            value,
            ttl,
            tag_versions: found,
        })
    }

    /// The current versions of `tag_keys`, in one round trip.
    pub(crate) async fn tag_versions(&self, tag_keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for tag in tag_keys {
            pipe.cmd("GET").arg(tag);
        }
        let replies = self.pipeline("GET (tags)", Via::Breaker, &pipe).await?;
        self.refused("GET (tags)", &replies)?;
        replies.into_iter().map(|r| bytes_reply(Some(r))).collect()
    }

    /// `MGET`: one round trip for many keys.
    pub(crate) async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.call("MGET", Via::Breaker, |mut c| async move {
            redis::cmd("MGET").arg(keys).query_async(&mut c).await
        })
        .await
    }

    /// Takes a load lease on `key` (unless a value is there), and notes the version of each of
    /// `tags`, creating the missing ones and keeping each for at least its `life`: one round
    /// trip. Returns what the lease found and each tag's version.
    pub(crate) async fn lease(
        &self,
        key: &str,
        lease: &[u8],
        lease_ttl: Duration,
        take: Take,
        tags: &[TagNote<'_>],
    ) -> Result<(Leased, Vec<Vec<u8>>)> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().invoke_script(
            self.lease_script
                .key(key)
                .arg(lease)
                .arg(millis(lease_ttl))
                .arg(match take {
                    Take::IfEmpty => "if-empty",
                    Take::Replacing => "replace",
                }),
        );
        note_tags(&mut pipe, tags);
        let replies = self
            .pipeline("EVALSHA (lease)", Via::Breaker, &pipe)
            .await?;
        self.refused("EVALSHA (lease)", &replies)?;
        let mut replies = replies.into_iter();
        let leased = match bytes_reply(replies.next())? {
            None => Leased::Taken,
            Some(value) => Leased::Found(value),
        };
        Ok((leased, noted_versions(tags, replies)?))
    }

    /// Notes the versions of `tags` for a value written now, creating missing ones: one round
    /// trip.
    pub(crate) async fn note_tags(&self, tags: &[TagNote<'_>]) -> Result<Vec<Vec<u8>>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        note_tags(&mut pipe, tags);
        let replies = self.pipeline("SET (tags)", Via::Breaker, &pipe).await?;
        self.refused("SET (tags)", &replies)?;
        noted_versions(tags, replies.into_iter())
    }

    /// Stores `value` for `ttl` if `key` still holds `lease`, and reads the current versions of
    /// `tag_keys`: one round trip. Returns whether it stored, and the versions.
    pub(crate) async fn fill(
        &self,
        key: &str,
        lease: &[u8],
        value: &[u8],
        ttl: Duration,
        tag_keys: &[String],
    ) -> Result<(bool, Vec<Option<Vec<u8>>>)> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().invoke_script(
            self.fill_script
                .key(key)
                .arg(lease)
                .arg(value)
                .arg(millis(ttl)),
        );
        for tag in tag_keys {
            pipe.cmd("GET").arg(tag);
        }
        let replies = self.pipeline("EVALSHA (fill)", Via::Breaker, &pipe).await?;
        self.refused("EVALSHA (fill)", &replies)?;
        let mut replies = replies.into_iter();
        let stored: i64 = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
            .map_err(|e| Error::Redis(e.into()))?;
        let versions = replies
            .map(|r| bytes_reply(Some(r)))
            .collect::<Result<_>>()?;
        Ok((stored == 1, versions))
    }

    /// Gives `lease` on `key` back, if the key still holds it.
    pub(crate) async fn release(&self, key: &str, lease: &[u8]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .invoke_script(self.release_script.key(key).arg(lease));
        let replies = self
            .pipeline("EVALSHA (release)", Via::Breaker, &pipe)
            .await?;
        self.refused("EVALSHA (release)", &replies)
    }

    /// An invalidation of `keys` (`UNLINK`) and its notice, in one round trip. Returns how many
    /// keys existed (load leases included).
    pub(crate) async fn invalidate_keys(
        &self,
        keys: &[&str],
        notice: Option<Notice<'_>>,
        via: Via,
    ) -> Result<u64> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("UNLINK").arg(keys);
        self.with_notice(&mut pipe, notice);
        let replies = self.pipeline("UNLINK", via, &pipe).await?;
        self.refused("UNLINK", &replies)?;
        redis::from_redis_value(replies.into_iter().next().unwrap_or(Value::Nil))
            .map_err(|e| Error::Redis(e.into()))
    }

    /// An invalidation of tags (their version keys are removed, so every value noted with the
    /// old versions is stale) and its notice, in one round trip: constant cost, however many
    /// entries carry the tags.
    pub(crate) async fn invalidate_tags(
        &self,
        tag_keys: &[String],
        notice: Option<Notice<'_>>,
        via: Via,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("UNLINK").arg(tag_keys);
        self.with_notice(&mut pipe, notice);
        let replies = self.pipeline("UNLINK (tags)", via, &pipe).await?;
        self.refused("UNLINK (tags)", &replies)
    }

    /// Overwrites: a `SET key value PX ttl` per entry (value and expiry in one command, never a
    /// separate EXPIRE) and the notice, in one round trip.
    pub(crate) async fn set_many(
        &self,
        entries: &[(&str, &[u8], Duration)],
        notice: Option<Notice<'_>>,
        via: Via,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (key, value, ttl) in entries {
            pipe.cmd("SET")
                .arg(*key)
                .arg(*value)
                .arg("PX")
                .arg(millis(*ttl));
        }
        self.with_notice(&mut pipe, notice);
        let replies = self.pipeline("SET", via, &pipe).await?;
        self.refused("SET", &replies)
    }

    /// `PUBLISH channel payload` (`SPUBLISH` on a cluster).
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8], via: Via) -> Result<()> {
        let command = self.publish_command();
        self.call(command, via, |mut c| async move {
            redis::cmd(command)
                .arg(channel)
                .arg(payload)
                .exec_async(&mut c)
                .await
        })
        .await
    }

    /// How a notice is published: `PUBLISH` on one server; on a cluster `SPUBLISH` (sharded
    /// pub/sub, Redis 7), which only the channel's shard carries, where a `PUBLISH` would be
    /// broadcast over the cluster bus to every node.
    fn publish_command(&self) -> &'static str {
        match self.layout() {
            crate::bus::Layout::Single => "PUBLISH",
            crate::bus::Layout::Cluster => "SPUBLISH",
        }
    }

    /// `notice`'s publication, at the end of `pipe`.
    fn with_notice(&self, pipe: &mut redis::Pipeline, notice: Option<Notice<'_>>) {
        if let Some(n) = notice {
            pipe.cmd(self.publish_command())
                .arg(n.channel)
                .arg(n.payload);
        }
    }

    /// A dedicated connection subscribed to `channels`, as a stream of (channel, payload). The
    /// stream ends when the connection is lost. Bounded by the connect timeout.
    pub(crate) async fn subscribe(&self, channels: &[&str]) -> Result<Subscription> {
        // On a cluster the subscriber's connection first connects to every node it is told of,
        // each bounded by the connect timeout, a dead one included: give it a few of them.
        let bound = match self.layout() {
            crate::bus::Layout::Single => self.connect_timeout,
            crate::bus::Layout::Cluster => self.connect_timeout * 3,
        };
        tokio::time::timeout(bound, self.connector.subscribe(channels))
            .await
            .map_err(|_| Error::Timeout(bound))?
            .map_err(Error::Redis)
    }

    /// `command key` (`PTTL`, `STRLEN`) with `GETRANGE key 0 0` in one round trip: its reply,
    /// or `None` if the key holds no value (absent, or a load lease: byte 0 is 0).
    async fn of_value<T: redis::FromRedisValue>(
        &self,
        command: &'static str,
        key: &str,
    ) -> Result<Option<T>> {
        let (first, reply): (Vec<u8>, T) = self
            .call(command, Via::Breaker, |mut c| async move {
                redis::pipe()
                    .cmd("GETRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(0)
                    .cmd(command)
                    .arg(key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(first
            .first()
            .is_some_and(|b| *b != LEASE_BYTE)
            .then_some(reply))
    }

    /// Whether `key` holds a value (a load lease is not one).
    pub(crate) async fn contains(&self, key: &str) -> Result<bool> {
        Ok(self.of_value::<u64>("STRLEN", key).await?.is_some())
    }

    /// Remaining TTL of the value at `key`; `None` if there is none (absent, a load lease, or
    /// no expiry).
    pub(crate) async fn pttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms = self.of_value::<i64>("PTTL", key).await?;
        Ok(ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis))
    }

    /// Size in bytes of the value at `key` (`STRLEN`); 0 if there is none.
    pub(crate) async fn strlen(&self, key: &str) -> Result<u64> {
        Ok(self.of_value("STRLEN", key).await?.unwrap_or(0))
    }

    /// One `SCAN cursor MATCH pattern COUNT n` page, on `node` (a cluster master; `None` for
    /// the one server).
    async fn scan_page(
        &self,
        node: Option<&Node>,
        cursor: u64,
        pattern: &Pattern,
        via: Via,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let count = self.scan_count;
        let f = |mut c: Connection| async move {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern.as_str())
                .arg("COUNT")
                .arg(count);
            c.query_at(&scan, node).await
        };
        self.call("SCAN", via, f).await
    }

    /// The nodes a scan must visit: every master of a cluster, or the one server (`None`).
    async fn scan_nodes(&self, via: Via) -> Result<Vec<Option<Node>>> {
        self.call(
            "CLUSTER SLOTS",
            via,
            |mut c| async move { c.masters().await },
        )
        .await
    }

    /// Deletes every key matching `pattern`: SCAN with COUNT, then UNLINK each page's keys
    /// (never KEYS, which blocks Redis), and then publishes `notice`. Load leases are keys like
    /// any other, so a load that began before the sweep cannot store behind it. Returns how many
    /// keys were removed.
    pub(crate) async fn invalidate_matching(
        &self,
        pattern: &Pattern,
        notice: Option<Notice<'_>>,
        via: Via,
    ) -> Result<u64> {
        let mut removed = 0;
        for node in self.scan_nodes(via).await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_page(node.as_ref(), cursor, pattern, via).await?;
                if !keys.is_empty() {
                    // Keys stay bytes: a foreign key that is not UTF-8 must not stop the sweep.
                    // On a cluster, redis-rs splits the UNLINK per slot.
                    let keys = &keys;
                    removed += self
                        .call("UNLINK", via, |mut c| async move {
                            redis::cmd("UNLINK")
                                .arg(keys)
                                .query_async::<u64>(&mut c)
                                .await
                        })
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        if let Some(n) = notice {
            self.publish(n.channel, n.payload, via).await?;
        }
        Ok(removed)
    }

    /// Keys matching `pattern`, up to `limit`, without duplicates (SCAN may repeat a key).
    pub(crate) async fn scan_keys(&self, pattern: &Pattern, limit: usize) -> Result<Vec<String>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for node in self.scan_nodes(Via::Breaker).await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self
                    .scan_page(node.as_ref(), cursor, pattern, Via::Breaker)
                    .await?;
                for k in keys {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    let k = String::from_utf8_lossy(&k).into_owned();
                    if seen.insert(k.clone()) {
                        out.push(k);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(out)
    }

    /// How many keys match `pattern`, counted with SCAN so Redis is never blocked. SCAN may
    /// return a key twice while Redis rehashes, so during a rehash the count can be slightly high.
    pub(crate) async fn count_matching(&self, pattern: &Pattern) -> Result<u64> {
        let mut count = 0;
        for node in self.scan_nodes(Via::Breaker).await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self
                    .scan_page(node.as_ref(), cursor, pattern, Via::Breaker)
                    .await?;
                count += keys.len() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(count)
    }

    /// `INFO memory` and `INFO stats`, parsed for the fields the stats report.
    pub(crate) async fn info(&self) -> Result<ServerInfo> {
        let reply: Value = self
            .call("INFO", Via::Breaker, |mut c| async move {
                redis::cmd("INFO")
                    .arg("memory")
                    .arg("stats")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        info_of(reply)
    }

    /// `INFO memory`, for the start-up check of Redis's memory settings. Not an operation of
    /// the cache: a refusal (an ACL user without `info`) or a failure is returned without being
    /// counted or logged, and the breaker is left alone.
    pub(crate) async fn memory_settings(&self) -> Result<ServerInfo> {
        let mut conn = Connection::clone(&self.conn.load());
        // On a cluster, one reply per master: the policy of the first, the limits summed.
        let reply: Value = tokio::time::timeout(
            self.connect_timeout,
            redis::cmd("INFO").arg("memory").query_async(&mut conn),
        )
        .await
        .map_err(|_| Error::Timeout(self.connect_timeout))??;
        info_of(reply)
    }

    /// Replaces the connection with a new one that connects afresh (on a cluster, from the seed
    /// nodes, with a fresh slot map).
    ///
    /// The manager reconnects by itself only when its connection *fails*. A connection whose
    /// peer vanished without a reset (a network partition, a moved VIP, a failover) just stops
    /// answering until TCP gives up, which takes many minutes: recovery replaces it when a new
    /// connection answers where it did not (see [`probe_fresh`](Self::probe_fresh)). And a
    /// reconnection that fails for another reason than I/O (see [`kept_by_the_manager`]) is
    /// never retried by the manager; recovery calls this then. Calls in flight finish on the
    /// old connection.
    pub(crate) fn reconnect(&self) -> Result<()> {
        let fresh = self.connector.connect().map_err(Error::Redis)?;
        self.conn.store(Arc::new(fresh));
        Ok(())
    }

    /// PING through the breaker, returning the round-trip time.
    pub(crate) async fn ping(&self) -> Result<Duration> {
        self.timed_ping(Via::Breaker).await
    }

    /// PING on a new connection, within the connect timeout; if it answers, the new connection
    /// replaces the cache's own. Recovery sends it when a probe on the cache's connection is
    /// slow to answer: Redis answering a new connection while the old one is silent means the
    /// old one's peer is gone (a partition that lost the connection's state, a NAT or proxy
    /// restarted; on a cluster, a hung master that was replaced, which the old connection's
    /// slot map still names), not that Redis is slow (a paused or busy Redis answers neither).
    /// Redis, which runs every connection's commands as they arrive, would have run whatever
    /// reached it on the old one. The new connection is kept for the next probe when this one
    /// times out, and dropped when it fails otherwise.
    pub(crate) async fn probe_fresh(&self) -> Result<Duration> {
        let fresh = {
            let mut candidate = self
                .candidate
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &*candidate {
                Some(c) => Connection::clone(c),
                None => {
                    let c = self.connector.connect().map_err(Error::Redis)?;
                    *candidate = Some(Connection::clone(&c));
                    c
                }
            }
        };
        let start = Instant::now();
        let probed = self
            .call_on(
                Connection::clone(&fresh),
                "PING",
                self.connect_timeout,
                |mut c| async move { redis::cmd("PING").exec_async(&mut c).await },
            )
            .await;
        match probed {
            Ok(()) => {
                self.conn.store(Arc::new(fresh));
                self.drop_candidate();
                Ok(start.elapsed())
            }
            Err(e) => {
                if !e.is_timeout() {
                    self.drop_candidate();
                }
                Err(e)
            }
        }
    }

    /// Forgets the connection [`probe_fresh`](Self::probe_fresh) was trying.
    pub(crate) fn drop_candidate(&self) {
        self.candidate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// PING that ignores the breaker and may take up to the connect timeout (it may have to
    /// reconnect): used at start-up and by the recovery probe.
    pub(crate) async fn probe(&self) -> Result<Duration> {
        self.timed_ping(Via::Recovery).await
    }

    async fn timed_ping(&self, via: Via) -> Result<Duration> {
        let start = Instant::now();
        self.call("PING", via, |mut c| async move {
            redis::cmd("PING").exec_async(&mut c).await
        })
        .await?;
        Ok(start.elapsed())
    }
}

/// Whether the connection manager keeps `err` as its connection for good, so that only a new
/// manager ([`Remote::reconnect`]) can connect again.
///
/// redis-rs 1.8 (`aio/connection_manager.rs`) stores each connection attempt as a shared
/// future. When a command finds that future failed, `reconnect_if_io_error!` starts a new
/// attempt only for an I/O error; any other failure of the attempt stays the manager's
/// connection, and every later command gets the same error back without touching the network,
/// even after Redis is restarted. The case that matters is a refused login (`AUTH` as an ACL
/// user switched off, or with a password being rotated: `AuthenticationFailed`), which only
/// connection set-up produces: nothing was sent on that connection, so replacing it cannot
/// reorder changes. Errors that an established connection may return (`BUSY`, `LOADING`, a
/// refused command) are not matched: changes may be queued on that connection, and a new one
/// could overtake them. (A `SELECT` refused at set-up is kept too, but cannot be told from a
/// refused command; it needs the database setting fixed, and a restart, anyway.)
pub(crate) fn kept_by_the_manager(err: &Error) -> bool {
    err.is_auth()
}

/// Appends, per tag, `SET tag fresh NX GET PX life` (the current version, or `fresh` if it had
/// none) and `PEXPIRE tag life GT` (so that it outlives the value about to carry it).
fn note_tags(pipe: &mut redis::Pipeline, tags: &[TagNote<'_>]) {
    for tag in tags {
        let life = millis(tag.life);
        pipe.cmd("SET")
            .arg(tag.key)
            .arg(tag.fresh)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(life);
        // Its reply is skipped by `noted_versions` (not `ignore()`d: a cluster splits the
        // pipeline per slot, and the split keeps one reply per command).
        pipe.cmd("PEXPIRE").arg(tag.key).arg(life).arg("GT");
    }
}

/// The version of each tag from the replies of [`note_tags`] (two per tag: the SET's, then the
/// PEXPIRE's).
fn noted_versions(
    tags: &[TagNote<'_>],
    replies: impl Iterator<Item = Value>,
) -> Result<Vec<Vec<u8>>> {
    tags.iter()
        .zip(replies.step_by(2))
        .map(|(tag, reply)| Ok(bytes_reply(Some(reply))?.unwrap_or_else(|| tag.fresh.into())))
        .collect()
}

/// Appends `PUBLISH` of the notice, if any, to a change's pipeline: Redis runs it after the
/// change, so no instance hears of a change before it is applied. Its reply comes last and is
/// checked with the others (an ignored command's error would be dropped silently).
fn is_noscript(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// A bulk string reply, or `None` for nil.
fn bytes_reply(reply: Option<Value>) -> Result<Option<Vec<u8>>> {
    redis::from_redis_value(reply.unwrap_or(Value::Nil)).map_err(|e| Error::Redis(e.into()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `host:port/db`, with the user name if there is one; never the password.
fn describe(info: &ConnectionInfo) -> String {
    let redis = info.redis_settings();
    match redis.username() {
        Some(user) => format!("{user}@{}/{}", info.addr(), redis.db()),
        None => format!("{}/{}", info.addr(), redis.db()),
    }
}

/// The fields of an `INFO` reply: one server's text, or on a cluster one text per master (a map
/// keyed by address), summed over the masters.
fn info_of(reply: Value) -> Result<ServerInfo> {
    let texts: Vec<Value> = match reply {
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        Value::Array(values) => values,
        text => vec![text],
    };
    let mut sum: Option<ServerInfo> = None;
    for text in texts {
        let text: String = redis::from_redis_value(text).map_err(|e| Error::Redis(e.into()))?;
        let one = parse_info(&text);
        sum = Some(match sum {
            None => one,
            Some(acc) => ServerInfo {
                evicted_keys: add(acc.evicted_keys, one.evicted_keys),
                used_memory: add(acc.used_memory, one.used_memory),
                maxmemory: add(acc.maxmemory, one.maxmemory),
                maxmemory_policy: acc.maxmemory_policy.or(one.maxmemory_policy),
                // Only one server's figure is readable as is.
                used_memory_human: None,
            },
        });
    }
    Ok(sum.unwrap_or_default())
}

fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(a?.saturating_add(b?))
}

fn parse_info(text: &str) -> ServerInfo {
    let mut out = ServerInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim_end().split_once(':') else {
            continue;
        };
        match k {
            "evicted_keys" => out.evicted_keys = v.parse().ok(),
            "used_memory" => out.used_memory = v.parse().ok(),
            "maxmemory" => out.maxmemory = v.parse().ok(),
            "maxmemory_policy" => out.maxmemory_policy = Some(v.to_owned()),
            "used_memory_human" => out.used_memory_human = Some(v.to_owned()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_parsed() {
        let text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n# Stats\r\nevicted_keys:7\r\n";
        assert_eq!(
            parse_info(text),
            ServerInfo {
                evicted_keys: Some(7),
                used_memory: Some(1_048_576),
                maxmemory: Some(0),
                maxmemory_policy: Some("noeviction".into()),
                used_memory_human: Some("1.00M".into()),
            }
        );
    }

    #[test]
    fn a_clusters_info_is_summed_over_its_masters() {
        let text = |used: u64| {
            Value::BulkString(
                format!("used_memory:{used}\r\nused_memory_human:x\r\nmaxmemory:10\r\nmaxmemory_policy:allkeys-lru\r\nevicted_keys:1\r\n")
                    .into_bytes(),
            )
        };
        let map = Value::Map(vec![
            (Value::SimpleString("a:1".into()), text(100)),
            (Value::SimpleString("b:1".into()), text(200)),
        ]);
        assert_eq!(
            info_of(map).unwrap(),
            ServerInfo {
                evicted_keys: Some(2),
                used_memory: Some(300),
                maxmemory: Some(20),
                maxmemory_policy: Some("allkeys-lru".into()),
                used_memory_human: None,
            }
        );
        assert_eq!(
            info_of(text(5)).unwrap().used_memory_human,
            Some("x".into())
        );
    }

    #[test]
    fn the_address_never_shows_the_password() {
        let info: ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(
            "redis://alice:s3cret@127.0.0.1:6390/2",
        )
        .unwrap();
        let d = describe(&info);
        assert_eq!(d, "alice@127.0.0.1:6390/2");
        assert!(!d.contains("s3cret"));
    }

    #[test]
    fn only_failures_the_manager_keeps_call_for_a_new_one() {
        let refused = Error::Redis(
            (
                redis::ErrorKind::AuthenticationFailed,
                "Password authentication failed",
            )
                .into(),
        );
        assert!(refused.is_auth());
        assert!(
            refused.is_unreachable(),
            "a refused login opens the breaker"
        );
        assert!(kept_by_the_manager(&refused));
        let reset = Error::Redis(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into());
        assert!(!reset.is_auth());
        assert!(
            !kept_by_the_manager(&reset),
            "the manager reconnects by itself"
        );
        let loading = Error::Redis(
            (
                redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
                "LOADING",
            )
                .into(),
        );
        assert!(
            !kept_by_the_manager(&loading),
            "changes may be queued on it"
        );
        assert!(!kept_by_the_manager(&Error::Timeout(
            Duration::from_millis(50)
        )));
        assert!(!kept_by_the_manager(&Error::Unavailable));
    }
}
