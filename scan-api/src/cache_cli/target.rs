//! What `scan-api cache` acts on: a running instance's admin API over HTTP, or Redis directly.
//!
//! Both answer in the admin API's JSON shapes (`tiercache-axum/src/admin.rs`), so that the
//! output, tables or `--json`, does not depend on the target. Directly against Redis the cache
//! is built as the service builds it (same `APP_ENV` and `CACHE_NAMESPACE`, so the keys are
//! the service's), with no in-process tier: a one-off process would keep values nobody reads.
//! Its `clear` and `del` reach every instance's in-process tier over the invalidation channel,
//! exactly as the service's own writes do. Hit and miss counters, though, live in each
//! instance: only `--url` shows them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tiercache::{Cache, CacheBuilder, Mode};

use super::CliError;
use crate::cache_policy;
use crate::config::{Common, redact};
use crate::warm::{encode, error_chain};

/// Bound on each Redis call of the CLI: a person waits, not a request, so it is far looser than
/// the service's 50 ms.
const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on each admin API call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `limit` of `keys` (the admin API's).
pub(crate) use tiercache_axum::admin::{DEFAULT_KEYS_LIMIT, MAX_KEYS_LIMIT};

/// A running instance's admin API.
#[derive(Debug)]
pub(crate) struct AdminApi {
    client: reqwest::Client,
    /// `http://host:port`, without a trailing `/`.
    base: String,
    token: Option<String>,
}

/// The target of one `scan-api cache` run.
#[derive(Debug)]
pub(crate) enum Target {
    /// Over HTTP.
    Api(AdminApi),
    /// Redis, through a cache built as the service builds its own.
    Redis {
        /// The cache.
        cache: Cache,
        /// The URL, without its password, for messages.
        url: String,
    },
}

/// A plain-HTTP client with the CLI's timeouts.
pub(crate) fn http_client() -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("scan-api-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::Http {
            url: String::new(),
            why: error_chain(&e),
        })
}

/// Checks a `--url`: `http://host[:port]`, trailing `/` dropped.
pub(crate) fn base_url(url: &str) -> Result<String, CliError> {
    let base = url.trim().trim_end_matches('/');
    let Some(rest) = base.strip_prefix("http://") else {
        let why = if base.starts_with("https://") {
            "https is not supported: use the instance's plain-HTTP address (loopback or a private \
             network)"
        } else {
            "expected http://host:port"
        };
        return Err(CliError::BadUrl {
            url: url.to_owned(),
            why,
        });
    };
    if rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err(CliError::BadUrl {
            url: url.to_owned(),
            why: "expected http://host:port, without a path",
        });
    }
    Ok(base.to_owned())
}

impl AdminApi {
    /// The admin API at `url`, with `token` for the admin routes.
    pub(crate) fn new(url: &str, token: Option<String>) -> Result<Self, CliError> {
        Ok(Self {
            client: http_client()?,
            base: base_url(url)?,
            token: token.filter(|t| !t.trim().is_empty()),
        })
    }

    /// The base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The client, for warming.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Calls `method path`, with the token when `admin`; the JSON body (`null` when empty) of
    /// a 2xx answer, or the error the answer means.
    async fn call(&self, method: Method, path: &str, admin: bool) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let (true, Some(token)) = (admin, &self.token) {
            request = request.bearer_auth(token);
        }
        let http = |why: String| CliError::Http {
            url: url.clone(),
            why,
        };
        let response = request.send().await.map_err(|e| http(error_chain(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| http(error_chain(&e)))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                http(format!(
                    "answered {status} with a body that is not JSON ({e}): is this a scan-api?"
                ))
            })?
        };
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"].as_str().unwrap_or("").to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::MissingToken {
                url: self.base.clone(),
            },
            StatusCode::FORBIDDEN => CliError::WrongToken {
                url: self.base.clone(),
                message,
            },
            _ => CliError::Api {
                request: format!("{method} {url}"),
                status: status.as_u16(),
                message,
            },
        })
    }
}

/// The path of a key's admin route.
fn key_path(key: &str) -> String {
    format!("/api/cache/keys/{}", encode(key))
}

impl Target {
    /// Connects to Redis at `url` with the service's key space (`common`'s `APP_ENV` and
    /// `CACHE_NAMESPACE`); fails if Redis does not answer.
    pub(crate) async fn redis(url: &str, common: &Common) -> Result<Self, CliError> {
        // REDIS_USERNAME, REDIS_PASSWORD and REDIS_DB from the environment, as the service.
        let builder = CacheBuilder::from_env()
            .mode(Mode::Redis)
            .url(url)
            .cluster_urls(Vec::<String>::new());
        Self::connect(builder, redact(url), common).await
    }

    /// Connects to the Redis Cluster of the seed nodes `urls` (`REDIS_CLUSTER_URLS`), as
    /// [`redis`](Self::redis) does to one server.
    pub(crate) async fn redis_cluster(urls: &[String], common: &Common) -> Result<Self, CliError> {
        let builder = CacheBuilder::from_env()
            .mode(Mode::Redis)
            .cluster_urls(urls.to_vec());
        let seeds: Vec<String> = urls.iter().map(|u| redact(u)).collect();
        Self::connect(builder, format!("cluster {}", seeds.join(",")), common).await
    }

    async fn connect(
        builder: CacheBuilder,
        url: String,
        common: &Common,
    ) -> Result<Self, CliError> {
        let builder = builder
            .namespace(common.cache_namespace.clone())
            .env_prefix(common.app_env.clone());
        let cache = cache_policy::configure(builder)
            .local_capacity(0)
            .op_timeout(REDIS_OP_TIMEOUT)
            .build()
            .await
            .map_err(CliError::Cache)?;
        if !cache.is_connected() {
            return Err(CliError::RedisUnreachable { url });
        }
        Ok(Self::Redis { cache, url })
    }

    /// The cache's figures: `GET /api/cache/stats`, or what Redis itself knows.
    pub(crate) async fn stats(&self) -> Result<Value, CliError> {
        match self {
            Self::Api(api) => api.call(Method::GET, "/api/cache/stats", false).await,
            Self::Redis { cache, url } => {
                let s = cache.stats().await;
                if !s.connected {
                    return Err(CliError::RedisUnreachable { url: url.clone() });
                }
                Ok(json!({
                    "mode": s.mode,
                    "connected": s.connected,
                    "total_keys": s.keys,
                    "memory_used": s.used_memory_human,
                    "memory_used_bytes": s.used_memory_bytes,
                    "evictions": s.evicted_keys,
                    "namespace": cache.key_space().prefix(),
                }))
            }
        }
    }

    /// Removes the namespace's keys: `{"removed", "namespace"}`.
    pub(crate) async fn clear(&self) -> Result<Value, CliError> {
        match self {
            Self::Api(api) => api.call(Method::POST, "/api/cache/clear", true).await,
            Self::Redis { cache, .. } => {
                let removed = cache.clear().await.map_err(CliError::Cache)?;
                Ok(json!({ "removed": removed, "namespace": cache.key_space().prefix() }))
            }
        }
    }

    /// Up to `limit` keys matching `pattern` (relative to the namespace, or with its prefix):
    /// `{"pattern", "count", "keys"}`.
    pub(crate) async fn keys(
        &self,
        pattern: Option<&str>,
        limit: usize,
    ) -> Result<Value, CliError> {
        if !(1..=MAX_KEYS_LIMIT).contains(&limit) {
            return Err(CliError::Usage(format!(
                "--limit must be from 1 to {MAX_KEYS_LIMIT}, got {limit}"
            )));
        }
        match self {
            Self::Api(api) => {
                let mut path = format!("/api/cache/keys?limit={limit}");
                if let Some(p) = pattern {
                    path.push_str(&format!("&pattern={}", encode(p)));
                }
                api.call(Method::GET, &path, true).await
            }
            Self::Redis { cache, .. } => {
                let glob = pattern.unwrap_or("*");
                let prefix = cache.key_space().prefix();
                let relative = glob.strip_prefix(prefix).unwrap_or(glob);
                let pattern = cache.key_space().glob(relative);
                let keys = cache.keys(&pattern, limit).await.map_err(CliError::Cache)?;
                Ok(json!({ "pattern": pattern.as_str(), "count": keys.len(), "keys": keys }))
            }
        }
    }

    /// A key's TTL and stored size: `{"key", "size_bytes", "ttl_ms"}`.
    pub(crate) async fn get(&self, key: &str) -> Result<Value, CliError> {
        match self {
            Self::Api(api) => not_found_is(key, api.call(Method::GET, &key_path(key), true).await),
            Self::Redis { cache, .. } => {
                check_key(cache, key)?;
                let size = cache.stored_size(key).await.map_err(CliError::Cache)?;
                let ttl = cache.raw_ttl(key).await.map_err(CliError::Cache)?;
                if size == 0 {
                    return Err(CliError::NoSuchKey(key.to_owned()));
                }
                Ok(json!({
                    "key": key,
                    "size_bytes": size,
                    "ttl_ms": ttl.map(|t| t.as_millis() as u64),
                }))
            }
        }
    }

    /// Deletes a key: `{"deleted"}`.
    pub(crate) async fn del(&self, key: &str) -> Result<Value, CliError> {
        match self {
            Self::Api(api) => {
                not_found_is(key, api.call(Method::DELETE, &key_path(key), true).await)?;
            }
            Self::Redis { cache, .. } => {
                check_key(cache, key)?;
                if !cache.invalidate_raw(key).await.map_err(CliError::Cache)? {
                    return Err(CliError::NoSuchKey(key.to_owned()));
                }
            }
        }
        Ok(json!({ "deleted": key }))
    }
}

/// A 404 from a key route as [`CliError::NoSuchKey`].
fn not_found_is(key: &str, answer: Result<Value, CliError>) -> Result<Value, CliError> {
    match answer {
        Err(CliError::Api { status: 404, .. }) => Err(CliError::NoSuchKey(key.to_owned())),
        other => other,
    }
}

fn check_key(cache: &Cache, key: &str) -> Result<(), CliError> {
    if cache.key_space().contains(key) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "key {key:?} is outside this cache's namespace `{}` (set APP_ENV and \
             CACHE_NAMESPACE as the service has them)",
            cache.key_space().prefix()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_base_urls_are_taken() {
        assert_eq!(
            base_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in ["https://h:1", "h:1", "http://", "http://h:1/api"] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        assert!(
            base_url("https://h")
                .unwrap_err()
                .to_string()
                .contains("https is not supported")
        );
    }
}
