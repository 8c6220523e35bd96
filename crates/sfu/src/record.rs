//! Recording a room: the packets the core forwards, turned into whole encoded frames per track,
//! in order, timed on the recording's clock — no decoding, no file I/O (sans-IO like the rest of
//! the core: frames go out as [`Recorded`] outputs, and the driver writes them).
//!
//! Per published track:
//! - **one layer**: without simulcast the track's packets; with simulcast the best layer that
//!   arrives (the last of the publisher's declared layers seen in the last
//!   [`crate::track::LAYER_ACTIVE_WINDOW`]), switched only at a keyframe of the new layer;
//! - **in order**: a small reorder buffer by sequence number; a gap not filled within
//!   [`REORDER_WAIT`] (RTX repairs arrive in about a round trip) or by [`REORDER_MAX`] packets is
//!   a loss;
//! - **whole frames**: Opus packets are frames; VP8 and H.264 packets of one RTP timestamp are
//!   joined by str0m's depacketisers (the frame's first packet must start it, the marker bit ends
//!   it); a frame missing a packet is dropped, never written broken;
//! - **decodable video**: after a loss (or at the start, or a layer switch) video is written again
//!   only from a keyframe, and the publisher is asked for one at once (throttled as every
//!   keyframe request of the core is);
//! - **timed**: each track's frame times are its RTP times, placed on the recording's clock by
//!   the arrival of its first frame, in milliseconds since the recording started.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use str0m::format::{Codec, CodecExtra};
use str0m::media::{Mid, Rid};
use str0m::rtp::Ssrc;
use str0m::unversioned::{Depacketizer, H264Depacketizer, Vp8Depacketizer};

use crate::api::VideoQuality;
use crate::api::{Output, PeerId, Recorded, RecordedCodec, RecordedKind};
use crate::rtp::RtpIn;
use crate::track::TrackIn;

/// How long a gap in a track's sequence numbers may wait for the missing packet.
pub const REORDER_WAIT: Duration = Duration::from_millis(250);
/// At most this many packets wait behind a gap.
pub const REORDER_MAX: usize = 256;
/// A frame larger than this is not a frame a browser sends (a 4K keyframe is a few hundred KB):
/// it is dropped, so one publisher cannot make the core hold unbounded memory.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// One room's recording, owned by the core beside the room.
#[derive(Debug)]
pub(crate) struct Recorder {
    room: Arc<str>,
    started: Instant,
    tracks: HashMap<(PeerId, Mid), TrackRec>,
}

/// A keyframe the recorder wants: the publisher, its track and layer.
pub(crate) type Ask = (PeerId, Mid, Option<Rid>);

impl Recorder {
    pub(crate) fn new(room: Arc<str>, started: Instant) -> Recorder {
        Recorder { room, started, tracks: HashMap::new() }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// A packet the core took from `from` (already past the holds). `source`: the published
    /// track it belongs to (looked up only for a track's first packet; its layers' arrival is
    /// what the core's forwarding knows). `next_id` numbers new tracks across the core.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn packet(
        &mut self,
        now: Instant,
        from: PeerId,
        p: &RtpIn,
        source: impl FnOnce() -> Weak<TrackIn>,
        next_id: &mut u64,
        out: &mut VecDeque<Output>,
        asks: &mut Vec<Ask>,
    ) {
        let codec = match p.params.spec().codec {
            Codec::Opus => RecordedCodec::Opus,
            Codec::Vp8 => RecordedCodec::Vp8,
            Codec::H264 => RecordedCodec::H264,
            _ => return,
        };
        let started = self.started;
        let room = self.room.clone();
        let track = self.tracks.entry((from, p.mid)).or_insert_with(|| {
            *next_id += 1;
            TrackRec::new(*next_id, from, p.mid, codec, source())
        });
        track.packet(now, started, &room, p, out, asks);
    }

    /// `peer` left the core: its tracks end.
    pub(crate) fn peer_gone(&mut self, now: Instant, peer: PeerId, out: &mut VecDeque<Output>) {
        let at_ms = self.ms(now);
        let gone: Vec<(PeerId, Mid)> = self.tracks.keys().filter(|(p, _)| *p == peer).copied().collect();
        for key in gone {
            if let Some(t) = self.tracks.remove(&key) {
                t.end(at_ms, out);
            }
        }
    }

    /// The recording stops: what waits behind a gap is given up, every track ends.
    pub(crate) fn finish(self, now: Instant, out: &mut VecDeque<Output>) {
        let at_ms = self.ms(now);
        let mut tracks: Vec<TrackRec> = self.tracks.into_values().collect();
        tracks.sort_by_key(|t| t.id);
        for t in tracks {
            t.end(at_ms, out);
        }
        out.push_back(Output::Record(Recorded::Stopped { room: self.room.to_string(), at_ms }));
    }
}

/// A packet waiting in the reorder buffer.
#[derive(Debug)]
struct Pkt {
    time: u64,
    arrived: Instant,
    marker: bool,
    payload: Arc<[u8]>,
}

#[derive(Debug)]
enum Depack {
    Opus,
    Vp8(Vp8Depacketizer),
    H264(H264Depacketizer),
}

/// One published track being recorded.
#[derive(Debug)]
struct TrackRec {
    id: u64,
    peer: PeerId,
    mid: Mid,
    codec: RecordedCodec,
    /// The published track: which of its simulcast layers arrive.
    source: Weak<TrackIn>,
    /// The layer recorded (`None` without simulcast, or before the first switch).
    layer: Option<Rid>,
    ssrc: Option<Ssrc>,
    next_seq: Option<u64>,
    pending: BTreeMap<u64, Pkt>,
    depack: Depack,
    extra: CodecExtra,
    frame: Vec<u8>,
    frame_time: Option<u64>,
    /// The frame being joined started with its first packet and lost nothing since.
    frame_ok: bool,
    /// Video: nothing is written until a keyframe (at the start, after a loss, at a switch).
    need_key: bool,
    /// The RTP time and recording time (ms) of the track's first written frame, after a layer
    /// switch of the switch's frame.
    base: Option<(u64, u64)>,
    clock: u64,
    last_ms: Option<u64>,
    /// `TrackStarted` went out (at the first frame written).
    announced: bool,
    /// The next frame written starts a new time base (a layer switch).
    rebase_at: bool,
}

impl TrackRec {
    fn new(id: u64, peer: PeerId, mid: Mid, codec: RecordedCodec, source: Weak<TrackIn>) -> TrackRec {
        let depack = match codec {
            RecordedCodec::Opus => Depack::Opus,
            RecordedCodec::Vp8 => Depack::Vp8(Vp8Depacketizer::default()),
            RecordedCodec::H264 => Depack::H264(H264Depacketizer::default()),
        };
        TrackRec {
            id,
            peer,
            mid,
            codec,
            source,
            layer: None,
            ssrc: None,
            next_seq: None,
            pending: BTreeMap::new(),
            depack,
            extra: CodecExtra::None,
            frame: Vec::new(),
            frame_time: None,
            frame_ok: false,
            need_key: codec != RecordedCodec::Opus,
            base: None,
            clock: if codec == RecordedCodec::Opus { 48_000 } else { 90_000 },
            last_ms: None,
            announced: false,
            rebase_at: false,
        }
    }

    fn video(&self) -> bool {
        self.codec != RecordedCodec::Opus
    }

    /// The best simulcast layer arriving now (the highest declared layer seen in the last
    /// [`crate::track::LAYER_ACTIVE_WINDOW`], as for a subscriber who wants the best).
    fn best_layer(&self, now: Instant) -> Option<Rid> {
        self.source.upgrade()?.layer_for(VideoQuality::High, now)
    }

    fn packet(
        &mut self,
        now: Instant,
        started: Instant,
        room: &str,
        p: &RtpIn,
        out: &mut VecDeque<Output>,
        asks: &mut Vec<Ask>,
    ) {
        if let Some(rid) = p.rid {
            if self.layer != Some(rid) {
                // Only towards the best layer arriving (which is the current one's successor
                // when the current one stops).
                if self.best_layer(now) != Some(rid) {
                    return;
                }
                if !p.keyframe {
                    asks.push((self.peer, self.mid, Some(rid)));
                    return;
                }
                // Switch at this keyframe: a new sequence space and a new time base.
                self.layer = Some(rid);
                self.restart_sequence();
                self.rebase_at = true;
            }
        }
        if self.ssrc != Some(p.ssrc) {
            // A new layer, or the browser changed its SSRC: sequence numbers start over.
            if self.ssrc.is_some() && p.rid.is_none() {
                self.lost(asks);
            }
            self.ssrc = Some(p.ssrc);
            self.next_seq = None;
            self.pending.clear();
        }
        let pkt = Pkt { time: p.time.numer(), arrived: p.arrived, marker: p.marker, payload: p.payload.clone() };
        let next = *self.next_seq.get_or_insert(p.seq);
        if p.seq < next {
            return; // a duplicate, or too late: its frame was given up
        }
        if p.seq == next && self.pending.is_empty() {
            self.next_seq = Some(next + 1);
            self.ordered(started, room, pkt, out, asks);
            return;
        }
        if p.seq - next > 10 * REORDER_MAX as u64 {
            // A jump no reordering explains (the sender restarted its numbering): start again.
            self.pending.clear();
            self.next_seq = Some(p.seq + 1);
            self.lost(asks);
            self.ordered(started, room, pkt, out, asks);
            return;
        }
        self.pending.insert(p.seq, pkt);
        self.drain(now, started, room, out, asks);
    }

    /// Takes what is in order from the buffer; gives up a gap that waited too long.
    fn drain(&mut self, now: Instant, started: Instant, room: &str, out: &mut VecDeque<Output>, asks: &mut Vec<Ask>) {
        loop {
            let Some(next) = self.next_seq else { return };
            if let Some(pkt) = self.pending.remove(&next) {
                self.next_seq = Some(next + 1);
                self.ordered(started, room, pkt, out, asks);
                continue;
            }
            let Some((&first, oldest)) = self.pending.iter().next() else { return };
            let waited = self.pending.values().map(|p| p.arrived).min().unwrap_or(oldest.arrived);
            if now.saturating_duration_since(waited) < REORDER_WAIT && self.pending.len() < REORDER_MAX {
                return;
            }
            self.next_seq = Some(first);
            self.lost(asks);
        }
    }

    fn restart_sequence(&mut self) {
        self.next_seq = None;
        self.pending.clear();
        self.ssrc = None;
        self.frame.clear();
        self.frame_time = None;
        self.frame_ok = false;
        self.need_key = self.video();
    }

    /// Packets are missing for good: the frame being joined is dropped, and video waits for a
    /// keyframe, asked for now.
    fn lost(&mut self, asks: &mut Vec<Ask>) {
        self.frame_ok = false;
        if self.video() {
            self.need_key = true;
            asks.push((self.peer, self.mid, self.layer));
        }
    }

    /// The next packet in sequence order.
    fn ordered(&mut self, started: Instant, room: &str, pkt: Pkt, out: &mut VecDeque<Output>, asks: &mut Vec<Ask>) {
        if self.frame_time != Some(pkt.time) {
            // A new frame; one still open lost its end (its marker packet).
            self.frame.clear();
            self.frame_time = Some(pkt.time);
            self.frame_ok = match &self.depack {
                Depack::Opus => true,
                Depack::Vp8(d) => d.is_partition_head(&pkt.payload),
                Depack::H264(d) => d.is_partition_head(&pkt.payload),
            };
        }
        if self.frame_ok {
            let ok = match &mut self.depack {
                Depack::Opus => {
                    self.frame.extend_from_slice(&pkt.payload);
                    true
                }
                Depack::Vp8(d) => d.depacketize(&pkt.payload, &mut self.frame, &mut self.extra).is_ok(),
                Depack::H264(d) => d.depacketize(&pkt.payload, &mut self.frame, &mut self.extra).is_ok(),
            };
            self.frame_ok = ok && self.frame.len() <= MAX_FRAME_BYTES;
        }
        let complete = match &self.depack {
            Depack::Opus => true,
            Depack::Vp8(d) => d.is_partition_tail(pkt.marker, &pkt.payload),
            Depack::H264(d) => d.is_partition_tail(pkt.marker, &pkt.payload),
        };
        if !complete {
            return;
        }
        let frame = std::mem::take(&mut self.frame);
        let ok = std::mem::replace(&mut self.frame_ok, false);
        self.frame_time = None;
        if !ok || frame.is_empty() {
            if self.video() {
                self.need_key = true;
                asks.push((self.peer, self.mid, self.layer));
            }
            return;
        }
        let keyframe = match self.codec {
            RecordedCodec::Opus => true,
            RecordedCodec::Vp8 => frame[0] & 0x01 == 0,
            RecordedCodec::H264 => h264_keyframe(&frame),
        };
        if self.need_key {
            if !keyframe {
                return;
            }
            self.need_key = false;
        }
        let arrived_ms = pkt.arrived.saturating_duration_since(started).as_millis() as u64;
        if std::mem::take(&mut self.rebase_at) || self.base.is_none() {
            // The first frame, or the first of a new layer: its arrival places it.
            let at = self.last_ms.map_or(arrived_ms, |l| arrived_ms.max(l + 1));
            self.base = Some((pkt.time, at));
        }
        let (base_rtp, base_ms) = self.base.unwrap_or((pkt.time, arrived_ms));
        let offset = pkt.time.saturating_sub(base_rtp) * 1000 / self.clock;
        // Never backwards (a reordered frame of an earlier time cannot come after its successor
        // here, but a new base can land near the last frame).
        let at_ms = self.last_ms.map_or(base_ms + offset, |l| (base_ms + offset).max(l));
        self.last_ms = Some(at_ms);
        if !self.announced {
            self.announced = true;
            let kind = if self.video() { RecordedKind::Video } else { RecordedKind::Audio };
            out.push_back(Output::Record(Recorded::TrackStarted {
                room: room.to_string(),
                track: self.id,
                peer: self.peer,
                kind,
                codec: self.codec,
                at_ms,
            }));
        }
        out.push_back(Output::Record(Recorded::Frame { track: self.id, at_ms, keyframe, data: frame }));
    }

    fn end(self, at_ms: u64, out: &mut VecDeque<Output>) {
        if self.announced {
            out.push_back(Output::Record(Recorded::TrackEnded { track: self.id, at_ms }));
        }
    }
}

/// An H.264 access unit (Annex-B) holds an IDR slice (type 5).
fn h264_keyframe(au: &[u8]) -> bool {
    let mut i = 0;
    while i + 3 < au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            if au[i + 3] & 0x1f == 5 {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}
