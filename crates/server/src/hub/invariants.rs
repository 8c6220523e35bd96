//! The hub's invariants, checked by the unit tests and the `room_state` fuzz target.

use super::*;

impl Hub {
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
        for (name, room) in self.rooms.iter() {
            // A breakout room belongs to a meeting whose rooms are open, and is one of them.
            if let Some(index) = crate::room::breakout::index_of(name) {
                let open = self.rooms.get(breakout_meeting(name)).and_then(Room::breakouts);
                if !open.is_some_and(|b| index >= 1 && b.has(index)) {
                    return Err(format!("breakout room {name:?} without its meeting's rooms open"));
                }
            }
            // A meeting split in rooms keeps its rooms while anyone is in any of them.
            let split = self.in_breakout_meeting(name);
            if room.is_empty() && !(split && self.meeting_len(breakout_meeting(name)) > 0) {
                return Err(format!("room {name:?} is empty but still listed"));
            }
            if room.len() > self.config.room_capacity as usize {
                return Err(format!("room {name:?} holds {} people, over its capacity", room.len()));
            }
            if room.topology() == Topology::Sfu && self.media.is_none() {
                return Err(format!("room {name:?} uses the SFU but the hub has none"));
            }
            let s = room.settings();
            if s.listed && (s.locked || s.waiting_room || s.has_password) {
                return Err(format!("room {name:?} is protected but listed: {s:?}"));
            }
            if s.has_password != room.password().is_some() {
                return Err(format!("room {name:?} says has_password {} but has no hash", s.has_password));
            }
            let mut seen = HashSet::new();
            for peer in room.members() {
                if !seen.insert(&peer.id) {
                    return Err(format!("{} is listed twice in room {name:?}", peer.id));
                }
                if !self.conns.contains_key(&peer.id) {
                    return Err(format!("{} is in room {name:?} but not connected", peer.id));
                }
            }
            for k in room.waiting() {
                if !self.conns.contains_key(&k.id) {
                    return Err(format!("{} waits in {name:?} but is not connected", k.id));
                }
            }
        }
        self.rooms.check()?;
        let tokens_may_set_roles = self.config.token_secret.is_some() || self.config.token_public_key.is_some();
        for (name, room) in self.rooms.iter() {
            let hosts = if crate::room::breakout::index_of(name).is_some() {
                continue; // counted with its meeting
            } else if room.breakouts().is_some() {
                // One host across the meeting's rooms.
                self.meeting_rooms(name)
                    .iter()
                    .filter_map(|k| self.rooms.get(k))
                    .flat_map(Room::members)
                    .filter(|p| p.role == Role::Host)
                    .count()
            } else {
                room.members().filter(|p| p.role == Role::Host).count()
            };
            // Operator tokens may make everyone a participant, or bring a second host.
            if !tokens_may_set_roles && hosts != 1 {
                return Err(format!("room {name:?} has {hosts} hosts"));
            }
        }
        for (id, conn) in &self.conns {
            if conn.suspended.is_some() && (conn.outbox.is_some() || self.rooms.room_of(id).is_none()) {
                return Err(format!("{id} is suspended but has a connection or no room"));
            }
            if self.rooms.room_of(id).is_none() && (conn.turn_user.is_some() || conn.ice_renew.is_some()) {
                return Err(format!("{id} holds relay credentials outside a room"));
            }
            if conn.recent.len() > RESUME_BUFFER {
                return Err(format!("{id} keeps {} messages for a resume", conn.recent.len()));
            }
            let bytes: usize = conn.recent.iter().map(Frame::len).sum();
            if bytes != conn.recent_bytes || bytes > self.config.outbox_bytes {
                return Err(format!("{id} keeps {bytes} bytes for a resume (counted {})", conn.recent_bytes));
            }
        }
        let in_rooms = self.conns.keys().filter(|id| self.rooms.room_of(id).is_some()).count();
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
