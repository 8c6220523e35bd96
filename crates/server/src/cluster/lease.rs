//! One owner per room: a lease in Redis with a fencing epoch.
//!
//! A node (or one worker of it) that wants to own a room takes `huddle:room:{name}:owner` with
//! a time to live; the value names the owner and carries the room's **epoch**, which goes up by
//! one on every take (`huddle:room:{name}:epoch`), and a random token, so that a value is never
//! written twice. Taking, renewing, releasing and every fenced write are Lua scripts (Redis runs
//! each atomically), and each compares the whole owner value first: an owner that was paused
//! (SIGSTOP, a long stall) past its lease finds another value there when it wakes, and can
//! neither renew nor write. It must stop acting as owner by itself even before it hears so:
//! [`Held::valid_until`] is when its lease may have run out in Redis's eyes, counted from when
//! the request that took or renewed it was *sent* (not answered), less a margin for clocks that
//! run at different speeds. Nothing here uses commands newer than Redis 7.0 (Debian's).
//!
//! Why a script for the take rather than `SET NX PX` then `INCR`: the epoch must go up exactly
//! when the owner changes, and two separate commands could be torn apart by a crash in between.

use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The owner value's parts: `<node>/<worker>/<epoch>/<token>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub worker: u32,
    pub epoch: u64,
    token: String,
}

impl Owner {
    fn value(&self) -> String {
        format!("{}/{}/{}/{}", self.node, self.worker, self.epoch, self.token)
    }

    fn parse(value: &str) -> Option<Owner> {
        let mut parts = value.splitn(4, '/');
        let node = parts.next()?.to_string();
        let worker = parts.next()?.parse().ok()?;
        let epoch = parts.next()?.parse().ok()?;
        let token = parts.next()?.to_string();
        Some(Owner { node, worker, epoch, token })
    }
}

/// A lease this owner holds: who, and until when it may act as owner without renewing.
#[derive(Clone, Debug)]
pub struct Held {
    pub owner: Owner,
    pub valid_until: Instant,
}

/// Clocks of two machines may drift apart by this share of a lease (Redis counts the TTL on its
/// clock, the owner on its own).
const DRIFT: f64 = 0.01;
/// And by this much at least, for the delay between Redis setting the TTL and the reply arriving
/// (already covered by counting from the send) and for timer granularity.
const MARGIN: Duration = Duration::from_millis(5);

fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(ttl.mul_f64(DRIFT) + MARGIN)
}

/// `KEYS[1]` owner key, `KEYS[2]` epoch key; `ARGV`: node, worker, token, ttl ms. Returns
/// `{1, the new owner value}` when taken, `{0, the current owner's value}` when owned.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('PERSIST', KEYS[2])
local value = ARGV[1] .. '/' .. ARGV[2] .. '/' .. epoch .. '/' .. ARGV[3]
redis.call('SET', KEYS[1], value, 'PX', ARGV[4])
return {1, value}
"#,
    )
});

/// A script that does `action` only while `ARGV[1]` is the room's owner value (at `KEYS[1]`):
/// 1 when it did, 0 when the room has another owner or none.
fn if_owner(action: &str) -> Script {
    Script::new(&format!("if redis.call('GET', KEYS[1]) == ARGV[1] then\n  {action}\n  return 1\nend\nreturn 0\n"))
}

/// `ARGV[2]`: ttl ms.
static RENEW: LazyLock<Script> = LazyLock::new(|| if_owner("redis.call('PEXPIRE', KEYS[1], ARGV[2])"));
static RELEASE: LazyLock<Script> = LazyLock::new(|| if_owner("redis.call('DEL', KEYS[1])"));
/// `KEYS[2]` the epoch, `KEYS[3]` the room's saved state: kept `ARGV[2]` ms more for the next
/// owner, and gone after that if nobody took the room.
static HAND_OVER: LazyLock<Script> = LazyLock::new(|| {
    if_owner("redis.call('DEL', KEYS[1])\n  redis.call('PEXPIRE', KEYS[2], ARGV[2])\n  redis.call('PEXPIRE', KEYS[3], ARGV[2])")
});
/// `KEYS[2]` the key written, `ARGV[2]` its value.
static FENCED_SET: LazyLock<Script> = LazyLock::new(|| if_owner("redis.call('SET', KEYS[2], ARGV[2])"));
/// `KEYS`: owner key, epoch key, then every other key of the room: the room has ended, nothing
/// of it stays.
static END: LazyLock<Script> = LazyLock::new(|| if_owner("redis.call('DEL', unpack(KEYS))"));

/// Room leases on one Redis, for one node.
#[derive(Clone)]
pub struct Leases {
    redis: ConnectionManager,
    node: String,
    ttl: Duration,
}

/// The keys of one room; `{name}` is a hash tag, so that a Redis Cluster would keep a room's
/// keys on one shard (scripts may only touch keys of one shard).
fn owner_key(room: &str) -> String {
    format!("huddle:room:{{{room}}}:owner")
}

fn epoch_key(room: &str) -> String {
    format!("huddle:room:{{{room}}}:epoch")
}

/// A key of the room's own state (`what`: e.g. `settings`), under the same hash tag.
pub fn state_key(room: &str, what: &str) -> String {
    format!("huddle:room:{{{room}}}:{what}")
}

impl Leases {
    pub fn new(redis: ConnectionManager, node: impl Into<String>, ttl: Duration) -> Leases {
        Leases { redis, node: node.into(), ttl }
    }

    /// Takes `room` for `worker` of this node if nobody owns it: `Ok(Ok(held))`, or
    /// `Ok(Err(owner))` naming the current owner.
    pub async fn take(&self, room: &str, worker: u32) -> redis::RedisResult<Result<Held, Owner>> {
        let token = crate::files::random_hex();
        let sent = Instant::now();
        let (taken, value): (i64, String) = TAKE
            .key(owner_key(room))
            .key(epoch_key(room))
            .arg(&self.node)
            .arg(worker)
            .arg(&token)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let owner = Owner::parse(&value).ok_or_else(|| bad_value(&value))?;
        Ok(if taken == 1 { Ok(Held { owner, valid_until: valid_until(sent, self.ttl) }) } else { Err(owner) })
    }

    /// Keeps the lease: `true` and a later [`Held::valid_until`], or `false` when the room has
    /// another owner now (the caller must stop acting as owner at once).
    pub async fn renew(&self, room: &str, held: &mut Held) -> redis::RedisResult<bool> {
        let sent = Instant::now();
        let mut call = RENEW.key(owner_key(room));
        call.arg(held.owner.value()).arg(self.ttl.as_millis() as u64);
        let renewed = self.acted(&call).await?;
        if renewed {
            held.valid_until = valid_until(sent, self.ttl);
        }
        Ok(renewed)
    }

    /// Gives the room up (a handover, a drain): the next take raises the epoch.
    pub async fn release(&self, room: &str, held: &Held) -> redis::RedisResult<bool> {
        self.acted(RELEASE.key(owner_key(room)).arg(held.owner.value())).await
    }

    /// Gives the room up for another node to carry on (a node stopping): the lease goes, and
    /// `state` (its saved state) stays for `keep`, for the next owner to start from; a room
    /// nobody takes in that time leaves nothing behind.
    pub async fn hand_over(&self, room: &str, held: &Held, state: &str, keep: Duration) -> redis::RedisResult<bool> {
        let mut call = HAND_OVER.key(owner_key(room));
        call.key(epoch_key(room)).key(state).arg(held.owner.value()).arg(keep.as_millis().max(1) as u64);
        self.acted(&call).await
    }

    /// Writes `key` only while `held` is the room's owner: what a paused old owner tries when it
    /// wakes is refused.
    pub async fn fenced_set(&self, room: &str, held: &Held, key: &str, value: &[u8]) -> redis::RedisResult<bool> {
        self.acted(FENCED_SET.key(owner_key(room)).key(key).arg(held.owner.value()).arg(value)).await
    }

    /// The room has ended: its owner deletes its lease, its epoch and `state` keys (those of
    /// [`state_key`]) in one step, so that Redis keeps nothing of it.
    pub async fn end(&self, room: &str, held: &Held, state: &[String]) -> redis::RedisResult<bool> {
        let mut call = END.key(owner_key(room));
        call.key(epoch_key(room)).key(state).arg(held.owner.value());
        self.acted(&call).await
    }

    /// Runs one of the [`if_owner`] scripts: whether it acted.
    async fn acted(&self, call: &redis::ScriptInvocation<'_>) -> redis::RedisResult<bool> {
        let acted: i64 = call.invoke_async(&mut self.redis.clone()).await?;
        Ok(acted == 1)
    }

    /// Who owns `room` now, if anyone.
    pub async fn owner(&self, room: &str) -> redis::RedisResult<Option<Owner>> {
        let value: Option<String> = redis::cmd("GET").arg(owner_key(room)).query_async(&mut self.redis.clone()).await?;
        match value {
            None => Ok(None),
            Some(v) => Owner::parse(&v).map(Some).ok_or_else(|| bad_value(&v)),
        }
    }
}

fn bad_value(value: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a room owner value", value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_value_reads_back_as_written() {
        let o = Owner { node: "n1".into(), worker: 3, epoch: 42, token: "ab/cd".into() };
        assert_eq!(Owner::parse(&o.value()), Some(o));
        assert_eq!(Owner::parse("n1/x/1/t"), None);
        assert_eq!(Owner::parse("n1/1"), None);
    }

    #[test]
    fn a_lease_is_trusted_for_less_than_its_time_to_live() {
        let sent = Instant::now();
        let until = valid_until(sent, Duration::from_secs(10));
        assert!(until < sent + Duration::from_secs(10));
        assert!(until > sent + Duration::from_secs(9));
    }
}
