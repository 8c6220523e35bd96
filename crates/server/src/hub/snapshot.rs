//! What outlives a graceful restart: the hub serialises its sessions and rooms, and restores
//! them at the next start (`crate::persist` writes and reads the file).

use super::*;

impl Hub {
    /// Everything a restart needs to hand every in-room session back to its page: the rooms
    /// (settings, password, bans, roles, chat) and each session's secret, counters and replay
    /// buffer. Sessions outside rooms are not kept (their pages start over cheaply). From now
    /// on shutdown tells nobody that anyone left, so that what the pages received is exactly
    /// what was saved.
    pub fn save_for_restart(&mut self) -> Vec<u8> {
        self.saved = true;
        let saved = self.snapshot();
        // Saved with their recordings: the next start goes on with them in new parts.
        self.recordings_move();
        saved
    }

    /// What [`Hub::save_for_restart`] saves, without changing how shutdown goes (the
    /// `room_state` fuzz target restores it into a second hub at any point and compares).
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_of(None)
    }

    /// One room as [`Hub::snapshot`] would save it, with its members' sessions: what a node of
    /// several keeps in Redis for the room's next owner. `None`: no such room here.
    pub fn room_snapshot(&self, room: &str) -> Option<Vec<u8>> {
        self.rooms.contains_key(room).then(|| self.snapshot_of(Some(room)))
    }

    /// This node is stopping: every room it owns is saved a last time for the node that takes
    /// it next ([`RoomEvent::Saved`], ahead of `done`), and from now on nothing here changes —
    /// no room is saved, opened or closed again, and what pages send is left for the next owner
    /// (see [`Command::HandOver`]). Shutdown then tells nobody that anyone left.
    pub(super) fn hand_over(&mut self, done: oneshot::Sender<()>) {
        info!(rooms = self.rooms.len(), "handing the rooms over to the other nodes");
        self.closing = true;
        self.saved = true;
        // (A breakout room is saved with its meeting.)
        let rooms: Vec<Arc<str>> =
            self.rooms.keys().filter(|k| crate::room::breakout::index_of(k).is_none()).cloned().collect();
        for room in rooms {
            if let Some(saved) = self.room_snapshot(&room) {
                self.room_event(RoomEvent::Saved(room, saved));
            }
        }
        // Saved with their recordings: the next owners go on with them in new parts.
        self.recordings_move();
        self.unsaved.clear();
        self.unsaved_light.clear();
        self.room_events = None;
        self.handed_over = true;
        let _ = done.send(());
    }

    /// Tells the cluster the rooms that changed since last time ([`RoomEvent::Saved`]).
    pub fn save_rooms(&mut self) {
        self.save_ticks += 1;
        if self.save_ticks.is_multiple_of(LIGHT_SAVES_EVERY) {
            self.unsaved.extend(self.unsaved_light.drain());
        }
        for room in std::mem::take(&mut self.unsaved) {
            self.unsaved_light.remove(&room);
            if let Some(saved) = self.room_snapshot(&room) {
                self.room_event(RoomEvent::Saved(room, saved));
            }
        }
    }

    fn snapshot_of(&self, only: Option<&str>) -> Vec<u8> {
        let sessions = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                // A meeting's breakout rooms are saved with it.
                let room = self.rooms.room_of(id).filter(|r| only.is_none_or(|only| breakout_meeting(r) == only))?;
                Some(SavedSession {
                    id: id.clone(),
                    secret: c.secret.clone(),
                    room: room.to_string(),
                    sent: c.sent,
                    received: c.received,
                    // Kept as the messages they are: the file's format does not depend on how
                    // the hub holds them.
                    recent: c.recent.iter().filter_map(Frame::decode).collect(),
                    keys: c.keys.clone(),
                    ip: c.ip,
                    host: c.host.clone(),
                    turn_user: c.turn_user.clone(),
                })
            })
            .collect();
        let rooms = self
            .rooms
            .iter()
            .filter(|(name, _)| only.is_none_or(|room| breakout_meeting(name) == room))
            .map(|(name, r)| (name.to_string(), r))
            .collect();
        let saved =
            SavedHub { version: SNAPSHOT_VERSION, saved_at: unix_secs(), last_conn: self.last_conn, sessions, rooms };
        // Plain data with string keys only: serialising it cannot fail.
        serde_json::to_vec(&saved).expect("the hub's saved state serialises")
    }

    /// Takes back what [`Hub::save_for_restart`] kept (ignored if it is older than the grace
    /// period, or from another version): every session waits for its page to resume it, as
    /// after a lost connection, for the grace period from `now`. Members without a session, and
    /// rooms left empty, are dropped. Returns the highest connection number the previous run
    /// handed out, so that new connections are numbered above it (no peer id is reused).
    pub fn restore(&mut self, saved: &[u8], now: Instant) -> Result<u64, String> {
        self.restore_with(saved, now, false, &|_| true)
    }

    /// [`Hub::restore`] of the rooms `keep` says are this hub's (one worker of several: the
    /// rooms it owns now, from any worker's file).
    pub fn restore_only(&mut self, saved: &[u8], now: Instant, keep: &dyn Fn(&str) -> bool) -> Result<u64, String> {
        self.restore_with(saved, now, false, keep)
    }

    /// Takes over a room another node owned and saved ([`Hub::room_snapshot`]): its members
    /// wait for their pages to resume, for the grace period from `now`. However old the saved
    /// state (the room may have been quiet a long time; its lease, not the age, says the owner
    /// is gone). A room or session already here is left as it is.
    pub fn restore_room(&mut self, saved: &[u8], now: Instant) -> Result<(), String> {
        self.restore_with(saved, now, true, &|_| true).map(|_| ())
    }

    fn restore_with(
        &mut self,
        saved: &[u8],
        now: Instant,
        taken_over: bool,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<u64, String> {
        let saved: SavedHub<Room> = serde_json::from_slice(saved).map_err(|e| e.to_string())?;
        let grace = self.config.resume_grace;
        if saved.version != SNAPSHOT_VERSION {
            return Err(format!("saved by another version ({})", saved.version));
        }
        let age = unix_secs().saturating_sub(saved.saved_at);
        if grace.is_zero() || (!taken_over && age > grace.as_secs()) {
            return Err(format!("saved {age} s ago, longer than the grace period"));
        }
        let SavedHub { sessions, rooms, last_conn, .. } = saved;
        let sessions: HashMap<PeerId, SavedSession> = sessions.into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut highest = 0;
        let mut deadlines = Vec::new();
        for (name, mut room) in rooms {
            if self.rooms_everywhere() >= self.config.max_rooms as usize {
                break;
            }
            let name: Arc<str> = name.into();
            if self.rooms.contains_key(&name) || !keep(&name) {
                continue;
            }
            // A session here already (its page is back on this node some other way) stays as
            // it is, outside the room.
            let conns = &self.conns;
            let in_room = |id: &PeerId| sessions.get(id).is_some_and(|s| *s.room == *name) && !conns.contains_key(id);
            room.restored(self.config.room_capacity as usize, self.config.chat_history as usize, in_room);
            // A meeting's rooms stay while its breakout rooms are open (its people may all be in
            // some of them); a meeting nobody came back to goes below.
            let breakout = crate::room::breakout::index_of(&name).is_some();
            if room.is_empty() && !breakout && room.breakouts().is_none() {
                continue;
            }
            if room.topology() == Topology::Sfu && self.media.is_none() {
                room.set_topology(Topology::P2p);
            }
            if !breakout && room.breakouts().is_none() {
                room.ensure_host();
            }
            for peer in room.members() {
                let Some(s) = sessions.get(&peer.id) else { continue };
                highest = highest.max(s.id.0.strip_prefix('p').and_then(|n| n.parse().ok()).unwrap_or(0));
                let (recent, recent_bytes) = kept_for_resume(&s.recent, self.config.outbox_bytes);
                let conn = Conn {
                    outbox: None,
                    kick: None,
                    host: s.host.clone(),
                    conn: 0,
                    secret: s.secret.clone(),
                    sent: s.sent,
                    received: s.received,
                    recent,
                    recent_bytes,
                    suspended: Some(now + grace),
                    taken_over,
                    keys: s.keys.clone(),
                    ip: s.ip,
                    checking: false,
                    record_claim: None,
                    turn_user: s.turn_user.clone(),
                    // Renewed when it resumes (its page's may be as old as the restart is long).
                    ice_renew: None,
                };
                self.conns.insert(peer.id.clone(), conn);
                deadlines.push(peer.id.clone());
            }
            if taken_over && !breakout {
                info!(room = %name, members = room.len(), "took over a room; its members wait for their pages");
                self.room_event(RoomEvent::Opened(name.clone()));
                // Saved again under this node's lease (a state handed over expires if not).
                self.unsaved.insert(name.clone());
            }
            let records = room.recording().is_some();
            self.rooms.insert(name.clone(), room);
            if records {
                self.continue_recording(&name);
            }
        }
        for id in deadlines {
            self.wake_at(&id, now + grace);
        }
        // Meetings split in breakout rooms: one host across their rooms, their clocks set, and
        // none left with nobody in any room.
        let split: Vec<Arc<str>> =
            self.rooms.iter().filter(|(_, r)| r.breakouts().is_some()).map(|(k, _)| k.clone()).collect();
        for meeting in split {
            if self.meeting_len(&meeting) == 0 {
                let rooms = self.meeting_rooms(&meeting);
                for k in rooms.iter().rev() {
                    self.rooms.remove(k);
                }
                continue;
            }
            self.ensure_meeting_host(&meeting);
            self.arm_breakout_timer(&meeting);
        }
        // Breakout rooms whose meeting did not come back.
        let orphans: Vec<Arc<str>> = self
            .rooms
            .keys()
            .filter(|k| crate::room::breakout::index_of(k).is_some() && !self.in_breakout_meeting(k))
            .cloned()
            .collect();
        for k in orphans {
            let members: Vec<PeerId> =
                self.rooms.get(&k).map(|r| r.members().map(|p| p.id.clone()).collect()).unwrap_or_default();
            self.rooms.remove(&k);
            for id in members {
                self.conns.remove(&id);
            }
        }
        self.rooms_dirty = true;
        // Their relay credentials work again (only theirs: nobody else's from before).
        let users: Vec<String> = self.conns.values().filter_map(|c| c.turn_user.clone()).collect();
        if !users.is_empty() {
            self.tell_turn(TurnCommand::Grant { users });
        }
        self.last_conn = self.last_conn.max(last_conn).max(highest);
        info!(
            rooms = self.rooms.len(),
            sessions = self.conns.len(),
            "sessions kept over the restart wait for their pages"
        );
        Ok(self.last_conn)
    }

    /// Uses `key` for invite links, so that links handed out survive a restart.
    pub fn set_invite_key(&mut self, key: &[u8]) {
        self.tokens.set_invite_key(key);
    }
}
