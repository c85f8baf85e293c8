//! `scan-api cache stats | clear | keys [PATTERN] | get KEY | del KEY | warm`: the cache's
//! operations from a terminal, so that an operator can act on the cache without curl and
//! without reading code.
//!
//! Each run acts on exactly one target:
//! - `--url http://host:port`: a running instance's admin API (`tiercache-axum/src/admin.rs`),
//!   with the admin token from `ADMIN_TOKEN` or `--token` (`stats` and `warm` need none);
//! - `--redis-url redis://…` (or `REDIS_URL` when `--url` is not given): Redis directly, with
//!   the service's key space (`APP_ENV`, `CACHE_NAMESPACE`); `warm` then builds the application
//!   in process on the database (`--database-url` / `DATABASE_URL`).
//!
//! Output is a table for people, or the admin API's JSON with `--json` (the same shape from
//! either target). Errors name the problem and exit non-zero; an admin API that refuses the
//! token (401, 403) is reported as a missing or wrong `ADMIN_TOKEN`.
//!
//! # Layout
//! - `target`: the two targets, answering in the admin API's JSON shapes.
//! - `table`: the plain-text tables and the human forms of sizes and durations.

mod table;
mod target;

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::{Common, redact};
use crate::store::Store;
use crate::warm::{self, Counted, Event, Via};
use crate::{AppState, cache_policy};
use table::{Align, Table};
use target::{AdminApi, DEFAULT_KEYS_LIMIT, Target};

/// `scan-api cache` settings.
#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
    /// A running instance (`http://host:port`): act through its admin API. Without it, act on
    /// Redis directly (`--redis-url` / `REDIS_URL`).
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// Bearer token of the admin routes (`--url` only).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON (the admin API's shapes) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `scan-api cache` subcommands.
#[derive(Debug, Subcommand, Clone)]
pub enum Action {
    /// Hits, misses, hit rate, keys, memory, evictions (hits and misses with --url only: each
    /// instance counts its own).
    Stats,
    /// Remove every key of the namespace, and nothing else.
    Clear,
    /// List keys matching a glob pattern (relative to the namespace, or with its prefix).
    Keys {
        /// Glob pattern (`*insights*`); default every key.
        pattern: Option<String>,
        /// Most keys listed (1 to 1000).
        #[arg(long, default_value_t = DEFAULT_KEYS_LIMIT)]
        limit: usize,
    },
    /// A key's remaining TTL and stored size.
    Get {
        /// The full key, as `keys` lists it.
        key: String,
    },
    /// Delete a key (from Redis and every instance's in-process tier).
    Del {
        /// The full key, as `keys` lists it.
        key: String,
    },
    /// Pre-load the common reads: the image index, every image's latest scan, insights, and
    /// the vulnerability lists, for each Accept-Encoding variant.
    Warm(WarmArgs),
}

/// `scan-api cache warm` settings.
#[derive(Debug, Args, Clone)]
pub struct WarmArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = warm::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// An Accept-Encoding value to warm, exactly as clients send it (repeat the flag for
    /// several; `none` for requests without the header). The cache keys on the exact value.
    #[arg(long = "accept-encoding", value_name = "VALUE", default_values_t = warm::DEFAULT_ENCODINGS.map(String::from))]
    pub encodings: Vec<String>,
    /// Largest response body cached, in bytes (without --url: set it as the service has it).
    #[arg(long, env = "CACHE_MAX_RESPONSE_BYTES", default_value_t = cache_policy::MAX_RESPONSE_BYTES)]
    pub cache_max_body: usize,
}

/// Why a `scan-api cache` run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Neither `--url` nor `--redis-url` (nor `REDIS_URL`).
    #[error(
        "no target: give --url http://host:port (a running instance's admin API), \
         --redis-url redis://host:port (Redis directly; or set REDIS_URL) or \
         --redis-cluster-urls redis://host:port,... (a Redis Cluster; or set REDIS_CLUSTER_URLS)"
    )]
    NoTarget,
    /// Both `REDIS_URL` and `REDIS_CLUSTER_URLS` (as for the service).
    #[error(
        "REDIS_URL and REDIS_CLUSTER_URLS are both set: give --redis-url for one Redis server, or \
         --redis-cluster-urls for a Redis Cluster, not both"
    )]
    TwoRedis,
    /// Both `--url` and `--redis-url`.
    #[error(
        "two targets: give either --url (a running instance's admin API) or --redis-url (Redis \
         directly), not both"
    )]
    TwoTargets,
    /// A `--url` that is not `http://host:port`.
    #[error("--url {url:?}: {why}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Wrong arguments.
    #[error("{0}")]
    Usage(String),
    /// No answer over HTTP.
    #[error("cannot reach the admin API at {url}: {why}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// 401: no token was sent.
    #[error(
        "ADMIN_TOKEN is missing: the admin API at {url} needs the service's admin token; set \
         ADMIN_TOKEN or pass --token"
    )]
    MissingToken {
        /// The instance.
        url: String,
    },
    /// 403: the token was refused (or the service has none).
    #[error(
        "ADMIN_TOKEN is wrong: the admin API at {url} refused it ({message}); set ADMIN_TOKEN \
         (or --token) to the token the service was started with"
    )]
    WrongToken {
        /// The instance.
        url: String,
        /// The service's message.
        message: String,
    },
    /// Another error answer of the admin API.
    #[error("{request} answered {status}: {message}")]
    Api {
        /// Method and URL.
        request: String,
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// The key is not there.
    #[error("no such key: {0}")]
    NoSuchKey(String),
    /// Redis did not answer.
    #[error("cannot reach Redis at {url}")]
    RedisUnreachable {
        /// The URL, without its password.
        url: String,
    },
    /// A cache operation failed.
    #[error("cache: {0}")]
    Cache(#[source] tiercache::Error),
    /// The database for an in-process warm.
    #[error("database {url}: {why}")]
    Database {
        /// The URL, without its password.
        url: String,
        /// Why.
        why: String,
    },
    /// The warm could not run.
    #[error(transparent)]
    Warm(#[from] warm::WarmError),
    /// Some warm requests failed (the summary was printed).
    #[error("{failed} of {requests} warm requests failed; first: {first}")]
    WarmFailures {
        /// Failed requests.
        failed: usize,
        /// All requests.
        requests: usize,
        /// The first failure.
        first: String,
    },
    /// Writing the output.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `scan-api cache …`. `redis_url_flag`: whether `--redis-url` was on the command line
/// (rather than `REDIS_URL` in the environment, which `--url` overrides).
pub async fn run(args: CacheArgs, common: &Common, redis_url_flag: bool) -> Result<(), CliError> {
    let redis_url = common.named_redis_url();
    let cluster = common.cluster_urls();
    let target = match (&args.url, redis_url) {
        (Some(_), Some(_)) if redis_url_flag => return Err(CliError::TwoTargets),
        (Some(url), _) => Target::Api(AdminApi::new(url, args.token.clone())?),
        (None, Some(_)) if !cluster.is_empty() => return Err(CliError::TwoRedis),
        (None, Some(url)) => Target::redis(url, common).await?,
        (None, None) if !cluster.is_empty() => Target::redis_cluster(&cluster, common).await?,
        (None, None) => return Err(CliError::NoTarget),
    };
    let json = args.json;
    match &args.action {
        Action::Stats => {
            let stats = target.stats().await?;
            emit(json, &stats, || render_stats(&stats))
        }
        Action::Clear => {
            let cleared = target.clear().await?;
            emit(json, &cleared, || {
                format!(
                    "removed {} keys from namespace {}\n",
                    cleared["removed"],
                    text(&cleared["namespace"])
                )
            })
        }
        Action::Keys { pattern, limit } => {
            let listed = target.keys(pattern.as_deref(), *limit).await?;
            emit(json, &listed, || render_keys(&listed, *limit))
        }
        Action::Get { key } => {
            let shown = target.get(key).await?;
            emit(json, &shown, || render_key(&shown))
        }
        Action::Del { key } => {
            let deleted = target.del(key).await?;
            emit(json, &deleted, || format!("deleted {key}\n"))
        }
        Action::Warm(warm_args) => run_warm(&target, common, warm_args, json).await,
    }
}

/// Prints `value` as JSON, or `table()`.
fn emit(json: bool, value: &Value, table: impl FnOnce() -> String) -> Result<(), CliError> {
    let out = if json {
        let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        s.push('\n');
        s
    } else {
        table()
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A reader that has seen enough (`| head`) is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A JSON value as text: strings without quotes, `null` as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render_stats(s: &Value) -> String {
    let mut t = Table::pairs();
    t.row(["mode", &text(&s["mode"])]);
    if let Some(ns) = s.get("namespace") {
        t.row(["namespace", &text(ns)]);
    }
    let yes_no = |v: &Value| match v.as_bool() {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    };
    t.row(["connected", &yes_no(&s["connected"])]);
    t.row(["keys", &text(&s["total_keys"])]);
    let memory = match s["memory_used_bytes"].as_u64() {
        Some(b) => format!("{} ({b} bytes)", table::bytes(b)),
        None => "-".to_owned(),
    };
    t.row(["memory", &memory]);
    t.row(["evictions", &text(&s["evictions"])]);
    let per_instance = s.get("hits").is_some();
    if per_instance {
        t.row(["hits", &text(&s["hits"])]);
        t.row(["  in-process", &text(&s["local_hits"])]);
        t.row(["misses", &text(&s["misses"])]);
        t.row([
            "hit rate",
            &s["hit_rate"].as_f64().map_or("-".into(), table::percent),
        ]);
        for (label, field) in [
            ("sets", "sets"),
            ("deletes", "deletes"),
            ("errors", "errors"),
            ("timeouts", "timeouts"),
            ("loader runs", "loader_runs"),
        ] {
            t.row([label, &text(&s[field])]);
        }
        if let Some(up) = s["uptime"].as_f64() {
            t.row(["uptime", &table::duration(Duration::from_secs_f64(up))]);
        }
    }
    let mut out = t.render();
    if let Some(categories) = s["categories"].as_object().filter(|c| !c.is_empty()) {
        let mut c = Table::new(
            &["CATEGORY", "HITS", "MISSES", "HIT RATE"],
            &[Align::Left, Align::Right, Align::Right, Align::Right],
        );
        for (name, figures) in categories {
            let (hits, misses) = (
                figures["hits"].as_u64().unwrap_or(0),
                figures["misses"].as_u64().unwrap_or(0),
            );
            let rate = if hits + misses == 0 {
                "-".to_owned()
            } else {
                table::percent(hits as f64 / (hits + misses) as f64)
            };
            c.row([name.clone(), hits.to_string(), misses.to_string(), rate]);
        }
        out.push('\n');
        out.push_str(&c.render());
    }
    if let Some(local) = s["local"].as_object() {
        let mut l = Table::new(
            &["IN-PROCESS TIER", "LIVE", "ENTRIES", "SIZE", "EVICTIONS"],
            &[
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
        );
        let size = local["size_bytes"]
            .as_u64()
            .map_or("-".into(), table::bytes);
        l.row([
            "this instance".to_owned(),
            yes_no(&local["live"]),
            text(&local["entries"]),
            size,
            text(&local["evictions"]),
        ]);
        out.push('\n');
        out.push_str(&l.render());
    }
    if !per_instance {
        out.push_str(
            "\nhits and misses are counted by each instance: ask one with --url http://host:port\n",
        );
    }
    out
}

fn render_keys(listed: &Value, limit: usize) -> String {
    let keys = listed["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut t = Table::new(&["KEY"], &[]);
    for k in keys {
        t.row([text(k)]);
    }
    let mut out = if t.is_empty() {
        String::new()
    } else {
        t.render()
    };
    let more = if keys.len() >= limit {
        format!(" (the first {limit}: raise --limit for more)")
    } else {
        String::new()
    };
    out.push_str(&format!(
        "{} keys matching {}{more}\n",
        keys.len(),
        text(&listed["pattern"])
    ));
    out
}

fn render_key(shown: &Value) -> String {
    let mut t = Table::new(
        &["KEY", "TTL", "SIZE"],
        &[Align::Left, Align::Right, Align::Right],
    );
    let ttl = match shown["ttl_ms"].as_u64() {
        Some(ms) => table::duration(Duration::from_millis(ms)),
        None => "none".to_owned(),
    };
    let size = shown["size_bytes"].as_u64().unwrap_or(0);
    t.row([
        text(&shown["key"]),
        ttl,
        format!("{} ({size} bytes)", table::bytes(size)),
    ]);
    t.render()
}

async fn run_warm(
    target: &Target,
    common: &Common,
    args: &WarmArgs,
    json: bool,
) -> Result<(), CliError> {
    let via = match target {
        Target::Api(api) => Via::Http {
            client: api.client().clone(),
            base: api.base().to_owned(),
        },
        Target::Redis { cache, .. } => {
            let url = redact(&common.database_url);
            if let Some(file) = sqlite_file(&common.database_url)
                && !Path::new(file).exists()
            {
                return Err(CliError::Database {
                    url,
                    why: "no such file: name the service's database with --database-url or \
                          DATABASE_URL"
                        .into(),
                });
            }
            let store =
                Store::connect(&common.database_url)
                    .await
                    .map_err(|e| CliError::Database {
                        url,
                        why: e.to_string(),
                    })?;
            let state = AppState {
                store,
                cache: cache.clone(),
                body_limit: 0,
                cache_max_body: args.cache_max_body,
            };
            Via::InProcess(crate::app(state, None))
        }
    };
    let bar = if json {
        ProgressBar::hidden()
    } else {
        // Drawn on stderr, and only when it is a terminal.
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {per_sec}")
        {
            bar.set_style(style);
        }
        bar
    };
    let progress_bar = bar.clone();
    let options = warm::Options {
        concurrency: usize::from(args.concurrency),
        encodings: args.encodings.clone(),
    };
    let summary = warm::warm(
        &via,
        &options,
        Arc::new(move |event| match event {
            Event::Planned(n) => progress_bar.inc_length(n),
            Event::Done(_) => progress_bar.inc(1),
        }),
    )
    .await?;
    bar.finish_and_clear();
    let value = serde_json::to_value(&summary).unwrap_or(Value::Null);
    emit(json, &value, || render_warm(&summary))?;
    match summary.results.iter().find(|o| o.error.is_some()) {
        Some(first) => Err(CliError::WarmFailures {
            failed: summary.failed,
            requests: summary.requests,
            first: format!(
                "GET {} (Accept-Encoding: {}): {}",
                first.path,
                first.accept_encoding,
                first.error.as_deref().unwrap_or("")
            ),
        }),
        None => Ok(()),
    }
}

fn render_warm(s: &warm::Summary) -> String {
    let mut t = Table::pairs().aligned(&[Align::Left, Align::Right]);
    t.row(["images", &s.images.to_string()]);
    t.row(["requests", &s.requests.to_string()]);
    t.row(["loaded (MISS)", &s.loaded.to_string()]);
    t.row(["already cached (HIT)", &s.cached.to_string()]);
    t.row(["not cached (BYPASS)", &s.uncached.to_string()]);
    t.row(["failed", &s.failed.to_string()]);
    t.row(["elapsed", &format!("{:.2} s", s.elapsed_seconds)]);
    t.row(["rate", &format!("{:.1} req/s", s.rate_per_second)]);
    let mut out = t.render();
    let variants: Vec<String> = s
        .encodings
        .iter()
        .map(|e| match e.as_str() {
            warm::NO_ENCODING => e.clone(),
            _ => format!("{e:?}"),
        })
        .collect();
    out.push_str(&format!(
        "Accept-Encoding variants: {}\n",
        variants.join(", ")
    ));
    if s.uncached > 0 {
        out.push_str(&format!(
            "{} answers were not stored (X-Cache: BYPASS: Redis away or too slow, or the cache \
             off): run warm again to retry them\n",
            s.uncached
        ));
    }
    let failures: Vec<_> = s
        .results
        .iter()
        .filter(|o| o.counted() == Counted::Failed)
        .collect();
    if !failures.is_empty() {
        let mut f = Table::new(&["FAILED", "ACCEPT-ENCODING", "WHY"], &[]);
        for o in failures {
            f.row([
                o.path.clone(),
                o.accept_encoding.clone(),
                o.error.clone().unwrap_or_default(),
            ]);
        }
        out.push('\n');
        out.push_str(&f.render());
    }
    out
}

/// The file of an `sqlite:` URL, when it names one.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let file = rest.split('?').next().unwrap_or("");
    (!file.is_empty() && !file.contains(":memory:") && !url.contains("mode=memory")).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(sqlite_file("sqlite://scan-api.db"), Some("scan-api.db"));
        assert_eq!(
            sqlite_file("sqlite:///tmp/a.db?mode=rwc"),
            Some("/tmp/a.db")
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }
}
