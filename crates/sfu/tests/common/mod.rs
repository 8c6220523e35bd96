//! The simulated network: str0m clients standing in for browsers, wired to the SFU core in
//! memory, on a virtual clock, with optional loss and rate-limited links. Nothing sleeps and
//! nothing opens a socket.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_sfu::str0m::change::SdpPendingOffer;
use huddle_sfu::str0m::change::{SdpAnswer, SdpOffer};
use huddle_sfu::str0m::format::Codec;
use huddle_sfu::str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer,
};
use huddle_sfu::str0m::net::{Protocol, Receive};
use huddle_sfu::str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};
use huddle_sfu::{Event, Input, Output, PeerId, Sfu, Signal, Transport};

pub const SFU_ADDR: &str = "10.0.0.1:3478";
/// Frames are written every 20 ms by every publishing client.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// One-way delay of every datagram.
pub const LATENCY: Duration = Duration::from_millis(5);
/// The most a rate-limited link ([`World::rate_to`]) queues before it drops, like a router's
/// buffer in front of a slow line.
pub const LINK_QUEUE: Duration = Duration::from_millis(1000);

/// A browser stand-in.
pub struct Client {
    pub id: PeerId,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub next_timeout: Instant,
    pub connected: bool,
    /// Our own sending m-lines.
    pub sending: Vec<(Mid, MediaKind)>,
    /// Frames received, per mid of ours (the mid the SFU chose for that track).
    pub received: HashMap<Mid, usize>,
    /// Media added by the SFU's offers, and whether it is still active.
    pub incoming: HashMap<Mid, MediaKind>,
    /// The core's ICE ufrag for this client (from its answer).
    pub sfu_ufrag: String,
    /// The core's answer to its join offer.
    pub sfu_answer: String,
    /// The publisher of each incoming mid, from its stream id (`p<id>`, as the core names it).
    pub origin: HashMap<Mid, u64>,
    /// Simulcast layers of its video, lowest first (empty: no simulcast).
    pub layers: Vec<Rid>,
    /// Each layer's frame size in bytes, lowest first, like a real encoder's layers (empty: all
    /// the size of [`synthetic_frame`]'s).
    pub layer_bytes: Vec<usize>,
    /// Video frames received per (incoming mid, last payload byte: the sender's layer tag).
    pub video_tags: HashMap<(Mid, u8), usize>,
    /// The last frame's tag per incoming video mid, and how often a frame's time went backwards.
    pub last_tag: HashMap<Mid, u8>,
    last_time: HashMap<Mid, MediaTime>,
    pub time_backwards: usize,
    /// Video frames that did not follow the previous one (a gap in the sequence numbers, as the
    /// client's depacketizer saw it).
    pub video_gaps: usize,
    /// Like a browser whose decoder lost track: ask for a keyframe (PLI) on every video frame
    /// that does not follow the previous one.
    pub asks_keyframes: bool,
    /// Keyframe requests this client sent as a subscriber (PLI on a gap).
    pub keyframe_requests_sent: usize,
    /// Keyframe requests it received as a publisher, from the core: (when, its mid, kind).
    pub keyframe_requests: Vec<(Instant, Mid, KeyframeRequestKind)>,
    /// Video keyframes received.
    pub keyframes_received: usize,
    /// The audio level (dBov) its audio frames carry, like a browser's microphone; `None`: no
    /// level extension written.
    pub audio_level: Option<i8>,
    /// The last audio level received per incoming mid.
    pub levels_received: HashMap<Mid, i8>,
    /// Keep the core's offers unanswered until [`World::answer_held`] (a slow page).
    pub hold_offers: bool,
    /// Offers from the core not answered yet, oldest first.
    pub held: Vec<String>,
    /// Offers received from the core in all, and the most ever unanswered at once.
    pub offers_received: usize,
    pub most_held: usize,
    /// The next video frame it sends is a keyframe (a request came in).
    force_keyframe: bool,
    pending: Option<SdpPendingOffer>,
    next_frame: Instant,
    frame_count: u64,
}

struct InFlight {
    at: Instant,
    /// UDP, or one frame of an ICE-TCP connection (the simulation needs no connection: the
    /// frames carry the same packets, tagged).
    proto: Transport,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The whole simulated world.
pub struct World {
    pub start: Instant,
    pub now: Instant,
    pub sfu: Sfu,
    /// The core's first (preferred) address.
    pub sfu_addr: SocketAddr,
    /// Every address the core announces.
    pub sfu_addrs: Vec<SocketAddr>,
    /// The core's ICE-TCP addresses ([`World::with_tcp`]); empty: UDP only.
    pub sfu_tcp_addrs: Vec<SocketAddr>,
    /// Clients (by id) that join with a TCP candidate only, as a browser whose UDP is blocked.
    pub tcp_clients: Vec<u64>,
    /// Datagrams the core sent over ICE-TCP.
    pub sfu_sent_tcp: usize,
    /// Datagrams the core sent, per (its source address, destination).
    pub sfu_sent: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Links that drop everything, both ways: (client address, core address).
    pub blocked: Vec<(SocketAddr, SocketAddr)>,
    /// Wall time spent inside the core's `handle_input` and `poll_output`.
    pub core_wall: Duration,
    /// The same, and the number of calls, split into timeouts, datagrams, the other inputs and
    /// `poll_output` (where the subscribers packets were forwarded to are drained).
    pub core_wall_by: [Duration; 4],
    pub core_calls_by: [usize; 4],
    pub clients: Vec<Client>,
    /// Every event the core reported.
    pub events: Vec<Event>,
    /// What recording rooms produced ([`huddle_sfu::Input::Record`]), in order.
    pub recorded: Vec<huddle_sfu::Recorded>,
    /// Fraction of datagrams lost, both directions (0.0..1.0).
    pub loss: f64,
    /// Extra loss on the datagrams sent to one address (a subscriber's downlink), on top of `loss`.
    pub loss_to: HashMap<SocketAddr, f64>,
    /// A bottleneck on the datagrams sent to one address (a subscriber's downlink), in bit/s:
    /// they leave one after another at this rate, queue up to [`LINK_QUEUE`], and beyond it are
    /// dropped (counted in `link_drops`).
    pub rate_to: HashMap<SocketAddr, u64>,
    pub link_drops: usize,
    busy_until: HashMap<SocketAddr, Instant>,
    rng: u64,
    flight: VecDeque<InFlight>,
}

impl World {
    pub fn new() -> World {
        let sfu_addr: SocketAddr = SFU_ADDR.parse().expect("literal address");
        let mut w = World::with_addresses(vec![sfu_addr]);
        w.sfu = Sfu::new(sfu_addr);
        w
    }

    /// A world whose core announces several addresses (a server on several interfaces).
    pub fn with_addresses(sfu_addrs: Vec<SocketAddr>) -> World {
        let now = Instant::now();
        World {
            start: now,
            now,
            sfu: Sfu::with_addresses(sfu_addrs.clone()),
            sfu_addr: sfu_addrs[0],
            sfu_addrs,
            sfu_tcp_addrs: Vec::new(),
            tcp_clients: Vec::new(),
            sfu_sent_tcp: 0,
            sfu_sent: HashMap::new(),
            blocked: Vec::new(),
            core_wall: Duration::ZERO,
            core_wall_by: [Duration::ZERO; 4],
            core_calls_by: [0; 4],
            clients: Vec::new(),
            events: Vec::new(),
            recorded: Vec::new(),
            loss: 0.0,
            loss_to: HashMap::new(),
            rate_to: HashMap::new(),
            link_drops: 0,
            busy_until: HashMap::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            flight: VecDeque::new(),
        }
    }

    /// The core also announces ICE-TCP (passive) candidates on these addresses.
    pub fn with_tcp(mut self, addrs: Vec<SocketAddr>) -> World {
        self.sfu.set_tcp_addresses(addrs.clone());
        self.sfu_tcp_addrs = addrs;
        self
    }

    /// A client joins `room`, publishing one track of each `kind`. Returns the core's verdict.
    pub fn join(&mut self, room: &str, id: u64, publish: &[MediaKind]) -> Result<(), huddle_sfu::SfuError> {
        self.join_with_layers(room, id, publish, &[])
    }

    /// Like [`World::join`], with its video sent as simulcast `layers` (lowest first). Each
    /// layer's frames end with the layer's number (1 for the lowest).
    pub fn join_with_layers(
        &mut self,
        room: &str,
        id: u64,
        publish: &[MediaKind],
        layers: &[&str],
    ) -> Result<(), huddle_sfu::SfuError> {
        let addr: SocketAddr = format!("10.0.1.{}:5000", id).parse().expect("valid address");
        let mut rtc = Rtc::builder().build(self.now);
        let proto = if self.tcp_clients.contains(&id) { Protocol::Tcp } else { Protocol::Udp };
        rtc.add_local_candidate(Candidate::host(addr, proto).expect("host candidate"));
        let mut change = rtc.sdp_api();
        let simulcast = || {
            let mut s = Simulcast::new();
            for l in layers {
                s.add_send_layer(SimulcastLayer::new(l));
            }
            s
        };
        let sending: Vec<(Mid, MediaKind)> = publish
            .iter()
            .map(|k| {
                let sc = (*k == MediaKind::Video && !layers.is_empty()).then(simulcast);
                (change.add_media(*k, Direction::SendOnly, None, None, sc), *k)
            })
            .collect();
        if sending.is_empty() {
            change.add_channel("huddle".into());
        }
        let (offer, pending) = change.apply().expect("an offer with changes");
        let client = Client {
            id: PeerId(id),
            addr,
            rtc,
            next_timeout: self.now,
            connected: false,
            sending,
            received: HashMap::new(),
            incoming: HashMap::new(),
            origin: HashMap::new(),
            sfu_ufrag: String::new(),
            sfu_answer: String::new(),
            layers: layers.iter().map(|l| Rid::from(*l)).collect(),
            layer_bytes: Vec::new(),
            video_tags: HashMap::new(),
            last_tag: HashMap::new(),
            last_time: HashMap::new(),
            time_backwards: 0,
            video_gaps: 0,
            asks_keyframes: false,
            keyframe_requests_sent: 0,
            keyframe_requests: Vec::new(),
            keyframes_received: 0,
            force_keyframe: false,
            hold_offers: false,
            audio_level: None,
            levels_received: HashMap::new(),
            held: Vec::new(),
            offers_received: 0,
            most_held: 0,
            pending: Some(pending),
            next_frame: self.now,
            frame_count: 0,
        };
        self.clients.push(client);
        let input =
            Input::Join { now: self.now, room: room.into(), peer: PeerId(id), offer: offer.to_sdp_string().into() };
        let result = self.core(input);
        self.drain_sfu();
        result
    }

    /// Hands the core a `Join` with this SDP as the offer, for a participant with no client in
    /// the world (bad-input tests). Returns the core's verdict.
    pub fn join_sdp(&mut self, room: &str, id: u64, offer_sdp: String) -> Result<(), huddle_sfu::SfuError> {
        let result =
            self.core(Input::Join { now: self.now, room: room.into(), peer: PeerId(id), offer: offer_sdp.into() });
        self.drain_sfu();
        result
    }

    pub fn leave(&mut self, id: u64) {
        self.clients.retain(|c| c.id != PeerId(id));
        self.core(Input::Leave { now: self.now, peer: PeerId(id) }).expect("a known participant leaves");
        self.drain_sfu();
    }

    /// Client `id` vanishes from the network without a word to the core (its machine slept, its
    /// Wi-Fi dropped): it is gone from the world and nothing it sent or would send arrives.
    pub fn go_silent(&mut self, id: u64) {
        let Some(i) = self.clients.iter().position(|c| c.id == PeerId(id)) else { return };
        let addr = self.clients.remove(i).addr;
        self.flight.retain(|p| p.from != addr);
    }

    /// Hands the core one input, counting the wall time it takes (the core's own cost, apart
    /// from the simulated clients').
    pub fn core(&mut self, input: Input) -> Result<(), huddle_sfu::SfuError> {
        let kind = match &input {
            Input::Timeout(_) => 0,
            Input::Packet { .. } => 1,
            _ => 2,
        };
        let t = std::time::Instant::now();
        let r = self.sfu.handle_input(input);
        self.core_wall += t.elapsed();
        self.core_wall_by[kind] += t.elapsed();
        self.core_calls_by[kind] += 1;
        r
    }

    pub fn client(&self, id: u64) -> &Client {
        self.clients.iter().find(|c| c.id == PeerId(id)).expect("a client with this id")
    }

    /// The simulcast layer tag of the last video frame client `id` received (its first
    /// incoming video), for scenarios about layer choice.
    #[allow(dead_code)] // used by the simulcast scenarios only
    pub fn last_video_tag(&self, id: u64) -> Option<u8> {
        let c = self.client(id);
        let mid = c.incoming.iter().find(|(_, k)| **k == MediaKind::Video).map(|(m, _)| *m)?;
        c.last_tag.get(&mid).copied()
    }

    #[allow(dead_code)] // not every scenario changes its clients
    pub fn client_mut(&mut self, id: u64) -> &mut Client {
        self.clients.iter_mut().find(|c| c.id == PeerId(id)).expect("a client with this id")
    }

    /// Runs the world for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.progress();
        }
    }

    /// Runs until `cond` holds, at most `limit` of virtual time; true when it held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&World) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if cond(self) {
                return true;
            }
            self.progress();
        }
        cond(self)
    }

    /// One step: handle everything due now, then advance the clock to the earliest deadline
    /// (at least 1 ms, so that a deadline in the past cannot stall the world).
    pub fn progress(&mut self) {
        let now = self.now;
        // Like the server's driver: every datagram that is due goes in, then the core is
        // drained once (it drains each subscriber once per batch).
        while let Some(pos) = self.flight.iter().position(|p| p.at <= now) {
            let p = self.flight.remove(pos).expect("position is in range");
            self.deliver(p);
        }
        self.drain_sfu();
        if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.core(Input::Timeout(now)).expect("timeouts never fail");
            self.drain_sfu();
        }
        for i in 0..self.clients.len() {
            if self.clients[i].next_timeout <= now {
                let c = &mut self.clients[i];
                c.rtc.handle_input(RtcInput::Timeout(now)).expect("client handles timeout");
                self.drain_client(i);
            }
            self.write_frames(i);
        }
        let mut next = now + FRAME_INTERVAL;
        next = next.min(self.sfu.poll_timeout().unwrap_or(next));
        for c in &self.clients {
            next = next.min(c.next_timeout).min(c.next_frame);
        }
        for p in &self.flight {
            next = next.min(p.at);
        }
        self.now = next.max(now + Duration::from_millis(1));
    }

    fn lost(&mut self, to: SocketAddr) -> bool {
        let loss = self.loss.max(self.loss_to.get(&to).copied().unwrap_or(0.0));
        if loss <= 0.0 {
            return false;
        }
        // xorshift64: deterministic loss.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 10_000) as f64 / 10_000.0 < loss
    }

    fn send(&mut self, proto: Transport, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if self.blocked.iter().any(|(c, s)| (*c, *s) == (from, to) || (*s, *c) == (from, to)) {
            return;
        }
        if self.lost(to) {
            return;
        }
        let mut at = self.now + LATENCY;
        if let Some(&rate) = self.rate_to.get(&to) {
            let start = self.busy_until.get(&to).copied().unwrap_or(self.now).max(self.now);
            if start.saturating_duration_since(self.now) > LINK_QUEUE {
                self.link_drops += 1;
                return;
            }
            // IP and UDP headers count too.
            let bits = (bytes.len() as u64 + 28) * 8;
            let done = start + Duration::from_micros(bits * 1_000_000 / rate.max(1));
            self.busy_until.insert(to, done);
            at = done + LATENCY;
        }
        // Kept in order of arrival: `progress` delivers the first due.
        let pos = self.flight.iter().rposition(|p| p.at <= at).map_or(0, |i| i + 1);
        self.flight.insert(pos, InFlight { at, proto, from, to, bytes });
    }

    /// Puts a raw datagram on the wire, as if sent from `from` (for bad-input tests).
    pub fn inject(&mut self, from: SocketAddr, bytes: Vec<u8>) {
        let to = self.sfu_addr;
        self.flight.push_back(InFlight { at: self.now, proto: Transport::Udp, from, to, bytes });
    }

    fn deliver(&mut self, p: InFlight) {
        let to_sfu = match p.proto {
            Transport::Udp => self.sfu_addrs.contains(&p.to),
            Transport::Tcp => self.sfu_tcp_addrs.contains(&p.to),
        };
        if to_sfu {
            let input = Input::Packet { now: self.now, proto: p.proto, from: p.from, to: p.to, bytes: p.bytes };
            self.core(input).expect("packets never fail");
            return;
        }
        let Some(i) = self.clients.iter().position(|c| c.addr == p.to) else { return };
        let Ok(contents) = p.bytes.as_slice().try_into() else { return };
        let proto = if p.proto == Transport::Tcp { Protocol::Tcp } else { Protocol::Udp };
        let receive = Receive { proto, source: p.from, destination: p.to, contents };
        let now = self.now;
        self.clients[i].rtc.handle_input(RtcInput::Receive(now, receive)).expect("client accepts the packet");
        self.drain_client(i);
    }

    pub fn drain_sfu(&mut self) {
        loop {
            let t = std::time::Instant::now();
            let out = self.sfu.poll_output();
            self.core_wall += t.elapsed();
            self.core_wall_by[3] += t.elapsed();
            self.core_calls_by[3] += 1;
            let Some(out) = out else { break };
            match out {
                Output::Transmit { proto, from, to, bytes } => {
                    *self.sfu_sent.entry((from, to)).or_default() += 1;
                    if proto == Transport::Tcp {
                        self.sfu_sent_tcp += 1;
                    }
                    self.send(proto, from, to, bytes)
                }
                Output::Signal { peer, signal } => self.signal(peer, signal),
                Output::Event(e) => self.events.push(e),
                Output::Record(r) => self.recorded.push(r),
            }
        }
    }

    fn signal(&mut self, peer: PeerId, signal: Signal) {
        let Some(i) = self.clients.iter().position(|c| c.id == peer) else { return };
        match signal {
            Signal::Answer(sdp) => {
                let ufrag = sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).unwrap_or_default();
                self.clients[i].sfu_ufrag = ufrag.trim().to_string();
                self.clients[i].sfu_answer = sdp.clone();
                let answer = SdpAnswer::from_sdp_string(&sdp).expect("the core's answer parses");
                let pending = self.clients[i].pending.take().expect("an offer was outstanding");
                self.clients[i].rtc.sdp_api().accept_answer(pending, answer).expect("client accepts the answer");
                self.drain_client(i);
            }
            Signal::Offer(sdp) => {
                let c = &mut self.clients[i];
                c.offers_received += 1;
                if c.hold_offers || !c.held.is_empty() {
                    c.held.push(sdp);
                    c.most_held = c.most_held.max(c.held.len());
                    return;
                }
                self.answer_offer(i, sdp);
            }
        }
    }

    /// Client `id` answers the oldest offer it held back. False when it held none.
    pub fn answer_held(&mut self, id: u64) -> bool {
        let Some(i) = self.clients.iter().position(|c| c.id == PeerId(id)) else { return false };
        if self.clients[i].held.is_empty() {
            return false;
        }
        let sdp = self.clients[i].held.remove(0);
        self.answer_offer(i, sdp);
        true
    }

    fn answer_offer(&mut self, i: usize, sdp: String) {
        let peer = self.clients[i].id;
        let offer = SdpOffer::from_sdp_string(&sdp).expect("the core's offer parses");
        let answer = self.clients[i].rtc.sdp_api().accept_offer(offer).expect("client accepts the offer");
        self.drain_client(i);
        let input = Input::Answer { now: self.now, peer, answer: answer.to_sdp_string().into() };
        self.core(input).expect("the core accepts the answer");
        self.drain_sfu();
    }

    fn drain_client(&mut self, i: usize) {
        let now = self.now;
        loop {
            let out = self.clients[i].rtc.poll_output().expect("client poll_output");
            match out {
                RtcOutput::Timeout(t) => {
                    self.clients[i].next_timeout = t;
                    return;
                }
                RtcOutput::Transmit(t) => {
                    let proto = if t.proto == Protocol::Udp { Transport::Udp } else { Transport::Tcp };
                    self.send(proto, t.source, t.destination, t.contents.to_vec())
                }
                RtcOutput::Event(e) => {
                    let c = &mut self.clients[i];
                    match e {
                        RtcEvent::Connected => c.connected = true,
                        RtcEvent::MediaAdded(m) if m.direction.is_receiving() => {
                            c.incoming.insert(m.mid, m.kind);
                            let stream = c.rtc.media(m.mid).map(|media| media.stream_id().to_string());
                            if let Some(p) = stream.and_then(|s| s.strip_prefix('p')?.parse().ok()) {
                                c.origin.insert(m.mid, p);
                            }
                        }
                        RtcEvent::MediaChanged(m) if !m.direction.is_receiving() => {
                            // The SFU stopped this track (its publisher left).
                            c.incoming.remove(&m.mid);
                        }
                        RtcEvent::KeyframeRequest(r) => {
                            c.keyframe_requests.push((now, r.mid, r.kind));
                            c.force_keyframe = true;
                        }
                        RtcEvent::MediaData(d) => {
                            if let Some(level) = d.ext_vals.audio_level {
                                c.levels_received.insert(d.mid, level);
                            }
                            if c.incoming.get(&d.mid) == Some(&MediaKind::Video) {
                                if d.data.first().is_some_and(|b| b & 0x01 == 0) {
                                    c.keyframes_received += 1;
                                }
                                if !d.contiguous && c.asks_keyframes {
                                    if let Some(mut w) = c.rtc.writer(d.mid) {
                                        if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                                            c.keyframe_requests_sent += 1;
                                        }
                                    }
                                }
                            }
                            *c.received.entry(d.mid).or_default() += 1;
                            if c.incoming.get(&d.mid) == Some(&MediaKind::Video) {
                                let tag = d.data.last().copied().unwrap_or(0);
                                *c.video_tags.entry((d.mid, tag)).or_default() += 1;
                                c.last_tag.insert(d.mid, tag);
                                let first = c.last_time.insert(d.mid, d.time);
                                if first.is_some_and(|t| t.numer() > d.time.numer()) {
                                    c.time_backwards += 1;
                                }
                                if first.is_some() && !d.contiguous {
                                    c.video_gaps += 1;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Writes one synthetic frame on each sending track when its time has come.
    fn write_frames(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        if !c.connected || c.next_frame > now || c.sending.is_empty() {
            return;
        }
        c.next_frame = now + FRAME_INTERVAL;
        c.frame_count += 1;
        let time = (now - self.start).into();
        for (mid, kind) in c.sending.clone() {
            let codec = if kind == MediaKind::Audio { Codec::Opus } else { Codec::Vp8 };
            let pt = c.rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| p.pt()).expect("codec configured");
            if kind == MediaKind::Video && !c.layers.is_empty() {
                for (i, rid) in c.layers.clone().into_iter().enumerate() {
                    let mut data = synthetic_frame(kind, c.frame_count, c.force_keyframe);
                    if let Some(&n) = c.layer_bytes.get(i) {
                        data.resize(n.max(10), data[data.len() - 1]);
                    }
                    data.push(i as u8 + 1);
                    if let Some(w) = c.rtc.writer(mid) {
                        w.rid(rid).write(pt, now, time, data).expect("client writes a layer's frame");
                    }
                }
                continue;
            }
            let data = synthetic_frame(kind, c.frame_count, c.force_keyframe);
            if let Some(mut w) = c.rtc.writer(mid) {
                if let (MediaKind::Audio, Some(level)) = (kind, c.audio_level) {
                    w = w.audio_level(level, level > -50);
                }
                w.write(pt, now, time, data).expect("client writes a frame");
            }
        }
        c.force_keyframe = false;
        self.drain_client(i);
    }

    /// Frames client `id` has received in total on tracks of `kind`.
    pub fn frames_received(&self, id: u64, kind: MediaKind) -> usize {
        let c = self.client(id);
        c.received.iter().filter(|(mid, _)| c.incoming.get(mid) == Some(&kind)).map(|(_, n)| n).sum()
    }

    /// Frames client `id` has received from `publisher`'s tracks of `kind`.
    pub fn frames_from(&self, id: u64, publisher: u64, kind: MediaKind) -> usize {
        let c = self.client(id);
        c.received
            .iter()
            .filter(|(mid, _)| c.incoming.get(*mid) == Some(&kind) && c.origin.get(*mid) == Some(&publisher))
            .map(|(_, n)| n)
            .sum()
    }

    /// Snapshot of frames received per incoming mid.
    pub fn received_snapshot(&self, id: u64) -> HashMap<Mid, usize> {
        self.client(id).received.clone()
    }

    /// Whether the core reported `peer` removed.
    pub fn removed(&self, id: u64) -> bool {
        self.events.iter().any(|e| matches!(e, Event::Removed { peer, .. } if *peer == PeerId(id)))
    }
}

/// The SDP offer a browser stand-in would send to publish `publish` (thrown away after).
pub fn offer_sdp(publish: &[MediaKind]) -> String {
    let now = Instant::now();
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host("10.0.9.9:5000".parse().expect("literal"), Protocol::Udp).expect("host"));
    let mut change = rtc.sdp_api();
    for k in publish {
        change.add_media(*k, Direction::SendOnly, None, None, None);
    }
    let (offer, _) = change.apply().expect("an offer with changes");
    offer.to_sdp_string()
}

/// Bytes that pass for a frame: a VP8 key frame header every 50 frames (or when asked), else a
/// delta frame.
fn synthetic_frame(kind: MediaKind, n: u64, force_key: bool) -> Vec<u8> {
    match kind {
        MediaKind::Audio => vec![(n % 251) as u8; 80],
        MediaKind::Video => {
            let key = n % 50 == 1 || force_key;
            let mut f = vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
            f.resize(1000, (n % 251) as u8);
            f
        }
    }
}
