//! Helpers for the servers' child processes: free ports, signals, and waiting for a condition.
//!
//! Signals go through the `kill` utility so that the crate needs neither `unsafe` nor a libc
//! binding; they are only ever sent to the test-kit's own children.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Asks the kernel for a free loopback port. The listener is dropped before the server
/// binds, so another process may grab the port in between; callers retry on that.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("could not bind 127.0.0.1:0 to find a free port")
}

/// Whether the part of a server's `log` written since byte `offset` (this launch) says its
/// port was taken, so that the launch should be retried on another port.
pub(crate) fn port_taken_since(log: &str, offset: u64) -> bool {
    log.get(usize::try_from(offset).unwrap_or(0)..)
        .unwrap_or(log)
        .contains("Address already in use")
}

/// Sends `SIG<name>` to `pid` with the `kill` utility.
pub(crate) fn signal(pid: u32, name: &str) -> io::Result<()> {
    let output = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`kill -{name} {pid}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Polls `cond` every 5 ms until it holds, and returns how long that took; panics naming
/// `what` if `limit` passes first. Tests wait for conditions with this instead of sleeping.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
