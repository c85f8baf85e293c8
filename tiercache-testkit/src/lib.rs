//! Test support for `tiercache`: real `redis-server` processes owned by one test each.
//!
//! Integration tests and benches of the cache must see what happens when Redis goes away,
//! hangs or comes back, and they must never touch a shared or system Redis (port 6379) to
//! do it. [`RedisServer`] spawns a private `redis-server` on a free loopback port in its
//! own temporary directory, so a test can stop, pause (`SIGSTOP`), resume and restart it
//! without disturbing anything else. The process is killed when the value is dropped.
//!
//! `redis-server` must be on `PATH` (`apt-get install redis-server`).
//!
//! # Layout
//!
//! - `redis_server`: [`RedisServer`], the child-process handle, its lifecycle controls
//!   (start, stop, restart, pause, resume) and a minimal RESP client for checks.
//! - `redis_cluster`: [`RedisCluster`], three masters and three replicas (each a
//!   [`RedisServer`]) joined with `redis-cli --cluster create`, with roles and `failover`.
//! - `fault`: [`Fault`], the faults a cache must ride through (a killed, paused or sleeping
//!   Redis, killed connections, OOM, a user switched off, flushes, network faults), made by
//!   name, for the fault matrix and the chaos soak.
//! - `fault_proxy`: [`FaultProxy`], a TCP proxy that makes network faults: added latency, a
//!   black hole (for open connections only, or for all), resets, refusals.
//! - `logs`: [`init_test_logs`], test logging that stays silent unless `TEST_LOG` is set.
//! - `capture`: [`capture()`], the events and spans one test logs, for tests of what is logged.
//! - `exposition`: a strict parser of the Prometheus text format, for tests that scrape
//!   `/metrics`.
//! - `process`: free ports, signals to our own children, and [`wait_until`] for tests.
//! - `postgres_server`: [`PostgresServer`], a private PostgreSQL cluster (`initdb` +
//!   postmaster on a free loopback port) per test or shared by a test binary, with
//!   [`PostgresServer::create_database`] for a fresh database per test. Needs the server
//!   binaries (`apt-get install postgresql`); never touches the system cluster.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tiercache_testkit::RedisServer;
//!
//! let mut server = RedisServer::start();
//! assert_eq!(server.command(&["PING"])?, "+PONG\r\n");
//! let url = server.url(); // "redis://127.0.0.1:<port>/", hand it to the client under test
//! # let _ = url;
//!
//! // A paused server still accepts TCP connections but never answers.
//! server.pause();
//! assert!(server.command_with_timeout(&["PING"], Duration::from_millis(200)).is_err());
//! server.resume();
//! assert_eq!(server.command(&["PING"])?, "+PONG\r\n");
//!
//! // Restart comes back empty on the same port.
//! let port = server.port();
//! server.command(&["SET", "k", "v"])?;
//! server.restart();
//! assert_eq!(server.port(), port);
//! assert_eq!(server.command(&["DBSIZE"])?, ":0\r\n");
//!
//! // Stopped: the port refuses connections until the next restart.
//! server.stop();
//! assert!(server.command(&["PING"]).is_err());
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod capture;
pub mod exposition;
mod fault;
mod fault_proxy;
mod logs;
mod postgres_server;
mod process;
mod redis_cluster;
mod redis_server;

pub use capture::capture;
pub use fault::Fault;
pub use fault_proxy::FaultProxy;
pub use logs::init_test_logs;
pub use postgres_server::PostgresServer;
pub use process::wait_until;
pub use redis_cluster::{RedisCluster, Role};
pub use redis_server::RedisServer;
