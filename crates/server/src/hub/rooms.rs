//! Rooms and their rules: joining (passwords, tokens, invites, the waiting room), entering and
//! leaving, chat, and the room list. (The half of the hub that a room's owner runs; see
//! `docs/design/room-ownership.md`.)

use super::*;

impl Hub {
    pub(super) fn join(&mut self, id: &PeerId, req: JoinRequest) -> Result<(), ErrorCode> {
        self.join_checked(id, req, None)
    }

    /// `join`, with the room's password already found right at password generation `verified`.
    pub(super) fn join_checked(
        &mut self,
        id: &PeerId,
        req: JoinRequest,
        verified: Option<u32>,
    ) -> Result<(), ErrorCode> {
        if req.protocol != PROTOCOL_VERSION {
            return Err(ErrorCode::UnsupportedProtocol);
        }
        let room = validate::label(&req.room, self.config.max_room_chars).ok_or(ErrorCode::InvalidRoom)?;
        if self.config.test_panic_room.as_deref() == Some(room.as_str()) {
            panic!("a test asked for a bug on joining room {room}");
        }
        let grant = match &req.token {
            Some(token) if !token.is_empty() => Some(self.tokens.verify(token, &room, unix_secs())?),
            _ => None,
        };
        if self.config.require_token && grant.is_none() {
            return Err(ErrorCode::TokenRequired);
        }
        let grant = grant.unwrap_or_default();
        if let Some(c) = self.conns.get_mut(id) {
            c.record_claim = grant.record;
        }
        let name = grant.name.as_deref().unwrap_or(&req.name);
        let name = validate::label(name, self.config.max_name_chars).ok_or(ErrorCode::InvalidName)?;
        let mut keys: Vec<String> = grant.sub.iter().map(|s| format!("sub:{s}")).collect();
        keys.push(format!("id:{id}"));
        if let Some(ip) = self.conns.get(id).map(|c| c.ip) {
            // Everyone from the address of someone banned: without accounts, the best handle
            // there is (people behind one NAT share it; the host can lift nothing but the room
            // ends with its last member).
            keys.push(format!("ip:{ip}"));
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.keys = keys.clone();
        }
        let room_key: Arc<str> = match self.rooms.get_key_value(room.as_str()) {
            Some((key, r)) => {
                let key = key.clone();
                let role = grant.role.unwrap_or(Role::Participant);
                if r.is_banned(&keys) {
                    return Err(ErrorCode::Banned);
                }
                if let Some((rid, gen)) = &grant.invite_for {
                    // Made in another opening of the room, before a new password, or revoked.
                    if r.invite_key() != (rid.as_str(), *gen) {
                        return Err(ErrorCode::InviteRevoked);
                    }
                }
                if !role.moderates() {
                    if r.settings().locked {
                        return Err(ErrorCode::RoomLocked);
                    }
                    let needs_password = !grant.invite && !grant.operator;
                    if let Some((hash, gen)) = r.password().filter(|(_, gen)| needs_password && verified != Some(*gen))
                    {
                        let job = Job::Verify {
                            id: id.clone(),
                            room: key.clone(),
                            instance: r.instance().to_string(),
                            gen,
                            hash: hash.clone(),
                            req,
                        };
                        return self.check_password(id, &key, job);
                    }
                }
                if r.settings().waiting_room && !role.moderates() {
                    return self.knock(id, &key, name, req.audio, req.video, keys);
                }
                // While breakout rooms are open, the meeting's rooms together hold what one room
                // holds (so that everyone fits back in the main room).
                let meeting_full =
                    r.breakouts().is_some() && self.meeting_len(&key) >= self.config.room_capacity as usize;
                let Some(r) = self.rooms.get(&key) else { return Err(ErrorCode::RoomClosed) };
                if r.is_full() || meeting_full {
                    return Err(ErrorCode::RoomFull);
                }
                // Consent: someone who could enter learns that the meeting records, and enters
                // only once they were told (the waiting room says it before anyone is let in).
                if r.recording().is_some() && !req.recording_ok {
                    return Err(ErrorCode::RecordingConsent);
                }
                key
            }
            None => {
                if grant.invite {
                    // Its room is gone: a room of that name opened now is another meeting.
                    return Err(ErrorCode::InviteRevoked);
                }
                if self.rooms_everywhere() >= self.config.max_rooms as usize {
                    return Err(ErrorCode::TooManyRooms);
                }
                let key: Arc<str> = Arc::from(room.as_str());
                let has_sfu = self.media.is_some();
                let initial =
                    if has_sfu && self.config.topology == TopologyMode::Sfu { Topology::Sfu } else { Topology::P2p };
                let capacity = self.config.room_capacity as usize;
                let room = Room::new(capacity, self.config.chat_history as usize, initial, self.new_secret());
                self.rooms.insert(key.clone(), room);
                self.room_event(RoomEvent::Opened(key.clone()));
                key
            }
        };
        // Whoever opens a room hosts it, unless their token says otherwise.
        // (A meeting whose people are all in its breakout rooms is not being opened.)
        let opening = self.meeting_len(&room_key) == 0;
        let role = grant.role.unwrap_or(if opening { Role::Host } else { Role::Participant });
        self.enter(id, &room_key, name, req.audio, req.video, role);
        if self.in_breakout_meeting(&room_key) {
            self.breakouts_changed(&room_key);
        }
        Ok(())
    }

    /// Puts `id` in the waiting room of `room` and tells the hosts.
    pub(super) fn knock(
        &mut self,
        id: &PeerId,
        room: &Arc<str>,
        name: String,
        audio: bool,
        video: bool,
        keys: Vec<String>,
    ) -> Result<(), ErrorCode> {
        let waiter = Waiter { knocker: Knocker { id: id.clone(), name }, audio, video, keys };
        self.rooms.queue(room, waiter).map_err(|e| match e {
            RoomError::Full => ErrorCode::RoomFull,
            RoomError::Gone => ErrorCode::RoomClosed,
            RoomError::AlreadyThere => ErrorCode::AlreadyInRoom,
        })?;
        self.watchers.remove(id);
        info!(peer = %id, "knocked at a waiting room");
        let recording = self.rooms.get(room).is_some_and(|r| r.recording().is_some());
        self.send(id, ServerMsg::Waiting { room: room.to_string(), recording });
        self.tell_hosts_waiting(room);
        Ok(())
    }

    pub(super) fn tell_hosts_waiting(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else { return };
        let msg = Arc::new(ServerMsg::WaitingList { waiting: r.waiting() });
        // Hosts visiting the meeting's breakout rooms hear the knocks too.
        for k in self.meeting_rooms(room) {
            self.tell_moderators(&k, msg.clone());
        }
    }

    /// Sends `msg` to the room's hosts and co-hosts.
    pub(super) fn tell_moderators(&mut self, room: &str, msg: Arc<ServerMsg>) {
        let Some(r) = self.rooms.get(room) else { return };
        let hosts: Vec<PeerId> = r.members().filter(|p| p.role.moderates()).map(|p| p.id.clone()).collect();
        for h in hosts {
            self.send_arc(&h, msg.clone());
        }
    }

    /// Takes `id` out of the waiting room it is in, if any, and tells the hosts.
    pub(super) fn leave_waiting_room(&mut self, id: &PeerId) -> Option<Waiter> {
        let (room, waiter) = self.rooms.unqueue(id)?;
        self.tell_hosts_waiting(&room);
        waiter
    }

    /// Adds `id` to `room` (which exists and has space) and tells everyone.
    pub(super) fn enter(&mut self, id: &PeerId, room: &Arc<str>, name: String, audio: bool, video: bool, role: Role) {
        self.start_relay(id);
        let ice_servers = self.ice_servers(id);
        let has_sfu = self.media.is_some();
        let me = Peer { id: id.clone(), name, audio, video, screen: false, role, hand: false };
        let peers = match self.rooms.seat(room, me.clone()) {
            Ok(peers) => peers,
            Err(e) => {
                self.end_relay(id);
                let code = match e {
                    RoomError::Full => ErrorCode::RoomFull,
                    RoomError::Gone => ErrorCode::RoomClosed,
                    RoomError::AlreadyThere => ErrorCode::AlreadyInRoom,
                };
                self.send(id, ServerMsg::error(code, Some("join")));
                return;
            }
        };
        let Some(r) = self.rooms.get_mut(room) else { return };
        let switched = has_sfu
            && self.config.topology == TopologyMode::Auto
            && r.topology() == Topology::P2p
            && r.len() >= AUTO_SFU_FROM;
        if switched {
            r.set_topology(Topology::Sfu);
        }
        let breakout = crate::room::breakout::index_of(room).map(|index| huddle_protocol::BreakoutRef {
            index,
            name: self
                .rooms
                .get(breakout_meeting(room))
                .and_then(Room::breakouts)
                .and_then(|b| b.name(index))
                .unwrap_or_default()
                .to_string(),
        });
        // (The waiting room is the meeting's, whichever of its rooms this is.)
        let waiting = match self.rooms.get(breakout_meeting(room)) {
            Some(m) if role.moderates() => m.waiting(),
            _ => Vec::new(),
        };
        let Some(r) = self.rooms.get_mut(room) else { return };
        let joined = ServerMsg::Joined {
            room: breakout_meeting(room).to_string(),
            breakout,
            you: me.clone(),
            peers,
            chat: r.chat_history(),
            topology: r.topology(),
            ice_servers,
            ice_transport_policy: self.config.ice_transport_policy,
            settings: r.settings(),
            waiting,
            recording: r.recording().cloned(),
        };
        let participants = r.len();
        self.watchers.remove(id);
        self.rooms_dirty = true;
        info!(peer = %id, participants, ?role, "joined a room");
        self.send(id, joined);
        if role.moderates() {
            self.send_recordings(id, room);
        }
        self.record_joined(room, &me);
        if switched {
            info!(participants = AUTO_SFU_FROM, "room switched to the SFU");
            self.broadcast(room, Some(id), Arc::new(ServerMsg::Topology { topology: Topology::Sfu, reason: None }));
        }
        self.broadcast(room, Some(id), Arc::new(ServerMsg::PeerJoined { peer: me }));
    }

    /// A host lets `peer` in from the waiting room, as a participant: the waiting room never
    /// makes anyone a host.
    pub(super) fn admit(&mut self, room: &Arc<str>, peer: &PeerId) {
        let Some(w) = self.leave_waiting_room(peer) else { return };
        // (A meeting in breakout rooms: its rooms together hold what one room holds.)
        let meeting_full =
            self.in_breakout_meeting(room) && self.meeting_len(room) >= self.config.room_capacity as usize;
        let refused = match self.rooms.get(room) {
            Some(r) if r.is_full() || meeting_full => Some(ErrorCode::RoomFull),
            // Nobody is left who could have let them in (not reached: an empty room closes).
            None => Some(ErrorCode::RoomClosed),
            // (Everyone may be in the meeting's breakout rooms: the meeting is not over.)
            Some(_) if self.meeting_len(room) == 0 => Some(ErrorCode::RoomClosed),
            Some(_) => None,
        };
        if let Some(code) = refused {
            self.send(peer, ServerMsg::error(code, Some("join")));
            return;
        }
        info!(target = %peer, "admitted from the waiting room");
        self.enter(peer, room, w.knocker.name, w.audio, w.video, Role::Participant);
        if self.in_breakout_meeting(room) {
            self.breakouts_changed(room);
        }
    }

    /// Everyone waiting at `room` is turned away with `code`.
    pub(super) fn turn_away_waiters(&mut self, room: &Arc<str>, code: ErrorCode) {
        for peer in self.rooms.waiters(room) {
            self.leave_waiting_room(&peer);
            self.send(&peer, ServerMsg::error(code, Some("join")));
        }
    }

    /// The room's last member is gone: the room closes, and whoever still waits in its waiting
    /// room is told (`room_closed`) — nobody is left to let them in.
    pub(super) fn close_room(&mut self, room: &Arc<str>) {
        if !self.rooms.contains_key(room) {
            return;
        }
        for w in self.rooms.take_waiters(room) {
            self.send(&w.knocker.id, ServerMsg::error(ErrorCode::RoomClosed, Some("join")));
        }
        // Nobody is left to tell; the recording's files close.
        self.stop_recording(room, None, huddle_protocol::RecordingStopReason::Ended);
        self.rooms.remove(room);
        self.files.room_closed(room);
        // (A breakout room is not a room of its own to the cluster: its meeting is.)
        if crate::room::breakout::index_of(room).is_none() {
            self.room_event(RoomEvent::Closed(room.clone()));
            self.breakout_due.remove(room);
        }
        self.rooms_dirty = true;
        debug!("room closed");
    }

    pub(super) fn admit_all(&mut self, room: &Arc<str>) {
        for peer in self.rooms.waiters(room) {
            self.admit(room, &peer);
        }
    }

    /// Everyone left every room of a meeting in breakout rooms: its rooms close (whoever waits at
    /// its door is told `room_closed`, as for any room that empties).
    fn close_meeting(&mut self, meeting: &Arc<str>) {
        let rooms = self.meeting_rooms(meeting);
        if let Some(r) = self.rooms.get_mut(meeting) {
            r.set_breakouts(None);
        }
        self.breakout_due.remove(meeting);
        for k in rooms.iter().rev() {
            self.close_room(k);
        }
    }

    /// Everyone out, the waiting room too; the room closes.
    pub(super) fn end_meeting(&mut self, room: &Arc<str>, reason: Option<EndReason>) {
        // Every room of the meeting ends with it: its breakout rooms first (their state goes,
        // so each room closes as it empties).
        if let Some(meeting) = self.meeting_key(room) {
            let rooms = self.meeting_rooms(&meeting);
            if rooms.len() > 1 || self.in_breakout_meeting(&meeting) {
                if let Some(r) = self.rooms.get_mut(&meeting) {
                    r.set_breakouts(None);
                }
                self.breakout_due.remove(&meeting);
                for k in rooms.iter().rev() {
                    self.end_one_room(k, reason);
                }
                // Breakout rooms nobody was in.
                for k in rooms {
                    if self.rooms.get(&k).is_some_and(Room::is_empty) {
                        self.close_room(&k);
                    }
                }
                return;
            }
        }
        self.end_one_room(room, reason);
    }

    fn end_one_room(&mut self, room: &Arc<str>, reason: Option<EndReason>) {
        let Some(r) = self.rooms.get(room) else { return };
        let members: Vec<PeerId> = r.members().map(|p| p.id.clone()).collect();
        for w in self.rooms.take_waiters(room) {
            self.send(&w.knocker.id, ServerMsg::Ended { room: breakout_meeting(room).to_string(), reason });
        }
        let ended = Arc::new(ServerMsg::Ended { room: breakout_meeting(room).to_string(), reason });
        for m in &members {
            self.send_arc(m, ended.clone());
        }
        for m in &members {
            // Quietly: everyone is told `ended`, not who left.
            self.leave_room_quietly(m);
            self.end_if_suspended(m);
        }
    }

    /// After a bug panicked in this hub's task ([`run`]): every room here closes, its people
    /// told `ended {reason: "server_error"}` and left in the lobby with their connections, from
    /// where they can join again at once (the SFU drops their sessions as for any leave). If
    /// closing a room panics too, nothing here is trusted any more: every session of this hub
    /// ends ([`Hub::start_over`]).
    pub(super) fn recover(&mut self) {
        self.stats.panics += 1;
        // Jobs in flight went with the loop's channel.
        self.jobs_in_flight = 0;
        for c in self.conns.values_mut() {
            c.checking = false;
        }
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let reason = Some(EndReason::ServerError);
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.end_meeting(&room, reason)));
            if ended.is_err() {
                return self.start_over();
            }
        }
        self.evict_overflowed();
        self.rooms_dirty = true;
    }

    /// Every session and room of this hub ends at once: their outboxes close, so their pages
    /// reconnect and start over (their resume finds nothing).
    fn start_over(&mut self) {
        tracing::error!(sessions = self.conns.len(), "closing the rooms panicked too: every session of this hub ends");
        if let Some(media) = &self.media {
            for id in self.conns.keys() {
                let _ = media.try_send(MediaCommand::Leave { peer: id.clone() });
            }
        }
        self.conns.clear();
        self.rooms = Rooms::default();
        self.watchers.clear();
        self.deadlines.clear();
        self.overflowed.clear();
        self.rooms_dirty = true;
    }

    /// A session kept for a resume that is out of its room now can never resume: it ends.
    pub(super) fn end_if_suspended(&mut self, id: &PeerId) {
        if self.conns.get(id).is_some_and(|c| c.suspended.is_some()) {
            self.disconnect(id, LeaveReason::Disconnected);
        }
    }

    pub(super) fn chat(&mut self, id: &PeerId, room: &str, text: &str) -> Result<(), ErrorCode> {
        let text = validate::chat_text(text, self.config.max_chat_chars).ok_or(ErrorCode::InvalidText)?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let message = self.rooms.get_mut(room).and_then(|r| r.post_chat(id, &text, ts)).ok_or(ErrorCode::NotInRoom)?;
        self.broadcast(room, None, Arc::new(ServerMsg::Chat { message }));
        Ok(())
    }

    /// Takes `id` out of its room, tells the others, and drops the room when it empties.
    pub(super) fn leave_room(&mut self, id: &PeerId, reason: LeaveReason) {
        let Some(room) = self.take_out(id) else { return };
        if self.in_breakout_meeting(&room) {
            // A meeting split in rooms ends only when all of them are empty; it keeps one host.
            self.broadcast(&room, None, Arc::new(ServerMsg::PeerLeft { id: id.clone(), reason }));
            let meeting = self.meeting_key(&room).unwrap_or_else(|| room.clone());
            if self.meeting_len(&meeting) == 0 {
                self.close_meeting(&meeting);
            } else {
                self.ensure_meeting_host(&meeting);
                if self.rooms.get(&meeting).is_some_and(Room::has_waiters) {
                    self.tell_hosts_waiting(&meeting);
                }
                self.breakouts_changed(&meeting);
            }
            info!(peer = %id, ?reason, "left a room");
            return;
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if r.is_empty() {
            self.close_room(&room);
        } else {
            let new_host = r.ensure_host();
            self.broadcast(&room, None, Arc::new(ServerMsg::PeerLeft { id: id.clone(), reason }));
            if let Some(peer) = new_host {
                info!(peer = %peer.id, "became the host");
                self.broadcast(&room, None, Arc::new(ServerMsg::PeerUpdated { peer }));
                if self.rooms.get(&room).is_some_and(Room::has_waiters) {
                    self.tell_hosts_waiting(&room);
                }
            }
        }
        info!(peer = %id, ?reason, "left a room");
    }

    /// Takes `id` out of its room without telling anyone (the meeting ended); closes the room
    /// after the last one.
    pub(super) fn leave_room_quietly(&mut self, id: &PeerId) {
        let Some(room) = self.take_out(id) else { return };
        if self.in_breakout_meeting(&room) {
            let meeting = self.meeting_key(&room).unwrap_or_else(|| room.clone());
            if self.meeting_len(&meeting) == 0 {
                self.close_meeting(&meeting);
            }
            return;
        }
        if self.rooms.get(&room).is_some_and(Room::is_empty) {
            self.close_room(&room);
        }
    }

    /// This node no longer owns `room` ([`Command::StandDown`]): it forgets the room and its
    /// members' sessions without telling anyone that anyone left (the room goes on with its new
    /// owner), and closes their connections as a server that stops does, so that their pages
    /// resume with the new owner and start their media afresh.
    pub(super) fn stand_down(&mut self, room: &str) {
        // A meeting's breakout rooms go with it (its new owner has them in its saved state).
        let rooms = self.meeting_rooms(room);
        for k in rooms.iter().skip(1) {
            self.stand_down_one(k);
        }
        self.stand_down_one(room);
        self.breakout_due.remove(room);
    }

    fn stand_down_one(&mut self, room: &str) {
        let Some(key) = self.rooms.get_key_value(room).map(|(k, _)| k.clone()) else { return };
        warn!(%room, "standing down: another node owns this room now");
        let mut people: Vec<PeerId> =
            self.rooms.get(&key).map(|r| r.members().map(|p| p.id.clone()).collect()).unwrap_or_default();
        people.extend(self.rooms.get(&key).map(|r| r.waiting().into_iter().map(|k| k.id)).into_iter().flatten());
        for id in &people {
            self.take_out(id);
            let Some(mut conn) = self.conns.remove(id) else { continue };
            if let Some(kick) = conn.kick.take() {
                let _ = kick.send(ByeReason::ServerShutdown);
            }
            self.watchers.remove(id);
        }
        // The new owner goes on with the recording, in a new part.
        self.recording_moves(&key);
        self.rooms.remove(&key);
        self.files.room_closed(&key);
        self.unsaved.remove(&key);
        self.unsaved_light.remove(&key);
        self.rooms_dirty = true;
    }

    /// The part of leaving every way shares: out of the room's list, the SFU told.
    pub(super) fn take_out(&mut self, id: &PeerId) -> Option<Arc<str>> {
        let room = self.rooms.unseat(id)?;
        self.record_note(&room, id, vec![huddle_record::manifest::EventKind::Left], None);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.forget_recent();
        }
        // Before anyone is told: the relay is closed by the time they act on it.
        self.end_relay(id);
        // Offers it never started uploading go with it.
        self.files.owner_left(id);
        if self.rooms.get(&room).is_some_and(|r| r.topology() == Topology::Sfu) {
            if let Some(media) = &self.media {
                if media.try_send(MediaCommand::Leave { peer: id.clone() }).is_err() {
                    // Its SFU session then ends when its connection times out.
                    self.stats.media_commands_dropped += 1;
                    warn!(peer = %id, "SFU queue full; a leave was dropped");
                }
            }
        }
        self.rooms_dirty = true;
        Some(room)
    }

    /// Sends `msg` to every member of `room` but `except`, serialised once for all of them.
    pub(super) fn broadcast(&mut self, room: &str, except: Option<&PeerId>, msg: Arc<ServerMsg>) {
        let Some(r) = self.rooms.get(room) else { return };
        let frame = Frame::new(&msg);
        let max = self.config.outbox_bytes;
        for peer in r.members() {
            if Some(&peer.id) == except {
                continue;
            }
            if self.conns.get_mut(&peer.id).is_some_and(|conn| !conn.offer(frame.clone(), true, max)) {
                self.overflowed.push(peer.id.clone());
            }
        }
    }

    /// Whether watchers are owed a fresh room list.
    pub fn rooms_dirty(&self) -> bool {
        self.rooms_dirty
    }

    /// Sends the list of public rooms to every watcher (called at most every
    /// [`ROOM_LIST_INTERVAL`]). It is made afresh each time from the rooms as they are: a room
    /// that stopped being public (settings mark the list dirty) is not in the next one.
    pub fn publish_rooms(&mut self) {
        self.rooms_dirty = false;
        if let Some(siblings) = &self.siblings {
            // The other workers list this one's rooms too (as another node's, which they never
            // send a join to: joins go to their room's worker before they reach a hub).
            let ours = self.local_rooms();
            if ours != self.listed {
                // Kept until said again: workers live and die with the process.
                let until = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
                let node = format!("worker-{}", siblings.index);
                let mut told = true;
                for (i, hub) in siblings.hubs.iter().enumerate() {
                    if i == siblings.index {
                        continue;
                    }
                    let Some(hub) = hub.upgrade() else { continue };
                    let cmd = Command::RemoteRooms { node: node.clone(), rooms: ours.clone(), until };
                    told &= hub.try_send(cmd).is_ok();
                }
                if told {
                    self.listed = ours;
                } else {
                    // A worker too busy to take it now hears it at the next turn.
                    self.rooms_dirty = true;
                }
            }
        }
        if self.room_events.is_some() {
            // The other nodes list this node's rooms too (told when they change, not when the
            // other nodes' lists do, which also make the list dirty).
            let ours = self.local_rooms();
            if ours != self.listed {
                self.listed = ours.clone();
                self.room_event(RoomEvent::Listed(ours));
            }
        }
        if self.watchers.is_empty() {
            return;
        }
        let msg = Frame::new(&self.room_list());
        let (conns, rooms, max) = (&mut self.conns, &self.rooms, self.config.outbox_bytes);
        let slow = self.watchers.iter().filter(|id| {
            conns.get_mut(*id).is_some_and(|conn| !conn.offer(msg.clone(), rooms.place(id).is_some(), max))
        });
        self.overflowed.extend(slow.cloned());
        self.evict_overflowed();
    }

    /// The public rooms: this node's, and (one node of several) the other nodes'.
    pub(super) fn room_list(&self) -> ServerMsg {
        let mut rooms = self.local_rooms();
        let now = Instant::now();
        for (list, _) in self.remote_rooms.values().filter(|(_, until)| *until > now) {
            rooms.extend(list.iter().cloned());
        }
        rooms.sort_by(|a, b| b.participants.cmp(&a.participants).then_with(|| a.name.cmp(&b.name)));
        rooms.truncate(ROOM_LIST_MAX);
        ServerMsg::Rooms { rooms }
    }

    /// This node's public rooms, the fullest first, at most [`ROOM_LIST_MAX`].
    fn local_rooms(&self) -> Vec<RoomSummary> {
        let mut rooms: Vec<RoomSummary> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.is_listed())
            .map(|(name, r)| RoomSummary {
                name: name.to_string(),
                participants: if r.breakouts().is_some() { self.meeting_len(name) } else { r.len() } as u32,
                capacity: self.config.room_capacity,
                recording: r.recording().is_some(),
            })
            .collect();
        rooms.sort_by(|a, b| b.participants.cmp(&a.participants).then_with(|| a.name.cmp(&b.name)));
        rooms.truncate(ROOM_LIST_MAX);
        rooms
    }
}
