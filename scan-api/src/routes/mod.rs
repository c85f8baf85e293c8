//! The HTTP routes, one file per resource, and what they share: answering from the cache with
//! an `X-Cache` header, and parsing query parameters into clear 400s.

pub mod health;
pub mod images;
pub mod insights;
pub mod scans;
pub mod vulnerabilities;

use std::future::Future;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tiercache::Mode;

use crate::AppState;
use crate::cache_policy::Entry;
use crate::error::AppError;
use crate::model::Severity;

/// The header that says whether an answer came from the cache.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Answers from the cache entry, or runs `load`, caches its JSON and answers with it. Concurrent
/// requests for one entry run `load` once. Errors (a 404, a failing database) are not cached.
pub(crate) async fn cached_json<T, F>(state: &AppState, entry: Entry<'_>, load: F) -> Response
where
    T: Serialize,
    F: Future<Output = Result<T, AppError>>,
{
    let key = entry.key(state.cache.key_space());
    let result = state
        .cache
        .try_get_with_status(&key, async {
            let value = load.await.inspect_err(|e| {
                if e.status_code().is_server_error() {
                    e.log();
                }
            })?;
            serde_json::to_vec(&value)
                .map(JsonBody)
                .map_err(|e| AppError::Internal(format!("encoding JSON: {e}")))
        })
        .await;
    match result {
        Ok((JsonBody(body), status)) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (X_CACHE, HeaderValue::from_static(status.as_str())),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            // Errors are never cached: the request missed, or bypassed a cache that is off or
            // whose Redis is away. A standalone cache is never away (and never "connected").
            let status = match state.cache.mode() {
                Mode::Standalone => "MISS",
                Mode::Disabled => "BYPASS",
                _ if state.cache.is_connected() => "MISS",
                _ => "BYPASS",
            };
            let mut response = e.as_ref().into_response();
            response
                .headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(status));
            response
        }
    }
}

/// A response body as cached: JSON bytes, stored as one byte string.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct JsonBody(#[serde(with = "serde_bytes")] Vec<u8>);

/// Largest `limit` of list endpoints.
pub const MAX_LIMIT: i64 = 1000;
/// Default `limit` of list endpoints.
pub const DEFAULT_LIMIT: i64 = 100;

/// Parses `limit` (default 100, 1..=1000).
pub(crate) fn parse_limit(raw: Option<&str>) -> Result<i64, AppError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.trim().parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(AppError::BadRequest(format!(
                "`limit` must be a whole number from 1 to {MAX_LIMIT}, got {s:?}"
            ))),
        },
    }
}

/// Parses `offset` (default 0, at least 0).
pub(crate) fn parse_offset(raw: Option<&str>) -> Result<i64, AppError> {
    match raw {
        None => Ok(0),
        Some(s) => match s.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(AppError::BadRequest(format!(
                "`offset` must be a whole number of at least 0, got {s:?}"
            ))),
        },
    }
}

/// Parses `severity=CRITICAL,HIGH` into a sorted, deduplicated list (empty for none).
pub(crate) fn parse_severities(raw: Option<&str>) -> Result<Vec<Severity>, AppError> {
    let mut out = Vec::new();
    for part in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let s = Severity::parse(part).ok_or_else(|| {
            AppError::BadRequest(format!(
                "`severity` must be a comma-separated list of CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN; got {part:?}"
            ))
        })?;
        out.push(s);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Parses a scan id from the path.
pub(crate) fn parse_id(raw: &str) -> Result<i64, AppError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(AppError::BadRequest(format!(
            "scan id must be a positive whole number, got {raw:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_with_clear_messages() {
        assert_eq!(parse_limit(None).unwrap(), 100);
        assert_eq!(parse_limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            assert!(
                parse_limit(Some(bad))
                    .unwrap_err()
                    .to_string()
                    .contains("`limit`")
            );
        }
        assert!(parse_offset(Some("-1")).is_err());
        assert_eq!(
            parse_severities(Some("high, CRITICAL,high")).unwrap(),
            vec![Severity::High, Severity::Critical]
        );
        assert!(
            parse_severities(Some("SEVERE"))
                .unwrap_err()
                .to_string()
                .contains("SEVERE")
        );
        assert!(
            parse_id("0").is_err()
                && parse_id("abc").is_err()
                && parse_id("99999999999999999999").is_err()
        );
    }
}
