//! L2: the only module that issues Redis commands.
//!
//! One [`redis::aio::ConnectionManager`] carries every command: a single multiplexed connection
//! that reconnects by itself, which is what redis-rs recommends over a pool for async use. Its own
//! retries are tuned down (one quick retry) because its defaults would block a call for seconds
//! during an outage.
//!
//! Every call goes through [`Remote::call`], which
//! 1. skips Redis at once while the [`Breaker`] is open,
//! 2. bounds the call by the per-operation timeout (default 50 ms), so a hung Redis (SIGSTOP,
//!    network partition) never holds a caller longer than that, and
//! 3. records the outcome: successes close the failure streak; connection errors and timeouts
//!    count towards opening the breaker and are logged at most once per interval.
//!
//! Changes that make values stale also move the namespace's invalidation generation, and loads
//! are stored against it (see `generation`); the commands for both are here.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionInfo, RedisResult, ToRedisArgs};

use crate::breaker::Breaker;
use crate::error::{Error, Result};
use crate::generation::{self, Generation};
use crate::key::Pattern;
use crate::log_limiter::LogLimiter;
use crate::stats::Counters;

/// What the cache reads from Redis `INFO`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    pub(crate) evicted_keys: Option<u64>,
    pub(crate) used_memory: Option<u64>,
    pub(crate) used_memory_human: Option<String>,
}

/// Connection settings, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct RemoteConfig {
    pub(crate) info: ConnectionInfo,
    /// A private CA and/or a client certificate for `rediss://`.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<redis::TlsCertificates>,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) scan_count: usize,
    /// The key space prefix, `{env}:{namespace}:` (for the invalidation generation).
    pub(crate) key_prefix: String,
    /// The generation fields of the configured categories.
    pub(crate) known_fields: BTreeSet<String>,
}

/// The Redis side of a cache, shared (`Arc`) by every clone of the cache and its probe task.
#[derive(Debug)]
pub(crate) struct Remote {
    /// Cheap to clone (an `Arc` inside); each call clones it because commands need `&mut`.
    /// Behind an `ArcSwap` so that recovery can replace it (see [`Remote::reconnect`]) while
    /// calls keep reading it without a lock.
    conn: ArcSwap<ConnectionManager>,
    /// What a replacement connection manager is built from.
    client: Client,
    manager_config: ConnectionManagerConfig,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    scan_count: usize,
    pub(crate) breaker: Breaker,
    counters: Arc<Counters>,
    failure_log: LogLimiter,
    /// `host:port/db` (and user), never the password: safe to log.
    pub(crate) addr: String,
    /// The key space prefix, for the generation fields of keys and patterns.
    key_prefix: String,
    /// The generation fields of the configured categories (others share `*`).
    known_fields: BTreeSet<String>,
    /// The namespace's generation hash (see `generation`).
    generation_key: String,
    /// Stores a loaded value if the generation is still the noted one.
    fill_script: redis::Script,
}

impl Remote {
    /// Creates the connection manager without waiting for a connection; the first command (the
    /// start-up probe) connects. Fails only for settings the driver rejects.
    pub(crate) fn new(config: RemoteConfig, counters: Arc<Counters>) -> Result<Self> {
        let addr = describe(&config.info);
        #[cfg(feature = "tls")]
        let client = match config.tls {
            Some(certs) => Client::build_with_tls(config.info, certs),
            None => Client::open(config.info),
        };
        #[cfg(not(feature = "tls"))]
        let client = Client::open(config.info);
        let client = client.map_err(|e| Error::config("url", e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // Our own per-operation timeout bounds every call; the driver's would only add a
            // second, longer one.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            .map_err(|e| Error::config("url", e.to_string()))?;
        Ok(Self {
            conn: ArcSwap::from_pointee(conn),
            client,
            manager_config,
            op_timeout: config.op_timeout,
            connect_timeout: config.connect_timeout,
            scan_count: config.scan_count,
            // Closed until the start-up probe says otherwise.
            breaker: Breaker::new(config.breaker_threshold, false),
            counters,
            failure_log: LogLimiter::new(Duration::from_secs(5)),
            addr,
            generation_key: generation::hash_key(&config.key_prefix),
            key_prefix: config.key_prefix,
            known_fields: config.known_fields,
            fill_script: redis::Script::new(generation::FILL_SCRIPT),
        })
    }

    /// Runs one Redis call under the breaker and the per-operation timeout.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.breaker.is_closed() {
            self.counters.short_circuit();
            return Err(Error::Unavailable);
        }
        self.call_unguarded(op, self.op_timeout, f).await
    }

    /// Like [`call`](Self::call) but ignores the breaker: for the probe that decides whether to
    /// close it, and for replaying lost invalidations before it closes.
    async fn call_unguarded<T, F, Fut>(&self, op: &'static str, limit: Duration, f: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = ConnectionManager::clone(&self.conn.load());
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(Ok(v)) => {
                self.breaker.record_success();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.counters.error();
                let err = Error::Redis(e);
                self.failed(op, &err);
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

    fn failed(&self, op: &'static str, err: &Error) {
        if let Some(suppressed) = self.failure_log.check() {
            tracing::warn!(op, error = %err, suppressed, addr = %self.addr, "redis call failed; serving without the cache");
        }
        if err.is_unreachable() && self.breaker.record_failure() {
            tracing::warn!(addr = %self.addr, "circuit breaker opened: redis calls paused until it answers again");
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.call("GET", |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// `GET` and `PTTL` in one round trip: the value and how long Redis keeps it, for the
    /// in-process tier, whose copy must not outlive Redis's. The TTL is `Duration::MAX` for a key
    /// without expiry, and `None` if the key expired between the two commands.
    pub(crate) async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>> {
        let (value, ms): (Option<Vec<u8>>, i64) = self
            .call("GET+PTTL", |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(key)
                    .cmd("PTTL")
                    .arg(key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let ttl = match ms {
            -1 => Some(Duration::MAX),
            ms => u64::try_from(ms).ok().map(Duration::from_millis),
        };
        Ok(value.map(|v| (v, ttl)))
    }

    /// `PUBLISH channel payload`. `guarded: false` ignores the breaker (for replays).
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8], guarded: bool) -> Result<()> {
        self.call_maybe_guarded("PUBLISH", guarded, |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .exec_async(&mut c)
                .await
        })
        .await
    }

    /// A dedicated connection subscribed to `channel`, as a stream of message payloads. The
    /// stream ends when the connection is lost. Bounded by the connect timeout.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<impl futures_util::Stream<Item = Vec<u8>> + Send + 'static + use<>> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| Error::Timeout(self.connect_timeout))?
            .map_err(Error::Redis)?;
        Ok(futures_util::StreamExt::map(
            pubsub.into_on_message(),
            |msg| msg.get_payload_bytes().to_vec(),
        ))
    }

    /// `MGET`: one round trip for many keys.
    pub(crate) async fn mget(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.call("MGET", |mut c| async move {
            redis::cmd("MGET").arg(keys).query_async(&mut c).await
        })
        .await
    }

    /// `GET key` and the generation tokens of its category and namespace, in one round trip
    /// (creating the namespace token if it is absent): a load's last look for the key, noting
    /// what its value must be stored against.
    pub(crate) async fn get_noting_generation(
        &self,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Generation)> {
        let field = generation::field(&self.key_prefix, &self.known_fields, key);
        let hash = self.generation_key.as_str();
        let (value, tokens): (Option<Vec<u8>>, redis::Value) = self
            .call("GET (and generation)", |mut c| async move {
                redis::pipe()
                    // A refused HSETNX or HMGET (memory full, ACL) must not cost the GET.
                    .ignore_errors()
                    .cmd("GET")
                    .arg(key)
                    .cmd("HSETNX")
                    .arg(hash)
                    .arg(generation::NAMESPACE_FIELD)
                    .arg(generation::token())
                    .ignore()
                    .cmd("HMGET")
                    .arg(hash)
                    .arg(field)
                    .arg(generation::NAMESPACE_FIELD)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // Without readable tokens no store can be vouched for: `namespace: None`.
        let (category, namespace) =
            redis::from_redis_value::<(Option<String>, Option<String>)>(tokens)
                .unwrap_or((None, None));
        let generation = Generation {
            field: field.to_owned(),
            category: category.unwrap_or_default(),
            namespace,
        };
        Ok((value, generation))
    }

    /// Stores a loaded value (`SET PX`) unless the generation moved since `noted`: one script
    /// call. Returns whether it was stored.
    pub(crate) async fn set_if_generation(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        noted: &Generation,
    ) -> Result<bool> {
        let Some(namespace) = noted.namespace.as_deref() else {
            // The namespace token could not be created (memory full, or no permission): no
            // store can be vouched for.
            return Ok(false);
        };
        let ms = ttl_millis(ttl);
        let stored: i64 = self
            .call("SET (if generation)", |mut c| async move {
                self.fill_script
                    .key(key)
                    .key(self.generation_key.as_str())
                    .arg(noted.field.as_str())
                    .arg(noted.category.as_str())
                    .arg(namespace)
                    .arg(value)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    /// The `HSET` that moves the generation for changes of `targets` (keys or patterns): a fresh
    /// token in each of their fields.
    fn generation_move<'a>(&self, targets: impl Iterator<Item = &'a str>) -> redis::Cmd {
        let mut fields: Vec<&str> = targets
            .map(|t| generation::field(&self.key_prefix, &self.known_fields, t))
            .collect();
        fields.sort_unstable();
        fields.dedup();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.generation_key);
        for field in fields {
            cmd.arg(field).arg(generation::token());
        }
        cmd
    }

    /// Applies `change` (commands that delete or overwrite `targets`) after moving their
    /// generation, in one round trip, and returns the change's replies (server errors among them
    /// are counted and returned as `Err`).
    ///
    /// Should Redis refuse to move the generation (memory full under `noeviction`, or an ACL
    /// without the hash), the change must still not be undone by a load noted before it: the
    /// namespace token is deleted (`HDEL` is allowed when memory is full), which fails the store
    /// of every such load, and `change` is applied once more, in case such a store landed in
    /// between.
    async fn change(
        &self,
        op: &'static str,
        guarded: bool,
        targets: &[&str],
        change: &redis::Pipeline,
    ) -> Result<Vec<redis::Value>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.add_command(self.generation_move(targets.iter().copied()));
        for cmd in change.cmd_iter() {
            pipe.add_command(cmd.clone());
        }
        let pipe = &pipe;
        let mut replies: Vec<redis::Value> = self
            .call_maybe_guarded(op, guarded, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        let moved = if replies.is_empty() {
            redis::Value::Nil
        } else {
            replies.remove(0)
        };
        if let redis::Value::ServerError(refused) = moved {
            tracing::debug!(op, reason = ?refused, "generation not moved; dropping the namespace token instead");
            self.drop_namespace_token(guarded).await?;
            let mut again = change.clone();
            again.ignore_errors();
            let again = &again;
            replies = self
                .call_maybe_guarded(op, guarded, |mut c| async move {
                    again.query_async(&mut c).await
                })
                .await?;
        }
        for reply in &replies {
            if let redis::Value::ServerError(e) = reply {
                let err = Error::Redis(e.clone().into());
                self.counters.error();
                self.failed(op, &err);
                return Err(err);
            }
        }
        Ok(replies)
    }

    /// `HDEL` of the namespace token: no load noted before can store any more.
    async fn drop_namespace_token(&self, guarded: bool) -> Result<()> {
        let hash = self.generation_key.as_str();
        self.call_maybe_guarded("HDEL", guarded, |mut c| async move {
            redis::cmd("HDEL")
                .arg(hash)
                .arg(generation::NAMESPACE_FIELD)
                .exec_async(&mut c)
                .await
        })
        .await
    }

    /// An overwrite: moves the generation, then `SET key value PX ttl` (value and expiry in one
    /// command, never a separate EXPIRE), in one round trip.
    pub(crate) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let mut change = redis::pipe();
        change
            .cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_millis(ttl));
        self.change("SET", true, &[key], &change).await.map(drop)
    }

    /// Many overwrites: the generation, then every `SET PX`, in one pipeline.
    pub(crate) async fn set_many(&self, entries: &[(&str, Vec<u8>, Duration)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut change = redis::pipe();
        for (key, value, ttl) in entries {
            change
                .cmd("SET")
                .arg(*key)
                .arg(value.as_slice())
                .arg("PX")
                .arg(ttl_millis(*ttl));
        }
        let keys: Vec<&str> = entries.iter().map(|(key, _, _)| *key).collect();
        self.change("SET (pipeline)", true, &keys, &change)
            .await
            .map(drop)
    }

    /// `UNLINK`: returns how many of `keys` existed. `guarded: false` ignores the breaker.
    /// For deleting undecodable values and sweeping pages; invalidations use
    /// [`invalidate_keys`](Self::invalidate_keys).
    pub(crate) async fn unlink<K: ToRedisArgs + Sync>(
        &self,
        keys: &[K],
        guarded: bool,
    ) -> Result<u64> {
        self.call_maybe_guarded("UNLINK", guarded, |mut c| async move {
            redis::cmd("UNLINK").arg(keys).query_async(&mut c).await
        })
        .await
    }

    /// An invalidation of `keys`: moves the generation, then `UNLINK`s them, in one round trip.
    /// Returns how many existed. `guarded: false` ignores the breaker (for replays).
    pub(crate) async fn invalidate_keys(&self, keys: &[&str], guarded: bool) -> Result<u64> {
        let mut change = redis::pipe();
        change.cmd("UNLINK").arg(keys);
        let replies = self.change("UNLINK", guarded, keys, &change).await?;
        let reply = replies.into_iter().next().unwrap_or(redis::Value::Nil);
        redis::from_redis_value(reply).map_err(|e| Error::Redis(e.into()))
    }

    /// Moves the generation alone, before a sweep (which cannot be repeated cheaply): if Redis
    /// refuses, the namespace token is dropped first instead.
    async fn advance_generation(&self, pattern: &Pattern, guarded: bool) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.add_command(self.generation_move(std::iter::once(pattern.as_str())));
        let pipe = &pipe;
        let (reply,): (redis::Value,) = self
            .call_maybe_guarded("HSET", guarded, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        if let redis::Value::ServerError(refused) = reply {
            tracing::debug!(reason = ?refused, "generation not moved; dropping the namespace token instead");
            self.drop_namespace_token(guarded).await?;
        }
        Ok(())
    }

    /// Whether the generation hash can be written: `Err` (with Redis's reason) if, say, the ACL
    /// lacks it, in which case no loaded value can be stored.
    pub(crate) async fn check_generation(&self) -> Result<()> {
        let hash = self.generation_key.as_str();
        self.call_unguarded("HSETNX", self.connect_timeout, |mut c| async move {
            redis::cmd("HSETNX")
                .arg(hash)
                .arg(generation::NAMESPACE_FIELD)
                .arg(generation::token())
                .exec_async(&mut c)
                .await
        })
        .await
    }

    /// [`call`](Self::call), or with `guarded: false` [`call_unguarded`](Self::call_unguarded)
    /// with the connect timeout.
    async fn call_maybe_guarded<T, F, Fut>(
        &self,
        op: &'static str,
        guarded: bool,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if guarded {
            self.call(op, f).await
        } else {
            self.call_unguarded(op, self.connect_timeout, f).await
        }
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        self.call("EXISTS", |mut c| async move {
            redis::cmd("EXISTS").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// Remaining TTL; `None` if the key is absent or never expires.
    pub(crate) async fn pttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms: i64 = self
            .call("PTTL", |mut c| async move {
                redis::cmd("PTTL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    /// Size in bytes of the value at `key` (`STRLEN`); 0 if absent.
    pub(crate) async fn strlen(&self, key: &str) -> Result<u64> {
        self.call("STRLEN", |mut c| async move {
            redis::cmd("STRLEN").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// One `SCAN cursor MATCH pattern COUNT n` page.
    async fn scan_page(
        &self,
        cursor: u64,
        pattern: &Pattern,
        guarded: bool,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let count = self.scan_count;
        let f = |mut c: ConnectionManager| async move {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern.as_str())
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await
        };
        self.call_maybe_guarded("SCAN", guarded, f).await
    }

    /// An invalidation by pattern: moves the generation (first, so that a load noted before
    /// cannot store behind the sweep), then deletes every key matching `pattern`: SCAN with
    /// COUNT, then UNLINK each page's keys (never KEYS, which blocks Redis). Returns how many
    /// keys were removed. `guarded: false` ignores the breaker (for replays during recovery).
    pub(crate) async fn unlink_matching(&self, pattern: &Pattern, guarded: bool) -> Result<u64> {
        self.advance_generation(pattern, guarded).await?;
        let mut cursor = 0;
        let mut removed = 0;
        loop {
            let (next, keys) = self.scan_page(cursor, pattern, guarded).await?;
            if !keys.is_empty() {
                // Keys stay bytes: a foreign key that is not UTF-8 must not stop the sweep.
                removed += self.unlink(&keys, guarded).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Keys matching `pattern`, up to `limit`, without duplicates (SCAN may repeat a key).
    pub(crate) async fn scan_keys(&self, pattern: &Pattern, limit: usize) -> Result<Vec<String>> {
        let mut cursor = 0;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        loop {
            let (next, keys) = self.scan_page(cursor, pattern, true).await?;
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
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// How many keys match `pattern`, counted with SCAN so Redis is never blocked. SCAN may
    /// return a key twice while Redis rehashes, so during a rehash the count can be slightly high.
    pub(crate) async fn count_matching(&self, pattern: &Pattern) -> Result<u64> {
        let mut cursor = 0;
        let mut count = 0;
        loop {
            let (next, keys) = self.scan_page(cursor, pattern, true).await?;
            count += keys.len() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }

    /// `INFO memory` and `INFO stats`, parsed for the fields the stats report.
    pub(crate) async fn info(&self) -> Result<ServerInfo> {
        let text: String = self
            .call("INFO", |mut c| async move {
                redis::cmd("INFO")
                    .arg("memory")
                    .arg("stats")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(parse_info(&text))
    }

    /// Replaces the connection manager with a new one that connects afresh.
    ///
    /// The manager reconnects by itself only when its connection *fails*. A connection whose
    /// peer vanished without a reset (a network partition, a moved VIP, a failover) just stops
    /// answering until TCP gives up, which takes many minutes; recovery calls this after
    /// repeated probe timeouts. Calls in flight finish on the old connection.
    pub(crate) fn reconnect(&self) -> Result<()> {
        let fresh = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.manager_config.clone(),
        )
        .map_err(Error::Redis)?;
        self.conn.store(Arc::new(fresh));
        Ok(())
    }

    /// PING through the breaker, returning the round-trip time.
    pub(crate) async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        self.call("PING", |mut c| async move {
            redis::cmd("PING").exec_async(&mut c).await
        })
        .await?;
        Ok(start.elapsed())
    }

    /// PING that ignores the breaker and may take up to the connect timeout (it may have to
    /// reconnect): used at start-up and by the recovery probe.
    pub(crate) async fn probe(&self) -> Result<Duration> {
        let start = Instant::now();
        self.call_unguarded("PING", self.connect_timeout, |mut c| async move {
            redis::cmd("PING").exec_async(&mut c).await
        })
        .await?;
        Ok(start.elapsed())
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `host:port/db`, with the user name if there is one; never the password.
fn describe(info: &ConnectionInfo) -> String {
    let redis = info.redis_settings();
    match redis.username() {
        Some(user) => format!("{user}@{}/{}", info.addr(), redis.db()),
        None => format!("{}/{}", info.addr(), redis.db()),
    }
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
        let text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n# Stats\r\nevicted_keys:7\r\n";
        assert_eq!(
            parse_info(text),
            ServerInfo {
                evicted_keys: Some(7),
                used_memory: Some(1_048_576),
                used_memory_human: Some("1.00M".into()),
            }
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
}
