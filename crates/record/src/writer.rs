//! [`TrackWriter`]: one track's frames into one WebM/Matroska file, written as they come.
//!
//! # The file
//!
//! ```text
//! EBML header          DocType "webm" (Opus, VP8) or "matroska" (H.264)
//! Segment              unknown size
//!   Info               TimestampScale 1 ms, MuxingApp/WritingApp "huddle",
//!                      an 11-byte Void that finish() turns into the Duration
//!   Tracks             one TrackEntry, number 1
//!   Cluster            unknown size: Timestamp, then one SimpleBlock per frame
//!   Cluster            …
//! ```
//!
//! Nothing is written before the first frame that can start the file: any audio frame, a video
//! keyframe (earlier video frames are dropped and counted: [`TrackWriter::dropped`]). A new
//! cluster starts at every video keyframe, when a block's timestamp would no longer fit the
//! block's signed 16-bit offset from its cluster, and every [`CLUSTER_MAX_MS`].
//!
//! # Timestamps
//!
//! [`TrackWriter::write_frame`] takes times on the recording's clock (ms since the recording
//! started). The file's own timestamps start at 0 at the first written frame; that frame's
//! recording time is [`TrackWriter::start_ms`], which the manifest keeps as the track's `start`.
//! A time earlier than the previous frame's is clamped to it.
//!
//! # Durability
//!
//! The `File` sits behind a 64 KiB `BufWriter` behind a small adapter whose `flush` does
//! nothing, because `ebml-iterable`'s `TagWriter` flushes its destination after every element.
//! The buffer is really flushed (to the OS, not fsynced) at every new cluster, at least once a
//! second of media time, and on [`TrackWriter::flush`]: after a `kill -9` the file holds
//! everything up to about a second before. [`TrackWriter::finish`] flushes, writes the duration
//! into the header and fsyncs. A file that was never finished has no duration and unknown
//! sizes; players and ffmpeg accept it, and [`scan`]/[`repair`] read it back.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use webm_iterable::errors::{TagIteratorError, TagWriterError};
use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};
use webm_iterable::{WebmIterator, WebmWriter, WriteOptions};

use crate::bitstream;

/// A cluster is closed after this much media time even without a keyframe.
pub const CLUSTER_MAX_MS: u64 = 5_000;
/// The buffer is flushed to the OS at least this often, in media time.
pub const FLUSH_INTERVAL_MS: u64 = 1_000;
/// What a video track's header says when the first keyframe's size cannot be read.
pub const FALLBACK_SIZE: (u32, u32) = (640, 480);

const BUFFER_BYTES: usize = 64 * 1024;
/// Void (1-byte id, 1-byte size, 9 bytes) = Duration (2-byte id, 1-byte size, 8-byte float).
const DURATION_SLOT: u64 = 11;
const TRACK_NUMBER: u64 = 1;

/// The codec of a track. Serialized as `"opus"`, `"vp8"`, `"h264"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Opus,
    Vp8,
    H264,
}

impl Codec {
    pub fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// The file extension for this codec's container: `webm`, or `mkv` for H.264 (WebM does not
    /// allow H.264).
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Opus | Codec::Vp8 => "webm",
            Codec::H264 => "mkv",
        }
    }

    fn codec_id(self) -> &'static str {
        match self {
            Codec::Opus => "A_OPUS",
            Codec::Vp8 => "V_VP8",
            Codec::H264 => "V_MPEG4/ISO/AVC",
        }
    }
}

/// The `BufWriter` with a no-op `flush` (see the module docs), counting what it is given.
struct Sink {
    out: BufWriter<File>,
    bytes: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One track's file. See the [module docs](self).
pub struct TrackWriter {
    tags: WebmWriter<Sink>,
    codec: Codec,
    /// The recording time of the first written frame; `None` until the header is written.
    start_ms: Option<u64>,
    /// The file time (ms since `start_ms`) of the last written frame.
    last_ms: u64,
    /// The last frame's duration, for the duration `finish` writes.
    last_frame_ms: u64,
    cluster_ms: Option<u64>,
    flushed_ms: u64,
    frames: u64,
    dropped: u64,
    size: Option<(u32, u32)>,
    /// Where the Void that becomes the Duration starts.
    duration_at: u64,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    failed: bool,
}

impl TrackWriter {
    /// Creates the file (`create_new`: an existing file is an error; the parent directory must
    /// exist). Nothing is written to it until the first frame.
    pub fn create(path: &Path, codec: Codec) -> io::Result<TrackWriter> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let sink = Sink { out: BufWriter::with_capacity(BUFFER_BYTES, file), bytes: 0 };
        Ok(TrackWriter {
            tags: WebmWriter::new(sink),
            codec,
            start_ms: None,
            last_ms: 0,
            last_frame_ms: if codec.is_video() { 33 } else { 20 },
            cluster_ms: None,
            flushed_ms: 0,
            frames: 0,
            dropped: 0,
            size: None,
            duration_at: 0,
            sps: None,
            pps: None,
            failed: false,
        })
    }

    /// Writes one encoded frame: an Opus packet, a whole VP8 frame, or an H.264 access unit in
    /// Annex B (start codes). `time_ms` is its presentation time on the recording's clock (ms
    /// since the recording started), non-decreasing (an earlier time is clamped to the previous
    /// frame's).
    ///
    /// `keyframe` is the caller's word for H.264. For VP8 the frame's own header decides (a
    /// keyframe is one whose header says so and gives its size), and every Opus packet is a
    /// keyframe. Video frames before the first keyframe are dropped (and counted), as are H.264
    /// keyframes before an SPS and a PPS have been seen (they may come in earlier access units).
    /// Empty frames are ignored.
    ///
    /// After an I/O error the writer is broken: every later call fails.
    pub fn write_frame(&mut self, time_ms: u64, keyframe: bool, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this track failed"));
        }
        let result = self.write_frame_inner(time_ms, keyframe, data);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn write_frame_inner(&mut self, time_ms: u64, keyframe: bool, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (keyframe, payload): (bool, Cow<'_, [u8]>) = match self.codec {
            Codec::Opus => (true, Cow::Borrowed(data)),
            Codec::Vp8 => (bitstream::vp8_keyframe_size(data).is_some(), Cow::Borrowed(data)),
            Codec::H264 => {
                let nals = bitstream::annexb_nals(data);
                for nal in &nals {
                    match bitstream::nal_type(nal) {
                        7 => self.sps = Some(nal.to_vec()),
                        8 => self.pps = Some(nal.to_vec()),
                        _ => {}
                    }
                }
                if nals.is_empty() {
                    return Ok(());
                }
                (keyframe, Cow::Owned(bitstream::avc_sample(&nals)))
            }
        };

        let start_ms = match self.start_ms {
            Some(start) => start,
            None => {
                if !keyframe || !self.write_header(data)? {
                    self.dropped += 1;
                    return Ok(());
                }
                self.start_ms = Some(time_ms);
                time_ms
            }
        };

        let t = time_ms.saturating_sub(start_ms).max(self.last_ms);
        let new_cluster = match self.cluster_ms {
            None => true,
            Some(cluster) => {
                (self.codec.is_video() && keyframe) || t - cluster >= CLUSTER_MAX_MS || t - cluster > i16::MAX as u64
            }
        };
        if new_cluster {
            if self.cluster_ms.is_some() {
                // An unknown-size cluster ends where the next one starts: this writes nothing.
                self.tags.write(&MatroskaSpec::Cluster(Master::End)).map_err(tag_error)?;
            }
            self.flush()?;
            self.flushed_ms = t;
            self.tags
                .write_advanced(&MatroskaSpec::Cluster(Master::Start), WriteOptions::is_unknown_sized_element())
                .map_err(tag_error)?;
            self.tags.write(&MatroskaSpec::Timestamp(t)).map_err(tag_error)?;
            self.cluster_ms = Some(t);
        }
        let offset = t - self.cluster_ms.unwrap_or(t);
        let offset = i16::try_from(offset).unwrap_or(i16::MAX); // < 2^15 by the cluster rule above
        let block = SimpleBlock::new_uncheked(&payload, TRACK_NUMBER, offset, false, None, false, keyframe);
        self.tags.write(&MatroskaSpec::from(block)).map_err(tag_error)?;

        if self.frames > 0 && self.codec.is_video() && t > self.last_ms {
            self.last_frame_ms = (t - self.last_ms).min(1_000);
        }
        if self.codec == Codec::Opus {
            if let Some(us) = bitstream::opus_packet_us(data) {
                self.last_frame_ms = us.div_ceil(1_000);
            }
        }
        self.frames += 1;
        self.last_ms = t;
        if t >= self.flushed_ms + FLUSH_INTERVAL_MS {
            self.flush()?;
            self.flushed_ms = t;
        }
        Ok(())
    }

    /// Writes the EBML header, the segment's start, Info and Tracks, for a first frame that can
    /// start the file. `Ok(false)`: it cannot (H.264 without SPS and PPS yet).
    fn write_header(&mut self, first: &[u8]) -> io::Result<bool> {
        let mut entry = vec![
            MatroskaSpec::TrackNumber(TRACK_NUMBER),
            MatroskaSpec::TrackUID(RandomState::new().hash_one(self as *const Self as usize) | 1),
            MatroskaSpec::TrackType(if self.codec.is_video() { 1 } else { 2 }),
            MatroskaSpec::FlagLacing(0),
            MatroskaSpec::Language("und".into()),
            MatroskaSpec::CodecID(self.codec.codec_id().into()),
        ];
        match self.codec {
            Codec::Opus => {
                entry.push(MatroskaSpec::CodecPrivate(bitstream::opus_head()));
                entry.push(MatroskaSpec::CodecDelay(0));
                entry.push(MatroskaSpec::SeekPreRoll(80_000_000));
                entry.push(MatroskaSpec::Audio(Master::Full(vec![
                    MatroskaSpec::SamplingFrequency(48_000.0),
                    MatroskaSpec::Channels(2),
                ])));
            }
            Codec::Vp8 => {
                let size = bitstream::vp8_keyframe_size(first).unwrap_or(FALLBACK_SIZE);
                self.size = Some(size);
                entry.push(video_element(size));
            }
            Codec::H264 => {
                let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else { return Ok(false) };
                let Some(config) = bitstream::avc_decoder_config(sps, pps) else { return Ok(false) };
                let size = bitstream::h264_sps_size(sps).unwrap_or_else(|| {
                    tracing::debug!("unreadable H.264 SPS; the track header says {FALLBACK_SIZE:?}");
                    FALLBACK_SIZE
                });
                self.size = Some(size);
                entry.push(MatroskaSpec::CodecPrivate(config));
                entry.push(video_element(size));
            }
        }
        let doc_type = if self.codec == Codec::H264 { "matroska" } else { "webm" };
        let header = MatroskaSpec::Ebml(Master::Full(vec![
            MatroskaSpec::EbmlVersion(1),
            MatroskaSpec::EbmlReadVersion(1),
            MatroskaSpec::EbmlMaxIdLength(4),
            MatroskaSpec::EbmlMaxSizeLength(8),
            MatroskaSpec::DocType(doc_type.into()),
            MatroskaSpec::DocTypeVersion(4),
            MatroskaSpec::DocTypeReadVersion(2),
        ]));
        self.tags.write(&header).map_err(tag_error)?;
        self.tags
            .write_advanced(&MatroskaSpec::Segment(Master::Start), WriteOptions::is_unknown_sized_element())
            .map_err(tag_error)?;
        let info = MatroskaSpec::Info(Master::Full(vec![
            MatroskaSpec::TimestampScale(1_000_000),
            MatroskaSpec::MuxingApp("huddle".into()),
            MatroskaSpec::WritingApp("huddle".into()),
            MatroskaSpec::Void(vec![0; DURATION_SLOT as usize - 2]),
        ]));
        self.tags.write(&info).map_err(tag_error)?;
        // Info was the last thing written and the Void its last child.
        self.duration_at = self.tags.get_ref().bytes - DURATION_SLOT;
        let tracks = MatroskaSpec::Tracks(Master::Full(vec![MatroskaSpec::TrackEntry(Master::Full(entry))]));
        self.tags.write(&tracks).map_err(tag_error)?;
        Ok(true)
    }

    /// Hands what is buffered to the OS (no fsync). The writer does this by itself at every new
    /// cluster and every second of media time; call it when a track falls silent (muted, camera
    /// off) so that its last frames reach the disk too.
    pub fn flush(&mut self) -> io::Result<()> {
        self.tags.get_mut().out.flush()
    }

    /// Bytes written so far (including what is still buffered): the file's size once flushed.
    pub fn bytes(&self) -> u64 {
        self.tags.get_ref().bytes
    }

    /// Frames written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames dropped while waiting for the first keyframe (video).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The recording time (ms) of the first written frame: the track's `start` in the manifest.
    /// `None` until a frame has been written.
    pub fn start_ms(&self) -> Option<u64> {
        self.start_ms
    }

    /// The recording time (ms) at which the last written frame ends (its time plus its
    /// duration): the track's `end` in the manifest. `None` until a frame has been written.
    pub fn end_ms(&self) -> Option<u64> {
        self.start_ms.map(|start| start + self.duration_ms())
    }

    /// Video: the size the first keyframe gave (the track header's `PixelWidth`/`PixelHeight`).
    /// Later keyframes may change it (simulcast layers, camera ↔ screen); decoders follow.
    pub fn size(&self) -> Option<(u32, u32)> {
        self.size
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    fn duration_ms(&self) -> u64 {
        if self.frames == 0 {
            0
        } else {
            self.last_ms + self.last_frame_ms
        }
    }

    /// Flushes, writes the duration into the header (when any frame was written), fsyncs and
    /// closes. Returns the file's size. A track that never got a frame leaves an empty file.
    pub fn finish(self) -> io::Result<u64> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this track failed"));
        }
        let duration = self.duration_ms();
        let started = self.start_ms.is_some();
        let duration_at = self.duration_at;
        let Sink { out, bytes } = self.tags.into_inner().map_err(tag_error)?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        if started {
            let mut element = vec![0x44, 0x89, 0x88];
            element.extend_from_slice(&(duration as f64).to_be_bytes());
            file.seek(SeekFrom::Start(duration_at))?;
            file.write_all(&element)?;
        }
        file.sync_all()?;
        Ok(bytes)
    }
}

fn video_element((width, height): (u32, u32)) -> MatroskaSpec {
    MatroskaSpec::Video(Master::Full(vec![
        MatroskaSpec::PixelWidth(width.into()),
        MatroskaSpec::PixelHeight(height.into()),
    ]))
}

fn tag_error(e: TagWriterError) -> io::Error {
    match e {
        TagWriterError::WriteError { source } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// What [`scan`] found in a track file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete blocks (frames).
    pub frames: u64,
    pub keyframes: u64,
    /// The file time (ms, 0 = the file's first frame) of the last complete block.
    pub last_ms: Option<u64>,
    /// Where the last complete block ends; 0 when there is none.
    pub valid_len: u64,
    /// The file's length.
    pub len: u64,
    /// The file was read to its end without error (a finished file, or one cut between blocks).
    pub complete: bool,
}

/// Reads a track file (this crate's, or any Matroska file with one track of SimpleBlocks) to
/// its end or its first damage: for a recording that was interrupted, the manifest's `end`
/// (`start + last_ms` + a frame), `frames` and `bytes`.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    // A second handle reads each block's size field, whose length the iterator does not report.
    let mut sizes = File::open(path)?;
    let mut tags = WebmIterator::new(BufReader::with_capacity(BUFFER_BYTES, file), &[]);
    let mut scan = Scan { len, ..Scan::default() };
    let mut cluster_ms: Option<u64> = None;
    loop {
        match tags.next() {
            None => {
                scan.complete = true;
                break;
            }
            Some(Err(TagIteratorError::ReadError { source })) => return Err(source),
            Some(Err(e)) => {
                tracing::debug!(path = %path.display(), "track file ends early: {e}");
                break;
            }
            Some(Ok(MatroskaSpec::Cluster(Master::Start))) => cluster_ms = None,
            Some(Ok(MatroskaSpec::Timestamp(t))) => cluster_ms = Some(t),
            Some(Ok(MatroskaSpec::SimpleBlock(data))) => {
                // (`SimpleBlock::try_from` panics on a block shorter than its header.)
                let Some((offset, keyframe)) = block_header(&data) else { break };
                let at = tags.last_emitted_tag_offset() as u64;
                let mut size_byte = [0u8];
                sizes.seek(SeekFrom::Start(at + 1))?;
                sizes.read_exact(&mut size_byte)?;
                let size_len = u64::from(size_byte[0].leading_zeros()) + 1;
                let time = cluster_ms.unwrap_or(0).saturating_add_signed(offset.into());
                scan.frames += 1;
                scan.keyframes += u64::from(keyframe);
                scan.last_ms = Some(scan.last_ms.map_or(time, |last| last.max(time)));
                scan.valid_len = at + 1 + size_len + data.len() as u64;
            }
            Some(Ok(_)) => {}
        }
    }
    Ok(scan)
}

/// A SimpleBlock's timestamp offset and keyframe flag; `None` if it is too short to have them.
fn block_header(data: &[u8]) -> Option<(i16, bool)> {
    let track_len = usize::try_from(data.first()?.leading_zeros()).ok()? + 1;
    let header = data.get(track_len..track_len + 3)?;
    Some((i16::from_be_bytes([header[0], header[1]]), header[2] & 0x80 != 0))
}

/// [`scan`]s the file and, when it ends in a torn block (a crash while writing), cuts that
/// off, so that it ends with its last complete frame. A file with no complete frame is emptied.
pub fn repair(path: &Path) -> io::Result<Scan> {
    let mut scan = scan(path)?;
    if !scan.complete && scan.valid_len < scan.len {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(scan.valid_len)?;
        file.sync_all()?;
        scan.len = scan.valid_len;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("huddle-record-writer-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// A VP8-looking frame: a keyframe carries the start code and its size.
    fn vp8(key: bool, (w, h): (u16, u16), len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![if key { 0x10 } else { 0x11 }, 0x22, 0x00];
        if key {
            f.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            f.extend_from_slice(&w.to_le_bytes());
            f.extend_from_slice(&h.to_le_bytes());
        }
        f.resize(len.max(f.len()), fill);
        f
    }

    /// (cluster timestamp, block offset, keyframe, payload) of every block, and every tag.
    /// (cluster timestamp, block offset, keyframe, payload).
    type Block = (u64, i16, bool, Vec<u8>);

    fn read(path: &Path) -> (Vec<MatroskaSpec>, Vec<Block>) {
        let file = File::open(path).expect("opens");
        let mut tags = Vec::new();
        let mut blocks = Vec::new();
        let mut cluster = 0;
        for tag in WebmIterator::new(file, &[MatroskaSpec::Info(Master::Start), MatroskaSpec::Tracks(Master::Start)]) {
            let tag = tag.expect("valid file");
            match &tag {
                MatroskaSpec::Timestamp(t) => cluster = *t,
                MatroskaSpec::SimpleBlock(data) => {
                    let b = SimpleBlock::try_from(data).expect("a block");
                    assert_eq!(b.track, 1);
                    assert_eq!(b.lacing, None);
                    blocks.push((cluster, b.timestamp, b.keyframe, b.raw_frame_data().to_vec()));
                }
                _ => {}
            }
            tags.push(tag);
        }
        (tags, blocks)
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).filter(|w| *w == needle).count()
    }

    const UNKNOWN: [u8; 8] = [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

    #[test]
    fn video_layout_clusters_and_timestamps() {
        let dir = temp("video");
        let path = dir.join("v.webm");
        let mut w = TrackWriter::create(&path, Codec::Vp8).expect("creates");
        assert!(TrackWriter::create(&path, Codec::Vp8).is_err(), "create_new");
        // Before the first keyframe: dropped, nothing written.
        w.write_frame(50, false, &vp8(false, (0, 0), 40, 1)).expect("writes");
        w.write_frame(60, true, &vp8(false, (0, 0), 40, 2)).expect("writes"); // says key, is not
        assert_eq!((w.bytes(), w.frames(), w.dropped(), w.start_ms()), (0, 0, 2, None));
        assert_eq!(fs::metadata(&path).expect("exists").len(), 0);

        w.write_frame(100, false, &vp8(true, (320, 240), 500, 3)).expect("writes");
        assert_eq!(w.start_ms(), Some(100));
        assert_eq!(w.size(), Some((320, 240)));
        w.write_frame(140, false, &vp8(false, (0, 0), 100, 4)).expect("writes");
        w.write_frame(130, false, &vp8(false, (0, 0), 100, 5)).expect("writes"); // backwards: clamped to 140
        w.write_frame(180, false, &vp8(false, (0, 0), 100, 6)).expect("writes");
        let before_key = w.bytes();
        w.write_frame(1_100, true, &vp8(true, (640, 360), 500, 7)).expect("writes"); // new cluster
        assert!(fs::metadata(&path).expect("exists").len() >= before_key, "flushed at the cluster boundary");
        w.write_frame(1_140, false, &vp8(false, (0, 0), 100, 8)).expect("writes");
        w.write_frame(7_000, false, &vp8(false, (0, 0), 100, 9)).expect("writes"); // > 5 s: new cluster
        w.write_frame(60_000, false, &vp8(false, (0, 0), 100, 10)).expect("writes"); // > i16: new cluster
        w.write_frame(60_040, false, &[]).expect("empty frames are ignored");
        assert_eq!(w.frames(), 8);
        assert_eq!(w.end_ms(), Some(60_000 + 1_000)); // the last interval, at most 1 s
        let written = w.bytes();
        let size = w.finish().expect("finishes");
        assert_eq!(size, written);
        assert_eq!(fs::metadata(&path).expect("exists").len(), size);

        let bytes = fs::read(&path).expect("reads");
        let mut segment = vec![0x18, 0x53, 0x80, 0x67];
        segment.extend_from_slice(&UNKNOWN);
        assert_eq!(count(&bytes, &segment), 1, "one unknown-size segment");
        let mut cluster = vec![0x1f, 0x43, 0xb6, 0x75];
        cluster.extend_from_slice(&UNKNOWN);
        assert_eq!(count(&bytes, &cluster), 4, "four unknown-size clusters");

        let (tags, blocks) = read(&path);
        assert!(tags.contains(&MatroskaSpec::DocType("webm".into())));
        let Some(MatroskaSpec::Info(Master::Full(info))) = tags.iter().find(|t| matches!(t, MatroskaSpec::Info(_)))
        else {
            panic!("no Info in {tags:?}")
        };
        assert!(info.contains(&MatroskaSpec::TimestampScale(1_000_000)));
        assert!(info.contains(&MatroskaSpec::MuxingApp("huddle".into())));
        assert!(info.contains(&MatroskaSpec::WritingApp("huddle".into())));
        assert!(info.contains(&MatroskaSpec::Duration(59_900.0 + 1_000.0)), "{info:?}");
        let Some(MatroskaSpec::Tracks(Master::Full(tracks))) =
            tags.iter().find(|t| matches!(t, MatroskaSpec::Tracks(_)))
        else {
            panic!("no Tracks")
        };
        let MatroskaSpec::TrackEntry(Master::Full(entry)) = &tracks[0] else { panic!("no TrackEntry") };
        assert!(entry.contains(&MatroskaSpec::CodecID("V_VP8".into())));
        assert!(entry.contains(&MatroskaSpec::TrackType(1)));
        assert!(entry.contains(&MatroskaSpec::Video(Master::Full(vec![
            MatroskaSpec::PixelWidth(320),
            MatroskaSpec::PixelHeight(240)
        ]))));

        let times: Vec<(u64, i16, bool)> = blocks.iter().map(|b| (b.0, b.1, b.2)).collect();
        assert_eq!(
            times,
            vec![
                (0, 0, true),
                (0, 40, false),
                (0, 40, false),
                (0, 80, false),
                (1_000, 0, true),
                (1_000, 40, false),
                (6_900, 0, false),
                (59_900, 0, false),
            ]
        );
        assert_eq!(blocks[2].3, vp8(false, (0, 0), 100, 5), "payloads are written as given");
        let scan = scan(&path).expect("scans");
        assert_eq!((scan.frames, scan.keyframes, scan.last_ms, scan.complete), (8, 2, Some(59_900), true));
        assert_eq!(scan.valid_len, size);
        fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn audio_clusters_and_flushes() {
        let dir = temp("audio");
        let path = dir.join("a.webm");
        let mut w = TrackWriter::create(&path, Codec::Opus).expect("creates");
        let packet = [0xfc, 1, 2, 3, 4, 5, 6, 7]; // CELT 20 ms
        let mut flushed_at = None;
        for i in 0..600u64 {
            // 12 s of 20 ms packets starting at 2 s
            w.write_frame(2_000 + i * 20, false, &packet).expect("writes");
            if flushed_at.is_none() && fs::metadata(&path).expect("exists").len() > 200 {
                flushed_at = Some(i * 20);
            }
        }
        // The header at the first cluster, then the data a second of media later; not per frame.
        assert_eq!(flushed_at, Some(1_000));
        assert_eq!(w.start_ms(), Some(2_000));
        assert_eq!(w.end_ms(), Some(2_000 + 12_000));
        w.finish().expect("finishes");
        let (tags, blocks) = read(&path);
        assert_eq!(blocks.len(), 600);
        assert!(blocks.iter().all(|b| b.2), "every audio frame is a keyframe");
        let clusters: Vec<u64> =
            tags.iter().filter_map(|t| if let MatroskaSpec::Timestamp(t) = t { Some(*t) } else { None }).collect();
        assert_eq!(clusters, vec![0, 5_000, 10_000]);
        let Some(MatroskaSpec::Tracks(Master::Full(tracks))) =
            tags.iter().find(|t| matches!(t, MatroskaSpec::Tracks(_)))
        else {
            panic!("no Tracks")
        };
        let MatroskaSpec::TrackEntry(Master::Full(entry)) = &tracks[0] else { panic!("no TrackEntry") };
        assert!(entry.contains(&MatroskaSpec::CodecID("A_OPUS".into())));
        assert!(entry.contains(&MatroskaSpec::CodecPrivate(bitstream::opus_head())));
        assert!(entry.contains(&MatroskaSpec::Audio(Master::Full(vec![
            MatroskaSpec::SamplingFrequency(48_000.0),
            MatroskaSpec::Channels(2)
        ]))));
        fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn crash_keeps_what_was_flushed_and_repair_cuts_a_torn_block() {
        let dir = temp("crash");
        let path = dir.join("v.webm");
        let mut w = TrackWriter::create(&path, Codec::Vp8).expect("creates");
        for i in 0..100u64 {
            let key = i % 25 == 0;
            w.write_frame(i * 40, key, &vp8(key, (320, 240), 3_000, i as u8)).expect("writes");
        }
        // kill -9: whatever is still in the buffer is lost, nothing is finished.
        std::mem::forget(w);
        let on_disk = scan(&path).expect("scans");
        assert!(on_disk.complete, "cut between blocks: {on_disk:?}");
        assert!(on_disk.frames >= 75, "everything up to the last cluster is there: {on_disk:?}");
        // A torn block: cut in the middle of the last one.
        let torn = on_disk.valid_len - 1_000;
        OpenOptions::new().write(true).open(&path).expect("opens").set_len(torn).expect("truncates");
        let s = scan(&path).expect("scans");
        assert!(!s.complete);
        assert_eq!(s.frames, on_disk.frames - 1);
        let repaired = repair(&path).expect("repairs");
        assert_eq!(repaired.len, s.valid_len);
        assert_eq!(fs::metadata(&path).expect("exists").len(), s.valid_len);
        let again = scan(&path).expect("scans");
        assert!(again.complete);
        assert_eq!(again.frames, s.frames);
        fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn scan_survives_garbage() {
        let dir = temp("garbage");
        let path = dir.join("g.webm");
        fs::write(&path, b"not a webm file").expect("writes");
        let s = scan(&path).expect("scans");
        assert_eq!((s.frames, s.valid_len, s.complete), (0, 0, false));
        assert_eq!(repair(&path).expect("repairs").len, 0);
        assert_eq!(fs::metadata(&path).expect("exists").len(), 0);
        let s = scan(&path).expect("scans an empty file");
        assert_eq!((s.frames, s.complete), (0, true));

        // A good file followed by a block too short to have a header.
        fs::remove_file(&path).expect("removes");
        let mut w = TrackWriter::create(&path, Codec::Opus).expect("creates");
        w.write_frame(0, true, &[0xfc, 1, 2]).expect("writes");
        let good = w.finish().expect("finishes");
        let mut bytes = fs::read(&path).expect("reads");
        bytes.extend_from_slice(&[0xa3, 0x82, 0x81, 0x00]);
        fs::write(&path, &bytes).expect("writes");
        let s = scan(&path).expect("scans");
        assert_eq!((s.frames, s.valid_len, s.complete), (1, good, false));
        for cut in 0..bytes.len() {
            fs::write(&path, &bytes[..cut]).expect("writes");
            scan(&path).expect("never panics, never fails on a short file");
        }
        fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn h264_waits_for_parameter_sets() {
        let dir = temp("h264");
        let path = dir.join("v.mkv");
        let mut w = TrackWriter::create(&path, Codec::H264).expect("creates");
        let sps: &[u8] = &[
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03,
            0x03, 0x20, 0xf1, 0x42, 0xa4, 0x80,
        ];
        let pps: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x21];
        let annexb =
            |nals: &[&[u8]]| -> Vec<u8> { nals.iter().flat_map(|n| [&[0, 0, 0, 1][..], n].concat()).collect() };
        w.write_frame(0, true, &annexb(&[idr])).expect("writes"); // no SPS/PPS yet: dropped
        w.write_frame(10, false, &annexb(&[sps, pps])).expect("writes"); // remembered, not a keyframe
        w.write_frame(20, true, &annexb(&[idr])).expect("writes");
        w.write_frame(53, false, &annexb(&[&[0x41, 0x9a, 0x02]])).expect("writes");
        assert_eq!((w.frames(), w.dropped(), w.start_ms(), w.size()), (2, 2, Some(20), Some((320, 240))));
        w.finish().expect("finishes");
        let (tags, blocks) = read(&path);
        assert!(tags.contains(&MatroskaSpec::DocType("matroska".into())));
        let private = tags.iter().find_map(|t| match t {
            MatroskaSpec::Tracks(Master::Full(tracks)) => match &tracks[0] {
                MatroskaSpec::TrackEntry(Master::Full(entry)) => entry.iter().find_map(|e| match e {
                    MatroskaSpec::CodecPrivate(p) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            },
            _ => None,
        });
        assert_eq!(private, bitstream::avc_decoder_config(sps, pps));
        assert_eq!(blocks[0].3, [&[0, 0, 0, 4][..], idr].concat(), "length-prefixed");
        assert_eq!((blocks[1].1, blocks[1].2), (33, false));
        fs::remove_dir_all(&dir).expect("cleans up");
    }
}
