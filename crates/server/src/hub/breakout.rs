//! Breakout rooms (issue 19; `docs/protocol.md`, "Breakout rooms"): a meeting split into small
//! rooms and brought back together.
//!
//! One owner: a meeting's breakout rooms live in the hub of its main room (their keys hash to its
//! worker, see [`crate::room::breakout`]), its main room keeps their state
//! ([`Breakouts`]), and the hub moves people between the meeting's rooms itself
//! ([`Hub::move_to`]) — nobody passes the meeting's door again, so nobody enters a breakout room
//! who could not enter the meeting. Roles travel with people; a breakout room never makes a host
//! of its own, and the meeting keeps exactly one host across its rooms
//! ([`Hub::ensure_meeting_host`]).

use super::*;
use crate::room::breakout::{self as bk, Breakouts};
use huddle_protocol::{BreakoutPlan, BreakoutRef, BreakoutSummary, BreakoutsOpen, Person};

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What `breakout_open` asks for.
pub(super) struct OpenRequest {
    pub rooms: Vec<BreakoutPlan>,
    pub auto_move: bool,
    pub allow_return: bool,
    pub choose: bool,
    pub minutes: u32,
    pub close_seconds: u32,
}

impl Hub {
    /// The key of the main room of the meeting `room` belongs to.
    pub(super) fn meeting_key(&self, room: &str) -> Option<Arc<str>> {
        self.rooms.get_key_value(bk::meeting_of(room)).map(|(k, _)| k.clone())
    }

    /// Whether `room` belongs to a meeting whose breakout rooms are open.
    pub(super) fn in_breakout_meeting(&self, room: &str) -> bool {
        self.rooms.get(bk::meeting_of(room)).is_some_and(|r| r.breakouts().is_some())
    }

    /// Every room of the meeting: its main room, then its breakout rooms that exist, in order.
    pub(super) fn meeting_rooms(&self, meeting: &str) -> Vec<Arc<str>> {
        let Some((key, main)) = self.rooms.get_key_value(meeting) else { return Vec::new() };
        let mut rooms = vec![key.clone()];
        if let Some(b) = main.breakouts() {
            for i in 1..=b.names.len() as u32 {
                if let Some((k, _)) = self.rooms.get_key_value(bk::key(meeting, i).as_str()) {
                    rooms.push(k.clone());
                }
            }
        }
        rooms
    }

    /// How many people are in the meeting, all its rooms together.
    pub(super) fn meeting_len(&self, meeting: &str) -> usize {
        self.meeting_rooms(meeting).iter().filter_map(|k| self.rooms.get(k)).map(Room::len).sum()
    }

    /// Everyone in the meeting with their role.
    fn meeting_people(&self, meeting: &str) -> Vec<(PeerId, Role)> {
        self.meeting_rooms(meeting)
            .iter()
            .filter_map(|k| self.rooms.get(k))
            .flat_map(|r| r.members().map(|p| (p.id.clone(), p.role)))
            .collect()
    }

    /// `breakout_*` from someone in `room`.
    pub(super) fn breakout_command(&mut self, id: &PeerId, room: &Arc<str>, msg: ClientMsg) -> Result<(), ErrorCode> {
        let role = self.rooms.get(room).and_then(|r| r.role(id)).ok_or(ErrorCode::NotInRoom)?;
        let meeting = self.meeting_key(room).ok_or(ErrorCode::NotInRoom)?;
        let hosts_only = !matches!(msg, ClientMsg::BreakoutMove { .. } | ClientMsg::BreakoutHelp);
        if hosts_only && !role.moderates() {
            return Err(ErrorCode::NotAllowed);
        }
        match msg {
            ClientMsg::BreakoutOpen { rooms, auto_move, allow_return, choose, minutes, close_seconds } => {
                let req = OpenRequest { rooms, auto_move, allow_return, choose, minutes, close_seconds };
                self.open_breakouts(id, &meeting, req)
            }
            ClientMsg::BreakoutAssign { peer, room: to } => self.assign(&meeting, &peer, to),
            ClientMsg::BreakoutMove { room: to } => self.move_self(id, role, &meeting, to),
            ClientMsg::BreakoutBroadcast { text } => self.breakout_broadcast(id, room, &meeting, &text),
            ClientMsg::BreakoutHelp => self.ask_for_help(id, room, &meeting),
            ClientMsg::BreakoutClose { now } => self.close_breakouts(&meeting, now),
            _ => Err(ErrorCode::BadMessage),
        }
    }

    fn open_breakouts(&mut self, id: &PeerId, meeting: &Arc<str>, req: OpenRequest) -> Result<(), ErrorCode> {
        let main = self.rooms.get(meeting).ok_or(ErrorCode::NotInRoom)?;
        if main.breakouts().is_some() {
            return Err(ErrorCode::InvalidBreakout);
        }
        let n = req.rooms.len();
        if n == 0 || n > bk::MAX_ROOMS || req.minutes > bk::MAX_MINUTES || req.close_seconds > bk::MAX_CLOSE_SECONDS {
            return Err(ErrorCode::InvalidBreakout);
        }
        let mut names: Vec<String> = Vec::with_capacity(n);
        for plan in &req.rooms {
            let name = validate::label(&plan.name, self.config.max_room_chars).ok_or(ErrorCode::InvalidBreakout)?;
            if names.contains(&name) {
                return Err(ErrorCode::InvalidBreakout);
            }
            names.push(name);
        }
        if self.rooms_everywhere() + n > self.config.max_rooms as usize {
            return Err(ErrorCode::TooManyRooms);
        }
        // Only people in the meeting (its main room, as none are open), each once.
        let mut assigned = HashMap::new();
        for (i, plan) in req.rooms.iter().enumerate() {
            for m in &plan.members {
                if main.member(m).is_some() && !assigned.contains_key(m) {
                    assigned.insert(m.clone(), i as u32 + 1);
                }
            }
        }
        let now = unix_ms();
        let breakouts = Breakouts {
            names,
            assigned: assigned.clone(),
            auto_move: req.auto_move,
            allow_return: req.allow_return,
            choose: req.choose,
            ends_at: (req.minutes > 0).then(|| now + u64::from(req.minutes) * 60_000),
            closing_at: None,
            close_seconds: req.close_seconds,
            help_at: HashMap::new(),
            visited: HashMap::new(),
        };
        if let Some(r) = self.rooms.get_mut(meeting) {
            r.set_breakouts(Some(breakouts));
        }
        for i in 1..=n as u32 {
            self.ensure_breakout_room(meeting, i);
        }
        info!(peer = %id, rooms = n, auto_move = req.auto_move, "breakout rooms opened");
        if req.auto_move {
            // In a stable order (the people as listed, room by room).
            let mut moves: Vec<(PeerId, u32)> = assigned.into_iter().collect();
            moves.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
            for (peer, to) in moves {
                let _ = self.move_to(&peer, meeting, to);
            }
        }
        self.breakouts_changed(meeting);
        Ok(())
    }

    /// Breakout room `index` of `meeting`, made if it is not there (it emptied, or was not
    /// restored); `None` when the meeting has no such room.
    fn ensure_breakout_room(&mut self, meeting: &Arc<str>, index: u32) -> Option<Arc<str>> {
        let key = bk::key(meeting, index);
        if let Some((k, _)) = self.rooms.get_key_value(key.as_str()) {
            return Some(k.clone());
        }
        self.rooms.get(meeting).and_then(Room::breakouts).filter(|b| index >= 1 && b.has(index))?;
        let initial = if self.media.is_some() && self.config.topology == TopologyMode::Sfu {
            Topology::Sfu
        } else {
            Topology::P2p
        };
        let mut room = Room::new(
            self.config.room_capacity as usize,
            self.config.chat_history as usize,
            initial,
            self.new_secret(),
        );
        room.set_flags(|s| s.listed = false);
        let key: Arc<str> = key.into();
        self.rooms.insert(key.clone(), room);
        self.rooms_dirty = true;
        Some(key)
    }

    /// Moves `id` from the room of `meeting` it is in to room `to` (0: the main room): out of
    /// the one (`peer_left`, reason `breakout`), into the other (`joined` with `breakout`), with
    /// its name, role and media as they were.
    pub(super) fn move_to(&mut self, id: &PeerId, meeting: &Arc<str>, to: u32) -> Result<(), ErrorCode> {
        let from = self.rooms.room_of(id).cloned().ok_or(ErrorCode::NotInRoom)?;
        if bk::meeting_of(&from) != &**meeting {
            return Err(ErrorCode::NotInRoom);
        }
        let target = if to == 0 {
            meeting.clone()
        } else {
            self.ensure_breakout_room(meeting, to).ok_or(ErrorCode::InvalidBreakout)?
        };
        if target == from {
            return Ok(());
        }
        let me = self.rooms.get(&from).and_then(|r| r.member(id)).cloned().ok_or(ErrorCode::NotInRoom)?;
        if self.rooms.get(&target).is_some_and(Room::is_full) {
            return Err(ErrorCode::RoomFull);
        }
        self.take_out(id);
        self.broadcast(&from, None, Arc::new(ServerMsg::PeerLeft { id: id.clone(), reason: LeaveReason::Breakout }));
        debug!(peer = %id, to, "moved within the meeting");
        if to != 0 {
            if let Some(b) = self.rooms.get_mut(meeting).and_then(Room::breakouts_mut) {
                // (Bounded: people leave the list only when the rooms close; a room holds the
                // meeting's people at most, and each is listed once.)
                b.visit(to, id);
            }
        }
        self.enter(id, &target, me.name, me.audio, me.video, me.role);
        Ok(())
    }

    fn assign(&mut self, meeting: &Arc<str>, peer: &PeerId, to: u32) -> Result<(), ErrorCode> {
        let b = self.rooms.get(meeting).and_then(Room::breakouts).ok_or(ErrorCode::InvalidBreakout)?;
        if !b.has(to) || b.closing_at.is_some() {
            return Err(ErrorCode::InvalidBreakout);
        }
        let auto_move = b.auto_move;
        let in_meeting = self.rooms.room_of(peer).is_some_and(|r| bk::meeting_of(r) == &**meeting);
        if !in_meeting {
            return Err(ErrorCode::UnknownPeer);
        }
        if let Some(b) = self.rooms.get_mut(meeting).and_then(Room::breakouts_mut) {
            if to == 0 {
                b.assigned.remove(peer);
            } else {
                b.assigned.insert(peer.clone(), to);
            }
        }
        if auto_move {
            self.move_to(peer, meeting, to)?;
        }
        self.breakouts_changed(meeting);
        Ok(())
    }

    fn move_self(&mut self, id: &PeerId, role: Role, meeting: &Arc<str>, to: u32) -> Result<(), ErrorCode> {
        let b = self.rooms.get(meeting).and_then(Room::breakouts).ok_or(ErrorCode::InvalidBreakout)?;
        if !b.has(to) || (to != 0 && b.closing_at.is_some()) {
            return Err(ErrorCode::InvalidBreakout);
        }
        if !role.moderates() {
            let allowed = if to == 0 { b.allow_return } else { to == b.assigned_to(id) || b.choose };
            if !allowed {
                return Err(ErrorCode::NotAllowed);
            }
            // A choice is where they belong from now on (hosts visit: they stay assigned).
            if b.choose && to != 0 {
                if let Some(b) = self.rooms.get_mut(meeting).and_then(Room::breakouts_mut) {
                    b.assigned.insert(id.clone(), to);
                }
            }
        }
        self.move_to(id, meeting, to)?;
        self.breakouts_changed(meeting);
        Ok(())
    }

    fn breakout_broadcast(&mut self, id: &PeerId, room: &str, meeting: &Arc<str>, text: &str) -> Result<(), ErrorCode> {
        self.rooms.get(meeting).and_then(Room::breakouts).ok_or(ErrorCode::InvalidBreakout)?;
        let text = validate::chat_text(text, self.config.max_chat_chars).ok_or(ErrorCode::InvalidText)?;
        let name = self.rooms.get(room).and_then(|r| r.member(id)).map(|p| p.name.clone()).unwrap_or_default();
        let msg = Arc::new(ServerMsg::BreakoutMessage { from: Person { id: id.clone(), name }, text });
        for (peer, _) in self.meeting_people(meeting) {
            self.send_arc(&peer, msg.clone());
        }
        Ok(())
    }

    fn ask_for_help(&mut self, id: &PeerId, room: &str, meeting: &Arc<str>) -> Result<(), ErrorCode> {
        let index = bk::index_of(room).ok_or(ErrorCode::InvalidBreakout)?;
        let now = unix_ms();
        let b = self.rooms.get_mut(meeting).and_then(Room::breakouts_mut).ok_or(ErrorCode::InvalidBreakout)?;
        if b.help_at.get(id).is_some_and(|at| now.saturating_sub(*at) < bk::HELP_EVERY_MS) {
            return Err(ErrorCode::RateLimited);
        }
        b.help_at.insert(id.clone(), now);
        let room_ref = BreakoutRef { index, name: b.name(index).unwrap_or_default().to_string() };
        let name = self.rooms.get(room).and_then(|r| r.member(id)).map(|p| p.name.clone()).unwrap_or_default();
        info!(peer = %id, index, "asked the hosts for help");
        let msg = Arc::new(ServerMsg::BreakoutHelp { from: Person { id: id.clone(), name }, room: room_ref });
        for (peer, role) in self.meeting_people(meeting) {
            if role.moderates() {
                self.send_arc(&peer, msg.clone());
            }
        }
        Ok(())
    }

    fn close_breakouts(&mut self, meeting: &Arc<str>, now: bool) -> Result<(), ErrorCode> {
        let b = self.rooms.get_mut(meeting).and_then(Room::breakouts_mut).ok_or(ErrorCode::InvalidBreakout)?;
        if now || b.close_seconds == 0 {
            self.finish_breakouts(meeting);
            return Ok(());
        }
        if b.closing_at.is_none() {
            b.closing_at = Some(unix_ms() + u64::from(b.close_seconds) * 1000);
            info!(seconds = b.close_seconds, "breakout rooms closing");
            self.breakouts_changed(meeting);
        }
        Ok(())
    }

    /// The rooms close: everyone back in the main room, each breakout room's chat to the people
    /// who were in it or assigned to it, and the rooms gone.
    pub(super) fn finish_breakouts(&mut self, meeting: &Arc<str>) {
        let Some(b) = self.rooms.get(meeting).and_then(Room::breakouts).cloned() else { return };
        for index in 1..=b.names.len() as u32 {
            let key = bk::key(meeting, index);
            let Some(r) = self.rooms.get(key.as_str()) else { continue };
            let chat = r.chat_history();
            let members: Vec<PeerId> = r.members().map(|p| p.id.clone()).collect();
            for m in &members {
                if self.move_to(m, meeting, 0).is_err() {
                    // (Not reached: the meeting's rooms together hold no more than a room.)
                    warn!(peer = %m, "could not bring someone back to the main room; they leave");
                    self.leave_room(m, LeaveReason::Left);
                    self.send(m, ServerMsg::Ended { room: meeting.to_string(), reason: None });
                }
            }
            if !chat.is_empty() {
                // Everyone who was in it at any time, and those meant to be.
                let mut told: Vec<PeerId> = members;
                told.extend(b.visited.get(&index).into_iter().flatten().cloned());
                told.extend(b.assigned.iter().filter(|(_, i)| **i == index).map(|(p, _)| p.clone()));
                told.sort_unstable();
                told.dedup();
                let room = BreakoutRef { index, name: b.name(index).unwrap_or_default().to_string() };
                let msg = Arc::new(ServerMsg::BreakoutChat { room, messages: chat });
                for p in told {
                    if self.rooms.room_of(&p).is_some_and(|r| **r == **meeting) {
                        self.send_arc(&p, msg.clone());
                    }
                }
            }
        }
        self.drop_breakout_rooms(meeting);
        info!("breakout rooms closed; everyone is back");
        self.breakouts_changed(meeting);
    }

    /// The meeting's breakout rooms go (they are empty), and its state with them.
    fn drop_breakout_rooms(&mut self, meeting: &Arc<str>) {
        let Some(b) = self.rooms.get_mut(meeting).and_then(|r| {
            let b = r.breakouts().cloned();
            r.set_breakouts(None);
            b
        }) else {
            return;
        };
        for index in 1..=b.names.len() as u32 {
            let key = bk::key(meeting, index);
            if let Some((k, _)) = self.rooms.get_key_value(key.as_str()).map(|(k, r)| (k.clone(), r.len())) {
                self.close_room(&k);
            }
        }
    }

    /// Everyone in the meeting learns its breakout rooms as they are now (each their own view);
    /// their clock is set ([`Hub::breakout_timers`]).
    pub(super) fn breakouts_changed(&mut self, room: &str) {
        let Some(meeting) = self.meeting_key(room) else { return };
        if self.room_events.is_some() {
            self.unsaved.insert(meeting.clone());
        }
        self.arm_breakout_timer(&meeting);
        let people = self.meeting_people(&meeting);
        let Some(b) = self.rooms.get(&meeting).and_then(Room::breakouts).cloned() else {
            let closed = Arc::new(ServerMsg::Breakouts { open: false, state: None });
            for (p, _) in people {
                self.send_arc(&p, closed.clone());
            }
            return;
        };
        let persons = |r: Option<&Room>| -> Vec<Person> {
            r.map(|r| r.members().map(|p| Person { id: p.id.clone(), name: p.name.clone() }).collect())
                .unwrap_or_default()
        };
        let rooms: Vec<BreakoutSummary> = (1..=b.names.len() as u32)
            .map(|i| {
                let members = persons(self.rooms.get(bk::key(&meeting, i).as_str()));
                BreakoutSummary {
                    index: i,
                    name: b.name(i).unwrap_or_default().to_string(),
                    count: members.len() as u32,
                    members: Some(members),
                }
            })
            .collect();
        let main = persons(self.rooms.get(&meeting));
        let counts: Vec<BreakoutSummary> =
            rooms.iter().map(|r| BreakoutSummary { members: None, ..r.clone() }).collect();
        for (p, role) in people {
            let state = BreakoutsOpen {
                rooms: if role.moderates() { rooms.clone() } else { counts.clone() },
                main: role.moderates().then(|| main.clone()),
                assigned: b.assigned_to(&p),
                auto_move: b.auto_move,
                allow_return: b.allow_return,
                choose: b.choose,
                ends_at: b.ends_at,
                closing_at: b.closing_at,
            };
            self.send(&p, ServerMsg::Breakouts { open: true, state: Some(state) });
        }
    }

    /// The meeting has one host across its rooms: when its host is gone, a co-host (in any of
    /// its rooms) becomes host, else someone in the main room, else anyone.
    pub(super) fn ensure_meeting_host(&mut self, meeting: &str) {
        let rooms = self.meeting_rooms(meeting);
        let mut any_host = false;
        let mut cohost = None;
        for k in &rooms {
            for p in self.rooms.get(k).into_iter().flat_map(Room::members) {
                any_host |= p.role == Role::Host;
                if p.role == Role::Cohost && cohost.is_none() {
                    cohost = Some((k.clone(), p.id.clone()));
                }
            }
        }
        if any_host {
            return;
        }
        let first = || {
            rooms
                .iter()
                .find_map(|k| self.rooms.get(k).and_then(|r| r.members().next()).map(|p| (k.clone(), p.id.clone())))
        };
        let Some((room, id)) = cohost.or_else(first) else { return };
        if let Some(peer) = self.rooms.get_mut(&room).and_then(|r| r.set_role(&id, Role::Host)) {
            info!(peer = %peer.id, "became the host");
            self.broadcast(&room, None, Arc::new(ServerMsg::PeerUpdated { peer }));
        }
    }

    /// The breakout rooms' clocks: closing starts at the time limit, and everyone goes back
    /// when the countdown ends.
    pub(super) fn breakout_timers(&mut self, now: Instant) {
        // Twice over: a time limit reached may start a countdown that is over by `now` too (a
        // countdown of 0 s, or a clock that jumped).
        for _ in 0..2 {
            self.breakout_timers_once(now);
        }
    }

    fn breakout_timers_once(&mut self, now: Instant) {
        let due: Vec<Arc<str>> =
            self.breakout_due.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
        for meeting in due {
            self.breakout_due.remove(&meeting);
            // (Due by the clock it was set from: the countdown's end, else the time limit.)
            let Some(b) = self.rooms.get_mut(&meeting).and_then(Room::breakouts_mut) else { continue };
            if b.closing_at.is_some() {
                self.finish_breakouts(&meeting);
            } else if b.ends_at.is_some() {
                info!("the breakout rooms' time is up; closing");
                b.closing_at = Some(unix_ms() + u64::from(b.close_seconds) * 1000);
                self.breakouts_changed(&meeting);
            }
        }
    }

    /// Sets the meeting's breakout clock from its state (none when its rooms are closed).
    pub(super) fn arm_breakout_timer(&mut self, meeting: &Arc<str>) {
        let due = self.rooms.get(meeting).and_then(Room::breakouts).map(|b| {
            b.next_due().map_or(Instant::now() + Duration::from_secs(365 * 86_400), |t| {
                Instant::now() + Duration::from_millis(t.saturating_sub(unix_ms()))
            })
        });
        match due {
            Some(at) => self.breakout_due.insert(meeting.clone(), at),
            None => self.breakout_due.remove(meeting),
        };
    }

    /// When the next breakout room clock is due.
    pub(super) fn next_breakout_timer(&self) -> Option<Instant> {
        self.breakout_due.values().min().copied()
    }
}
