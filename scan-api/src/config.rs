//! Command line and environment: every setting has a flag and an environment variable.
//!
//! Settings are kept as given; [`crate::cache_setup`] turns the cache settings (`CACHE_MODE`,
//! `REDIS_URL` or `REDIS_CLUSTER_URLS`, `CACHE_LOCAL_CAPACITY`, `CACHE_ENABLED`) into a cache.
//! `REDIS_URL` has no
//! default value here, so that an unset one can be told from one set to the default address.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The scan-api command line.
#[derive(Debug, Parser)]
#[command(
    name = "scan-api",
    version,
    about = "Trivy scan-results backend, cached with tiercache"
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every command.
    #[command(flatten)]
    pub common: Common,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(Serve),
    /// Store N synthetic reports.
    Seed(Seed),
    /// Store Trivy JSON reports from files.
    Import(Import),
    /// Inspect, clear and warm the cache: through a running instance (--url) or Redis.
    Cache(crate::cache_cli::CacheArgs),
}

/// Database and cache settings.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// `postgres://…` or `sqlite://FILE` (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://scan-api.db",
        global = true
    )]
    pub database_url: String,
    /// Where the cache keeps values; `auto` picks Redis or standalone at start-up.
    #[arg(
        long,
        env = "CACHE_MODE",
        value_enum,
        default_value_t = CacheMode::Auto,
        global = true
    )]
    pub cache_mode: CacheMode,
    /// The Redis to cache in (`redis://127.0.0.1:6379` when unset). Once set, the cache uses this
    /// Redis and nothing else: while it is unreachable the service serves from the database
    /// until it appears.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// A Redis Cluster to cache in instead: comma-separated seed-node URLs
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`; one that answers is enough). Like
    /// `REDIS_URL`, once set the cache uses this cluster and nothing else. Setting both is an
    /// error.
    #[arg(long, env = "REDIS_CLUSTER_URLS", global = true)]
    pub redis_cluster_urls: Option<String>,
    /// Second segment of every cache key; clearing the cache clears only this namespace.
    #[arg(
        long,
        env = "CACHE_NAMESPACE",
        default_value = "scan-api",
        global = true
    )]
    pub cache_namespace: String,
    /// First segment of every cache key (`prod`, `staging`, `dev`).
    #[arg(long, env = "APP_ENV", default_value = "dev", global = true)]
    pub app_env: String,
    /// Bytes for the in-process tier: in front of Redis (0: none), or the whole cache in
    /// standalone mode.
    #[arg(long, env = "CACHE_LOCAL_CAPACITY", default_value_t = crate::cache_policy::LOCAL_CAPACITY, global = true)]
    pub cache_local_capacity: u64,
    /// Largest value the cache stores, in bytes of its encoded form after compression (what
    /// Redis would hold), whatever stores it: a response body, a database row, a session. A
    /// larger value is served but not cached (counted as `oversized`, logged once per key).
    /// Not to be confused with `CACHE_MAX_RESPONSE_BYTES`, which bounds the HTTP response
    /// cache's bodies before encoding; each limit applies on its own.
    #[arg(long, env = "CACHE_MAX_VALUE_BYTES", default_value_t = tiercache::DEFAULT_MAX_VALUE_BYTES, global = true)]
    pub cache_max_value_bytes: usize,
    /// Set to false to run without the cache (every read from the database): the same as
    /// `CACHE_MODE=off`.
    #[arg(long, env = "CACHE_ENABLED", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub cache_enabled: bool,
}

impl Common {
    /// `REDIS_URL` as given, an empty one (`REDIS_URL=` in a file of settings) counting as unset.
    pub fn named_redis_url(&self) -> Option<&str> {
        self.redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// The seed nodes of `REDIS_CLUSTER_URLS` (none when it is unset or empty).
    pub fn cluster_urls(&self) -> Vec<String> {
        self.redis_cluster_urls
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `CACHE_MODE`: how the cache stores values (see `cache_setup` for how each is resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// Redis if `REDIS_URL` is set (never replaced, even while it is away); without it, Redis
    /// at the default address if it answers at start-up, else standalone.
    Auto,
    /// Redis at `REDIS_URL` or the default address, shared by every instance; the database
    /// while it is away.
    Redis,
    /// The in-process tier alone: one instance, which hears of its own writes only.
    Standalone,
    /// No cache: every read from the database.
    Off,
}

impl CacheMode {
    /// The setting's value as written: `auto`, `redis`, `standalone` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Redis => "redis",
            Self::Standalone => "standalone",
            Self::Off => "off",
        }
    }
}

/// `serve` settings.
#[derive(Debug, Args, Clone)]
pub struct Serve {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Bearer token for the cache admin routes; unset, they answer 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest accepted request body in bytes (Trivy reports of big images exceed 10 MB).
    #[arg(long, env = "BODY_LIMIT", default_value_t = 32 * 1024 * 1024)]
    pub body_limit: usize,
    /// Largest response body cached, in bytes; larger responses stream through uncached. It is
    /// checked by the response layer on the raw body, before it is buffered; the cache's own
    /// `CACHE_MAX_VALUE_BYTES` then bounds every stored value after encoding and compression.
    #[arg(long, env = "CACHE_MAX_RESPONSE_BYTES", default_value_t = crate::cache_policy::MAX_RESPONSE_BYTES)]
    pub cache_max_body: usize,
    /// Warm the cache in the background once listening (as `scan-api cache warm`); readiness
    /// does not wait for it.
    #[arg(long, env = "CACHE_WARM_ON_START", default_value_t = false, action = clap::ArgAction::Set)]
    pub warm_on_start: bool,
    /// Alert thresholds.
    #[command(flatten)]
    pub alerts: AlertSettings,
}

/// Thresholds of the cache alerts (see `tiercache_axum::alerts`); the defaults are the design's.
#[derive(Debug, Args, Clone)]
pub struct AlertSettings {
    /// Alert when Redis uses more than this share of its maxmemory (never without a maxmemory).
    #[arg(long, env = "ALERT_MEMORY_RATIO", default_value_t = 0.8)]
    pub alert_memory_ratio: f64,
    /// Alert when the hit ratio over the window falls below this (once it saw 100 reads).
    #[arg(long, env = "ALERT_HIT_RATIO_MIN", default_value_t = 0.6)]
    pub alert_hit_ratio_min: f64,
    /// Alert when more than this share of Redis calls fail over the window (once it saw 100).
    #[arg(long, env = "ALERT_ERROR_RATE_MAX", default_value_t = 0.01)]
    pub alert_error_rate_max: f64,
    /// The window of the hit ratio and the error rate, in seconds.
    #[arg(long, env = "ALERT_WINDOW_SECS", default_value_t = 300)]
    pub alert_window_secs: u64,
    /// How often the alerts are evaluated, in seconds.
    #[arg(long, env = "ALERT_INTERVAL_SECS", default_value_t = 5)]
    pub alert_interval_secs: u64,
}

impl AlertSettings {
    /// The evaluator's configuration.
    pub fn config(&self) -> tiercache_axum::alerts::AlertConfig {
        tiercache_axum::alerts::AlertConfig::default()
            .memory_ratio(self.alert_memory_ratio)
            .hit_ratio_min(self.alert_hit_ratio_min)
            .error_rate_max(self.alert_error_rate_max)
            .window(std::time::Duration::from_secs(self.alert_window_secs))
            .interval(std::time::Duration::from_secs(self.alert_interval_secs))
    }
}

impl Serve {
    /// The `serve` settings from the environment and defaults alone, for when no subcommand is
    /// given.
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::{Args as _, FromArgMatches as _};
        let matches =
            Self::augment_args(clap::Command::new("serve")).try_get_matches_from(["serve"])?;
        Self::from_arg_matches(&matches)
    }
}

/// `seed` settings.
#[derive(Debug, Args, Clone)]
pub struct Seed {
    /// How many reports to store.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// Generator seed: the same seed gives the same reports.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Index of the first report (to add more without repeating).
    #[arg(long, default_value_t = 0)]
    pub start: u64,
}

/// `import` settings.
#[derive(Debug, Args, Clone)]
pub struct Import {
    /// Trivy JSON files (`trivy image --format json`).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn cache_mode_takes_the_four_values_and_names_them_on_a_typo() {
        for (given, mode) in [
            ("auto", CacheMode::Auto),
            ("redis", CacheMode::Redis),
            ("standalone", CacheMode::Standalone),
            ("off", CacheMode::Off),
        ] {
            let cli = Cli::try_parse_from(["scan-api", "--cache-mode", given]).unwrap();
            assert_eq!(cli.common.cache_mode, mode);
            assert_eq!(mode.as_str(), given);
        }
        let err = Cli::try_parse_from(["scan-api", "--cache-mode", "memory"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("standalone") && err.contains("off"), "{err}");
        let cli = Cli::try_parse_from(["scan-api", "--redis-url", "redis://h:1"]).unwrap();
        assert_eq!(cli.common.redis_url.as_deref(), Some("redis://h:1"));
    }

    #[test]
    fn the_value_limit_defaults_to_the_librarys_and_is_a_flag() {
        let cli = Cli::try_parse_from(["scan-api"]).unwrap();
        assert_eq!(
            cli.common.cache_max_value_bytes,
            tiercache::DEFAULT_MAX_VALUE_BYTES
        );
        let cli = Cli::try_parse_from(["scan-api", "--cache-max-value-bytes", "2048"]).unwrap();
        assert_eq!(cli.common.cache_max_value_bytes, 2048);
        assert!(Cli::try_parse_from(["scan-api", "--cache-max-value-bytes", "1M"]).is_err());
    }

    #[test]
    fn alert_thresholds_default_to_the_design_and_can_be_set() {
        use tiercache_axum::alerts::AlertConfig;
        let cli = Cli::try_parse_from(["scan-api", "serve"]).unwrap();
        let Some(Command::Serve(serve)) = cli.command else {
            panic!("serve")
        };
        assert_eq!(serve.alerts.config(), AlertConfig::default());
        let cli = Cli::try_parse_from([
            "scan-api",
            "serve",
            "--alert-memory-ratio",
            "0.9",
            "--alert-window-secs",
            "60",
        ])
        .unwrap();
        let Some(Command::Serve(serve)) = cli.command else {
            panic!("serve")
        };
        assert_eq!(
            serve.alerts.config(),
            AlertConfig::default()
                .memory_ratio(0.9)
                .window(std::time::Duration::from_secs(60))
        );
        let bad = Cli::try_parse_from(["scan-api", "serve", "--alert-hit-ratio-min", "2"]).unwrap();
        let Some(Command::Serve(serve)) = bad.command else {
            panic!("serve")
        };
        assert_eq!(
            serve.alerts.config().validate().unwrap_err().setting,
            "hit_ratio_min"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("sqlite://scan-api.db"), "sqlite://scan-api.db");
    }
}
