//! The hub's part in recording (see [`crate::recording`]): who may record, the room's recording
//! state and what everyone is told. The SFU core of this worker records; its writer thread
//! writes; the store keeps the files.

use super::*;
use crate::recording::{first_manifest, initial_events, media_events, Recordings, WriterMsg};
use huddle_protocol::{Person, RecordingStopReason, RecordingStopped};
use huddle_record::manifest::EventKind;

impl Hub {
    /// Recording is possible on this hub: recordings are on and there is an SFU.
    pub fn set_recordings(&mut self, store: Arc<Recordings>) {
        self.recordings = Some(store);
    }

    /// The `rec` claim of `id`'s token, if it had one.
    pub(super) fn record_claim(&self, id: &PeerId) -> Option<bool> {
        self.conns.get(id).and_then(|c| c.record_claim)
    }

    fn tell_media(&mut self, cmd: MediaCommand) -> bool {
        let Some(media) = &self.media else { return false };
        if media.try_send(cmd).is_err() {
            self.stats.media_commands_dropped += 1;
            return false;
        }
        true
    }

    /// `record` from a host or co-host (checked by the caller) of `room`.
    pub(super) fn record(&mut self, id: &PeerId, room: &Arc<str>) -> Result<(), ErrorCode> {
        let store = self.recordings.clone().filter(|_| self.media.is_some()).ok_or(ErrorCode::RecordingUnavailable)?;
        if self.record_claim(id) == Some(false) {
            return Err(ErrorCode::NotAllowed);
        }
        let r = self.rooms.get(room).ok_or(ErrorCode::NotInRoom)?;
        if let Some(info) = r.recording().cloned() {
            // Already recording: the asker learns so (its page may have missed it).
            self.send(id, ServerMsg::Recording { recording: Some(info), stopped: None });
            return Ok(());
        }
        store.check_space()?;
        // Both commands below go, or neither: a recording the core never heard of would stay
        // "recording" in the store for good.
        if self.media.as_ref().is_none_or(|m| m.capacity() < 2) {
            self.stats.media_commands_dropped += 1;
            return Err(ErrorCode::MediaRetry);
        }
        let me = r.member(id).ok_or(ErrorCode::NotInRoom)?;
        let by = Person { id: id.clone(), name: me.name.clone() };
        let members: Vec<Peer> = r.members().cloned().collect();
        let (info, dir) = store.begin(room, by).map_err(|e| {
            warn!(error = %e, "cannot start a recording's directory");
            ErrorCode::RecordingUnavailable
        })?;
        // Media must pass the server to be recorded: a peer-to-peer room moves to the SFU, as
        // when a third person joins.
        let switch = self.rooms.get(room).is_some_and(|r| r.topology() == Topology::P2p);
        if switch {
            if let Some(r) = self.rooms.get_mut(room) {
                r.set_topology(Topology::Sfu);
            }
            info!("room switched to the SFU to be recorded");
            self.broadcast(
                room,
                None,
                Arc::new(ServerMsg::Topology {
                    topology: Topology::Sfu,
                    reason: Some(huddle_protocol::TopologyReason::Recording),
                }),
            );
        }
        let manifest = Box::new(first_manifest(&info, room, &members));
        let start = WriterMsg::Start { room: room.to_string(), dir, manifest };
        if !self.tell_media(MediaCommand::Recorder(start))
            || !self.tell_media(MediaCommand::Record { room: room.clone(), on: true })
        {
            // (Another sender took the room checked above, in between.)
            warn!("SFU queue full; a recording could not start");
            store.abandon(&info.id);
            return Err(ErrorCode::MediaRetry);
        }
        info!(peer = %id, id = %info.id, "recording started");
        if let Some(r) = self.rooms.get_mut(room) {
            r.set_recording(Some(info.clone()), 1);
        }
        self.rooms_dirty = true;
        self.recording_changed(room);
        self.broadcast(room, None, Arc::new(ServerMsg::Recording { recording: Some(info), stopped: None }));
        Ok(())
    }

    /// The room's recording stops (a host, a limit, the meeting's end); nothing when it does not
    /// record. Everyone in it is told why.
    pub(super) fn stop_recording(&mut self, room: &str, by: Option<Person>, reason: RecordingStopReason) {
        let Some(key) = self.rooms.get_key_value(room).map(|(k, _)| k.clone()) else { return };
        let Some(info) = self.rooms.get_mut(&key).and_then(|r| r.recording().cloned()) else { return };
        if let Some(r) = self.rooms.get_mut(&key) {
            r.set_recording(None, 0);
        }
        self.end_part(&key, by.clone(), false);
        info!(id = %info.id, ?reason, "recording stopped");
        self.rooms_dirty = true;
        self.recording_changed(&key);
        let stopped = Some(RecordingStopped { by, reason });
        self.broadcast(&key, None, Arc::new(ServerMsg::Recording { recording: None, stopped }));
    }

    /// The writer closes the part of `room`'s recording this hub writes: the recording stops,
    /// or (`continues`) goes on with the room's next owner.
    fn end_part(&mut self, room: &Arc<str>, by: Option<Person>, continues: bool) {
        self.tell_media(MediaCommand::Recorder(WriterMsg::Stop { room: room.to_string(), by, continues }));
        if !self.tell_media(MediaCommand::Record { room: room.clone(), on: false }) {
            warn!(%room, "SFU queue full; a recording's stop was dropped (its files end with the server)");
        }
    }

    /// One node of several saves the room soon: its next owner must know whether it records.
    fn recording_changed(&mut self, room: &Arc<str>) {
        if self.room_events.is_some() {
            self.unsaved.insert(room.clone());
        }
    }

    /// `room` is moving to another server (this one stops, or another node owns it now) with
    /// its recording, as saved: this server's part ends as `continued`, and nobody is told
    /// anything (for them the recording goes on). The new owner writes the next part
    /// ([`Hub::continue_recording`]).
    pub(super) fn recording_moves(&mut self, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let Some(info) = r.recording().cloned() else { return };
        r.set_recording(None, 0);
        info!(id = %info.id, "the room moves on: this part of its recording ends here");
        self.end_part(room, None, true);
    }

    /// Every recording room of this hub moves ([`Hub::recording_moves`]).
    pub(super) fn recordings_move(&mut self) {
        let recording: Vec<Arc<str>> =
            self.rooms.iter().filter(|(_, r)| r.recording().is_some()).map(|(k, _)| k.clone()).collect();
        for room in recording {
            self.recording_moves(&room);
        }
    }

    /// A room that came here with its recording (restored after a restart, taken over from
    /// another node) goes on recording, in a new part. When it cannot (recording is off here,
    /// no SFU, the SFU's queue is full, the directory cannot be made), the recording stops
    /// and its members are told when their pages come back.
    pub(super) fn continue_recording(&mut self, room: &Arc<str>) {
        let Some(r) = self.rooms.get(room) else { return };
        let Some(info) = r.recording().cloned() else { return };
        let after = r.recording_part().max(1);
        let members: Vec<Peer> = r.members().cloned().collect();
        let possible = r.topology() == Topology::Sfu && self.media.as_ref().is_some_and(|m| m.capacity() >= 2);
        let resumed = self.recordings.clone().filter(|_| possible).and_then(|store| {
            store
                .resume(&info, room, after)
                .map_err(|e| warn!(id = %info.id, error = %e, "cannot go on recording"))
                .ok()
        });
        let Some((dir, part)) = resumed else {
            warn!(id = %info.id, "a recording that came with its room cannot go on here; it stops");
            if let Some(r) = self.rooms.get_mut(room) {
                r.set_recording(None, 0);
            }
            let stopped = Some(RecordingStopped { by: None, reason: RecordingStopReason::ServerError });
            self.broadcast(room, None, Arc::new(ServerMsg::Recording { recording: None, stopped }));
            self.recording_changed(room);
            return;
        };
        let mut manifest = first_manifest(&info, room, &members);
        manifest.part = part;
        manifest.started_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let start = WriterMsg::Start { room: room.to_string(), dir, manifest: Box::new(manifest) };
        // (Room for both was checked above; this hub is the queue's only sender.)
        self.tell_media(MediaCommand::Recorder(start));
        self.tell_media(MediaCommand::Record { room: room.clone(), on: true });
        if let Some(r) = self.rooms.get_mut(room) {
            r.set_recording(Some(info.clone()), part);
        }
        info!(id = %info.id, part, "the room came with its recording: it goes on in a new part");
        self.recording_changed(room);
    }

    /// The writer cannot go on with `room`'s recording (a limit, an error). If the room no longer
    /// records here (its stop was lost on a full SFU queue, or it moved), the core is told again.
    pub(super) fn recording_cannot_go_on(&mut self, room: &Arc<str>, reason: RecordingStopReason) {
        if self.rooms.get(room).is_some_and(|r| r.recording().is_some()) {
            self.stop_recording(room, None, reason);
        } else {
            self.tell_media(MediaCommand::Record { room: room.clone(), on: false });
        }
    }

    /// `stop_recording` from a host or co-host.
    pub(super) fn stop_recording_by(&mut self, id: &PeerId, room: &Arc<str>) -> Result<(), ErrorCode> {
        let name =
            self.rooms.get(room).and_then(|r| r.member(id)).map(|p| p.name.clone()).ok_or(ErrorCode::NotInRoom)?;
        self.stop_recording(room, Some(Person { id: id.clone(), name }), RecordingStopReason::Stopped);
        Ok(())
    }

    /// `delete_recording` from a host or co-host: only a recording of this room.
    pub(super) fn delete_recording(&mut self, room: &Arc<str>, rec: &str) -> Result<(), ErrorCode> {
        let store = self.recordings.clone().ok_or(ErrorCode::UnknownRecording)?;
        store.delete(room, rec)
    }

    /// Hosts and co-hosts of `room` get its list of recordings (on any change).
    pub(super) fn tell_recordings(&mut self, room: &str) {
        let Some(store) = self.recordings.clone() else { return };
        if !self.rooms.contains_key(room) {
            return;
        }
        let msg = Arc::new(ServerMsg::Recordings { recordings: store.list(room) });
        self.tell_moderators(room, msg);
    }

    /// One host or co-host gets the room's list (on joining, on becoming a co-host), when
    /// there is something in it.
    pub(super) fn send_recordings(&mut self, id: &PeerId, room: &str) {
        let Some(store) = self.recordings.clone() else { return };
        let recordings = store.list(room);
        if !recordings.is_empty() {
            self.send(id, ServerMsg::Recordings { recordings });
        }
    }

    /// While `room` records, what happens in it goes into the recording's timeline.
    pub(super) fn record_note(&mut self, room: &str, peer: &PeerId, events: Vec<EventKind>, name: Option<String>) {
        if events.is_empty() || self.rooms.get(room).is_none_or(|r| r.recording().is_none()) {
            return;
        }
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut name = name;
        for event in events {
            let note =
                WriterMsg::Note { room: room.to_string(), at_unix_ms, peer: peer.0.clone(), event, name: name.take() };
            self.tell_media(MediaCommand::Recorder(note));
        }
    }

    /// Someone entered a recording room.
    pub(super) fn record_joined(&mut self, room: &str, peer: &Peer) {
        self.record_note(room, &peer.id, initial_events(peer), Some(peer.name.clone()));
    }

    /// Someone's media changed in a recording room.
    pub(super) fn record_media(&mut self, room: &str, before: Option<&Peer>, after: &Peer) {
        if let Some(before) = before {
            self.record_note(room, &after.id, media_events(before, after), None);
        }
    }
}
