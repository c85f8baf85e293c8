//! Statistics: private atomic counters, and the public snapshot struct read from them.
//!
//! Counting is on the hot path, so counters are relaxed atomics (no lock). Hits, misses and tier
//! hits, counted by every read, are striped over cache lines (one stripe per thread), so that two
//! cores counting at once do not fight over one line. Per-category counters live in a list built
//! once from the TTL table that never changes (a handful of categories: a scan of short names is
//! cheaper than hashing). Categories outside the table share an `other` slot.
//! Every counter is also reported through the `metrics` facade (`tiercache_hits_total{category}`,
//! `tiercache_misses_total{category}`, `tiercache_sets_total`, `tiercache_deletes_total`,
//! `tiercache_errors_total`, `tiercache_timeouts_total`, `tiercache_short_circuits_total`,
//! `tiercache_loader_runs_total`, `tiercache_local_hits_total`, `tiercache_tag_invalidations_total`),
//! so an application that installs a recorder before building the cache gets the same numbers.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

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
    /// Loader runs by `get_with` / `try_get_with`.
    pub loader_runs: u64,
    /// Hits and misses per category.
    pub categories: BTreeMap<String, CategoryStats>,
    /// `evicted_keys` from Redis `INFO stats` (server-wide); `None` when Redis did not answer.
    pub evicted_keys: Option<u64>,
    /// `used_memory` from Redis `INFO memory`, in bytes.
    pub used_memory_bytes: Option<u64>,
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
    misses_metric: metrics::Counter,
}

impl CategoryCounters {
    fn new(label: Cow<'static, str>) -> Self {
        Self {
            hits: Striped::new(),
            local_hits: Striped::new(),
            misses: Striped::new(),
            hits_metric: metrics::counter!("tiercache_hits_total", "category" => label.clone()),
            misses_metric: metrics::counter!("tiercache_misses_total", "category" => label),
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
    fn new(name: &'static str) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric: metrics::counter!(name),
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
    loader_runs: Counted,
    local_hits_metric: metrics::Counter,
    tag_invalidations: Counted,
    /// Fixed at build time: no lock is needed to find a category's counters.
    categories: Vec<(Category, CategoryCounters)>,
    other: CategoryCounters,
}

const OTHER: &str = "other";

impl Counters {
    pub(crate) fn new<'a>(categories: impl IntoIterator<Item = &'a Category>) -> Self {
        Self {
            sets: Counted::new("tiercache_sets_total"),
            deletes: Counted::new("tiercache_deletes_total"),
            errors: Counted::new("tiercache_errors_total"),
            timeouts: Counted::new("tiercache_timeouts_total"),
            short_circuits: Counted::new("tiercache_short_circuits_total"),
            loader_runs: Counted::new("tiercache_loader_runs_total"),
            local_hits_metric: metrics::counter!("tiercache_local_hits_total"),
            tag_invalidations: Counted::new("tiercache_tag_invalidations_total"),
            categories: categories
                .into_iter()
                .map(|c| (c.clone(), CategoryCounters::new(c.label())))
                .collect(),
            other: CategoryCounters::new(Cow::Borrowed(OTHER)),
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

    /// A hit served by the in-process tier (a hit of its category too).
    pub(crate) fn local_hit(&self, category: &Category) {
        let c = self.category(category);
        c.local_hits.add(1);
        c.hits_metric.increment(1);
        self.local_hits_metric.increment(1);
    }

    pub(crate) fn loader_run(&self) {
        self.loader_runs.add(1);
    }

    pub(crate) fn tag_invalidations(&self, n: u64) {
        self.tag_invalidations.add(n);
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
            loader_runs: self.loader_runs.get(),
            local_hits: self
                .categories
                .iter()
                .map(|(_, c)| c)
                .chain(std::iter::once(&self.other))
                .map(|c| c.local_hits.get())
                .sum(),
            tag_invalidations: self.tag_invalidations.get(),
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
        let c = Counters::new([&SCAN_RESULTS]);
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
        assert_eq!(Counters::new([]).snapshot().hit_rate, 0.0);
    }
}
