//! Purging by tags after a write: [`PurgeLayer`] on a write route, and [`Purge`], the response
//! part through which a handler names the tags its write changed.
//!
//! A purge is [`Cache::invalidate_tags`]: the same tag invalidation that makes data entries
//! stale, so cached responses and cached data never disagree, and it reaches every instance.
//!
//! The route and its purge run in a task of their own: if the client goes away after the write
//! committed, the request's future is dropped, but the purge still happens before anyone could
//! be told the write succeeded. A purge is made only for a successful (2xx) answer, after the
//! route answered and before the answer leaves.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use tiercache::{Cache, Tag};
use tower::{Layer, Service, ServiceExt};

use super::future::ResponseFuture;
use super::policy::RequestView;

/// Tags a handler's write changed, returned as a response part:
/// `(StatusCode::CREATED, Purge::tags(tags), Json(body))`. The [`PurgeLayer`] around the route
/// invalidates them; the part itself never reaches the client.
#[derive(Clone, Debug, Default)]
pub struct Purge(Vec<Tag>);

impl Purge {
    /// Purge `tags`.
    pub fn tags(tags: impl IntoIterator<Item = Tag>) -> Self {
        Self(tags.into_iter().collect())
    }
}

/// A write with nothing else to say: `200 OK`, empty, purging the tags.
impl IntoResponse for Purge {
    fn into_response(self) -> Response {
        let mut response = StatusCode::OK.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

impl IntoResponseParts for Purge {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Infallible> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

type TagsFn = Arc<dyn Fn(&RequestView<'_>) -> Vec<Tag> + Send + Sync>;

/// Purges tags after a successful write: those its handler returned as [`Purge`], and those
/// [`tags_from`](Self::tags_from) reads off the request.
#[derive(Clone)]
#[must_use]
pub struct PurgeLayer {
    cache: Cache,
    tags_from: Option<TagsFn>,
}

impl std::fmt::Debug for PurgeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeLayer")
            .field("tags_from", &self.tags_from.is_some())
            .finish_non_exhaustive()
    }
}

impl PurgeLayer {
    /// Purges in `cache` the tags handlers return as [`Purge`].
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            tags_from: None,
        }
    }

    /// Also purges tags read off the request (path parameters, query), such as
    /// `image:{name}` for `DELETE /images/{name}`.
    pub fn tags_from<F>(mut self, tags: F) -> Self
    where
        F: Fn(&RequestView<'_>) -> Vec<Tag> + Send + Sync + 'static,
    {
        self.tags_from = Some(Arc::new(tags));
        self
    }
}

impl<S> Layer<S> for PurgeLayer {
    type Service = PurgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PurgeService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`PurgeLayer`].
#[derive(Clone, Debug)]
pub struct PurgeService<S> {
    inner: S,
    layer: PurgeLayer,
}

impl<S> Service<Request> for PurgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ResponseFuture {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        ResponseFuture::new(async move {
            let task = tokio::spawn(async move { layer.run(inner, request).await });
            Ok(task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "write route failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }))
        })
    }
}

impl PurgeLayer {
    async fn run<S>(&self, inner: S, request: Request) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let (mut parts, body) = request.into_parts();
        let mut tags = match &self.tags_from {
            Some(from) => {
                let params = RawPathParams::from_request_parts(&mut parts, &())
                    .await
                    .ok();
                from(&RequestView::new(&parts, params.as_ref()))
            }
            None => Vec::new(),
        };
        let route = parts.uri.path().to_owned();
        let method = parts.method.clone();
        let mut response = match inner.oneshot(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let returned = response.extensions_mut().remove::<Purge>();
        if !response.status().is_success() {
            return response;
        }
        tags.extend(returned.map(|p| p.0).unwrap_or_default());
        tags.sort_unstable();
        tags.dedup();
        if !tags.is_empty() {
            self.cache.invalidate_tags(&tags).await;
            tracing::info!(
                %method,
                route,
                tags = ?tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
                "cache purged after write"
            );
        }
        response
    }
}
