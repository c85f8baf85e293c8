//! Which cache entry a request reads: the [`MakeCacheKey`] policy trait and its default,
//! [`DefaultCacheKey`].
//!
//! A key maker returns the *parts* of a key; the layer turns them into a [`tiercache::Key`]
//! through the cache's key space, which escapes every part, so a path or a query value can
//! neither collide with another request's key nor leave the namespace.

use axum::http::HeaderName;
use axum::http::header::{AUTHORIZATION, COOKIE};
use sha2::{Digest, Sha256};

use super::policy::RequestView;

/// Makes the key parts of a cacheable request, or `None` to let it bypass the cache.
///
/// `vary` are the request headers the route's responses vary on (declared and learned, sorted):
/// a key must tell apart requests whose values of those headers differ, or one user would be
/// served another's variant.
pub trait MakeCacheKey: Clone + Send + Sync + 'static {
    /// The parts of the key for `request`.
    fn make_key(&self, request: &RequestView<'_>, vary: &[HeaderName]) -> Option<Vec<String>>;
}

/// The default key: method, path, the query normalized (decoded pairs sorted, so `?b=1&a=2`
/// and `?a=2&b=1` share an entry), the values of the `vary` headers and, on routes that cache
/// per user, a SHA-256 of the request's `Authorization` and `Cookie` (never the credentials
/// themselves). A `HEAD` reads the entry of the `GET` of the same URI.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultCacheKey;

impl MakeCacheKey for DefaultCacheKey {
    fn make_key(&self, request: &RequestView<'_>, vary: &[HeaderName]) -> Option<Vec<String>> {
        let uri = request.uri();
        let mut parts = vec!["GET".to_owned(), uri.path().to_owned()];
        if let Some(q) = uri.query() {
            let mut pairs: Vec<(String, String)> =
                form_urlencoded::parse(q.as_bytes()).into_owned().collect();
            pairs.sort_unstable();
            parts.push("?".to_owned());
            for (k, v) in pairs {
                parts.push(k);
                parts.push(v);
            }
        }
        let headers = request.headers();
        for name in vary {
            parts.push(format!("vary:{name}"));
            let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
            parts.push(String::from_utf8_lossy(&values.join(&b","[..])).into_owned());
        }
        if headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE) {
            let mut user = Sha256::new();
            for name in [AUTHORIZATION, COOKIE] {
                for v in headers.get_all(&name) {
                    user.update(name.as_str());
                    user.update([0]);
                    user.update(v.as_bytes());
                    user.update([0]);
                }
            }
            let digest = user.finalize();
            parts.push("user".to_owned());
            parts.push(hex(&digest[..16]));
        }
        Some(parts)
    }
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use axum::http::header::ACCEPT_LANGUAGE;

    use super::*;

    fn key(uri: &str, headers: &[(HeaderName, &str)], vary: &[HeaderName]) -> Vec<String> {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(n, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        DefaultCacheKey
            .make_key(&RequestView::new(&parts, None), vary)
            .unwrap()
    }

    #[test]
    fn the_query_is_normalized_and_the_path_kept() {
        assert_eq!(key("/a?b=1&a=2", &[], &[]), key("/a?a=2&b=1", &[], &[]));
        assert_eq!(key("/a?x=%2A", &[], &[]), key("/a?x=*", &[], &[]));
        assert_ne!(key("/a?x=1", &[], &[]), key("/a?x=2", &[], &[]));
        assert_ne!(key("/a/b", &[], &[]), key("/a%2Fb", &[], &[]));
    }

    #[test]
    fn vary_headers_and_users_tell_entries_apart() {
        let v = [ACCEPT_LANGUAGE];
        let en = key("/a", &[(ACCEPT_LANGUAGE, "en")], &v);
        let fr = key("/a", &[(ACCEPT_LANGUAGE, "fr")], &v);
        assert_ne!(en, fr);
        assert_eq!(
            key("/a", &[(ACCEPT_LANGUAGE, "en")], &[]),
            key("/a", &[(ACCEPT_LANGUAGE, "fr")], &[]),
            "not a key part unless the route varies on it"
        );
        let alice = key("/a", &[(AUTHORIZATION, "Bearer alice")], &[]);
        let bob = key("/a", &[(AUTHORIZATION, "Bearer bob")], &[]);
        assert_ne!(alice, bob);
        assert!(
            !alice.concat().contains("alice"),
            "credentials are hashed, never stored"
        );
    }
}
