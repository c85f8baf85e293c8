//! [`ResponseCacheLayer`]: applies a [`CachePolicy`] to a route.

use std::sync::{Arc, RwLock};

use tiercache::Cache;
use tower::Layer;

use super::key::{DefaultCacheKey, MakeCacheKey};
use super::policy::CachePolicy;
use super::service::{ResponseCache, Shared};

/// Caches the responses of the routes it wraps in a [`Cache`], by a [`CachePolicy`].
///
/// Apply it to one route (`get(handler).layer(...)`), so the policy sits beside the route it
/// governs; each application learns its own `Vary` headers.
#[derive(Clone, Debug)]
#[must_use]
pub struct ResponseCacheLayer<K = DefaultCacheKey> {
    cache: Cache,
    policy: CachePolicy,
    make_key: K,
}

impl ResponseCacheLayer {
    /// Caches responses in `cache` by `policy`, keyed by [`DefaultCacheKey`].
    pub fn new(cache: Cache, policy: CachePolicy) -> Self {
        Self {
            cache,
            policy,
            make_key: DefaultCacheKey,
        }
    }
}

impl<K> ResponseCacheLayer<K> {
    /// Keys entries with `make_key` instead of the default.
    pub fn make_key<K2: MakeCacheKey>(self, make_key: K2) -> ResponseCacheLayer<K2> {
        ResponseCacheLayer {
            cache: self.cache,
            policy: self.policy,
            make_key,
        }
    }
}

impl<S, K: Clone> Layer<S> for ResponseCacheLayer<K> {
    type Service = ResponseCache<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache::new(
            inner,
            Arc::new(Shared {
                cache: self.cache.clone(),
                policy: self.policy.clone(),
                make_key: self.make_key.clone(),
                learned: RwLock::new(Vec::new()),
            }),
        )
    }
}
