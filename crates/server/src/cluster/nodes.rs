//! Which nodes are alive, and how loaded: each node beats into Redis, and one that stops beating
//! is gone once its last beat runs out.
//!
//! `huddle:nodes` is a sorted set of node ids scored by when their last beat runs out (Redis's
//! own clock, `TIME`, so that nodes whose clocks disagree still agree on who is alive), and
//! `huddle:node:{id}` holds each one's description as JSON, with the same time to live. Listing
//! drops the expired entries on the way; a node that stops cleanly leaves at once.

use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
use std::time::Duration;

/// What a node says about itself with each beat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Where other nodes reach it (its relay address).
    pub address: String,
    pub version: String,
    /// Rooms it owns, people in them, and its CPU use (0.0 to 1.0 per core, summed).
    pub rooms: u32,
    pub people: u32,
    pub cpu: f32,
    /// It stops taking new rooms (SIGTERM: draining before it exits).
    pub draining: bool,
    /// It serves HTTPS itself (then other nodes cannot pass it requests for its files).
    #[serde(default)]
    pub tls: bool,
}

const NODES: &str = "huddle:nodes";

fn node_key(id: &str) -> String {
    format!("huddle:node:{id}")
}

/// `KEYS[1]` the set, `KEYS[2]` the node's key; `ARGV`: id, description, ttl ms.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"#,
    )
});

/// `KEYS[1]` the set. Drops the expired, returns the live ids.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});

/// This node's registration.
#[derive(Clone)]
pub struct Nodes {
    redis: ConnectionManager,
    ttl: Duration,
}

impl Nodes {
    /// `ttl`: how long a beat keeps a node alive; beat a few times within it.
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Nodes {
        Nodes { redis, ttl }
    }

    pub async fn beat(&self, info: &NodeInfo) -> redis::RedisResult<()> {
        let json = serde_json::to_string(info).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "cannot describe the node", e.to_string()))
        })?;
        let _: i64 = BEAT
            .key(NODES)
            .key(node_key(&info.id))
            .arg(&info.id)
            .arg(json)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// A clean stop: gone at once rather than when the last beat runs out.
    pub async fn leave(&self, id: &str) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        let _: () = redis::pipe().zrem(NODES, id).ignore().del(node_key(id)).ignore().query_async(&mut con).await?;
        Ok(())
    }

    /// Whether node `id` beat within its time to live.
    pub async fn beats(&self, id: &str) -> redis::RedisResult<bool> {
        redis::cmd("EXISTS").arg(node_key(id)).query_async(&mut self.redis.clone()).await
    }

    /// The nodes alive now, in id order. A description that cannot be read is skipped.
    pub async fn live(&self) -> redis::RedisResult<Vec<NodeInfo>> {
        let mut con = self.redis.clone();
        let ids: Vec<String> = LIVE.key(NODES).invoke_async(&mut con).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
        let mut nodes: Vec<NodeInfo> =
            values.into_iter().flatten().filter_map(|v| serde_json::from_str(&v).ok()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

/// Where a new room goes: of two nodes drawn at random among those that take rooms, the less
/// loaded (people first, then rooms) — "the power of two choices", which spreads load nearly
/// as well as asking every node while herding no wave of new rooms onto the one that looked
/// emptiest a moment ago. `pick(n)` draws a number below `n`.
pub fn place(nodes: &[NodeInfo], mut pick: impl FnMut(usize) -> usize) -> Option<&NodeInfo> {
    let open: Vec<&NodeInfo> = nodes.iter().filter(|n| !n.draining).collect();
    match open.len() {
        0 => None,
        1 => Some(open[0]),
        n => {
            let a = open[pick(n)];
            let b = open[pick(n)];
            Some(if (b.people, b.rooms) < (a.people, a.rooms) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, people: u32, draining: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:9000"),
            version: "t".into(),
            rooms: people / 5,
            people,
            cpu: 0.0,
            draining,
            tls: false,
        }
    }

    #[test]
    fn a_new_room_goes_to_the_less_loaded_of_two_and_never_to_a_draining_node() {
        let nodes = [node("a", 40, false), node("b", 3, false), node("c", 0, true)];
        let mut draws = [0, 1].into_iter();
        assert_eq!(place(&nodes, |_| draws.next().unwrap_or(0)).map(|n| n.id.as_str()), Some("b"));
        for draw in 0..2 {
            assert_ne!(place(&nodes, |_| draw).map(|n| n.id.as_str()), Some("c"));
        }
        assert!(place(&[node("c", 0, true)], |_| 0).is_none(), "nobody takes rooms while draining");
    }
}
