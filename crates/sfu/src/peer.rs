//! One participant: its str0m `Rtc`, the tracks it publishes and the tracks it receives.
//! Every mutation of the `Rtc` goes through [`Peer::mutate`], the one place the drain rule lives.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{
    Candidate, Event as RtcEvent, IceConnectionState, IceCreds, Input as RtcInput, Output as RtcOutput, Rtc, RtcError,
};

use crate::api::{Output, PeerId, RemoveReason, SfuError, Signal, VideoQuality};
use crate::track::{KeyframeThrottle, TrackIn, TrackOut, TrackOutState};

/// What one participant's handling produced for the others in its room.
#[derive(Debug)]
// Nearly every entry is a frame; boxing it would add an allocation per frame to the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Propagated {
    /// A new published track; every other member should receive it.
    TrackOpen(Weak<TrackIn>),
    /// A frame of a published track.
    MediaData(MediaData),
    /// A subscriber wants a keyframe of `origin`'s track `mid_in`.
    /// `rid`: the simulcast layer, or `None` without simulcast.
    KeyframeRequest { origin: PeerId, mid_in: Mid, rid: Option<Rid>, kind: KeyframeRequestKind },
}

/// Where drained output goes: outputs for the driver, propagations for the room.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub out: VecDeque<Output>,
    pub propagated: VecDeque<(PeerId, Propagated)>,
}

/// The participant's state apart from its `Rtc`, so that [`Peer::mutate`] can lend both.
#[derive(Debug)]
pub(crate) struct PeerState {
    pub id: PeerId,
    pub room: Arc<str>,
    /// The next time this `Rtc` wants `Input::Timeout`.
    pub next_timeout: Instant,
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
    /// Its DTLS is up: frames written before that would only pile up inside str0m.
    pub connected: bool,
    /// The most video quality its downlink carries without loss (`High`: no limit); see
    /// [`PeerState::congestion`].
    pub cap: VideoQuality,
    /// When `cap` last changed, and when its receiver last reported loss above [`CLEAN_LOSS`].
    pub cap_changed: Option<Instant>,
    pub last_lossy: Option<Instant>,
}

/// Packets of history str0m keeps per outgoing video track, for retransmissions (NACK) and for
/// the packets of one frame between `write` and sending. str0m's default, 1000, is kept by every
/// subscriber for every video it receives: about 12 MB per subscriber in a 10×10 room once the
/// buffers have filled (measured: the server grew to 518 MB with 20 participants), and a room of
/// 50 would hold gigabytes. 400 packets are over a second of a 2.5 Mbit/s screen share — more
/// than a retransmission can still be useful for — and more than the largest keyframe.
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

#[derive(Debug)]
pub(crate) struct Peer {
    rtc: Rtc,
    pub state: PeerState,
}

impl Peer {
    /// Accepts the participant's first offer; returns the participant and the SDP answer.
    pub(crate) fn join(
        now: Instant,
        id: PeerId,
        room: Arc<str>,
        offer_sdp: &str,
        locals: &[SocketAddr],
        sink: &mut Sink,
    ) -> Result<(Peer, String, IceCreds), SfuError> {
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SfuError::BadSdp { peer: id, reason: e.to_string() })?;
        // ICE-lite: the browser runs the checks, we answer them; accepting the offer makes us
        // the DTLS server (answerer with a=setup:passive).
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            // Receiver-report loss per outgoing track, for the congestion cap.
            .set_stats_interval(Some(STATS_INTERVAL))
            .set_send_buffer_video(SEND_BUFFER_VIDEO);
        // H.264 constrained baseline and baseline, packetization mode 1 (what every browser can
        // send and receive), with their usual payload types. Not str0m's whole default list: every
        // subscriber's SDP carries each forwarded video m-line with all the codecs configured, so
        // 24 payload types per video m-line made a 50-person room's renegotiations several times
        // larger (and slower to write and parse) for codecs the core does not need to offer.
        for (pt, rtx, profile) in [(108u8, 109u8, 0x42e01f), (127, 121, 0x42001f)] {
            config.codec_config().add_h264(pt.into(), Some(rtx.into()), true, profile);
        }
        let mut rtc = config.build(now);
        for local in locals {
            let candidate = Candidate::host(*local, Protocol::Udp)
                .map_err(|e| SfuError::SdpRefused { peer: id, reason: format!("candidate {local}: {e}") })?;
            rtc.add_local_candidate(candidate);
        }
        let creds = rtc.direct_api().local_ice_credentials();
        let mut peer = Peer {
            rtc,
            state: PeerState {
                id,
                room,
                next_timeout: now,
                pending: None,
                tracks_in: Vec::new(),
                tracks_out: Vec::new(),
                failed: None,
                wanted: HashMap::new(),
                epoch: now,
                connected: false,
                cap: VideoQuality::High,
                cap_changed: None,
                last_lossy: None,
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
        let result = f(&mut self.rtc, &mut self.state, sink);
        loop {
            if !self.rtc.is_alive() {
                self.state.failed.get_or_insert(RemoveReason::Disconnected);
                break;
            }
            match self.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    self.state.next_timeout = t;
                    break;
                }
                Ok(RtcOutput::Transmit(t)) => sink.out.push_back(Output::Transmit {
                    from: t.source,
                    to: t.destination,
                    bytes: t.contents.to_vec(),
                }),
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
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
        sink: &mut Sink,
    ) -> bool {
        let Ok(contents) = bytes.try_into() else {
            return false;
        };
        let receive = Receive { proto: Protocol::Udp, source: from, destination: to, contents };
        self.mutate(sink, |rtc, state, _| {
            if let Err(e) = rtc.handle_input(RtcInput::Receive(now, receive)) {
                state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
            }
        });
        true
    }

    pub(crate) fn timeout(&mut self, now: Instant, sink: &mut Sink) {
        self.mutate(sink, |rtc, state, _| {
            if let Err(e) = rtc.handle_input(RtcInput::Timeout(now)) {
                state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
            }
        });
    }

    /// The participant's answer to our renegotiation offer.
    pub(crate) fn answer(&mut self, now: Instant, sdp: &str, sink: &mut Sink) -> Result<(), SfuError> {
        let id = self.state.id;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp { peer: id, reason: e.to_string() })?;
        let pending = self.state.pending.take().ok_or(SfuError::UnexpectedAnswer(id))?;
        self.mutate(sink, |rtc, state, sink| {
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
            let (wanted, cap) = (&state.wanted, state.cap);
            for track in &mut state.tracks_out {
                if let TrackOutState::Negotiating(m) = track.state {
                    track.state = TrackOutState::Open(m);
                    // A new subscriber needs a keyframe to start decoding (of the layer it
                    // will get, for simulcast).
                    if let Some(t) = track.track_in.upgrade() {
                        let quality = wanted.get(&t.origin).copied().unwrap_or_default().min(cap);
                        let rid = t.layer_for(quality, now);
                        let req = Propagated::KeyframeRequest {
                            origin: t.origin,
                            mid_in: t.mid,
                            rid,
                            kind: KeyframeRequestKind::Pli,
                        };
                        sink.propagated.push_back((id, req));
                    }
                }
            }
            state.tracks_out.retain(|t| !matches!(t.state, TrackOutState::NegotiatingStop(_)));
            Ok(())
        })
    }

    pub(crate) fn add_track_out(&mut self, track_in: Weak<TrackIn>) {
        self.state.tracks_out.push(TrackOut {
            track_in,
            state: TrackOutState::ToOpen,
            layer: None,
            ts: Default::default(),
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

    /// Records how much of `publisher`'s video this participant wants; true when that turns
    /// forwarding back on (the publisher should then send a keyframe).
    pub(crate) fn set_wanted(&mut self, publisher: PeerId, video: VideoQuality) -> bool {
        let before = self.state.wanted.insert(publisher, video).unwrap_or_default();
        if video == VideoQuality::Off {
            // Resuming starts over from a keyframe of whichever layer is wanted then.
            for out in &mut self.state.tracks_out {
                if out.track_in.upgrade().is_some_and(|t| t.origin == publisher) {
                    out.layer = None;
                }
            }
        }
        before == VideoQuality::Off && video != VideoQuality::Off
    }

    /// The mids of the tracks of `kind` this participant publishes without simulcast (simulcast
    /// subscribers ask for the keyframe of their own layer when they need one).
    pub(crate) fn published_single_layer(&self, kind: MediaKind) -> Vec<Mid> {
        self.state.tracks_in.iter().filter(|(t, _)| t.kind == kind && t.layers.is_empty()).map(|(t, _)| t.mid).collect()
    }

    /// Writes `origin`'s frame to the matching open outgoing track, if this participant has one
    /// and wants it. For a simulcast track only the chosen layer's frames go out: the wanted layer
    /// takes over at its next keyframe (asked for until it comes), with timestamps kept continuous.
    pub(crate) fn forward(&mut self, origin: PeerId, data: &MediaData, sink: &mut Sink) {
        if !self.state.connected {
            // Until its DTLS is up str0m can only queue what we write (and refuses more than 512
            // frames per track); its first picture starts from the keyframe asked for on connect.
            return;
        }
        let id = self.state.id;
        let wanted = self.state.effective(origin);
        let found = self.state.tracks_out.iter().enumerate().find_map(|(i, o)| {
            let t = o.track_in.upgrade()?;
            (t.origin == origin && t.mid == data.mid).then_some(o.open_mid().map(|m| (i, m, t))).flatten()
        });
        let Some((i, mid, track)) = found else { return };
        if track.kind == MediaKind::Video && wanted == VideoQuality::Off {
            return;
        }
        let out = &mut self.state.tracks_out[i];
        if let Some(target) = track.layer_for(wanted, data.network_time) {
            let Some(rid) = data.rid else { return };
            if out.layer != Some(target) && rid == target {
                if data.is_keyframe() {
                    out.ts.switch(data.time, data.network_time);
                    out.layer = Some(target);
                } else {
                    let kind = KeyframeRequestKind::Pli;
                    let req = Propagated::KeyframeRequest { origin, mid_in: data.mid, rid: Some(target), kind };
                    sink.propagated.push_back((id, req));
                }
            }
            if out.layer != Some(rid) {
                return;
            }
        }
        let time = out.ts.map(data.time, data.network_time);
        self.mutate(sink, |rtc, state, _| {
            let Some(mut writer) = rtc.writer(mid) else { return };
            let Some(pt) = writer.match_params(data.params) else { return };
            // Pass on what the receiving browser needs from the publisher's header extensions:
            // the audio level (its active-speaker detection reads it) and the camera rotation.
            if let Some(level) = data.ext_vals.audio_level {
                writer = writer.audio_level(level, data.ext_vals.voice_activity.unwrap_or(false));
            }
            if let Some(orientation) = data.ext_vals.video_orientation {
                writer = writer.video_orientation(orientation);
            }
            match writer.write(pt, data.network_time, time, data.data.clone()) {
                Ok(()) => {}
                // A subscriber whose queue is full (str0m could not send for a while) misses this
                // frame; a lost frame is repaired by a keyframe, a removed participant is not.
                Err(RtcError::WriteWithoutPoll) => {}
                Err(e) => {
                    state.failed.get_or_insert(RemoveReason::Failed(e.to_string()));
                }
            }
        });
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
            if let Some(mut writer) = rtc.writer(mid_in) {
                // Fails only when the track has no receive stream yet; nothing to ask then.
                let _ = writer.request_keyframe(rid, kind);
            }
        });
    }
}

impl PeerState {
    /// What it gets of `publisher`'s video: what it asked for, within the congestion cap.
    pub(crate) fn effective(&self, publisher: PeerId) -> VideoQuality {
        self.wanted.get(&publisher).copied().unwrap_or_default().min(self.cap)
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

    fn on_event(&mut self, event: RtcEvent, sink: &mut Sink) {
        match event {
            RtcEvent::MediaEgressStats(stats) => {
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
                sink.out.push_back(Output::Event(crate::api::Event::Connected(self.id)));
                // Nothing was forwarded before: every video it already subscribes to starts
                // from a fresh keyframe. Simulcast tracks need no request here: `forward` asks
                // for the chosen layer's keyframe at that layer's first frame.
                for out in &self.tracks_out {
                    let Some(t) = out.track_in.upgrade() else { continue };
                    if t.kind == MediaKind::Video && t.layers.is_empty() && out.open_mid().is_some() {
                        let req = Propagated::KeyframeRequest {
                            origin: t.origin,
                            mid_in: t.mid,
                            rid: None,
                            kind: KeyframeRequestKind::Pli,
                        };
                        sink.propagated.push_back((self.id, req));
                    }
                }
            }
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.failed.get_or_insert(RemoveReason::Disconnected);
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
            RtcEvent::MediaData(data) => {
                if data.rid.is_some() {
                    if let Some((t, _)) = self.tracks_in.iter().find(|(t, _)| t.mid == data.mid) {
                        t.saw(data.rid, data.network_time);
                    }
                }
                if !data.contiguous {
                    let req = Propagated::KeyframeRequest {
                        origin: self.id,
                        mid_in: data.mid,
                        rid: data.rid,
                        kind: KeyframeRequestKind::Fir,
                    };
                    sink.propagated.push_back((self.id, req));
                }
                sink.propagated.push_back((self.id, Propagated::MediaData(data)));
            }
            RtcEvent::KeyframeRequest(req) => {
                let target = self
                    .tracks_out
                    .iter()
                    .find(|t| t.mid() == Some(req.mid))
                    .and_then(|t| Some((t.track_in.upgrade()?, t.layer)));
                if let Some((t, rid)) = target {
                    let req = Propagated::KeyframeRequest { origin: t.origin, mid_in: t.mid, rid, kind: req.kind };
                    sink.propagated.push_back((self.id, req));
                }
            }
            _ => {}
        }
    }
}
