//! Node-local sessions: connecting, resuming, disconnecting and expiring them, and delivering
//! messages into their outboxes. (The half of the hub that stays where the WebSocket is; see
//! `docs/design/room-ownership.md`.)

use super::*;

impl Hub {
    pub(super) fn count_received(&mut self, id: &PeerId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.received += 1;
        }
    }

    pub(super) fn new_secret(&self) -> String {
        let mut bytes = [0u8; 16];
        // The system's random source does not fail on the platforms huddle runs on.
        aws_lc_rs::rand::SecureRandom::fill(&self.rng, &mut bytes).expect("the system's random source works");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn welcome(&self, id: &PeerId, resumed: bool) -> Arc<ServerMsg> {
        Arc::new(ServerMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            id: id.clone(),
            server: concat!("huddle/", env!("CARGO_PKG_VERSION")).to_string(),
            limits: self.config.limits(),
            // Relay credentials are for people in a room: `joined` and `ice_servers` carry them.
            ice_servers: Vec::new(),
            ice_transport_policy: self.config.ice_transport_policy,
            resume: self.conns.get(id).map(|c| c.secret.clone()).unwrap_or_default(),
            resume_grace_secs: self.config.resume_grace.as_secs() as u32,
            resumed,
            received: if resumed { self.conns.get(id).map_or(0, |c| c.received) } else { 0 },
        })
    }

    pub(super) fn connect(&mut self, c: Connect) {
        if self.closing {
            let _ = c.kick.send(ByeReason::ServerShutdown);
            return;
        }
        if let Some(resume) = &c.resume {
            if !self.conns.contains_key(&resume.id) && self.restoring_until.is_some_and(|t| t > Instant::now()) {
                // A room is being taken over here, and other nodes may send its members' pages
                // before its sessions are in place: not a new session, but "try again" (the
                // connection is closed without one; its page asks again a second later).
                info!(session = %resume.id, "a session to resume is not here yet (a room is being taken over)");
                return;
            }
            match self.can_resume(resume) {
                Ok(missed) => return self.resume(c, missed),
                Err(give_up) => {
                    self.stats.resume_failed += 1;
                    info!(session = %resume.id, "could not resume a session; starting a new one");
                    if give_up {
                        // Its page starts over: its old place must not linger as a ghost.
                        self.disconnect(&resume.id.clone(), LeaveReason::Disconnected);
                    }
                }
            }
        }
        self.last_conn = self.last_conn.max(c.conn);
        let secret = self.new_secret();
        let id = c.id.clone();
        self.conns.insert(
            id.clone(),
            Conn {
                outbox: Some(c.outbox),
                kick: Some(c.kick),
                host: c.host,
                conn: c.conn,
                secret,
                sent: 0,
                received: 0,
                recent: VecDeque::new(),
                recent_bytes: 0,
                suspended: None,
                taken_over: false,
                keys: Vec::new(),
                ip: c.ip,
                checking: false,
                record_claim: None,
                turn_user: None,
                ice_renew: None,
            },
        );
        let _ = c.session.send(id.clone());
        let welcome = self.welcome(&id, false);
        self.send_uncounted(&id, welcome);
    }

    /// Removes session `id` for [`Command::Export`] if it is attached as `conn` and in no room,
    /// waiting room or password check (the only state a session has outside a room is what
    /// [`Handoff`] carries).
    pub(super) fn export(&mut self, id: &PeerId, conn: u64) -> Option<Exported> {
        let c = self.conns.get(id)?;
        let movable = c.conn == conn
            && self.rooms.place(id).is_none()
            && !c.checking
            && c.suspended.is_none()
            && c.outbox.is_some()
            && c.kick.is_some();
        if !movable {
            return None;
        }
        let watching = self.watchers.remove(id);
        let c = self.conns.remove(id)?;
        let (secret, sent, received, ip, host) = (c.secret, c.sent, c.received, c.ip, c.host);
        let handoff = Handoff { id: id.clone(), secret, sent, received, ip, host, watching };
        Some(Exported { handoff, outbox: c.outbox?, kick: c.kick? })
    }

    /// Takes in a session exported by another node ([`Command::Adopt`]).
    pub(super) fn adopt(&mut self, h: Handoff, conn: u64, outbox: Outbox, kick: oneshot::Sender<ByeReason>) {
        if self.closing {
            let _ = kick.send(ByeReason::ServerShutdown);
            return;
        }
        if let Some(old) = self.conns.get_mut(&h.id).and_then(|c| c.kick.take()) {
            // Cannot happen unless two nodes think they hold it; the newest connection wins.
            let _ = old.send(ByeReason::Replaced);
        }
        self.last_conn = self.last_conn.max(conn);
        if h.watching {
            self.watchers.insert(h.id.clone());
        }
        self.conns.insert(
            h.id.clone(),
            Conn {
                outbox: Some(outbox),
                kick: Some(kick),
                host: h.host,
                conn,
                secret: h.secret,
                sent: h.sent,
                received: h.received,
                recent: VecDeque::new(),
                recent_bytes: 0,
                suspended: None,
                taken_over: false,
                keys: Vec::new(),
                ip: h.ip,
                checking: false,
                record_claim: None,
                turn_user: None,
                ice_renew: None,
            },
        );
    }

    /// How many kept messages a resume replays; `Err(true)` when the session exists but cannot be
    /// resumed (its page will start over), `Err(false)` when there is nothing to resume.
    pub(super) fn can_resume(&self, r: &Resume) -> Result<usize, bool> {
        let Some(conn) = self.conns.get(&r.id) else { return Err(false) };
        let secret_ok =
            aws_lc_rs::constant_time::verify_slices_are_equal(conn.secret.as_bytes(), r.secret.as_bytes()).is_ok();
        if !secret_ok || self.config.resume_grace.is_zero() || conn.outbox.is_none() && conn.suspended.is_none() {
            // A wrong secret says nothing about the session (and must not end it).
            return Err(false);
        }
        let missed = match conn.sent.checked_sub(r.seen) {
            Some(missed) => missed,
            // Its page saw what the room's previous owner sent after its last save: that is
            // history now; it carries on from what it saw.
            None if conn.taken_over => 0,
            None => return Err(true),
        };
        if missed as usize > conn.recent.len() || self.rooms.place(&r.id).is_none() {
            return Err(true);
        }
        Ok(missed as usize)
    }

    /// Attaches connection `c` to the existing session `c.resume.id`, replaying what it missed.
    pub(super) fn resume(&mut self, c: Connect, missed: usize) {
        let Some(resume) = c.resume else { return };
        self.last_conn = self.last_conn.max(c.conn);
        let id = resume.id;
        let welcome;
        {
            let Some(conn) = self.conns.get_mut(&id) else { return };
            if let Some(old) = conn.kick.take() {
                // A connection the server still thought alive (the page saw it die first).
                let _ = old.send(ByeReason::Replaced);
            }
            if conn.taken_over {
                conn.sent = conn.sent.max(resume.seen);
                conn.taken_over = false;
            }
            conn.outbox = Some(c.outbox);
            conn.kick = Some(c.kick);
            conn.conn = c.conn;
            conn.host = c.host;
            conn.ip = c.ip;
            conn.suspended = None;
            welcome = self.welcome(&id, true);
        }
        self.stats.resumed += 1;
        let _ = c.session.send(id.clone());
        info!(peer = %id, missed, "resumed a session");
        self.send_uncounted(&id, welcome);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let from = conn.recent.len() - missed;
        let replay: Vec<Frame> = conn.recent.iter().skip(from).cloned().collect();
        if let Some(outbox) = &conn.outbox {
            for msg in replay {
                if outbox.try_send(msg).is_err() {
                    self.overflowed.push(id.clone());
                    break;
                }
            }
        }
        // A renewal that fell due while it was away (or it comes back from a restart, or from
        // an older server without a relay user): current credentials, after what it missed.
        let now = Instant::now();
        if self.rooms.room_of(&id).is_some() && (conn.turn_user.is_none() || conn.ice_renew.is_none_or(|t| t <= now)) {
            self.start_relay(&id);
            self.renew_relay(&id, now);
        }
    }

    /// The connection of `id` ended: a participant in a room keeps its place for the grace
    /// period (unless it said goodbye); everyone else leaves now.
    pub(super) fn disconnected(&mut self, id: &PeerId, reason: LeaveReason) {
        let grace = self.config.resume_grace;
        let keep = reason == LeaveReason::Disconnected
            && !grace.is_zero()
            && self.shutdown.is_none()
            && self.rooms.room_of(id).is_some();
        if keep {
            if let Some(conn) = self.conns.get_mut(id) {
                let until = Instant::now() + grace;
                conn.outbox = None;
                conn.kick = None;
                conn.suspended = Some(until);
                info!(peer = %id, "connection lost; keeping the place for a resume");
                self.wake_at(id, until);
            }
            return;
        }
        self.disconnect(id, reason);
    }

    /// Ends the sessions whose grace period is over, and renews the relay credentials that are
    /// due (a session without a connection gets them when it resumes).
    pub fn expire(&mut self, now: Instant) {
        self.files.expire(now);
        self.breakout_timers(now);
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, id))) = self.deadlines.pop() else { break };
            due.push(id);
        }
        due.sort_unstable();
        due.dedup();
        // Renewals first, then the ends of grace periods (a session both due ends anyway).
        for id in &due {
            match self.conns.get_mut(id) {
                Some(c) if c.ice_renew.is_some_and(|t| t <= now) && c.outbox.is_none() => c.ice_renew = None,
                Some(c) if c.ice_renew.is_some_and(|t| t <= now) => self.renew_relay(id, now),
                _ => {}
            }
        }
        for id in &due {
            if self.conns.get(id).is_some_and(|c| c.suspended.is_some_and(|t| t <= now)) {
                self.touched(id, Weight::State);
                info!(peer = %id, "not resumed in time");
                self.disconnect(id, LeaveReason::Disconnected);
            }
        }
        self.evict_overflowed();
    }

    /// When the next suspended session, file offer or upload expires, or relay credentials are
    /// due (or a little earlier: a deadline that moved later wakes the hub for nothing once).
    pub fn next_expiry(&self) -> Option<Instant> {
        let sessions = self.deadlines.peek().map(|Reverse((at, _))| *at);
        sessions.into_iter().chain(self.files.next_deadline()).chain(self.next_breakout_timer()).min()
    }

    /// Remembers that session `id` has a deadline at `at` ([`Hub::expire`] then looks at it).
    /// Entries left stale by sessions that resumed or left go when their time comes; should
    /// they ever outnumber the sessions by far (a page reconnecting over and over within its
    /// grace period), the heap is made afresh from the sessions.
    pub(super) fn wake_at(&mut self, id: &PeerId, at: Instant) {
        self.deadlines.push(Reverse((at, id.clone())));
        if self.deadlines.len() > 2 * self.conns.len() + 1024 {
            self.deadlines = self
                .conns
                .iter()
                .flat_map(|(id, c)| [c.suspended, c.ice_renew].into_iter().flatten().map(|t| Reverse((t, id.clone()))))
                .collect();
        }
    }

    /// Connection `conn` of session `id` is gone, and nobody is told: the session's outbox goes,
    /// and it waits (as after a lost connection) until shutdown forgets it.
    pub(super) fn detach_quietly(&mut self, id: &PeerId, conn: u64) {
        let grace = self.config.resume_grace;
        if let Some(c) = self.conns.get_mut(id).filter(|c| c.conn == conn) {
            let until = Instant::now() + grace;
            c.outbox = None;
            c.kick = None;
            c.suspended = Some(until);
            self.wake_at(id, until);
        }
    }

    pub(super) fn disconnect(&mut self, id: &PeerId, reason: LeaveReason) {
        self.leave_room(id, reason);
        self.leave_waiting_room(id);
        self.watchers.remove(id);
        self.conns.remove(id);
        if self.conns.is_empty() {
            if let Some(done) = self.shutdown.take() {
                let _ = done.send(());
            }
        }
    }

    pub(super) fn send(&mut self, id: &PeerId, msg: ServerMsg) {
        self.send_frame(id, Frame::new(&msg));
    }

    pub(super) fn send_arc(&mut self, id: &PeerId, msg: Arc<ServerMsg>) {
        self.send_frame(id, Frame::new(&msg));
    }

    pub(super) fn send_frame(&mut self, id: &PeerId, frame: Frame) {
        let placed = self.rooms.place(id).is_some();
        self.offer_frame(id, frame, placed);
    }

    /// Sends `msg` to `id`, known to be in a room (its place was looked up already).
    pub(super) fn send_to_member(&mut self, id: &PeerId, msg: ServerMsg) {
        self.offer_frame(id, Frame::new(&msg), true);
    }

    fn offer_frame(&mut self, id: &PeerId, frame: Frame, placed: bool) {
        let max = self.config.outbox_bytes;
        if self.conns.get_mut(id).is_some_and(|conn| !conn.offer(frame, placed, max)) {
            self.overflowed.push(id.clone());
        }
    }

    /// Sends a `welcome`, which resumes do not count or replay.
    pub(super) fn send_uncounted(&mut self, id: &PeerId, msg: Arc<ServerMsg>) {
        let Some(outbox) = self.conns.get(id).and_then(|c| c.outbox.as_ref()) else { return };
        if outbox.try_send(Frame::new(&msg)).is_err() {
            self.overflowed.push(id.clone());
        }
    }

    /// Disconnects every connection that could not take a message. Evicting tells the rest of
    /// its room, which may overflow further outboxes, hence the loop.
    pub(super) fn evict_overflowed(&mut self) {
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

    pub(super) fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        info!(connections = self.conns.len(), "saying goodbye to every connection");
        let bye = Frame::new(&ServerMsg::Bye { reason: ByeReason::ServerShutdown });
        self.closing = true;
        self.files.clear();
        // Sessions without a connection have nobody to say goodbye to; they leave their rooms
        // (and waiting rooms) as a lost connection would, so no member is left without one.
        let suspended: Vec<PeerId> =
            self.conns.iter().filter(|(_, c)| c.suspended.is_some()).map(|(id, _)| id.clone()).collect();
        for id in suspended {
            if self.saved {
                // Saved for the restart: its room must not hear it left.
                self.leave_room_quietly(&id);
                self.leave_waiting_room(&id);
                self.conns.remove(&id);
            } else {
                self.disconnect(&id, LeaveReason::Disconnected);
            }
        }
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
}
