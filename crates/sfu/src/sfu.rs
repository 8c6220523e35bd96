//! The core: all participants of all rooms, the demux table, and the output queue.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::api::{Event, Input, Offer, Output, PeerId, RemoveReason, SfuError, Signal};
use crate::demux::Demux;
use crate::peer::{Locals, Peer, Propagated, Sink};
use crate::record::Recorder;
use crate::speaker::Speakers;
use str0m::media::KeyframeRequestKind;

/// The sans-IO SFU. Feed it [`Input`]s, then take [`Output`]s with [`Sfu::poll_output`] until
/// `None`, then sleep until [`Sfu::poll_timeout`].
#[derive(Debug)]
pub struct Sfu {
    /// The UDP addresses participants send to, one host candidate each in every answer (a server
    /// bound on several interfaces, all on the same port). Each reply goes out from the address
    /// the participant talks to.
    locals: Vec<SocketAddr>,
    /// The addresses participants may open ICE-TCP connections to (RFC 6544 passive host
    /// candidates, less preferred than UDP); empty: UDP only.
    tcp_locals: Vec<SocketAddr>,
    peers: HashMap<PeerId, Peer>,
    rooms: HashMap<Arc<str>, HashSet<PeerId>>,
    demux: Demux,
    sink: Sink,
    /// Participants whose outgoing tracks may have changed since their last negotiation.
    dirty: HashSet<PeerId>,
    /// Participants whose handling set `failed` since the last settle.
    failing: Vec<PeerId>,
    /// Active-speaker detection per room (rooms where someone sent an audio level).
    speakers: HashMap<Arc<str>, Speakers>,
    /// Reused by `propagate` for the list of a room's other members.
    scratch: Vec<PeerId>,
    /// The latest time an input carried (for draining subscribers in `poll_output`).
    latest: Option<Instant>,
    /// Whether new participants get str0m's bandwidth estimate; see
    /// [`Sfu::set_bandwidth_estimation`].
    bwe: bool,
    /// What every ICE ufrag of this core starts with; see [`Sfu::set_ufrag_prefix`].
    ufrag_prefix: String,
    /// Rooms being recorded ([`Input::Record`]), by name.
    recordings: HashMap<Arc<str>, Recorder>,
    /// The last recorded track's number.
    recorded_tracks: u64,
}

impl Sfu {
    /// A core announcing one address: `with_addresses(vec![local])`.
    pub fn new(local: SocketAddr) -> Sfu {
        Sfu::with_addresses(vec![local])
    }

    /// A core announcing one host candidate per address, in this order (the first is the
    /// preferred one). Datagrams come in with `to` set to one of them, and each
    /// [`Output::Transmit`] names in `from` the address that participant talks to. Duplicates
    /// are ignored; an address str0m refuses as a candidate (unspecified, port 0) makes every
    /// join fail with [`SfuError::SdpRefused`].
    pub fn with_addresses(addrs: Vec<SocketAddr>) -> Sfu {
        let mut locals: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !locals.contains(&a) {
                locals.push(a);
            }
        }
        Sfu {
            locals,
            tcp_locals: Vec::new(),
            peers: HashMap::new(),
            rooms: HashMap::new(),
            demux: Demux::default(),
            sink: Sink::default(),
            dirty: HashSet::new(),
            failing: Vec::new(),
            speakers: HashMap::new(),
            scratch: Vec::new(),
            latest: None,
            bwe: true,
            ufrag_prefix: String::new(),
            recordings: HashMap::new(),
            recorded_tracks: 0,
        }
    }

    /// Every participant who joins from now on gets an ICE username fragment starting with
    /// `prefix` (ICE characters only: letters, digits, `+`, `/`). A server with several cores
    /// (one per worker) tells by it which core a connection is for before any core has seen it:
    /// an ICE-TCP connection on the shared HTTP port names it in its first STUN request
    /// ([`stun_local_ufrag`]).
    pub fn set_ufrag_prefix(&mut self, prefix: &str) {
        self.ufrag_prefix = prefix.to_string();
    }

    /// Announces, to participants who join from now on, a passive TCP host candidate (RFC 6544,
    /// `tcptype passive`) per address besides the UDP ones: for browsers whose UDP to the server
    /// is blocked. The driver accepts the connections, deframes them (RFC 4571) and feeds each
    /// packet as [`Input::Packet`] with [`crate::Transport::Tcp`] and `to` one of these; replies come as
    /// [`Output::Transmit`] with [`crate::Transport::Tcp`]. Empty (the default): UDP only.
    pub fn set_tcp_addresses(&mut self, addrs: Vec<SocketAddr>) {
        self.tcp_locals.clear();
        for a in addrs {
            if !self.tcp_locals.contains(&a) {
                self.tcp_locals.push(a);
            }
        }
    }

    /// On (the default): each participant who joins from now on gets str0m's bandwidth estimate
    /// of its downlink (from its browser's transport-wide congestion feedback), and the video
    /// layers it receives follow it besides the loss cap. Off: only the loss cap, and each
    /// forwarded packet costs less CPU, since str0m's pacer, which comes with the estimate,
    /// releases one packet per timeout (see the README's benchmark figures).
    pub fn set_bandwidth_estimation(&mut self, on: bool) {
        self.bwe = on;
    }

    /// Handles one input. An `Err` concerns only the participant it names; the others are
    /// unaffected and the core stays usable.
    pub fn handle_input(&mut self, input: Input) -> Result<(), SfuError> {
        let now = input.now();
        self.latest = Some(self.latest.map_or(now, |t| t.max(now)));
        let result = match input {
            Input::Join { now, room, peer, offer } => {
                if self.peers.contains_key(&peer) {
                    return Err(SfuError::AlreadyJoined(peer));
                }
                self.join(now, room, peer, offer)
            }
            Input::Restart { now, room, peer, offer } => self.join(now, room, peer, offer),
            Input::Leave { now, peer } => {
                if !self.peers.contains_key(&peer) {
                    return Err(SfuError::UnknownPeer(peer));
                }
                self.remove(now, peer, RemoveReason::Left);
                // The others stop its tracks now, not at their next datagram.
                self.settle(now);
                Ok(())
            }
            Input::Answer { now, peer, answer } => {
                let result =
                    self.with_peer(peer, |p, sink| p.answer(answer, sink)).unwrap_or(Err(SfuError::UnknownPeer(peer)));
                // Tracks that waited for this answer can go into the next offer.
                self.dirty.insert(peer);
                self.settle(now);
                result
            }
            Input::Packet { now, proto, from, to, bytes } => {
                let routed = self.demux.route(proto, from, &bytes);
                let accepted =
                    routed.and_then(|id| self.with_peer(id, |p, sink| p.packet(now, proto, from, to, &bytes, sink)));
                if accepted != Some(true) {
                    self.sink.out.push_back(Output::Event(Event::Dropped { proto, from }));
                }
                self.settle(now);
                Ok(())
            }
            Input::Receive { now, peer, publisher, video } => {
                // A resumed video restarts at a keyframe, asked for by its next packet.
                self.with_peer(peer, |p, _| p.set_wanted(publisher, video)).ok_or(SfuError::UnknownPeer(peer))?;
                self.settle(now);
                Ok(())
            }
            Input::Hold { now, peer, audio, video } => {
                let p = self.peers.get_mut(&peer).ok_or(SfuError::UnknownPeer(peer))?;
                p.state.audio_held = audio;
                let lifted = std::mem::replace(&mut p.state.video_held, video) && !video;
                if lifted {
                    self.resume_video(now, peer);
                }
                Ok(())
            }
            Input::Record { now, room, on } => {
                self.record(now, room, on);
                Ok(())
            }
            Input::Timeout(now) => {
                // A scan per timeout, not per packet; a deadline heap can replace it later.
                let due: Vec<PeerId> =
                    self.peers.iter().filter(|(_, p)| p.state.next_timeout <= now).map(|(id, _)| *id).collect();
                for id in due {
                    self.with_peer(id, |p, sink| p.timeout(now, sink));
                }
                self.settle(now);
                Ok(())
            }
        };
        result
    }

    /// The next output for the driver, in order. Poll until `None` after a batch of inputs (one
    /// or many): the packets forwarded to each subscriber during the batch go out then, in one
    /// drain of its `Rtc` per batch rather than one per packet.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.sink.out.is_empty() && !self.sink.undrained.is_empty() {
            self.drain_subscribers();
        }
        self.sink.out.pop_front()
    }

    /// The earliest time any participant needs [`Input::Timeout`]; `None` with no participants.
    /// Valid once [`Sfu::poll_output`] has returned `None`; before that, "now" if packets wait
    /// to be drained.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.peers.values().map(|p| p.state.next_timeout).min();
        match (self.sink.undrained.is_empty(), self.latest) {
            (false, Some(latest)) => next.map(|t| t.min(latest)),
            _ => next,
        }
    }

    /// Drains every subscriber [`crate::peer::Peer::forward`] wrote to since its last drain.
    fn drain_subscribers(&mut self) {
        let Some(now) = self.latest else { return };
        while !self.sink.undrained.is_empty() {
            for id in std::mem::take(&mut self.sink.undrained) {
                self.with_peer(id, |p, sink| p.drain(sink));
            }
            // A drain can fail a participant or bring its keyframe requests out.
            self.settle(now);
        }
    }

    /// The latest estimate (bit/s) of what `peer`'s downlink carries, from its browser's
    /// transport-wide congestion feedback; `None` before the first one or for an unknown peer.
    pub fn downlink_estimate(&self, peer: PeerId) -> Option<u64> {
        self.peers.get(&peer)?.state.estimate
    }

    /// RTP packets forwarded to subscribers since the start (one per subscriber), and their
    /// payload bytes.
    pub fn forwarded(&self) -> (u64, u64) {
        (self.sink.forwarded_packets, self.sink.forwarded_bytes)
    }

    /// How many participants the core holds.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Starts or stops recording `room`; see [`Input::Record`].
    fn record(&mut self, now: Instant, room: String, on: bool) {
        let key: Arc<str> =
            self.rooms.get_key_value(room.as_str()).map(|(k, _)| k.clone()).unwrap_or_else(|| room.into());
        if !on {
            if let Some(recorder) = self.recordings.remove(&key) {
                recorder.finish(now, &mut self.sink.out);
            }
            return;
        }
        if self.recordings.contains_key(&key) {
            return;
        }
        self.recordings.insert(key.clone(), Recorder::new(key.clone(), now));
        // Every video starts at a keyframe: ask each publisher now rather than wait for one.
        let members: Vec<PeerId> = self.rooms.get(&key).map(|m| m.iter().copied().collect()).unwrap_or_default();
        for id in members {
            self.with_peer(id, |peer, sink| peer.refresh_video(now, sink));
        }
        self.settle(now);
    }

    /// A new session for `id` from its offer, replacing the one it has, if any. The new peer is
    /// built aside (with a sink of its own) first, so a refused offer changes nothing.
    fn join(&mut self, now: Instant, room: String, id: PeerId, offer: Offer) -> Result<(), SfuError> {
        let room: Arc<str> =
            self.rooms.get_key_value(room.as_str()).map(|(k, _)| k.clone()).unwrap_or_else(|| room.into());
        let locals = Locals { udp: &self.locals, tcp: &self.tcp_locals, ufrag_prefix: &self.ufrag_prefix };
        let mut aside = Sink::default();
        let joined = contained(|| Peer::join(now, id, room.clone(), offer, locals, self.bwe, &mut aside));
        let (mut peer, answer, creds) = match joined {
            Some(result) => result?,
            None => return Err(SfuError::SdpRefused { peer: id, reason: "panicked on the offer".into() }),
        };
        if self.peers.contains_key(&id) {
            // The old session goes (its tracks stop for the others) before the new one's arrive.
            self.remove(now, id, RemoveReason::Left);
        }
        self.sink.out.extend(aside.out);
        self.sink.propagated.extend(aside.propagated);
        self.sink.undrained.extend(aside.undrained);
        self.sink.forwarded_packets += aside.forwarded_packets;
        self.sink.forwarded_bytes += aside.forwarded_bytes;
        self.sink.out.push_back(Output::Signal { peer: id, signal: Signal::Answer(answer) });
        // The newcomer receives every track already published in its room.
        let members = self.rooms.entry(room).or_default();
        for other in members.iter().filter_map(|m| self.peers.get(m)) {
            for (track, _) in &other.state.tracks_in {
                peer.add_track_out(Arc::downgrade(track));
            }
        }
        members.insert(id);
        self.demux.add_ufrag(creds.ufrag, creds.pass, id);
        self.peers.insert(id, peer);
        self.dirty.insert(id);
        self.settle(now);
        Ok(())
    }

    /// Runs `f` on one participant with panics contained: a panic removes that participant only.
    /// `None` when the participant is unknown or panicked.
    fn with_peer<R>(&mut self, id: PeerId, f: impl FnOnce(&mut Peer, &mut Sink) -> R) -> Option<R> {
        let peer = self.peers.get_mut(&id)?;
        let sink = &mut self.sink;
        let result = contained(|| f(peer, sink));
        if result.is_none() {
            peer.state.failed.get_or_insert(RemoveReason::Panicked);
        }
        if peer.state.failed.is_some() {
            self.failing.push(id);
        }
        result
    }

    /// After any input: deliver what participants produced for each other, remove failed
    /// participants, and renegotiate where tracks changed, until nothing is left to do. Only the
    /// participants concerned are visited (`failing`, `dirty`), never all of them per datagram.
    fn settle(&mut self, now: Instant) {
        loop {
            while let Some((from, p)) = self.sink.propagated.pop_front() {
                self.propagate(now, from, p);
            }
            for id in std::mem::take(&mut self.failing) {
                if let Some(reason) = self.peers.get(&id).and_then(|p| p.state.failed.clone()) {
                    self.remove(now, id, reason);
                }
            }
            for id in std::mem::take(&mut self.dirty) {
                self.with_peer(id, |p, sink| p.negotiate(sink));
            }
            if self.sink.propagated.is_empty() && self.failing.is_empty() && self.dirty.is_empty() {
                break;
            }
        }
    }

    /// `publisher`'s video hold lifted: every subscriber restarts its video at a keyframe, which
    /// the publisher is asked for at once.
    fn resume_video(&mut self, now: Instant, publisher: PeerId) {
        let Some(room) = self.peers.get(&publisher).map(|p| p.state.room.clone()) else { return };
        let mut others = std::mem::take(&mut self.scratch);
        others.clear();
        if let Some(members) = self.rooms.get(&room) {
            others.extend(members.iter().copied().filter(|id| *id != publisher));
        }
        for &id in &others {
            self.with_peer(id, |peer, _| peer.restart_video(publisher));
        }
        self.scratch = others;
        self.with_peer(publisher, |peer, sink| peer.refresh_video(now, sink));
        self.settle(now);
    }

    fn propagate(&mut self, now: Instant, from: PeerId, p: Propagated) {
        if let Propagated::KeyframeRequest { origin, mid_in, rid, kind } = p {
            self.with_peer(origin, |peer, sink| peer.request_keyframe(now, mid_in, rid, kind, sink));
            return;
        }
        let Some(room) = self.peers.get(&from).map(|p| p.state.room.clone()) else { return };
        if let Propagated::Rtp(packet) = &p {
            if let Some(level) = packet.audio_level {
                let speakers = self.speakers.entry(room.clone()).or_default();
                if let Some(peer) = speakers.observe(now, from, level, packet.voice_activity) {
                    let event = Event::ActiveSpeaker { room: room.to_string(), peer };
                    self.sink.out.push_back(Output::Event(event));
                }
            }
        }
        // (No lookup per packet while nothing records, the usual case.)
        let recorder = if self.recordings.is_empty() { None } else { self.recordings.get_mut(&room) };
        if let (Propagated::Rtp(packet), Some(recorder)) = (&p, recorder) {
            let mut asks = Vec::new();
            let peers = &self.peers;
            let source = || {
                peers
                    .get(&from)
                    .and_then(|p| p.state.tracks_in.iter().find(|(t, _)| t.mid == packet.mid))
                    .map(|(t, _)| Arc::downgrade(t))
                    .unwrap_or_default()
            };
            recorder.packet(now, from, packet, source, &mut self.recorded_tracks, &mut self.sink.out, &mut asks);
            for (origin, mid_in, rid) in asks {
                let kind = KeyframeRequestKind::Pli;
                self.sink.propagated.push_back((origin, Propagated::KeyframeRequest { origin, mid_in, rid, kind }));
            }
        }
        // The room's other members, in a buffer kept between packets (no allocation per packet).
        let mut others = std::mem::take(&mut self.scratch);
        others.clear();
        if let Some(members) = self.rooms.get(&room) {
            others.extend(members.iter().copied().filter(|id| *id != from));
        }
        for &id in &others {
            match &p {
                Propagated::TrackOpen(track) => {
                    self.with_peer(id, |peer, _| peer.add_track_out(track.clone()));
                    self.dirty.insert(id);
                }
                Propagated::Rtp(packet) => {
                    self.with_peer(id, |peer, sink| peer.forward(from, packet, sink));
                }
                Propagated::KeyframeRequest { .. } => {}
            }
        }
        self.scratch = others;
    }

    fn remove(&mut self, now: Instant, id: PeerId, reason: RemoveReason) {
        let Some(peer) = self.peers.remove(&id) else { return };
        // Dropping the peer drops its published tracks' only `Arc`s; subscribers see their
        // `Weak`s die and stop those tracks in their next negotiation (in `settle`).
        if let Some(members) = self.rooms.get_mut(&peer.state.room) {
            members.remove(&id);
            for m in members.iter() {
                if let Some(p) = self.peers.get_mut(m) {
                    p.state.wanted.remove(&id);
                    // Its tracks of the one who left must be stopped.
                    self.dirty.insert(*m);
                }
            }
            if members.is_empty() {
                self.rooms.remove(&peer.state.room);
            }
        }
        if let Some(recorder) = self.recordings.get_mut(&peer.state.room) {
            recorder.peer_gone(now, id, &mut self.sink.out);
        }
        if let Some(speakers) = self.speakers.get_mut(&peer.state.room) {
            speakers.remove(id);
            if speakers.is_empty() || !self.rooms.contains_key(&peer.state.room) {
                self.speakers.remove(&peer.state.room);
            }
        }
        self.demux.remove_peer(id);
        drop(peer);
        self.sink.out.push_back(Output::Event(Event::Removed { peer: id, reason }));
    }
}

/// Runs `f`, turning a panic into `None` (str0m's rule is "a panic is a bug"; one participant's
/// bug must not take the others down).
fn contained<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}
