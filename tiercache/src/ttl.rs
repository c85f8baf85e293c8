//! The TTL policy: how long each category of data lives in Redis, with jitter.
//!
//! The library ships one default TTL ([`DEFAULT_TTL`]) and the mechanism to give each category
//! its own (`CacheBuilder::ttl`); which categories exist and how long they live is the
//! application's business.
//!
//! Values filled together (after a deploy, a flush or a traffic spike) would otherwise expire
//! together and send a thundering herd to the database. Each TTL is therefore drawn uniformly
//! from `base × (1 ± jitter)` (default ±10%).

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::{Category, Key};

/// TTL for categories without one of their own.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Default jitter: ±10%.
pub const DEFAULT_JITTER: f64 = 0.10;

/// Per-category TTLs with jitter. Built by the cache builder; read-only afterwards.
#[derive(Clone, Debug)]
pub struct TtlPolicy {
    table: HashMap<Category, Duration>,
    fallback: Duration,
    jitter: f64,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            table: HashMap::new(),
            fallback: DEFAULT_TTL,
            jitter: DEFAULT_JITTER,
        }
    }
}

impl TtlPolicy {
    /// Sets the base TTL of `category`.
    pub(crate) fn set(&mut self, category: Category, ttl: Duration) -> Result<()> {
        check_ttl("ttl", ttl)?;
        self.table.insert(category, ttl);
        Ok(())
    }

    /// Sets the base TTL of categories that are not in the table.
    pub(crate) fn set_fallback(&mut self, ttl: Duration) -> Result<()> {
        check_ttl("default_ttl", ttl)?;
        self.fallback = ttl;
        Ok(())
    }

    /// Sets the jitter as a fraction in `[0, 0.5]`: 0.1 means ±10%.
    pub(crate) fn set_jitter(&mut self, jitter: f64) -> Result<()> {
        if !(0.0..=0.5).contains(&jitter) {
            return Err(Error::config(
                "jitter",
                format!("{jitter} is outside 0.0..=0.5"),
            ));
        }
        self.jitter = jitter;
        Ok(())
    }

    /// The base TTL of `category`, without jitter.
    pub fn base(&self, category: &Category) -> Duration {
        self.table.get(category).copied().unwrap_or(self.fallback)
    }

    /// The categories with an explicit TTL.
    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.table.keys()
    }

    /// A TTL for one write of `category`: the base with jitter applied (never below 1 ms).
    pub fn ttl(&self, category: &Category) -> Duration {
        self.jittered(self.base(category))
    }

    /// A TTL for one write through `key`: its own TTL ([`Key::with_ttl`]) or its category's,
    /// with jitter.
    pub fn for_key(&self, key: &Key) -> Duration {
        match key.ttl() {
            Some(own) => self.jittered(own),
            None => self.ttl(key.category()),
        }
    }

    /// `base` with this policy's jitter applied.
    pub(crate) fn jittered(&self, base: Duration) -> Duration {
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor).max(Duration::from_millis(1))
    }
}

/// Longest accepted base TTL: one year.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

fn check_ttl(setting: &'static str, ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::config(setting, "a TTL must be at least 1 ms"));
    }
    if ttl > MAX_TTL {
        return Err(Error::config(setting, "a TTL must be at most one year"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCAN_RESULTS: Category = Category::from_static("scan_results");
    const SESSIONS: Category = Category::from_static("sessions");

    #[test]
    fn one_default_and_a_ttl_per_configured_category() {
        let mut p = TtlPolicy::default();
        assert_eq!(p.base(&SCAN_RESULTS), DEFAULT_TTL);
        assert_eq!(p.categories().count(), 0, "the library ships no categories");
        p.set(SCAN_RESULTS, Duration::from_secs(30)).unwrap();
        p.set_fallback(Duration::from_secs(60)).unwrap();
        assert_eq!(p.base(&SCAN_RESULTS), Duration::from_secs(30));
        assert_eq!(p.base(&Category::new("other")), Duration::from_secs(60));
        assert_eq!(p.categories().collect::<Vec<_>>(), vec![&SCAN_RESULTS]);
    }

    #[test]
    fn jitter_stays_in_bounds_and_spreads() {
        let p = TtlPolicy::default();
        let draws: Vec<Duration> = (0..2000).map(|_| p.ttl(&SCAN_RESULTS)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_secs(270) && *d <= Duration::from_secs(330))
        );
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 1000,
            "jitter should spread TTLs, got {}",
            distinct.len()
        );
        let below = draws
            .iter()
            .filter(|d| **d < Duration::from_secs(300))
            .count();
        assert!(
            (600..1400).contains(&below),
            "jitter should be two-sided: {below}"
        );
    }

    #[test]
    fn invalid_settings_are_named() {
        let mut p = TtlPolicy::default();
        assert!(
            p.set(SESSIONS, Duration::ZERO)
                .unwrap_err()
                .to_string()
                .contains("ttl")
        );
        assert!(
            p.set_fallback(Duration::ZERO)
                .unwrap_err()
                .to_string()
                .contains("default_ttl")
        );
        assert!(
            p.set_jitter(0.9)
                .unwrap_err()
                .to_string()
                .contains("jitter")
        );
        assert!(p.set_jitter(f64::NAN).is_err());
        p.set_jitter(0.0).unwrap();
        assert_eq!(p.ttl(&SESSIONS), DEFAULT_TTL);
    }
}
