//! Redis's memory, kept in check: the start-up check of its `maxmemory` settings, and the
//! per-value size limit.
//!
//! A cache lives or dies by eviction. Redis without a `maxmemory` grows until the machine runs
//! out (and the kernel kills it); Redis under `noeviction` refuses every write once full. So at
//! start-up the cache reads `INFO memory` (once, when it first connects: at start-up, or when
//! Redis first answers if it was away then; an ACL user without `info` skips the check quietly) and warns once, naming the setting and its fix, when:
//! - `maxmemory` is 0 (no limit), or
//! - `maxmemory-policy` is `noeviction` (writes are refused at the limit: the cache then stores
//!   nothing new, counted as `oom_write_failures`, and keeps serving what it holds).
//!
//! Every key the cache writes carries a TTL: values and load leases (`SET ... PX`), and tag
//! versions (`SET ... NX PX`, kept alive with `PEXPIRE ... GT`). Invalidations only remove keys
//! and the channel uses pub/sub, which stores nothing. So the `volatile-*` policies, which
//! evict only keys with a TTL, can evict all of ours, and they are not warned about. (Under a
//! `volatile-*` policy, keys *without* a TTL written by other applications sharing the Redis
//! are never evicted; if they fill it, Redis refuses writes as under `noeviction`.)
//!
//! The size limit ([`DEFAULT_MAX_VALUE_BYTES`], `CacheBuilder::max_value_bytes`) is measured on
//! the encoded envelope, after compression: what Redis would hold. A larger value is stored
//! nowhere, neither in Redis nor in the in-process tier (whose copies are only ever fills of
//! what Redis accepted, and whose byte budget one huge value would sweep out); an `insert` of
//! one invalidates the key instead, so the older value cannot outlive it. The caller still gets
//! its value. Each is counted (`oversized`), and logged once per key: a bounded set remembers
//! the keys already logged, and once it is full new keys are logged at most once a minute.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::log_limiter::LogLimiter;
use crate::remote::{Remote, ServerInfo};
use crate::stats::Counters;

/// Default largest encoded value stored (after compression): 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// How many oversized keys are remembered as already logged.
const LOGGED_KEYS: usize = 1024;

/// What is wrong with Redis's memory settings, for a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// `maxmemory` is 0: Redis grows without bound and never evicts.
    NoLimit { policy: Option<String> },
    /// `maxmemory-policy` is `noeviction`: at the limit, writes are refused.
    NoEviction { maxmemory: u64 },
}

/// Judges the settings read from `INFO memory`; `None` when they suit a cache (or are unknown).
pub(crate) fn judge(info: &ServerInfo) -> Option<Finding> {
    match (info.maxmemory, info.maxmemory_policy.as_deref()) {
        (Some(0), policy) => Some(Finding::NoLimit {
            policy: policy.map(str::to_owned),
        }),
        (Some(maxmemory), Some("noeviction")) => Some(Finding::NoEviction { maxmemory }),
        _ => None,
    }
}

/// Reads Redis's memory settings and warns if they do not suit a cache: on the first call that
/// finds Redis answering, for the life of the cache (a failed read leaves it to the next call).
pub(crate) async fn check_settings(remote: &Remote) {
    if remote.memory_checked.load(Relaxed) {
        return;
    }
    let info = match remote.memory_settings().await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(addr = %remote.addr, error = %e, "cannot read redis's memory settings (INFO memory); not checking them");
            return;
        }
    };
    if remote.memory_checked.swap(true, Relaxed) {
        return;
    }
    match judge(&info) {
        Some(Finding::NoLimit { policy }) => tracing::warn!(
            addr = %remote.addr,
            setting = "maxmemory",
            maxmemory = 0,
            policy = policy.as_deref().unwrap_or("unknown"),
            "redis has no maxmemory: it will grow until the machine runs out of memory and never evicts. Fix: set maxmemory (e.g. `CONFIG SET maxmemory 2gb`, and in redis.conf) with maxmemory-policy allkeys-lru (or volatile-lru: every key the cache writes has a TTL)"
        ),
        Some(Finding::NoEviction { maxmemory }) => tracing::warn!(
            addr = %remote.addr,
            setting = "maxmemory-policy",
            maxmemory,
            policy = "noeviction",
            "redis's maxmemory-policy is noeviction: once it reaches maxmemory it refuses writes, and the cache stops storing values (reads go on). Fix: `CONFIG SET maxmemory-policy allkeys-lru` (or volatile-lru: every key the cache writes has a TTL), and in redis.conf"
        ),
        None => {}
    }
}

/// The per-value size limit, and the memory of which oversized keys were logged.
#[derive(Debug)]
pub(crate) struct ValueLimit {
    max_bytes: usize,
    /// Keys already logged. A std `Mutex`: taken only for an oversized value (rare, and never
    /// across an await), for a set insert.
    logged: Mutex<HashSet<String>>,
    /// For new keys once `logged` is full.
    overflow_log: LogLimiter,
}

impl ValueLimit {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            logged: Mutex::new(HashSet::new()),
            overflow_log: LogLimiter::new(Duration::from_secs(60)),
        }
    }

    /// Whether a value of `len` encoded bytes may be stored under `key`; if not, counts it and
    /// logs it (once per key).
    pub(crate) fn admits(&self, key: &str, len: usize, counters: &Counters) -> bool {
        if len <= self.max_bytes {
            return true;
        }
        counters.oversized();
        let first = {
            let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
            if logged.contains(key) {
                false
            } else if logged.len() < LOGGED_KEYS {
                logged.insert(key.to_owned())
            } else {
                self.overflow_log.check().is_some()
            }
        };
        if first {
            tracing::warn!(
                key,
                bytes = len,
                max_value_bytes = self.max_bytes,
                "value larger than max_value_bytes (encoded, after compression): not cached; the caller gets it from the source every time. Raise max_value_bytes or store less under this key"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(maxmemory: u64, policy: &str) -> ServerInfo {
        ServerInfo {
            maxmemory: Some(maxmemory),
            maxmemory_policy: Some(policy.into()),
            ..ServerInfo::default()
        }
    }

    #[test]
    fn only_no_limit_and_noeviction_are_findings() {
        assert_eq!(
            judge(&info(0, "noeviction")),
            Some(Finding::NoLimit {
                policy: Some("noeviction".into())
            })
        );
        assert_eq!(
            judge(&info(1 << 20, "noeviction")),
            Some(Finding::NoEviction { maxmemory: 1 << 20 })
        );
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert_eq!(judge(&info(1 << 20, policy)), None, "{policy}");
        }
        assert_eq!(judge(&ServerInfo::default()), None);
    }

    #[test]
    fn an_oversized_key_is_counted_each_time_and_logged_once() {
        let counters = Counters::new("t:ns", []);
        let limit = ValueLimit::new(10);
        assert!(limit.admits("k", 10, &counters));
        for _ in 0..3 {
            assert!(!limit.admits("k", 11, &counters));
        }
        assert_eq!(counters.snapshot().oversized, 3);
        assert_eq!(limit.logged.lock().unwrap().len(), 1);
    }
}
