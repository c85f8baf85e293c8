//! Behaviour of `tiercache-axum` over real HTTP: routers served by `axum::serve` on a free
//! port, each test on its own `redis-server` started through `tiercache-testkit`. Faults are
//! real: tests stop and restart their own Redis.
//!
//! Set `TEST_LOG=1` to see the library's logs.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod helpers;

mod alerts;
mod invalidations;
mod metrics;
mod response_cache;
mod spans;
