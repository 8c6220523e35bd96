//! Running several huddle nodes on one Redis (issue 16; docs/design/room-ownership.md).
//!
//! - [`lease`]: a room has one owner at a time, under a lease with a fencing epoch that goes up
//!   on every change of owner.
//! - [`nodes`]: which nodes are alive, and how loaded.
//! - [`relay`]: a connection's signalling travels to the node that owns its room and back.
//!
//! [`Cluster`] puts them together for one node (`--redis`). A session lives on one node, its
//! **home**: where its WebSocket landed until it joins a room, then the room's owner. When a
//! connection joins a room owned by another node, its session moves there (the hub exports it,
//! the owner adopts it) and from then on its node only relays. Without `--redis` none of this
//! runs and huddle is the single node it always was.
//!
//! A node that stops cleanly hands its rooms over ([`Cluster::hand_over`]); one that dies has
//! them taken over when their leases run out, from what it saved.
//!
//! What is not built yet (issue 16 stays open): files across nodes, and placing new rooms on the
//! least-loaded node (a room goes to the node whose connection opened it).

pub mod forward;
pub mod lease;
pub mod nodes;
pub mod relay;

pub use forward::forward;

use crate::config::Config;
use crate::hub::{Command, RoomEvent};
use crate::turn::TurnCommand;
use futures_util::StreamExt;
use huddle_protocol::PeerId;
use lease::{Held, Leases};
use nodes::{NodeInfo, Nodes};
use redis::aio::ConnectionManager;
use relay::{Envelope, RelayCmd};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// How long a room's lease lasts without renewal: an owner that dies is replaced after this.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the leases are renewed (three tries within a lease).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a node's beat keeps it alive, and how often it beats.
pub const NODE_TTL: Duration = Duration::from_secs(6);
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// How long `huddle:session:<id>` names a session's home after its latest join.
pub const SESSION_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Messages waiting to be published, at most; beyond, they are dropped (and counted), and the
/// receiving side sees a gap.
const PUBLISH_QUEUE: usize = 65_536;
/// Most messages in one pipelined round trip to Redis.
const PUBLISH_BATCH: usize = 256;
/// How many times a batch is sent again after the connection to Redis broke (waiting 0.2, 0.4,
/// 0.8, 1.6, then 2 s between): about seven seconds for Redis to come back, and for the
/// connection to it to be made again, before the batch is dropped.
const PUBLISH_RETRIES: u32 = 6;
/// The longest wait between two of those tries.
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Where every node says which public rooms it owns (`{"node":…,"rooms":[…]}`), when they change
/// and every [`RENEW_EVERY`]; a list not said again within [`ROOM_LIST_TTL`] is dropped.
pub const ROOMS_CHANNEL: &str = "huddle:rooms";
pub const ROOM_LIST_TTL: Duration = Duration::from_secs(10);
/// Where every node says which relay users its hub granted and revoked, so that a page's TURN
/// credentials work on every node's TURN server, and stop working on all of them together.
pub const TURN_CHANNEL: &str = "huddle:turn";
/// A room taken for a join that the hub has not opened after this long (the join was refused)
/// is given up.
pub const UNOPENED_GRACE: Duration = Duration::from_secs(10);
/// How long a node waits for Redis to say who owns a room, or for another node's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node waits for the node it placed a new room on to take it; then it takes the
/// room itself.
pub const TAKE_ANSWER: Duration = Duration::from_secs(1);

/// What `/metrics` shows of the cluster.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub relayed_in: AtomicU64,
    pub relayed_out: AtomicU64,
    pub relay_dropped: AtomicU64,
    pub relay_gaps: AtomicU64,
    pub rooms_owned: AtomicUsize,
    pub nodes_live: AtomicUsize,
    pub lease_takes: AtomicU64,
    pub lease_renewals: AtomicU64,
    pub lease_losses: AtomicU64,
    pub redis_errors: AtomicU64,
    /// The latest publish round trip, in microseconds.
    pub redis_rtt_us: AtomicU64,
}

/// This node's part in a cluster.
pub struct Cluster {
    /// This node's id: random at each start, 8 hex digits.
    pub node: String,
    /// The same as a number, for peer ids.
    node_bits: u32,
    pub config: Arc<Config>,
    pub stats: ClusterStats,
    hub: mpsc::Sender<Command>,
    /// This node's connection numbers (shared with the WebSocket handler).
    next_id: Arc<AtomicU64>,
    relay: mpsc::Sender<RelayCmd>,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    keeper: mpsc::Sender<KeeperCmd>,
    redis: ConnectionManager,
    /// For asking who owns a room (only the keeper takes, renews and gives up leases).
    leases: Leases,
    nodes: Nodes,
    /// The live nodes as of the last beat (this one included).
    live: std::sync::Mutex<HashSet<String>>,
    /// Nodes that said they left ([`Cluster::leave`]): not live, whatever an older list says.
    departed: std::sync::Mutex<HashSet<String>>,
    /// This node is stopping (it says so in its beat), and then has left (it beats no more).
    stopping: AtomicBool,
    left: AtomicBool,
    /// The cluster's key for what nodes vouch for to each other ([`SharedKeys::node`]).
    node_key: Vec<u8>,
    /// This node serves HTTPS itself (said in its beat).
    serves_tls: bool,
    /// The live nodes and their load as of the last beat, for placing new rooms.
    nodes_info: std::sync::Mutex<Vec<NodeInfo>>,
    /// This node's TURN server, told what the other nodes grant and revoke ([`Cluster::share_turn`]).
    turn: std::sync::Mutex<Option<mpsc::WeakSender<TurnCommand>>>,
    /// Asks of other nodes to take a room ([`Cluster::ask_to_take`]) waiting for their answer.
    takes: std::sync::Mutex<HashMap<u64, oneshot::Sender<Option<String>>>>,
    next_take: AtomicU64,
}

impl Cluster {
    /// Connects to Redis at `url`, subscribes to this node's channel and starts the tasks of
    /// the cluster. `hub` is this node's hub; rooms it opens and closes come on `room_events`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: Arc<Config>,
        url: &str,
        hub: mpsc::Sender<Command>,
        next_id: Arc<AtomicU64>,
        room_events: mpsc::UnboundedReceiver<RoomEvent>,
        address: String,
        serves_tls: bool,
        keys: &SharedKeys,
    ) -> anyhow::Result<Arc<Cluster>> {
        let shown = redacted(url);
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("--redis {shown}: {e}"))?;
        let redis = tokio::time::timeout(ASK_TIMEOUT, client.get_connection_manager())
            .await
            .map_err(|_| anyhow::anyhow!("cannot reach Redis at {shown} (no answer)"))?
            .map_err(|e| anyhow::anyhow!("cannot reach Redis at {shown}: {e}"))?;
        let node = crate::files::random_hex()[..8].to_string();
        let node_bits = u32::from_str_radix(&node, 16).expect("random_hex gives hex digits");
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&[relay::channel(&node), ROOMS_CHANNEL.to_string(), TURN_CHANNEL.to_string()]).await?;
        let (relay_tx, relay_rx) = mpsc::channel(1024);
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (keeper_tx, keeper_rx) = mpsc::channel(1024);
        let (incoming_tx, incoming_rx) = mpsc::channel(8192);
        let leases = Leases::new(redis.clone(), node.clone(), LEASE_TTL);
        let cluster = Arc::new(Cluster {
            leases: leases.clone(),
            nodes: Nodes::new(redis.clone(), NODE_TTL),
            node: node.clone(),
            node_bits,
            config,
            stats: ClusterStats::default(),
            hub,
            next_id,
            relay: relay_tx,
            publish: publish_tx,
            keeper: keeper_tx,
            redis: redis.clone(),
            live: std::sync::Mutex::new(HashSet::from([node.clone()])),
            departed: std::sync::Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
            left: AtomicBool::new(false),
            node_key: keys.node.clone(),
            serves_tls,
            nodes_info: std::sync::Mutex::new(Vec::new()),
            turn: std::sync::Mutex::new(None),
            takes: std::sync::Mutex::new(HashMap::new()),
            next_take: AtomicU64::new(1),
        });
        tokio::spawn(publisher(cluster.clone(), redis.clone(), publish_rx));
        tokio::spawn(subscriber(cluster.clone(), client, pubsub, incoming_tx));
        tokio::spawn(relay::run(cluster.clone(), incoming_rx, relay_rx));
        tokio::spawn(keeper(cluster.clone(), leases, keeper_rx, room_events));
        tokio::spawn(beat(Arc::downgrade(&cluster), address));
        info!(%node, "joined the cluster");
        Ok(cluster)
    }

    /// A peer id nobody else in the cluster hands out: `p` and a number whose high 32 bits are
    /// this node's id and whose low 32 bits its connection number (a number, as a single node's
    /// `p<n>` is: the SFU core names participants by it). A node would hand out an id again
    /// only after four billion connections, long after any session of the first has ended.
    pub fn peer_id(&self, conn: u64) -> PeerId {
        peer_id(self.node_bits, conn)
    }

    /// Queues `envelope` for node `to`; dropped (and counted) if the queue is full.
    pub fn publish(&self, to: &str, envelope: Envelope) {
        let Ok(bytes) = serde_json::to_vec(&envelope) else { return };
        if self.publish.try_send((relay::channel(to), bytes)).is_err() {
            self.stats.relay_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells every node this node's public rooms.
    fn publish_rooms(&self, rooms: &[huddle_protocol::RoomSummary]) {
        let list = RoomList { node: self.node.clone(), rooms: rooms.to_vec(), gone: false };
        let Ok(bytes) = serde_json::to_vec(&list) else { return };
        if self.publish.try_send((ROOMS_CHANNEL.to_string(), bytes)).is_err() {
            self.stats.relay_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the relay task (see [`relay::RelayCmd`]).
    pub async fn relay(&self, cmd: RelayCmd) {
        let _ = self.relay.send(cmd).await;
    }

    /// The node that owns `room` (a room name as a page sent it), taking it for this node when
    /// nobody does. A name the hub would refuse is "here": this node's hub says why.
    pub async fn home_for_room(&self, room: &str) -> Result<String, ()> {
        let Some(room) = crate::validate::label(room, self.config.max_room_chars) else {
            return Ok(self.node.clone());
        };
        // A new room goes to a live, lightly loaded node, not blindly to this one.
        let (reply, answer) = oneshot::channel();
        self.keeper.send(KeeperCmd::Place { room: room.clone(), reply }).await.map_err(|_| ())?;
        if let Ok(Ok(Some(target))) = tokio::time::timeout(ASK_TIMEOUT, answer).await {
            if let Some(owner) = self.ask_to_take(&target, &room).await {
                debug!(%room, node = %target, "placed a new room on a less loaded node");
                return Ok(owner);
            }
        }
        self.take_here(room).await
    }

    /// Who owns `room` (a checked name), taking it for this node when nobody does.
    async fn take_here(&self, room: String) -> Result<String, ()> {
        let (reply, answer) = oneshot::channel();
        self.keeper.send(KeeperCmd::Home { room, reply }).await.map_err(|_| ())?;
        tokio::time::timeout(ASK_TIMEOUT, answer).await.map_err(|_| ())?.map_err(|_| ())?
    }

    /// Asks node `target` to take `room`: the room's owner after that, or `None` when it did not
    /// answer in time (or could not say): the caller then takes the room itself.
    async fn ask_to_take(&self, target: &str, room: &str) -> Option<String> {
        let id = self.next_take.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.takes.lock().ok()?.insert(id, reply);
        let ask =
            Envelope { from: self.node.clone(), conn: id, seq: 0, body: relay::Body::Take { room: room.to_string() } };
        self.publish(target, ask);
        let owner = tokio::time::timeout(TAKE_ANSWER, answer).await.ok().and_then(Result::ok).flatten();
        if let Ok(mut takes) = self.takes.lock() {
            takes.remove(&id);
        }
        owner
    }

    /// Another node asks this one to take `room` ([`Cluster::ask_to_take`]); the answer goes back
    /// to it.
    pub(crate) async fn take_for(self: Arc<Self>, from: String, id: u64, room: String) {
        let owner = match crate::validate::label(&room, self.config.max_room_chars) {
            Some(room) => self.take_here(room).await.ok(),
            _ => None,
        };
        let answer = Envelope { from: self.node.clone(), conn: id, seq: 0, body: relay::Body::Taken { owner } };
        self.publish(&from, answer);
    }

    /// The answer to one of this node's [`Cluster::ask_to_take`].
    pub(crate) fn taken(&self, id: u64, owner: Option<String>) {
        if let Some(reply) = self.takes.lock().ok().and_then(|mut t| t.remove(&id)) {
            let _ = reply.send(owner);
        }
    }

    /// The node that owns `room` now (a name as checked by the hub), if any and if Redis says.
    pub async fn owner_of(&self, room: &str) -> Option<String> {
        match tokio::time::timeout(ASK_TIMEOUT, self.leases.owner(room)).await {
            Ok(Ok(owner)) => owner.map(|o| o.node),
            Ok(Err(e)) => {
                self.redis_error(&e);
                None
            }
            Err(_) => None,
        }
    }

    /// Where node `node` is reached (as of its last beat), and whether it serves HTTPS.
    pub async fn node_address(&self, node: &str) -> Option<NodeInfo> {
        let known = self.nodes_info.lock().ok().and_then(|info| info.iter().find(|n| n.id == node).cloned());
        if known.is_some() {
            return known;
        }
        let mut con = self.redis.clone();
        let get = redis::cmd("GET").arg(format!("huddle:node:{node}")).clone();
        match tokio::time::timeout(ASK_TIMEOUT, get.query_async::<Option<String>>(&mut con)).await {
            Ok(Ok(Some(info))) => serde_json::from_str(&info).ok(),
            Ok(Err(e)) => {
                self.redis_error(&e);
                None
            }
            _ => None,
        }
    }

    /// Whether `node` is alive: it was at the last beat, or (a node started since) Redis holds
    /// its beat now. A node that said it left is not.
    pub async fn is_live(&self, node: &str) -> bool {
        if self.departed.lock().is_ok_and(|departed| departed.contains(node)) {
            return false;
        }
        if self.live.lock().map(|live| live.contains(node)).unwrap_or(true) {
            return true;
        }
        match tokio::time::timeout(ASK_TIMEOUT, self.nodes.beats(node)).await {
            Ok(Ok(true)) => {
                if let Ok(mut live) = self.live.lock() {
                    live.insert(node.to_string());
                }
                true
            }
            Ok(Ok(false)) | Err(_) => false,
            Ok(Err(e)) => {
                self.redis_error(&e);
                false
            }
        }
    }

    /// The node session `id` lives on and the room it joined there, as of its latest join
    /// (`None`: unknown, or Redis did not answer).
    pub async fn session_home(&self, id: &PeerId) -> Option<(String, String)> {
        let (mut con, get) = (self.redis.clone(), redis::cmd("GET").arg(session_key(id)).clone());
        match tokio::time::timeout(ASK_TIMEOUT, get.query_async::<Option<String>>(&mut con)).await {
            Ok(Ok(home)) => {
                home.and_then(|h| h.split_once('/').map(|(node, room)| (node.to_string(), room.to_string())))
            }
            Ok(Err(e)) => {
                self.redis_error(&e);
                None
            }
            Err(_) => None,
        }
    }

    /// Records that session `id` lives on `home` now, joining `room` (a name as its page sent
    /// it).
    pub async fn set_session_home(&self, id: &PeerId, home: &str, room: &str) {
        let mut con = self.redis.clone();
        let mut set = redis::cmd("SET");
        set.arg(session_key(id)).arg(format!("{home}/{room}")).arg("PX").arg(SESSION_KEY_TTL.as_millis() as u64);
        if let Ok(Err(e)) = tokio::time::timeout(ASK_TIMEOUT, set.query_async::<()>(&mut con)).await {
            self.redis_error(&e);
        }
    }

    /// A clean stop (SIGTERM), step one: this node takes no room from now on, its hub saves
    /// every room it owns a last time and stops acting for them, and the rooms' leases are given
    /// up with their state kept, so that the first page to come back through another node makes
    /// that node the room's owner, from exactly what was saved. Then every node hears that this
    /// one is gone. What the hub says to its connections afterwards (`bye server_shutdown`) sends
    /// the pages there.
    pub async fn hand_over(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.keeper.send(KeeperCmd::Drain).await;
        let (done, handed) = oneshot::channel();
        if self.hub.send(Command::HandOver { done }).await.is_ok() {
            let _ = tokio::time::timeout(ASK_TIMEOUT, handed).await;
        }
        let (done, released) = oneshot::channel();
        if self.keeper.send(KeeperCmd::HandOver { done }).await.is_ok() {
            let _ = tokio::time::timeout(ASK_TIMEOUT, released).await;
        }
        self.leave().await;
    }

    /// This node leaves the list of live nodes, and tells the others at once (they would
    /// otherwise learn it only after two of their beats). Safe to say more than once.
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(ASK_TIMEOUT, self.nodes.leave(&self.node)).await;
        let notice = RoomList { node: self.node.clone(), rooms: Vec::new(), gone: true };
        if let Ok(bytes) = serde_json::to_vec(&notice) {
            let mut con = self.redis.clone();
            let publish = redis::cmd("PUBLISH").arg(ROOMS_CHANNEL).arg(bytes).clone();
            let _ = tokio::time::timeout(ASK_TIMEOUT, publish.query_async::<()>(&mut con)).await;
        }
        info!(node = %self.node, "left the cluster");
    }

    /// Step two of a clean stop, once the hub has said goodbye: connections here whose session
    /// lives on another node are closed without a word, so that their pages resume through
    /// another node and keep their media (it never passed through this one).
    pub async fn close_edges(&self) {
        let (done, closed) = oneshot::channel();
        self.relay(RelayCmd::CloseEdges { done }).await;
        let _ = tokio::time::timeout(ASK_TIMEOUT, closed).await;
    }

    /// Puts itself between the hub and this node's TURN server (`local`): what the hub grants and
    /// revokes goes to the local TURN server as before, and to every other node's
    /// ([`TURN_CHANNEL`]). The hub is to be given the returned sender (weakly; the caller keeps
    /// it, and the task ends when it is dropped).
    pub fn share_turn(&self, local: mpsc::WeakSender<TurnCommand>) -> mpsc::Sender<TurnCommand> {
        if let Ok(mut turn) = self.turn.lock() {
            *turn = Some(local.clone());
        }
        let (tx, mut rx) = mpsc::channel(crate::turn::COMMANDS);
        let (publish, node) = (self.publish.clone(), self.node.clone());
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let news = match &cmd {
                    TurnCommand::Grant { users } => {
                        Some(TurnNews { node: node.clone(), grant: users.clone(), revoke: None })
                    }
                    TurnCommand::Revoke { user } => {
                        Some(TurnNews { node: node.clone(), grant: Vec::new(), revoke: Some(user.clone()) })
                    }
                    TurnCommand::Stats { .. } => None,
                };
                if let Some(local) = local.upgrade() {
                    if local.try_send(cmd).is_err() && dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                        warn!("TURN command queue full; a command was dropped");
                    }
                }
                if let Some(bytes) = news.and_then(|n| serde_json::to_vec(&n).ok()) {
                    let _ = publish.try_send((TURN_CHANNEL.to_string(), bytes));
                }
            }
        });
        tx
    }

    /// What another node's hub granted or revoked, for this node's TURN server.
    fn turn_news(&self, news: TurnNews) {
        if news.node == self.node {
            return;
        }
        let Some(local) = self.turn.lock().ok().and_then(|t| t.as_ref().and_then(mpsc::WeakSender::upgrade)) else {
            return;
        };
        if !news.grant.is_empty() {
            let _ = local.try_send(TurnCommand::Grant { users: news.grant });
        }
        if let Some(user) = news.revoke {
            let _ = local.try_send(TurnCommand::Revoke { user });
        }
    }

    /// `node` said it is gone ([`Cluster::leave`]): it is not live from now on.
    fn departed(&self, node: &str) {
        if node == self.node {
            return;
        }
        if let Ok(mut departed) = self.departed.lock() {
            departed.insert(node.to_string());
        }
        if let Ok(mut live) = self.live.lock() {
            live.remove(node);
            self.stats.nodes_live.store(live.len(), Ordering::Relaxed);
        }
        // (Not awaited here: the relay task may be waiting on the subscriber.)
        let relay = self.relay.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            let _ = relay.send(RelayCmd::Departed { node }).await;
        });
    }

    fn redis_error(&self, e: &redis::RedisError) {
        // Counted always, logged at most once per error kind burst (debug after the first).
        if self.stats.redis_errors.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!(error = %e, "Redis error");
        } else {
            debug!(error = %e, "Redis error");
        }
    }
}

/// The keys every node of a cluster signs with: invite links (checked by whichever node owns
/// the room when the link is used) and TURN credentials (checked by whichever node's TURN
/// server the browser reaches). `--turn-secret`, when set, is used instead of `turn`.
pub struct SharedKeys {
    pub invite: Vec<u8>,
    pub turn: Vec<u8>,
    /// For what nodes vouch for to each other (see [`forward`]).
    pub node: Vec<u8>,
}

/// The cluster's keys, from Redis (`huddle:key:<use>`): the first node to start makes each one,
/// the others read it, so no node needs them configured. Redis must be private to the nodes
/// (README, "Running several nodes").
pub async fn shared_keys(url: &str) -> anyhow::Result<SharedKeys> {
    let shown = redacted(url);
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("--redis {shown}: {e}"))?;
    let mut con = tokio::time::timeout(ASK_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach Redis at {shown} (no answer)"))?
        .map_err(|e| anyhow::anyhow!("cannot reach Redis at {shown}: {e}"))?;
    let mut key = async |name: &str| -> anyhow::Result<Vec<u8>> {
        let redis_key = format!("huddle:key:{name}");
        let mut fresh = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut fresh).map_err(|_| anyhow::anyhow!("no random numbers"))?;
        let asked = async {
            let _: Option<String> =
                redis::cmd("SET").arg(&redis_key).arg(&fresh).arg("NX").query_async(&mut con).await?;
            redis::cmd("GET").arg(&redis_key).query_async::<Option<Vec<u8>>>(&mut con).await
        };
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(Some(key))) if key.len() >= 16 => Ok(key),
            Ok(Ok(_)) => anyhow::bail!("Redis at {shown} holds no usable {redis_key}"),
            Ok(Err(e)) => anyhow::bail!("cannot read {redis_key} from Redis at {shown}: {e}"),
            Err(_) => anyhow::bail!("Redis at {shown} did not answer"),
        }
    };
    let invite = key("invite").await?;
    let turn = key("turn").await?;
    let node = key("node").await?;
    Ok(SharedKeys { invite, turn, node })
}

/// What [`TURN_CHANNEL`] carries: relay users a node's hub granted, or one it revoked.
#[derive(serde::Serialize, serde::Deserialize)]
struct TurnNews {
    node: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    grant: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoke: Option<String>,
}

/// What [`ROOMS_CHANNEL`] carries.
#[derive(serde::Serialize, serde::Deserialize)]
struct RoomList {
    node: String,
    rooms: Vec<huddle_protocol::RoomSummary>,
    /// The node is stopping: it owns no room any more and is not live.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gone: bool,
}

/// A Redis URL fit for messages: without its password (`redis://:secret@host` →
/// `redis://:***@host`).
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn peer_id(node_bits: u32, conn: u64) -> PeerId {
    PeerId(format!("p{}", (u64::from(node_bits) << 32) | (conn & 0xffff_ffff)))
}

/// The node that handed out peer id `id` ([`Cluster::peer_id`]).
pub fn node_of_peer(id: &PeerId) -> Option<String> {
    let n: u64 = id.0.strip_prefix('p')?.parse().ok()?;
    Some(format!("{:08x}", n >> 32))
}

fn session_key(id: &PeerId) -> String {
    format!("huddle:session:{id}")
}

/// Publishes what is queued, many messages per round trip.
async fn publisher(cluster: Arc<Cluster>, mut redis: ConnectionManager, mut queue: mpsc::Receiver<(String, Vec<u8>)>) {
    while let Some((channel, bytes)) = queue.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(channel).arg(bytes).ignore();
        let mut n = 1;
        while n < PUBLISH_BATCH {
            let Ok((channel, bytes)) = queue.try_recv() else { break };
            pipe.cmd("PUBLISH").arg(channel).arg(bytes).ignore();
            n += 1;
        }
        let mut tries = 0;
        loop {
            let sent = Instant::now();
            match pipe.query_async::<()>(&mut redis).await {
                Ok(()) => {
                    cluster.stats.relayed_out.fetch_add(n as u64, Ordering::Relaxed);
                    cluster.stats.redis_rtt_us.store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                // The connection broke (Redis restarted, say): the connection manager connects
                // again, and the batch is sent again on the new connection rather than lost —
                // otherwise the first message after a restart would wait, unseen, until the next
                // one showed the gap. Should Redis have passed some of it on before the break,
                // receivers skip what they already had (numbers below the expected one).
                Err(e) if tries < PUBLISH_RETRIES && (e.is_connection_dropped() || e.is_io_error()) => {
                    cluster.redis_error(&e);
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 << tries).min(PUBLISH_RETRY_MAX)).await;
                    continue;
                }
                Err(e) => {
                    cluster.stats.relay_dropped.fetch_add(n as u64, Ordering::Relaxed);
                    cluster.redis_error(&e);
                }
            }
            break;
        }
    }
}

/// Reads this node's channel, subscribing again when the connection to Redis breaks (what was
/// published meanwhile is lost; the sequence numbers show it).
async fn subscriber(
    cluster: Arc<Cluster>,
    client: redis::Client,
    first: redis::aio::PubSub,
    incoming: mpsc::Sender<Envelope>,
) {
    let mut pubsub = Some(first);
    loop {
        if let Some(ps) = pubsub.take() {
            let mut stream = ps.into_on_message();
            while let Some(msg) = stream.next().await {
                if msg.get_channel_name() == TURN_CHANNEL {
                    match serde_json::from_slice::<TurnNews>(msg.get_payload_bytes()) {
                        Ok(news) => cluster.turn_news(news),
                        Err(e) => debug!(error = %e, "an unreadable TURN notice"),
                    }
                    continue;
                }
                if msg.get_channel_name() == ROOMS_CHANNEL {
                    match serde_json::from_slice::<RoomList>(msg.get_payload_bytes()) {
                        Ok(list) if list.node != cluster.node => {
                            if list.gone {
                                cluster.departed(&list.node);
                            }
                            let until = tokio::time::Instant::now() + ROOM_LIST_TTL;
                            let cmd = Command::RemoteRooms { node: list.node, rooms: list.rooms, until };
                            // A list is said again soon: one the hub has no room for now can go.
                            let _ = cluster.hub.try_send(cmd);
                        }
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "an unreadable room list"),
                    }
                    continue;
                }
                match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                    Ok(envelope) => {
                        if incoming.send(envelope).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => debug!(error = %e, "an unreadable relay message"),
                }
            }
            warn!("lost the subscription to Redis; subscribing again");
        }
        if incoming.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        match client.get_async_pubsub().await {
            Ok(mut ps) => match ps
                .subscribe(&[relay::channel(&cluster.node), ROOMS_CHANNEL.to_string(), TURN_CHANNEL.to_string()])
                .await
            {
                Ok(()) => pubsub = Some(ps),
                Err(e) => cluster.redis_error(&e),
            },
            Err(e) => cluster.redis_error(&e),
        }
    }
}

/// Keeps this node in the list of live nodes while the cluster is alive.
async fn beat(cluster: std::sync::Weak<Cluster>, address: String) {
    let mut tick = tokio::time::interval(BEAT_EVERY);
    let mut previous: HashSet<String> = HashSet::new();
    let mut cpu_before = (Instant::now(), crate::metrics::Process::now().cpu_seconds);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else { return };
        if cluster.left.load(Ordering::Relaxed) {
            return;
        }
        // Its load: the people in its rooms, and the share of a core it used since the last beat.
        let (reply, stats) = oneshot::channel();
        let people = match cluster.hub.try_send(Command::Stats { reply }) {
            Ok(()) => {
                tokio::time::timeout(ASK_TIMEOUT, stats).await.ok().and_then(Result::ok).map_or(0, |s| s.participants)
            }
            Err(_) => 0,
        };
        let cpu_now = (Instant::now(), crate::metrics::Process::now().cpu_seconds);
        let cpu = match (cpu_before.1, cpu_now.1) {
            (Some(a), Some(b)) => ((b - a) / cpu_now.0.duration_since(cpu_before.0).as_secs_f64().max(1e-3)) as f32,
            _ => 0.0,
        };
        cpu_before = cpu_now;
        let info = NodeInfo {
            id: cluster.node.clone(),
            address: address.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            rooms: cluster.stats.rooms_owned.load(Ordering::Relaxed) as u32,
            people: people as u32,
            cpu,
            draining: cluster.stopping.load(Ordering::Relaxed),
            tls: cluster.serves_tls,
        };
        match cluster.nodes.beat(&info).await {
            Ok(()) => {}
            Err(e) => cluster.redis_error(&e),
        }
        match cluster.nodes.live().await {
            Ok(live) => {
                cluster.stats.nodes_live.store(live.len(), Ordering::Relaxed);
                let listed: HashSet<String> = live.iter().map(|n| n.id.clone()).collect();
                if let Ok(mut info) = cluster.nodes_info.lock() {
                    let departed = cluster.departed.lock().map(|d| d.clone()).unwrap_or_default();
                    *info = live.into_iter().filter(|n| !departed.contains(&n.id)).collect();
                }
                // Gone only when missing from two lists in a row: after Redis restarts empty,
                // the nodes beat again one by one, and one listed a moment later is not dead.
                let mut ids: HashSet<String> = listed.union(&previous).cloned().collect();
                if let Ok(mut departed) = cluster.departed.lock() {
                    ids.retain(|id| !departed.contains(id));
                    // Remembered only while some list may still name it.
                    departed.retain(|id| listed.contains(id) || previous.contains(id));
                }
                previous = listed;
                ids.insert(cluster.node.clone());
                if let Ok(mut known) = cluster.live.lock() {
                    known.clone_from(&ids);
                }
                // Connections whose session lived on a node that is gone, and sessions here
                // whose connection was on one, are closed: their pages resume elsewhere.
                cluster.relay(RelayCmd::Alive { live: ids }).await;
            }
            Err(e) => cluster.redis_error(&e),
        }
    }
}

enum KeeperCmd {
    Home {
        room: String,
        reply: oneshot::Sender<Result<String, ()>>,
    },
    /// Where a new room should go: `Some(node)` when nobody owns `room`, it has no saved state,
    /// and placement picks another node than this one.
    Place {
        room: String,
        reply: oneshot::Sender<Option<String>>,
    },
    /// The node is stopping: it takes no room from now on.
    Drain,
    /// Save what the hub said last, and give every room up with its state kept
    /// ([`Cluster::hand_over`]).
    HandOver {
        done: oneshot::Sender<()>,
    },
}

/// Owns this node's leases: takes them when asked who owns a room, renews them, and releases
/// them when the hub closes the room.
async fn keeper(
    cluster: Arc<Cluster>,
    leases: Leases,
    mut commands: mpsc::Receiver<KeeperCmd>,
    mut events: mpsc::UnboundedReceiver<RoomEvent>,
) {
    let mut held: HashMap<String, Held> = HashMap::new();
    // Rooms whose lease ran out while Redis could not be reached.
    let mut orphaned: HashSet<String> = HashSet::new();
    // This node's public rooms as last listed, said again on every renewal.
    let mut listed = Vec::new();
    // Rooms taken for a join, until the hub says it opened them.
    let mut unopened: HashMap<String, Instant> = HashMap::new();
    // Set when this node stops (SIGTERM): it takes no room from then on.
    let mut draining = false;
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(KeeperCmd::Home { room, reply }) if draining && !held.contains_key(&room) => {
                    // Stopping: the room is someone else's to take (the page is told to try
                    // again, and comes back through another node).
                    let owner = leases.owner(&room).await.ok().flatten().map(|o| o.node);
                    let _ = reply.send(owner.filter(|n| *n != cluster.node).ok_or(()));
                }
                Some(KeeperCmd::Home { room, reply }) => {
                    let had = held.contains_key(&room);
                    let home = home(&cluster, &leases, &mut held, &room).await;
                    if !had && held.contains_key(&room) {
                        unopened.insert(room, Instant::now());
                    }
                    let _ = reply.send(home);
                }
                Some(KeeperCmd::Place { room, reply }) => {
                    let target = if draining || held.contains_key(&room) { None } else { placement(&cluster, &leases, &room).await };
                    let _ = reply.send(target);
                }
                Some(KeeperCmd::Drain) => draining = true,
                Some(KeeperCmd::HandOver { done }) => {
                    // The hub's last word on each room (its final `Saved`) is in the channel.
                    while let Ok(event) = events.try_recv() {
                        on_event(&cluster, &leases, &mut held, &mut listed, &mut unopened, event).await;
                    }
                    cluster.publish_rooms(&[]);
                    listed.clear();
                    // The next owner's sessions wait this long for their pages; so does the state.
                    let keep = cluster.config.resume_grace + LEASE_TTL;
                    for (room, lease) in held.drain() {
                        match leases.hand_over(&room, &lease, &lease::state_key(&room, "state"), keep).await {
                            Ok(true) => info!(%room, "handed the room over: the next node to be asked takes it"),
                            Ok(false) => warn!(%room, "could not hand the room over: another node owns it now"),
                            Err(e) => {
                                // Its lease runs out instead, and the next owner starts from
                                // the last state saved before this.
                                cluster.redis_error(&e);
                            }
                        }
                    }
                    unopened.clear();
                    let _ = done.send(());
                }
                None => return,
            },
            Some(event) = events.recv() => on_event(&cluster, &leases, &mut held, &mut listed, &mut unopened, event).await,
            _ = renew.tick() => {
                // What the hub said before now counts first: a room it opened is not "unopened".
                while let Ok(event) = events.try_recv() {
                    on_event(&cluster, &leases, &mut held, &mut listed, &mut unopened, event).await;
                }
                let now = Instant::now();
                let idle: Vec<String> =
                    unopened.iter().filter(|(_, t)| now.duration_since(**t) >= UNOPENED_GRACE).map(|(r, _)| r.clone()).collect();
                for room in idle {
                    unopened.remove(&room);
                    if let Some(lease) = held.remove(&room) {
                        // Taken for a join the hub refused (a wrong password, a ban, a full
                        // server...): nobody is in it, so nothing of it stays.
                        debug!(%room, "releasing a room nobody entered");
                        if let Err(e) = leases.end(&room, &lease, &[lease::state_key(&room, "state")]).await {
                            cluster.redis_error(&e);
                        }
                    }
                }
                if !listed.is_empty() {
                    cluster.publish_rooms(&listed);
                }
                let rooms: Vec<String> = held.keys().cloned().collect();
                for room in rooms {
                    let Some(lease) = held.get_mut(&room) else { continue };
                    match leases.renew(&room, lease).await {
                        Ok(true) => {
                            cluster.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                            if orphaned.remove(&room) {
                                info!(%room, "Redis is back; the room has its lease again");
                            }
                        }
                        Ok(false) => {
                            orphaned.remove(&room);
                            if let Err(e) = retake(&cluster, &leases, &mut held, &room).await {
                                cluster.redis_error(&e);
                            }
                        }
                        Err(e) => {
                            cluster.redis_error(&e);
                            if lease.valid_until <= Instant::now() && orphaned.insert(room.clone()) {
                                // Nobody can take it over while nobody reaches Redis: its meeting
                                // goes on here (media never depends on Redis), new joins are told
                                // to try again, and when Redis is back the room is taken back or,
                                // if another node has it by then, stood down.
                                warn!(%room, "cannot reach Redis to renew the lease of a room; it carries on meanwhile");
                            }
                        }
                    }
                }
            }
        }
        cluster.stats.rooms_owned.store(held.len(), Ordering::Relaxed);
    }
}

/// What the hub says about its rooms.
async fn on_event(
    cluster: &Cluster,
    leases: &Leases,
    held: &mut HashMap<String, Held>,
    listed: &mut Vec<huddle_protocol::RoomSummary>,
    unopened: &mut HashMap<String, Instant>,
    event: RoomEvent,
) {
    match event {
        RoomEvent::Opened(room) => {
            unopened.remove(&*room);
            if !held.contains_key(&*room) {
                // Opened without a lease (a join that raced the room's end): take it now.
                match home(cluster, leases, held, &room).await {
                    Ok(node) if node == cluster.node => {}
                    other => warn!(%room, ?other, "a room opened here is owned elsewhere"),
                }
            }
        }
        RoomEvent::Listed(rooms) => {
            cluster.publish_rooms(&rooms);
            *listed = rooms;
        }
        RoomEvent::Saved(room, saved) => {
            if let Some(lease) = held.get(&*room) {
                match leases.fenced_set(&room, lease, &lease::state_key(&room, "state"), &saved).await {
                    Ok(true) => {}
                    Ok(false) => warn!(%room, "could not save a room: another node owns it now"),
                    Err(e) => cluster.redis_error(&e),
                }
            }
        }
        RoomEvent::Closed(room) => {
            unopened.remove(&*room);
            if let Some(lease) = held.remove(&*room) {
                match leases.end(&room, &lease, &[lease::state_key(&room, "state")]).await {
                    Ok(_) => debug!(%room, "room ended; lease released"),
                    Err(e) => cluster.redis_error(&e),
                }
            }
        }
    }
}

/// Redis no longer holds this node's lease of `room` (it ran out while this node was paused or
/// cut off, or Redis restarted without it): if nobody owns the room now, this node takes it back
/// (a new epoch) and saves it again; if another node does, this one stands down. `Ok(true)`: the
/// room is still this node's.
async fn retake(
    cluster: &Cluster,
    leases: &Leases,
    held: &mut HashMap<String, Held>,
    room: &str,
) -> redis::RedisResult<bool> {
    match leases.take(room, 0).await? {
        Ok(lease) => {
            info!(%room, epoch = lease.owner.epoch, "took a room back: its lease had run out and nobody else had it");
            cluster.stats.lease_takes.fetch_add(1, Ordering::Relaxed);
            held.insert(room.to_string(), lease);
            // Its saved state may be gone with the lease (a Redis restarted empty).
            let _ = cluster.hub.send(Command::Resave { room: room.to_string() }).await;
            Ok(true)
        }
        Err(owner) => {
            warn!(%room, owner = %owner.node, "another node owns this room now");
            stand_down(cluster, held, room).await;
            Ok(false)
        }
    }
}

/// This node stops acting as the owner of `room`: its lease is gone (see [`Command::StandDown`]).
async fn stand_down(cluster: &Cluster, held: &mut HashMap<String, Held>, room: &str) {
    cluster.stats.lease_losses.fetch_add(1, Ordering::Relaxed);
    held.remove(room);
    let _ = cluster.hub.send(Command::StandDown { room: room.to_string() }).await;
}

/// Where a new room goes ([`nodes::place`] over the live nodes of the last beat): `Some(node)`
/// for another node, `None` for this one — also when that node is not less loaded than this
/// one (a room kept here spares its first page a relay), when the room is owned already, or when
/// it has state saved by a previous owner (whichever node a returning page reaches takes that
/// over).
async fn placement(cluster: &Cluster, leases: &Leases, room: &str) -> Option<String> {
    let live = cluster.nodes_info.lock().ok()?.clone();
    let target = nodes::place(&live, random_below)?;
    let here = live.iter().find(|n| n.id == cluster.node);
    if target.id == cluster.node
        || here.is_some_and(|h| !h.draining && (h.people, h.rooms) <= (target.people, target.rooms))
    {
        return None;
    }
    let target = target.id.clone();
    let unowned = matches!(tokio::time::timeout(ASK_TIMEOUT, leases.owner(room)).await, Ok(Ok(None)));
    let mut con = cluster.redis.clone();
    let exists = redis::cmd("EXISTS").arg(lease::state_key(room, "state")).clone();
    let fresh = matches!(tokio::time::timeout(ASK_TIMEOUT, exists.query_async::<bool>(&mut con)).await, Ok(Ok(false)));
    (unowned && fresh).then_some(target)
}

/// A random number below `n` (`n` > 0).
fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    // The system RNG does not fail where huddle runs; a zero would still place a room.
    let _ = aws_lc_rs::rand::fill(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

/// What the previous owner of `room` saved of it, if anything.
async fn state_of(cluster: &Cluster, room: &str) -> Option<Vec<u8>> {
    let mut con = cluster.redis.clone();
    let get = redis::cmd("GET").arg(lease::state_key(room, "state")).clone();
    match tokio::time::timeout(ASK_TIMEOUT, get.query_async::<Option<Vec<u8>>>(&mut con)).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            cluster.redis_error(&e);
            None
        }
        Err(_) => None,
    }
}

/// Who owns `room`, taking it for this node when nobody does.
async fn home(cluster: &Cluster, leases: &Leases, held: &mut HashMap<String, Held>, room: &str) -> Result<String, ()> {
    if let Some(lease) = held.get_mut(room) {
        if lease.valid_until > Instant::now() {
            return Ok(cluster.node.clone());
        }
        // Not renewed in time (this node was paused, or Redis unreachable): still ours only if
        // Redis says so now, or lets this node take it back.
        match tokio::time::timeout(ASK_TIMEOUT, leases.renew(room, lease)).await {
            Ok(Ok(true)) => return Ok(cluster.node.clone()),
            Ok(Ok(false)) => match tokio::time::timeout(ASK_TIMEOUT, retake(cluster, leases, held, room)).await {
                Ok(Ok(true)) => return Ok(cluster.node.clone()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    cluster.redis_error(&e);
                    return Err(());
                }
                Err(_) => return Err(()),
            },
            Ok(Err(e)) => {
                cluster.redis_error(&e);
                return Err(());
            }
            Err(_) => return Err(()),
        }
    }
    let asked = async {
        if let Some(owner) = leases.owner(room).await? {
            return Ok(Err(owner));
        }
        leases.take(room, 0).await
    };
    // From the moment the lease is taken other nodes send the room's pages here; until its saved
    // state is restored the hub must not start them over (see `Command::Restoring`).
    let until = tokio::time::Instant::now() + ASK_TIMEOUT * 2;
    let _ = cluster.hub.send(Command::Restoring { until: Some(until) }).await;
    let taken = home_taken(cluster, held, room, tokio::time::timeout(ASK_TIMEOUT, asked).await).await;
    let _ = cluster.hub.send(Command::Restoring { until: None }).await;
    taken
}

/// The rest of [`home`], once Redis answered who owns `room` or let this node take it.
async fn home_taken(
    cluster: &Cluster,
    held: &mut HashMap<String, Held>,
    room: &str,
    asked: Result<redis::RedisResult<Result<Held, lease::Owner>>, tokio::time::error::Elapsed>,
) -> Result<String, ()> {
    match asked {
        Ok(Ok(Ok(lease))) => {
            cluster.stats.lease_takes.fetch_add(1, Ordering::Relaxed);
            // A room whose owner went away left its state: its meeting goes on here.
            let state = state_of(cluster, room).await;
            info!(%room, epoch = lease.owner.epoch, taken_over = state.is_some(), "took a room");
            if let Some(saved) = state {
                let (done, restored) = oneshot::channel();
                if cluster.hub.send(Command::RestoreRoom { saved, done }).await.is_ok() {
                    let _ = tokio::time::timeout(ASK_TIMEOUT, restored).await;
                }
            }
            held.insert(room.to_string(), lease);
            cluster.stats.rooms_owned.store(held.len(), Ordering::Relaxed);
            Ok(cluster.node.clone())
        }
        Ok(Ok(Err(owner))) => Ok(owner.node),
        Ok(Err(e)) => {
            cluster.redis_error(&e);
            Err(())
        }
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{node_of_peer, peer_id, redacted};

    #[test]
    fn peer_ids_are_numbers_that_name_their_node() {
        let (a, b) = (peer_id(0x0000_00ff, 7), peer_id(0xdead_beef, 7));
        assert_ne!(a, b);
        for (id, node) in [(&a, "000000ff"), (&b, "deadbeef")] {
            // `p` and a number, as the SFU core reads them back.
            let n: u64 = id.0.strip_prefix('p').and_then(|n| n.parse().ok()).expect("p<number>");
            assert_eq!(format!("p{n}"), id.0);
            assert_eq!(node_of_peer(id).as_deref(), Some(node));
        }
        assert_eq!(node_of_peer(&huddle_protocol::PeerId("sfu".into())), None);
    }

    #[test]
    fn a_redis_password_never_reaches_a_message() {
        assert_eq!(redacted("redis://:s3cret@10.0.0.5:6379/0"), "redis://:***@10.0.0.5:6379/0");
        assert_eq!(redacted("redis://huddle:s3cret@db:6379"), "redis://huddle:***@db:6379");
        assert_eq!(redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
