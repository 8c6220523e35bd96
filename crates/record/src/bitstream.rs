//! What the writer needs to know of the codecs' bitstreams: VP8 keyframes and their size, Opus
//! packet durations, H.264 NAL units (Annex B → AVC), SPS sizes and the
//! `AVCDecoderConfigurationRecord`. Every function takes untrusted bytes and never panics.

/// VP8: the frame is a keyframe (bit 0 of the frame tag is 0 and the start code `9d 01 2a`
/// follows the 3-byte tag); returns its width and height (14 bits each, little endian).
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((width, height))
}

/// The 19-byte `OpusHead` for Matroska's `CodecPrivate` (RFC 7845 §5.1): version 1, two
/// channels (WebRTC's `opus/48000/2`; a mono stream decodes fine as stereo), pre-skip 0 (WebRTC
/// packets start at once), 48 kHz, gain 0, mapping family 0.
pub fn opus_head() -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(2); // channels
    head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
    head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family
    head
}

/// Opus: the packet's duration in microseconds from its TOC byte (RFC 6716 §3.1), or `None`
/// for an empty or malformed packet.
pub fn opus_packet_us(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][usize::from(config % 4)],
        12..=15 => [10_000, 20_000][usize::from(config % 2)],
        _ => [2_500, 5_000, 10_000, 20_000][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    Some(frame_us * frames)
}

/// The NAL units of an Annex-B access unit (start codes `00 00 01` or `00 00 00 01`), trailing
/// zero bytes removed. Data with no start code at all is taken as one NAL unit.
pub fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start of the start code, start of the NAL)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    if starts.is_empty() {
        return if data.is_empty() { Vec::new() } else { vec![data] };
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &(_, begin)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |&(code, _)| code);
        let mut nal = &data[begin..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    nals
}

/// The H.264 NAL unit type (`nal_unit_type`, the low 5 bits of the first byte).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// NAL units as AVC samples: each prefixed with its length, 4 bytes big endian.
pub fn avc_sample(nals: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nals.iter().map(|n| n.len() + 4).sum());
    for nal in nals {
        // A NAL unit longer than 4 GiB is not something a frame can hold.
        let len = u32::try_from(nal.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
    out
}

/// The `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 §5.2.4.1) for one SPS and one PPS,
/// with 4-byte NAL lengths. `None` if the SPS is too short to hold its profile and level.
pub fn avc_decoder_config(sps: &[u8], pps: &[u8]) -> Option<Vec<u8>> {
    if sps.len() < 4 {
        return None;
    }
    let sps_len = u16::try_from(sps.len()).ok()?;
    let pps_len = u16::try_from(pps.len()).ok()?;
    let mut out = Vec::with_capacity(11 + sps.len() + pps.len());
    out.push(1); // configurationVersion
    out.extend_from_slice(&sps[1..4]); // profile, compatibility, level
    out.push(0xfc | 3); // lengthSizeMinusOne = 3
    out.push(0xe0 | 1); // one SPS
    out.extend_from_slice(&sps_len.to_be_bytes());
    out.extend_from_slice(sps);
    out.push(1); // one PPS
    out.extend_from_slice(&pps_len.to_be_bytes());
    out.extend_from_slice(pps);
    Some(out)
}

/// The picture size an H.264 SPS NAL unit (with its header byte) describes, cropping applied.
pub fn h264_sps_size(sps: &[u8]) -> Option<(u32, u32)> {
    if nal_type(sps) != 7 {
        return None;
    }
    let rbsp = unescape_rbsp(sps.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bits(1)? == 1;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.bits(1)? == 1;
    if !frame_mbs_only {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.bits(1)? == 1 {
        crop_l = r.ue()?.into();
        crop_r = r.ue()?.into();
        crop_t = r.ue()?.into();
        crop_b = r.ue()?.into();
    }
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (crop_x, crop_y) = if chroma_format_idc == 0 || separate_colour_plane {
        (1, field_factor)
    } else {
        let (sub_w, sub_h) = match chroma_format_idc {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        (sub_w, sub_h * field_factor)
    };
    let width = (width_mbs * 16).checked_sub((crop_l + crop_r) * crop_x)?;
    let height = (height_map_units * 16 * field_factor).checked_sub((crop_t + crop_b) * crop_y)?;
    if width == 0 || height == 0 {
        return None;
    }
    Some((u32::try_from(width).ok()?, u32::try_from(height).ok()?))
}

fn skip_scaling_list(r: &mut BitReader, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + i64::from(r.se()?) + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Removes the emulation-prevention bytes (`00 00 03` → `00 00`).
fn unescape_rbsp(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    /// Exp-Golomb, unsigned.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        u32::try_from((1u64 << zeros) - 1 + u64::from(rest)).ok()
    }

    /// Exp-Golomb, signed.
    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_header() {
        // A keyframe tag (bit 0 clear), the start code, 320 x 240 with scale bits set.
        let frame = [0x50, 0x2d, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x41, 0xf0, 0x80, 0x00];
        assert_eq!(vp8_keyframe_size(&frame), Some((320, 240)));
        let mut inter = frame;
        inter[0] |= 1;
        assert_eq!(vp8_keyframe_size(&inter), None);
        assert_eq!(vp8_keyframe_size(&frame[..9]), None);
        assert_eq!(vp8_keyframe_size(&[]), None);
    }

    #[test]
    fn opus_durations() {
        assert_eq!(opus_head().len(), 19);
        assert_eq!(opus_packet_us(&[0xfc]), Some(20_000)); // CELT FB 20 ms, one frame
        assert_eq!(opus_packet_us(&[0x78 | 1]), Some(40_000)); // hybrid FB 20 ms, two frames
        assert_eq!(opus_packet_us(&[0x08]), Some(20_000)); // SILK NB 20 ms
        assert_eq!(opus_packet_us(&[0xe3, 0x03]), Some(7_500)); // CELT 2.5 ms, three frames
        assert_eq!(opus_packet_us(&[0xe3]), None);
        assert_eq!(opus_packet_us(&[]), None);
    }

    #[test]
    fn annexb_split() {
        let data = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 4, 5, 0];
        let nals = annexb_nals(&data);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]);
        assert_eq!(annexb_nals(&[0x41, 9]), vec![&[0x41, 9][..]]);
        assert!(annexb_nals(&[]).is_empty());
        assert!(annexb_nals(&[0, 0, 1]).is_empty());
        assert_eq!(avc_sample(&nals[..2]), vec![0, 0, 0, 3, 0x67, 1, 2, 0, 0, 0, 2, 0x68, 3]);
    }

    #[test]
    fn sps_sizes() {
        // x264, constrained baseline, 320 x 240.
        let sps = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03,
            0x03, 0x20, 0xf1, 0x42, 0xa4, 0x80,
        ];
        assert_eq!(h264_sps_size(&sps), Some((320, 240)));
        // x264, interlaced high profile, 176 x 144 (coded as 160 lines per field pair, cropped).
        let sps = [
            0x67, 0x64, 0x00, 0x15, 0xac, 0xd9, 0x42, 0xca, 0xfc, 0xb8, 0x08, 0x80, 0x00, 0x00, 0x03, 0x00, 0x80, 0x00,
            0x00, 0x19, 0x0f, 0x8a, 0x14, 0xcb,
        ];
        assert_eq!(h264_sps_size(&sps), Some((176, 144)));
        // x264, high profile, 1920 x 1080 (cropped from 1088).
        let sps = [
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04,
            0x00, 0x00, 0x03, 0x00, 0xc8, 0x3c, 0x60, 0xc6, 0x58,
        ];
        assert_eq!(h264_sps_size(&sps), Some((1920, 1080)));
        for n in 0..sps.len() {
            let _ = h264_sps_size(&sps[..n]); // never panics
        }
        assert_eq!(h264_sps_size(&[0x68, 1, 2]), None);
        let config = avc_decoder_config(&sps, &[0x68, 0xeb, 0xe3, 0xcb]).expect("long enough");
        assert_eq!(&config[..6], &[1, 0x64, 0x00, 0x28, 0xff, 0xe1]);
        assert_eq!(avc_decoder_config(&[0x67, 1], &[0x68]), None);
    }
}
