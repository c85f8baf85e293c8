//! Statistics: private atomic counters, and the public snapshot struct read from them.
//!
//! Counting is on the hot path, so counters are relaxed atomics (no lock). Hits, misses and tier
//! hits, counted by every read, are striped over cache lines (one stripe per thread), so that two
//! cores counting at once do not fight over one line. Per-category counters live in a list built
//! once from the TTL table that never changes (a handful of categories: a scan of short names is
//! cheaper than hashing). Categories outside the table share an `other` slot.
//!
//! # Metrics
//! Every event is also reported through the `metrics` facade, so that an application that
//! installs a recorder (Prometheus, StatsD, OpenTelemetry: its choice) gets the same numbers.
//! Every series carries `namespace="{env}:{namespace}"`, which tells two caches of one process
//! apart. The events counted here (states such as the tier's size or Redis's memory are sampled
//! by whoever exports them, from [`Cache::stats`](crate::Cache::stats)):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tiercache_hits_total` | counter | `category`, `tier` (`local`, `redis`) | reads answered by the cache, by the tier that answered |
//! | `tiercache_misses_total` | counter | `category` | reads that found nothing usable |
//! | `tiercache_loads_total` | counter | | loader runs (`get_with`, `try_get_with`) |
//! | `tiercache_load_errors_total` | counter | | loader runs that returned an error |
//! | `tiercache_load_duration_seconds` | histogram | | time a loader took |
//! | `tiercache_redis_call_duration_seconds` | histogram | | time of each Redis call (a round trip, a pipeline or a SCAN page), failures and timeouts included |
//! | `tiercache_sets_total` | counter | | values written |
//! | `tiercache_deletes_total` | counter | | keys removed by invalidations |
//! | `tiercache_invalidations_total` | counter | `kind` (`key`, `tag`, `pattern`, `clear`), `origin` (`own`, `peer`) | invalidations made here, or heard from another instance |
//! | `tiercache_errors_total` | counter | | Redis calls that failed (timeouts included), values that could not be encoded |
//! | `tiercache_timeouts_total` | counter | | Redis calls that hit the operation timeout |
//! | `tiercache_unauthenticated_values_total` | counter | | values read from Redis that failed to authenticate (see `encryption`): read as misses and deleted |
//! | `tiercache_short_circuits_total` | counter | | calls skipped because the breaker was open |
//! | `tiercache_breaker_trips_total` | counter | | times the circuit breaker opened |
//! | `tiercache_channel_losses_total` | counter | | times the invalidation channel was lost |
//! | `tiercache_oversized_total` | counter | | values not stored because their encoded size (after compression) exceeds `max_value_bytes` |
//! | `tiercache_write_failures_total` | counter | `reason` (`oom`) | writes Redis refused: `oom` when it is at `maxmemory` and may not evict (`noeviction`); reads go on |
//! | `tiercache_invalidation_lag_seconds` | histogram | | publication to arrival of another instance's notice, on this instance's clock |
//!
//! Handles are registered when the cache is built: a recorder installed after that is not
//! seen by this cache (its handles are no-ops).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::history::InvalidationKind;
use crate::key::Category;

/// A point-in-time view of a cache's statistics, from [`Cache::stats`](crate::Cache::stats).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Reads answered from the cache (the in-process tier or Redis).
    pub hits: u64,
    /// The part of `hits` answered by the in-process tier.
    pub local_hits: u64,
    /// Reads that found nothing usable (absent, undecodable, or Redis unreachable).
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there were no reads.
    pub hit_rate: f64,
    /// Values written.
    pub sets: u64,
    /// Keys removed by invalidation (single keys, patterns and clears).
    pub deletes: u64,
    /// Tags invalidated (each makes every entry carrying it stale, however many).
    pub tag_invalidations: u64,
    /// Redis calls that failed (including timeouts), and values that could not be encoded.
    pub errors: u64,
    /// Redis calls that hit the per-operation timeout.
    pub timeouts: u64,
    /// Calls skipped because the circuit breaker was open.
    pub short_circuits: u64,
    /// Values not stored because, encoded (after compression), they exceed the
    /// [`max_value_bytes`](crate::CacheBuilder::max_value_bytes) limit; the caller still got them.
    pub oversized: u64,
    /// Write calls (a load's lease or fill, an insert's pipeline, a noting of tag versions)
    /// that Redis refused with `OOM` (at `maxmemory` under `noeviction`): nothing was stored,
    /// no caller was failed, the breaker stayed closed. Not counted in `errors`.
    pub oom_write_failures: u64,
    /// Values read from Redis that failed to authenticate (a sensitive category's value that is
    /// not encrypted, under a key this cache does not have, or copied from another key name or
    /// altered): each was a miss, and was deleted.
    pub unauthenticated_values: u64,
    /// Redis calls made (round trips: a command, a pipeline, a SCAN page), failed ones
    /// included: the denominator of an error rate.
    pub redis_calls: u64,
    /// Loader runs by `get_with` / `try_get_with`.
    pub loader_runs: u64,
    /// Hits and misses per category.
    pub categories: BTreeMap<String, CategoryStats>,
    /// `evicted_keys` from Redis `INFO stats` (server-wide); `None` when Redis did not answer.
    pub evicted_keys: Option<u64>,
    /// `used_memory` from Redis `INFO memory`, in bytes.
    pub used_memory_bytes: Option<u64>,
    /// `maxmemory` from Redis `INFO memory`, in bytes: the limit above which Redis evicts (or
    /// refuses writes, by its policy). `Some(0)` means no limit is set (Redis's own way of
    /// saying it); `None` when Redis did not answer.
    pub maxmemory_bytes: Option<u64>,
    /// `maxmemory_policy` from Redis `INFO memory`, such as `allkeys-lru`: what Redis does at
    /// `maxmemory` (`noeviction` refuses writes).
    pub maxmemory_policy: Option<String>,
    /// `used_memory_human` from Redis `INFO memory`, such as `1.05M`.
    pub used_memory_human: Option<String>,
    /// Keys in this cache's namespace, counted with SCAN (never blocks Redis).
    pub keys: Option<u64>,
    /// Whether Redis is being used (the circuit breaker is closed).
    pub connected: bool,
    /// How the cache stores values: `redis`, `standalone` or `disabled` (see
    /// [`Mode`](crate::Mode)).
    pub mode: &'static str,
    /// The in-process tier: `None` when the cache has none.
    pub local: Option<LocalStats>,
    /// Time since the cache was built (serialized as seconds).
    #[serde(serialize_with = "as_secs")]
    pub uptime: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The in-process tier's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LocalStats {
    /// Whether it serves now: standalone always; in front of Redis, while its heartbeats come
    /// back through the invalidation channel within the lease.
    pub live: bool,
    /// Entries held (approximate: the tier applies writes in batches).
    pub entries: u64,
    /// Bytes held (keys and encoded values).
    pub size_bytes: u64,
    /// Entries dropped to stay within the capacity.
    pub evictions: u64,
    /// Times the lease lapsed (no heartbeat back in time) and the tier was dropped.
    pub lapses: u64,
    /// Times the invalidation channel was lost (each time the tier was dropped).
    pub channel_losses: u64,
}

/// Hits and misses of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CategoryStats {
    /// Reads answered from Redis.
    pub hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
}

/// Stripes of a hot counter.
const STRIPES: usize = 8;

/// One cache line of a striped counter.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A counter spread over [`STRIPES`] cache lines; each thread adds to its own.
#[derive(Debug)]
struct Striped {
    stripes: [Stripe; STRIPES],
}

impl Striped {
    fn new() -> Self {
        Self {
            stripes: Default::default(),
        }
    }

    fn add(&self, n: u64) {
        thread_local! {
            /// This thread's stripe, handed out round robin.
            static STRIPE: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed) % STRIPES
            };
        }
        let i = STRIPE.with(|i| *i);
        self.stripes[i].0.fetch_add(n, Relaxed);
    }

    fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// Hit and miss counters of one category, with their pre-registered metrics handles.
#[derive(Debug)]
struct CategoryCounters {
    /// Hits served by Redis.
    hits: Striped,
    /// Hits served by the in-process tier (one add per tier hit, not two).
    local_hits: Striped,
    misses: Striped,
    hits_metric: metrics::Counter,
    local_hits_metric: metrics::Counter,
    misses_metric: metrics::Counter,
}

impl CategoryCounters {
    fn new(namespace: &str, label: Cow<'static, str>) -> Self {
        let ns = namespace.to_owned();
        Self {
            hits: Striped::new(),
            local_hits: Striped::new(),
            misses: Striped::new(),
            hits_metric: metrics::counter!("tiercache_hits_total", "namespace" => ns.clone(), "category" => label.clone(), "tier" => "redis"),
            local_hits_metric: metrics::counter!("tiercache_hits_total", "namespace" => ns.clone(), "category" => label.clone(), "tier" => "local"),
            misses_metric: metrics::counter!("tiercache_misses_total", "namespace" => ns, "category" => label),
        }
    }

    fn read(&self) -> CategoryStats {
        CategoryStats {
            hits: self.hits.get() + self.local_hits.get(),
            misses: self.misses.get(),
        }
    }
}

/// A counter and its metrics handle.
#[derive(Debug)]
struct Counted {
    value: AtomicU64,
    metric: metrics::Counter,
}

impl Counted {
    fn new(name: &'static str, namespace: &str) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric: metrics::counter!(name, "namespace" => namespace.to_owned()),
        }
    }

    /// A counter whose metric also carries `reason`.
    fn with_reason(name: &'static str, namespace: &str, reason: &'static str) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric: metrics::counter!(name, "namespace" => namespace.to_owned(), "reason" => reason),
        }
    }

    fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
        self.metric.increment(n);
    }

    fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

/// The live counters behind [`Stats`].
///
/// Metrics handles are registered when the cache is built, so a recorder (Prometheus, StatsD)
/// must be installed before that; the hot path then pays one atomic add per counter and no
/// lookup. Totals of hits and misses are summed from the categories at snapshot time, so a hit
/// costs a single contended atomic.
#[derive(Debug)]
pub(crate) struct Counters {
    sets: Counted,
    deletes: Counted,
    errors: Counted,
    timeouts: Counted,
    short_circuits: Counted,
    unauthenticated_values: Counted,
    loader_runs: Counted,
    oversized: Counted,
    oom_write_failures: Counted,
    tag_invalidations: AtomicU64,
    /// One add per Redis call (a round trip costs microseconds; one line is no contention).
    redis_calls: AtomicU64,
    /// Fixed at build time: no lock is needed to find a category's counters.
    categories: Vec<(Category, CategoryCounters)>,
    other: CategoryCounters,
    /// Handles of the events that have no [`Stats`] field.
    metrics: Metrics,
}

/// Metrics handles of events counted nowhere else.
#[derive(Debug)]
struct Metrics {
    load_errors: metrics::Counter,
    load_duration: metrics::Histogram,
    redis_call: metrics::Histogram,
    breaker_trips: metrics::Counter,
    channel_losses: metrics::Counter,
    propagation_lag: metrics::Histogram,
    /// By kind (in [`InvalidationKind`] order) and origin (own, peer).
    invalidations: [[metrics::Counter; 2]; 4],
}

const KINDS: [InvalidationKind; 4] = [
    InvalidationKind::Key,
    InvalidationKind::Tag,
    InvalidationKind::Pattern,
    InvalidationKind::Clear,
];

impl Metrics {
    fn new(namespace: &str) -> Self {
        let ns = || namespace.to_owned();
        Self {
            load_errors: metrics::counter!("tiercache_load_errors_total", "namespace" => ns()),
            load_duration: metrics::histogram!("tiercache_load_duration_seconds", "namespace" => ns()),
            redis_call: metrics::histogram!("tiercache_redis_call_duration_seconds", "namespace" => ns()),
            breaker_trips: metrics::counter!("tiercache_breaker_trips_total", "namespace" => ns()),
            channel_losses: metrics::counter!("tiercache_channel_losses_total", "namespace" => ns()),
            propagation_lag: metrics::histogram!("tiercache_invalidation_lag_seconds", "namespace" => ns()),
            invalidations: KINDS.map(|kind| {
                ["own", "peer"].map(|origin| {
                    metrics::counter!("tiercache_invalidations_total", "namespace" => ns(), "kind" => kind.as_str(), "origin" => origin)
                })
            }),
        }
    }
}

const OTHER: &str = "other";

impl Counters {
    /// Counters of the cache whose metrics carry `namespace` (`{env}:{namespace}`).
    pub(crate) fn new<'a>(
        namespace: &str,
        categories: impl IntoIterator<Item = &'a Category>,
    ) -> Self {
        Self {
            sets: Counted::new("tiercache_sets_total", namespace),
            deletes: Counted::new("tiercache_deletes_total", namespace),
            errors: Counted::new("tiercache_errors_total", namespace),
            timeouts: Counted::new("tiercache_timeouts_total", namespace),
            short_circuits: Counted::new("tiercache_short_circuits_total", namespace),
            unauthenticated_values: Counted::new(
                "tiercache_unauthenticated_values_total",
                namespace,
            ),
            loader_runs: Counted::new("tiercache_loads_total", namespace),
            oversized: Counted::new("tiercache_oversized_total", namespace),
            oom_write_failures: Counted::with_reason(
                "tiercache_write_failures_total",
                namespace,
                "oom",
            ),
            tag_invalidations: AtomicU64::new(0),
            redis_calls: AtomicU64::new(0),
            categories: categories
                .into_iter()
                .map(|c| (c.clone(), CategoryCounters::new(namespace, c.label())))
                .collect(),
            other: CategoryCounters::new(namespace, Cow::Borrowed(OTHER)),
            metrics: Metrics::new(namespace),
        }
    }

    fn category(&self, category: &Category) -> &CategoryCounters {
        let name = category.name();
        self.categories
            .iter()
            // Categories made from one static name share its pointer: no compare needed.
            .find(|(c, _)| std::ptr::eq(c.name(), name) || c.name() == name)
            .map_or(&self.other, |(_, counters)| counters)
    }

    pub(crate) fn hit(&self, category: &Category) {
        let c = self.category(category);
        c.hits.add(1);
        c.hits_metric.increment(1);
    }

    pub(crate) fn miss(&self, category: &Category) {
        let c = self.category(category);
        c.misses.add(1);
        c.misses_metric.increment(1);
    }

    pub(crate) fn sets(&self, n: u64) {
        self.sets.add(n);
    }

    pub(crate) fn deletes(&self, n: u64) {
        self.deletes.add(n);
    }

    pub(crate) fn error(&self) {
        self.errors.add(1);
    }

    pub(crate) fn timeout(&self) {
        self.timeouts.add(1);
        self.error();
    }

    pub(crate) fn short_circuit(&self) {
        self.short_circuits.add(1);
    }

    /// A value too large to store.
    pub(crate) fn oversized(&self) {
        self.oversized.add(1);
    }

    /// A write Redis refused with `OOM`.
    pub(crate) fn oom_write_failure(&self) {
        self.oom_write_failures.add(1);
    }

    /// A value read from Redis failed to authenticate.
    pub(crate) fn unauthenticated_value(&self) {
        self.unauthenticated_values.add(1);
    }

    /// A hit served by the in-process tier (a hit of its category too).
    pub(crate) fn local_hit(&self, category: &Category) {
        let c = self.category(category);
        c.local_hits.add(1);
        c.local_hits_metric.increment(1);
    }

    pub(crate) fn loader_run(&self) {
        self.loader_runs.add(1);
    }

    /// A loader finished after `took`, with an error or not.
    pub(crate) fn loaded(&self, took: Duration, failed: bool) {
        self.metrics.load_duration.record(took.as_secs_f64());
        if failed {
            self.metrics.load_errors.increment(1);
        }
    }

    /// A Redis call took `took` (whatever its outcome).
    pub(crate) fn redis_call(&self, took: Duration) {
        self.redis_calls.fetch_add(1, Relaxed);
        self.metrics.redis_call.record(took.as_secs_f64());
    }

    pub(crate) fn breaker_trip(&self) {
        self.metrics.breaker_trips.increment(1);
    }

    pub(crate) fn channel_loss(&self) {
        self.metrics.channel_losses.increment(1);
    }

    /// Another instance's notice arrived `lag` after it was published.
    pub(crate) fn propagation_lag(&self, lag: Duration) {
        self.metrics.propagation_lag.record(lag.as_secs_f64());
    }

    /// An invalidation, made here (`own`) or heard of.
    pub(crate) fn invalidation(&self, kind: InvalidationKind, own: bool) {
        // In `KINDS` order; a match, so that a new kind cannot be counted as another.
        let i = match kind {
            InvalidationKind::Key => 0,
            InvalidationKind::Tag => 1,
            InvalidationKind::Pattern => 2,
            InvalidationKind::Clear => 3,
        };
        self.metrics.invalidations[i][usize::from(!own)].increment(1);
    }

    pub(crate) fn tag_invalidations(&self, n: u64) {
        self.tag_invalidations.fetch_add(n, Relaxed);
    }

    /// The counter part of a snapshot; the caller fills in what comes from Redis.
    pub(crate) fn snapshot(&self) -> Stats {
        let mut categories: BTreeMap<String, CategoryStats> = self
            .categories
            .iter()
            .map(|(k, c)| (k.name().to_owned(), c.read()))
            .collect();
        let other = self.other.read();
        if other != CategoryStats::default() {
            categories.insert(OTHER.to_owned(), other);
        }
        let hits = categories.values().map(|c| c.hits).sum::<u64>();
        let misses = categories.values().map(|c| c.misses).sum::<u64>();
        Stats {
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            sets: self.sets.get(),
            deletes: self.deletes.get(),
            errors: self.errors.get(),
            timeouts: self.timeouts.get(),
            short_circuits: self.short_circuits.get(),
            oversized: self.oversized.get(),
            oom_write_failures: self.oom_write_failures.get(),
            unauthenticated_values: self.unauthenticated_values.get(),
            loader_runs: self.loader_runs.get(),
            local_hits: self
                .categories
                .iter()
                .map(|(_, c)| c)
                .chain(std::iter::once(&self.other))
                .map(|c| c.local_hits.get())
                .sum(),
            tag_invalidations: self.tag_invalidations.load(Relaxed),
            redis_calls: self.redis_calls.load(Relaxed),
            categories,
            ..Stats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCAN_RESULTS: Category = Category::from_static("scan_results");

    #[test]
    fn snapshot_reflects_counts_and_rate() {
        let c = Counters::new("t:ns", [&SCAN_RESULTS]);
        c.hit(&SCAN_RESULTS);
        c.hit(&SCAN_RESULTS);
        c.miss(&SCAN_RESULTS);
        c.miss(&Category::new("adhoc"));
        c.timeout();
        let s = c.snapshot();
        assert_eq!((s.hits, s.misses, s.errors, s.timeouts), (2, 2, 1, 1));
        assert!((s.hit_rate - 0.5).abs() < f64::EPSILON);
        assert_eq!(
            s.categories["scan_results"],
            CategoryStats { hits: 2, misses: 1 }
        );
        assert_eq!(s.categories["other"], CategoryStats { hits: 0, misses: 1 });
        assert_eq!(Counters::new("t:ns", []).snapshot().hit_rate, 0.0);
    }
}
