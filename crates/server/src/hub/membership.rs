//! The rooms a hub runs, and who is where.
//!
//! Membership is stored once: in each [`Room`], whose member list and waiting line say who is in
//! it and who waits at its door (with their names, roles and hands, and saved with the room).
//! The hub also needs the other direction on every message — which room is this session in? —
//! so [`Rooms`] keeps an index from session to [`Place`]. The index is not a second record: it
//! is written nowhere but here, in the same call that changes a room's lists, and [`Rooms`] is
//! the only way the hub reaches a room. A connection (`Conn`) holds no room at all.

use std::collections::{hash_map, HashMap};
use std::sync::Arc;

use crate::room::{Room, RoomError, Waiter};
use huddle_protocol::{Knocker, Peer, PeerId};

/// Where a session is, as the rooms' lists say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// A member of this room.
    In(Arc<str>),
    /// In this room's waiting line.
    Waiting(Arc<str>),
}

/// The hub's rooms by name (the key is shared with [`Place`], so looking a room up per message
/// clones a pointer, not a string) and the index of who is where.
#[derive(Default)]
pub(super) struct Rooms {
    rooms: HashMap<Arc<str>, Room>,
    at: HashMap<PeerId, Place>,
}

impl Rooms {
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn get(&self, name: &str) -> Option<&Room> {
        self.rooms.get(name)
    }

    /// The room, to change anything but who is in it or waits at it (which only the methods
    /// below change: [`Room::add`], [`Room::remove`], [`Room::knock`], [`Room::unknock`] and
    /// [`Room::take_waiters`] are called nowhere else).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Room> {
        self.rooms.get_mut(name)
    }

    pub fn get_key_value(&self, name: &str) -> Option<(&Arc<str>, &Room)> {
        self.rooms.get_key_value(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.rooms.contains_key(name)
    }

    pub fn iter(&self) -> hash_map::Iter<'_, Arc<str>, Room> {
        self.rooms.iter()
    }

    pub fn keys(&self) -> hash_map::Keys<'_, Arc<str>, Room> {
        self.rooms.keys()
    }

    pub fn values(&self) -> hash_map::Values<'_, Arc<str>, Room> {
        self.rooms.values()
    }

    /// Where `id` is, if anywhere.
    pub fn place(&self, id: &PeerId) -> Option<&Place> {
        self.at.get(id)
    }

    /// The room `id` is a member of.
    pub fn room_of(&self, id: &PeerId) -> Option<&Arc<str>> {
        match self.at.get(id)? {
            Place::In(room) => Some(room),
            Place::Waiting(_) => None,
        }
    }

    /// The room at whose door `id` waits.
    pub fn waiting_at(&self, id: &PeerId) -> Option<&Arc<str>> {
        match self.at.get(id)? {
            Place::Waiting(room) => Some(room),
            Place::In(_) => None,
        }
    }

    /// How many sessions wait at a door.
    pub fn waiting_count(&self) -> usize {
        self.at.values().filter(|p| matches!(p, Place::Waiting(_))).count()
    }

    /// Adds a room. One with members (taken back from a snapshot) keeps only those who are
    /// nowhere else here (a session is in one place).
    pub fn insert(&mut self, name: Arc<str>, mut room: Room) {
        // A room of that name that was here goes first (not reached: rooms are opened and
        // restored only under names not in use), so that its people are not left indexed.
        self.remove(&name);
        let elsewhere: Vec<PeerId> =
            room.members().filter(|p| self.at.contains_key(&p.id)).map(|p| p.id.clone()).collect();
        for id in elsewhere {
            room.remove(&id);
        }
        for peer in room.members() {
            self.at.insert(peer.id.clone(), Place::In(name.clone()));
        }
        for w in room.waiting() {
            match self.at.entry(w.id) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    room.unknock(e.key());
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Place::Waiting(name.clone()));
                }
            }
        }
        self.rooms.insert(name, room);
    }

    /// Removes a room; its members and waiters are nowhere afterwards.
    pub fn remove(&mut self, name: &str) -> Option<Room> {
        let room = self.rooms.remove(name)?;
        self.forget(&room);
        Some(room)
    }

    fn forget(&mut self, room: &Room) {
        for peer in room.members() {
            self.at.remove(&peer.id);
        }
        for w in room.waiting() {
            self.at.remove(&w.id);
        }
    }

    /// Makes `peer` a member of `room`; the members already there are returned. Refused if the
    /// room is gone or full, or the peer is somewhere already.
    pub fn seat(&mut self, room: &Arc<str>, peer: Peer) -> Result<Vec<Peer>, RoomError> {
        if self.at.contains_key(&peer.id) {
            return Err(RoomError::AlreadyThere);
        }
        let r = self.rooms.get_mut(room).ok_or(RoomError::Gone)?;
        let id = peer.id.clone();
        let peers = r.add(peer)?;
        self.at.insert(id, Place::In(room.clone()));
        Ok(peers)
    }

    /// Takes `id` out of the room it is a member of, which is returned (it may be empty now).
    pub fn unseat(&mut self, id: &PeerId) -> Option<Arc<str>> {
        let Some(Place::In(room)) = self.at.get(id) else { return None };
        let room = room.clone();
        self.at.remove(id);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.remove(id);
        }
        Some(room)
    }

    /// Puts `waiter` in the waiting line of `room`. Refused if the room is gone, its line is
    /// full, or the waiter is somewhere already.
    pub fn queue(&mut self, room: &Arc<str>, waiter: Waiter) -> Result<(), RoomError> {
        if self.at.contains_key(&waiter.knocker.id) {
            return Err(RoomError::AlreadyThere);
        }
        let r = self.rooms.get_mut(room).ok_or(RoomError::Gone)?;
        let id = waiter.knocker.id.clone();
        r.knock(waiter)?;
        self.at.insert(id, Place::Waiting(room.clone()));
        Ok(())
    }

    /// Takes `id` out of the waiting line it is in: the room and what it had waited with.
    pub fn unqueue(&mut self, id: &PeerId) -> Option<(Arc<str>, Option<Waiter>)> {
        let Some(Place::Waiting(room)) = self.at.get(id) else { return None };
        let room = room.clone();
        self.at.remove(id);
        let waiter = self.rooms.get_mut(&room).and_then(|r| r.unknock(id));
        Some((room, waiter))
    }

    /// Empties the waiting line of `room`.
    pub fn take_waiters(&mut self, room: &str) -> Vec<Waiter> {
        let waiters = self.rooms.get_mut(room).map(Room::take_waiters).unwrap_or_default();
        for w in &waiters {
            self.at.remove(&w.knocker.id);
        }
        waiters
    }

    /// The ids waiting at `room`'s door, in the order they knocked.
    pub fn waiters(&self, room: &str) -> Vec<PeerId> {
        self.rooms.get(room).map(|r| r.waiting().into_iter().map(|k: Knocker| k.id).collect()).unwrap_or_default()
    }

    /// Checks that the index says what the rooms' lists say (the fuzz target and unit tests call
    /// it through `Hub::check_invariants`).
    pub fn check(&self) -> Result<(), String> {
        let mut listed = 0;
        for (name, room) in &self.rooms {
            for peer in room.members() {
                listed += 1;
                if self.at.get(&peer.id) != Some(&Place::In(name.clone())) {
                    return Err(format!("{} is in room {name:?} but indexed at {:?}", peer.id, self.at.get(&peer.id)));
                }
            }
            for k in room.waiting() {
                listed += 1;
                if self.at.get(&k.id) != Some(&Place::Waiting(name.clone())) {
                    return Err(format!("{} waits at {name:?} but is indexed at {:?}", k.id, self.at.get(&k.id)));
                }
            }
        }
        if listed != self.at.len() {
            return Err(format!("{} places indexed, {listed} in the rooms' lists", self.at.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::tests::peer;
    use huddle_protocol::Topology;

    fn waiter(n: u32) -> Waiter {
        let p = peer(n);
        Waiter { knocker: Knocker { id: p.id, name: p.name }, audio: true, video: true, keys: Vec::new() }
    }

    fn two_rooms() -> (Rooms, Arc<str>, Arc<str>) {
        let mut rooms = Rooms::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        rooms.insert(a.clone(), Room::new(2, 10, Topology::P2p, "ia".into()));
        rooms.insert(b.clone(), Room::new(2, 10, Topology::P2p, "ib".into()));
        (rooms, a, b)
    }

    #[test]
    fn a_session_is_in_one_place_whatever_order_it_asks_in() {
        let (mut rooms, a, b) = two_rooms();
        rooms.seat(&a, peer(1)).expect("room a has space");
        assert_eq!(rooms.seat(&b, peer(1)), Err(RoomError::AlreadyThere), "a member may not join a second room");
        assert_eq!(rooms.queue(&b, waiter(1)), Err(RoomError::AlreadyThere), "nor knock at one");
        rooms.queue(&b, waiter(2)).expect("the line has space");
        assert_eq!(rooms.seat(&a, peer(2)), Err(RoomError::AlreadyThere), "someone waiting may not join elsewhere");
        assert_eq!(rooms.place(&PeerId("p2".into())), Some(&Place::Waiting(b.clone())));
        assert_eq!(rooms.get("b").map(|r| r.len()), Some(0), "a refused seat leaves no trace");
        rooms.check().expect("index agrees");

        // Out of the line, then in: one place at each step.
        let (at, w) = rooms.unqueue(&PeerId("p2".into())).expect("was waiting");
        assert_eq!((at, w.map(|w| w.knocker.name)), (b.clone(), Some("n2".to_string())));
        rooms.seat(&b, peer(2)).expect("room b has space");
        assert_eq!(rooms.room_of(&PeerId("p2".into())), Some(&b));
        assert!(rooms.unqueue(&PeerId("p2".into())).is_none(), "a member is not in a line");
        rooms.check().expect("index agrees");
        assert_eq!(rooms.unseat(&PeerId("p2".into())), Some(b.clone()));
        assert_eq!(rooms.unseat(&PeerId("p2".into())), None, "leaving twice does nothing");
        rooms.check().expect("index agrees");
    }

    #[test]
    fn a_full_or_closed_room_takes_nobody_and_indexes_nobody() {
        let (mut rooms, a, _) = two_rooms();
        rooms.seat(&a, peer(1)).expect("space");
        rooms.seat(&a, peer(2)).expect("space");
        assert_eq!(rooms.seat(&a, peer(3)), Err(RoomError::Full));
        assert_eq!(rooms.place(&PeerId("p3".into())), None);
        let gone: Arc<str> = "gone".into();
        assert_eq!(rooms.seat(&gone, peer(4)), Err(RoomError::Gone));
        assert_eq!(rooms.queue(&gone, waiter(4)), Err(RoomError::Gone));
        assert_eq!(rooms.place(&PeerId("p4".into())), None);
        rooms.check().expect("index agrees");
    }

    #[test]
    fn closing_a_room_or_emptying_its_line_leaves_its_people_nowhere() {
        let (mut rooms, a, b) = two_rooms();
        rooms.seat(&a, peer(1)).expect("space");
        rooms.queue(&a, waiter(2)).expect("space");
        rooms.queue(&a, waiter(3)).expect("space");
        rooms.seat(&b, peer(4)).expect("space");
        let taken: Vec<String> = rooms.take_waiters("a").into_iter().map(|w| w.knocker.id.0).collect();
        assert_eq!(taken, ["p2", "p3"]);
        assert_eq!(rooms.place(&PeerId("p2".into())), None);
        rooms.check().expect("index agrees");
        rooms.queue(&a, waiter(5)).expect("space");
        rooms.remove("a").expect("room a");
        assert_eq!(rooms.place(&PeerId("p1".into())), None);
        assert_eq!(rooms.place(&PeerId("p5".into())), None);
        assert_eq!(rooms.room_of(&PeerId("p4".into())), Some(&b), "the other room is untouched");
        rooms.check().expect("index agrees");
    }

    #[test]
    fn a_restored_room_keeps_only_members_who_are_nowhere_else() {
        let (mut rooms, a, _) = two_rooms();
        rooms.seat(&a, peer(1)).expect("space");
        let mut saved = Room::new(3, 10, Topology::P2p, "ic".into());
        saved.add(peer(1)).expect("space");
        saved.add(peer(2)).expect("space");
        let c: Arc<str> = "c".into();
        rooms.insert(c.clone(), saved);
        assert_eq!(rooms.room_of(&PeerId("p1".into())), Some(&a), "still where it was");
        assert_eq!(rooms.room_of(&PeerId("p2".into())), Some(&c));
        assert_eq!(rooms.get("c").map(Room::len), Some(1));
        rooms.check().expect("index agrees");
    }
}
