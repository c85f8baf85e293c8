//! Alerts: conditions on a cache's statistics that an operator must hear of before they hurt,
//! evaluated inside the service.
//!
//! [`Alerts::spawn`] starts an evaluator task that samples
//! [`Cache::stats_without_keys`] every [`AlertConfig::interval`] (default 5 s; one `INFO`,
//! bounded by the cache's operation timeout) and judges four conditions:
//!
//! | alert | active while | default |
//! |---|---|---|
//! | `redis_memory_high` | Redis `used_memory / maxmemory` is above the ratio (never when `maxmemory` is 0: no limit) | 0.8 |
//! | `hit_ratio_low` | hits / reads over the window is below the minimum, once the window saw `min_reads` reads | 0.6 over 5 min, 100 reads |
//! | `error_rate_high` | failed Redis calls / Redis calls over the window is above the maximum, once the window saw `min_calls` calls | 0.01 over 5 min, 100 calls |
//! | `redis_disconnected` | Redis mode only: the circuit breaker is open (Redis unreachable, reads go to the source) | |
//!
//! An alert is logged once when it starts (`WARN`) and once when it clears (`INFO`), with the
//! fields `alert`, `namespace`, `value` and `threshold`; it is listed by
//! [`Alerts::active`] (and so by `GET /api/cache/health`, see [`crate::admin`]) and exported
//! as the gauge `tiercache_alert_active{namespace, alert}` (1 active, 0 not) through the
//! `metrics` facade. The window is a list of samples, one per evaluation, no older than the
//! window: rates are the difference between the newest and the oldest, so the cost is fixed
//! whatever the traffic.
//!
//! `deploy/prometheus/alerts.yml` holds Prometheus alerting rules for the same four conditions
//! over the exported metrics, for a Prometheus that watches many instances.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;
use tiercache::{Cache, Mode, Stats};

/// `redis_memory_high`.
pub const REDIS_MEMORY_HIGH: &str = "redis_memory_high";
/// `hit_ratio_low`.
pub const HIT_RATIO_LOW: &str = "hit_ratio_low";
/// `error_rate_high`.
pub const ERROR_RATE_HIGH: &str = "error_rate_high";
/// `redis_disconnected`.
pub const REDIS_DISCONNECTED: &str = "redis_disconnected";

/// Every alert's name.
pub const ALERTS: [&str; 4] = [
    REDIS_MEMORY_HIGH,
    HIT_RATIO_LOW,
    ERROR_RATE_HIGH,
    REDIS_DISCONNECTED,
];

/// Thresholds and timing of the evaluator. The defaults are those of the design the cache
/// serves; every setter is a bare name, as on [`tiercache::CacheBuilder`].
///
/// ```
/// use std::time::Duration;
/// use tiercache_axum::alerts::AlertConfig;
///
/// let config = AlertConfig::default()
///     .interval(Duration::from_secs(5))
///     .window(Duration::from_secs(300))
///     .memory_ratio(0.8)
///     .hit_ratio_min(0.6)
///     .min_reads(100)
///     .error_rate_max(0.01)
///     .min_calls(100);
/// # let _ = config;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AlertConfig {
    interval: Duration,
    window: Duration,
    memory_ratio: f64,
    hit_ratio_min: f64,
    min_reads: u64,
    error_rate_max: f64,
    min_calls: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            window: Duration::from_secs(300),
            memory_ratio: 0.8,
            hit_ratio_min: 0.6,
            min_reads: 100,
            error_rate_max: 0.01,
            min_calls: 100,
        }
    }
}

impl AlertConfig {
    /// How often the conditions are evaluated (default 5 s).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The window of the hit ratio and the error rate (default 5 min).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// `redis_memory_high` above this share of `maxmemory` (default 0.8).
    #[must_use]
    pub fn memory_ratio(mut self, ratio: f64) -> Self {
        self.memory_ratio = ratio;
        self
    }

    /// `hit_ratio_low` below this hit ratio over the window (default 0.6).
    #[must_use]
    pub fn hit_ratio_min(mut self, ratio: f64) -> Self {
        self.hit_ratio_min = ratio;
        self
    }

    /// Reads the window must have seen before its hit ratio is judged (default 100): a few
    /// misses after a start or a clear are no alert.
    #[must_use]
    pub fn min_reads(mut self, n: u64) -> Self {
        self.min_reads = n;
        self
    }

    /// `error_rate_high` above this share of failed Redis calls over the window (default 0.01).
    #[must_use]
    pub fn error_rate_max(mut self, ratio: f64) -> Self {
        self.error_rate_max = ratio;
        self
    }

    /// Redis calls the window must have seen before its error rate is judged (default 100).
    #[must_use]
    pub fn min_calls(mut self, n: u64) -> Self {
        self.min_calls = n;
        self
    }

    /// Checks the settings ([`Alerts::spawn`] does too): durations above zero, ratios from 0
    /// to 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (setting, d) in [("interval", self.interval), ("window", self.window)] {
            if d.is_zero() {
                return Err(ConfigError {
                    setting,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        for (setting, r) in [
            ("memory_ratio", self.memory_ratio),
            ("hit_ratio_min", self.hit_ratio_min),
            ("error_rate_max", self.error_rate_max),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(ConfigError {
                    setting,
                    reason: format!("{r} is not a ratio from 0 to 1"),
                });
            }
        }
        Ok(())
    }
}

/// An [`AlertConfig`] setting out of range.
#[derive(Debug, thiserror::Error)]
#[error("alert setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting's name.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// An active alert.
///
/// Serialized as `{"name", "since_unix_ms", "value", "threshold", "message"}`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ActiveAlert {
    /// One of [`ALERTS`].
    pub name: &'static str,
    /// When it started.
    pub since: SystemTime,
    /// The figure measured at the last evaluation (a ratio; 1 for `redis_disconnected`).
    pub value: f64,
    /// The threshold it crossed (0 for `redis_disconnected`).
    pub threshold: f64,
    /// What it means, for a person.
    pub message: String,
}

impl serde::Serialize for ActiveAlert {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let since = self
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut st = s.serialize_struct("ActiveAlert", 5)?;
        st.serialize_field("name", self.name)?;
        st.serialize_field("since_unix_ms", &since)?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("threshold", &self.threshold)?;
        st.serialize_field("message", &self.message)?;
        st.end()
    }
}

/// A handle to a running evaluator: its active alerts. Cheap to clone; the task stops when the
/// last clone drops.
#[derive(Clone, Debug)]
pub struct Alerts {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Written by the evaluator once per interval, read by health checks. A std lock: held to
    /// copy a few entries, never across an `.await`.
    active: Arc<Mutex<BTreeMap<&'static str, ActiveAlert>>>,
    /// Evaluations completed, so that a caller can wait for the next one.
    evaluations: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Alerts {
    /// Starts evaluating `config`'s conditions on `cache` (on the current tokio runtime).
    pub fn spawn(cache: Cache, config: AlertConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let active = Arc::new(Mutex::new(BTreeMap::new()));
        let evaluations = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(evaluate_forever(
            cache,
            config,
            active.clone(),
            evaluations.clone(),
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                active,
                evaluations,
                task,
            }),
        })
    }

    /// How many evaluations have completed (for a caller that waits for the next one, such as a
    /// test that checks an alert did *not* start).
    pub fn evaluations(&self) -> u64 {
        self.shared.evaluations.load(Ordering::Acquire)
    }

    /// The alerts active at the last evaluation, by name.
    pub fn active(&self) -> Vec<ActiveAlert> {
        let active = self
            .shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        active.values().cloned().collect()
    }
}

/// The counters one evaluation keeps for the window.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    reads: u64,
    hits: u64,
    calls: u64,
    errors: u64,
}

impl Sample {
    fn of(stats: &Stats, at: Instant) -> Self {
        Self {
            at,
            reads: stats.hits + stats.misses,
            hits: stats.hits,
            calls: stats.redis_calls,
            errors: stats.errors,
        }
    }
}

/// A condition that holds: its figure, threshold and message.
#[derive(Debug, PartialEq)]
struct Finding {
    value: f64,
    threshold: f64,
    message: String,
}

/// Judges every alert on `stats`, the window running from `oldest` to `now`. Pure: tested
/// below.
fn judge(
    config: &AlertConfig,
    mode: Mode,
    stats: &Stats,
    oldest: &Sample,
    now: &Sample,
) -> [(&'static str, Option<Finding>); 4] {
    let memory = match (stats.used_memory_bytes, stats.maxmemory_bytes) {
        (Some(used), Some(max)) if max > 0 => {
            let ratio = used as f64 / max as f64;
            (ratio > config.memory_ratio).then(|| Finding {
                value: ratio,
                threshold: config.memory_ratio,
                message: format!(
                    "redis uses {:.0}% of its maxmemory ({used} of {max} bytes): it will soon evict or refuse writes",
                    ratio * 100.0
                ),
            })
        }
        _ => None,
    };
    let reads = now.reads.saturating_sub(oldest.reads);
    // A disabled cache misses every read by design: no alert for it.
    let hit_ratio = (mode != Mode::Disabled && reads >= config.min_reads.max(1)).then(|| {
        let ratio = now.hits.saturating_sub(oldest.hits) as f64 / reads as f64;
        (ratio < config.hit_ratio_min).then(|| Finding {
            value: ratio,
            threshold: config.hit_ratio_min,
            message: format!(
                "hit ratio {:.0}% over the last {} s ({reads} reads): most reads reach the database",
                ratio * 100.0,
                now.at.duration_since(oldest.at).as_secs()
            ),
        })
    });
    let calls = now.calls.saturating_sub(oldest.calls);
    let error_rate = (calls >= config.min_calls.max(1)).then(|| {
        let errors = now.errors.saturating_sub(oldest.errors);
        let rate = errors as f64 / calls as f64;
        (rate > config.error_rate_max).then(|| Finding {
            value: rate,
            threshold: config.error_rate_max,
            message: format!(
                "{errors} of {calls} redis calls failed over the last {} s ({:.1}%)",
                now.at.duration_since(oldest.at).as_secs(),
                rate * 100.0
            ),
        })
    });
    let disconnected = (mode == Mode::Redis && !stats.connected).then(|| Finding {
        value: 1.0,
        threshold: 0.0,
        message: "redis is unreachable: the circuit breaker is open and reads go to the database"
            .to_owned(),
    });
    [
        (REDIS_MEMORY_HIGH, memory),
        (HIT_RATIO_LOW, hit_ratio.flatten()),
        (ERROR_RATE_HIGH, error_rate.flatten()),
        (REDIS_DISCONNECTED, disconnected),
    ]
}

async fn evaluate_forever(
    cache: Cache,
    config: AlertConfig,
    active: Arc<Mutex<BTreeMap<&'static str, ActiveAlert>>>,
    evaluations: Arc<AtomicU64>,
) {
    let namespace = cache.key_space().label().to_owned();
    let gauges = ALERTS.map(|alert| {
        metrics::gauge!("tiercache_alert_active", "namespace" => namespace.clone(), "alert" => alert)
    });
    let mut window: VecDeque<Sample> = VecDeque::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = cache.stats_without_keys().await;
        let now = Sample::of(&stats, Instant::now());
        // The oldest sample kept is the newest one at least a window old (or the first).
        while window.len() > 1 && window[1].at + config.window <= now.at {
            window.pop_front();
        }
        let oldest = window.front().copied().unwrap_or(now);
        window.push_back(now);
        let findings = judge(&config, cache.mode(), &stats, &oldest, &now);
        // Without an answer to INFO the memory is unknown, not fine: its alert stays as it was
        // (rather than clearing now and starting again at the next answer).
        let memory_unknown = stats.used_memory_bytes.is_none();
        let mut active = active.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, finding), gauge) in findings.into_iter().zip(&gauges) {
            if name == REDIS_MEMORY_HIGH && memory_unknown {
                continue;
            }
            gauge.set(if finding.is_some() { 1.0 } else { 0.0 });
            match (finding, active.get_mut(name)) {
                (Some(f), Some(alert)) => {
                    alert.value = f.value;
                    alert.message = f.message;
                }
                (Some(f), None) => {
                    tracing::warn!(
                        alert = name,
                        namespace = %namespace,
                        value = f.value,
                        threshold = f.threshold,
                        "cache alert started: {}",
                        f.message
                    );
                    active.insert(
                        name,
                        ActiveAlert {
                            name,
                            since: SystemTime::now(),
                            value: f.value,
                            threshold: f.threshold,
                            message: f.message,
                        },
                    );
                }
                (None, Some(_)) => {
                    if let Some(alert) = active.remove(name) {
                        tracing::info!(
                            alert = name,
                            namespace = %namespace,
                            lasted_s = alert.since.elapsed().map_or(0, |d| d.as_secs()),
                            "cache alert cleared"
                        );
                    }
                }
                (None, None) => {}
            }
        }
        drop(active);
        evaluations.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: u64, reads: u64, hits: u64, calls: u64, errors: u64, base: Instant) -> Sample {
        Sample {
            at: base + Duration::from_secs(secs),
            reads,
            hits,
            calls,
            errors,
        }
    }

    fn names(findings: &[(&'static str, Option<Finding>)]) -> Vec<&'static str> {
        findings
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(n, _)| *n)
            .collect()
    }

    #[test]
    fn each_condition_fires_past_its_threshold_only() {
        let c = AlertConfig::default();
        let base = Instant::now();
        let mut stats = Stats::default();
        stats.connected = true;
        stats.used_memory_bytes = Some(81);
        stats.maxmemory_bytes = Some(100);
        let quiet = sample(0, 0, 0, 0, 0, base);
        let f = judge(&c, Mode::Redis, &stats, &quiet, &quiet);
        assert_eq!(names(&f), [REDIS_MEMORY_HIGH]);
        stats.maxmemory_bytes = Some(0);
        assert!(names(&judge(&c, Mode::Redis, &stats, &quiet, &quiet)).is_empty());
        // 59 hits of 100 reads, 2 errors of 100 calls.
        let later = sample(60, 100, 59, 100, 2, base);
        let f = judge(&c, Mode::Redis, &stats, &quiet, &later);
        assert_eq!(names(&f), [HIT_RATIO_LOW, ERROR_RATE_HIGH]);
        // Too few reads and calls to judge.
        let few = sample(60, 99, 0, 99, 99, base);
        assert!(names(&judge(&c, Mode::Redis, &stats, &quiet, &few)).is_empty());
        // 60 % hits and 1 % errors are within bounds.
        let fine = sample(60, 100, 60, 100, 1, base);
        assert!(names(&judge(&c, Mode::Redis, &stats, &quiet, &fine)).is_empty());
        stats.connected = false;
        assert_eq!(
            names(&judge(&c, Mode::Redis, &stats, &quiet, &quiet)),
            [REDIS_DISCONNECTED]
        );
        assert!(names(&judge(&c, Mode::Standalone, &stats, &quiet, &quiet)).is_empty());
        // A disabled cache misses every read: that is no alert.
        assert!(
            !names(&judge(&c, Mode::Disabled, &stats, &quiet, &later)).contains(&HIT_RATIO_LOW)
        );
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let e = AlertConfig::default()
            .memory_ratio(1.5)
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "memory_ratio");
        let e = AlertConfig::default()
            .interval(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.setting, "interval");
        AlertConfig::default().validate().unwrap();
    }
}
