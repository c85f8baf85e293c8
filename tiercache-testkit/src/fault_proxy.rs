//! [`FaultProxy`]: a TCP proxy in front of a test's server that makes network faults on demand.
//!
//! Stopping or pausing a server shows one kind of fault; a network fault looks different: the
//! peer vanishes without a reset (a partition, a moved VIP, a failover) and the client's
//! connection simply stops answering while a *new* connection would work
//! ([`FaultProxy::blackhole_existing`]); every packet is late ([`FaultProxy::add_latency`]);
//! nothing gets through for a while, then everything does, as TCP retransmits
//! ([`FaultProxy::blackhole`]); connections are reset ([`FaultProxy::reset`]); or nothing
//! listens any more ([`FaultProxy::refuse`]). [`FaultProxy::heal`] ends a fault. Plain threads,
//! no async runtime: each direction of a connection is a reader that timestamps what it reads
//! and a writer that delivers it once its latency has passed, so added latency delays every
//! chunk by the same amount without slowing the stream down.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How often blocked copies wake up to look at the proxy's state.
const POLL: Duration = Duration::from_millis(50);
/// How long [`FaultProxy::heal`] keeps trying to listen on its port again.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Traffic forwarded as it comes (after any latency).
const FORWARD: u8 = 0;
/// Nothing delivered; held until healed.
const BLACKHOLE: u8 = 1;
/// Every connection reset; new ones reset at once.
const RESET: u8 = 2;
/// Every connection reset; nothing listens.
const REFUSE: u8 = 3;

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    /// Bumped by each black-holing of existing connections: connections accepted in an older
    /// generation carry no more bytes.
    generation: AtomicU64,
    /// One of [`FORWARD`], [`BLACKHOLE`], [`RESET`], [`REFUSE`].
    mode: AtomicU8,
    /// Added to every chunk's delivery time, in microseconds.
    latency_us: AtomicU64,
    stop: AtomicBool,
}

impl State {
    fn mode(&self) -> u8 {
        self.mode.load(Ordering::SeqCst)
    }

    fn resetting(&self) -> bool {
        matches!(self.mode(), RESET | REFUSE)
    }
}

/// A TCP proxy on a free loopback port, forwarding to `upstream` until told otherwise.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    /// The accepting thread, `None` while refusing (it has dropped the listener). A mutex
    /// because `refuse` and `heal` take `&self`.
    acceptor: Mutex<Option<thread::JoinHandle<()>>>,
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
            mode: AtomicU8::new(FORWARD),
            latency_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let acceptor = spawn_acceptor(listener, &state);
        FaultProxy {
            addr,
            state,
            acceptor: Mutex::new(Some(acceptor)),
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

    /// Delays every chunk, in each direction, by `latency / 2` from now on (each round trip
    /// grows by `latency`), until [`heal`](Self::heal).
    pub fn add_latency(&self, latency: Duration) {
        let half = u64::try_from(latency.as_micros() / 2).unwrap_or(u64::MAX);
        self.state.latency_us.store(half, Ordering::SeqCst);
    }

    /// Nothing gets through, on open connections or new ones (which are accepted), until
    /// [`heal`](Self::heal): what was sent meanwhile is then delivered, as TCP would once a
    /// partition ends.
    pub fn blackhole(&self) {
        self.state.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Resets (RST) every open connection within a poll interval (50 ms), and every new one at
    /// once, until [`heal`](Self::heal).
    pub fn reset(&self) {
        self.state.mode.store(RESET, Ordering::SeqCst);
    }

    /// Resets every open connection and stops listening: new connections are refused
    /// (`ECONNREFUSED`) until [`heal`](Self::heal), which listens on the same port again.
    pub fn refuse(&self) {
        self.state.mode.store(REFUSE, Ordering::SeqCst);
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(acceptor) = acceptor {
            // Wake the acceptor, which sees the mode and drops its listener.
            let _ = TcpStream::connect(self.addr);
            let _ = acceptor.join();
        }
    }

    /// Ends [`add_latency`](Self::add_latency), [`blackhole`](Self::blackhole),
    /// [`reset`](Self::reset) and [`refuse`](Self::refuse): traffic flows again (connections
    /// black-holed by [`blackhole_existing`](Self::blackhole_existing) stay dead).
    ///
    /// # Panics
    ///
    /// If the proxy cannot listen on its port again within 5 s.
    pub fn heal(&self) {
        self.state.latency_us.store(0, Ordering::SeqCst);
        let mut acceptor = self.acceptor.lock().unwrap_or_else(PoisonError::into_inner);
        if acceptor.is_none() {
            let deadline = Instant::now() + REBIND_TIMEOUT;
            let listener = loop {
                match TcpListener::bind(self.addr) {
                    Ok(listener) => break listener,
                    Err(e) if Instant::now() >= deadline => {
                        panic!("fault proxy: cannot listen on {} again: {e}", self.addr)
                    }
                    Err(_) => thread::sleep(POLL),
                }
            };
            *acceptor = Some(spawn_acceptor(listener, &self.state));
        }
        self.state.mode.store(FORWARD, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = acceptor {
            // Wake the acceptor.
            let _ = TcpStream::connect(self.addr);
            let _ = t.join();
        }
    }
}

fn spawn_acceptor(listener: TcpListener, state: &Arc<State>) -> thread::JoinHandle<()> {
    let state = state.clone();
    thread::spawn(move || accept_loop(&listener, &state))
}

/// Closes `stream` with a reset (RST) rather than a FIN once its last handle is dropped.
fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) || state.mode() == REFUSE {
            return;
        }
        let Ok(client) = client else { continue };
        if state.resetting() {
            abort(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect(state.upstream) else {
            continue;
        };
        let generation = state.generation.load(Ordering::SeqCst);
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let (tx, rx) = mpsc::channel();
            let state_r = state.clone();
            let state_w = state.clone();
            thread::spawn(move || read_side(from, &tx, &state_r, generation));
            thread::spawn(move || write_side(to, &rx, &state_w));
        }
    }
}

/// Reads what arrives on `from`, stamped with its arrival time, until either side closes, the
/// proxy stops or resets, or the connection is black-holed for good (then it holds the socket
/// open, silently, until the proxy stops).
fn read_side(mut from: TcpStream, tx: &Sender<(Instant, Vec<u8>)>, state: &State, born: u64) {
    if from.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        if state.resetting() {
            abort(&from);
            break;
        }
        let read = from.read(&mut buf);
        // Looked at after the read: bytes that arrive once the hole is made are dropped.
        let blackholed = born < state.generation.load(Ordering::SeqCst);
        match read {
            Ok(0) => break,
            Ok(_) if blackholed => {}
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
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
}

/// Writes each chunk to `to` once its latency has passed and no black hole holds it; passes
/// on the end of the stream (or a reset).
fn write_side(mut to: TcpStream, rx: &Receiver<(Instant, Vec<u8>)>, state: &State) {
    loop {
        let (arrived, chunk) = match rx.recv_timeout(POLL) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                if state.stop.load(Ordering::SeqCst) {
                    return;
                }
                if state.resetting() {
                    abort(&to);
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        loop {
            if state.stop.load(Ordering::SeqCst) {
                return;
            }
            if state.resetting() {
                abort(&to);
                return;
            }
            let latency = Duration::from_micros(state.latency_us.load(Ordering::SeqCst));
            let due = arrived + latency;
            let now = Instant::now();
            if state.mode() == BLACKHOLE {
                thread::sleep(POLL);
            } else if now < due {
                thread::sleep((due - now).min(POLL));
            } else {
                break;
            }
        }
        if to.write_all(&chunk).is_err() {
            return;
        }
    }
    // The reader may have stopped for a reset: then the end is a reset too, not a FIN.
    if state.resetting() {
        abort(&to);
    } else {
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;
    use std::time::Instant;

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

    #[test]
    fn latency_black_hole_reset_and_refusal_each_end_with_heal() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());

        proxy.add_latency(Duration::from_millis(200));
        let start = Instant::now();
        assert_eq!(ping(proxy.addr()).unwrap(), "+PONG\r\n");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(300), "{took:?}");
        proxy.heal();

        let mut open = TcpStream::connect(proxy.addr()).unwrap();
        open.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        proxy.blackhole();
        open.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert!(open.read(&mut buf).is_err(), "nothing through the hole");
        assert!(ping(proxy.addr()).is_err(), "new connections too");
        proxy.heal();
        let n = open.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"+PONG\r\n", "delivered once healed");

        proxy.reset();
        let err = open.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let err = ping(proxy.addr()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        proxy.heal();
        assert_eq!(ping(proxy.addr()).unwrap(), "+PONG\r\n");

        proxy.refuse();
        let err = ping(proxy.addr()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        proxy.heal();
        assert_eq!(ping(proxy.addr()).unwrap(), "+PONG\r\n");
    }
}
