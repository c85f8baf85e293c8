//! Behaviour of `#[cached]` fns against real `redis-server` processes (one per test, through
//! `tiercache-testkit`), with and without the in-process tier, and in standalone mode.
//!
//! Set `TEST_LOG=1` to see the library's logs.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod helpers;

mod keys;
mod loading;
