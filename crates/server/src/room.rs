//! One room's state: who is in it (in joining order) with their roles, who is waiting to be let
//! in, its settings, bans and recent chat, its password (as a hash) and what invites must carry
//! to open it. Plain data owned by the hub; the rules about who may do what live in the hub,
//! which calls these.

pub mod breakout;
pub mod password;

use huddle_protocol::{ChatMessage, Knocker, Peer, PeerId, Role, RoomSettings, Topology};
use password::{Guesses, PasswordHash};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};

#[derive(Debug, PartialEq, Eq)]
pub enum RoomError {
    Full,
    /// No such room.
    Gone,
    /// The session is in a room or a waiting line already.
    AlreadyThere,
}

/// What a host switched off for a participant, which they may not switch on again themselves
/// unless the room allows unmuting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub audio: bool,
    pub video: bool,
    pub screen: bool,
}

#[derive(Serialize, Deserialize)]
struct Member {
    peer: Peer,
    held: Held,
}

/// Someone who knocked and waits for a host, with what they asked to join with.
#[derive(Clone, Debug)]
pub struct Waiter {
    pub knocker: Knocker,
    pub audio: bool,
    pub video: bool,
    /// Keys that would ban them (see [`Room::ban`]).
    pub keys: Vec<String>,
}

/// Serialised (without its waiting room, whose people are connections that cannot outlive the
/// server) when the server saves its sessions for a restart.
#[derive(Serialize, Deserialize)]
pub struct Room {
    capacity: usize,
    members: Vec<Member>,
    chat: VecDeque<ChatMessage>,
    history: usize,
    next_chat_id: u64,
    topology: Topology,
    /// Change through the methods that keep `listed` false for a protected room
    /// ([`Room::set_flags`]).
    settings: RoomSettings,
    password: Option<PasswordHash>,
    #[serde(skip)]
    waiting: Vec<Waiter>,
    /// Ban keys: `ip:<address>`, `sub:<token subject>`.
    banned: HashSet<String>,
    /// Random, made when the room opens and kept over a restart: an invite names it, so that it
    /// opens this room and not a later one of the same name.
    instance: String,
    /// Goes up whenever the password changes or a host revokes the invites: an invite carries
    /// the value it was made at and works only while it is current.
    invite_gen: u32,
    /// Goes up whenever the password changes: a check that began before it no longer counts.
    password_gen: u32,
    /// The budget of wrong password guesses (starts full after a restart).
    #[serde(skip)]
    guesses: Guesses,
    /// Bytes of `chat` (texts and names), kept under [`CHAT_HISTORY_BYTES`].
    #[serde(skip)]
    chat_bytes: usize,
    /// Password changes asked for: a new password is hashed off the hub's task, and only the
    /// latest change asked for may land.
    #[serde(skip)]
    password_seq: u64,
    /// The recording in progress. Kept with the room: after a graceful restart or a move to
    /// another node, the room's new owner goes on recording it as a new part
    /// (`crate::recording`, "Parts").
    #[serde(default)]
    recording: Option<huddle_protocol::RecordingInfo>,
    /// Which part of `recording` is being written (1 for the first).
    #[serde(default)]
    recording_part: u32,
    /// A meeting's main room: its breakout rooms while they are open.
    #[serde(default)]
    breakouts: Option<breakout::Breakouts>,
}

/// Most bytes of chat (text and sender names) a room keeps for latecomers, besides the count
/// (`--chat-history`): at the limits a hundred messages would be about 0.5 MiB per room.
pub const CHAT_HISTORY_BYTES: usize = 32 * 1024;

/// Most bans one room keeps.
const MAX_BANS: usize = 1024;

impl Room {
    /// A room that just opened: unprotected, hence listed. `instance` is random (see
    /// [`Room::instance`]).
    pub fn new(capacity: usize, history: usize, topology: Topology, instance: String) -> Room {
        Room {
            capacity,
            members: Vec::new(),
            chat: VecDeque::new(),
            history,
            next_chat_id: 1,
            topology,
            settings: RoomSettings { listed: true, ..RoomSettings::default() },
            password: None,
            waiting: Vec::new(),
            banned: HashSet::new(),
            instance,
            invite_gen: 0,
            password_gen: 0,
            guesses: Guesses::default(),
            chat_bytes: 0,
            password_seq: 0,
            recording: None,
            recording_part: 0,
            breakouts: None,
        }
    }

    /// A room read back after a restart, fitted to the (maybe changed) configuration: members
    /// for whom `keep` says no are dropped, and so are those over `capacity`.
    pub fn restored(&mut self, capacity: usize, history: usize, keep: impl Fn(&PeerId) -> bool) {
        self.capacity = capacity;
        self.history = history;
        self.chat_bytes = self.chat.iter().map(chat_bytes).sum();
        self.trim_chat();
        self.set_flags(|_| {});
        let mut kept = 0;
        self.members.retain(|m| {
            let ok = kept < capacity && keep(&m.peer.id);
            kept += usize::from(ok);
            ok
        });
    }

    /// How media flows in this room now.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    pub fn set_topology(&mut self, topology: Topology) {
        self.topology = topology;
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.members.len() >= self.capacity
    }

    pub fn members(&self) -> impl Iterator<Item = &Peer> + '_ {
        self.members.iter().map(|m| &m.peer)
    }

    pub fn member(&self, id: &PeerId) -> Option<&Peer> {
        self.members.iter().find(|m| &m.peer.id == id).map(|m| &m.peer)
    }

    fn member_mut(&mut self, id: &PeerId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &m.peer.id == id)
    }

    /// A member's role; `None` if `id` is not in the room.
    pub fn role(&self, id: &PeerId) -> Option<Role> {
        self.member(id).map(|p| p.role)
    }

    /// Adds `peer`; returns who was already there. (The hub changes who is in a room and who
    /// waits only through `hub::membership::Rooms`, which indexes it.)
    pub fn add(&mut self, peer: Peer) -> Result<Vec<Peer>, RoomError> {
        if self.is_full() {
            return Err(RoomError::Full);
        }
        let before = self.members().cloned().collect();
        self.members.push(Member { peer, held: Held::default() });
        Ok(before)
    }

    /// Takes `id` out; returns it as it was.
    pub fn remove(&mut self, id: &PeerId) -> Option<Peer> {
        let at = self.members.iter().position(|m| &m.peer.id == id)?;
        Some(self.members.remove(at).peer)
    }

    /// Updates a member's media state; returns the member as it now is. Refused (`Err`) when
    /// it turns on something a host switched off and the room does not allow unmuting; nothing
    /// changes then.
    pub fn set_media(&mut self, id: &PeerId, audio: bool, video: bool, screen: bool) -> Result<Option<Peer>, Held> {
        let allow = self.settings.allow_unmute;
        let Some(m) = self.member_mut(id) else { return Ok(None) };
        let refused = Held {
            audio: audio && !m.peer.audio && m.held.audio,
            video: video && !m.peer.video && m.held.video,
            screen: screen && !m.peer.screen && m.held.screen,
        };
        if !allow && refused != Held::default() {
            return Err(refused);
        }
        if audio {
            m.held.audio = false;
        }
        if video {
            m.held.video = false;
        }
        if screen {
            m.held.screen = false;
        }
        (m.peer.audio, m.peer.video, m.peer.screen) = (audio, video, screen);
        Ok(Some(m.peer.clone()))
    }

    /// What a host switched off for `id` (nothing for strangers).
    pub fn held(&self, id: &PeerId) -> Held {
        self.members.iter().find(|m| &m.peer.id == id).map_or(Held::default(), |m| m.held)
    }

    /// A host switches something off for `id`; returns the member as it now is.
    pub fn hold(&mut self, id: &PeerId, held: Held) -> Option<Peer> {
        let m = self.member_mut(id)?;
        if held.audio {
            (m.peer.audio, m.held.audio) = (false, true);
        }
        if held.video {
            (m.peer.video, m.held.video) = (false, true);
        }
        if held.screen {
            (m.peer.screen, m.held.screen) = (false, true);
        }
        Some(m.peer.clone())
    }

    pub fn set_hand(&mut self, id: &PeerId, raised: bool) -> Option<Peer> {
        let m = self.member_mut(id)?;
        m.peer.hand = raised;
        Some(m.peer.clone())
    }

    pub fn set_role(&mut self, id: &PeerId, role: Role) -> Option<Peer> {
        let m = self.member_mut(id)?;
        m.peer.role = role;
        Some(m.peer.clone())
    }

    /// After the host left: the earliest co-host, else the earliest member, becomes host.
    /// Returns the new host, if the room had none and is not empty.
    pub fn ensure_host(&mut self) -> Option<Peer> {
        if self.members.iter().any(|m| m.peer.role == Role::Host) {
            return None;
        }
        let at = self.members.iter().position(|m| m.peer.role == Role::Cohost).or(if self.members.is_empty() {
            None
        } else {
            Some(0)
        })?;
        self.members[at].peer.role = Role::Host;
        Some(self.members[at].peer.clone())
    }

    pub fn settings(&self) -> RoomSettings {
        self.settings
    }

    /// Changes the settings' flags; a room with a password, a lock or a waiting room is never
    /// listed, whatever `change` asked. (`has_password` follows [`Room::set_password`] only.)
    pub fn set_flags(&mut self, change: impl FnOnce(&mut RoomSettings)) {
        let has_password = self.settings.has_password;
        change(&mut self.settings);
        let s = &mut self.settings;
        s.has_password = has_password;
        if s.locked || s.waiting_room || s.has_password {
            s.listed = false;
        }
    }

    /// On the public room list.
    pub fn is_listed(&self) -> bool {
        self.settings.listed
    }

    /// Sets or removes (`None`) the password. Invites made before stop working, and password
    /// checks still running no longer count.
    pub fn set_password(&mut self, password: Option<PasswordHash>) {
        self.settings.has_password = password.is_some();
        self.password = password;
        self.password_gen = self.password_gen.wrapping_add(1);
        self.invite_gen = self.invite_gen.wrapping_add(1);
        self.set_flags(|_| {});
    }

    /// The password's hash, and its generation (see [`Room::set_password`]).
    pub fn password(&self) -> Option<(&PasswordHash, u32)> {
        self.password.as_ref().map(|p| (p, self.password_gen))
    }

    pub fn password_gen(&self) -> u32 {
        self.password_gen
    }

    /// A host asked to change the password: returns the change's number. A hash of an earlier
    /// change that lands later is dropped (see [`Room::password_seq`]).
    pub fn begin_password_change(&mut self) -> u64 {
        self.password_seq += 1;
        self.password_seq
    }

    /// The number of the latest password change asked for.
    pub fn password_seq(&self) -> u64 {
        self.password_seq
    }

    /// The budget of wrong password guesses.
    pub fn guesses(&mut self) -> &mut Guesses {
        &mut self.guesses
    }

    /// What an invite must name to open this room: its instance and the current invite
    /// generation.
    pub fn invite_key(&self) -> (&str, u32) {
        (&self.instance, self.invite_gen)
    }

    /// Every invite made so far stops working.
    pub fn revoke_invites(&mut self) {
        self.invite_gen = self.invite_gen.wrapping_add(1);
    }

    /// The recording in progress, if any.
    pub fn recording(&self) -> Option<&huddle_protocol::RecordingInfo> {
        self.recording.as_ref()
    }

    /// Starts (with `Some`, as `part`) or ends (with `None`) the room's recording.
    pub fn set_recording(&mut self, recording: Option<huddle_protocol::RecordingInfo>, part: u32) {
        self.recording_part = if recording.is_some() { part } else { 0 };
        self.recording = recording;
    }

    /// The meeting's open breakout rooms (a main room's).
    pub fn breakouts(&self) -> Option<&breakout::Breakouts> {
        self.breakouts.as_ref()
    }

    pub fn breakouts_mut(&mut self) -> Option<&mut breakout::Breakouts> {
        self.breakouts.as_mut()
    }

    pub fn set_breakouts(&mut self, breakouts: Option<breakout::Breakouts>) {
        self.breakouts = breakouts;
    }

    /// Which part of the recording is being written.
    pub fn recording_part(&self) -> u32 {
        self.recording_part
    }

    /// This opening of the room (a later room of the same name has another).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn waiting(&self) -> Vec<Knocker> {
        self.waiting.iter().map(|w| w.knocker.clone()).collect()
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Adds someone to the waiting room (at most as many as the room holds).
    pub fn knock(&mut self, waiter: Waiter) -> Result<(), RoomError> {
        if self.waiting.len() >= self.capacity {
            return Err(RoomError::Full);
        }
        self.waiting.push(waiter);
        Ok(())
    }

    /// Takes someone out of the waiting room.
    pub fn unknock(&mut self, id: &PeerId) -> Option<Waiter> {
        let at = self.waiting.iter().position(|w| &w.knocker.id == id)?;
        Some(self.waiting.remove(at))
    }

    pub fn take_waiters(&mut self) -> Vec<Waiter> {
        std::mem::take(&mut self.waiting)
    }

    pub fn ban(&mut self, keys: &[String]) {
        for k in keys {
            if self.banned.len() < MAX_BANS {
                self.banned.insert(k.clone());
            }
        }
    }

    pub fn is_banned(&self, keys: &[String]) -> bool {
        keys.iter().any(|k| self.banned.contains(k))
    }

    /// Records a chat message from a member; `None` if `from` is not in the room. The history
    /// keeps the newest `history` messages that fit in [`CHAT_HISTORY_BYTES`].
    pub fn post_chat(&mut self, from: &PeerId, text: &str, ts: u64) -> Option<ChatMessage> {
        let name = self.member(from)?.name.clone();
        let message = ChatMessage { id: self.next_chat_id, from: from.clone(), name, text: text.to_string(), ts };
        self.next_chat_id += 1;
        if self.history > 0 {
            self.chat_bytes += chat_bytes(&message);
            self.chat.push_back(message.clone());
            self.trim_chat();
        }
        Some(message)
    }

    fn trim_chat(&mut self) {
        while self.chat.len() > self.history || self.chat_bytes > CHAT_HISTORY_BYTES {
            let Some(old) = self.chat.pop_front() else { break };
            self.chat_bytes -= chat_bytes(&old);
        }
    }

    pub fn chat_history(&self) -> Vec<ChatMessage> {
        self.chat.iter().cloned().collect()
    }
}

/// What a kept chat message counts against [`CHAT_HISTORY_BYTES`].
fn chat_bytes(m: &ChatMessage) -> usize {
    m.text.len() + m.name.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Participant `p<n>`, named `n<n>`, microphone and camera on (also used by the hub's tests).
    pub(crate) fn peer(n: u32) -> Peer {
        Peer {
            id: PeerId(format!("p{n}")),
            name: format!("n{n}"),
            audio: true,
            video: true,
            screen: false,
            role: Role::Participant,
            hand: false,
        }
    }

    fn id(n: u32) -> PeerId {
        PeerId(format!("p{n}"))
    }

    fn room(capacity: usize, history: usize) -> Room {
        Room::new(capacity, history, Topology::P2p, "instance".into())
    }

    #[test]
    fn capacity_is_enforced_and_order_kept() {
        let mut r = room(2, 10);
        assert_eq!(r.add(peer(1)), Ok(vec![]));
        assert_eq!(r.add(peer(2)), Ok(vec![peer(1)]));
        assert_eq!(r.add(peer(3)), Err(RoomError::Full));
        r.remove(&id(1));
        assert_eq!(r.add(peer(3)), Ok(vec![peer(2)]));
    }

    #[test]
    fn chat_ids_increase_and_strangers_cannot_post() {
        let mut r = room(2, 10);
        r.add(peer(1)).expect("room has space");
        assert_eq!(r.post_chat(&id(1), "a", 1).map(|m| m.id), Some(1));
        assert_eq!(r.post_chat(&id(1), "b", 2).map(|m| m.id), Some(2));
        assert_eq!(r.post_chat(&id(9), "c", 3), None);
    }

    #[test]
    fn media_state_is_updated() {
        let mut r = room(2, 10);
        r.add(peer(1)).expect("room has space");
        let p = r.set_media(&id(1), false, false, true).expect("allowed").expect("member");
        assert_eq!((p.audio, p.video, p.screen), (false, false, true));
    }

    #[test]
    fn what_a_host_switched_off_stays_off_unless_unmuting_is_allowed() {
        let mut r = room(4, 10);
        r.add(peer(1)).expect("room has space");
        let p = r.hold(&id(1), Held { audio: true, ..Held::default() }).expect("member");
        assert!(!p.audio);
        assert_eq!(r.set_media(&id(1), true, true, false), Err(Held { audio: true, ..Held::default() }));
        assert!(!r.member(&id(1)).expect("member").audio, "refused: nothing changed");
        // Other changes are still fine.
        assert!(r.set_media(&id(1), false, false, false).is_ok());
        r.set_flags(|s| s.allow_unmute = true);
        assert!(r.set_media(&id(1), true, false, false).expect("allowed now").expect("member").audio);
        // Unmuting cleared the hold.
        r.set_flags(|s| s.allow_unmute = false);
        assert!(r.set_media(&id(1), true, true, false).is_ok());
    }

    #[test]
    fn the_host_role_passes_to_the_earliest_cohost_then_the_earliest_member() {
        let mut r = room(4, 10);
        for n in 1..=3 {
            r.add(peer(n)).expect("room has space");
        }
        r.set_role(&id(1), Role::Host);
        r.set_role(&id(3), Role::Cohost);
        assert_eq!(r.ensure_host(), None, "there is a host");
        r.remove(&id(1));
        assert_eq!(r.ensure_host().map(|p| p.id), Some(id(3)));
        r.remove(&id(3));
        assert_eq!(r.ensure_host().map(|p| p.id), Some(id(2)));
        r.remove(&id(2));
        assert_eq!(r.ensure_host(), None, "empty");
    }

    #[test]
    fn passwords_and_bans() {
        let mut r = room(4, 10);
        assert!(r.password().is_none());
        let (instance, gen) = (r.invite_key().0.to_string(), r.invite_key().1);
        r.set_password(Some(PasswordHash::new("sesame")));
        assert!(r.settings().has_password);
        let (hash, pgen) = r.password().expect("set");
        assert!(hash.verify("sesame") && !hash.verify("sesam"));
        assert_ne!(r.invite_key(), (instance.as_str(), gen), "a new password voids the invites");
        r.set_password(None);
        assert!(r.password().is_none() && !r.settings().has_password);
        assert_ne!(r.password_gen(), pgen);
        let gen = r.invite_key().1;
        r.revoke_invites();
        assert_ne!(r.invite_key().1, gen);
        assert_eq!(r.instance(), instance, "the same opening of the room");
        r.ban(&["ip:10.0.0.1".into()]);
        assert!(r.is_banned(&["sub:x".into(), "ip:10.0.0.1".into()]));
        assert!(!r.is_banned(&["ip:10.0.0.2".into()]));
    }

    #[test]
    fn only_an_unprotected_room_is_listed() {
        let mut r = room(4, 10);
        assert!(r.is_listed(), "listed when it opens");
        r.set_flags(|s| s.waiting_room = true);
        assert!(!r.is_listed());
        r.set_flags(|s| {
            s.waiting_room = false;
            s.listed = true;
        });
        assert!(r.is_listed());
        r.set_password(Some(PasswordHash::new("pw")));
        assert!(!r.is_listed());
        r.set_flags(|s| {
            s.listed = true;
            s.has_password = false;
        });
        assert!(!r.is_listed() && r.settings().has_password, "a password keeps it off the list");
        r.set_password(None);
        r.set_flags(|s| s.locked = true);
        assert!(!r.is_listed());
    }

    #[test]
    fn chat_history_is_bounded_by_count_and_bytes() {
        let mut r = room(4, 100);
        r.add(peer(1)).expect("room has space");
        let big = "가".repeat(2000); // 6000 bytes
        for _ in 0..20 {
            r.post_chat(&id(1), &big, 1).expect("member");
        }
        let kept = r.chat_history();
        assert_eq!(kept.len(), CHAT_HISTORY_BYTES / (6000 + 2));
        assert!(kept.iter().map(chat_bytes).sum::<usize>() <= CHAT_HISTORY_BYTES);
        assert_eq!(kept.last().map(|m| m.id), Some(20), "the newest are kept");
        let mut small = room(4, 3);
        small.add(peer(1)).expect("room has space");
        for _ in 0..5 {
            small.post_chat(&id(1), "hi", 1);
        }
        assert_eq!(small.chat_history().len(), 3);
    }
}
