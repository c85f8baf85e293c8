//! The database layer: the source of truth, on PostgreSQL or an embedded SQLite file.
//!
//! One `sqlx::AnyPool` serves both backends with runtime queries (no compile-time
//! `DATABASE_URL`); the SQL is written to run unchanged on both (`$N` placeholders, no
//! backend-specific functions), and aggregation happens in Rust. Migrations for the chosen
//! backend run at start-up.
//!
//! Every SQL statement the store runs is counted ([`Store::queries`]), so benchmarks and tests
//! can show how many reads the cache saved.
//!
//! # Layout
//! - `write`: storing and deleting scans, each in one transaction.
//! - `read`: scan lists, one scan, images and their versions.
//! - `analysis`: vulnerability aggregation and the insights computation.

mod analysis;
mod read;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::model::{ImageVersion, ScanSummary, SeverityCounts};

/// Why a store operation failed. All of these are server-side problems (5xx).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not usable.
    #[error("invalid DATABASE_URL: {0}")]
    Config(String),
    /// Connecting or querying failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be read back (a bug or a hand-edited database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Which database the store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite (a file, created if missing).
    Sqlite,
}

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Statements run since start-up; shared by every clone.
    queries: Arc<AtomicU64>,
}

static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite:…`), creating an SQLite file if missing,
    /// and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let url = if rest.contains("mode=") || rest.contains(":memory:") {
                url.to_owned()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else {
            return Err(StoreError::Config(
                "expected postgres://… or sqlite:… (for example sqlite://scan-api.db)".into(),
            ));
        };
        let max = match backend {
            // An in-memory SQLite database exists per connection: keep exactly one.
            Backend::Sqlite if url.contains(":memory:") => 1,
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        match backend {
            Backend::Sqlite => {
                MIGRATE_SQLITE.run(&pool).await?;
                // Readers and the writer do not block each other in WAL mode (persistent).
                if !url.contains(":memory:") {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&pool)
                        .await?;
                }
            }
            Backend::Postgres => MIGRATE_POSTGRES.run(&pool).await?,
        }
        Ok(Self {
            pool,
            backend,
            queries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQL statements run since start-up.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Counts statements about to run.
    fn count(&self, n: u64) {
        self.queries.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.count(1);
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool (at shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The columns of `scans` that a [`ScanSummary`] is read from, in [`summary_from_row`]'s order.
const SUMMARY_COLUMNS: &str = "s.id, s.image, s.artifact_name, s.image_id, s.os_family, \
     s.os_name, s.created_at, s.stored_at, s.scanned_at_us, s.versions_json, s.critical, s.high, \
     s.medium, s.low, s.unknown";

/// SQL selecting the ids of the latest scan of each image: newest `scanned_at`, ties to the
/// scan stored last.
const LATEST_IDS: &str = "SELECT l.id FROM scans l WHERE NOT EXISTS (\
     SELECT 1 FROM scans n WHERE n.image = l.image AND \
     (n.scanned_at_us > l.scanned_at_us OR (n.scanned_at_us = l.scanned_at_us AND n.id > l.id)))";

fn summary_from_row(row: &AnyRow) -> Result<ScanSummary, StoreError> {
    let count = |col: &str| -> Result<u32, StoreError> {
        let v: i64 = row.try_get(col)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} = {v}")))
    };
    let created_at: Option<String> = row.try_get("created_at")?;
    let stored_at: String = row.try_get("stored_at")?;
    let scanned_at_us: i64 = row.try_get("scanned_at_us")?;
    let versions_json: String = row.try_get("versions_json")?;
    let versions: Vec<ImageVersion> = serde_json::from_str(&versions_json)
        .map_err(|e| StoreError::Corrupt(format!("versions_json: {e}")))?;
    Ok(ScanSummary {
        id: row.try_get("id")?,
        image: row.try_get("image")?,
        artifact_name: row.try_get("artifact_name")?,
        image_id: row.try_get("image_id")?,
        os_family: row.try_get("os_family")?,
        os_name: row.try_get("os_name")?,
        created_at: created_at.as_deref().map(parse_time).transpose()?,
        stored_at: parse_time(&stored_at)?,
        scanned_at: DateTime::from_timestamp_micros(scanned_at_us)
            .ok_or_else(|| StoreError::Corrupt(format!("scanned_at_us = {scanned_at_us}")))?,
        versions,
        vulnerability_counts: SeverityCounts {
            critical: count("critical")?,
            high: count("high")?,
            medium: count("medium")?,
            low: count("low")?,
            unknown: count("unknown")?,
        },
    })
}

fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

/// Marks SQL assembled at run time as safe. Every caller builds it only from the constants in
/// this module and `$N` placeholders; values always travel as bind parameters.
fn trusted(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// `$first, $first+1, …` placeholders for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
