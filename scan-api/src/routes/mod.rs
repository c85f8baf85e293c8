//! The HTTP routes, one file per resource, and what they share: parsing query parameters into
//! clear 400s. Each resource's `router` applies its cache policy (`cache_policy::Policies`)
//! where it declares its routes; the handlers know nothing of the cache.

pub mod health;
pub mod images;
pub mod insights;
pub mod openapi;
pub mod scans;
pub mod vulnerabilities;

pub use tiercache_axum::response_cache::X_CACHE;

use crate::error::AppError;
use crate::model::Severity;

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
