//! One room's state: who is in it (in joining order) and its recent chat. Owned by the hub.

use huddle_protocol::{ChatMessage, Peer, PeerId, Topology};
use std::collections::VecDeque;

#[derive(Debug, PartialEq, Eq)]
pub enum RoomError {
    Full,
}

pub struct Room {
    capacity: usize,
    members: Vec<Peer>,
    chat: VecDeque<ChatMessage>,
    history: usize,
    next_chat_id: u64,
    topology: Topology,
}

impl Room {
    pub fn new(capacity: usize, history: usize, topology: Topology) -> Room {
        Room { capacity, members: Vec::new(), chat: VecDeque::new(), history, next_chat_id: 1, topology }
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

    pub fn members(&self) -> &[Peer] {
        &self.members
    }

    pub fn member(&self, id: &PeerId) -> Option<&Peer> {
        self.members.iter().find(|p| &p.id == id)
    }

    /// Adds `peer`; returns who was already there.
    pub fn add(&mut self, peer: Peer) -> Result<Vec<Peer>, RoomError> {
        if self.members.len() >= self.capacity {
            return Err(RoomError::Full);
        }
        let before = self.members.clone();
        self.members.push(peer);
        Ok(before)
    }

    pub fn remove(&mut self, id: &PeerId) {
        self.members.retain(|p| &p.id != id);
    }

    /// Updates a member's media state; returns the member as it now is.
    pub fn set_media(&mut self, id: &PeerId, audio: bool, video: bool, screen: bool) -> Option<Peer> {
        let p = self.members.iter_mut().find(|p| &p.id == id)?;
        (p.audio, p.video, p.screen) = (audio, video, screen);
        Some(p.clone())
    }

    /// Records a chat message from a member; `None` if `from` is not in the room.
    pub fn post_chat(&mut self, from: &PeerId, text: &str, ts: u64) -> Option<ChatMessage> {
        let name = self.members.iter().find(|p| &p.id == from)?.name.clone();
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
        Peer { id: PeerId(format!("p{n}")), name: format!("n{n}"), audio: true, video: true, screen: false }
    }

    #[test]
    fn capacity_is_enforced_and_order_kept() {
        let mut r = Room::new(2, 10, Topology::P2p);
        assert_eq!(r.add(peer(1)), Ok(vec![]));
        assert_eq!(r.add(peer(2)), Ok(vec![peer(1)]));
        assert_eq!(r.add(peer(3)), Err(RoomError::Full));
        r.remove(&PeerId("p1".into()));
        assert_eq!(r.add(peer(3)), Ok(vec![peer(2)]));
    }

    #[test]
    fn chat_ids_increase_and_strangers_cannot_post() {
        let mut r = Room::new(2, 10, Topology::P2p);
        r.add(peer(1)).expect("room has space");
        assert_eq!(r.post_chat(&PeerId("p1".into()), "a", 1).map(|m| m.id), Some(1));
        assert_eq!(r.post_chat(&PeerId("p1".into()), "b", 2).map(|m| m.id), Some(2));
        assert_eq!(r.post_chat(&PeerId("p9".into()), "c", 3), None);
    }

    #[test]
    fn media_state_is_updated() {
        let mut r = Room::new(2, 10, Topology::P2p);
        r.add(peer(1)).expect("room has space");
        let p = r.set_media(&PeerId("p1".into()), false, false, true).expect("member");
        assert_eq!((p.audio, p.video, p.screen), (false, false, true));
    }
}
