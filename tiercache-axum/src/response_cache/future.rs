//! [`ResponseFuture`]: the future of a [`ResponseCache`](super::ResponseCache) call.
//!
//! A named type over a boxed future: a call awaits the cache (Redis, coalesced loads) and the
//! route in an order decided at run time, which a hand-written state machine would only
//! restate; the box costs one allocation per request, beside a route's many.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::Response;

/// The answer of a [`ResponseCache`](super::ResponseCache) service.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
}

impl ResponseFuture {
    pub(crate) fn new(
        f: impl Future<Output = Result<Response, Infallible>> + Send + 'static,
    ) -> Self {
        Self { inner: Box::pin(f) }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
