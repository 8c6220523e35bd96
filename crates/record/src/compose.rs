//! The composite: one WebM (VP8 + Opus) the host can play anywhere, made by `ffmpeg` from a
//! recording's raw tracks and its manifest.
//!
//! # Layout
//!
//! - A black canvas ([`Options::width`] × [`Options::height`], 1280×720 at 20 fps by default).
//! - One tile per participant with a video track, in the order they were first seen (the
//!   manifest's `participants`, then peers only the tracks name), at most [`Options::max_tiles`]
//!   (16, a 4×4 grid): beyond that, the first 16 such participants are shown and everyone is
//!   still heard. A participant who left and came back keeps their tile; each track file is shown
//!   from its `start` to its end (`overlay` with `eof_action=pass`), and not while the camera is
//!   off (`video_off`..`video_on`, unless a screen is shared then). Participants without any video
//!   track get no tile.
//! - The grid is chosen to make tiles as large as possible for 16:9 pictures; each picture is
//!   scaled into its tile keeping its aspect ratio (a screen share or a portrait phone camera is
//!   letterboxed), centred across and at the bottom of the tile, just above its name; its size
//!   may change within a track (simulcast layers, camera ↔ screen): ffmpeg reconfigures the
//!   graph when it does.
//! - The name under each tile (`drawtext`, the name of the moment: `renamed` events change it),
//!   when a font is found: DejaVu Sans, or for Hangul or other CJK names Nanum Gothic / Noto Sans
//!   CJK when installed; no font, no names. Names are user input and are **sanitized**, not
//!   escaped: every character the filtergraph or the option parser treats specially
//!   (`\ ' " : ; , = [ ] % { }` and control characters) becomes a space, and `drawtext` runs with
//!   `expansion=none`, so a name can neither end the option, nor the filter, nor expand.
//! - While someone shares their screen (`screen_on`..`screen_off`, and their video track is
//!   there), their tile is large (the left three quarters) and everyone else is in a strip on the
//!   right. When several people share at once, the one who started last is large.
//! - Audio: every audio track placed at its `start` (`-itsoffset`, then `aresample` with
//!   `async=1:first_pts=0`, which pads the beginning and any gap inside a track with silence,
//!   so a muted stretch with no packets does not pull the rest early) and mixed (`amix`,
//!   `normalize=0`: voices keep their level), then a limiter holds several loud voices at once
//!   under full scale instead of clipping them.
//! - No video track: the black canvas (at 5 fps) with the audio. No audio track: video only.
//!
//! Video and audio are two separate filtergraphs, so that a change of picture size (which
//! makes ffmpeg rebuild the video graph) leaves the audio alone.
//!
//! # Running
//!
//! [`run`] runs ffmpeg under `nice -n 19` (when `nice` is on `PATH`) with one thread for decoding,
//! filtering and encoding, reads its `-progress` output for [`Plan::duration_ms`] and can be
//! cancelled. One composite at a time per server is the caller's rule.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::manifest::{EventKind, Manifest, TrackInfo, TrackKind};

/// What [`run`] executes: ffmpeg's arguments (without the program), the composite's length and
/// the output file (removed by [`run`] when ffmpeg fails or is cancelled).
#[derive(Clone, Debug)]
pub struct Plan {
    pub args: Vec<OsString>,
    pub duration_ms: u64,
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("ffmpeg not found ({0}); the raw tracks and the manifest are all there is")]
    FfmpegNotFound(PathBuf),
    #[error("nothing to compose: {0}")]
    Nothing(&'static str),
    #[error("the manifest names a track file that is not a plain file name: {0:?}")]
    BadTrackFile(String),
    #[error("ffmpeg failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The composite's settings; [`plan`] uses [`Options::default`].
#[derive(Clone, Debug)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
    pub max_tiles: usize,
    /// The font for names; `None`: DejaVu Sans (and a CJK font for such names) if installed.
    pub font: Option<PathBuf>,
    /// Draw names at all.
    pub names: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 1280,
            height: 720,
            fps: 20,
            video_kbps: 1200,
            audio_kbps: 64,
            max_tiles: 16,
            font: None,
            names: true,
        }
    }
}

const DEJAVU: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const HANGUL_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
];
const CJK_FONTS: &[&str] = &[
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
];
/// What a name may be drawn with at most, in characters.
const MAX_NAME_CHARS: usize = 40;

/// [`plan_with`] with the default [`Options`].
pub fn plan(manifest: &Manifest, dir: &Path, out: &Path) -> Result<Plan, ComposeError> {
    plan_with(manifest, dir, out, &Options::default())
}

/// ffmpeg's arguments that turn the tracks of `dir` (as `manifest` lists them) into `out` (see
/// the [module docs](self) for the layout), with `-progress pipe:1 -nostats`. Tracks whose file
/// is missing, empty (never written) or not Matroska are left out (with a warning); a file
/// that is Matroska but broken makes ffmpeg fail ([`crate::writer::repair`] first what an
/// interrupted recording left).
pub fn plan_with(manifest: &Manifest, dir: &Path, out: &Path, opts: &Options) -> Result<Plan, ComposeError> {
    let duration = manifest.duration_ms();
    if duration == 0 {
        return Err(ComposeError::Nothing("the recording has no length"));
    }
    let mut tracks: Vec<&TrackInfo> = Vec::new();
    for track in &manifest.tracks {
        if !plain_file_name(&track.file) {
            return Err(ComposeError::BadTrackFile(track.file.clone()));
        }
        if !starts_as_ebml(&dir.join(&track.file)) {
            tracing::warn!(file = %track.file, "track file missing, empty or not Matroska; left out of the composite");
        } else if track.start < duration {
            tracks.push(track);
        }
    }
    let video: Vec<&TrackInfo> = tracks.iter().copied().filter(|t| t.kind == TrackKind::Video).collect();
    let audio: Vec<&TrackInfo> = tracks.iter().copied().filter(|t| t.kind == TrackKind::Audio).collect();
    if video.is_empty() && audio.is_empty() {
        return Err(ComposeError::Nothing("no track has any media"));
    }

    let (w, h) = (even(opts.width.max(64)), even(opts.height.max(64)));
    let fps = opts.fps.clamp(1, 60);
    let mut args: Vec<OsString> = Vec::new();
    let push = |args: &mut Vec<OsString>, a: &str| args.push(a.into());
    for a in ["-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1", "-nostats", "-y"] {
        push(&mut args, a);
    }
    let canvas_fps = if video.is_empty() { 5 } else { fps };
    push(&mut args, "-f");
    push(&mut args, "lavfi");
    push(&mut args, "-i");
    push(&mut args, &format!("color=c=black:s={w}x{h}:r={canvas_fps}:d={}", secs(duration)));

    let tiles = Tiles::new(manifest, &video, duration, opts.max_tiles);
    let shown: Vec<&TrackInfo> = video.iter().copied().filter(|t| tiles.index(&t.peer).is_some()).collect();
    let mut input = 1;
    let mut video_inputs = Vec::new();
    for track in shown.iter().chain(audio.iter()) {
        push(&mut args, "-threads");
        push(&mut args, "1");
        push(&mut args, "-itsoffset");
        push(&mut args, &secs(track.start));
        args.push("-i".into());
        args.push(file_url(&dir.join(&track.file)));
        if track.kind == TrackKind::Video {
            video_inputs.push((input, *track));
        }
        input += 1;
    }
    let audio_inputs: Vec<usize> = (1 + shown.len()..input).collect();

    if !video_inputs.is_empty() {
        let fonts = if opts.names { Fonts::find(opts.font.as_deref()) } else { Fonts::default() };
        push(&mut args, "-filter_complex");
        push(&mut args, &video_graph(&tiles, &video_inputs, (w, h), duration, &fonts));
    }
    if !audio_inputs.is_empty() {
        push(&mut args, "-filter_complex");
        push(&mut args, &audio_graph(&audio_inputs));
    }
    push(&mut args, "-filter_complex_threads");
    push(&mut args, "1");
    push(&mut args, "-map");
    push(&mut args, if video_inputs.is_empty() { "0:v" } else { "[vout]" });
    if !audio_inputs.is_empty() {
        push(&mut args, "-map");
        push(&mut args, "[aout]");
    }
    let gop = (canvas_fps * 5).to_string();
    let vb = format!("{}k", opts.video_kbps.max(50));
    for a in ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", &vb, "-g", &gop, "-threads", "1"] {
        push(&mut args, a);
    }
    if !audio_inputs.is_empty() {
        let ab = format!("{}k", opts.audio_kbps.clamp(16, 256));
        for a in ["-c:a", "libopus", "-b:a", &ab, "-ac", "2"] {
            push(&mut args, a);
        }
    }
    push(&mut args, "-t");
    push(&mut args, &secs(duration));
    push(&mut args, "-f");
    push(&mut args, "webm");
    args.push(file_url(out));
    Ok(Plan { args, duration_ms: duration, out: out.to_owned() })
}

/// `file:` + the path: ffmpeg takes it as a file whatever it looks like (`-x`, `concat:…`).
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// The file begins with the EBML magic (an empty file, never written, does not).
fn starts_as_ebml(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == [0x1a, 0x45, 0xdf, 0xa3]
}

/// A file name without directories: what a manifest may name.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn even(v: u32) -> u32 {
    v & !1
}

/// Milliseconds as seconds for ffmpeg's options and expressions.
fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

// ---------------------------------------------------------------------------------------------
// Spans: sorted, disjoint, non-empty half-open intervals of ms.

type Spans = Vec<(u64, u64)>;

fn normalize(mut spans: Spans) -> Spans {
    spans.retain(|&(a, b)| a < b);
    spans.sort_unstable();
    let mut out: Spans = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn intersect(x: &Spans, y: &Spans) -> Spans {
    let mut out = Vec::new();
    for &(a, b) in x {
        for &(c, d) in y {
            let (s, e) = (a.max(c), b.min(d));
            if s < e {
                out.push((s, e));
            }
        }
    }
    normalize(out)
}

fn subtract(x: &Spans, y: &Spans) -> Spans {
    let mut out = Vec::new();
    for &(a, b) in x {
        let mut start = a;
        for &(c, d) in y {
            if d <= start || c >= b {
                continue;
            }
            if c > start {
                out.push((start, c));
            }
            start = start.max(d);
        }
        if start < b {
            out.push((start, b));
        }
    }
    normalize(out)
}

/// Spans from on/off events (`on` opens, `off` closes; still open at the end: until `end`).
fn toggles(events: &[(u64, bool)], end: u64) -> Spans {
    let mut spans = Vec::new();
    let mut open: Option<u64> = None;
    for &(at, on) in events {
        match (on, open) {
            (true, None) => open = Some(at),
            (false, Some(from)) => {
                spans.push((from, at));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(from) = open {
        spans.push((from, end));
    }
    normalize(spans)
}

/// An `enable` expression true exactly within `spans`; `None` when that is always.
fn enable_expr(spans: &Spans, duration: u64) -> Option<String> {
    if spans.len() == 1 && spans[0].0 == 0 && spans[0].1 >= duration {
        return None;
    }
    let terms: Vec<String> = spans.iter().map(|&(a, b)| format!("gte(t,{})*lt(t,{})", secs(a), secs(b))).collect();
    Some(terms.join("+"))
}

// ---------------------------------------------------------------------------------------------
// Who is shown, when, where.

struct Tile {
    peer: String,
    /// Names over time: (from, to, name).
    names: Vec<(u64, u64, String)>,
    /// When a track of theirs is there.
    present: Spans,
    /// When their picture is hidden (camera off, no screen).
    hidden: Spans,
    /// When they share their screen (and a track of theirs is there).
    screen: Spans,
    /// The `screen_on` times, for who was last.
    screen_starts: Vec<u64>,
}

struct Tiles {
    tiles: Vec<Tile>,
    /// Layout segments: (from, to, the large tile's index or `None` for the grid).
    segments: Vec<(u64, u64, Option<usize>)>,
}

impl Tiles {
    fn new(manifest: &Manifest, video: &[&TrackInfo], duration: u64, max_tiles: usize) -> Tiles {
        let mut order: Vec<&str> = manifest.participants.iter().map(|p| p.id.as_str()).collect();
        let mut unknown: Vec<(u64, &str)> =
            video.iter().filter(|t| !order.contains(&t.peer.as_str())).map(|t| (t.start, t.peer.as_str())).collect();
        unknown.sort();
        order.extend(unknown.into_iter().map(|(_, p)| p));
        order.dedup();
        let mut seen = Vec::new();
        let mut tiles = Vec::new();
        for peer in order {
            if seen.contains(&peer) || !video.iter().any(|t| t.peer == peer) {
                continue;
            }
            seen.push(peer);
            if tiles.len() == max_tiles.max(1) {
                tracing::info!(peer, "more than {max_tiles} participants with video: not shown in the composite");
                continue;
            }
            tiles.push(Tile::new(manifest, peer, video, duration));
        }
        let segments = segments(&tiles, duration);
        Tiles { tiles, segments }
    }

    fn index(&self, peer: &str) -> Option<usize> {
        self.tiles.iter().position(|t| t.peer == peer)
    }

    /// The distinct layouts in use: `None` (grid) and/or `Some(large tile)`.
    fn layouts(&self) -> Vec<Option<usize>> {
        let mut out: Vec<Option<usize>> = Vec::new();
        for &(_, _, focus) in &self.segments {
            if !out.contains(&focus) {
                out.push(focus);
            }
        }
        out
    }

    fn layout_spans(&self, layout: Option<usize>) -> Spans {
        normalize(self.segments.iter().filter(|s| s.2 == layout).map(|s| (s.0, s.1)).collect())
    }
}

impl Tile {
    fn new(manifest: &Manifest, peer: &str, video: &[&TrackInfo], duration: u64) -> Tile {
        let present = normalize(
            video
                .iter()
                .filter(|t| t.peer == peer)
                .map(|t| (t.start, t.end.unwrap_or(duration).min(duration)))
                .collect(),
        );
        let mut events: Vec<_> = manifest.events.iter().filter(|e| e.peer == peer).collect();
        events.sort_by_key(|e| e.at);
        let pick = |on: EventKind, off: EventKind| -> Vec<(u64, bool)> {
            events
                .iter()
                .filter_map(|e| {
                    if e.event == on {
                        Some((e.at, true))
                    } else if e.event == off {
                        Some((e.at, false))
                    } else {
                        None
                    }
                })
                .collect()
        };
        let screen_events = pick(EventKind::ScreenOn, EventKind::ScreenOff);
        let screen = intersect(&toggles(&screen_events, duration), &present);
        let screen_starts = screen_events.iter().filter(|e| e.1).map(|e| e.0).collect();
        let camera_off = toggles(&pick(EventKind::VideoOff, EventKind::VideoOn), duration);
        let hidden = subtract(&camera_off, &screen);

        let first = manifest.participants.iter().find(|p| p.id == peer).map_or_else(String::new, |p| p.name.clone());
        let mut names = Vec::new();
        let (mut from, mut name) = (0, first);
        for e in &events {
            if let EventKind::Renamed { name: new } = &e.event {
                names.push((from, e.at, std::mem::replace(&mut name, new.clone())));
                from = e.at;
            }
        }
        names.push((from, duration, name));
        names.retain(|(a, b, n)| a < b && !n.is_empty());
        Tile { peer: peer.to_owned(), names, present, hidden, screen, screen_starts }
    }
}

/// Splits `[0, duration)` where the large tile changes.
fn segments(tiles: &[Tile], duration: u64) -> Vec<(u64, u64, Option<usize>)> {
    let mut cuts = vec![0, duration];
    for tile in tiles {
        for &(a, b) in &tile.screen {
            cuts.extend([a, b]);
        }
    }
    cuts.retain(|&c| c <= duration);
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u64, u64, Option<usize>)> = Vec::new();
    for pair in cuts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let focus = (0..tiles.len())
            .filter(|&i| tiles[i].screen.iter().any(|&(s, e)| s <= a && b <= e))
            .max_by_key(|&i| (tiles[i].screen_starts.iter().filter(|&&s| s <= a).max().copied(), std::cmp::Reverse(i)));
        match out.last_mut() {
            Some(last) if last.2 == focus && last.1 == a => last.1 = b,
            _ => out.push((a, b, focus)),
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// `n` cells in `area`, as large as possible for 16:9 pictures with a label band below;
/// a last row that is not full is centred.
fn grid(area: Rect, n: usize, band: u32) -> Vec<Rect> {
    if n == 0 {
        return Vec::new();
    }
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let score = |cols: u32| {
        let rows = n32.div_ceil(cols);
        let (cw, ch) = (area.w / cols, area.h / rows);
        let (vw, vh) = (cw.saturating_sub(8), ch.saturating_sub(8 + band));
        (vw * 9).min(vh * 16)
    };
    let cols = (1..=n32).max_by_key(|&c| (score(c), std::cmp::Reverse(c))).unwrap_or(1);
    let rows = n32.div_ceil(cols);
    let (cw, ch) = (area.w / cols, area.h / rows);
    (0..n32)
        .map(|i| {
            let (row, col) = (i / cols, i % cols);
            let in_row = if row == rows - 1 { n32 - row * cols } else { cols };
            let shift = (cols - in_row) * cw / 2;
            Rect { x: area.x + shift + col * cw, y: area.y + row * ch, w: cw, h: ch }
        })
        .collect()
}

/// Where each tile is in a layout: `None` the grid; `Some(i)` tile `i` large on the left,
/// the others in a strip on the right.
fn layout_cells(n: usize, layout: Option<usize>, (w, h): (u32, u32), band: u32) -> Vec<Rect> {
    let canvas = Rect { x: 0, y: 0, w, h };
    match layout {
        Some(large) if n > 1 => {
            let big_w = even(w * 3 / 4);
            let strip = grid(Rect { x: big_w, y: 0, w: w - big_w, h }, n - 1, band);
            let mut strip = strip.into_iter();
            (0..n)
                .map(|i| if i == large { Rect { x: 0, y: 0, w: big_w, h } } else { strip.next().unwrap_or(canvas) })
                .collect()
        }
        _ => grid(canvas, n, band),
    }
}

/// The label band's height for a cell of height `h` (0 without names).
fn band_for(h: u32, names: bool) -> u32 {
    if names {
        (h / 8).clamp(12, 36)
    } else {
        0
    }
}

/// The picture's box inside a cell: a margin around, the band below.
fn picture_box(cell: Rect, band: u32) -> Rect {
    let m = if cell.w < 200 { 2 } else { 4 };
    Rect {
        x: even(cell.x + m),
        y: even(cell.y + m),
        w: even(cell.w.saturating_sub(2 * m)).max(2),
        h: even(cell.h.saturating_sub(2 * m + band)).max(2),
    }
}

// ---------------------------------------------------------------------------------------------
// Names.

#[derive(Default)]
struct Fonts {
    latin: Option<String>,
    hangul: Option<String>,
    cjk: Option<String>,
}

impl Fonts {
    fn find(configured: Option<&Path>) -> Fonts {
        let usable = |p: &str| (Path::new(p).is_file() && safe_path(p)).then(|| p.to_owned());
        let latin = match configured {
            Some(p) => p.to_str().and_then(usable),
            None => usable(DEJAVU),
        };
        Fonts {
            hangul: HANGUL_FONTS.iter().find_map(|p| usable(p)).or_else(|| latin.clone()),
            cjk: CJK_FONTS.iter().find_map(|p| usable(p)).or_else(|| latin.clone()),
            latin,
        }
    }

    fn for_name(&self, name: &str) -> Option<&str> {
        let hangul = |c: char| matches!(c, '\u{1100}'..='\u{11ff}' | '\u{3130}'..='\u{318f}' | '\u{ac00}'..='\u{d7af}');
        let cjk = |c: char| matches!(c, '\u{2e80}'..='\u{9fff}' | '\u{f900}'..='\u{faff}' | '\u{ff00}'..='\u{ffef}');
        if name.chars().any(hangul) {
            self.hangul.as_deref()
        } else if name.chars().any(cjk) {
            self.cjk.as_deref()
        } else {
            self.latin.as_deref()
        }
    }
}

/// A font path that can go into the filtergraph as it is.
fn safe_path(p: &str) -> bool {
    p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+'))
}

/// A name as `drawtext` may show it: every character the filtergraph parser (`[ ] , ;` and
/// quoting with `'` and `\`), the option parser (`:` `=`) or drawtext's expansion (`%`, `{`, `}`)
/// could read as syntax, and control characters, become spaces; runs of spaces become one;
/// at most `max` characters.
pub fn sanitize_name(name: &str, max: usize) -> String {
    let mapped: String =
        name.chars().map(|c| if c.is_control() || "\\'\":;,=[]%{}`$#".contains(c) { ' ' } else { c }).collect();
    let mut out = String::new();
    for word in mapped.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect::<String>().trim_end().to_owned();
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The graphs.

/// A layout: each tile's cell and label band, and when the layout is on.
type LayoutCells = (Vec<(Rect, u32)>, Spans);

fn video_graph(
    tiles: &Tiles,
    inputs: &[(usize, &TrackInfo)],
    canvas: (u32, u32),
    duration: u64,
    fonts: &Fonts,
) -> String {
    let names = fonts.latin.is_some() || fonts.hangul.is_some() || fonts.cjk.is_some();
    let n = tiles.tiles.len();
    let layouts = tiles.layouts();
    // Per layout: each tile's cell and label band, and when the layout is on.
    let cells: Vec<LayoutCells> = layouts
        .iter()
        .map(|&layout| {
            let grid_band = band_for(canvas.1 / u32::try_from(n.max(1)).unwrap_or(1).min(4), names);
            let rects = layout_cells(n, layout, canvas, grid_band);
            let with_bands = rects.into_iter().map(|r| (r, band_for(r.h, names))).collect();
            (with_bands, tiles.layout_spans(layout))
        })
        .collect();

    let mut chains: Vec<String> = vec!["[0:v]format=yuv420p[base0]".into()];
    let mut overlays: Vec<(String, Rect, Option<String>)> = Vec::new(); // (input label, box, enable)
    for &(input, track) in inputs {
        let Some(tile_index) = tiles.index(&track.peer) else { continue };
        let tile = &tiles.tiles[tile_index];
        let shown =
            subtract(&normalize(vec![(track.start, track.end.unwrap_or(duration).min(duration))]), &tile.hidden);
        // (picture box, enable spans) for each layout it appears in.
        let mut places: Vec<(Rect, Spans)> = Vec::new();
        for (rects, spans) in &cells {
            let (cell, band) = rects[tile_index];
            let when = intersect(&shown, spans);
            if !when.is_empty() {
                places.push((picture_box(cell, band), when));
            }
        }
        let mut sizes: Vec<(u32, u32)> = Vec::new();
        for (b, _) in &places {
            if !sizes.contains(&(b.w, b.h)) {
                sizes.push((b.w, b.h));
            }
        }
        if sizes.is_empty() {
            continue;
        }
        let labels: Vec<String> = (0..sizes.len()).map(|k| format!("v{input}s{k}")).collect();
        let sources: Vec<String> = if sizes.len() == 1 {
            vec![format!("[{input}:v]")]
        } else {
            let outs: String = (0..sizes.len()).map(|k| format!("[v{input}c{k}]")).collect();
            chains.push(format!("[{input}:v]split={}{outs}", sizes.len()));
            (0..sizes.len()).map(|k| format!("[v{input}c{k}]")).collect()
        };
        for (k, &(bw, bh)) in sizes.iter().enumerate() {
            chains.push(format!(
                // Centred across, at the bottom of its box: the picture sits on its name.
                "{}scale={bw}:{bh}:force_original_aspect_ratio=decrease:force_divisible_by=2,pad={bw}:{bh}:-1:oh-ih:black,setsar=1,format=yuv420p[{}]",
                sources[k], labels[k]
            ));
        }
        for (b, when) in places {
            let k = sizes.iter().position(|&s| s == (b.w, b.h)).unwrap_or(0);
            overlays.push((labels[k].clone(), b, enable_expr(&when, duration)));
        }
    }
    let mut last = "base0".to_owned();
    for (i, (label, b, enable)) in overlays.into_iter().enumerate() {
        let next = format!("base{}", i + 1);
        let mut f = format!("[{last}][{label}]overlay=x={}:y={}:eof_action=pass", b.x, b.y);
        if let Some(e) = enable {
            let _ = write!(f, ":enable='{e}'");
        }
        let _ = write!(f, "[{next}]");
        chains.push(f);
        last = next;
    }

    let mut texts: Vec<String> = Vec::new();
    if names {
        for (tile_index, tile) in tiles.tiles.iter().enumerate() {
            for (rects, spans) in &cells {
                let (cell, band) = rects[tile_index];
                if band == 0 {
                    continue;
                }
                let b = picture_box(cell, band);
                let size = (band * 2 / 3).max(8);
                let max_chars = usize::try_from((cell.w / (size * 6 / 10).max(1)).max(4)).unwrap_or(4);
                for (from, to, name) in &tile.names {
                    let text = sanitize_name(name, max_chars.min(MAX_NAME_CHARS));
                    let Some(font) = fonts.for_name(&text) else { continue };
                    let when = intersect(&intersect(&tile.present, spans), &vec![(*from, *to)]);
                    if text.is_empty() || when.is_empty() {
                        continue;
                    }
                    let mut f = format!(
                        "drawtext=fontfile={font}:expansion=none:text={text}:fontcolor=white:fontsize={size}:x={}+({}-tw)/2:y={}",
                        cell.x,
                        cell.w,
                        b.y + b.h + (band.saturating_sub(size)) / 2
                    );
                    if let Some(e) = enable_expr(&when, duration) {
                        let _ = write!(f, ":enable='{e}'");
                    }
                    texts.push(f);
                }
            }
        }
    }
    if texts.is_empty() {
        chains.push(format!("[{last}]null[vout]"));
    } else {
        chains.push(format!("[{last}]{}[vout]", texts.join(",")));
    }
    chains.join(";")
}

/// After the mix: each voice keeps its own level (`normalize=0`), so several loud voices at
/// once could go past full scale and clip; a limiter (its automatic levelling off) holds the peaks
/// under it and leaves everything quieter as it is.
const LIMITER: &str = "alimiter=limit=0.9:attack=5:release=50:level=false";

fn audio_graph(inputs: &[usize]) -> String {
    let mut chains: Vec<String> = inputs
        .iter()
        .map(|i| {
            format!("[{i}:a]aresample=async=1:first_pts=0,aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo[a{i}]")
        })
        .collect();
    let ins: String = inputs.iter().map(|i| format!("[a{i}]")).collect();
    if inputs.len() == 1 {
        chains.push(format!("{ins}apad[aout]"));
    } else {
        chains.push(format!(
            "{ins}amix=inputs={}:normalize=0:dropout_transition=0:duration=longest,{LIMITER},apad[aout]",
            inputs.len()
        ));
    }
    chains.join(";")
}

// ---------------------------------------------------------------------------------------------
// Running.

/// How many of ffmpeg's last stderr lines an error keeps.
const STDERR_LINES: usize = 20;

/// Runs `ffmpeg` with `plan` under `nice -n 19` (when `nice` is on `PATH`), calls `on_progress`
/// with 0.0..=1.0 (non-decreasing; 1.0 at the end on success) from ffmpeg's `out_time_us`
/// against [`Plan::duration_ms`], and returns when ffmpeg is done. Kills ffmpeg when `cancel`
/// becomes true (checked every 100 ms) and returns [`ComposeError::Cancelled`]. On failure or
/// cancellation the partial output is removed; a failure carries ffmpeg's last stderr lines.
/// Blocking: run it on a thread of its own, never on a media worker's.
pub fn run(
    ffmpeg: &Path,
    plan: &Plan,
    mut on_progress: impl FnMut(f32),
    cancel: &AtomicBool,
) -> Result<(), ComposeError> {
    let exe = find_ffmpeg(Some(ffmpeg)).ok_or_else(|| ComposeError::FfmpegNotFound(ffmpeg.to_owned()))?;
    let mut cmd = match search_path("nice") {
        Some(nice) => {
            let mut c = Command::new(nice);
            c.args(["-n", "19"]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(&plan.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ComposeError::FfmpegNotFound(exe.clone())
        } else {
            ComposeError::Io(e)
        }
    })?;

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut last: VecDeque<String> = VecDeque::new();
        let Some(stderr) = stderr else { return last };
        let mut bytes = Vec::new();
        // Read it all (ffmpeg must never block on a full pipe); keep the end.
        let _ = BufReader::new(stderr).read_to_end(&mut bytes);
        for line in String::from_utf8_lossy(&bytes).lines() {
            if last.len() == STDERR_LINES {
                last.pop_front();
            }
            last.push_back(line.to_owned());
        }
        last
    });

    let total_us = plan.duration_ms.max(1) as f64 * 1000.0;
    let mut progress = 0.0f32;
    let mut cancelled = false;
    loop {
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
            let _ = child.kill();
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(us) = line.strip_prefix("out_time_us=").and_then(|v| v.trim().parse::<u64>().ok()) {
                    let p = ((us as f64 / total_us) as f32).clamp(0.0, 1.0);
                    if p > progress {
                        progress = p;
                        on_progress(p);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let _ = reader.join();
    let stderr = errors.join().unwrap_or_default();
    if cancelled {
        let _ = std::fs::remove_file(&plan.out);
        return Err(ComposeError::Cancelled);
    }
    if !status.success() {
        let _ = std::fs::remove_file(&plan.out);
        return Err(ComposeError::Failed { status: status.to_string(), stderr: Vec::from(stderr).join("\n") });
    }
    if progress < 1.0 {
        on_progress(1.0);
    }
    Ok(())
}

/// The ffmpeg to use: `configured` if it is an executable file (a bare name is looked up on
/// `PATH`), else, when nothing is configured, `ffmpeg` on `PATH`. `None`: no ffmpeg, no
/// composite (a configured path that does not exist is not silently replaced by another).
pub fn find_ffmpeg(configured: Option<&Path>) -> Option<PathBuf> {
    match configured {
        Some(p) if p.components().count() > 1 || p.is_absolute() => executable(p).then(|| p.to_owned()),
        Some(p) => search_path(p.as_os_str()),
        None => search_path("ffmpeg"),
    }
}

fn search_path(name: impl AsRef<std::ffi::OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name.as_ref())).find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Participant, Person, RecordingState, TimelineEvent, VERSION};
    use crate::writer::Codec;

    #[test]
    fn spans() {
        assert_eq!(normalize(vec![(5, 7), (1, 3), (2, 4), (9, 9)]), vec![(1, 4), (5, 7)]);
        assert_eq!(intersect(&vec![(0, 10)], &vec![(2, 3), (5, 12)]), vec![(2, 3), (5, 10)]);
        assert_eq!(subtract(&vec![(0, 10)], &vec![(2, 3), (5, 12)]), vec![(0, 2), (3, 5)]);
        assert_eq!(subtract(&vec![(0, 10)], &vec![]), vec![(0, 10)]);
        assert_eq!(toggles(&[(1, true), (1, true), (3, false), (5, false), (8, true)], 10), vec![(1, 3), (8, 10)]);
        assert_eq!(enable_expr(&vec![(0, 10)], 10), None);
        assert_eq!(
            enable_expr(&vec![(0, 1500), (2000, 12_345)], 20_000).as_deref(),
            Some("gte(t,0.000)*lt(t,1.500)+gte(t,2.000)*lt(t,12.345)")
        );
    }

    #[test]
    fn grids() {
        let canvas = Rect { x: 0, y: 0, w: 1280, h: 720 };
        let one = grid(canvas, 1, 30);
        assert_eq!(one, vec![canvas]);
        let three = grid(canvas, 3, 30);
        assert_eq!(three.len(), 3);
        assert_eq!((three[0].w, three[0].h), (640, 360)); // 2 x 2, last row centred
        assert_eq!(three[2].x, 320);
        let sixteen = grid(canvas, 16, 20);
        assert_eq!((sixteen[15].x, sixteen[15].y), (960, 540));
        let focus = layout_cells(4, Some(2), (1280, 720), 20);
        assert_eq!(focus[2], Rect { x: 0, y: 0, w: 960, h: 720 });
        assert!(focus.iter().enumerate().all(|(i, r)| i == 2 || r.x >= 960));
    }

    #[test]
    fn names_are_sanitized() {
        let evil = "x':text=pwn,drawbox;[0:v]null[evil]\\%{localtime}\n=\"`$#  end";
        let s = sanitize_name(evil, 100);
        assert!(!s.contains(|c: char| "\\'\":;,=[]%{}`$#".contains(c) || c.is_control()), "{s}");
        assert_eq!(s, "x text pwn drawbox 0 v null evil localtime end");
        assert_eq!(sanitize_name("  Ana   María ", 40), "Ana María");
        assert_eq!(sanitize_name("김철수", 40), "김철수");
        assert_eq!(sanitize_name("abcdefghij", 5), "abcd…");
        assert_eq!(sanitize_name(":::", 5), "");
    }

    fn manifest(names: &[&str]) -> Manifest {
        Manifest {
            version: VERSION,
            part: 1,
            id: "r".into(),
            room: "room".into(),
            started_at: 1_000,
            started_by: Person { id: "p0".into(), name: names[0].into() },
            stopped_at: Some(11_000),
            stopped_by: None,
            state: RecordingState::Stopped,
            participants: names
                .iter()
                .enumerate()
                .map(|(i, n)| Participant { id: format!("p{i}"), name: (*n).into() })
                .collect(),
            tracks: Vec::new(),
            events: Vec::new(),
        }
    }

    fn track(peer: &str, file: &str, kind: TrackKind, start: u64, end: u64) -> TrackInfo {
        let codec = if kind == TrackKind::Video { Codec::Vp8 } else { Codec::Opus };
        TrackInfo {
            file: file.into(),
            peer: peer.into(),
            kind,
            codec,
            start,
            end: Some(end),
            bytes: 1,
            frames: 1,
            width: None,
            height: None,
        }
    }

    #[test]
    fn layout_segments_follow_screen_sharing() {
        let mut m = manifest(&["A", "B", "C"]);
        m.tracks = vec![
            track("p0", "a", TrackKind::Video, 0, 10_000),
            track("p1", "b", TrackKind::Video, 0, 10_000),
            track("p2", "c", TrackKind::Video, 0, 4_000),
            track("p2", "c2", TrackKind::Video, 6_000, 10_000),
        ];
        let ev = |at, peer: &str, event| TimelineEvent { at, peer: peer.into(), event };
        m.events = vec![
            ev(1_000, "p1", EventKind::ScreenOn),
            ev(2_000, "p2", EventKind::ScreenOn),
            ev(3_000, "p2", EventKind::ScreenOff),
            ev(5_000, "p1", EventKind::ScreenOff),
            ev(7_000, "p0", EventKind::VideoOff),
            ev(8_000, "p0", EventKind::VideoOn),
            ev(9_000, "p0", EventKind::Renamed { name: "Zed".into() }),
        ];
        let video: Vec<&TrackInfo> = m.tracks.iter().collect();
        let tiles = Tiles::new(&m, &video, 10_000, 16);
        assert_eq!(
            tiles.segments,
            vec![
                (0, 1_000, None),
                (1_000, 2_000, Some(1)),
                (2_000, 3_000, Some(2)),
                (3_000, 5_000, Some(1)),
                (5_000, 10_000, None)
            ]
        );
        assert_eq!(tiles.tiles[2].present, vec![(0, 4_000), (6_000, 10_000)]);
        assert_eq!(tiles.tiles[0].hidden, vec![(7_000, 8_000)]);
        assert_eq!(tiles.tiles[0].names, vec![(0, 9_000, "A".into()), (9_000, 10_000, "Zed".into())]);
        let limited = Tiles::new(&m, &video, 10_000, 2);
        assert_eq!(limited.tiles.len(), 2);
        assert_eq!(limited.index("p2"), None);
    }

    #[test]
    fn plans_without_ffmpeg() {
        let dir = std::env::temp_dir().join(format!("huddle-record-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for f in ["a.webm", "b.webm"] {
            std::fs::write(dir.join(f), [0x1a, 0x45, 0xdf, 0xa3, 0x9f]).expect("writes");
        }
        std::fs::write(dir.join("c.webm"), b"not matroska").expect("writes");
        let mut m = manifest(&["A:'x", "B"]);
        m.tracks = vec![
            track("p0", "a.webm", TrackKind::Video, 0, 10_000),
            track("p1", "b.webm", TrackKind::Audio, 2_000, 10_000),
            track("p1", "missing.webm", TrackKind::Video, 0, 10_000),
            track("p1", "c.webm", TrackKind::Video, 0, 10_000),
        ];
        let out = dir.join("out.webm");
        let plan = plan(&m, &dir, &out).expect("plans");
        assert_eq!(plan.duration_ms, 10_000);
        let args: Vec<String> = plan.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.windows(2).any(|w| w == ["-progress", "pipe:1"]));
        assert!(args.iter().any(|a| a == "-nostats"));
        assert_eq!(args.iter().filter(|a| *a == "-i").count(), 3); // canvas, a, b; not missing, not c
        assert!(args.windows(2).any(|w| w[0] == "-itsoffset" && w[1] == "2.000"));
        assert_eq!(args.last().cloned(), Some(format!("file:{}", out.display())));

        // Everything the filtergraph holds of the name is sanitized.
        let graph = &args[args.iter().position(|a| a == "-filter_complex").expect("a graph") + 1];
        assert!(!graph.contains("A:'x"), "{graph}");

        m.tracks[0].file = "../etc/passwd".into();
        assert!(matches!(plan_with(&m, &dir, &out, &Options::default()), Err(ComposeError::BadTrackFile(_))));
        m.tracks.clear();
        assert!(matches!(plan_with(&m, &dir, &out, &Options::default()), Err(ComposeError::Nothing(_))));
        std::fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn finds_ffmpeg() {
        assert_eq!(find_ffmpeg(Some(Path::new("/nonexistent/ffmpeg"))), None);
        assert_eq!(find_ffmpeg(Some(Path::new("no-such-ffmpeg-binary"))), None);
        if let Some(found) = find_ffmpeg(None) {
            assert!(found.is_absolute() || found.components().count() > 1);
            assert_eq!(find_ffmpeg(Some(&found)), Some(found.clone()));
        }
    }

    #[test]
    fn missing_ffmpeg_is_a_clear_error() {
        let plan = Plan { args: vec![], duration_ms: 1, out: PathBuf::from("/nonexistent/out.webm") };
        let err = run(Path::new("/nonexistent/ffmpeg"), &plan, |_| {}, &AtomicBool::new(false)).expect_err("fails");
        assert!(matches!(err, ComposeError::FfmpegNotFound(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/ffmpeg"));
    }
}
