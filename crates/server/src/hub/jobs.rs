//! Password hashes and checks, off the hub's task: started here, their results applied when
//! they come back ([`super::run`] feeds them in).

use super::*;

impl Hub {
    /// Runs password hashes and checks on blocking threads, one at a time, and sends them back
    /// through `done` (which [`run`] reads), instead of on the hub's own task.
    pub fn run_jobs_elsewhere(&mut self, done: mpsc::UnboundedSender<JobDone>) {
        self.jobs = Some(Jobs { done, one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)) });
    }

    /// Starts `job`, or runs it now when the hub has nowhere else to run it.
    pub(super) fn start_job(&mut self, job: Job) -> Result<(), ErrorCode> {
        let Some(jobs) = &self.jobs else {
            let done = job.run();
            self.apply_job(done);
            return Ok(());
        };
        if self.jobs_in_flight >= MAX_JOBS_IN_FLIGHT {
            return Err(ErrorCode::RateLimited);
        }
        self.jobs_in_flight += 1;
        let (done, one_at_a_time) = (jobs.done.clone(), jobs.one_at_a_time.clone());
        tokio::spawn(async move {
            // The semaphore is never closed; the permit only orders the jobs.
            let _permit = one_at_a_time.acquire_owned().await;
            if let Ok(result) = tokio::task::spawn_blocking(move || job.run()).await {
                let _ = done.send(JobDone(result));
            }
        });
        Ok(())
    }

    /// A job started elsewhere is done.
    pub fn job_done(&mut self, done: JobDone) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        let actor = match &done.0 {
            Done::Verified { id, .. } => Some(id.clone()),
            Done::Hashed { .. } => None,
        };
        if let Done::Hashed { room, .. } = &done.0 {
            if self.room_events.is_some() {
                self.unsaved.insert(room.clone());
            }
        }
        self.apply_job(done.0);
        if let Some(id) = actor {
            self.touched(&id, Weight::State);
        }
        self.evict_overflowed();
    }

    pub(super) fn apply_job(&mut self, done: Done) {
        match done {
            Done::Verified { id, req, room, instance, gen, ok } => {
                let Some(conn) = self.conns.get_mut(&id) else { return };
                conn.checking = false;
                if let Err(code) = self.password_checked(&id, req, &room, &instance, gen, ok) {
                    debug!(peer = %id, %code, "join refused after the password check");
                    self.send(&id, ServerMsg::error(code, Some("join")));
                }
            }
            Done::Hashed { room, instance, seq, hash } => {
                let Some(r) = self.rooms.get_mut(&room) else { return };
                if r.instance() != instance || r.password_seq() != seq {
                    // The room closed, or the password was changed again since.
                    return;
                }
                r.set_password(Some(hash));
                let settings = r.settings();
                info!("room password set");
                self.rooms_dirty = true;
                self.broadcast(&room, None, Arc::new(ServerMsg::RoomSettings { settings }));
            }
        }
    }

    /// Carries on a join whose password was checked: in if it was right and everything else
    /// still allows it; checked again if the password changed meanwhile.
    pub(super) fn password_checked(
        &mut self,
        id: &PeerId,
        req: JoinRequest,
        room: &Arc<str>,
        instance: &str,
        gen: u32,
        ok: bool,
    ) -> Result<(), ErrorCode> {
        let Some(r) = self.rooms.get_mut(room).filter(|r| r.instance() == instance) else {
            // The meeting ended while the password was being checked.
            return Err(ErrorCode::RoomClosed);
        };
        if r.password_gen() != gen {
            r.guesses().refund();
            return self.join(id, req);
        }
        if ok {
            r.guesses().refund();
            return self.join_checked(id, req, Some(gen));
        }
        if let Some(failed) = r.guesses().failed(Instant::now()) {
            warn!(failed, "wrong passwords keep coming at a room; joins with a password are paused");
            self.tell_moderators(room, Arc::new(ServerMsg::PasswordAttempts { failed }));
        }
        Err(ErrorCode::WrongPassword)
    }

    /// Starts checking a join's password (`job`), if the room's budget of guesses allows one
    /// more now; the join carries on when the check is done ([`Hub::password_checked`]).
    pub(super) fn check_password(&mut self, id: &PeerId, room: &Arc<str>, job: Job) -> Result<(), ErrorCode> {
        let Job::Verify { req, .. } = &job else { return Err(ErrorCode::BadMessage) };
        if req.password.as_deref().is_none_or(|p| p.trim().is_empty()) {
            return Err(ErrorCode::PasswordRequired);
        }
        let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
        if !r.guesses().reserve(Instant::now()) {
            debug!(peer = %id, "join with a password during a pause");
            return Err(ErrorCode::TooManyAttempts);
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.checking = true;
        }
        let started = self.start_job(job);
        if started.is_err() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.checking = false;
            }
            if let Some(r) = self.rooms.get_mut(room) {
                r.guesses().refund();
            }
        }
        started
    }
}
