//! [`Fault`]: the failures a cache must ride through, made to a test's own Redis (and the
//! [`FaultProxy`] in front of it) by name, so that the fault matrix test and the chaos soak
//! bench make exactly the same ones.
//!
//! Each fault is made by [`Fault::inject`], which blocks until the fault has ended: a
//! lasting fault holds for the duration it is given, an instant one (a `CLIENT KILL`, a
//! `FLUSHALL`) is over when its command returns. Call it from `block_in_place` (or a blocking
//! task) on an async runtime.
//!
//! The cache under test connects through the proxy as an ACL user (see
//! [`RedisServer::start_with_user`]); the faults run as the `default` user, straight to the
//! server.

use std::thread;
use std::time::Duration;

use crate::{FaultProxy, RedisServer};

/// A failure of Redis, of the network to it, or of someone else's hand on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// `kill -9`, then a restart, empty, on the same port.
    Kill9,
    /// `SIGSTOP`, then `SIGCONT`: connections stay open, nothing answers.
    Sigstop,
    /// `CLIENT PAUSE … ALL`.
    ClientPause,
    /// `DEBUG SLEEP`: the server is busy.
    DebugSleep,
    /// `CLIENT KILL` of the user's command connections.
    KillCommandConnection,
    /// `CLIENT KILL` of the user's subscriber connections.
    KillSubscriber,
    /// `maxmemory 1` under `noeviction`: every write is refused with `OOM`.
    MaxmemoryOom,
    /// `ACL SETUSER … off` and `CLIENT KILL USER …`, then `ACL SETUSER … on`.
    AclOffOn,
    /// `FLUSHALL` by someone else.
    Flushall,
    /// `SCRIPT FLUSH` by someone else: loaded scripts are gone.
    ScriptFlush,
    /// 200 ms added to every round trip, through the proxy.
    Latency200ms,
    /// Nothing gets through the proxy; what was sent arrives once it heals.
    BlackHole,
    /// A black hole whose open connections never carry a byte again (state lost on the way,
    /// as behind a restarted NAT): only new connections work once it heals.
    Partition,
    /// The proxy resets every connection.
    Reset,
    /// The proxy refuses new connections (and resets the open ones).
    Refuse,
}

impl Fault {
    /// Every fault, in the fault matrix's order.
    pub const ALL: [Fault; 15] = [
        Fault::Kill9,
        Fault::Sigstop,
        Fault::ClientPause,
        Fault::DebugSleep,
        Fault::KillCommandConnection,
        Fault::KillSubscriber,
        Fault::MaxmemoryOom,
        Fault::AclOffOn,
        Fault::Flushall,
        Fault::ScriptFlush,
        Fault::Latency200ms,
        Fault::BlackHole,
        Fault::Partition,
        Fault::Reset,
        Fault::Refuse,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9, restart",
            Fault::Sigstop => "SIGSTOP",
            Fault::ClientPause => "CLIENT PAUSE",
            Fault::DebugSleep => "DEBUG SLEEP",
            Fault::KillCommandConnection => "CLIENT KILL (commands)",
            Fault::KillSubscriber => "CLIENT KILL (subscriber)",
            Fault::MaxmemoryOom => "maxmemory OOM",
            Fault::AclOffOn => "ACL user off, on",
            Fault::Flushall => "FLUSHALL",
            Fault::ScriptFlush => "SCRIPT FLUSH",
            Fault::Latency200ms => "+200 ms latency",
            Fault::BlackHole => "black hole",
            Fault::Partition => "partition, connections lost",
            Fault::Reset => "resets",
            Fault::Refuse => "refused",
        }
    }

    /// Whether the fault holds for the duration [`inject`](Self::inject) is given (otherwise
    /// it is one command, over when it returns).
    pub fn lasts(self) -> bool {
        !matches!(
            self,
            Fault::KillCommandConnection
                | Fault::KillSubscriber
                | Fault::Flushall
                | Fault::ScriptFlush
        )
    }

    /// Makes the fault, holding it for `hold` if it [`lasts`](Self::lasts), and returns once
    /// it has ended. `user` is the ACL user the cache under test logs in as (its connections
    /// are the ones killed).
    ///
    /// # Panics
    ///
    /// If Redis refuses one of the fault's commands, or does not answer it within 5 s plus
    /// `hold`.
    pub fn inject(self, server: &mut RedisServer, proxy: &FaultProxy, user: &str, hold: Duration) {
        let millis = hold.as_millis().to_string();
        match self {
            Fault::Kill9 => {
                server.kill();
                thread::sleep(hold);
                server.restart();
            }
            Fault::Sigstop => {
                server.pause();
                thread::sleep(hold);
                server.resume();
            }
            Fault::ClientPause => {
                admin(server, &["CLIENT", "PAUSE", &millis, "ALL"]);
                // Answered once the pause is over.
                admin_within(server, &["PING"], hold);
            }
            Fault::DebugSleep => {
                let seconds = format!("{:.3}", hold.as_secs_f64());
                admin_within(server, &["DEBUG", "SLEEP", &seconds], hold);
            }
            Fault::KillCommandConnection => {
                for id in connections(server, user, false) {
                    admin(server, &["CLIENT", "KILL", "ID", &id]);
                }
            }
            Fault::KillSubscriber => {
                for id in connections(server, user, true) {
                    admin(server, &["CLIENT", "KILL", "ID", &id]);
                }
            }
            Fault::MaxmemoryOom => {
                admin(server, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
                admin(server, &["CONFIG", "SET", "maxmemory", "1"]);
                thread::sleep(hold);
                admin(server, &["CONFIG", "SET", "maxmemory", "0"]);
            }
            Fault::AclOffOn => {
                admin(server, &["ACL", "SETUSER", user, "off"]);
                admin(server, &["CLIENT", "KILL", "USER", user]);
                thread::sleep(hold);
                admin(server, &["ACL", "SETUSER", user, "on"]);
            }
            Fault::Flushall => {
                admin(server, &["FLUSHALL"]);
            }
            Fault::ScriptFlush => {
                admin(server, &["SCRIPT", "FLUSH"]);
            }
            Fault::Latency200ms => {
                proxy.add_latency(Duration::from_millis(200));
                thread::sleep(hold);
                proxy.heal();
            }
            Fault::BlackHole => {
                proxy.blackhole();
                thread::sleep(hold);
                proxy.heal();
            }
            Fault::Partition => {
                proxy.blackhole_existing();
                proxy.blackhole();
                thread::sleep(hold);
                proxy.heal();
            }
            Fault::Reset => {
                proxy.reset();
                thread::sleep(hold);
                proxy.heal();
            }
            Fault::Refuse => {
                proxy.refuse();
                thread::sleep(hold);
                proxy.heal();
            }
        }
    }
}

/// Runs `args` as the `default` user; panics on an error reply or no answer within 5 s.
fn admin(server: &RedisServer, args: &[&str]) -> String {
    admin_within(server, args, Duration::ZERO)
}

/// [`admin`] for a command that may take `extra` longer than usual to answer.
fn admin_within(server: &RedisServer, args: &[&str], extra: Duration) -> String {
    let reply = server
        .command_with_timeout(args, Duration::from_secs(5) + extra)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(!reply.starts_with('-'), "{args:?}: {reply}");
    reply
}

/// The ids of the connections `user` has open; `subscribers` picks the pub/sub ones.
fn connections(server: &RedisServer, user: &str, subscribers: bool) -> Vec<String> {
    let list = admin(server, &["CLIENT", "LIST"]);
    list.lines()
        .filter(|l| l.contains(&format!(" user={user} ")))
        .filter(|l| l.contains(" flags=P ") == subscribers)
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}
