//! A cached response, and the HTTP rules around it: which responses may be stored, the strong
//! `ETag` of a stored body, `If-None-Match` and the `304` it answers, `Age`.
//!
//! The value kept in the cache is one [`Stored`]: status, headers (without hop-by-hop ones and
//! without `Date`, `Age` or `X-Cache`, which are set per answer), the body, its `ETag`, and when
//! it was stored. It sits behind an `Arc`, so a hit in the in-process tier clones a pointer, and
//! the body is [`Bytes`], so building the answer copies no body byte.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES,
    IF_NONE_MATCH, SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, response};
use axum::response::Response;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::key::hex;

/// The header that says whether an answer came from the cache: `HIT`, `MISS` or `BYPASS`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A stored response. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub(crate) struct Stored(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The handler's own `ETag` as it gave it, or a strong content hash (`"…"`).
    etag: HeaderValue,
    /// Unix milliseconds, for `Age`.
    stored_at: u64,
    /// Unix milliseconds after which it is not served (a cached 404's own short life).
    expires_at: Option<u64>,
}

/// The wire form of [`Stored`] (read back as `Owned`, field for field).
#[derive(Serialize)]
struct Wire<'a> {
    status: u16,
    headers: Vec<(&'a str, &'a serde_bytes::Bytes)>,
    body: &'a serde_bytes::Bytes,
    etag: &'a serde_bytes::Bytes,
    stored_at: u64,
    expires_at: Option<u64>,
}

impl Serialize for Stored {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let i = &self.0;
        Wire {
            status: i.status.as_u16(),
            headers: i
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), serde_bytes::Bytes::new(v.as_bytes())))
                .collect(),
            body: serde_bytes::Bytes::new(&i.body),
            etag: serde_bytes::Bytes::new(i.etag.as_bytes()),
            stored_at: i.stored_at,
            expires_at: i.expires_at,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Owned: the codec may hand out a buffer that does not outlive the call.
        #[derive(Deserialize)]
        struct Owned {
            status: u16,
            headers: Vec<(String, serde_bytes::ByteBuf)>,
            body: serde_bytes::ByteBuf,
            etag: serde_bytes::ByteBuf,
            stored_at: u64,
            expires_at: Option<u64>,
        }
        let w = Owned::deserialize(d)?;
        let status = StatusCode::from_u16(w.status).map_err(D::Error::custom)?;
        let mut headers = HeaderMap::with_capacity(w.headers.len());
        for (name, value) in w.headers {
            let name = HeaderName::try_from(name).map_err(D::Error::custom)?;
            let value = HeaderValue::from_bytes(&value).map_err(D::Error::custom)?;
            headers.append(name, value);
        }
        let etag = HeaderValue::from_bytes(&w.etag).map_err(D::Error::custom)?;
        Ok(Stored(Arc::new(Inner {
            status,
            headers,
            body: Bytes::from(w.body.into_vec()),
            etag,
            stored_at: w.stored_at,
            expires_at: w.expires_at,
        })))
    }
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a 200 (nor a 404 on a route that caches them).
    Status,
    /// It sets a cookie: it belongs to one client.
    SetCookie,
    /// `Cache-Control: no-store`, `private` or `no-cache`.
    CacheControl,
    /// `Vary: *`.
    VaryAll,
    /// It varies on a header the key did not include (learned for the next request).
    VaryUnknown,
    /// Larger than the route's limit.
    TooLarge,
    /// Its body failed, or has trailers.
    Body,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::SetCookie => "set-cookie",
            Self::CacheControl => "cache-control",
            Self::VaryAll => "vary-all",
            Self::VaryUnknown => "vary-unknown",
            Self::TooLarge => "too-large",
            Self::Body => "body",
        }
    }
}

/// Whether the response head may be stored, given the route's rules and the headers its key
/// varies on. `Err(VaryUnknown)` comes with the header names to learn.
pub(crate) fn check_head(
    head: &response::Parts,
    not_found: bool,
    keyed_vary: &[HeaderName],
) -> Result<(), (Refusal, Vec<HeaderName>)> {
    let status_ok =
        head.status == StatusCode::OK || (not_found && head.status == StatusCode::NOT_FOUND);
    if !status_ok {
        return Err((Refusal::Status, Vec::new()));
    }
    if head.headers.contains_key(SET_COOKIE) {
        return Err((Refusal::SetCookie, Vec::new()));
    }
    if forbids_storing(&head.headers) {
        return Err((Refusal::CacheControl, Vec::new()));
    }
    let mut unknown = Vec::new();
    for name in vary_names(&head.headers) {
        match name {
            None => return Err((Refusal::VaryAll, Vec::new())),
            Some(name) if !keyed_vary.contains(&name) => unknown.push(name),
            Some(_) => {}
        }
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err((Refusal::VaryUnknown, unknown))
    }
}

/// The names a `Vary` lists (`None` for `*`), lower-case.
fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = Option<HeaderName>> + '_ {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            if n == "*" {
                None
            } else {
                // An unparsable name can never be keyed on: treat it like `*`.
                HeaderName::try_from(n.to_ascii_lowercase()).ok()
            }
        })
}

/// `Cache-Control: no-store`, `private` or `no-cache` (on a request: `no-store` or `private`
/// only; a client's `no-cache` does not force the server past its own cache).
pub(crate) fn forbids_storing(headers: &HeaderMap) -> bool {
    directives(headers).any(|d| d == "no-store" || d == "private" || d == "no-cache")
}

/// A request's `Cache-Control: no-store` or `private`.
pub(crate) fn request_forbids(headers: &HeaderMap) -> bool {
    directives(headers).any(|d| d == "no-store" || d == "private")
}

fn directives(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Stored {
    /// Stores a response whose head passed [`check_head`], with `body` read whole. A 404 lives
    /// `not_found_ttl` at most.
    pub(crate) fn new(
        head: &response::Parts,
        body: Bytes,
        not_found_ttl: Option<Duration>,
    ) -> Self {
        let mut headers = head.headers.clone();
        for name in [
            CONNECTION,
            TRANSFER_ENCODING,
            CONTENT_LENGTH,
            DATE,
            AGE,
            X_CACHE,
            HeaderName::from_static("keep-alive"),
        ] {
            headers.remove(name);
        }
        let etag = headers
            .remove(ETAG)
            .unwrap_or_else(|| content_etag(&headers, &body));
        let stored_at = now_ms();
        let expires_at = (head.status == StatusCode::NOT_FOUND)
            .then(|| {
                not_found_ttl.map(|t| {
                    stored_at.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                })
            })
            .flatten();
        Self(Arc::new(Inner {
            status: head.status,
            headers,
            body,
            etag,
            stored_at,
            expires_at,
        }))
    }

    /// Past its own expiry (a cached 404's).
    pub(crate) fn is_expired(&self) -> bool {
        self.0.expires_at.is_some_and(|at| now_ms() >= at)
    }

    /// The answer to a request with `request_headers`: a `304` when its `If-None-Match` matches,
    /// else the stored response (without its body for a `HEAD`). `age` adds the `Age` header
    /// (for hits).
    pub(crate) fn respond(
        &self,
        request_headers: &HeaderMap,
        head_only: bool,
        x_cache: &'static str,
        age: bool,
    ) -> Response {
        let i = &self.0;
        let not_modified = i.status == StatusCode::OK && if_none_match(request_headers, &i.etag);
        let mut response = if not_modified {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            let h = r.headers_mut();
            // RFC 9110 §15.4.5: what a 200 would have carried of these.
            for name in [CONTENT_LOCATION, VARY, CACHE_CONTROL, EXPIRES] {
                for v in i.headers.get_all(&name) {
                    h.append(name.clone(), v.clone());
                }
            }
            r
        } else {
            let body = if head_only {
                Body::empty()
            } else {
                Body::from(i.body.clone())
            };
            let mut r = Response::new(body);
            *r.status_mut() = i.status;
            *r.headers_mut() = i.headers.clone();
            if head_only {
                r.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(i.body.len()));
            }
            r
        };
        let h = response.headers_mut();
        h.insert(ETAG, i.etag.clone());
        if age {
            let secs = now_ms().saturating_sub(i.stored_at) / 1000;
            h.insert(AGE, HeaderValue::from(secs));
        }
        h.insert(X_CACHE, HeaderValue::from_static(x_cache));
        response
    }
}

/// A strong `ETag` from the body and the headers that change its meaning: the same bytes give
/// the same tag in every process, across restarts.
fn content_etag(headers: &HeaderMap, body: &[u8]) -> HeaderValue {
    let mut h = Sha256::new();
    for name in [
        axum::http::header::CONTENT_TYPE,
        axum::http::header::CONTENT_ENCODING,
        axum::http::header::CONTENT_LANGUAGE,
    ] {
        for v in headers.get_all(&name) {
            h.update(name.as_str());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
    h.update(body);
    let digest = h.finalize();
    let tag = format!("\"{}\"", hex(&digest[..16]));
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// Whether `If-None-Match` matches `etag`, by weak comparison (RFC 9110 §13.1.2): `*`, or any
/// listed tag with the same opaque part, `W/` or not.
pub(crate) fn if_none_match(request_headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = opaque(etag.as_bytes());
    request_headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| t == b"*" || opaque(t) == ours)
}

fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use axum::http::header::CONTENT_TYPE;

    use super::*;

    fn head(status: u16, headers: &[(HeaderName, &str)]) -> response::Parts {
        let mut b = Response::builder().status(status);
        for (n, v) in headers {
            b = b.header(n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_shareable_answers_are_stored() {
        assert!(check_head(&head(200, &[]), false, &[]).is_ok());
        assert_eq!(
            check_head(&head(404, &[]), false, &[]).unwrap_err().0,
            Refusal::Status
        );
        assert!(check_head(&head(404, &[]), true, &[]).is_ok());
        assert_eq!(
            check_head(&head(500, &[]), true, &[]).unwrap_err().0,
            Refusal::Status
        );
        assert_eq!(
            check_head(&head(200, &[(SET_COOKIE, "a=b")]), false, &[])
                .unwrap_err()
                .0,
            Refusal::SetCookie
        );
        for cc in [
            "no-store",
            "private",
            "max-age=0, no-cache",
            "Private=\"x\"",
        ] {
            assert_eq!(
                check_head(&head(200, &[(CACHE_CONTROL, cc)]), false, &[])
                    .unwrap_err()
                    .0,
                Refusal::CacheControl,
                "{cc}"
            );
        }
        assert!(check_head(&head(200, &[(CACHE_CONTROL, "max-age=60")]), false, &[]).is_ok());
        assert_eq!(
            check_head(&head(200, &[(VARY, "*")]), false, &[])
                .unwrap_err()
                .0,
            Refusal::VaryAll
        );
        let lang = HeaderName::from_static("accept-language");
        let (why, learn) =
            check_head(&head(200, &[(VARY, "Accept-Language")]), false, &[]).unwrap_err();
        assert_eq!((why, learn), (Refusal::VaryUnknown, vec![lang.clone()]));
        assert!(check_head(&head(200, &[(VARY, "Accept-Language")]), false, &[lang]).is_ok());
    }

    #[test]
    fn etags_are_strong_content_hashes_and_match_weakly() {
        let h = head(200, &[(CONTENT_TYPE, "application/json")]);
        let a = Stored::new(&h, Bytes::from_static(b"{}"), None);
        let b = Stored::new(&h, Bytes::from_static(b"{}"), None);
        let c = Stored::new(&h, Bytes::from_static(b"[]"), None);
        assert_eq!(a.0.etag, b.0.etag);
        assert_ne!(a.0.etag, c.0.etag);
        let tag = a.0.etag.to_str().unwrap().to_owned();
        assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"));
        let mut req = HeaderMap::new();
        req.insert(IF_NONE_MATCH, format!("\"x\", W/{tag}").parse().unwrap());
        assert!(if_none_match(&req, &a.0.etag));
        assert!(!if_none_match(&req, &c.0.etag));
        req.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&req, &c.0.etag));
    }

    #[test]
    fn a_304_carries_what_rfc_9110_asks_and_no_body() {
        let h = head(
            200,
            &[
                (CONTENT_TYPE, "application/json"),
                (VARY, "accept-language"),
                (CACHE_CONTROL, "max-age=60"),
            ],
        );
        let s = Stored::new(&h, Bytes::from_static(b"{\"a\":1}"), None);
        let mut req = HeaderMap::new();
        req.insert(IF_NONE_MATCH, s.0.etag.clone());
        let r = s.respond(&req, false, "HIT", true);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        for name in [ETAG, VARY, CACHE_CONTROL, AGE, X_CACHE] {
            assert!(r.headers().contains_key(&name), "{name}");
        }
        assert!(!r.headers().contains_key(CONTENT_TYPE));
        let full = s.respond(&HeaderMap::new(), false, "MISS", false);
        assert_eq!(full.status(), StatusCode::OK);
        assert!(!full.headers().contains_key(AGE));
    }

    #[test]
    fn a_stored_response_survives_its_encoding() {
        let h = head(
            200,
            &[(CONTENT_TYPE, "text/plain"), (VARY, "a"), (VARY, "b")],
        );
        let s = Stored::new(&h, Bytes::from_static(b"hello"), None);
        let bytes = serde_json::to_vec(&s).unwrap();
        let back: Stored = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.0.body, s.0.body);
        assert_eq!(back.0.headers, s.0.headers);
        assert_eq!(back.0.etag, s.0.etag);
        assert_eq!(back.0.status, s.0.status);
    }
}
