//! Behaviour of `tiercache` against real `redis-server` processes, one per test, started through
//! `tiercache-testkit`. Faults are real: tests stop, pause (SIGSTOP) and restart their own Redis.
//!
//! Set `TEST_LOG=1` to see the library's logs.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod helpers;

mod acl;
mod chaos;
mod cluster;
mod coalescing;
mod encryption;
mod faults;
mod invalidation;
mod local;
mod memory;
mod ops;
mod standalone;
mod stats;
mod tags;
#[cfg(feature = "tls")]
mod tls;
