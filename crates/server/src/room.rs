//! One room's state: who is in it (in joining order) with their roles, who is waiting to be let
//! in, its settings, bans and recent chat. Plain data owned by the hub; the rules about who may
//! do what live in the hub, which calls these.

use huddle_protocol::{ChatMessage, Knocker, Peer, PeerId, Role, RoomSettings, Topology};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};

#[derive(Debug, PartialEq, Eq)]
pub enum RoomError {
    Full,
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
    pub settings: RoomSettings,
    password: Option<String>,
    #[serde(skip)]
    waiting: Vec<Waiter>,
    /// Ban keys: `ip:<address>`, `sub:<token subject>`.
    banned: HashSet<String>,
}

/// Most bans one room keeps.
const MAX_BANS: usize = 1024;

impl Room {
    pub fn new(capacity: usize, history: usize, topology: Topology) -> Room {
        Room {
            capacity,
            members: Vec::new(),
            chat: VecDeque::new(),
            history,
            next_chat_id: 1,
            topology,
            settings: RoomSettings::default(),
            password: None,
            waiting: Vec::new(),
            banned: HashSet::new(),
        }
    }

    /// A room read back after a restart, fitted to the (maybe changed) configuration: members
    /// for whom `keep` says no are dropped, and so are those over `capacity`.
    pub fn restored(&mut self, capacity: usize, history: usize, keep: impl Fn(&PeerId) -> bool) {
        self.capacity = capacity;
        self.history = history;
        while self.chat.len() > history {
            self.chat.pop_front();
        }
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

    /// Adds `peer`; returns who was already there.
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

    /// Sets or removes (`None`) the password.
    pub fn set_password(&mut self, password: Option<String>) {
        self.settings.has_password = password.is_some();
        self.password = password;
    }

    /// Whether `given` is the room's password (compared in constant time). A room without a
    /// password accepts anything.
    pub fn password_matches(&self, given: Option<&str>) -> Result<(), huddle_protocol::ErrorCode> {
        use huddle_protocol::ErrorCode;
        let Some(expected) = &self.password else { return Ok(()) };
        let given = given.ok_or(ErrorCode::PasswordRequired)?;
        if given.is_empty() {
            return Err(ErrorCode::PasswordRequired);
        }
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes()).is_ok() {
            Ok(())
        } else {
            Err(ErrorCode::WrongPassword)
        }
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

    /// Records a chat message from a member; `None` if `from` is not in the room.
    pub fn post_chat(&mut self, from: &PeerId, text: &str, ts: u64) -> Option<ChatMessage> {
        let name = self.member(from)?.name.clone();
        let message = ChatMessage { id: self.next_chat_id, from: from.clone(), name, text: text.to_string(), ts };
        self.next_chat_id += 1;
        if self.history > 0 {
            if self.chat.len() == self.history {
                self.chat.pop_front();
            }
            self.chat.push_back(message.clone());
        }
        Some(message)
    }

    pub fn chat_history(&self) -> Vec<ChatMessage> {
        self.chat.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u32) -> Peer {
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

    #[test]
    fn capacity_is_enforced_and_order_kept() {
        let mut r = Room::new(2, 10, Topology::P2p);
        assert_eq!(r.add(peer(1)), Ok(vec![]));
        assert_eq!(r.add(peer(2)), Ok(vec![peer(1)]));
        assert_eq!(r.add(peer(3)), Err(RoomError::Full));
        r.remove(&id(1));
        assert_eq!(r.add(peer(3)), Ok(vec![peer(2)]));
    }

    #[test]
    fn chat_ids_increase_and_strangers_cannot_post() {
        let mut r = Room::new(2, 10, Topology::P2p);
        r.add(peer(1)).expect("room has space");
        assert_eq!(r.post_chat(&id(1), "a", 1).map(|m| m.id), Some(1));
        assert_eq!(r.post_chat(&id(1), "b", 2).map(|m| m.id), Some(2));
        assert_eq!(r.post_chat(&id(9), "c", 3), None);
    }

    #[test]
    fn media_state_is_updated() {
        let mut r = Room::new(2, 10, Topology::P2p);
        r.add(peer(1)).expect("room has space");
        let p = r.set_media(&id(1), false, false, true).expect("allowed").expect("member");
        assert_eq!((p.audio, p.video, p.screen), (false, false, true));
    }

    #[test]
    fn what_a_host_switched_off_stays_off_unless_unmuting_is_allowed() {
        let mut r = Room::new(4, 10, Topology::P2p);
        r.add(peer(1)).expect("room has space");
        let p = r.hold(&id(1), Held { audio: true, ..Held::default() }).expect("member");
        assert!(!p.audio);
        assert_eq!(r.set_media(&id(1), true, true, false), Err(Held { audio: true, ..Held::default() }));
        assert!(!r.member(&id(1)).expect("member").audio, "refused: nothing changed");
        // Other changes are still fine.
        assert!(r.set_media(&id(1), false, false, false).is_ok());
        r.settings.allow_unmute = true;
        assert!(r.set_media(&id(1), true, false, false).expect("allowed now").expect("member").audio);
        // Unmuting cleared the hold.
        r.settings.allow_unmute = false;
        assert!(r.set_media(&id(1), true, true, false).is_ok());
    }

    #[test]
    fn the_host_role_passes_to_the_earliest_cohost_then_the_earliest_member() {
        let mut r = Room::new(4, 10, Topology::P2p);
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
        let mut r = Room::new(4, 10, Topology::P2p);
        assert_eq!(r.password_matches(None), Ok(()));
        r.set_password(Some("sesame".into()));
        assert!(r.settings.has_password);
        assert_eq!(r.password_matches(None), Err(huddle_protocol::ErrorCode::PasswordRequired));
        assert_eq!(r.password_matches(Some("")), Err(huddle_protocol::ErrorCode::PasswordRequired));
        assert_eq!(r.password_matches(Some("sesam")), Err(huddle_protocol::ErrorCode::WrongPassword));
        assert_eq!(r.password_matches(Some("sesame")), Ok(()));
        r.set_password(None);
        assert_eq!(r.password_matches(Some("x")), Ok(()));
        r.ban(&["ip:10.0.0.1".into()]);
        assert!(r.is_banned(&["sub:x".into(), "ip:10.0.0.1".into()]));
        assert!(!r.is_banned(&["ip:10.0.0.2".into()]));
    }
}
