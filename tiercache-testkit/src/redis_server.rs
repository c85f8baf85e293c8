//! [`RedisServer`]: one private `redis-server` child process per test.
//!
//! Why a real process: the cache's failure handling (reconnects, timeouts, fallbacks) can
//! only be trusted when it is exercised against a Redis that really dies, really hangs
//! (`SIGSTOP`: the kernel still completes TCP handshakes but nobody reads) and really comes
//! back on the same port. Each server lives in its own temp dir with persistence off, binds
//! only to 127.0.0.1 on a port the kernel handed out, and is only ever signalled by pid
//! while this handle still owns the (unreaped) child, so no other process can be hit.
//!
//! Signals other than `SIGKILL` are sent with the `kill` utility through
//! [`std::process::Command`], which keeps the crate free of `unsafe` and of libc bindings.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{free_port, port_taken_since, signal};

/// Name of the binary looked up on `PATH`.
const BINARY: &str = "redis-server";
/// How long a (re)started server gets to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `SIGTERM` gets before `SIGKILL`.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `restart` keeps retrying when its old port is briefly taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Overall timeout of [`RedisServer::command`].
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one readiness probe while waiting for startup.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Sleep between polls of every waiting loop.
const POLL_INTERVAL: Duration = Duration::from_millis(15);
/// How many fresh ports `start` tries before giving up.
const FRESH_PORT_ATTEMPTS: usize = 5;
/// Lines of the log shown in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// A `redis-server` child process on `127.0.0.1:<free port>`, owned by one test.
///
/// The server runs in a fresh temporary directory (removed on drop) with RDB and AOF
/// persistence off, `DEBUG` allowed from loopback, and its log in `<dir>/redis.log`
/// (see [`RedisServer::log`]). Dropping the value `SIGKILL`s and reaps the process.
///
/// Lifecycle methods panic with a descriptive message (including the log tail) when the
/// server cannot be brought up, which is the useful behaviour inside a test.
#[derive(Debug)]
pub struct RedisServer {
    /// Working dir and log location; kept alive as long as the server may run.
    dir: TempDir,
    port: u16,
    /// Extra command-line arguments, reused on restart.
    args: Vec<String>,
    /// The `--requirepass` value, if any, so [`RedisServer::command`] can authenticate.
    password: Option<String>,
    /// `None` while stopped.
    child: Option<Child>,
    paused: bool,
}

/// Why one launch attempt failed.
enum LaunchError {
    /// Our child could not bind the port, or another server already answers on it.
    PortTaken,
    /// Any other failure, with a message ready for a panic.
    Failed(String),
}

impl RedisServer {
    /// Spawns `redis-server` on a free `127.0.0.1` port in a fresh temp dir and waits
    /// (up to ~10 s, polling) until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH`, or if it does not come up (the message then
    /// contains the tail of its log).
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Like [`RedisServer::start`], with `args` appended to the command line, e.g.
    /// `["--requirepass", "secret"]` or `["--maxmemory", "1mb"]`.
    ///
    /// The arguments are kept and reused by [`RedisServer::restart`]. When they contain
    /// `--requirepass`, [`RedisServer::command`] authenticates before each command.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("tiercache-redis-")
            .tempdir()
            .expect("failed to create a temporary directory for redis-server");
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let password = requirepass(&args);
        let mut server = RedisServer {
            dir,
            port: 0,
            args,
            password,
            child: None,
            paused: false,
        };
        for _ in 0..FRESH_PORT_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortTaken) => continue,
                Err(LaunchError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!(
            "redis-server could not bind a free port in {FRESH_PORT_ATTEMPTS} attempts \
             (last tried {}){}",
            server.port,
            server.log_tail()
        );
    }

    /// Like [`RedisServer::start`], with one more ACL user: `user`, logging in with
    /// `password`, allowed every key, channel and command (`ACL SETUSER user on >password ~*
    /// &* +@all`), as an application's own Redis user would be. The user is declared on the
    /// command line, so it exists again after [`RedisServer::restart`], with this password.
    /// [`RedisServer::command`] still runs as the `default` user, which can switch `user` off
    /// and on (`ACL SETUSER`) or end its connections (`CLIENT KILL USER`).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with_user(user: &str, password: &str) -> RedisServer {
        let password = format!(">{password}");
        Self::start_with_args(&["--user", user, "on", &password, "~*", "&*", "+@all"])
    }

    /// How many logins the server has refused since it started: the sum of the `count`
    /// fields of `ACL LOG` entries whose reason is `auth`. A test waits on it to know that a
    /// client tried, and failed, to log in.
    ///
    /// # Panics
    ///
    /// If the server does not answer `ACL LOG`.
    pub fn refused_logins(&self) -> u64 {
        let log = self.command(&["ACL", "LOG"]).expect("ACL LOG");
        // Each entry is a flat map in RESP, one element per line, `count` before `reason`:
        // `$5 count :2 $6 reason $4 auth ...`.
        let mut refused = 0;
        let mut count = 0;
        let mut lines = log.lines().filter(|l| !l.starts_with('$'));
        while let Some(line) = lines.next() {
            match line {
                "count" => {
                    let n = lines.next().map(|n| n.trim_start_matches(':'));
                    count = n.and_then(|n| n.parse().ok()).unwrap_or(0);
                }
                "reason" if lines.next() == Some("auth") => refused += count,
                _ => {}
            }
        }
        refused
    }

    /// The TCP port the server listens on; stays the same across [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for Redis clients: `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Socket address of the server (`127.0.0.1:{port}`).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's working directory (its temp dir: log, `nodes.conf` of a cluster node).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Process id of the running server; `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server: `SIGTERM`, then `SIGKILL` if it has not exited within ~5 s, and
    /// reaps it. Afterwards the port refuses connections. Works on a paused server too.
    /// Does nothing when already stopped.
    pub fn stop(&mut self) {
        let paused = std::mem::replace(&mut self.paused, false);
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let pid = child.id();
            // Best effort: if `kill` fails, the deadline below falls back to SIGKILL.
            let _ = signal(pid, "TERM");
            if paused {
                // A stopped process only acts on the pending SIGTERM once continued.
                let _ = signal(pid, "CONT");
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                    Ok(None) | Err(_) => {
                        let _ = child.kill();
                        break;
                    }
                    Ok(Some(_)) => break,
                }
            }
        }
        // Reap the child; only after this may its pid be reused by someone else.
        let _ = child.wait();
    }

    /// Kills the server with `SIGKILL` (`kill -9`: no shutdown, connections reset) and reaps
    /// it. Works on a paused server too. Does nothing when already stopped; [`restart`](
    /// Self::restart) brings it back, empty.
    pub fn kill(&mut self) {
        self.paused = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reap the child; only after this may its pid be reused by someone else.
            let _ = child.wait();
        }
    }

    /// Stops the server if it is running, then starts it again on the same port with the
    /// same arguments and waits for `PING`. The data set comes back empty (persistence is
    /// off). If the port is briefly unavailable, binding is retried for a few seconds.
    ///
    /// # Panics
    ///
    /// If the server cannot be brought back up (the message contains the log tail).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(LaunchError::PortTaken) if Instant::now() < deadline => {
                    thread::sleep(POLL_INTERVAL);
                }
                Err(LaunchError::PortTaken) => panic!(
                    "redis-server could not bind its port {} again within {REBIND_TIMEOUT:?}{}",
                    self.port,
                    self.log_tail()
                ),
                Err(LaunchError::Failed(message)) => panic!("{message}"),
            }
        }
    }

    /// Freezes the server with `SIGSTOP`: its port still accepts TCP connections (the
    /// kernel completes the handshake) but nothing is read or answered until
    /// [`RedisServer::resume`]. Does nothing when already paused.
    ///
    /// # Panics
    ///
    /// If the server is stopped, or the signal cannot be sent.
    pub fn pause(&mut self) {
        if self.paused {
            return;
        }
        let pid = self
            .pid()
            .expect("RedisServer::pause: the server is stopped; restart it first");
        signal(pid, "STOP").expect("RedisServer::pause: failed to send SIGSTOP");
        self.paused = true;
        wait_until_stopped(pid);
    }

    /// Continues a paused server with `SIGCONT`. Does nothing when not paused.
    ///
    /// # Panics
    ///
    /// If the signal cannot be sent.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        if let Some(pid) = self.pid() {
            signal(pid, "CONT").expect("RedisServer::resume: failed to send SIGCONT");
        }
        self.paused = false;
    }

    /// Whether the server is currently paused by [`RedisServer::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Contents of the server's log file (all runs, including restarts), for diagnostics.
    /// Empty if the log cannot be read.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// `calls=N` of `command` (lower case, `script|load` for a subcommand) in `INFO
    /// commandstats`, 0 if it was never called: how a test shows what reached Redis.
    ///
    /// # Panics
    ///
    /// If the server does not answer `INFO`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.command(&["INFO", "commandstats"]).expect("INFO");
        let needle = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Writes 64 KiB foreign keys (`filler:{i}`) until the server refuses one with `OOM` (it
    /// needs a `maxmemory` under `noeviction`).
    ///
    /// # Panics
    ///
    /// If a write fails otherwise, or 1,000 writes all succeed.
    pub fn fill_until_oom(&self) {
        let filler = "x".repeat(64 << 10);
        for i in 0..1000 {
            let reply = self
                .command(&["SET", &format!("filler:{i}"), &filler])
                .expect("SET");
            if reply.starts_with("-OOM") {
                return;
            }
            assert!(reply.starts_with("+OK"), "{reply}");
        }
        panic!("redis never refused a write");
    }

    /// Sends one command over a fresh TCP connection and returns the raw RESP reply, e.g.
    /// `server.command(&["DBSIZE"])` gives `":0\r\n"` and `["GET", "k"]` gives
    /// `"$1\r\nv\r\n"` or `"$-1\r\n"`. The whole exchange times out after 2 s.
    ///
    /// Redis error replies (`-ERR ...`) are returned as `Ok` text; `Err` means the server
    /// could not be reached or did not answer in time. With `--requirepass` in the start
    /// arguments, the command is preceded by `AUTH` (whose reply is not returned).
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        self.command_with_timeout(args, COMMAND_TIMEOUT)
    }

    /// [`RedisServer::command`] with an explicit overall timeout (connect, write, read),
    /// e.g. a short one to observe that a paused server does not answer.
    pub fn command_with_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&self.addr(), timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        let mut request = Vec::new();
        if let Some(password) = &self.password {
            encode_command(&mut request, &["AUTH", password]);
        }
        encode_command(&mut request, args);
        stream.write_all(&request)?;

        let mut buf = Vec::new();
        let start = if self.password.is_some() {
            read_reply(&mut stream, &mut buf, 0, deadline)?
        } else {
            0
        };
        let end = read_reply(&mut stream, &mut buf, start, deadline)?;
        Ok(String::from_utf8_lossy(&buf[start..end]).into_owned())
    }

    /// Spawns the child on `self.port` and waits until it answers `PING`.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let log_offset = fs::metadata(self.log_path()).map_or(0, |meta| meta.len());
        self.child = Some(self.spawn());
        self.paused = false;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("launch: child was just spawned");
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let _ = child.wait();
                    self.child = None;
                    if port_taken_since(&self.log(), log_offset) {
                        return Err(LaunchError::PortTaken);
                    }
                    return Err(LaunchError::Failed(format!(
                        "redis-server on port {} exited during startup ({status}){}",
                        self.port,
                        self.log_tail()
                    )));
                }
                Err(error) => {
                    self.stop();
                    return Err(LaunchError::Failed(format!(
                        "could not poll the redis-server child: {error}"
                    )));
                }
            }
            match self.probe() {
                Probe::Ready => return Ok(()),
                Probe::Foreign => {
                    // Someone else owns the port; ours will fail to bind. Do not wait for it.
                    self.stop();
                    return Err(LaunchError::PortTaken);
                }
                Probe::NotYet => {}
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(LaunchError::Failed(format!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}{}",
                    self.port,
                    self.log_tail()
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One readiness check: `PING`, then `INFO server` to make sure the answer came from
    /// our own process and not from another server that grabbed the port.
    fn probe(&self) -> Probe {
        match self.command_with_timeout(&["PING"], PROBE_TIMEOUT) {
            Ok(reply) if reply.starts_with("+PONG") => {}
            _ => return Probe::NotYet,
        }
        let Some(pid) = self.pid() else {
            return Probe::NotYet;
        };
        match self.command_with_timeout(&["INFO", "server"], PROBE_TIMEOUT) {
            Ok(info) if info.contains(&format!("process_id:{pid}\r\n")) => Probe::Ready,
            Ok(info) if info.contains("process_id:") => Probe::Foreign,
            // INFO renamed or disabled by the extra args: PONG has to do.
            Ok(_) => Probe::Ready,
            Err(_) => Probe::NotYet,
        }
    }

    fn spawn(&self) -> Child {
        let mut command = Command::new(BINARY);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no"])
            .args(["--enable-debug-command", "local"])
            .args(["--protected-mode", "yes"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == io::ErrorKind::NotFound => panic!(
                "redis-server not found on PATH: install it with `apt-get install redis-server` \
                 ({error})"
            ),
            Err(error) => panic!("failed to spawn redis-server: {error}"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last lines of the log, formatted for a panic message.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "\n--- tail of {} ---\n{tail}\n--- end of log ---",
            self.log_path().display()
        )
    }
}

impl Drop for RedisServer {
    /// `SIGKILL`s (which also ends a paused process) and reaps the child. Never panics.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Outcome of one readiness probe.
enum Probe {
    Ready,
    NotYet,
    /// A different Redis process answers on our port.
    Foreign,
}

/// The value following the last `--requirepass` argument, if any.
fn requirepass(args: &[String]) -> Option<String> {
    args.windows(2)
        .rev()
        .find(|pair| pair[0] == "--requirepass")
        .map(|pair| pair[1].clone())
        .filter(|password| !password.is_empty())
}

/// Waits (up to 1 s) until `/proc` reports `pid` as stopped, so a pause is in effect when
/// `pause` returns. Without `/proc` (non-Linux) this returns at once.
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let stat_path = format!("/proc/{pid}/stat");
    while Instant::now() < deadline {
        let Ok(stat) = fs::read_to_string(&stat_path) else {
            return;
        };
        // Format: `pid (comm) STATE ...`; comm may contain spaces, so split after ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('T' | 't')) {
            return;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Time left until `deadline`, or a `TimedOut` error once it has passed.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "redis command timed out",
        ))
    } else {
        Ok(left)
    }
}

/// Appends `args` as a RESP array of bulk strings.
fn encode_command(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads from `stream` into `buf` until one complete reply starts at `start`; returns the
/// index just past it.
fn read_reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: usize,
    deadline: Instant,
) -> io::Result<usize> {
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(len) = reply_len(&buf[start..])? {
            return Ok(start + len);
        }
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection before a complete reply",
            ));
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// Length of the complete RESP2 reply at the start of `bytes`, `None` if more bytes are
/// needed. Handles simple strings, errors, integers, bulk strings and (nested) arrays.
fn reply_len(bytes: &[u8]) -> io::Result<Option<usize>> {
    let Some(line_end) = bytes.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    let after_line = line_end + 2;
    let header = || bytes.get(1..line_end).unwrap_or_default();
    match bytes[0] {
        b'+' | b'-' | b':' => Ok(Some(after_line)),
        b'$' => match usize::try_from(parse_length(header())?) {
            Err(_) => Ok(Some(after_line)), // $-1: nil
            Ok(len) => {
                let total = after_line + len + 2;
                Ok((bytes.len() >= total).then_some(total))
            }
        },
        b'*' => match usize::try_from(parse_length(header())?) {
            Err(_) => Ok(Some(after_line)), // *-1: nil array
            Ok(count) => {
                let mut pos = after_line;
                for _ in 0..count {
                    match reply_len(&bytes[pos..])? {
                        Some(len) => pos += len,
                        None => return Ok(None),
                    }
                }
                Ok(Some(pos))
            }
        },
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected RESP type byte {:?}", char::from(other)),
        )),
    }
}

fn parse_length(header: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(header)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad RESP length {:?}", String::from_utf8_lossy(header)),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `kill -0 pid` until it fails (the process is gone) or the deadline passes.
    fn process_gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if signal(pid, "0").is_err() {
                return true;
            }
            thread::sleep(POLL_INTERVAL);
        }
        false
    }

    #[test]
    fn start_answers_ping_and_simple_commands() {
        let server = RedisServer::start();
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
        assert_eq!(
            server.url(),
            format!("redis://127.0.0.1:{}/", server.port())
        );
        assert_eq!(server.addr().port(), server.port());
        assert!(server.addr().ip().is_loopback());
        assert!(server.pid().is_some());
        assert!(!server.is_paused());
        assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "+OK\r\n");
        assert_eq!(server.command(&["GET", "k"]).unwrap(), "$1\r\nv\r\n");
        assert_eq!(server.command(&["GET", "missing"]).unwrap(), "$-1\r\n");
        assert_eq!(server.command(&["DBSIZE"]).unwrap(), ":1\r\n");
        assert_eq!(server.command(&["KEYS", "*"]).unwrap(), "*1\r\n$1\r\nk\r\n");
        assert!(server.command(&["NOSUCHCMD"]).unwrap().starts_with("-ERR"));
        // Persistence really is off and DEBUG is enabled.
        assert_eq!(
            server.command(&["CONFIG", "GET", "save"]).unwrap(),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(server.command(&["DEBUG", "SLEEP", "0"]).unwrap(), "+OK\r\n");
        assert!(server.log().contains("Ready to accept connections"));
    }

    #[test]
    fn pause_stops_answering_and_resume_brings_it_back() {
        let mut server = RedisServer::start();
        server.pause();
        assert!(server.is_paused());
        // The kernel still accepts the connection...
        TcpStream::connect_timeout(&server.addr(), Duration::from_secs(1))
            .expect("a paused server's port still accepts TCP connections");
        // ...but nobody answers.
        let error = server
            .command_with_timeout(&["PING"], Duration::from_millis(300))
            .expect_err("a paused server must not answer");
        // Any failure to answer will do (a timeout, normally; an interrupted read on a busy
        // machine), but not a refusal: the port is still open.
        assert_ne!(
            error.kind(),
            io::ErrorKind::ConnectionRefused,
            "unexpected error: {error:?}"
        );
        server.pause(); // idempotent
        server.resume();
        assert!(!server.is_paused());
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
        server.resume(); // idempotent
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
    }

    #[test]
    fn stop_refuses_connections_and_is_idempotent() {
        let mut server = RedisServer::start();
        let pid = server.pid().unwrap();
        server.stop();
        assert_eq!(server.pid(), None);
        let error = TcpStream::connect_timeout(&server.addr(), Duration::from_secs(1))
            .expect_err("a stopped server's port must refuse connections");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert!(server.command(&["PING"]).is_err());
        assert!(process_gone(pid));
        server.stop();
        assert_eq!(server.pid(), None);
    }

    #[test]
    fn kill_ends_even_a_paused_server_and_restart_brings_it_back_empty() {
        let mut server = RedisServer::start();
        server.command(&["SET", "k", "v"]).unwrap();
        let pid = server.pid().unwrap();
        server.pause();
        server.kill();
        assert_eq!(server.pid(), None);
        assert!(!server.is_paused());
        assert!(process_gone(pid));
        server.kill(); // idempotent
        server.restart();
        assert_eq!(server.command(&["DBSIZE"]).unwrap(), ":0\r\n");
    }

    #[test]
    fn restart_comes_back_empty_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        let first_pid = server.pid().unwrap();
        assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "+OK\r\n");

        server.restart();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), Some(first_pid));
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
        assert_eq!(server.command(&["DBSIZE"]).unwrap(), ":0\r\n");
        assert!(process_gone(first_pid));

        // From stopped and from paused as well.
        server.stop();
        server.restart();
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
        server.pause();
        server.restart();
        assert!(!server.is_paused());
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
    }

    #[test]
    fn drop_kills_the_process() {
        let server = RedisServer::start();
        let pid = server.pid().unwrap();
        let addr = server.addr();
        drop(server);
        assert!(process_gone(pid), "redis-server {pid} survived drop");
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn drop_kills_a_paused_process() {
        let mut server = RedisServer::start();
        let pid = server.pid().unwrap();
        server.pause();
        drop(server);
        assert!(process_gone(pid), "paused redis-server {pid} survived drop");
    }

    #[test]
    fn extra_args_are_applied_and_kept_across_restart() {
        let mut server = RedisServer::start_with_args(&["--requirepass", "secret"]);
        // `command` authenticates by itself...
        assert_eq!(server.command(&["PING"]).unwrap(), "+PONG\r\n");
        // ...while a bare connection is rejected.
        let mut raw = TcpStream::connect(server.addr()).unwrap();
        raw.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        raw.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut buf = Vec::new();
        let end = read_reply(&mut raw, &mut buf, 0, Instant::now() + COMMAND_TIMEOUT).unwrap();
        assert!(String::from_utf8_lossy(&buf[..end]).starts_with("-NOAUTH"));

        server.restart();
        assert_eq!(
            server.command(&["CONFIG", "GET", "requirepass"]).unwrap(),
            "*2\r\n$11\r\nrequirepass\r\n$6\r\nsecret\r\n"
        );
    }

    #[test]
    fn servers_are_independent() {
        let a = RedisServer::start();
        let mut b = RedisServer::start_with_args(&["--maxmemory", "1mb"]);
        assert_ne!(a.port(), b.port());
        b.stop();
        assert_eq!(a.command(&["PING"]).unwrap(), "+PONG\r\n");
        assert_eq!(
            a.command(&["CONFIG", "GET", "maxmemory"]).unwrap(),
            "*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n"
        );
    }

    #[test]
    fn reply_len_waits_for_complete_replies() {
        assert_eq!(reply_len(b"").unwrap(), None);
        assert_eq!(reply_len(b"+PON").unwrap(), None);
        assert_eq!(reply_len(b"+PONG\r\n").unwrap(), Some(7));
        assert_eq!(reply_len(b"-ERR x\r\nrest").unwrap(), Some(8));
        assert_eq!(reply_len(b":42\r\n").unwrap(), Some(5));
        assert_eq!(reply_len(b"$5\r\nhel").unwrap(), None);
        assert_eq!(reply_len(b"$5\r\nhello\r").unwrap(), None);
        assert_eq!(reply_len(b"$5\r\nhello\r\n").unwrap(), Some(11));
        assert_eq!(reply_len(b"$4\r\na\r\nb\r\n").unwrap(), Some(10));
        assert_eq!(reply_len(b"$-1\r\n").unwrap(), Some(5));
        assert_eq!(reply_len(b"*2\r\n:1\r\n").unwrap(), None);
        assert_eq!(reply_len(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(), Some(15));
        assert_eq!(reply_len(b"*1\r\n*1\r\n:1\r\n").unwrap(), Some(12));
        assert_eq!(reply_len(b"*0\r\n").unwrap(), Some(4));
        assert!(reply_len(b"?\r\n").is_err());
        assert!(reply_len(b"$x\r\n").is_err());
    }

    #[test]
    fn encode_command_builds_resp_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &["SET", "k", ""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(
            requirepass(&["--requirepass".into(), "pw".into()]),
            Some("pw".to_owned())
        );
        assert_eq!(requirepass(&["--maxmemory".into(), "1mb".into()]), None);
    }
}
