//! The hub's bridges to the media task (SFU signalling, holds, media events) and the file store.

use super::*;

impl Hub {
    /// What the SFU must not forward of `peer`'s media: its audio while a host has it muted, its
    /// video while the room has neither its camera nor its screen on. `None` outside `sfu` rooms.
    pub(super) fn sfu_hold(&self, peer: &PeerId) -> Option<SfuHold> {
        let room = self.rooms.room_of(peer)?;
        let r = self.rooms.get(room).filter(|r| r.topology() == Topology::Sfu)?;
        let p = r.member(peer)?;
        Some(SfuHold { audio: r.held(peer).audio, video: !(p.video || p.screen) })
    }

    /// Tells the SFU what it must not forward of `peer`'s media, in `sfu` rooms, when that is not
    /// `before` (what it was before a change; nothing held for a new SFU session).
    pub(super) fn tell_sfu_hold(&mut self, peer: &PeerId, before: Option<SfuHold>) {
        let Some(hold) = self.sfu_hold(peer).filter(|h| Some(*h) != before) else { return };
        if let Some(media) = &self.media {
            let cmd = MediaCommand::Hold { peer: peer.clone(), audio: hold.audio, video: hold.video };
            if media.try_send(cmd).is_err() {
                self.stats.media_commands_dropped += 1;
            }
        }
    }

    /// A `signal` to the reserved peer `sfu`: offers and answers go to the SFU task; candidates
    /// are not needed (the SFU is ICE-lite and learns addresses from the browser's checks).
    pub(super) fn signal_sfu(&mut self, id: &PeerId, room: &Arc<str>, payload: SignalPayload) -> Result<(), ErrorCode> {
        let sfu_room = self.rooms.get(room).is_some_and(|r| r.topology() == Topology::Sfu);
        let Some(media) = self.media.as_ref().filter(|_| sfu_room) else {
            return Err(ErrorCode::UnknownPeer);
        };
        let mut offer = false;
        let cmd = match payload {
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp } } => {
                offer = true;
                // Parsed here, not in the SFU task, which forwards every packet meanwhile (a
                // 50-person room's SDP is the costliest step of a negotiation).
                MediaCommand::Offer { peer: id.clone(), room: room.clone(), offer: huddle_sfu::Offer::parse(&sdp) }
            }
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Answer, sdp } } => {
                MediaCommand::Answer { peer: id.clone(), answer: huddle_sfu::Answer::parse(&sdp) }
            }
            // Candidates, and rollbacks/pranswers the SFU never asks for.
            _ => return Ok(()),
        };
        if media.try_send(cmd).is_err() {
            self.stats.media_commands_dropped += 1;
            warn!(peer = %id, "SFU queue full; refusing a signal");
            // Nothing changed: the same signal may be sent again in a moment.
            let mut msg = ServerMsg::error(ErrorCode::MediaRetry, Some("signal"));
            if let ServerMsg::Error { retry_after_ms, .. } = &mut msg {
                *retry_after_ms = Some(crate::media::BUSY_RETRY.as_millis() as u64);
            }
            self.send(id, msg);
            return Ok(());
        }
        // A (new) SFU session starts with nothing held: a muted participant stays muted on it,
        // and one whose camera and screen are off stays unseen.
        if offer {
            self.tell_sfu_hold(id, Some(SfuHold::default()));
        }
        Ok(())
    }

    pub(super) fn file_offer(
        &mut self,
        id: &PeerId,
        room: &Arc<str>,
        name: &str,
        size: u64,
        mime: &str,
        sha256: &str,
    ) -> Result<(), ErrorCode> {
        let sender = self.rooms.get(room).and_then(|r| r.member(id)).map(|p| p.name.clone());
        let sender = sender.ok_or(ErrorCode::NotInRoom)?;
        if self.rooms.get(room).is_none_or(|r| r.topology() != Topology::Sfu) {
            // Pages in p2p rooms send files over their data channels: the server stores none.
            return Err(ErrorCode::NotSfuRoom);
        }
        let ip = self.conns.get(id).map(|c| c.ip).ok_or(ErrorCode::NotInRoom)?;
        let now = Instant::now();
        let (file_id, url) = self.files.offer(room, id, ip, &sender, name, size, mime, sha256, now)?;
        self.send(id, ServerMsg::FileUpload { id: file_id, url });
        Ok(())
    }

    pub(super) fn file_command(&mut self, cmd: FileCommand) {
        match cmd {
            FileCommand::BeginUpload { id, key, reply } => {
                let _ = reply.send(self.files.begin_upload(&id, &key, Instant::now()));
            }
            FileCommand::EndUpload { id, ok } => {
                if let Some((room, file)) = self.files.end_upload(&id, ok) {
                    if self.rooms.contains_key(&room) {
                        self.broadcast(&room, None, Arc::new(ServerMsg::File { file }));
                    } else {
                        // The room emptied during the upload.
                        self.files.room_closed(&room);
                    }
                }
            }
            FileCommand::Download { id, ip, reply } => {
                let _ = reply.send(self.files.download(&id, ip, Instant::now()));
            }
        }
    }

    /// Passes the SFU's SDP or error on, if the participant is still in an `sfu` room.
    pub(super) fn media_event(&mut self, event: MediaEvent) {
        let (peer, msg) = match event {
            MediaEvent::Signal { peer, payload, session } => {
                (peer, ServerMsg::Signal { from: PeerId(SFU_PEER_ID.to_string()), payload, session: Some(session) })
            }
            MediaEvent::Error { peer, code, request, session, retry_after } => {
                let mut msg = ServerMsg::error(code, request);
                if let ServerMsg::Error { session: s, retry_after_ms, .. } = &mut msg {
                    *s = session;
                    // Rounded up: sent again after this long, the signal is in time.
                    *retry_after_ms = retry_after.map(|d| d.as_micros().div_ceil(1000) as u64);
                }
                (peer, msg)
            }
            MediaEvent::ActiveSpeaker { room, peer } => {
                // Only while the speaker is still there (the event may trail a leave).
                let here = self
                    .rooms
                    .get(room.as_str())
                    .is_some_and(|r| r.topology() == Topology::Sfu && r.member(&peer).is_some());
                if here {
                    self.broadcast(&room, None, Arc::new(ServerMsg::ActiveSpeaker { peer }));
                }
                return;
            }
        };
        let room = self.rooms.room_of(&peer);
        if room.and_then(|r| self.rooms.get(r)).is_some_and(|r| r.topology() == Topology::Sfu) {
            self.send(&peer, msg);
        }
    }
}
