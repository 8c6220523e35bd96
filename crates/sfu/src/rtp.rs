//! RTP-mode forwarding: a publisher's packets go to each subscriber as they arrived — the payload
//! shared by reference, never depacketised or repacketised — with only the header rewritten (and
//! VP8's picture ids), so that each subscriber sees one continuous stream per track across
//! simulcast layer switches and pauses.

use std::sync::Arc;
use std::time::Instant;

use str0m::format::{detect_h264_nalu, Codec, PayloadParams};
use str0m::media::{MediaTime, Mid, Rid};
use str0m::rtp::{RtpPacket, SeqNo, Ssrc, VideoOrientation, Vp8Descriptor, Vp8Patch};

use crate::track::TsRewrite;

/// One packet a publisher sent, as every subscriber's forwarding reads it.
#[derive(Debug)]
pub(crate) struct RtpIn {
    pub mid: Mid,
    /// The simulcast layer (`None` without simulcast).
    pub rid: Option<Rid>,
    pub params: PayloadParams,
    /// The publisher's SSRC for this track and layer (a browser may change it mid-call).
    pub ssrc: Ssrc,
    /// Extended sequence number (RTX repairs already turned back into the packet they repair).
    pub seq: u64,
    /// Extended RTP time in the codec's clock.
    pub time: MediaTime,
    pub arrived: Instant,
    pub marker: bool,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
    pub video_content_type: Option<u8>,
    pub payload: Arc<[u8]>,
    /// The first packet of a keyframe: where a subscriber can start a layer.
    pub keyframe: bool,
    /// VP8's payload descriptor, parsed once for all subscribers' picture-id rewriting.
    pub vp8: Option<Vp8Descriptor>,
}

/// H.264 NAL unit types: a keyframe starts with its parameter sets (SPS), else with the IDR slice.
const H264_SPS: u8 = 7;
const H264_IDR: u8 = 5;

impl RtpIn {
    pub(crate) fn new(packet: RtpPacket, mid: Mid, rid: Option<Rid>, params: PayloadParams) -> RtpIn {
        let payload = packet.payload;
        let (keyframe, vp8) = match params.spec().codec {
            Codec::Vp8 => match Vp8Descriptor::parse(&payload) {
                Ok(d) => (d.starts_keyframe(&payload), Some(d)),
                Err(_) => (false, None),
            },
            Codec::H264 => (detect_h264_nalu(&payload, H264_SPS) || detect_h264_nalu(&payload, H264_IDR), None),
            _ => (false, None),
        };
        let ext = &packet.header.ext_vals;
        RtpIn {
            mid,
            rid,
            params,
            ssrc: packet.header.ssrc,
            seq: *packet.seq_no,
            time: packet.time,
            arrived: packet.timestamp,
            marker: packet.header.marker,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            video_content_type: ext.video_content_type,
            payload,
            keyframe,
            vp8,
        }
    }
}

/// VP8 picture ids are 15 bits (Chromium always sends the long form).
const PICTURE_ID_MODULO: u32 = 1 << 15;

/// Makes one subscriber's copy of a track continuous: each simulcast layer has its own sequence
/// numbers, timestamps and VP8 picture ids, so at each [`Continuity::start`] (a layer switch, a
/// resume, the first packet) the output continues right after the last packet sent instead of
/// jumping to the new source's values. A receiver sees no gap to NACK, no time going backwards
/// and no picture that looks older than the one it just decoded.
#[derive(Debug, Default)]
pub(crate) struct Continuity {
    /// The source the output follows since the last start: its sequence numbers mean nothing for
    /// another SSRC.
    source: Option<Ssrc>,
    /// Added (wrapping) to the input sequence number.
    seq_offset: u64,
    /// Input packets before this one precede the current start and are not sent.
    seq_from: u64,
    /// The highest output sequence number so far.
    last_seq: Option<u64>,
    ts: TsRewrite,
    /// Added to VP8 picture ids and TL0PICIDX (modulo their widths).
    picture_offset: u32,
    tl0_offset: u8,
    /// The picture id and TL0PICIDX of the packet with the highest output sequence number.
    last_picture: Option<(u16, Option<u8>)>,
}

impl Continuity {
    /// Continues the output with `p` (a keyframe's first packet for video), after whatever was
    /// sent before.
    pub(crate) fn start(&mut self, p: &RtpIn) {
        // The first packet keeps its own low 16 bits: a fresh SRTP receiver expects rollover 0.
        let next = self.last_seq.map_or(p.seq & 0xffff, |s| s + 1);
        self.source = Some(p.ssrc);
        self.seq_offset = next.wrapping_sub(p.seq);
        self.seq_from = p.seq;
        self.ts.switch(p.time, p.arrived);
        if let (Some(d), Some((pic, tl0))) = (p.vp8, self.last_picture) {
            if let Some(new) = d.picture_id() {
                self.picture_offset = (u32::from(pic) + 1 + PICTURE_ID_MODULO - u32::from(new)) % PICTURE_ID_MODULO;
            }
            if let (Some(new), Some(last)) = (d.tl0_pic_idx(), tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(new);
            }
        }
    }

    /// Whether `p` comes from the source of the last start.
    pub(crate) fn follows(&self, p: &RtpIn) -> bool {
        self.source == Some(p.ssrc)
    }

    /// The output sequence number, RTP time and VP8 patch for `p`, or `None` for a packet from
    /// before the current start (or from another source).
    pub(crate) fn map(&mut self, p: &RtpIn) -> Option<(SeqNo, u32, Option<Vp8Patch>)> {
        if p.seq < self.seq_from || !self.follows(p) {
            return None;
        }
        let seq = p.seq.wrapping_add(self.seq_offset);
        let newest = self.last_seq.is_none_or(|s| seq > s);
        let time = self.ts.map(p.time, p.arrived, newest);
        let mut patch = None;
        if let Some(d) = p.vp8 {
            let picture = d.picture_id().map(|id| ((u32::from(id) + self.picture_offset) % PICTURE_ID_MODULO) as u16);
            let tl0 = d.tl0_pic_idx().map(|t| t.wrapping_add(self.tl0_offset));
            if newest {
                self.last_picture = picture.map(|id| (id, tl0));
            }
            if self.picture_offset != 0 || self.tl0_offset != 0 {
                let mut builder = d.patch();
                if let Some(id) = picture {
                    builder = builder.picture_id(id);
                }
                if let Some(t) = tl0 {
                    builder = builder.tl0_pic_idx(t);
                }
                // A 7-bit picture id that the new value does not fit goes out unpatched.
                patch = builder.build().ok();
            }
        }
        if newest {
            self.last_seq = Some(seq);
        }
        Some((seq.into(), time.numer() as u32, patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use str0m::media::Frequency;

    fn vp8_payload(picture_id: u16, tl0: u8, keyframe: bool) -> Vec<u8> {
        // X=1, S=1, PID=0; I=1, L=1, T=1; 15-bit picture id; TL0PICIDX; TID/Y/KEYIDX; then the
        // VP8 payload header, whose lowest bit is 0 for a keyframe.
        let mut p = vec![0x90, 0xe0, 0x80 | (picture_id >> 8) as u8, picture_id as u8, tl0, 0x00];
        p.push(if keyframe { 0x10 } else { 0x11 });
        p.extend_from_slice(&[0; 20]);
        p
    }

    fn packet(seq: u64, time: u64, at: Instant, picture_id: u16, tl0: u8, keyframe: bool) -> RtpIn {
        let payload: Arc<[u8]> = vp8_payload(picture_id, tl0, keyframe).into();
        let vp8 = Vp8Descriptor::parse(&payload).ok();
        RtpIn {
            mid: Mid::from("0"),
            rid: None,
            ssrc: 1.into(),
            params: str0m::format::CodecConfig::new_with_defaults()
                .find(|p| p.spec().codec == Codec::Vp8)
                .copied()
                .expect("VP8 is a default codec"),
            seq,
            time: MediaTime::new(time, Frequency::NINETY_KHZ),
            arrived: at,
            marker: true,
            audio_level: None,
            voice_activity: None,
            video_orientation: None,
            video_content_type: None,
            keyframe: vp8.is_some_and(|d| d.starts_keyframe(&payload)),
            payload,
            vp8,
        }
    }

    /// A continuity started with `p`, `p` sent.
    fn started_with(p: &RtpIn) -> Continuity {
        let mut c = Continuity::default();
        c.start(p);
        c.map(p).expect("a start is sent");
        c
    }

    #[test]
    fn a_vp8_keyframe_start_is_recognised() {
        let t = Instant::now();
        assert!(packet(1, 0, t, 5, 0, true).keyframe);
        assert!(!packet(1, 0, t, 5, 0, false).keyframe);
    }

    #[test]
    fn the_first_packet_starts_at_rollover_zero() {
        let t = Instant::now();
        let mut c = Continuity::default();
        let p = packet(3 * 65_536 + 100, 9_000, t, 7, 3, true);
        c.start(&p);
        let (seq, time, patch) = c.map(&p).expect("the start itself is sent");
        assert_eq!(*seq, 100);
        assert_eq!(time, 9_000);
        assert!(patch.is_none(), "nothing to rewrite before a switch");
    }

    #[test]
    fn a_layer_switch_continues_sequence_time_and_picture_ids() {
        let t0 = Instant::now();
        let mut c = started_with(&packet(1_000, 90_000, t0, 300, 40, true));
        for i in 1..3u64 {
            let p =
                packet(1_000 + i, 90_000 + i * 3_000, t0 + Duration::from_millis(33 * i), 300 + i as u16, 40, false);
            c.map(&p).expect("same layer");
        }
        // Another layer: its own numbering everywhere, starting with a keyframe 33 ms later.
        let t1 = t0 + Duration::from_millis(99);
        let key = packet(50_000, 7_000, t1, 32_760, 200, true);
        c.start(&key);
        let (seq, time, patch) = c.map(&key).expect("the keyframe is sent");
        assert_eq!(*seq, 1_003, "no gap, no jump");
        assert_eq!(time, 90_000 + 6_000 + 2_970, "33 ms after the last frame");
        assert!(patch.is_some(), "picture id rewritten");
        let next = packet(50_001, 10_000, t1 + Duration::from_millis(33), 32_761, 200, false);
        let (seq, _, _) = c.map(&next).expect("the new layer goes on");
        assert_eq!(*seq, 1_004);
        assert_eq!(c.last_picture, Some((304, Some(41))), "picture ids continue after 302, wrapping at 15 bits");
        // A late packet of the new layer from before its keyframe is not sent.
        assert!(c.map(&packet(49_999, 4_000, t1, 32_759, 200, false)).is_none());
    }

    #[test]
    fn a_retransmission_does_not_pull_the_time_base_back() {
        let t0 = Instant::now();
        let mut c = started_with(&packet(10, 0, t0, 1, 0, true));
        c.map(&packet(11, 3_000, t0 + Duration::from_millis(33), 2, 0, false));
        // The repair of packet 10 arrives late; a switch right after must still continue from 3000.
        c.map(&packet(10, 0, t0 + Duration::from_millis(60), 1, 0, false));
        let key = packet(500, 1_000_000, t0 + Duration::from_millis(66), 90, 9, true);
        c.start(&key);
        let (seq, time, _) = c.map(&key).expect("sent");
        assert_eq!(*seq, 12);
        assert_eq!(time, 3_000 + 2_970);
    }

    #[test]
    fn another_source_is_not_sent_until_it_starts() {
        let t0 = Instant::now();
        let mut c = started_with(&packet(40_000, 0, t0, 1, 0, true));
        // The publisher's browser changed the SSRC: a new numbering, here far below the old one.
        let mut other = packet(200, 90_000, t0 + Duration::from_millis(33), 1, 0, true);
        other.ssrc = 2.into();
        assert!(!c.follows(&other));
        assert!(c.map(&other).is_none(), "not mixed into the old numbering");
        c.start(&other);
        let (seq, _, _) = c.map(&other).expect("sent after its start");
        assert_eq!(*seq, (40_000 & 0xffff) + 1, "continuing the subscriber's numbering");
    }
}
