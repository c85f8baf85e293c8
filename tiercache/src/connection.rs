//! The connection under `remote`: one Redis server, or a Redis Cluster, behind one type.
//!
//! `remote` decides which commands to send and what they mean; this module only decides how they
//! travel. [`Connection`] is either the single server's [`ConnectionManager`] (one multiplexed,
//! self-reconnecting connection) or a [`ClusterConnection`] (redis-rs `cluster-async`: one
//! multiplexed connection per node, each command routed to the node that serves its key's slot,
//! `MOVED`/`ASK` followed and the slot map refreshed after a failover). Both are `Clone` (an
//! `Arc` or a channel sender inside) and implement [`ConnectionLike`], so every call in `remote`
//! reads the same whichever is configured; both have their own response timeouts turned off,
//! because `remote` bounds every call by the operation timeout.
//!
//! # What a cluster changes
//! - **Pipelines.** Redis Cluster runs a pipeline on one node only, and redis-rs refuses one
//!   whose keys lie in several slots. `remote` sends a value's key and its tags' version keys
//!   (`tiercache#tag:...`) in one pipeline, and they are in different slots by design: a tag
//!   groups keys of every slot. [`Connection::pipeline`] therefore splits a pipeline on a
//!   cluster, in three stages that keep every order `remote` relies on: (1) the first command
//!   (with any later command of its slot), (2) the other commands, grouped per slot into one
//!   sub-pipeline each (commands of one slot keep their order), all slots at once, and (3)
//!   the notice (`SPUBLISH`), after everything else succeeded — so no
//!   instance hears of a change before it is applied, as on one server. Stage 1 first matters
//!   for a fill: the fill's lease check and store must precede the read-back of its tags'
//!   versions. A multi-key command (`MGET`, `UNLINK` of several keys) is sent on its own and
//!   split per slot by redis-rs. On one server a pipeline is sent as it is.
//! - **Scans.** A cluster's keys are spread over its masters, so `SCAN` runs against each master
//!   in turn ([`Connection::masters`], [`Connection::query_at`]).
//! - **The invalidation channel.** Sharded pub/sub (Redis 7): notices and heartbeats go out with
//!   `SPUBLISH`, routed by the channel name's slot, and the channels of a namespace carry one hash
//!   tag (see `bus`), so one shard carries them all; the subscriber (`SSUBSCRIBE`, on a RESP3
//!   cluster connection of its own: [`Connector::subscribe`]) is served by that shard's master,
//!   which delivers them in the order it ran them, as one server does. Unlike a `PUBLISH`, which
//!   a cluster broadcasts to every node over its bus, an `SPUBLISH` stays within the shard. See
//!   `bus` for what happens when that master fails over or dies.

use std::collections::HashMap;
use std::fmt;

use futures_util::future::try_join_all;
use futures_util::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Client, Cmd, Pipeline, PushKind, RedisFuture, RedisResult, Value};

/// What a [`Connection`] (and the subscriber's connection) is built from, kept so that recovery
/// can build a fresh one.
pub(crate) enum Connector {
    /// One server.
    Single {
        /// Boxed, as the cluster's clients are: the enum stays small.
        client: Box<Client>,
        manager_config: ConnectionManagerConfig,
    },
    /// A cluster, from its seed nodes. Boxed: the cluster client is much larger than the rest.
    Cluster {
        cluster: Box<ClusterClient>,
        /// The same seeds and settings, speaking RESP3, for the sharded subscriber.
        subscriber: Box<ClusterClient>,
    },
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single { .. } => f.write_str("Connector::Single"),
            Self::Cluster { cluster, .. } => write!(f, "Connector::Cluster({cluster:?})"),
        }
    }
}

impl Connector {
    /// A connection that connects on its first command (it needs a Tokio runtime).
    pub(crate) fn connect(&self) -> RedisResult<Connection> {
        Ok(match self {
            Self::Single {
                client,
                manager_config,
            } => Connection::Single(ConnectionManager::new_lazy_with_config(
                Client::clone(client),
                manager_config.clone(),
            )?),
            Self::Cluster { cluster, .. } => Connection::Cluster(
                cluster.get_pending_async_connection_with_config(ClusterConfig::new()),
            ),
        })
    }

    /// A dedicated subscription to `channels`, as a stream of (channel, payload) that ends when
    /// the subscription is lost. On one server, a pub/sub connection (`SUBSCRIBE`). On a cluster,
    /// sharded pub/sub (`SSUBSCRIBE`, Redis 7): the channels share one hash tag, so one shard
    /// carries them, and the subscription goes to that shard's master, which delivers in the
    /// order it ran the `SPUBLISH`es. redis-rs would resubscribe by itself after a disconnection
    /// or a failover, but a notice published meanwhile is lost, so the stream ends at the first
    /// disconnection or server-side `SUNSUBSCRIBE` (a slot that moved) and `bus` treats it as
    /// any lost subscription.
    pub(crate) async fn subscribe(&self, channels: &[&str]) -> RedisResult<Subscription> {
        match self {
            Self::Single { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                for channel in channels {
                    pubsub.subscribe(*channel).await?;
                }
                Ok(pubsub
                    .into_on_message()
                    .map(|msg| {
                        (
                            msg.get_channel_name().to_owned(),
                            msg.get_payload_bytes().to_vec(),
                        )
                    })
                    .boxed())
            }
            Self::Cluster { subscriber, .. } => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let mut conn = subscriber
                    .get_async_connection_with_config(ClusterConfig::new().set_push_sender(tx))
                    .await?;
                conn.ssubscribe(channels).await?;
                // The connection lives as long as the stream: dropping it ends the subscription.
                Ok(
                    futures_util::stream::unfold((rx, conn), |(mut rx, conn)| async move {
                        loop {
                            let push = rx.recv().await?;
                            match push.kind {
                                PushKind::SMessage => {
                                    if let Some(message) = sharded_message(push.data) {
                                        return Some((message, (rx, conn)));
                                    }
                                }
                                PushKind::Disconnection | PushKind::SUnsubscribe => return None,
                                _ => {}
                            }
                        }
                    })
                    .boxed(),
                )
            }
        }
    }
}

/// A subscription's messages: (channel, payload).
pub(crate) type Subscription = BoxStream<'static, (String, Vec<u8>)>;

/// The (channel, payload) of an `smessage` push, `[channel, payload]`.
fn sharded_message(data: Vec<Value>) -> Option<(String, Vec<u8>)> {
    let mut data = data.into_iter();
    let channel: String = redis::from_redis_value(data.next()?).ok()?;
    let payload: Vec<u8> = redis::from_redis_value(data.next()?).ok()?;
    Some((channel, payload))
}

/// One server's connection manager, or a cluster's connection.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Connection::Single"),
            Self::Cluster(_) => f.write_str("Connection::Cluster"),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A cluster node's address, as `CLUSTER SLOTS` names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Node {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Where one command of a split pipeline goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Keyed by one slot: goes into that slot's sub-pipeline.
    Slot(Slot),
    /// Several keys (split by redis-rs), or a command redis-rs routes itself (`SCRIPT LOAD` to
    /// every node): sent alone, in stage 2.
    Alone,
    /// A notice: sent alone after everything else.
    Last,
}

impl Connection {
    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs `pipe` (built with `ignore_errors`) and returns one reply per command, in order. On
    /// a cluster, split as the module docs say. A command sent alone that fails fails the whole
    /// call (server errors of commands in sub-pipelines come back as replies, as on one server).
    pub(crate) async fn pipeline(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let Self::Cluster(conn) = self else {
            return pipe.query_async(self).await;
        };
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let lanes: Vec<Lane> = cmds.iter().map(|c| lane(c)).collect();
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];

        // Stage 1: the first command (and its slot's later commands), or it alone.
        let first = lanes.first().copied();
        let mut stage1 = Vec::new();
        match first {
            Some(Lane::Slot(slot)) => stage1.push(group(&cmds, &lanes, Lane::Slot(slot))),
            Some(Lane::Alone) => stage1.push(vec![0]),
            Some(Lane::Last) | None => {}
        }
        run(conn, &cmds, &stage1, &mut replies).await?;

        // Stage 2: every other slot at once, and multi-key commands.
        let mut stage2: Vec<Vec<usize>> = Vec::new();
        let mut seen: HashMap<Slot, usize> = HashMap::new();
        for (i, l) in lanes.iter().enumerate() {
            if replies[i].is_some() {
                continue;
            }
            match l {
                Lane::Slot(slot) => match seen.get(slot) {
                    Some(&g) => stage2[g].push(i),
                    None => {
                        seen.insert(*slot, stage2.len());
                        stage2.push(vec![i]);
                    }
                },
                Lane::Alone => stage2.push(vec![i]),
                Lane::Last => {}
            }
        }
        run(conn, &cmds, &stage2, &mut replies).await?;

        // Stage 3: notices, in order.
        for (i, l) in lanes.iter().enumerate() {
            if *l == Lane::Last {
                run(conn, &cmds, &[vec![i]], &mut replies).await?;
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.unwrap_or(Value::Nil))
            .collect())
    }

    /// Runs `cmd` on `node` (a cluster master found by [`masters`](Self::masters)); on one
    /// server, just runs it.
    pub(crate) async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        node: Option<&Node>,
    ) -> RedisResult<T> {
        match (self, node) {
            (Self::Cluster(c), Some(node)) => {
                let value = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: node.host.clone(),
                            port: node.port,
                        }),
                    )
                    .await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }

    /// The nodes to scan: every master of a cluster (from `CLUSTER SLOTS`), or `[None]` (the
    /// one server).
    pub(crate) async fn masters(&mut self) -> RedisResult<Vec<Option<Node>>> {
        if !self.is_cluster() {
            return Ok(vec![None]);
        }
        let mut masters: Vec<Option<Node>> = Vec::new();
        for (_, node) in self.slots().await? {
            if !masters.iter().flatten().any(|m| *m == node) {
                masters.push(Some(node));
            }
        }
        Ok(masters)
    }

    /// `CLUSTER SLOTS`: each slot range and the master that serves it.
    async fn slots(&mut self) -> RedisResult<Vec<((u16, u16), Node)>> {
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(self).await?;
        parse_slots(reply)
    }
}

/// The lane of one command of a pipeline that `remote` builds.
fn lane(cmd: &Cmd) -> Lane {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args
        .first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default();
    let key = match name.as_slice() {
        b"PUBLISH" | b"SPUBLISH" => return Lane::Last,
        b"MGET" | b"UNLINK" | b"DEL" | b"EXISTS" if args.len() != 2 => return Lane::Alone,
        b"EVALSHA" | b"EVAL" => match args.get(2) {
            Some(n) if *n == b"1" => args.get(3),
            _ => return Lane::Alone,
        },
        b"GET" | b"SET" | b"PEXPIRE" | b"PTTL" | b"GETRANGE" | b"STRLEN" | b"MGET" | b"UNLINK"
        | b"DEL" | b"EXISTS" => args.get(1),
        _ => return Lane::Alone,
    };
    match key {
        Some(key) => Lane::Slot(Slot::for_key(key)),
        None => Lane::Alone,
    }
}

/// The indices of the commands in `lane`, in order.
fn group(cmds: &[&Cmd], lanes: &[Lane], lane: Lane) -> Vec<usize> {
    (0..cmds.len()).filter(|&i| lanes[i] == lane).collect()
}

/// Sends each group at once (a sub-pipeline per slot group, or a lone command) and stores the
/// replies at their indices.
async fn run(
    conn: &ClusterConnection,
    cmds: &[&Cmd],
    groups: &[Vec<usize>],
    replies: &mut [Option<Value>],
) -> RedisResult<()> {
    let sends = groups.iter().map(|g| {
        let mut conn = conn.clone();
        async move {
            let alone = g.len() == 1 && !matches!(lane(cmds[g[0]]), Lane::Slot(_));
            if alone {
                let v = cmds[g[0]].query_async::<Value>(&mut conn).await?;
                RedisResult::Ok(vec![v])
            } else {
                let mut sub = redis::pipe();
                sub.ignore_errors();
                for &i in g {
                    sub.add_command(cmds[i].clone());
                }
                sub.query_async::<Vec<Value>>(&mut conn).await
            }
        }
    });
    let done = try_join_all(sends).await?;
    for (g, values) in groups.iter().zip(done) {
        for (&i, v) in g.iter().zip(values) {
            replies[i] = Some(v);
        }
    }
    Ok(())
}

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replicas...], ...]`.
fn parse_slots(reply: Value) -> RedisResult<Vec<((u16, u16), Node)>> {
    let bad =
        || redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"));
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let mut fields = fields.into_iter();
        let start: u16 = redis::from_redis_value(fields.next().ok_or_else(bad)?)?;
        let end: u16 = redis::from_redis_value(fields.next().ok_or_else(bad)?)?;
        let Some(Value::Array(master)) = fields.next() else {
            return Err(bad());
        };
        let mut master = master.into_iter();
        let host: String = redis::from_redis_value(master.next().ok_or_else(bad)?)?;
        let port: u16 = redis::from_redis_value(master.next().ok_or_else(bad)?)?;
        out.push(((start, end), Node { host, port }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_go_to_their_keys_slots() {
        let mut get = redis::cmd("GET");
        get.arg("dev:ns:c:{a}");
        let mut set = redis::cmd("SET");
        set.arg("x{a}y").arg("v");
        assert_eq!(lane(&get), lane(&set));
        assert!(matches!(lane(&get), Lane::Slot(_)));
        let mut publish = redis::cmd("PUBLISH");
        publish.arg("ch").arg("m");
        assert_eq!(lane(&publish), Lane::Last);
        let mut mget = redis::cmd("MGET");
        mget.arg("a").arg("b");
        assert_eq!(lane(&mget), Lane::Alone);
        let mut one = redis::cmd("MGET");
        one.arg("{a}");
        assert_eq!(lane(&one), lane(&get));
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(lane(&load), Lane::Alone);
    }

    #[test]
    fn cluster_slots_name_each_ranges_master() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
        ]);
        let slots = parse_slots(reply).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(
            slots[0],
            (
                (0, 5460),
                Node {
                    host: "127.0.0.1".into(),
                    port: 7000
                }
            )
        );
        assert_eq!(slots[1].1.port, 7001);
        assert!(parse_slots(Value::Nil).is_err());
    }
}
