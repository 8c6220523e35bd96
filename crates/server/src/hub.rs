//! The hub: the single owner of every connection's outbox, every room and the room list.
//!
//! Connection tasks never touch shared state; they send [`Command`]s over one bounded channel,
//! and the hub task applies them one at a time ([`Hub::handle`]) and answers through each
//! connection's bounded outbox with `try_send`. A connection whose outbox is full is evicted
//! (reason `too_slow`) instead of stalling the room. [`Hub`] itself does no I/O and reads no
//! clock but the wall-clock timestamp of chat messages, so it is unit-tested directly below.
//!
//! This is the seam for scale-out: a Redis-backed implementation would replace this task,
//! behind the same `Command` interface, without touching the connection code.

use crate::config::{Config, TopologyMode};
use crate::files::{FileCommand, FileStore};
use crate::media::{MediaCommand, MediaEvent};
use crate::room::{Room, RoomError};
use crate::turn::TurnHandle;
use crate::validate;
use huddle_protocol::{
    ByeReason, ClientMsg, ErrorCode, IceServer, LeaveReason, Peer, PeerId, RoomSummary, SdpType, ServerMsg,
    SessionDescription, SignalPayload, Topology, PROTOCOL_VERSION, SFU_PEER_ID,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// What a connection task receives to write to its socket.
pub type Outbox = mpsc::Sender<Arc<ServerMsg>>;

/// Most rooms listed in one `rooms` message.
pub const ROOM_LIST_MAX: usize = 100;
/// How often the room list is pushed to watchers at most.
pub const ROOM_LIST_INTERVAL: Duration = Duration::from_millis(200);
/// In `auto` mode, the head count at which a room moves from peer-to-peer to the SFU.
pub const AUTO_SFU_FROM: usize = 3;

/// Requests to the hub.
#[derive(Debug)]
pub enum Command {
    /// A connection opened. `kick` fires if the hub disconnects it. `host`: the host name the
    /// page reached the server by (from `Host`, checked), for the TURN URLs handed to it.
    Connect { id: PeerId, outbox: Outbox, kick: oneshot::Sender<ByeReason>, host: Option<String> },
    /// A connection ended.
    Disconnect { id: PeerId, reason: LeaveReason },
    /// A valid message from a connection.
    Client { id: PeerId, msg: ClientMsg },
    /// A connection sent something unacceptable; answer with this error.
    Reject { id: PeerId, code: ErrorCode, request: Option<String> },
    /// Say goodbye to everyone and close all outboxes; `done` fires when every connection is gone.
    Shutdown { done: oneshot::Sender<()> },
    /// Counters, for tests and monitoring.
    Stats { reply: oneshot::Sender<Stats> },
    /// Something the SFU has for a participant.
    Media(MediaEvent),
    /// From the file upload and download handlers.
    Files(FileCommand),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub rooms: usize,
    pub participants: usize,
    pub evicted_too_slow: u64,
    pub rejected: u64,
    /// Commands for the SFU dropped because its queue was full.
    pub media_commands_dropped: u64,
}

struct Conn {
    /// `None` once shutdown has closed it.
    outbox: Option<Outbox>,
    kick: Option<oneshot::Sender<ByeReason>>,
    /// Shared with the `rooms` key, so the per-message room check clones a pointer, not a string.
    room: Option<Arc<str>>,
    host: Option<String>,
}

impl Conn {
    /// Queues `msg` without waiting; `false` when the outbox is full (the client is too slow).
    fn offer(&self, msg: Arc<ServerMsg>) -> bool {
        match &self.outbox {
            Some(outbox) => !matches!(outbox.try_send(msg), Err(mpsc::error::TrySendError::Full(_))),
            None => true,
        }
    }
}

pub struct Hub {
    config: Arc<Config>,
    conns: HashMap<PeerId, Conn>,
    rooms: HashMap<Arc<str>, Room>,
    watchers: HashSet<PeerId>,
    rooms_dirty: bool,
    /// Connections whose outbox overflowed during the current command; evicted after it.
    overflowed: Vec<PeerId>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Set by `Shutdown` for good: connections opening afterwards are turned away, even once
    /// `shutdown` has fired and is gone.
    closing: bool,
    stats: Stats,
    /// The SFU task; `None` when media never goes through the server (`--topology p2p`).
    media: Option<mpsc::Sender<MediaCommand>>,
    /// Files shared through the server.
    files: FileStore,
    /// The built-in TURN server, whose credentials every connection gets.
    turn: Option<TurnHandle>,
}

impl Hub {
    /// A hub without an SFU: every room is peer-to-peer, whatever the configured topology.
    pub fn new(config: Arc<Config>) -> Hub {
        let dir = config
            .file_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("huddle-files-{}", std::process::id())));
        Hub {
            media: None,
            files: FileStore::new(dir, config.file_storage_bytes),
            config,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            watchers: HashSet::new(),
            rooms_dirty: false,
            overflowed: Vec::new(),
            shutdown: None,
            closing: false,
            stats: Stats::default(),
            turn: None,
        }
    }

    /// Hands out credentials of the built-in TURN server with the ICE servers.
    pub fn set_turn(&mut self, turn: TurnHandle) {
        self.turn = Some(turn);
    }

    /// The configured ICE servers, then the built-in STUN/TURN server with credentials for `id`.
    fn ice_servers(&self, id: &PeerId) -> Vec<IceServer> {
        let mut out = self.config.ice_servers.clone();
        if let Some(turn) = &self.turn {
            let host = self.conns.get(id).and_then(|c| c.host.as_deref());
            let listen = self.config.listen.ip();
            let fallback = if listen.is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { listen };
            out.push(turn.ice_servers(&id.0, host, fallback));
        }
        out
    }

    /// A hub whose `sfu` rooms are served by the SFU task behind `media`.
    pub fn with_media(config: Arc<Config>, media: mpsc::Sender<MediaCommand>) -> Hub {
        Hub { media: Some(media), ..Hub::new(config) }
    }

    /// Applies one command. Never blocks.
    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { id, outbox, kick, host } => self.connect(id, outbox, kick, host),
            Command::Disconnect { id, reason } => self.disconnect(&id, reason),
            Command::Client { id, msg } => self.client(&id, msg),
            Command::Reject { id, code, request } => {
                self.stats.rejected += 1;
                self.send(&id, ServerMsg::error(code, request.as_deref()));
            }
            Command::Shutdown { done } => self.begin_shutdown(done),
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Media(event) => self.media_event(event),
            Command::Files(cmd) => self.file_command(cmd),
        }
        self.evict_overflowed();
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(Room::len).sum(),
            ..self.stats
        }
    }

    fn connect(&mut self, id: PeerId, outbox: Outbox, kick: oneshot::Sender<ByeReason>, host: Option<String>) {
        if self.closing {
            let _ = kick.send(ByeReason::ServerShutdown);
            return;
        }
        self.conns.insert(id.clone(), Conn { outbox: Some(outbox), kick: Some(kick), room: None, host });
        let welcome = ServerMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            id: id.clone(),
            server: concat!("huddle/", env!("CARGO_PKG_VERSION")).to_string(),
            limits: self.config.limits(),
            ice_servers: self.ice_servers(&id),
            ice_transport_policy: self.config.ice_transport_policy,
        };
        self.send(&id, welcome);
    }

    fn disconnect(&mut self, id: &PeerId, reason: LeaveReason) {
        self.leave_room(id, reason);
        self.watchers.remove(id);
        self.conns.remove(id);
        if self.conns.is_empty() {
            if let Some(done) = self.shutdown.take() {
                let _ = done.send(());
            }
        }
    }

    fn client(&mut self, id: &PeerId, msg: ClientMsg) {
        let Some(conn) = self.conns.get(id) else {
            // A message racing its own disconnect; nothing to answer.
            return;
        };
        let request = msg.type_name();
        let result = match (msg, conn.room.clone()) {
            (ClientMsg::Join { protocol, room, name, audio, video }, None) => {
                self.join(id, protocol, &room, &name, audio, video)
            }
            (ClientMsg::Join { .. }, Some(_)) => Err(ErrorCode::AlreadyInRoom),
            (ClientMsg::WatchRooms, _) => {
                self.watchers.insert(id.clone());
                let list = self.room_list();
                self.send(id, list);
                Ok(())
            }
            (ClientMsg::UnwatchRooms, _) => {
                self.watchers.remove(id);
                Ok(())
            }
            (_, None) => Err(ErrorCode::NotInRoom),
            (ClientMsg::Leave, Some(room)) => {
                self.leave_room(id, LeaveReason::Left);
                self.send(id, ServerMsg::Left { room: room.to_string() });
                Ok(())
            }
            (ClientMsg::Signal { to, payload }, Some(room)) if to.0 == SFU_PEER_ID => {
                self.signal_sfu(id, &room, payload)
            }
            (ClientMsg::Signal { to, payload }, Some(room)) => {
                let same_room = to != *id && self.conns.get(&to).is_some_and(|c| c.room.as_ref() == Some(&room));
                if same_room {
                    self.send(&to, ServerMsg::Signal { from: id.clone(), payload });
                    Ok(())
                } else {
                    Err(ErrorCode::UnknownPeer)
                }
            }
            (ClientMsg::Chat { text }, Some(room)) => self.chat(id, &room, &text),
            (ClientMsg::Receive { peer, video }, Some(room)) => {
                let same_room = peer != *id && self.conns.get(&peer).is_some_and(|c| c.room.as_ref() == Some(&room));
                if !same_room {
                    Err(ErrorCode::UnknownPeer)
                } else {
                    let sfu_room = self.rooms.get(&room).is_some_and(|r| r.topology() == Topology::Sfu);
                    if let Some(media) = self.media.as_ref().filter(|_| sfu_room) {
                        if media.try_send(MediaCommand::Receive { peer: id.clone(), publisher: peer, video }).is_err() {
                            self.stats.media_commands_dropped += 1;
                        }
                    }
                    Ok(())
                }
            }
            (ClientMsg::FileOffer { name, size, mime, sha256 }, Some(room)) => {
                self.file_offer(id, &room, &name, size, &mime, &sha256)
            }
            (ClientMsg::Media { audio, video, screen }, Some(room)) => {
                if let Some(peer) = self.rooms.get_mut(&room).and_then(|r| r.set_media(id, audio, video, screen)) {
                    let msg = Arc::new(ServerMsg::PeerUpdated { peer });
                    self.broadcast(&room, Some(id), msg);
                }
                Ok(())
            }
        };
        if let Err(code) = result {
            debug!(peer = %id, %code, request, "request refused");
            self.send(id, ServerMsg::error(code, Some(request)));
        }
    }

    fn join(
        &mut self,
        id: &PeerId,
        protocol: u32,
        room: &str,
        name: &str,
        audio: bool,
        video: bool,
    ) -> Result<(), ErrorCode> {
        if protocol != PROTOCOL_VERSION {
            return Err(ErrorCode::UnsupportedProtocol);
        }
        let room = validate::label(room, self.config.max_room_chars).ok_or(ErrorCode::InvalidRoom)?;
        let name = validate::label(name, self.config.max_name_chars).ok_or(ErrorCode::InvalidName)?;
        if !self.rooms.contains_key(room) && self.rooms.len() >= self.config.max_rooms as usize {
            return Err(ErrorCode::TooManyRooms);
        }
        let capacity = self.config.room_capacity as usize;
        let history = self.config.chat_history as usize;
        let room: Arc<str> = match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => Arc::from(room),
        };
        let ice_servers = self.ice_servers(id);
        let has_sfu = self.media.is_some();
        let initial = if has_sfu && self.config.topology == TopologyMode::Sfu { Topology::Sfu } else { Topology::P2p };
        let r = self.rooms.entry(room.clone()).or_insert_with(|| Room::new(capacity, history, initial));
        let me = Peer { id: id.clone(), name: name.to_string(), audio, video, screen: false };
        let peers = match r.add(me.clone()) {
            Ok(peers) => peers,
            Err(RoomError::Full) => {
                return Err(ErrorCode::RoomFull);
            }
        };
        let switched = has_sfu
            && self.config.topology == TopologyMode::Auto
            && r.topology() == Topology::P2p
            && r.len() >= AUTO_SFU_FROM;
        if switched {
            r.set_topology(Topology::Sfu);
        }
        let joined = ServerMsg::Joined {
            room: room.to_string(),
            you: me.clone(),
            peers,
            chat: r.chat_history(),
            topology: r.topology(),
            ice_servers,
            ice_transport_policy: self.config.ice_transport_policy,
        };
        if let Some(conn) = self.conns.get_mut(id) {
            conn.room = Some(room.clone());
        }
        self.watchers.remove(id);
        self.rooms_dirty = true;
        info!(peer = %id, participants = self.rooms.get(&room).map_or(0, Room::len), "joined a room");
        self.send(id, joined);
        if switched {
            info!(participants = AUTO_SFU_FROM, "room switched to the SFU");
            self.broadcast(&room, Some(id), Arc::new(ServerMsg::Topology { topology: Topology::Sfu }));
        }
        self.broadcast(&room, Some(id), Arc::new(ServerMsg::PeerJoined { peer: me }));
        Ok(())
    }

    /// A `signal` to the reserved peer `sfu`: offers and answers go to the SFU task; candidates
    /// are not needed (the SFU is ICE-lite and learns addresses from the browser's checks).
    fn signal_sfu(&mut self, id: &PeerId, room: &Arc<str>, payload: SignalPayload) -> Result<(), ErrorCode> {
        let sfu_room = self.rooms.get(room).is_some_and(|r| r.topology() == Topology::Sfu);
        let Some(media) = self.media.as_ref().filter(|_| sfu_room) else {
            return Err(ErrorCode::UnknownPeer);
        };
        let cmd = match payload {
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp } } => {
                MediaCommand::Offer { peer: id.clone(), room: room.clone(), sdp }
            }
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Answer, sdp } } => {
                MediaCommand::Answer { peer: id.clone(), sdp }
            }
            // Candidates, and rollbacks/pranswers the SFU never asks for.
            _ => return Ok(()),
        };
        if media.try_send(cmd).is_err() {
            self.stats.media_commands_dropped += 1;
            warn!(peer = %id, "SFU queue full; refusing a signal");
            return Err(ErrorCode::MediaFailed);
        }
        Ok(())
    }

    fn file_offer(
        &mut self,
        id: &PeerId,
        room: &Arc<str>,
        name: &str,
        size: u64,
        mime: &str,
        sha256: &str,
    ) -> Result<(), ErrorCode> {
        let sender = self.rooms.get(room).and_then(|r| r.member(id)).map(|p| p.name.clone());
        let sender = sender.ok_or(ErrorCode::NotInRoom)?;
        let max = self.config.max_file_bytes;
        let (file_id, url) = self.files.offer(room, id, &sender, name, size, mime, sha256, max)?;
        self.send(id, ServerMsg::FileUpload { id: file_id, url });
        Ok(())
    }

    fn file_command(&mut self, cmd: FileCommand) {
        match cmd {
            FileCommand::BeginUpload { id, key, reply } => {
                let _ = reply.send(self.files.begin_upload(&id, &key));
            }
            FileCommand::EndUpload { id, ok } => {
                if let Some((room, file)) = self.files.end_upload(&id, ok) {
                    if self.rooms.contains_key(&room) {
                        self.broadcast(&room, None, Arc::new(ServerMsg::File { file }));
                    } else {
                        // The room emptied during the upload.
                        self.files.room_closed(&room);
                    }
                }
            }
            FileCommand::Download { id, reply } => {
                let _ = reply.send(self.files.download(&id));
            }
        }
    }

    /// Passes the SFU's SDP or error on, if the participant is still in an `sfu` room.
    fn media_event(&mut self, event: MediaEvent) {
        let (peer, msg) = match event {
            MediaEvent::Signal { peer, payload } => {
                (peer, ServerMsg::Signal { from: PeerId(SFU_PEER_ID.to_string()), payload })
            }
            MediaEvent::Error { peer, code, request } => (peer, ServerMsg::error(code, request)),
            MediaEvent::ActiveSpeaker { room, peer } => {
                // Only while the speaker is still there (the event may trail a leave).
                let here = self
                    .rooms
                    .get(room.as_str())
                    .is_some_and(|r| r.topology() == Topology::Sfu && r.member(&peer).is_some());
                if here {
                    self.broadcast(&room, None, Arc::new(ServerMsg::ActiveSpeaker { peer }));
                }
                return;
            }
        };
        let room = self.conns.get(&peer).and_then(|c| c.room.as_ref());
        if room.and_then(|r| self.rooms.get(r)).is_some_and(|r| r.topology() == Topology::Sfu) {
            self.send(&peer, msg);
        }
    }

    fn chat(&mut self, id: &PeerId, room: &str, text: &str) -> Result<(), ErrorCode> {
        let text = validate::chat_text(text, self.config.max_chat_chars).ok_or(ErrorCode::InvalidText)?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let message = self.rooms.get_mut(room).and_then(|r| r.post_chat(id, text, ts)).ok_or(ErrorCode::NotInRoom)?;
        self.broadcast(room, None, Arc::new(ServerMsg::Chat { message }));
        Ok(())
    }

    /// Takes `id` out of its room, tells the others, and drops the room when it empties.
    fn leave_room(&mut self, id: &PeerId, reason: LeaveReason) {
        let Some(room) = self.conns.get_mut(id).and_then(|c| c.room.take()) else { return };
        // Offers it never started uploading go with it.
        self.files.owner_left(id);
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.remove(id);
        if r.topology() == Topology::Sfu {
            if let Some(media) = &self.media {
                if media.try_send(MediaCommand::Leave { peer: id.clone() }).is_err() {
                    // Its SFU session then ends when its connection times out.
                    self.stats.media_commands_dropped += 1;
                    warn!(peer = %id, "SFU queue full; a leave was dropped");
                }
            }
        }
        self.rooms_dirty = true;
        if r.is_empty() {
            self.rooms.remove(&room);
            self.files.room_closed(&room);
            debug!("room closed");
        } else {
            self.broadcast(&room, None, Arc::new(ServerMsg::PeerLeft { id: id.clone(), reason }));
        }
        info!(peer = %id, ?reason, "left a room");
    }

    fn broadcast(&mut self, room: &str, except: Option<&PeerId>, msg: Arc<ServerMsg>) {
        let Some(r) = self.rooms.get(room) else { return };
        for peer in r.members() {
            if Some(&peer.id) == except {
                continue;
            }
            if self.conns.get(&peer.id).is_some_and(|conn| !conn.offer(msg.clone())) {
                self.overflowed.push(peer.id.clone());
            }
        }
    }

    fn send(&mut self, id: &PeerId, msg: ServerMsg) {
        if self.conns.get(id).is_some_and(|conn| !conn.offer(Arc::new(msg))) {
            self.overflowed.push(id.clone());
        }
    }

    /// Disconnects every connection that could not take a message. Evicting tells the rest of
    /// its room, which may overflow further outboxes, hence the loop.
    fn evict_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            if let Some(kick) = conn.kick.take() {
                self.stats.evicted_too_slow += 1;
                warn!(peer = %id, "disconnecting a connection that cannot keep up");
                let _ = kick.send(ByeReason::TooSlow);
            }
            self.disconnect(&id, LeaveReason::TooSlow);
        }
    }

    /// Whether watchers are owed a fresh room list.
    pub fn rooms_dirty(&self) -> bool {
        self.rooms_dirty
    }

    /// Sends the room list to every watcher (called at most every [`ROOM_LIST_INTERVAL`]).
    pub fn publish_rooms(&mut self) {
        self.rooms_dirty = false;
        if self.watchers.is_empty() {
            return;
        }
        let msg = Arc::new(self.room_list());
        let conns = &self.conns;
        let slow = self.watchers.iter().filter(|id| conns.get(*id).is_some_and(|conn| !conn.offer(msg.clone())));
        self.overflowed.extend(slow.cloned());
        self.evict_overflowed();
    }

    fn room_list(&self) -> ServerMsg {
        let mut rooms: Vec<RoomSummary> = self
            .rooms
            .iter()
            .map(|(name, r)| RoomSummary {
                name: name.to_string(),
                participants: r.len() as u32,
                capacity: self.config.room_capacity,
            })
            .collect();
        rooms.sort_by(|a, b| b.participants.cmp(&a.participants).then_with(|| a.name.cmp(&b.name)));
        rooms.truncate(ROOM_LIST_MAX);
        ServerMsg::Rooms { rooms }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        info!(connections = self.conns.len(), "saying goodbye to every connection");
        let bye = Arc::new(ServerMsg::Bye { reason: ByeReason::ServerShutdown });
        self.closing = true;
        self.files.clear();
        for conn in self.conns.values_mut() {
            // Dropping the outbox after `bye` lets the connection task write it, then close.
            if let Some(outbox) = conn.outbox.take() {
                let _ = outbox.try_send(bye.clone());
            }
        }
        if self.conns.is_empty() {
            let _ = done.send(());
        } else {
            self.shutdown = Some(done);
        }
    }

    /// Checks that the hub's tables agree with each other, and says what is wrong if not. Cheap
    /// enough to call after every command; the `room_state` fuzz target (`fuzz/`) does. Holds
    /// between commands: no room is empty or over capacity; a connection's room and that room's
    /// member list agree both ways, and every member and every watcher is a live connection;
    /// the participant count is the number of connections in a room; no eviction is left
    /// pending; a room uses the SFU only when there is one; a pending shutdown has connections
    /// left to wait for.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.rooms.len() > self.config.max_rooms as usize {
            return Err(format!("{} rooms, more than the limit of {}", self.rooms.len(), self.config.max_rooms));
        }
        for (name, room) in &self.rooms {
            if room.is_empty() {
                return Err(format!("room {name:?} is empty but still listed"));
            }
            if room.len() > self.config.room_capacity as usize {
                return Err(format!("room {name:?} holds {} people, over its capacity", room.len()));
            }
            if room.topology() == Topology::Sfu && self.media.is_none() {
                return Err(format!("room {name:?} uses the SFU but the hub has none"));
            }
            let mut seen = HashSet::new();
            for peer in room.members() {
                if !seen.insert(&peer.id) {
                    return Err(format!("{} is listed twice in room {name:?}", peer.id));
                }
                match self.conns.get(&peer.id) {
                    None => return Err(format!("{} is in room {name:?} but not connected", peer.id)),
                    Some(conn) if conn.room.as_ref() != Some(name) => {
                        return Err(format!("{} is in room {name:?} but its connection says {:?}", peer.id, conn.room));
                    }
                    Some(_) => {}
                }
            }
        }
        for (id, conn) in &self.conns {
            if let Some(room) = &conn.room {
                if self.rooms.get(room).is_none_or(|r| r.member(id).is_none()) {
                    return Err(format!("{id} thinks it is in room {room:?}, which does not list it"));
                }
            }
        }
        if let Some(id) = self.watchers.iter().find(|id| !self.conns.contains_key(*id)) {
            return Err(format!("watcher {id} is not connected"));
        }
        let in_rooms = self.conns.values().filter(|c| c.room.is_some()).count();
        if self.stats().participants != in_rooms {
            return Err(format!(
                "{} participants counted, {in_rooms} connections in a room",
                self.stats().participants
            ));
        }
        if !self.overflowed.is_empty() {
            return Err(format!("evictions left pending: {:?}", self.overflowed));
        }
        if self.shutdown.is_some() && self.conns.is_empty() {
            return Err("shutdown still waits though every connection is gone".to_string());
        }
        Ok(())
    }
}

/// The hub task: applies commands in order and pushes the room list on a timer.
pub async fn run(mut hub: Hub, mut commands: mpsc::Receiver<Command>) {
    let mut tick = tokio::time::interval(ROOM_LIST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => hub.handle(cmd),
                None => break,
            },
            _ = tick.tick(), if hub.rooms_dirty() => hub.publish_rooms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huddle_protocol::{IceCandidate, SignalPayload};

    struct Client {
        id: PeerId,
        rx: mpsc::Receiver<Arc<ServerMsg>>,
        kick: oneshot::Receiver<ByeReason>,
    }

    impl Client {
        fn next(&mut self) -> ServerMsg {
            (*self.rx.try_recv().expect("a message is waiting")).clone()
        }
        fn drain(&mut self) -> Vec<ServerMsg> {
            std::iter::from_fn(|| self.rx.try_recv().ok().map(|m| (*m).clone())).collect()
        }
    }

    fn hub_with(f: impl FnOnce(&mut Config)) -> Hub {
        let mut c = Config::default();
        f(&mut c);
        Hub::new(Arc::new(c))
    }

    fn connect(hub: &mut Hub, n: u32, cap: usize) -> Client {
        let id = PeerId(format!("p{n}"));
        let (tx, rx) = mpsc::channel(cap);
        let (ktx, krx) = oneshot::channel();
        hub.handle(Command::Connect { id: id.clone(), outbox: tx, kick: ktx, host: None });
        let mut c = Client { id, rx, kick: krx };
        assert!(matches!(c.next(), ServerMsg::Welcome { .. }));
        c
    }

    #[test]
    fn sfu_rooms_pass_offers_and_tile_preferences_to_the_media_task() {
        let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
        let (media_tx, mut media_rx) = mpsc::channel(16);
        let mut hub = Hub::with_media(Arc::new(c), media_tx);
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Joined { topology: Topology::Sfu, .. }));
        assert!(matches!(join(&mut hub, &mut b, "r"), ServerMsg::Joined { topology: Topology::Sfu, .. }));
        let offer =
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp: "v=0".into() } };
        let to_sfu = ClientMsg::Signal { to: PeerId(SFU_PEER_ID.into()), payload: offer };
        hub.handle(Command::Client { id: a.id.clone(), msg: to_sfu });
        assert!(matches!(media_rx.try_recv(), Ok(MediaCommand::Offer { peer, .. }) if peer == a.id));
        let hide = ClientMsg::Receive { peer: b.id.clone(), video: huddle_protocol::VideoQuality::Off };
        hub.handle(Command::Client { id: a.id.clone(), msg: hide });
        assert!(matches!(
            media_rx.try_recv(),
            Ok(MediaCommand::Receive { peer, publisher, video: huddle_protocol::VideoQuality::Off })
                if peer == a.id && publisher == b.id
        ));
        // Not about yourself, nor about strangers.
        for target in [a.id.clone(), PeerId("p99".into())] {
            let msg = ClientMsg::Receive { peer: target, video: huddle_protocol::VideoQuality::High };
            hub.handle(Command::Client { id: a.id.clone(), msg });
            assert!(matches!(a.drain().last(), Some(ServerMsg::Error { code: ErrorCode::UnknownPeer, .. })));
        }
        assert!(media_rx.try_recv().is_err(), "nothing else reached the media task");
        // Leaving tells the SFU.
        hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Leave });
        assert!(matches!(media_rx.try_recv(), Ok(MediaCommand::Leave { peer }) if peer == a.id));
    }

    #[test]
    fn the_sfu_names_the_active_speaker_to_the_whole_room_only_while_they_are_in_it() {
        let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
        let (media_tx, _media_rx) = mpsc::channel(16);
        let mut hub = Hub::with_media(Arc::new(c), media_tx);
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        let mut x = connect(&mut hub, 3, 16);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        join(&mut hub, &mut x, "elsewhere");
        a.drain();
        let speaker = |peer: &PeerId| MediaEvent::ActiveSpeaker { room: "r".into(), peer: peer.clone() };
        hub.handle(Command::Media(speaker(&b.id)));
        let b_id = b.id.clone();
        for c in [&mut a, &mut b] {
            assert!(matches!(c.drain().as_slice(), [ServerMsg::ActiveSpeaker { peer }] if *peer == b_id));
        }
        assert!(x.drain().is_empty(), "other rooms hear nothing");
        // An event that trails the speaker's leave is dropped.
        hub.handle(Command::Client { id: b.id.clone(), msg: ClientMsg::Leave });
        a.drain();
        hub.handle(Command::Media(speaker(&b.id)));
        assert!(a.drain().is_empty());
    }

    fn join(hub: &mut Hub, c: &mut Client, room: &str) -> ServerMsg {
        let msg = ClientMsg::Join {
            protocol: 1,
            room: room.into(),
            name: format!("name {}", c.id),
            audio: true,
            video: true,
        };
        hub.handle(Command::Client { id: c.id.clone(), msg });
        c.next()
    }

    fn error_code(m: ServerMsg) -> ErrorCode {
        match m {
            ServerMsg::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn join_lists_existing_peers_and_tells_them() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Joined { ref peers, .. } if peers.is_empty()));
        match join(&mut hub, &mut b, " r ") {
            ServerMsg::Joined { room, peers, .. } => {
                assert_eq!(room, "r", "room names are trimmed");
                assert_eq!(peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), vec![a.id.clone()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.next(), ServerMsg::PeerJoined { peer } if peer.id == b.id));
        assert_eq!(hub.stats().participants, 2);
    }

    #[test]
    fn room_full_is_refused_and_changes_nothing() {
        let mut hub = hub_with(|c| c.room_capacity = 2);
        let mut cs: Vec<Client> = (1..=3).map(|n| connect(&mut hub, n, 16)).collect();
        for c in cs.iter_mut().take(2) {
            join(&mut hub, c, "r");
        }
        assert_eq!(error_code(join(&mut hub, &mut cs[2], "r")), ErrorCode::RoomFull);
        assert_eq!(hub.stats().participants, 2);
        assert!(cs[0].drain().iter().all(|m| !matches!(m, ServerMsg::PeerJoined { peer } if peer.id.0 == "p3")));
    }

    #[test]
    fn signal_goes_to_one_peer_of_the_same_room_only() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        let mut c = connect(&mut hub, 3, 16);
        let mut d = connect(&mut hub, 4, 16);
        join(&mut hub, &mut a, "one");
        join(&mut hub, &mut b, "one");
        join(&mut hub, &mut c, "one");
        join(&mut hub, &mut d, "two");
        for x in [&mut a, &mut b, &mut c] {
            x.drain();
        }
        let payload = SignalPayload::Candidate {
            candidate: Some(IceCandidate {
                candidate: "candidate:1".into(),
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        };
        hub.handle(Command::Client {
            id: a.id.clone(),
            msg: ClientMsg::Signal { to: b.id.clone(), payload: payload.clone() },
        });
        assert!(matches!(b.next(), ServerMsg::Signal { ref from, .. } if *from == a.id));
        assert!(c.drain().is_empty(), "never broadcast");
        hub.handle(Command::Client {
            id: a.id.clone(),
            msg: ClientMsg::Signal { to: d.id.clone(), payload: payload.clone() },
        });
        assert_eq!(error_code(a.next()), ErrorCode::UnknownPeer, "other room");
        assert!(d.drain().is_empty());
        hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Signal { to: a.id.clone(), payload } });
        assert_eq!(error_code(a.next()), ErrorCode::UnknownPeer, "self");
    }

    #[test]
    fn chat_history_is_bounded_and_handed_to_latecomers() {
        let mut hub = hub_with(|c| c.chat_history = 3);
        let mut a = connect(&mut hub, 1, 64);
        join(&mut hub, &mut a, "r");
        for i in 0..5 {
            hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Chat { text: format!("m{i}") } });
        }
        assert_eq!(a.drain().len(), 5, "the sender gets its own messages");
        let mut b = connect(&mut hub, 2, 64);
        match join(&mut hub, &mut b, "r") {
            ServerMsg::Joined { chat, .. } => {
                assert_eq!(chat.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m2", "m3", "m4"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_before_joining_are_refused() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        for msg in [
            ClientMsg::Leave,
            ClientMsg::Chat { text: "x".into() },
            ClientMsg::Media { audio: true, video: true, screen: false },
        ] {
            hub.handle(Command::Client { id: a.id.clone(), msg });
            assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
        }
    }

    #[test]
    fn empty_rooms_disappear_and_watchers_see_it() {
        let mut hub = hub_with(|_| {});
        let mut w = connect(&mut hub, 9, 16);
        hub.handle(Command::Client { id: w.id.clone(), msg: ClientMsg::WatchRooms });
        assert!(matches!(w.next(), ServerMsg::Rooms { rooms } if rooms.is_empty()));
        let mut a = connect(&mut hub, 1, 16);
        join(&mut hub, &mut a, "한국어 방");
        hub.publish_rooms();
        match w.next() {
            ServerMsg::Rooms { rooms } => assert_eq!((rooms[0].name.as_str(), rooms[0].participants), ("한국어 방", 1)),
            other => panic!("{other:?}"),
        }
        hub.handle(Command::Disconnect { id: a.id.clone(), reason: LeaveReason::Disconnected });
        assert_eq!(hub.stats().rooms, 0);
        assert!(hub.rooms_dirty());
        hub.publish_rooms();
        assert!(matches!(w.next(), ServerMsg::Rooms { rooms } if rooms.is_empty()));
    }

    #[test]
    fn a_slow_client_is_evicted_without_stalling_others() {
        let mut hub = hub_with(|_| {});
        let mut fast = connect(&mut hub, 1, 1024);
        let mut slow = connect(&mut hub, 2, 8);
        join(&mut hub, &mut fast, "r");
        join(&mut hub, &mut slow, "r");
        fast.drain();
        // `slow` never reads: its queue of 8 fills up.
        for i in 0..20 {
            hub.handle(Command::Client { id: fast.id.clone(), msg: ClientMsg::Chat { text: format!("{i}") } });
        }
        assert_eq!(slow.kick.try_recv(), Ok(ByeReason::TooSlow));
        let got = fast.drain();
        assert_eq!(
            got.iter().filter(|m| matches!(m, ServerMsg::Chat { .. })).count(),
            20,
            "the fast client got everything"
        );
        assert!(got.iter().any(|m| matches!(m, ServerMsg::PeerLeft { reason: LeaveReason::TooSlow, .. })));
        assert_eq!(hub.stats().evicted_too_slow, 1);
        assert_eq!(hub.stats().participants, 1);
    }

    #[test]
    fn shutdown_says_bye_and_completes_when_all_are_gone() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        let (done_tx, mut done_rx) = oneshot::channel();
        hub.handle(Command::Shutdown { done: done_tx });
        assert!(matches!(a.next(), ServerMsg::Bye { reason: ByeReason::ServerShutdown }));
        assert!(matches!(a.rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)), "outbox closed");
        assert!(done_rx.try_recv().is_err());
        hub.handle(Command::Disconnect { id: a.id.clone(), reason: LeaveReason::Left });
        assert_eq!(done_rx.try_recv(), Ok(()));
    }

    /// Found by the `room_state` fuzz target: once shutdown had completed (at once when nobody
    /// was connected, or when the last connection left) the hub forgot it and welcomed new
    /// connections into a server about to stop.
    #[test]
    fn connections_after_shutdown_are_turned_away_even_once_it_completed() {
        for connected_before in [false, true] {
            let mut hub = hub_with(|_| {});
            let a = connected_before.then(|| connect(&mut hub, 1, 16));
            let (done_tx, mut done_rx) = oneshot::channel();
            hub.handle(Command::Shutdown { done: done_tx });
            if let Some(a) = a {
                hub.handle(Command::Disconnect { id: a.id, reason: LeaveReason::Left });
            }
            assert_eq!(done_rx.try_recv(), Ok(()));
            let (tx, mut rx) = mpsc::channel(16);
            let (ktx, mut krx) = oneshot::channel();
            hub.handle(Command::Connect { id: PeerId("p2".into()), outbox: tx, kick: ktx, host: None });
            assert_eq!(krx.try_recv(), Ok(ByeReason::ServerShutdown));
            assert!(rx.try_recv().is_err(), "no welcome");
            assert_eq!(hub.stats().connections, 0);
        }
    }
}
