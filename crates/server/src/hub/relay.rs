//! The hub's side of the TURN relay: credentials that come with a place in a room, their
//! renewal and revocation, and the connectivity check's credential.

use super::*;

impl Hub {
    /// Hands out credentials of the built-in TURN server (whose task `commands` reaches) with the
    /// ICE servers of everyone in a room.
    pub fn set_turn(&mut self, turn: TurnHandle, commands: mpsc::WeakSender<TurnCommand>) {
        self.turn = Some((turn, commands));
    }

    /// The configured ICE servers, then the built-in STUN/TURN server with the credentials of
    /// `id`'s relay user (if it has one: it is in a room).
    pub(super) fn ice_servers(&self, id: &PeerId) -> Vec<IceServer> {
        let mut out = self.config.ice_servers.clone();
        let conn = self.conns.get(id);
        if let (Some((turn, _)), Some(user)) = (&self.turn, conn.and_then(|c| c.turn_user.as_deref())) {
            out.push(turn.ice_servers(user, conn.and_then(|c| c.host.as_deref()), self.turn_fallback_host()));
        }
        out
    }

    /// Where pages reach the TURN server when their `Host` header named nothing usable.
    pub(super) fn turn_fallback_host(&self) -> IpAddr {
        let listen = self.config.listen.ip();
        if listen.is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            listen
        }
    }

    pub(super) fn tell_turn(&mut self, cmd: TurnCommand) {
        let Some(tx) = self.turn.as_ref().and_then(|(_, tx)| tx.upgrade()) else { return };
        if let Err(e) = tx.try_send(cmd) {
            // Sized for every join and leave at once; a lost grant refuses that session the relay
            // (401), a lost revocation leaves its relays until their lifetime or its next session.
            warn!(cmd = ?e.into_inner(), "TURN command queue full; a command was dropped");
        }
    }

    /// Gives `id` (entering a room) a relay user of its own, granted to the TURN server until it
    /// leaves ([`Hub::end_relay`]), and the time to renew its credentials.
    pub(super) fn start_relay(&mut self, id: &PeerId) {
        let Some((turn, _)) = &self.turn else { return };
        let renew = Instant::now() + turn.credential_ttl / 2;
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.ice_renew = Some(renew);
        let granted = conn.turn_user.is_some();
        if !granted {
            let user = crate::turn::session_user();
            conn.turn_user = Some(user.clone());
            self.tell_turn(TurnCommand::Grant { users: vec![user] });
        }
        self.wake_at(id, renew);
    }

    /// `id` left its room: its relay credentials are dead and its relays close.
    pub(super) fn end_relay(&mut self, id: &PeerId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.ice_renew = None;
        if let Some(user) = conn.turn_user.take() {
            self.tell_turn(TurnCommand::Revoke { user });
        }
    }

    /// Sends `id` fresh credentials for its ICE servers (`ice_servers`) and sets the next renewal.
    pub(super) fn renew_relay(&mut self, id: &PeerId, now: Instant) {
        let Some((turn, _)) = &self.turn else { return };
        let next = now + turn.credential_ttl / 2;
        let ice_servers = self.ice_servers(id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.ice_renew = Some(next);
            self.wake_at(id, next);
        }
        self.send(id, ServerMsg::IceServers { ice_servers });
    }

    /// A credential for the connectivity check: huddle's TURN server with a `c.` user that
    /// allocates and relays nothing (an empty list without a TURN server). With
    /// `--require-token`, outside a room, only for a token valid for `room`.
    pub(super) fn relay_check(
        &mut self,
        id: &PeerId,
        room: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), ErrorCode> {
        let in_room = self.rooms.room_of(id).is_some();
        if self.config.require_token && !in_room {
            let room =
                room.and_then(|r| validate::label(r, self.config.max_room_chars)).ok_or(ErrorCode::TokenRequired)?;
            let token = token.filter(|t| !t.is_empty()).ok_or(ErrorCode::TokenRequired)?;
            self.tokens.verify(token, &room, unix_secs())?;
        }
        let ice_servers = match &self.turn {
            Some((turn, _)) => {
                let host = self.conns.get(id).and_then(|c| c.host.as_deref());
                vec![turn.check_servers(host, self.turn_fallback_host())]
            }
            None => Vec::new(),
        };
        self.send(id, ServerMsg::CheckIceServers { ice_servers });
        Ok(())
    }
}
