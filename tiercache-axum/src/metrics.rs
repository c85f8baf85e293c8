//! `GET /metrics`: the cache's metrics in the Prometheus text exposition format (0.0.4), as a
//! router any axum service merges.
//!
//! tiercache emits its events through the [`metrics`] facade and stays exporter-agnostic; this
//! module picks the exporter for a service that wants Prometheus: `metrics-exporter-prometheus`,
//! from the facade's own project (metrics-rs), built on the same `metrics` 0.24, maintained with
//! it. The alternative, `prometheus-client`, would need every counter registered twice (the
//! facade and its registry). It is used without default features: no HTTP listener or push
//! gateway of its own; the route below renders its handle.
//!
//! ```no_run
//! use axum::Router;
//! use tiercache::Cache;
//! use tiercache_axum::metrics;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // First: handles are registered when a cache is built, and a cache built before the
//! // recorder exists keeps no-op handles.
//! let handle = metrics::install()?;
//! let cache = Cache::builder().namespace("my-service").build().await?;
//! let app: Router = Router::new().merge(metrics::router(handle, cache));
//! # Ok(()) }
//! ```
//!
//! # What is exported
//! Every series carries `namespace="{env}:{namespace}"` (two caches of one process are told
//! apart by it). Events are counted where they happen (the table in tiercache's `stats`
//! module); states are sampled when `/metrics` is scraped, from
//! [`Cache::stats_without_keys`] (one `INFO`, bounded by the cache's operation timeout, so a
//! hung Redis never hangs a scrape; no SCAN):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tiercache_local_entries` | gauge | | entries in the in-process tier |
//! | `tiercache_local_size_bytes` | gauge | | bytes held by the in-process tier |
//! | `tiercache_local_evictions_total` | counter | | entries the in-process tier dropped to stay within its capacity |
//! | `tiercache_local_live` | gauge | | 1 while the in-process tier serves |
//! | `tiercache_breaker_open` | gauge | | redis mode: 1 while the circuit breaker is open (Redis unreachable) |
//! | `tiercache_channel_up` | gauge | | redis mode with a tier: 1 while the invalidation channel's heartbeats come back |
//! | `tiercache_redis_used_memory_bytes` | gauge | | Redis `used_memory` (absent while Redis does not answer) |
//! | `tiercache_redis_maxmemory_bytes` | gauge | | Redis `maxmemory`; 0: no limit |
//! | `tiercache_alert_active` | gauge | `alert` | 1 while the alert is active (see [`crate::alerts`]) |
//!
//! Histograms (`_seconds`) have buckets from 100 µs to 5 s ([`BUCKETS`]).

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tiercache::{Cache, Mode};

/// Upper bounds of the buckets of every `_seconds` histogram: 100 µs to 5 s, about three per
/// decade (a Redis hit takes a few hundred µs, a timeout 50 ms, a slow load seconds).
pub const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder's upkeep runs (it drains histogram samples so that memory stays
/// bounded between scrapes).
const UPKEEP: Duration = Duration::from_secs(5);

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct InstallError(String);

/// Installs the Prometheus recorder as the process's `metrics` recorder and returns its handle.
///
/// Idempotent: the first call installs, later calls return the same handle. Call it before
/// building any cache: a cache registers its metrics handles when it is built, and one built
/// before the recorder keeps no-op handles. Fails if another recorder was installed first.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    /// Serializes first installs: two threads must not both try.
    static INSTALLING: Mutex<()> = Mutex::new(());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let _one = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
        .map_err(|e| InstallError(e.to_string()))?
        .install_recorder()
        .map_err(|e| InstallError(e.to_string()))?;
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| InstallError(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// HELP text of every metric (the recorder keeps it for the exposition).
fn describe() {
    let counters = [
        (
            "tiercache_hits_total",
            "Reads answered by the cache, by tier (local: in process; redis).",
        ),
        (
            "tiercache_misses_total",
            "Reads that found nothing usable in any tier.",
        ),
        (
            "tiercache_loads_total",
            "Loader runs (get_with, try_get_with).",
        ),
        (
            "tiercache_load_errors_total",
            "Loader runs that returned an error.",
        ),
        ("tiercache_sets_total", "Values written."),
        ("tiercache_deletes_total", "Keys removed by invalidations."),
        (
            "tiercache_invalidations_total",
            "Invalidations by kind (key, tag, pattern, clear), made here (origin=own) or heard from another instance (origin=peer).",
        ),
        (
            "tiercache_errors_total",
            "Redis calls that failed (timeouts included) and values that could not be encoded.",
        ),
        (
            "tiercache_timeouts_total",
            "Redis calls that hit the operation timeout.",
        ),
        (
            "tiercache_short_circuits_total",
            "Calls skipped because the circuit breaker was open.",
        ),
        (
            "tiercache_unauthenticated_values_total",
            "Values read from Redis that failed to authenticate (an encrypted category's): read as misses and deleted.",
        ),
        (
            "tiercache_breaker_trips_total",
            "Times the circuit breaker opened.",
        ),
        (
            "tiercache_channel_losses_total",
            "Times the invalidation channel was lost (the in-process tier was dropped each time).",
        ),
        (
            "tiercache_oversized_total",
            "Values not stored because their encoded size (after compression) exceeds max_value_bytes; the caller still got them.",
        ),
        (
            "tiercache_write_failures_total",
            "Writes Redis refused, by reason (oom: at maxmemory under noeviction); the caller still got its value and reads go on.",
        ),
        (
            "tiercache_local_evictions_total",
            "Entries the in-process tier dropped to stay within its capacity.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
    }
    let gauges = [
        (
            "tiercache_local_entries",
            Unit::Count,
            "Entries in the in-process tier.",
        ),
        (
            "tiercache_local_size_bytes",
            Unit::Bytes,
            "Bytes held by the in-process tier.",
        ),
        (
            "tiercache_local_live",
            Unit::Count,
            "1 while the in-process tier serves.",
        ),
        (
            "tiercache_breaker_open",
            Unit::Count,
            "1 while the circuit breaker is open (Redis unreachable; reads go to the source).",
        ),
        (
            "tiercache_channel_up",
            Unit::Count,
            "1 while the invalidation channel's heartbeats come back.",
        ),
        (
            "tiercache_redis_used_memory_bytes",
            Unit::Bytes,
            "Redis used_memory.",
        ),
        (
            "tiercache_redis_maxmemory_bytes",
            Unit::Bytes,
            "Redis maxmemory; 0 means no limit.",
        ),
        (
            "tiercache_alert_active",
            Unit::Count,
            "1 while the named alert is active.",
        ),
    ];
    for (name, unit, help) in gauges {
        describe_gauge!(name, unit, help);
    }
    let histograms = [
        (
            "tiercache_redis_call_duration_seconds",
            "Time of each Redis call (a command, a pipeline or a SCAN page), failures included.",
        ),
        ("tiercache_load_duration_seconds", "Time a loader took."),
        (
            "tiercache_invalidation_lag_seconds",
            "From the publication of another instance's notice to its arrival here (exact on one host; across hosts as good as the clocks' synchronization).",
        ),
    ];
    for (name, help) in histograms {
        describe_histogram!(name, Unit::Seconds, help);
    }
}

/// What the route needs.
#[derive(Clone, Debug)]
struct Scrape {
    handle: PrometheusHandle,
    cache: Cache,
}

/// `GET /metrics` for `cache`, rendered from `handle` (from [`install`]).
pub fn router<S: Clone + Send + Sync + 'static>(
    handle: PrometheusHandle,
    cache: Cache,
) -> Router<S> {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { handle, cache })
}

async fn scrape(State(s): State<Scrape>) -> impl IntoResponse {
    sample(&s.cache).await;
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], s.handle.render())
}

/// Sets the gauges of `cache`'s states (see the module docs).
pub async fn sample(cache: &Cache) {
    let stats = cache.stats_without_keys().await;
    let ns = cache.key_space().label().to_owned();
    if let Some(local) = stats.local {
        ::metrics::gauge!("tiercache_local_entries", "namespace" => ns.clone())
            .set(local.entries as f64);
        ::metrics::gauge!("tiercache_local_size_bytes", "namespace" => ns.clone())
            .set(local.size_bytes as f64);
        ::metrics::gauge!("tiercache_local_live", "namespace" => ns.clone()).set(flag(local.live));
        ::metrics::counter!("tiercache_local_evictions_total", "namespace" => ns.clone())
            .absolute(local.evictions);
    }
    if cache.mode() == Mode::Redis {
        ::metrics::gauge!("tiercache_breaker_open", "namespace" => ns.clone())
            .set(flag(!stats.connected));
        if let Some(local) = stats.local {
            ::metrics::gauge!("tiercache_channel_up", "namespace" => ns.clone())
                .set(flag(local.live));
        }
        if let Some(used) = stats.used_memory_bytes {
            ::metrics::gauge!("tiercache_redis_used_memory_bytes", "namespace" => ns.clone())
                .set(used as f64);
        }
        if let Some(max) = stats.maxmemory_bytes {
            ::metrics::gauge!("tiercache_redis_maxmemory_bytes", "namespace" => ns).set(max as f64);
        }
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}
