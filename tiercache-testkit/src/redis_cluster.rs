//! [`RedisCluster`]: a private Redis Cluster of three masters and three replicas on loopback.
//!
//! Why a real cluster: what a cluster client must get right (slots and hash tags, `MOVED`
//! redirections after a failover, a master that dies and is replaced by its replica) only shows
//! against real nodes. Each node is a [`RedisServer`] started with `--cluster-enabled yes`, so
//! every control of a single server (kill -9, `SIGSTOP`, restart on the same port) works on one
//! node; the nodes are joined with `redis-cli --cluster create ... --cluster-replicas 1`, the
//! tool operators use. A short `cluster-node-timeout` keeps an automatic failover within about
//! two seconds. Every node is killed when the value is dropped.
//!
//! `redis-server` and `redis-cli` must be on `PATH` (`apt-get install redis-server`).

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

/// Masters, each with one replica.
const MASTERS: usize = 3;
/// `cluster-node-timeout` in ms: how long a silent master goes before its replica takes over.
const NODE_TIMEOUT_MS: u64 = 1000;
/// How long the cluster gets to reach `cluster_state:ok`, at start and after each change.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Sleep between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The role a node holds, as `CLUSTER NODES` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves slots.
    Master,
    /// Replicates a master.
    Replica,
}

/// Three masters and three replicas on free loopback ports, owned by one test (or one test
/// binary). Dropping it kills every node.
///
/// ```no_run
/// use tiercache_testkit::{RedisCluster, Role};
///
/// let mut cluster = RedisCluster::start();
/// let seeds = cluster.urls(); // "redis://127.0.0.1:<port>/" per node, for a cluster client
/// # let _ = seeds;
/// let replica = cluster.nodes_with_role(Role::Replica)[0];
/// cluster.failover(replica); // CLUSTER FAILOVER: the replica becomes a master, no data lost
/// assert_eq!(cluster.role(replica), Some(Role::Master));
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// For [`RedisCluster::shared`] only (a `static` is never dropped): an `sh` child that
    /// kills the nodes once this process is gone.
    watchdog: Option<Child>,
}

/// Waits while the owner (`$1`) lives, then `SIGKILL`s the node pids (`$3...`) and removes their
/// temp dirs (`$2`, a `:`-separated list; only `tiercache-redis-*` dirs are removed).
const WATCHDOG_SCRIPT: &str = r#"
owner=$1
dirs=$2
shift 2
while kill -0 "$owner" 2>/dev/null; do sleep 0.2; done
kill -KILL "$@" 2>/dev/null
IFS=:
for d in $dirs; do
    case $d in
        */tiercache-redis-*) rm -rf -- "$d" ;;
    esac
done
"#;

impl RedisCluster {
    /// Starts six nodes, creates the cluster (`redis-cli --cluster create`, one replica per
    /// master) and waits until every node reports `cluster_state:ok` and knows three masters and
    /// three replicas.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is missing, or the cluster does not come up in time.
    pub fn start() -> RedisCluster {
        Self::start_with_args(&[])
    }

    /// [`start`](Self::start) with `extra` arguments for every node, for example an ACL user
    /// (`--user svc on >pw ~* &* +@all`). The cluster is created as the `default` user.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with_args(extra: &[&str]) -> RedisCluster {
        Self::start_with_node_args(|_| extra.iter().map(|a| (*a).to_owned()).collect())
    }

    /// [`start`](Self::start) with arguments for node `i` from `extra(i)`, for settings that
    /// differ per node (a TLS port of its own: `--tls-port`, with `--tls-cluster yes`; the
    /// plain port stays, and the test kit and `redis-cli` use it).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with_node_args(extra: impl Fn(usize) -> Vec<String>) -> RedisCluster {
        let node_timeout = NODE_TIMEOUT_MS.to_string();
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            node_timeout.as_str(),
            // A replica without a recent sync may still take over: a test kills masters.
            "--cluster-replica-validity-factor",
            "0",
        ];
        let nodes: Vec<RedisServer> = (0..MASTERS * 2)
            .map(|i| {
                let extra = extra(i);
                let args: Vec<&str> = cluster_args
                    .iter()
                    .copied()
                    .chain(extra.iter().map(String::as_str))
                    .collect();
                RedisServer::start_with_args(&args)
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null());
        let output = match create.output() {
            Ok(output) => output,
            Err(error) => panic!(
                "could not run `redis-cli --cluster create` (install redis-cli with \
                 `apt-get install redis-server`): {error}"
            ),
        };
        assert!(
            output.status.success(),
            "`redis-cli --cluster create` failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            watchdog: None,
        };
        cluster.wait_until_ready();
        cluster
    }

    /// One cluster shared by every test of this test binary, started on first use. Tests that
    /// share it use their own namespaces, and never change it (it is only reachable through a
    /// shared reference: no kill, pause or failover). A watchdog kills its nodes shortly after
    /// the test process exits.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut cluster = RedisCluster::start();
            let dirs: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| n.dir().display().to_string())
                .collect();
            let mut watchdog = Command::new("sh");
            watchdog
                .arg("-c")
                .arg(WATCHDOG_SCRIPT)
                .arg("sh")
                .arg(std::process::id().to_string())
                .arg(dirs.join(":"));
            for node in &cluster.nodes {
                watchdog.arg(node.pid().expect("a node just started").to_string());
            }
            let child = watchdog
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("failed to spawn the cluster's watchdog shell: {e}"));
            cluster.watchdog = Some(child);
            cluster
        })
    }

    /// Seed URLs, one per node (`redis://127.0.0.1:<port>/`), in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// How many nodes there are (six).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0..6): kill, pause, resume, restart or query it like any [`RedisServer`].
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably (for the lifecycle controls).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The role of node `i` as it says itself (`CLUSTER NODES`, the `myself` line); `None` if
    /// it does not answer.
    pub fn role(&self, i: usize) -> Option<Role> {
        let nodes = self.nodes[i].command(&["CLUSTER", "NODES"]).ok()?;
        nodes
            .lines()
            .find_map(|line| flags(line).filter(|f| f.contains(&"myself")).map(role_of))
    }

    /// Moves `slots` slots (and their keys) from master `from` to master `to` with
    /// `redis-cli --cluster reshard`, while clients keep running: they meet `ASK` redirections
    /// during the move and `MOVED` after it. Waits until the cluster is ready again.
    ///
    /// # Panics
    ///
    /// If `redis-cli` fails, or the cluster does not settle in time.
    pub fn reshard(&self, from: usize, to: usize, slots: u32) {
        let id = |i: usize| {
            let reply = self.nodes[i]
                .command(&["CLUSTER", "MYID"])
                .expect("CLUSTER MYID");
            reply
                .lines()
                .nth(1)
                .expect("a bulk reply")
                .trim()
                .to_owned()
        };
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{}", self.nodes[from].port()))
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not run `redis-cli --cluster reshard`: {e}"));
        assert!(
            output.status.success(),
            "`redis-cli --cluster reshard` failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.wait_until_ready();
    }

    /// The nodes that say they hold `role` now, in node order.
    pub fn nodes_with_role(&self, role: Role) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.role(i) == Some(role))
            .collect()
    }

    /// The node that serves `key`'s slot as master now: `CLUSTER KEYSLOT`, then the node whose
    /// own (`myself`) `CLUSTER NODES` line says it is a master and lists the slot.
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let slot: u16 = (0..self.nodes.len()).find_map(|i| {
            let reply = self.nodes[i].command(&["CLUSTER", "KEYSLOT", key]).ok()?;
            reply.strip_prefix(':')?.trim().parse().ok()
        })?;
        (0..self.nodes.len()).find(|&i| {
            let Ok(nodes) = self.nodes[i].command(&["CLUSTER", "NODES"]) else {
                return false;
            };
            nodes.lines().any(|line| {
                flags(line).is_some_and(|f| f.contains(&"myself") && f.contains(&"master"))
                    && serves(line, slot)
            })
        })
    }

    /// `CLUSTER FAILOVER` on replica `i`: it takes over its master's slots in a coordinated
    /// handover (no write lost), and the old master becomes its replica. Waits until `i` says it
    /// is a master, its old master says it is not, and the cluster is ready again.
    ///
    /// # Panics
    ///
    /// If `i` is not a replica, or the failover does not complete in time.
    pub fn failover(&self, i: usize) {
        assert_eq!(
            self.role(i),
            Some(Role::Replica),
            "RedisCluster::failover: node {i} is not a replica"
        );
        let master = self.master_of_replica(i);
        let reply = self.nodes[i]
            .command(&["CLUSTER", "FAILOVER"])
            .expect("CLUSTER FAILOVER: the replica did not answer");
        assert!(
            reply.starts_with("+OK"),
            "CLUSTER FAILOVER refused: {reply}"
        );
        self.wait(&format!("node {i} to become a master"), || {
            self.role(i) == Some(Role::Master)
                && master.is_none_or(|m| self.role(m) != Some(Role::Master))
        });
        self.wait_until_ready();
    }

    /// The node that replica `i` replicates (`INFO replication`), if it is one of ours and
    /// answers.
    pub fn master_of_replica(&self, i: usize) -> Option<usize> {
        let info = self.nodes[i].command(&["INFO", "replication"]).ok()?;
        let port: u16 = info
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("master_port:"))?
            .parse()
            .ok()?;
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// Waits until every running node reports `cluster_state:ok` and sees three masters that
    /// serve slots (after a kill, once a replica has taken over).
    ///
    /// # Panics
    ///
    /// If that does not happen within 20 s.
    pub fn wait_until_ready(&self) {
        self.wait("cluster_state:ok on every running node", || {
            self.nodes
                .iter()
                .filter(|n| n.pid().is_some() && !n.is_paused())
                .all(|n| {
                    let ok = n
                        .command(&["CLUSTER", "INFO"])
                        .is_ok_and(|info| info.contains("cluster_state:ok"));
                    ok && n.command(&["CLUSTER", "NODES"]).is_ok_and(|nodes| {
                        nodes
                            .lines()
                            .filter(|l| {
                                flags(l)
                                    .is_some_and(|f| f.contains(&"master") && !f.contains(&"fail"))
                                    && l.split(' ').nth(8).is_some()
                            })
                            .count()
                            == MASTERS
                    })
                })
        });
    }

    /// After node `i` was killed, stopped or paused: waits until every other node flags it as
    /// failed and serves none of its slots (its replica took them over), and the cluster is
    /// ready. Returns how long that took.
    ///
    /// # Panics
    ///
    /// If that does not happen within 20 s.
    pub fn wait_until_replaced(&self, i: usize) -> Duration {
        let started = Instant::now();
        let addr = format!("127.0.0.1:{}@", self.nodes[i].port());
        self.wait(
            &format!("node {i} to be flagged failed and replaced"),
            || {
                self.nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, n)| *j != i && n.pid().is_some() && !n.is_paused())
                    .all(|(_, n)| {
                        n.command(&["CLUSTER", "NODES"]).is_ok_and(|nodes| {
                            nodes.lines().any(|l| {
                                l.split(' ').nth(1).is_some_and(|a| a.starts_with(&addr))
                                    && flags(l).is_some_and(|f| f.contains(&"fail"))
                                    && l.split(' ').nth(8).is_none()
                            })
                        })
                    })
            },
        );
        self.wait_until_ready();
        started.elapsed()
    }

    fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !cond() {
            if Instant::now() >= deadline {
                let views: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{}: {}",
                            n.port(),
                            n.command(&["CLUSTER", "NODES"])
                                .unwrap_or_else(|e| format!("({e})"))
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {READY_TIMEOUT:?} waiting for {what}; the nodes say:\n{}",
                    views.join("\n")
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for RedisCluster {
    /// Stops the watchdog (the nodes themselves are killed by their own `Drop`). Never panics.
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// The flags field (`myself,master`, `slave`, `master,fail`, ...) of a `CLUSTER NODES` line.
fn flags(line: &str) -> Option<Vec<&str>> {
    Some(line.split(' ').nth(2)?.split(',').collect())
}

fn role_of(flags: Vec<&str>) -> Role {
    if flags.contains(&"master") {
        Role::Master
    } else {
        Role::Replica
    }
}

/// Whether the `CLUSTER NODES` line lists `slot` among its slot ranges (fields 9 onwards).
fn serves(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_read() {
        let line = "07c3 127.0.0.1:30004@40004 myself,master - 0 0 1 connected 0-5460 7000";
        assert_eq!(flags(line), Some(vec!["myself", "master"]));
        assert!(serves(line, 0) && serves(line, 5460) && serves(line, 7000));
        assert!(!serves(line, 5461));
        let replica = "67ed 127.0.0.1:30002@40002 slave 07c3 0 1 1 connected";
        assert_eq!(flags(replica).map(role_of), Some(Role::Replica));
        assert!(!serves(replica, 0));
    }

    #[test]
    fn a_cluster_starts_routes_a_key_and_fails_over() {
        let cluster = RedisCluster::start();
        assert_eq!(cluster.len(), 6);
        let masters = cluster.nodes_with_role(Role::Master);
        let replicas = cluster.nodes_with_role(Role::Replica);
        assert_eq!((masters.len(), replicas.len()), (3, 3));

        let owner = cluster.master_of("{user:1}:name").unwrap();
        assert_eq!(
            cluster
                .node(owner)
                .command(&["SET", "{user:1}:name", "ada"])
                .unwrap(),
            "+OK\r\n"
        );
        assert_eq!(
            cluster
                .node(owner)
                .command(&["GET", "{user:1}:name"])
                .unwrap(),
            "$3\r\nada\r\n"
        );
        // The same hash tag, the same slot: another key of it lives on the same master.
        assert_eq!(cluster.master_of("{user:1}:mail"), Some(owner));
        let other = masters.iter().copied().find(|&m| m != owner).unwrap();
        assert!(
            cluster
                .node(other)
                .command(&["GET", "{user:1}:name"])
                .unwrap()
                .starts_with("-MOVED")
        );

        // The owner's replica takes over without losing the key.
        let replica = replicas
            .iter()
            .copied()
            .find(|&r| cluster.master_of_replica(r) == Some(owner))
            .unwrap();
        cluster.failover(replica);
        assert_eq!(cluster.role(replica), Some(Role::Master));
        assert_eq!(cluster.role(owner), Some(Role::Replica));
        assert_eq!(cluster.master_of("{user:1}:name"), Some(replica));
        assert_eq!(
            cluster
                .node(replica)
                .command(&["GET", "{user:1}:name"])
                .unwrap(),
            "$3\r\nada\r\n"
        );
    }
}
