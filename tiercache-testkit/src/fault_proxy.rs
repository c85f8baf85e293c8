//! [`FaultProxy`]: a TCP proxy in front of a test's server that can black-hole connections.
//!
//! Stopping or pausing a server shows one kind of fault; a network fault looks different: the
//! peer vanishes without a reset (a partition, a moved VIP, a failover) and the client's
//! connection simply stops answering while a *new* connection would work. The proxy makes that
//! fault on demand with [`FaultProxy::blackhole_existing`]. Plain threads, no async runtime.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// How often blocked copies wake up to look at the proxy's state.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    /// Bumped by each black-holing: connections accepted in an older generation carry no
    /// more bytes.
    generation: AtomicU64,
    stop: AtomicBool,
}

/// A TCP proxy on a free loopback port, forwarding to `upstream` until told otherwise.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("fault proxy: could not bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fault proxy: no local address");
        let state = Arc::new(State {
            upstream,
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let state = state.clone();
            thread::spawn(move || accept_loop(&listener, &state))
        };
        FaultProxy {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:{port}/`, for a proxy in front of a Redis.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// From now on, connections opened so far carry no bytes in either direction, but stay
    /// open: their peer seems to have vanished. Connections opened later work normally.
    pub fn blackhole_existing(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(state.upstream) else {
            continue;
        };
        let generation = state.generation.load(Ordering::SeqCst);
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let state = state.clone();
            thread::spawn(move || copy(from, to, &state, generation));
        }
    }
}

/// Copies until either side closes, the proxy stops, or the connection is black-holed (after
/// which it holds both sockets open, silently, until the proxy stops).
fn copy(mut from: TcpStream, mut to: TcpStream, state: &State, generation: u64) {
    if from.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let read = from.read(&mut buf);
        // Looked at after the read: bytes that arrive once the hole is made are dropped.
        let blackholed = generation < state.generation.load(Ordering::SeqCst);
        match read {
            Ok(0) => break,
            Ok(_) if blackholed => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    fn ping(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn forwards_then_black_holes_only_existing_connections() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        assert_eq!(ping(proxy.addr()).unwrap(), "+PONG\r\n");
        let mut old = TcpStream::connect(proxy.addr()).unwrap();
        old.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        old.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = old.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"+PONG\r\n");
        proxy.blackhole_existing();
        old.write_all(b"PING\r\n").unwrap();
        let err = old.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        assert_eq!(
            ping(proxy.addr()).unwrap(),
            "+PONG\r\n",
            "new connections work"
        );
    }
}
