//! Command line and environment: every setting has a flag and an environment variable.

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
    /// Redis; if unreachable the service serves from the database until it appears.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
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
    /// Bytes for the in-process tier in front of Redis (0: none).
    #[arg(long, env = "CACHE_LOCAL_CAPACITY", default_value_t = crate::cache_policy::LOCAL_CAPACITY, global = true)]
    pub cache_local_capacity: u64,
    /// Set to false to run without the cache (every read from the database).
    #[arg(long, env = "CACHE_ENABLED", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub cache_enabled: bool,
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
