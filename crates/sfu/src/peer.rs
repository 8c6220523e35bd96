//! One participant: its str0m `Rtc`, the tracks it publishes and the tracks it receives.
//! Every mutation of the `Rtc` goes through [`Peer::mutate`], the one place the drain rule lives.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpPendingOffer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Input as RtcInput, Output as RtcOutput, Rtc};

use crate::api::{Answer, Offer, Output, PeerId, RemoveReason, SfuError, Signal, Transport, VideoQuality};
use crate::rtp::RtpIn;
use crate::track::{KeyframeThrottle, TrackIn, TrackOut, TrackOutState};

/// What one participant's handling produced for the others in its room.
#[derive(Debug)]
// Nearly every entry is a packet; boxing it would add an allocation per packet to the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Propagated {
    /// A new published track; every other member should receive it.
    TrackOpen(Weak<TrackIn>),
    /// A packet of a published track.
    Rtp(RtpIn),
    /// A subscriber wants a keyframe of `origin`'s track `mid_in`.
    /// `rid`: the simulcast layer, or `None` without simulcast.
    KeyframeRequest { origin: PeerId, mid_in: Mid, rid: Option<Rid>, kind: KeyframeRequestKind },
}

/// Where drained output goes: outputs for the driver, propagations for the room.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub out: VecDeque<Output>,
    pub propagated: VecDeque<(PeerId, Propagated)>,
    /// RTP packets handed to subscribers' str0m streams, and their payload bytes.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Subscribers given packets since their `Rtc` was last drained ([`Peer::forward`] writes
    /// without draining; [`crate::Sfu::poll_output`] drains each of them once).
    pub undrained: Vec<PeerId>,
}

/// The participant's state apart from its `Rtc`, so that [`Peer::mutate`] can lend both.
#[derive(Debug)]
pub(crate) struct PeerState {
    pub id: PeerId,
    pub room: Arc<str>,
    /// The next time this `Rtc` wants `Input::Timeout`.
    pub next_timeout: Instant,
    /// Packets were written to its streams since the last drain (it is in `Sink::undrained`).
    pub undrained: bool,
    /// Our renegotiation offer the participant has not answered yet.
    pub pending: Option<SdpPendingOffer>,
    /// Tracks it publishes (the only strong references), with their keyframe throttles.
    pub tracks_in: Vec<(Arc<TrackIn>, KeyframeThrottle)>,
    /// Tracks of others it receives.
    pub tracks_out: Vec<TrackOut>,
    /// Set when the participant must be removed.
    pub failed: Option<RemoveReason>,
    /// How much of each publisher's video it wants ([`VideoQuality::High`] when absent).
    pub wanted: HashMap<PeerId, VideoQuality>,
    /// When it joined: the time base of its tracks' layer activity.
    pub epoch: Instant,
    /// Its DTLS is up: packets written before that would only pile up inside str0m.
    pub connected: bool,
    /// A host muted it: its audio is not forwarded ([`crate::Input::Hold`]).
    pub audio_held: bool,
    /// Its camera and screen are off as far as the signalling layer knows: its video is not
    /// forwarded ([`crate::Input::Hold`]).
    pub video_held: bool,
    /// The most video quality its downlink carries without loss (`High`: no limit); see
    /// [`PeerState::congestion`].
    pub cap: VideoQuality,
    /// When `cap` last changed, and when its receiver last reported loss above [`CLEAN_LOSS`].
    pub cap_changed: Option<Instant>,
    pub last_lossy: Option<Instant>,
    /// The most video quality its bandwidth estimate carries (`High`: no limit), when it last
    /// changed, and the estimate itself (bit/s); see [`PeerState::bandwidth`].
    pub bwe_cap: VideoQuality,
    pub bwe_changed: Option<Instant>,
    /// When the cap was last fitted to the estimate.
    pub bwe_fitted: Option<Instant>,
    pub estimate: Option<u64>,
    /// The time of the input being handled (str0m's events carry none).
    pub clock: Instant,
}

/// Packets of history str0m keeps per outgoing video track, for retransmissions (NACK). str0m's
/// default, 1000, kept by every subscriber for every video it receives, grew the 10×10 benchmark
/// server to 518 MB when frames were repacketised per subscriber; the entries now share the
/// publisher's payload, but a room of 50 still holds 2 450 such histories. 400 packets are over a
/// second of a 2.5 Mbit/s screen share — more than a retransmission can still be useful for.
pub const SEND_BUFFER_VIDEO: usize = 400;

/// How often str0m reports each outgoing track's statistics (receiver-report loss).
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Loss a subscriber's browser reports on a video track above which its video steps down one
/// simulcast layer (every publisher's), at most once per [`CAP_STEP_DOWN_INTERVAL`].
pub const CONGESTED_LOSS: f32 = 0.05;
pub const CAP_STEP_DOWN_INTERVAL: Duration = Duration::from_secs(2);
/// Loss at or below which a downlink counts as clean; after [`CAP_STEP_UP_AFTER`] clean (and
/// unchanged) the cap steps up again.
pub const CLEAN_LOSS: f32 = 0.01;
pub const CAP_STEP_UP_AFTER: Duration = Duration::from_secs(8);
/// While a subscription waits for a keyframe (to start, or to change layer), how often it asks
/// again; the publisher's own throttle ([`crate::track::KEYFRAME_REQUEST_INTERVAL`]) still applies.
pub const KEYFRAME_WAIT_ASK: Duration = Duration::from_millis(500);
/// How far ahead a timeout str0m asks for counts as "now" in [`Peer::mutate`]: its pacer asks for
/// the next packet 1 µs after the last.
const PACER_STEP: Duration = Duration::from_micros(1);
/// Bounds the packets the pacer can release within one input (a queue builds only while a
/// subscriber's DTLS is not up or its estimate is far below what it gets).
const MAX_PACED_PER_INPUT: usize = 4096;
/// The bandwidth estimate a subscriber's downlink starts from (str0m's BWE then probes upwards).
pub const INITIAL_ESTIMATE_BPS: u64 = 2_500_000;
/// A subscriber's video steps down a quality when what it receives needs more than this share of
/// its estimate, and up when the next quality needs at most [`BWE_UP`] of it (and the last change
/// is [`BWE_STEP_UP_AFTER`] old): the gap keeps it from flapping on a noisy estimate.
pub const BWE_DOWN: f64 = 0.95;
pub const BWE_UP: f64 = 0.8;
pub const BWE_STEP_UP_AFTER: Duration = Duration::from_secs(2);
/// What str0m is asked to probe for is rounded up to this many bit/s.
const BWE_ROUNDING: f64 = 100_000.0;

#[derive(Debug)]
pub(crate) struct Peer {
    rtc: Rtc,
    pub state: PeerState,
    /// str0m's bandwidth estimate, and with it its pacer, is on: see [`Peer::mutate_with`].
    paced: bool,
}

/// The core's addresses, one host candidate each: UDP ones, and passive TCP ones for ICE-TCP.
#[derive(Clone, Copy)]
pub(crate) struct Locals<'a> {
    pub(crate) udp: &'a [SocketAddr],
    pub(crate) tcp: &'a [SocketAddr],
    /// What the session's ICE ufrag starts with ([`crate::Sfu::set_ufrag_prefix`]).
    pub(crate) ufrag_prefix: &'a str,
}

impl Peer {
    /// Accepts the participant's first offer; returns the participant and the SDP answer.
    pub(crate) fn join(
        now: Instant,
        id: PeerId,
        room: Arc<str>,
        offer: Offer,
        locals: Locals<'_>,
        bwe: bool,
        sink: &mut Sink,
    ) -> Result<(Peer, String, IceCreds), SfuError> {
        let offer = offer.0.map_err(|reason| SfuError::BadSdp { peer: id, reason })?;
        // ICE-lite: the browser runs the checks, we answer them; accepting the offer makes us
        // the DTLS server (answerer with a=setup:passive).
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            // Packets in, packets out: no depacketising, reordering or repacketising per frame
            // (see `rtp.rs`); str0m still answers each subscriber's NACKs from its own history.
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            // Receiver-report loss per outgoing track, for the congestion cap.
            .set_stats_interval(Some(STATS_INTERVAL))
            // A bandwidth estimate per subscriber (TWCC feedback from its browser), for the
            // layers it gets; see `PeerState::bandwidth`.
            .enable_bwe(bwe.then_some(Bitrate::bps(INITIAL_ESTIMATE_BPS)))
            .set_send_buffer_video(SEND_BUFFER_VIDEO);
        // H.264 constrained baseline and baseline, packetization mode 1 (what every browser can
        // send and receive), with their usual payload types. Not str0m's whole default list: every
        // subscriber's SDP carries each forwarded video m-line with all the codecs configured, so
        // 24 payload types per video m-line made a 50-person room's renegotiations several times
        // larger (and slower to write and parse) for codecs the core does not need to offer.
        for (pt, rtx, profile) in [(108u8, 109u8, 0x42e01f), (127, 121, 0x42001f)] {
            config.codec_config().add_h264(pt.into(), Some(rtx.into()), true, profile);
        }
        let mut creds = IceCreds::new();
        creds.ufrag.insert_str(0, locals.ufrag_prefix);
        let mut rtc = config.set_local_ice_credentials(creds).build(now);
        for local in locals.udp {
            let candidate = Candidate::host(*local, Protocol::Udp)
                .map_err(|e| SfuError::SdpRefused { peer: id, reason: format!("candidate {local}: {e}") })?;
            rtc.add_local_candidate(candidate);
        }
        // ICE-TCP: the browser connects to us (it is active, we are passive). str0m gives TCP host
        // candidates a lower priority than UDP ones, so browsers use them only when UDP fails.
        for local in locals.tcp {
            let candidate = Candidate::builder()
                .tcp()
                .host(*local)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| SfuError::SdpRefused { peer: id, reason: format!("TCP candidate {local}: {e}") })?;
            rtc.add_local_candidate(candidate);
        }
        let creds = rtc.direct_api().local_ice_credentials();
        let mut peer = Peer {
            rtc,
            paced: bwe,
            state: PeerState {
                id,
                room,
                next_timeout: now,
                undrained: false,
                pending: None,
                tracks_in: Vec::new(),
                tracks_out: Vec::new(),
                failed: None,
                wanted: HashMap::new(),
                epoch: now,
                connected: false,
                audio_held: false,
                video_held: false,
                cap: VideoQuality::High,
                cap_changed: None,
                last_lossy: None,
                bwe_cap: VideoQuality::High,
                bwe_changed: None,
                bwe_fitted: None,
                estimate: None,
                clock: now,
            },
        };
        let mids: Vec<Mid> = offer.media_lines.iter().map(|m| m.mid()).collect();
        let answer = peer
            .mutate(sink, |rtc, _, _| rtc.sdp_api().accept_offer(offer))
            .map_err(|e| SfuError::SdpRefused { peer: id, reason: e.to_string() })?;
        // str0m rejects an m-line none of whose codecs it knows (port 0 in the answer). If that
        // left nothing of the audio and video offered, the page would connect to no media at all:
        // better to say so now. (Data-channel-only offers have no such m-line and are fine.)
        let media: Vec<bool> = mids.iter().filter_map(|m| peer.rtc.media(*m)).map(|m| m.disabled()).collect();
        if !media.is_empty() && media.iter().all(|disabled| *disabled) {
            let reason = "no usable codec in any audio or video m-line".to_string();
            return Err(SfuError::SdpRefused { peer: id, reason });
        }
        Ok((peer, answer.to_sdp_string(), creds))
    }

    /// THE DRAIN RULE: run one mutation of the `Rtc`, then poll its output until `Timeout`.
    /// No other code in this crate calls `poll_output` or mutates the `Rtc` outside `f`.
    pub(crate) fn mutate<R>(&mut self, sink: &mut Sink, f: impl FnOnce(&mut Rtc, &mut PeerState, &mut Sink) -> R) -> R {
        self.mutate_with(self.paced, sink, f)
    }

    /// [`Peer::mutate`]; `release`: a timeout that is due while polling is handled on the spot,
    /// until none is (see the comment in the loop).
    fn mutate_with<R>(
        &mut self,
        release: bool,
        sink: &mut Sink,
        f: impl FnOnce(&mut Rtc, &mut PeerState, &mut Sink) -> R,
    ) -> R {
        let result = f(&mut self.rtc, &mut self.state, sink);
        // This drain takes out whatever earlier writes left too.
        self.state.undrained = false;
        let mut paced = 0;
        loop {
            if !self.rtc.is_alive() {
                self.state.failed.get_or_insert(RemoveReason::Disconnected);
                break;
            }
            match self.rtc.poll_output() {
                // str0m's pacer (it comes with the bandwidth estimate) lets only one packet out
                // per timeout and asks for the next a microsecond later; its probes want that
                // timing too. So with it, what is due goes out at once, on the timer and after
                // every write. Without it, written packets wait for the driver's next tick,
                // which saves a pass over all the session's streams per forwarded packet.
                Ok(RtcOutput::Timeout(t))
                    if release && t <= self.state.clock + PACER_STEP && paced < MAX_PACED_PER_INPUT =>
                {
                    paced += 1;
                    if let Err(e) = self.rtc.handle_input(RtcInput::Timeout(self.state.clock)) {
                        self.state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
                        self.rtc.disconnect();
                        break;
                    }
                }
                Ok(RtcOutput::Timeout(t)) => {
                    self.state.next_timeout = t;
                    break;
                }
                // str0m's datagram is a Vec already: moved, not copied.
                Ok(RtcOutput::Transmit(t)) => {
                    // Only what we gave str0m as candidates: UDP, or TCP for ICE-TCP.
                    let proto = if t.proto == Protocol::Udp { Transport::Udp } else { Transport::Tcp };
                    let bytes = t.contents.into();
                    sink.out.push_back(Output::Transmit { proto, from: t.source, to: t.destination, bytes })
                }
                Ok(RtcOutput::Event(RtcEvent::RtpPacket(p))) => self.state.on_rtp(&mut self.rtc, p, sink),
                Ok(RtcOutput::Event(RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }))) => {
                    self.state.bandwidth(&mut self.rtc, estimate.as_u64())
                }
                Ok(RtcOutput::Event(e)) => self.state.on_event(e, sink),
                Err(e) => {
                    self.state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
                    self.rtc.disconnect();
                    break;
                }
            }
        }
        result
    }

    /// A datagram routed to this participant. False when str0m cannot even parse it.
    pub(crate) fn packet(
        &mut self,
        now: Instant,
        proto: Transport,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
        sink: &mut Sink,
    ) -> bool {
        let Ok(contents) = bytes.try_into() else {
            return false;
        };
        let proto = match proto {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let receive = Receive { proto, source: from, destination: to, contents };
        self.state.clock = self.state.clock.max(now);
        self.mutate(sink, |rtc, state, _| {
            if let Err(e) = rtc.handle_input(RtcInput::Receive(now, receive)) {
                state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
            }
        });
        true
    }

    pub(crate) fn timeout(&mut self, now: Instant, sink: &mut Sink) {
        self.state.clock = self.state.clock.max(now);
        self.mutate_with(true, sink, |rtc, state, _| {
            if let Err(e) = rtc.handle_input(RtcInput::Timeout(now)) {
                state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
            }
        });
    }

    /// The participant's answer to our renegotiation offer.
    pub(crate) fn answer(&mut self, answer: Answer, sink: &mut Sink) -> Result<(), SfuError> {
        let id = self.state.id;
        let answer = answer.0.map_err(|reason| SfuError::BadSdp { peer: id, reason })?;
        let pending = self.state.pending.take().ok_or(SfuError::UnexpectedAnswer(id))?;
        self.mutate(sink, |rtc, state, _| {
            if let Err(e) = rtc.sdp_api().accept_answer(pending, answer) {
                // The offer is spent either way: what it carried goes into the next one, or those
                // tracks would wait for an answer that can no longer come.
                for track in &mut state.tracks_out {
                    track.state = match track.state {
                        TrackOutState::Negotiating(_) => TrackOutState::ToOpen,
                        TrackOutState::NegotiatingStop(m) => TrackOutState::ToStop(m),
                        other => other,
                    };
                }
                return Err(SfuError::SdpRefused { peer: id, reason: e.to_string() });
            }
            // Each new track's video starts at a keyframe, which `forward` asks for at its first
            // packet.
            for track in &mut state.tracks_out {
                if let TrackOutState::Negotiating(m) = track.state {
                    track.state = TrackOutState::Open(m);
                    // Forwarded as it comes: str0m's pacer would hold back whatever exceeds the
                    // estimate (up to seconds for a video that has no smaller layer); the
                    // estimate picks the layers instead (`PeerState::bandwidth`).
                    if let Some(stream) = rtc.direct_api().stream_tx_by_mid(m, None) {
                        stream.set_unpaced(true);
                    }
                }
            }
            state.tracks_out.retain(|t| !matches!(t.state, TrackOutState::NegotiatingStop(_)));
            Ok(())
        })
    }

    pub(crate) fn add_track_out(&mut self, track_in: Weak<TrackIn>) {
        // A track gone already needs no subscription (`negotiate` would drop it unopened).
        let Some((origin, mid_in)) = track_in.upgrade().map(|t| (t.origin, t.mid)) else { return };
        self.state.tracks_out.push(TrackOut {
            track_in,
            origin,
            mid_in,
            state: TrackOutState::ToOpen,
            sending: None,
            continuity: Default::default(),
            pt: None,
            asked: None,
        });
    }

    /// Sends an offer when tracks wait to be opened or stopped and no offer is outstanding.
    pub(crate) fn negotiate(&mut self, sink: &mut Sink) {
        if self.state.pending.is_some() || self.state.failed.is_some() {
            return;
        }
        let id = self.state.id;
        self.mutate(sink, |rtc, state, sink| {
            state.tracks_out.retain(|t| t.state != TrackOutState::ToOpen || t.track_in.strong_count() > 0);
            for track in &mut state.tracks_out {
                if let TrackOutState::Open(m) = track.state {
                    if track.track_in.strong_count() == 0 {
                        track.state = TrackOutState::ToStop(m);
                    }
                }
            }
            let mut change = rtc.sdp_api();
            for track in &mut state.tracks_out {
                match track.state {
                    TrackOutState::ToStop(m) => {
                        change.stop_media(m);
                        track.state = TrackOutState::NegotiatingStop(m);
                    }
                    TrackOutState::ToOpen => {
                        let Some(t) = track.track_in.upgrade() else { continue };
                        let stream = Some(t.origin.to_string());
                        let mid = change.add_media(t.kind, Direction::SendOnly, stream, None, None);
                        track.state = TrackOutState::Negotiating(mid);
                    }
                    _ => {}
                }
            }
            if !change.has_changes() {
                return;
            }
            if let Some((offer, pending)) = change.apply() {
                state.pending = Some(pending);
                sink.out.push_back(Output::Signal { peer: id, signal: Signal::Offer(offer.to_sdp_string()) });
            }
        });
    }

    /// Records how much of `publisher`'s video this participant wants.
    pub(crate) fn set_wanted(&mut self, publisher: PeerId, video: VideoQuality) {
        self.state.wanted.insert(publisher, video);
        if video == VideoQuality::Off {
            // Resuming starts over from a keyframe of whichever layer is wanted then.
            self.restart_video(publisher);
        }
    }

    /// Its copy of `publisher`'s video starts over, at the next keyframe (asked for by the
    /// next packet that finds it waiting).
    pub(crate) fn restart_video(&mut self, publisher: PeerId) {
        for out in &mut self.state.tracks_out {
            if out.track_in.upgrade().is_some_and(|t| t.origin == publisher && t.kind == MediaKind::Video) {
                out.sending = None;
            }
        }
    }

    /// Its video may be forwarded again after a hold: asks its browser for a keyframe of every
    /// layer of every video track at once, past the throttle (which counts these requests), so
    /// that subscribers, who restart at a keyframe, get a picture without waiting for the next
    /// packet to ask. A layer with no packet so far has no stream to ask on: its first packets
    /// start with a keyframe anyway, and a subscriber's `forward` asks otherwise.
    pub(crate) fn refresh_video(&mut self, now: Instant, sink: &mut Sink) {
        let mut asks: Vec<(Mid, Option<Rid>)> = Vec::new();
        for (track, throttle) in &mut self.state.tracks_in {
            if track.kind != MediaKind::Video {
                continue;
            }
            let rids: Vec<Option<Rid>> =
                if track.layers.is_empty() { vec![None] } else { track.layers.iter().copied().map(Some).collect() };
            for rid in rids {
                throttle.note(now, rid);
                asks.push((track.mid, rid));
            }
        }
        self.state.clock = self.state.clock.max(now);
        self.mutate(sink, |rtc, _, _| {
            for (mid, rid) in asks {
                if let Some(stream) = rtc.direct_api().stream_rx_by_mid(mid, rid) {
                    stream.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
        });
    }

    /// Sends `origin`'s packet on the matching open outgoing track, if this participant has one
    /// and wants it. Video starts (and simulcast changes layer) only at the first packet of a
    /// keyframe, asked for until it comes; [`crate::rtp::Continuity`] keeps the numbering seamless.
    pub(crate) fn forward(&mut self, origin: PeerId, p: &RtpIn, sink: &mut Sink) {
        if !self.state.connected {
            // Until its DTLS is up str0m can only queue what we write; each video starts after
            // it, at a keyframe asked for then.
            return;
        }
        let id = self.state.id;
        let wanted = self.state.effective(origin);
        let found = self.state.tracks_out.iter().enumerate().find_map(|(i, o)| {
            if o.origin != origin || o.mid_in != p.mid {
                return None;
            }
            // Same publisher and mid but gone (it started a new session) or not open: look on.
            let t = o.track_in.upgrade()?;
            o.open_mid().map(|m| (i, m, t))
        });
        let Some((i, mid, track)) = found else { return };
        let video = track.kind == MediaKind::Video;
        let out = &mut self.state.tracks_out[i];
        if out.sending == Some(p.rid) && !out.continuity.follows(p) {
            // The publisher's browser changed this layer's SSRC (new numbering from scratch):
            // start over as for a new subscriber — audio at once, video at a keyframe.
            out.sending = None;
        }
        if video {
            if wanted == VideoQuality::Off {
                return;
            }
            let target = track.layer_for(wanted, p.arrived);
            if out.sending != Some(target) && p.rid == target {
                if p.keyframe {
                    out.continuity.start(p);
                    out.sending = Some(target);
                    out.asked = None;
                } else if out.asked.is_none_or(|t| p.arrived.saturating_duration_since(t) >= KEYFRAME_WAIT_ASK) {
                    out.asked = Some(p.arrived);
                    let req = Propagated::KeyframeRequest {
                        origin,
                        mid_in: p.mid,
                        rid: target,
                        kind: KeyframeRequestKind::Pli,
                    };
                    sink.propagated.push_back((id, req));
                }
            }
            if out.sending != Some(p.rid) {
                return;
            }
        } else if out.sending.is_none() {
            out.continuity.start(p);
            out.sending = Some(p.rid);
        }
        let Some((seq, time, patch)) = out.continuity.map(p) else { return };
        self.state.clock = self.state.clock.max(p.arrived);
        // Written now, drained later: str0m's drain (polling until it asks for a timeout) visits
        // every stream of the session, so a drain per forwarded packet cost O(room size) per
        // subscriber, O(n²) per incoming packet. The core drains each subscriber once per batch
        // of inputs instead ([`crate::Sfu::poll_output`]); a receive or timeout of this
        // participant before then drains it on the way (the drain after any mutation takes all).
        let (rtc, state) = (&mut self.rtc, &mut self.state);
        let out = &mut state.tracks_out[i];
        let pt = match out.pt {
            Some((pt_in, pt_out)) if pt_in == p.params.pt() => pt_out,
            _ => {
                let Some(local) = rtc.codec_config().match_params(p.params) else { return };
                out.pt = Some((p.params.pt(), local.pt()));
                local.pt()
            }
        };
        let mut direct = rtc.direct_api();
        let Some(stream) = direct.stream_tx_by_mid(mid, None) else { return };
        // Pass on what the receiving browser needs from the publisher's header extensions:
        // the audio level (its active-speaker detection reads it), the camera rotation and
        // whether this is a screen share.
        let ext = ExtensionValues {
            audio_level: p.audio_level,
            voice_activity: p.voice_activity,
            video_orientation: p.video_orientation,
            video_content_type: p.video_content_type,
            ..Default::default()
        };
        let mut write =
            RtpWrite::new(pt, seq, time, p.arrived, p.payload.clone()).marker(p.marker).ext_vals(ext).nackable(video);
        if let Some(patch) = patch {
            write = write.vp8_patch(patch);
        }
        let bytes = p.payload.len() as u64;
        stream.write_rtp(write);
        sink.forwarded_packets += 1;
        sink.forwarded_bytes += bytes;
        if !state.undrained {
            state.undrained = true;
            sink.undrained.push(state.id);
        }
    }

    /// Drains what [`Peer::forward`] wrote since the last drain, if anything.
    pub(crate) fn drain(&mut self, sink: &mut Sink) {
        if self.state.undrained {
            self.mutate(sink, |_, _, _| ());
        }
    }

    /// A subscriber asked for a keyframe of our track `mid_in` (layer `rid`); throttled per
    /// track and layer.
    pub(crate) fn request_keyframe(
        &mut self,
        now: Instant,
        mid_in: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        sink: &mut Sink,
    ) {
        let Some((_, throttle)) = self.state.tracks_in.iter_mut().find(|(t, _)| t.mid == mid_in) else {
            return;
        };
        if !throttle.allow(now, rid) {
            return;
        }
        self.mutate(sink, |rtc, _, _| {
            // No receive stream yet (no packet of that layer so far): nothing to ask then.
            if let Some(stream) = rtc.direct_api().stream_rx_by_mid(mid_in, rid) {
                stream.request_keyframe(kind);
            }
        });
    }
}

impl PeerState {
    /// What it gets of `publisher`'s video: what it asked for, within the congestion and
    /// bandwidth caps.
    pub(crate) fn effective(&self, publisher: PeerId) -> VideoQuality {
        self.within_loss_cap(publisher).min(self.bwe_cap)
    }

    /// What it asked for of `publisher`'s video, within the congestion cap only.
    fn within_loss_cap(&self, publisher: PeerId) -> VideoQuality {
        self.wanted.get(&publisher).copied().unwrap_or_default().min(self.cap)
    }

    /// The bitrate (bit/s) of everything it would receive with its video capped at `quality`
    /// (within what it asked for and the loss cap): the layers' rates as they arrive.
    fn needs(&self, quality: VideoQuality, now: Instant) -> u64 {
        self.tracks_out
            .iter()
            .filter(|o| o.open_mid().is_some())
            .filter_map(|o| o.track_in.upgrade())
            .map(|t| {
                if t.kind != MediaKind::Video {
                    return t.bitrate(None);
                }
                let q = self.within_loss_cap(t.origin).min(quality);
                if q == VideoQuality::Off {
                    return 0;
                }
                t.bitrate(t.layer_for(q, now))
            })
            .sum()
    }

    /// A new bandwidth estimate for its downlink: the video quality it gets follows it
    /// ([`PeerState::fit_bandwidth`]), and str0m is told what to probe for.
    fn bandwidth(&mut self, rtc: &mut Rtc, estimate: u64) {
        let now = self.clock;
        self.estimate = Some(estimate);
        self.fit_bandwidth(now);
        // str0m probes towards the desired rate: what everything it asked for needs, plus the
        // headroom a step up requires ([`BWE_UP`]); nothing once that fits at the top (probes
        // only cost bandwidth). No padding to a minimum: while the media sends less than the
        // estimate, str0m probes now and then by itself. Rounded, so that a layer's rate moving
        // a little does not count as a new desire (each rise can start a probe).
        let all = self.needs(VideoQuality::High, now) as f64 / BWE_UP;
        let desired = if self.bwe_cap == VideoQuality::High && all <= estimate as f64 {
            0
        } else {
            (all / BWE_ROUNDING).ceil() as u64 * BWE_ROUNDING as u64
        };
        rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
    }

    /// Caps its video (every publisher's) at the best quality its bandwidth estimate carries:
    /// down as soon as what it gets needs more than [`BWE_DOWN`] of the estimate, up (to the best
    /// quality that needs at most [`BWE_UP`] of it) once the last change is
    /// [`BWE_STEP_UP_AFTER`] old. Run on each new estimate and on each receiver report, since the
    /// layers' rates move while the estimate stands still.
    fn fit_bandwidth(&mut self, now: Instant) {
        let Some(estimate) = self.estimate else { return };
        self.bwe_fitted = Some(now);
        let e = estimate as f64;
        let qualities = [VideoQuality::High, VideoQuality::Medium, VideoQuality::Low];
        let cap = self.bwe_cap;
        if cap > VideoQuality::Low && self.needs(cap, now) as f64 > e * BWE_DOWN {
            let fits = qualities.into_iter().find(|q| *q < cap && self.needs(*q, now) as f64 <= e * BWE_DOWN);
            self.bwe_cap = fits.unwrap_or(VideoQuality::Low);
            self.bwe_changed = Some(now);
        } else if cap < VideoQuality::High
            && self.bwe_changed.is_none_or(|t| now.saturating_duration_since(t) >= BWE_STEP_UP_AFTER)
        {
            if let Some(q) = qualities.into_iter().find(|q| *q > cap && self.needs(*q, now) as f64 <= e * BWE_UP) {
                self.bwe_cap = q;
                self.bwe_changed = Some(now);
            }
        }
    }

    /// A receiver report on one of its video tracks: a lossy downlink steps every video it gets
    /// down a layer (a subscriber that cannot keep up gets less instead of a frozen picture, and
    /// the others are not affected); a clean one steps back up after a while.
    pub(crate) fn congestion(&mut self, now: Instant, loss: f32) {
        let since_change = self.cap_changed.map(|t| now.saturating_duration_since(t));
        if loss > CLEAN_LOSS {
            self.last_lossy = Some(now);
        }
        if loss > CONGESTED_LOSS {
            if self.cap > VideoQuality::Low && since_change.is_none_or(|d| d >= CAP_STEP_DOWN_INTERVAL) {
                self.cap = if self.cap == VideoQuality::High { VideoQuality::Medium } else { VideoQuality::Low };
                self.cap_changed = Some(now);
            }
            return;
        }
        let clean_for = self.last_lossy.map(|t| now.saturating_duration_since(t));
        let settled = |d: Option<Duration>| d.is_none_or(|d| d >= CAP_STEP_UP_AFTER);
        if self.cap < VideoQuality::High && settled(since_change) && settled(clean_for) {
            self.cap = if self.cap == VideoQuality::Low { VideoQuality::Medium } else { VideoQuality::High };
            self.cap_changed = Some(now);
        }
    }

    /// A packet from the participant: note its layer as arriving and hand it to the room.
    fn on_rtp(&mut self, rtc: &mut Rtc, packet: RtpPacket, sink: &mut Sink) {
        let ssrc = packet.header.ssrc;
        let Some((mid, rid)) = rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else { return };
        let pt = packet.header.payload_type;
        let Some(params) = rtc.codec_config().find(|c| c.pt() == pt).copied() else { return };
        let p = RtpIn::new(packet, mid, rid, params);
        if let Some((t, _)) = self.tracks_in.iter().find(|(t, _)| t.mid == mid) {
            let held = if t.kind == MediaKind::Audio { self.audio_held } else { self.video_held };
            if held {
                // A host muted this participant, or its camera and screen are off as far as the
                // room knows: this goes no further, whatever its page does, and a held video
                // layer does not count as arriving.
                return;
            }
            t.saw(rid, p.arrived, p.payload.len());
        }
        sink.propagated.push_back((self.id, Propagated::Rtp(p)));
    }

    fn on_event(&mut self, event: RtcEvent, sink: &mut Sink) {
        match event {
            RtcEvent::MediaEgressStats(stats) => {
                // The estimate may stand still while what it gets moves (new tracks, layers'
                // rates): look again, at most once per report round.
                if self.estimate.is_some()
                    && self.bwe_fitted.is_none_or(|t| stats.timestamp.saturating_duration_since(t) >= STATS_INTERVAL)
                {
                    self.fit_bandwidth(stats.timestamp);
                }
                // Every outgoing track reports once a second: look the track up only when the
                // report can change something (loss, or a cap that may step back up).
                let Some(loss) = stats.loss else { return };
                if loss <= CLEAN_LOSS && self.cap == VideoQuality::High {
                    return;
                }
                let video = self.tracks_out.iter().any(|t| {
                    t.mid() == Some(stats.mid) && t.track_in.upgrade().is_some_and(|t| t.kind == MediaKind::Video)
                });
                if video {
                    self.congestion(stats.timestamp, loss);
                }
            }
            RtcEvent::Connected => {
                self.connected = true;
                // Nothing was forwarded before: each video starts at a keyframe `forward` asks for.
                sink.out.push_back(Output::Event(crate::api::Event::Connected(self.id)));
            }
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.failed.get_or_insert(RemoveReason::Disconnected);
            }
            // Its DTLS close_notify: the participant's side ended the session (str0m's `Rtc`
            // finishes closing and goes dead, which would read as `Disconnected`).
            RtcEvent::Closed => {
                self.failed.get_or_insert(RemoveReason::Closed);
            }
            RtcEvent::MediaAdded(added) if added.direction.is_receiving() => {
                // The browser offers `a=simulcast:send` with its rids, lowest quality first.
                let layers = added
                    .simulcast
                    .as_ref()
                    .map(|s| if s.recv.is_empty() { &s.send } else { &s.recv })
                    .map(|l| l.iter().map(|l| l.rid).collect())
                    .unwrap_or_default();
                let track = Arc::new(TrackIn::new(self.id, added.mid, added.kind, layers, self.epoch));
                sink.propagated.push_back((self.id, Propagated::TrackOpen(Arc::downgrade(&track))));
                self.tracks_in.push((track, KeyframeThrottle::default()));
            }
            RtcEvent::KeyframeRequest(req) => {
                let target = self
                    .tracks_out
                    .iter()
                    .find(|t| t.mid() == Some(req.mid))
                    .and_then(|t| Some((t.track_in.upgrade()?, t.sending.flatten())));
                if let Some((t, rid)) = target {
                    let req = Propagated::KeyframeRequest { origin: t.origin, mid_in: t.mid, rid, kind: req.kind };
                    sink.propagated.push_back((self.id, req));
                }
            }
            _ => {}
        }
    }
}
