//! huddle's recordings: the files a recorded meeting leaves on disk, and the one file a host
//! downloads.
//!
//! The plan is `docs/design/recording.md`. This crate is the part that needs neither the SFU nor
//! tokio: it turns encoded frames into files, describes them, and composes them.
//!
//! # Modules
//!
//! - [`writer`] — [`TrackWriter`]: one WebM (Opus, VP8) or Matroska (H.264) file per track,
//!   written as the frames come: an EBML header, a `Segment` and `Cluster`s of **unknown size**
//!   and one `SimpleBlock` per frame, so a file cut short by a crash (`kill -9`, power loss) plays
//!   up to its last flushed block. Data reaches the OS at every new cluster and at least once a
//!   second of media time; a clean [`TrackWriter::finish`] also writes the duration into the
//!   header and fsyncs. [`writer::scan`] reads a file back (frames, duration, the length of its
//!   complete part) and can cut a torn last block off, for recordings that were interrupted.
//! - [`manifest`] — [`Manifest`]: `manifest.json` beside the tracks (camelCase JSON), written by
//!   the server whenever something changes (atomically: temporary file, fsync, rename) and read
//!   by the composer: who, which track files, when each starts and ends, and the timeline
//!   (joins, leaves, mutes, screen sharing, renames).
//! - [`compose`] — the composite: [`compose::plan`] turns a manifest into `ffmpeg` arguments (a
//!   grid of the participants' videos with their names, the shared screen large while someone
//!   shares, all audio mixed; WebM with VP8 and Opus), [`compose::run`] runs ffmpeg under
//!   `nice -n 19` with progress and cancellation, [`compose::find_ffmpeg`] finds the binary.
//!
//! # Why `webm-iterable`
//!
//! The container is written with [`webm_iterable`] (and its `ebml-iterable`, both MIT):
//!
//! - pure Rust — no C++ libwebm (the `webm` crate) in `cargo build`, nothing to link;
//! - it writes **unknown-size master elements** (`WriteOptions::is_unknown_sized_element`) and
//!   hands bytes to the destination as soon as no known-size master is open — exactly the
//!   streaming case: nothing has to be seeked back to for the file to be valid, so a crash leaves
//!   a playable file. (libwebm's muxer wants to seek back at the end.)
//! - it reads what it writes ([`webm_iterable::WebmIterator`]), which the tests and [`writer::scan`]
//!   use, and it is maintained.
//!
//! Writing EBML by hand would have been possible (it is small), but the spec's element table and
//! the path validation come for free here.
//!
//! # Clock
//!
//! Everything is in milliseconds on the recording's clock: 0 is the manifest's `startedAt`. A
//! track file's own timestamps start at 0 at its first written frame; the manifest's track
//! `start` (= [`TrackWriter::start_ms`]) places it on the recording's clock.

#![forbid(unsafe_code)]

mod bitstream;
pub mod compose;
pub mod manifest;
pub mod writer;

pub use bitstream::opus_packet_us;
pub use compose::{ComposeError, Plan};
pub use manifest::{EventKind, Manifest, Participant, Person, RecordingState, TimelineEvent, TrackInfo, TrackKind};
pub use writer::{Codec, TrackWriter};
