//! The [`ResponseCache`] service: answers a GET or HEAD from the cache, or runs the route and
//! stores what may be shared; passes everything else through.
//!
//! The way of one GET:
//! 1. **Bypass** (`X-Cache: BYPASS`, the route runs as if uncached) when the request has a body,
//!    says `Cache-Control: no-store` or `private`, carries `Authorization` or `Cookie` on a route
//!    that does not cache per user, or the cache is disabled.
//! 2. The key: the [`MakeCacheKey`]'s parts for the request and the headers the route varies on,
//!    with the policy's category, TTL and tags.
//! 3. [`Cache::try_get_with_status`]: a hit answers at once; concurrent misses of one key run the
//!    route once, through the core's coalescing and its stale-set guard (a response the route
//!    produced while a write purged one of its tags is not stored). While Redis is away the
//!    route runs and the answer says `BYPASS`.
//! 4. A response that may not be shared (not a 200, `Set-Cookie`, `no-store`/`private`/
//!    `no-cache`, `Vary: *` or an unknown `Vary`, a body over the limit) is not stored: its own
//!    request gets it untouched but for `X-Cache: MISS` (a large body streams through, never
//!    buffered whole), and requests that were waiting on that load run the route themselves —
//!    such a response may be meant for one client, or predate a write they saw acknowledged.
//! 5. Every stored answer carries a strong `ETag`; a matching `If-None-Match` gets a `304`.
//!
//! A HEAD is answered from the GET entry of the same URI when there is one, and otherwise runs
//! the route (a HEAD does not fill the cache: it has no body to store).

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tiercache::{Cache, CacheStatus, Key, Mode};
use tower::{Service, ServiceExt};

use super::future::ResponseFuture;
use super::key::MakeCacheKey;
use super::policy::{CachePolicy, RequestView};
use super::stored::{Refusal, Stored, X_CACHE, check_head, request_forbids};

/// Caches a route's responses; built by [`ResponseCacheLayer`](super::ResponseCacheLayer).
#[derive(Debug)]
pub struct ResponseCache<S, K> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K> Clone for ResponseCache<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// What every clone of one route's service shares.
#[derive(Debug)]
pub(crate) struct Shared<K> {
    pub(crate) cache: Cache,
    pub(crate) policy: CachePolicy,
    pub(crate) make_key: K,
    /// `Vary` names this route's responses named beyond the policy's, learned from them.
    /// A std lock: held only to copy or extend a short list, never across an await.
    pub(crate) learned: RwLock<Vec<HeaderName>>,
}

impl<S, K> ResponseCache<S, K> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K>>) -> Self {
        Self { inner, shared }
    }
}

impl<S, K> Service<Request> for ResponseCache<S, K>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    K: MakeCacheKey,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    /// Always ready: the inner service is driven to readiness when (and each time) it is
    /// called, as a hit does not call it at all and a waiter may call it after a shared load.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ResponseFuture {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        ResponseFuture::new(async move {
            let response = shared.respond(inner, request).await;
            // On the request's span (entered while this future is polled), if it declared it.
            if let Some(outcome) = response
                .headers()
                .get(X_CACHE)
                .and_then(|v| v.to_str().ok())
            {
                tracing::Span::current().record(super::SPAN_FIELD, outcome);
            }
            Ok(response)
        })
    }
}

/// The route's answer (its error type is `Infallible`).
async fn run<S>(inner: S, request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.oneshot(request).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

fn with_x_cache(mut response: Response, status: &'static str) -> Response {
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(status));
    response
}

/// Marks a load whose response was not stored (the response itself went to its own caller).
#[derive(Debug)]
struct NotStored;

impl<K: MakeCacheKey> Shared<K> {
    async fn respond<S>(&self, inner: S, request: Request) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send,
        S::Future: Send,
    {
        let method = request.method();
        let head_only = method == Method::HEAD;
        if method != Method::GET && !head_only {
            return run(inner, request).await;
        }
        let (mut parts, body) = request.into_parts();
        if let Some(why) = self.bypass_reason(&parts, &body) {
            tracing::trace!(reason = why, uri = %parts.uri, "response cache bypassed");
            return with_x_cache(run(inner, Request::from_parts(parts, body)).await, "BYPASS");
        }
        let params = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok();
        let vary = self.vary();
        let key = {
            let view = RequestView::new(&parts, params.as_ref());
            let Some(key_parts) = self.make_key.make_key(&view, &vary) else {
                return with_x_cache(run(inner, Request::from_parts(parts, body)).await, "BYPASS");
            };
            let key = self
                .cache
                .key(&self.policy.category, key_parts)
                .with_tags(self.policy.tags_for(&view));
            match self.policy.ttl {
                Some(ttl) => key.with_ttl(ttl),
                None => key,
            }
        };
        if head_only {
            return self.head(inner, parts, body, &key).await;
        }
        self.get(inner, parts, &key, &vary).await
    }

    fn bypass_reason(&self, parts: &Parts, body: &Body) -> Option<&'static str> {
        if !body.is_end_stream() {
            Some("request body")
        } else if request_forbids(&parts.headers) {
            Some("request cache-control")
        } else if !self.policy.per_user
            && (parts.headers.contains_key(AUTHORIZATION) || parts.headers.contains_key(COOKIE))
        {
            Some("credentials")
        } else if self.cache.mode() == Mode::Disabled {
            Some("cache disabled")
        } else {
            None
        }
    }

    /// The policy's `Vary` names and those learned, sorted.
    fn vary(&self) -> Cow<'_, [HeaderName]> {
        let learned = self.learned.read().unwrap_or_else(PoisonError::into_inner);
        if learned.is_empty() {
            return Cow::Borrowed(&self.policy.vary);
        }
        let mut all: Vec<HeaderName> = self.policy.vary.iter().chain(&*learned).cloned().collect();
        all.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        all.dedup();
        Cow::Owned(all)
    }

    fn learn(&self, names: Vec<HeaderName>) {
        let mut learned = self.learned.write().unwrap_or_else(PoisonError::into_inner);
        for name in names {
            if !learned.contains(&name) {
                tracing::info!(header = %name, category = %self.policy.category.name(), "response cache keys on a Vary header learned from a response");
                learned.push(name);
            }
        }
    }

    /// What an answer that was not stored says: `MISS` while the cache works, `BYPASS` while
    /// its Redis is away.
    fn unstored_status(&self) -> &'static str {
        match self.cache.mode() {
            Mode::Standalone => "MISS",
            Mode::Disabled => "BYPASS",
            _ if self.cache.is_connected() => "MISS",
            _ => "BYPASS",
        }
    }

    async fn head<S>(&self, inner: S, parts: Parts, body: Body, key: &Key) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        if let Some(stored) = self.cache.get::<Stored>(key).await
            && !stored.is_expired()
        {
            return stored.respond(&parts.headers, true, "HIT", true);
        }
        let status = self.unstored_status();
        with_x_cache(run(inner, Request::from_parts(parts, body)).await, status)
    }

    async fn get<S>(&self, inner: S, parts: Parts, key: &Key, vary: &[HeaderName]) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send,
        S::Future: Send,
    {
        // A cached 404 past its own (short) life is dropped and loaded again, once.
        for _ in 0..2 {
            // This request's own response when it is not stored (only this request's load
            // writes here). A std lock: never held across an await.
            let own: Mutex<Option<Response>> = Mutex::new(None);
            let (route, own_slot, request) = (
                inner.clone(),
                &own,
                Request::from_parts(parts.clone(), Body::empty()),
            );
            let load = async move {
                let response = run(route, request).await;
                self.store(response, vary).await.map_err(|response| {
                    *own_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(*response);
                    NotStored
                })
            };
            match self
                .cache
                .try_get_with_status::<Stored, _, _>(key, load)
                .await
            {
                Ok((stored, _)) if stored.is_expired() => {
                    self.cache.invalidate(key).await;
                }
                Ok((stored, status)) => {
                    return stored.respond(
                        &parts.headers,
                        false,
                        status.as_str(),
                        status == CacheStatus::Hit,
                    );
                }
                Err(_) => {
                    let status = self.unstored_status();
                    let own = own.into_inner().unwrap_or_else(PoisonError::into_inner);
                    return match own {
                        Some(response) => with_x_cache(response, status),
                        // Another request's load was not stored: run the route for this one.
                        None => with_x_cache(
                            run(inner, Request::from_parts(parts, Body::empty())).await,
                            status,
                        ),
                    };
                }
            }
        }
        let status = self.unstored_status();
        with_x_cache(
            run(inner, Request::from_parts(parts, Body::empty())).await,
            status,
        )
    }

    /// Reads `response` for storing: `Ok` with the stored form, or `Err` with the response to
    /// pass on as it is (its body streamed on when it was too large to buffer).
    async fn store(
        &self,
        response: Response,
        vary: &[HeaderName],
    ) -> Result<Stored, Box<Response>> {
        let (head, body) = response.into_parts();
        let not_found = self.policy.not_found_ttl.is_some();
        let refuse = |why: Refusal, head, body| {
            tracing::debug!(
                reason = why.as_str(),
                category = %self.policy.category.name(),
                "response not cached"
            );
            Err(Box::new(Response::from_parts(head, body)))
        };
        if let Err((why, learn)) = check_head(&head, not_found, vary) {
            if !learn.is_empty() {
                self.learn(learn);
            }
            return refuse(why, head, body);
        }
        let max = self.policy.max_body;
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) || body.size_hint().lower() > max as u64 {
            return refuse(Refusal::TooLarge, head, body);
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut body = body;
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if buf.len() + data.len() > max => {
                        // Too large after all: what was read goes first, the rest streams on.
                        let read = [Ok(Bytes::from(buf)), Ok(data)];
                        let rest = futures_util::stream::iter(read).chain(body.into_data_stream());
                        return refuse(Refusal::TooLarge, head, Body::from_stream(rest));
                    }
                    Ok(data) => buf.extend_from_slice(&data),
                    // Trailers: not kept in the cache, so not stored; the data read goes on.
                    Err(_) => return refuse(Refusal::Body, head, Body::from(buf)),
                },
                Some(Err(e)) => {
                    let read = [Ok(Bytes::from(buf)), Err(e)];
                    return refuse(
                        Refusal::Body,
                        head,
                        Body::from_stream(futures_util::stream::iter(read)),
                    );
                }
            }
        }
        Ok(Stored::new(
            &head,
            Bytes::from(buf),
            self.policy.not_found_ttl,
        ))
    }
}
