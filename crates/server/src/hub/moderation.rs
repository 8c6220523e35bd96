//! Host commands and moderation: room settings, roles, mute, remove, ban, ending the meeting.

use super::*;

impl Hub {
    /// Commands only hosts (and co-hosts) may give.
    pub(super) fn host_command(&mut self, id: &PeerId, room: &Arc<str>, msg: ClientMsg) -> Result<(), ErrorCode> {
        let me = self.rooms.get(room).and_then(|r| r.role(id)).ok_or(ErrorCode::NotInRoom)?;
        // A token's `rec: true` lets its holder record without being a host.
        let may_record = self.record_claim(id) == Some(true);
        let recording_command = matches!(msg, ClientMsg::Record | ClientMsg::StopRecording);
        if !(me.moderates() || may_record && recording_command) {
            return Err(ErrorCode::NotAllowed);
        }
        // In a breakout room, what concerns the whole meeting (its door, its recording, its
        // invites) is done from the main room; ending the meeting ends every room of it.
        let meeting_wide = matches!(
            msg,
            ClientMsg::Settings { .. }
                | ClientMsg::Record
                | ClientMsg::StopRecording
                | ClientMsg::DeleteRecording { .. }
                | ClientMsg::Invite { .. }
                | ClientMsg::RevokeInvites
        );
        if meeting_wide && crate::room::breakout::index_of(room).is_some() {
            return Err(ErrorCode::InvalidBreakout);
        }
        // The meeting's waiting room is its main room's: a host in a breakout room lets people
        // in there.
        let door = self.meeting_key(room).unwrap_or_else(|| room.clone());
        match msg {
            ClientMsg::Settings { locked, waiting_room, allow_unmute, password, listed } => {
                let password = match password {
                    None => None,
                    Some(p) if p.is_empty() => Some(None),
                    Some(p) => {
                        let p = validate::password(&p, PASSWORD_MAX_CHARS).ok_or(ErrorCode::BadMessage)?;
                        Some(Some(p.to_string()))
                    }
                };
                let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
                r.set_flags(|s| {
                    if let Some(v) = locked {
                        s.locked = v;
                    }
                    if let Some(v) = waiting_room {
                        s.waiting_room = v;
                    }
                    if let Some(v) = allow_unmute {
                        s.allow_unmute = v;
                    }
                    if let Some(v) = listed {
                        // Stays off for a protected room (see `Room::set_flags`).
                        s.listed = v;
                    }
                    if matches!(password, Some(Some(_))) {
                        // Off the list at once, not when the hash is ready.
                        s.listed = false;
                    }
                });
                let seq = password.is_some().then(|| r.begin_password_change());
                if password == Some(None) {
                    r.set_password(None);
                }
                let settings = r.settings();
                let instance = r.instance().to_string();
                self.rooms_dirty = true;
                info!(peer = %id, ?settings, "room settings changed");
                let only_new_password = matches!(password, Some(Some(_)))
                    && locked.is_none()
                    && waiting_room.is_none()
                    && allow_unmute.is_none()
                    && listed.is_none();
                if !only_new_password {
                    self.broadcast(room, None, Arc::new(ServerMsg::RoomSettings { settings }));
                }
                if !settings.waiting_room {
                    if settings.locked {
                        // A lock lets nobody in, the people waiting neither.
                        self.turn_away_waiters(room, ErrorCode::RoomLocked);
                    } else {
                        self.admit_all(room);
                    }
                }
                if let (Some(Some(password)), Some(seq)) = (password, seq) {
                    // Set (and announced) once hashed; the old password holds until then.
                    self.start_job(Job::Hash { room: room.clone(), instance, seq, password })?;
                }
                Ok(())
            }
            ClientMsg::Moderate { peer, action } => self.moderate(id, me, room, &peer, action),
            ClientMsg::SetRole { peer, role } => {
                // Only the host hands on the host role or changes co-hosts.
                if me != Role::Host {
                    return Err(ErrorCode::NotAllowed);
                }
                if peer == *id {
                    return Err(ErrorCode::NotAllowed);
                }
                let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
                let target = r.set_role(&peer, role).ok_or(ErrorCode::UnknownPeer)?;
                let mut changed = vec![target];
                if role == Role::Host {
                    changed.extend(r.set_role(id, Role::Cohost));
                }
                info!(peer = %id, target = %peer, ?role, "role changed");
                for p in changed {
                    self.broadcast(room, None, Arc::new(ServerMsg::PeerUpdated { peer: p }));
                }
                if role.moderates() {
                    self.send_recordings(&peer, room);
                }
                self.tell_hosts_waiting(room);
                Ok(())
            }
            ClientMsg::Admit { peer } => {
                let waiting_here = self.rooms.waiting_at(&peer) == Some(&door);
                if !waiting_here {
                    return Err(ErrorCode::UnknownPeer);
                }
                self.admit(&door, &peer);
                Ok(())
            }
            ClientMsg::Deny { peer } => {
                let waiting_here = self.rooms.waiting_at(&peer) == Some(&door);
                if !waiting_here {
                    return Err(ErrorCode::UnknownPeer);
                }
                self.leave_waiting_room(&peer);
                info!(peer = %id, target = %peer, "turned away from the waiting room");
                self.send(&peer, ServerMsg::error(ErrorCode::KnockDenied, Some("join")));
                Ok(())
            }
            ClientMsg::AdmitAll => {
                self.admit_all(&door);
                Ok(())
            }
            ClientMsg::Record => self.record(id, room),
            ClientMsg::StopRecording => self.stop_recording_by(id, room),
            ClientMsg::DeleteRecording { id: rec } => self.delete_recording(room, &rec),
            ClientMsg::EndMeeting => {
                if me != Role::Host {
                    return Err(ErrorCode::NotAllowed);
                }
                info!(peer = %id, "meeting ended by the host");
                self.end_meeting(room, None);
                Ok(())
            }
            ClientMsg::Invite { ttl_secs } => {
                let ttl = ttl_secs.unwrap_or(DEFAULT_INVITE_SECS).clamp(60, MAX_INVITE_SECS);
                let expires = unix_secs() + u64::from(ttl);
                let r = self.rooms.get(room).ok_or(ErrorCode::NotInRoom)?;
                let (rid, gen) = r.invite_key();
                let token = self.tokens.invite(room, rid, gen, expires);
                self.send(id, ServerMsg::InviteToken { token, expires });
                Ok(())
            }
            ClientMsg::RevokeInvites => {
                self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?.revoke_invites();
                info!(peer = %id, "invites revoked");
                self.tell_moderators(room, Arc::new(ServerMsg::InvitesRevoked { by: id.clone() }));
                Ok(())
            }
            // Everything else is handled before this is called.
            _ => Err(ErrorCode::BadMessage),
        }
    }

    pub(super) fn moderate(
        &mut self,
        id: &PeerId,
        me: Role,
        room: &Arc<str>,
        peer: &PeerId,
        action: ModAction,
    ) -> Result<(), ErrorCode> {
        let before = self.sfu_hold(peer);
        let was = self.rooms.get(room).and_then(|r| r.member(peer)).cloned();
        let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
        let target = r.role(peer).ok_or(ErrorCode::UnknownPeer)?;
        // Nobody acts on someone above them; nobody removes themselves this way.
        if target > me || (peer == id && matches!(action, ModAction::Remove | ModAction::Ban)) {
            return Err(ErrorCode::NotAllowed);
        }
        info!(peer = %id, target = %peer, ?action, "host action");
        let updated = match action {
            ModAction::Mute => r.hold(peer, Held { audio: true, ..Held::default() }),
            ModAction::StopVideo => r.hold(peer, Held { video: true, ..Held::default() }),
            ModAction::StopScreen => r.hold(peer, Held { screen: true, ..Held::default() }),
            ModAction::LowerHand => r.set_hand(peer, false),
            ModAction::Remove | ModAction::Ban => {
                if action == ModAction::Ban {
                    let keys = self.conns.get(peer).map(|c| c.keys.clone()).unwrap_or_default();
                    // From the meeting (its main room's door), wherever they were in it.
                    if let Some(r) = self.rooms.get_mut(breakout_meeting(room)) {
                        r.ban(&keys);
                    }
                }
                self.leave_room(peer, LeaveReason::Removed);
                let shown = breakout_meeting(room).to_string();
                self.send(peer, ServerMsg::Removed { room: shown, ban: action == ModAction::Ban });
                self.end_if_suspended(peer);
                return Ok(());
            }
        };
        if let Some(p) = updated {
            self.record_media(room, was.as_ref(), &p);
            // What a host turned off, the SFU no longer forwards, whatever the page sends.
            self.tell_sfu_hold(peer, before);
            self.broadcast(room, Some(peer), Arc::new(ServerMsg::PeerUpdated { peer: p }));
            self.send(peer, ServerMsg::Moderated { action, by: id.clone() });
        }
        Ok(())
    }
}
