//! The scan-api over HTTP, against real Redis processes (test-kit) and real databases: an
//! SQLite file per test and a fresh database on a private PostgreSQL cluster per test. The
//! behaviour tests run in both cache modes, Redis and standalone (`helpers::in_each_mode!`);
//! those about Redis itself (faults, instances sharing it, its keys) in Redis mode only.
//!
//! Set `TEST_LOG=1` to see the service's logs.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod helpers;

mod admin;
mod cli;
mod cluster;
mod consistency;
mod dashboard;
mod deploy;
mod errors;
mod fault_matrix;
mod faults;
mod fixtures;
mod http_caching;
mod latest;
mod memory;
mod metrics;
mod modes;
mod openapi;
mod sessions;
mod stats;
