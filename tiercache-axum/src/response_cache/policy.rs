//! What one route's responses are cached as: its category and TTL, the tags its entries carry,
//! which request headers its responses vary on, and the opt-ins (per-user entries, cached 404s).
//!
//! A policy is declared where the route is declared (`get(handler).layer(...)`), so reading the
//! router says what is cached, for how long, and which tag purges it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::RawPathParams;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Uri};
use tiercache::{Category, Tag};

/// Default largest body cached: 1 MiB. Larger bodies stream through untouched.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

type TagsFn = Arc<dyn Fn(&RequestView<'_>) -> Vec<Tag> + Send + Sync>;

/// How a route's responses are cached.
///
/// ```
/// use std::time::Duration;
/// use axum::http::header::ACCEPT_LANGUAGE;
/// use tiercache::{Category, Tag};
/// use tiercache_axum::response_cache::CachePolicy;
///
/// const IMAGES: Category = Category::from_static("images");
/// let policy = CachePolicy::new(IMAGES)
///     .ttl(Duration::from_secs(60))
///     // Every entry of this route carries `images`; each one also its own `image:{name}`.
///     .tag(Tag::new("images", Vec::<&str>::new()))
///     .tags_from(|req| req.path_param("name").map(|n| Tag::new("image", [n])).into_iter().collect())
///     .vary([ACCEPT_LANGUAGE])
///     .cache_not_found(Duration::from_secs(5));
/// ```
#[derive(Clone)]
#[must_use]
pub struct CachePolicy {
    pub(crate) category: Category,
    pub(crate) ttl: Option<Duration>,
    pub(crate) tags: Vec<Tag>,
    pub(crate) tags_from: Option<TagsFn>,
    /// Lower-case, sorted, deduplicated.
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) per_user: bool,
    pub(crate) not_found_ttl: Option<Duration>,
    pub(crate) max_body: usize,
}

impl fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachePolicy")
            .field("category", &self.category)
            .field("ttl", &self.ttl)
            .field("tags", &self.tags)
            .field("tags_from", &self.tags_from.is_some())
            .field("vary", &self.vary)
            .field("per_user", &self.per_user)
            .field("not_found_ttl", &self.not_found_ttl)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl CachePolicy {
    /// Responses cached in `category`, for its TTL (the cache's table, or its default).
    pub fn new(category: Category) -> Self {
        Self {
            category,
            ttl: None,
            tags: Vec::new(),
            tags_from: None,
            vary: Vec::new(),
            per_user: false,
            not_found_ttl: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// This route's own TTL instead of its category's.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// A tag every entry of this route carries.
    pub fn tag(mut self, tag: Tag) -> Self {
        self.tags.push(tag);
        self
    }

    /// Tags taken from each request (its path parameters or query), added to those of
    /// [`tag`](Self::tag). Build them with [`Tag::new`], so untrusted text stays inert.
    pub fn tags_from<F>(mut self, tags: F) -> Self
    where
        F: Fn(&RequestView<'_>) -> Vec<Tag> + Send + Sync + 'static,
    {
        self.tags_from = Some(Arc::new(tags));
        self
    }

    /// Request headers this route's responses depend on: their values are part of the key. A
    /// response that names others in its `Vary` teaches the layer those too (its entry is
    /// stored only once the key covers them); `Vary: *` is never cached.
    pub fn vary(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary.extend(headers);
        self.vary
            .sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        self.vary.dedup();
        self
    }

    /// Caches requests that carry `Authorization` or `Cookie` too, each user apart: a hash of
    /// those headers is part of the key. Without it such requests bypass the cache.
    pub fn per_user(mut self) -> Self {
        self.per_user = true;
        self
    }

    /// Caches `404 Not Found` answers too, for `ttl` (keep it short). Only 200s are cached
    /// otherwise.
    pub fn cache_not_found(mut self, ttl: Duration) -> Self {
        self.not_found_ttl = Some(ttl);
        self
    }

    /// Largest body cached, in bytes (default [`DEFAULT_MAX_BODY`]). A larger body is streamed
    /// to the client as it comes, never buffered whole.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The tags of an entry for `request`.
    pub(crate) fn tags_for(&self, request: &RequestView<'_>) -> Vec<Tag> {
        let mut tags = self.tags.clone();
        if let Some(from) = &self.tags_from {
            tags.extend(from(request));
        }
        tags
    }
}

/// A request as a policy or a key maker sees it: its URI, headers, path parameters and query.
#[derive(Debug)]
pub struct RequestView<'a> {
    parts: &'a Parts,
    params: Option<&'a RawPathParams>,
}

impl<'a> RequestView<'a> {
    pub(crate) fn new(parts: &'a Parts, params: Option<&'a RawPathParams>) -> Self {
        Self { parts, params }
    }

    /// The request's URI.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// A path parameter of the matched route (`{name}` or `{*rest}`), percent-decoded.
    pub fn path_param(&self, name: &str) -> Option<&'a str> {
        self.params?
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// A query parameter, decoded (the last one when repeated).
    pub fn query(&self, name: &str) -> Option<Cow<'a, str>> {
        let query = self.parts.uri.query()?;
        form_urlencoded::parse(query.as_bytes())
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .last()
    }
}
