//! Signalling between nodes: a connection's messages travel to the node its session lives on
//! (its **home**, the owner of the room it is in), and what that node sends the session travels
//! back, over Redis pub/sub.
//!
//! Every node subscribes to one channel, `huddle:relay:<node>`, and every message on it is an
//! [`Envelope`]: which node sent it, which of that node's connections it concerns, a sequence
//! number counted per connection and direction, and a [`Body`]. Pub/sub delivers in order (one
//! publishing connection per node, one subscriber), but loses what is published while a
//! subscriber is reconnecting (a publisher whose own connection broke sends its batch again once
//! reconnected, and a number already seen is skipped); a number that skips shows the loss, and
//! the connection is closed
//! so that its page resumes through the resume path, which replays what it missed (the hub's
//! `recent`) and sends again what the server did not take (`welcome.received`) — nothing is
//! lost or repeated.
//!
//! Who owns what: the [`run`] task owns both tables of this node — the connections of this node
//! whose session lives elsewhere ([`Edge`]: their outbox and kick), and the sessions living
//! here whose connection is elsewhere ([`Remote`]) — and is their only writer. A connection
//! task publishes its own messages (it numbers them); a pump task per remote connection
//! publishes what the hub queues for it.

use super::Cluster;
use crate::hub::{Command, Connect, Handoff, Resume};
use crate::outbox::{self, Frame, Outbox};
use bytes::Bytes;
use huddle_protocol::{ByeReason, ClientMsg, ErrorCode, LeaveReason, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// The channel node `node` listens on.
pub fn channel(node: &str) -> String {
    format!("huddle:relay:{node}")
}

/// One message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The node that sent it.
    pub from: String,
    /// The connection it concerns, numbered by the node where the WebSocket is.
    pub conn: u64,
    /// Counted from 1 per connection, direction and home.
    pub seq: u64,
    pub body: Body,
}

/// What an [`Envelope`] says. From a connection's node to its session's home: `Open`, `Client`,
/// `Ignored`, `Reject`, `Gone`, `Export`. Back: `Session`, `Frame`, `Kick`, `Forgotten`,
/// `Closed`, `Exported`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Body {
    /// The session moves here (`handoff`), or the connection asks to resume a session that
    /// lives here (`resume`; answered with `Session`).
    Open {
        handoff: Option<Handoff>,
        resume: Option<WireResume>,
        ip: IpAddr,
        host: Option<String>,
    },
    Client {
        msg: ClientMsg,
    },
    Ignored,
    Reject {
        code: ErrorCode,
        request: Option<String>,
    },
    /// The connection ended.
    Gone {
        reason: LeaveReason,
        resumable: bool,
    },
    /// Send the session back (it is about to join a room that lives on another node).
    Export,
    /// The session the connection speaks for after `Open` with `resume`.
    Session {
        id: PeerId,
    },
    /// A server message, serialised by the home.
    Frame {
        json: String,
    },
    Kick {
        reason: ByeReason,
    },
    /// The home forgot the session without a word.
    Forgotten,
    /// The home closed the outbox after `bye` (it is shutting down).
    Closed,
    /// The answer to `Export`: `None` when the session could not move (it is in a room).
    Exported {
        handoff: Option<Handoff>,
    },
    /// Between nodes, not about a connection: take this new room (placement picked this node;
    /// `conn` numbers the ask), answered by `Taken` with the room's owner.
    Take {
        room: String,
    },
    Taken {
        owner: Option<String>,
    },
}

/// [`Resume`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResume {
    pub id: PeerId,
    pub secret: String,
    pub seen: u64,
}

/// A session sent back by its home: what it is, and its connection's outbox and kick.
pub type Returned = (Handoff, Outbox, oneshot::Sender<ByeReason>);

/// What the connection tasks and the hub-facing side ask of the relay task.
pub enum RelayCmd {
    /// Connection `conn` of this node now speaks for a session that lives on `home`: frames from
    /// there go into `outbox`, a kick to `kick`; `session` gets the answer to a resume.
    Edge {
        conn: u64,
        home: String,
        outbox: Outbox,
        kick: oneshot::Sender<ByeReason>,
        session: Option<oneshot::Sender<PeerId>>,
    },
    /// Ask the home of `conn` to send its session back; `reply` gets it with the outbox and kick.
    Export { conn: u64, reply: oneshot::Sender<Option<Returned>> },
    /// Connection `conn` ended (its task has told the home).
    EdgeGone { conn: u64 },
    /// Its home did not answer: connection `conn` takes its outbox and kick back (`None` if they
    /// are gone already).
    Reclaim { conn: u64, reply: oneshot::Sender<Option<(Outbox, oneshot::Sender<ByeReason>)>> },
    /// A remote connection's session id, once the hub answered its `Open` with `resume`.
    Opened { from: String, conn: u64, id: PeerId, local_conn: u64, stop: oneshot::Sender<()> },
    /// The hub's answer to a home-side `Export`.
    ExportDone { from: String, conn: u64, handoff: Option<Handoff> },
    /// The nodes alive now: connections whose home is not among them, and sessions whose
    /// connection's node is not, are closed so that their pages resume elsewhere.
    Alive { live: std::collections::HashSet<String> },
    /// Node `node` said it left: as [`RelayCmd::Alive`] for that node alone.
    Departed { node: String },
    /// This node is stopping: every connection here whose session lives elsewhere is closed
    /// (its outbox closed, no `bye`), and its page resumes through another node.
    CloseEdges { done: oneshot::Sender<()> },
}

/// A connection of this node whose session lives elsewhere.
struct Edge {
    home: String,
    /// The next sequence number expected from the home.
    next: u64,
    outbox: Option<Outbox>,
    kick: Option<oneshot::Sender<ByeReason>>,
    session: Option<oneshot::Sender<PeerId>>,
    export: Option<oneshot::Sender<Option<Returned>>>,
}

/// A session living here whose connection is on another node.
struct Remote {
    id: PeerId,
    /// The number the hub knows this connection by (from this node's counter).
    local_conn: u64,
    next: u64,
    /// Dropped to stop the pump silently (the session left, or moved on).
    _stop: oneshot::Sender<()>,
}

/// The relay task: reads this node's channel and the commands, until both end.
pub async fn run(
    cluster: Arc<Cluster>,
    mut incoming: mpsc::Receiver<Envelope>,
    mut commands: mpsc::Receiver<RelayCmd>,
) {
    let mut edges: HashMap<u64, Edge> = HashMap::new();
    let mut remotes: HashMap<(String, u64), Remote> = HashMap::new();
    loop {
        tokio::select! {
            // Commands first: an `Edge` is always registered before the answer to what its
            // connection published can be read.
            biased;
            cmd = commands.recv() => match cmd {
                Some(cmd) => command(&cluster, &mut edges, &mut remotes, cmd).await,
                None => break,
            },
            envelope = incoming.recv() => match envelope {
                Some(e) => {
                    cluster.stats.relayed_in.fetch_add(1, Ordering::Relaxed);
                    if let Body::Take { room } = e.body {
                        // Asks Redis (and maybe restores nothing: the room is new): not here.
                        tokio::spawn(cluster.clone().take_for(e.from, e.conn, room));
                    } else if let Body::Taken { owner } = e.body {
                        cluster.taken(e.conn, owner);
                    } else if e.body.is_to_home() {
                        to_home(&cluster, &mut remotes, e).await;
                    } else {
                        to_edge(&cluster, &mut edges, e);
                    }
                }
                None => break,
            },
        }
    }
}

impl Body {
    fn is_to_home(&self) -> bool {
        matches!(
            self,
            Body::Open { .. }
                | Body::Client { .. }
                | Body::Ignored
                | Body::Reject { .. }
                | Body::Gone { .. }
                | Body::Export
        )
    }
}

async fn command(
    cluster: &Arc<Cluster>,
    edges: &mut HashMap<u64, Edge>,
    remotes: &mut HashMap<(String, u64), Remote>,
    cmd: RelayCmd,
) {
    match cmd {
        RelayCmd::Edge { conn, home, outbox, kick, session } => {
            edges.insert(conn, Edge { home, next: 1, outbox: Some(outbox), kick: Some(kick), session, export: None });
        }
        RelayCmd::Export { conn, reply } => match edges.get_mut(&conn) {
            Some(edge) => {
                edge.export = Some(reply);
                // Numbered by the connection task's counter too: it asks through the relay task
                // only to keep the answer's route; `seq` 0 is outside the numbering.
                cluster.publish(
                    &edge.home.clone(),
                    Envelope { from: cluster.node.clone(), conn, seq: 0, body: Body::Export },
                );
            }
            None => {
                let _ = reply.send(None);
            }
        },
        RelayCmd::EdgeGone { conn } => {
            edges.remove(&conn);
        }
        RelayCmd::Reclaim { conn, reply } => {
            let back = edges.remove(&conn).and_then(|e| Some((e.outbox?, e.kick?)));
            let _ = reply.send(back);
        }
        RelayCmd::Opened { from, conn, id, local_conn, stop } => {
            cluster.publish(
                &from,
                Envelope { from: cluster.node.clone(), conn, seq: 0, body: Body::Session { id: id.clone() } },
            );
            remotes.insert((from, conn), Remote { id, local_conn, next: 1, _stop: stop });
        }
        RelayCmd::ExportDone { from, conn, handoff } => {
            cluster.publish(
                &from,
                Envelope { from: cluster.node.clone(), conn, seq: 0, body: Body::Exported { handoff } },
            );
        }
        RelayCmd::CloseEdges { done } => {
            for edge in edges.values_mut() {
                // The kick stays: dropping it would end the connection as forgotten.
                edge.outbox = None;
            }
            let _ = done.send(());
        }
        RelayCmd::Alive { live } => strand(cluster, edges, remotes, |node| !live.contains(node)).await,
        RelayCmd::Departed { node } => strand(cluster, edges, remotes, |n| n == node).await,
    }
}

/// Closes the connections whose session lived on a node that is gone, and suspends the sessions
/// here whose connection was on one: their pages resume elsewhere.
async fn strand(
    cluster: &Arc<Cluster>,
    edges: &mut HashMap<u64, Edge>,
    remotes: &mut HashMap<(String, u64), Remote>,
    gone: impl Fn(&str) -> bool,
) {
    let orphans: Vec<u64> = edges.iter().filter(|(_, e)| gone(&e.home)).map(|(c, _)| *c).collect();
    for conn in orphans {
        let Some(mut edge) = edges.remove(&conn) else { continue };
        info!(node = %edge.home, conn, "the node of this connection's session is gone; the page resumes elsewhere");
        // As a server that stops: the page resumes, and starts its media afresh.
        if let Some(kick) = edge.kick.take() {
            let _ = kick.send(ByeReason::ServerShutdown);
        }
    }
    let stranded: Vec<(String, u64)> = remotes.keys().filter(|(node, _)| gone(node)).cloned().collect();
    for key in stranded {
        let Some(remote) = remotes.remove(&key) else { continue };
        let (reason, resumable) = (LeaveReason::Disconnected, true);
        let gone = Command::Disconnect { id: remote.id, conn: remote.local_conn, reason, resumable };
        let _ = cluster.hub.send(gone).await;
    }
}

/// What a connection on another node sends to a session living here.
async fn to_home(cluster: &Arc<Cluster>, remotes: &mut HashMap<(String, u64), Remote>, e: Envelope) {
    let key = (e.from, e.conn);
    if let Body::Open { handoff, resume, ip, host } = e.body {
        return open(cluster, remotes, key, handoff, resume, ip, host).await;
    }
    let Some(remote) = remotes.get_mut(&key) else {
        debug!(node = %key.0, conn = key.1, "a relayed message for no session here");
        return;
    };
    if e.seq != 0 {
        if e.seq < remote.next {
            // Sent again after a broken connection to Redis, and already taken.
            debug!(node = %key.0, conn = key.1, seq = e.seq, "a relayed message seen before");
            return;
        }
        if e.seq != remote.next {
            // Lost on the way: the connection is closed, and its page resumes and sends again
            // what was not taken.
            warn!(node = %key.0, conn = key.1, expected = remote.next, got = e.seq, "relay gap; closing the connection");
            cluster.stats.relay_gaps.fetch_add(1, Ordering::Relaxed);
            let Some(remote) = remotes.remove(&key) else { return };
            let reason = LeaveReason::Disconnected;
            let _ = cluster
                .hub
                .send(Command::Disconnect { id: remote.id, conn: remote.local_conn, reason, resumable: true })
                .await;
            cluster
                .publish(&key.0, Envelope { from: cluster.node.clone(), conn: key.1, seq: 0, body: Body::Forgotten });
            return;
        }
        remote.next += 1;
    }
    let id = remote.id.clone();
    let cmd = match e.body {
        Body::Client { msg } => {
            let here = match &msg {
                // The room must be this node's before the hub opens it here. Owned elsewhere
                // since the connection's node looked (a rare race), or Redis cannot say: the
                // page is told to try again.
                ClientMsg::Join { room, .. } => {
                    matches!(cluster.home_for_room(room).await, Ok(home) if home == cluster.node)
                }
                _ => true,
            };
            if here {
                Command::Client { id, msg }
            } else {
                Command::Reject { id, code: ErrorCode::Unavailable, request: Some("join".into()) }
            }
        }
        Body::Ignored => Command::Ignored { id },
        Body::Reject { code, request } => Command::Reject { id, code, request },
        Body::Gone { reason, resumable } => {
            let Some(remote) = remotes.remove(&key) else { return };
            Command::Disconnect { id, conn: remote.local_conn, reason, resumable }
        }
        Body::Export => {
            let Some(remote) = remotes.remove(&key) else { return };
            let (reply, answer) = oneshot::channel();
            if cluster.hub.send(Command::Export { id, conn: remote.local_conn, reply }).await.is_err() {
                return;
            }
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let handoff = answer.await.ok().flatten().map(|x| x.handoff);
                let _ = cluster.relay.send(RelayCmd::ExportDone { from: key.0, conn: key.1, handoff }).await;
            });
            return;
        }
        _ => return,
    };
    let _ = cluster.hub.send(cmd).await;
}

/// A connection on node `key.0` brings its session here, or resumes one living here.
async fn open(
    cluster: &Arc<Cluster>,
    remotes: &mut HashMap<(String, u64), Remote>,
    key: (String, u64),
    handoff: Option<Handoff>,
    resume: Option<WireResume>,
    ip: IpAddr,
    host: Option<String>,
) {
    if let Some(old) = remotes.remove(&key) {
        // The same connection again (it moved away and back): the old entry is stale.
        drop(old);
    }
    let local_conn = cluster.next_id.fetch_add(1, Ordering::Relaxed);
    let cfg = &cluster.config;
    let (outbox, outbox_rx) = outbox::outbox(cfg.outbox_capacity, cfg.outbox_bytes);
    let (kick, kick_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel();
    tokio::spawn(pump(cluster.clone(), key.clone(), outbox_rx, kick_rx, stop_rx));
    match handoff {
        Some(handoff) => {
            let id = handoff.id.clone();
            info!(peer = %id, node = %key.0, "a session moved here");
            if cluster.hub.send(Command::Adopt { handoff, conn: local_conn, outbox, kick }).await.is_ok() {
                remotes.insert(key, Remote { id, local_conn, next: 1, _stop: stop });
            }
        }
        None => {
            let (session, answer) = oneshot::channel();
            let connect = Connect {
                conn: local_conn,
                id: cluster.peer_id(local_conn),
                outbox,
                kick,
                host,
                ip,
                resume: resume.map(|r| Resume { id: r.id, secret: r.secret, seen: r.seen }),
                session,
            };
            if cluster.hub.send(Command::Connect(connect)).await.is_err() {
                return;
            }
            let cluster = cluster.clone();
            tokio::spawn(async move {
                if let Ok(id) = answer.await {
                    let opened = RelayCmd::Opened { from: key.0, conn: key.1, id, local_conn, stop };
                    let _ = cluster.relay.send(opened).await;
                }
            });
        }
    }
}

/// Publishes what the hub queues for a remote connection, and its kick, until the session
/// leaves it (`stop`).
async fn pump(
    cluster: Arc<Cluster>,
    (to, conn): (String, u64),
    mut outbox: outbox::OutboxReceiver,
    mut kick: oneshot::Receiver<ByeReason>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut seq = 0;
    let mut send = |body: Body| {
        seq += 1;
        cluster.publish(&to, Envelope { from: cluster.node.clone(), conn, seq, body });
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            frame = outbox.recv() => match frame {
                Some(frame) => send(Body::Frame { json: String::from_utf8_lossy(frame.bytes()).into_owned() }),
                None => {
                    // Closed by the hub: after `bye` at shutdown, or it forgot the session.
                    match kick.try_recv() {
                        Ok(reason) => send(Body::Kick { reason }),
                        Err(oneshot::error::TryRecvError::Closed) => send(Body::Forgotten),
                        Err(oneshot::error::TryRecvError::Empty) => send(Body::Closed),
                    }
                    return;
                }
            },
            kicked = &mut kick => {
                // What was queued before the kick goes first.
                while let Ok(frame) = outbox.try_recv() {
                    send(Body::Frame { json: String::from_utf8_lossy(frame.bytes()).into_owned() });
                }
                send(match kicked {
                    Ok(reason) => Body::Kick { reason },
                    Err(_) => Body::Forgotten,
                });
                return;
            }
        }
    }
}

/// What a session's home sends to a connection of this node.
fn to_edge(cluster: &Arc<Cluster>, edges: &mut HashMap<u64, Edge>, e: Envelope) {
    let Some(edge) = edges.get_mut(&e.conn) else {
        if matches!(e.body, Body::Frame { .. } | Body::Session { .. }) {
            // The connection is gone (or gave up waiting): its home must not keep sending.
            let gone = Body::Gone { reason: LeaveReason::Disconnected, resumable: true };
            cluster.publish(&e.from, Envelope { from: cluster.node.clone(), conn: e.conn, seq: 0, body: gone });
        }
        return;
    };
    if edge.home != e.from {
        // From a home it had before moving on.
        return;
    }
    if e.seq != 0 {
        if e.seq < edge.next {
            debug!(node = %e.from, conn = e.conn, seq = e.seq, "a relayed message seen before");
            return;
        }
        if e.seq != edge.next {
            warn!(node = %e.from, conn = e.conn, expected = edge.next, got = e.seq, "relay gap; closing the connection");
            cluster.stats.relay_gaps.fetch_add(1, Ordering::Relaxed);
            // Dropping the kick closes the connection without `bye`: the page resumes.
            edges.remove(&e.conn);
            return;
        }
        edge.next += 1;
    }
    match e.body {
        Body::Frame { json } => {
            let Some(outbox) = &edge.outbox else { return };
            if outbox.try_send(Frame::from_json(Bytes::from(json))).is_err() {
                if let Some(kick) = edge.kick.take() {
                    let _ = kick.send(ByeReason::TooSlow);
                }
            }
        }
        Body::Kick { reason } => {
            if let Some(kick) = edge.kick.take() {
                let _ = kick.send(reason);
            }
        }
        Body::Forgotten => {
            edges.remove(&e.conn);
        }
        Body::Closed => {
            edge.outbox = None;
        }
        Body::Session { id } => {
            if let Some(session) = edge.session.take() {
                let _ = session.send(id);
            }
        }
        Body::Exported { handoff } => {
            let Some(reply) = edge.export.take() else { return };
            match handoff {
                Some(h) => {
                    let Some(edge) = edges.remove(&e.conn) else { return };
                    match (edge.outbox, edge.kick) {
                        (Some(outbox), Some(kick)) => {
                            let _ = reply.send(Some((h, outbox, kick)));
                        }
                        _ => {
                            let _ = reply.send(None);
                        }
                    }
                }
                None => {
                    let _ = reply.send(None);
                }
            }
        }
        _ => {}
    }
}
