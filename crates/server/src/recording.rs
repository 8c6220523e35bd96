//! Recording meetings (issue 18; the files are documented in `docs/recording.md`).
//!
//! Three parts, none on a media worker's forwarding path:
//! - the **SFU core** of the room's worker turns each published track into whole frames
//!   ([`huddle_sfu::Input::Record`], [`huddle_sfu::Recorded`]); the media task passes them on;
//! - a **writer thread** per worker ([`spawn_writer`]) writes one WebM (Matroska for H.264) per
//!   track with [`huddle_record::TrackWriter`] and keeps the recording's `manifest.json`; it
//!   asks its hub to stop a recording that reached the time limit, filled the disk quota or
//!   could not be written;
//! - the **store** ([`Recordings`], one per process) knows every recording on disk, its state and
//!   size, enforces the quota and the retention, signs download links, and runs the **composite**
//!   jobs one at a time on a thread of their own (ffmpeg under `nice -n 19`, `-threads 1`).
//!
//! The hub owns the rules (who may record, the room's recording state, what everyone is told);
//! the store tells the hubs when a room's list of recordings changed
//! ([`crate::hub::Command::RecordingsChanged`]).
//!
//! # Parts
//!
//! A recording follows its room. When the room moves — a graceful restart (the room is saved
//! with its recording and restored), or another node of several taking it over — the old
//! owner ends its **part** as `continued` ([`Recordings::moved_on`]) and the new owner writes the
//! next part into the same directory ([`Recordings::resume`]): its own manifest
//! (`manifest-<n>.json`) and track files (`part<n>-…`), see `huddle_record::manifest`. The
//! composite is made once, by the owner that stops the recording, from every part in the
//! directory joined on one clock. Across nodes the parts meet only if the nodes share
//! `--recordings-dir` (a network filesystem); otherwise each node keeps the parts it wrote and
//! the composite holds those of the last owner. A part nobody went on with (the room was not
//! taken up again within the resume grace) is composed where it is.

use crate::config::Config;
use crate::hub::Command;
use huddle_protocol::{ErrorCode, RecordingEntry, RecordingFileState, RecordingInfo, RecordingStopReason};
use huddle_record::manifest::{
    EventKind, Manifest, Participant, Person, RecordingState, TimelineEvent, TrackInfo, TrackKind,
};
use huddle_record::writer::{Codec, TrackWriter};
use huddle_sfu::{Recorded, RecordedCodec, RecordedKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The one file a recording is composed into, in its directory.
pub const COMPOSITE_FILE: &str = "composite.webm";
/// Bytes of frames that may wait for a writer thread; beyond that, frames are dropped (and the
/// track resumes at its next keyframe) rather than the media task's memory growing.
pub const WRITER_QUEUE_BYTES: usize = 64 << 20;
/// Most recordings the server keeps at once (beside the byte quota).
pub const MAX_RECORDINGS: usize = 2000;
/// How often a writer thread hands what it wrote to the OS, whatever arrives.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the store looks for recordings past their retention.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How often the composite thread looks for parts handed on that nobody went on with.
const TICK: Duration = Duration::from_secs(15);
/// How often a writer rewrites the manifest of a part it is writing, changed or not: its time
/// says, to another node sharing the directory, that the part is being written.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A part still "recording" whose manifest is older than this was left by a server that
/// stopped (when nodes share the directory; a single server knows its own are).
const STALE: Duration = Duration::from_secs(60);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A recording id: `r<unix seconds>-<8 hex digits>`; only these characters are ever accepted
/// from outside (as a directory name under the recordings directory).
fn valid_id(id: &str) -> bool {
    id.len() <= 40 && id.starts_with('r') && id[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[derive(Debug)]
struct Entry {
    room: String,
    started_at: u64,
    duration_ms: u64,
    bytes: u64,
    state: RecordingFileState,
    progress: f32,
    /// Set to stop its composite job (the recording is being deleted, or goes on).
    cancel: Arc<AtomicBool>,
    /// Its last part was handed on (the room moved) at this time, and no part has been started
    /// here since: if nobody goes on with it in time, it is composed as it is.
    handed_on: Option<std::time::Instant>,
}

impl Entry {
    /// A recording of `room` being made here.
    fn recording(room: &str, started_at: u64) -> Entry {
        Entry {
            room: room.to_string(),
            started_at,
            duration_ms: 0,
            bytes: 0,
            state: RecordingFileState::Recording,
            progress: 0.0,
            cancel: Arc::new(AtomicBool::new(false)),
            handed_on: None,
        }
    }
}

/// Every recording this process knows, on disk under one directory.
pub struct Recordings {
    dir: PathBuf,
    max_bytes: u64,
    retention: Duration,
    ffmpeg: Option<PathBuf>,
    key: Mutex<aws_lc_rs::hmac::Key>,
    /// One node of several: other nodes may write into the same directory.
    shared: bool,
    /// How long a part handed on waits for the room's next owner to go on with it.
    continue_wait: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bytes being written by recordings in progress (not yet in their entries).
    writing: AtomicU64,
    compose: Mutex<Option<std_mpsc::Sender<String>>>,
    hubs: OnceLock<Vec<mpsc::WeakSender<Command>>>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Recordings {
    /// The store, from what is on disk: a recording that was in progress when the server
    /// stopped is marked interrupted and composed from what was written; those past their
    /// retention are deleted. `None` when recordings are off or the directory cannot be made.
    pub fn open(config: &Config) -> Option<Arc<Recordings>> {
        if !config.recordings {
            return None;
        }
        let dir = match (&config.recordings_dir, &config.data_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(data)) => data.join("recordings"),
            (None, None) => std::env::temp_dir().join(format!("huddle-recordings-{}", std::process::id())),
        };
        // Made when the first recording starts (a server that never records leaves nothing);
        // one that cannot be made is said now.
        if dir.exists() && !dir.is_dir() {
            warn!(dir = %dir.display(), "the recordings directory is not a directory; recording is off");
            return None;
        }
        let key_bytes = crate::persist::key(config.data_dir.as_deref(), "recordings.key").unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            // A key of zeros would make links guessable: without randomness, no links.
            if aws_lc_rs::rand::fill(&mut k).is_err() {
                warn!("no random source for the recordings' link key");
            }
            k
        });
        let ffmpeg = huddle_record::compose::find_ffmpeg(config.ffmpeg.as_deref()).filter(|p| p.is_file());
        if ffmpeg.is_none() {
            warn!("ffmpeg not found: recordings keep their raw tracks only (no single file)");
        }
        let store = Arc::new(Recordings {
            dir,
            max_bytes: config.recordings_max_bytes,
            retention: config.recording_retention,
            ffmpeg,
            key: Mutex::new(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes)),
            shared: config.redis.is_some(),
            // The room's pages have the grace to come back; a node taking a room over waits
            // for its lease (10 s) first.
            continue_wait: config.resume_grace + Duration::from_secs(30),
            entries: Mutex::new(HashMap::new()),
            writing: AtomicU64::new(0),
            compose: Mutex::new(None),
            hubs: OnceLock::new(),
        });
        let pending = store.scan();
        let (tx, rx) = std_mpsc::channel();
        for id in pending {
            let _ = tx.send(id);
        }
        *store.compose.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let weak = Arc::downgrade(&store);
        let spawned = std::thread::Builder::new().name("recordings".into()).spawn(move || compose_loop(weak, rx));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the composite thread; recordings keep their raw tracks");
        }
        info!(dir = %store.dir.display(), "recordings enabled");
        Some(store)
    }

    /// Signs download links with a key derived from `cluster_key`, which every node of the
    /// cluster has: a link made by one node works on any (the load balancer picks).
    pub fn share_link_key(&self, cluster_key: &[u8]) {
        let derive = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cluster_key);
        let tag = aws_lc_rs::hmac::sign(&derive, b"huddle recordings: download links");
        *self.key.lock().unwrap_or_else(|e| e.into_inner()) =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, tag.as_ref());
    }

    /// The hubs to tell when a room's recordings change (one per worker).
    pub fn set_hubs(&self, hubs: Vec<mpsc::WeakSender<Command>>) {
        let _ = self.hubs.set(hubs);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock left plain data behind: still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has_ffmpeg(&self) -> bool {
        self.ffmpeg.is_some()
    }

    /// Reads the recordings directory at start-up; returns the ids to compose.
    fn scan(&self) -> Vec<String> {
        let mut compose = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.dir) else { return compose };
        let now = unix_ms();
        let mut entries = self.lock();
        for d in dirs.flatten() {
            let path = d.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if !valid_id(&id) || !path.is_dir() {
                continue;
            }
            let Ok(mut parts) = Manifest::load_parts(&path) else {
                warn!(%id, "a recording without a readable manifest; left alone");
                continue;
            };
            let (first, last) = match (parts.first(), parts.last()) {
                (Some(f), Some(l)) => (f.clone(), l.clone()),
                _ => continue,
            };
            if now.saturating_sub(first.started_at) > self.retention.as_millis() as u64 {
                info!(%id, "recording past its retention; deleted");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if last.state == RecordingState::Recording && self.shared && part_age(&path, last.part) < STALE {
                // Another node is writing it (it lists it; it will compose it).
                continue;
            }
            let mut handed_on = None;
            let mut state = if path.join(COMPOSITE_FILE).is_file() && last.state != RecordingState::Continued {
                RecordingFileState::Ready
            } else if last.state == RecordingState::Continued {
                // The room moved on from this part: its next owner (this server, once its
                // rooms are restored, or another node) goes on with it, else it is composed
                // after a while (`Recordings::settle`).
                handed_on = Some(std::time::Instant::now());
                RecordingFileState::Recording
            } else if self.ffmpeg.is_some() {
                compose.push(id.clone());
                RecordingFileState::Composing
            } else {
                RecordingFileState::Raw
            };
            if mend(&id, &path, &mut parts) && state == RecordingFileState::Raw {
                state = RecordingFileState::Interrupted;
            }
            let entry = Entry {
                room: first.room.clone(),
                started_at: first.started_at,
                duration_ms: Manifest::joined(&parts).map_or(0, |m| m.duration_ms()),
                bytes: dir_bytes(&path),
                state,
                progress: 0.0,
                cancel: Arc::new(AtomicBool::new(false)),
                handed_on,
            };
            entries.insert(id, entry);
        }
        compose
    }

    fn used(&self) -> u64 {
        let stored: u64 = self.lock().values().map(|e| e.bytes).sum();
        stored + self.writing.load(Ordering::Relaxed)
    }

    /// Whether a new recording may start: `recording_storage_full` when the quota is used up, or
    /// the server keeps [`MAX_RECORDINGS`] already (however small: a host starting and stopping
    /// in a loop must not fill the directory with thousands of them).
    pub fn check_space(&self) -> Result<(), ErrorCode> {
        if self.used() >= self.max_bytes || self.lock().len() >= MAX_RECORDINGS {
            return Err(ErrorCode::RecordingStorageFull);
        }
        Ok(())
    }

    /// A writer wrote `n` more bytes; `false` when that fills the quota (the recording stops).
    fn grow(&self, n: u64) -> bool {
        self.writing.fetch_add(n, Ordering::Relaxed);
        self.used() < self.max_bytes
    }

    /// A new recording of `room`: its id, directory and what the room is told.
    pub fn begin(&self, room: &str, by: huddle_protocol::Person) -> std::io::Result<(RecordingInfo, PathBuf)> {
        let started_at = unix_ms();
        let mut r = [0u8; 4];
        aws_lc_rs::rand::fill(&mut r).map_err(|_| std::io::Error::other("no random source"))?;
        let id = format!("r{}-{:02x}{:02x}{:02x}{:02x}", started_at / 1000, r[0], r[1], r[2], r[3]);
        std::fs::create_dir_all(&self.dir)?;
        let dir = self.dir.join(&id);
        std::fs::create_dir(&dir)?;
        self.lock().insert(id.clone(), Entry::recording(room, started_at));
        self.notify(room);
        Ok((RecordingInfo { id, started_at, started_by: by }, dir))
    }

    /// The room of recording `info` came here from another server (or from before a restart)
    /// and goes on recording: the next part's directory (the recording's, made here if this
    /// server does not see it: the nodes do not share the directory) and number, after `after`
    /// and after any part on disk. A composite of the earlier parts under way stops.
    pub fn resume(&self, info: &RecordingInfo, room: &str, after: u32) -> std::io::Result<(PathBuf, u32)> {
        if !valid_id(&info.id) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a recording id"));
        }
        let dir = self.dir.join(&info.id);
        std::fs::create_dir_all(&dir)?;
        let on_disk = Manifest::load_parts(&dir).ok().and_then(|p| p.last().map(|m| m.part)).unwrap_or(0);
        let part = after.max(on_disk).saturating_add(1);
        {
            let mut entries = self.lock();
            let e = entries.entry(info.id.clone()).or_insert_with(|| Entry::recording(room, info.started_at));
            e.cancel.store(true, Ordering::Relaxed);
            e.cancel = Arc::new(AtomicBool::new(false));
            e.state = RecordingFileState::Recording;
            e.progress = 0.0;
            e.handed_on = None;
            e.bytes = dir_bytes(&dir);
        }
        self.notify(room);
        Ok((dir, part))
    }

    /// A part ended because its room moved on (the writer marked it `continued`): nothing is
    /// composed now; [`Recordings::settle`] composes it if nobody goes on with it.
    fn moved_on(&self, id: &str, duration_ms: u64, written: u64) {
        let _ = self.writing.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(written)));
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(id) else { return };
        e.duration_ms = duration_ms;
        e.bytes = dir_bytes(&self.dir.join(id));
        e.handed_on = Some(std::time::Instant::now());
    }

    /// Parts handed on that nobody went on with in time (the room was not taken up again) are
    /// composed as they are; those another node went on with (sharing the directory) are its
    /// to list and compose, and leave this server's list.
    fn settle(&self) {
        let due: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.handed_on.is_some_and(|at| at.elapsed() >= self.continue_wait))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let dir = self.dir.join(&id);
            let last = Manifest::load_parts(&dir).ok().and_then(|mut p| p.pop());
            let room = {
                let mut entries = self.lock();
                let Some(e) = entries.get_mut(&id) else { continue };
                if e.handed_on.is_none_or(|at| at.elapsed() < self.continue_wait) {
                    continue; // resumed meanwhile
                }
                if last.as_ref().is_some_and(|m| m.state == RecordingState::Continued) {
                    info!(%id, "nobody went on with a recording handed on; composing it as it is");
                    e.handed_on = None;
                    e.state =
                        if self.ffmpeg.is_some() { RecordingFileState::Composing } else { RecordingFileState::Raw };
                    let room = e.room.clone();
                    drop(entries);
                    self.queue_compose(&id);
                    room
                } else {
                    info!(%id, "another node went on with a recording");
                    entries.remove(&id).map(|e| e.room).unwrap_or_default()
                }
            };
            self.notify(&room);
        }
    }

    fn queue_compose(&self, id: &str) {
        if self.ffmpeg.is_some() {
            if let Some(tx) = self.compose.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = tx.send(id.to_string());
            }
        }
    }

    /// A recording that never started (the SFU could not be told): its entry and directory go.
    pub fn abandon(&self, id: &str) {
        let room = self.lock().remove(id).map(|e| e.room);
        let _ = std::fs::remove_dir_all(self.dir.join(id));
        if let Some(room) = room {
            self.notify(&room);
        }
    }

    /// The writer closed recording `id`: `written` bytes move from "being written" to its
    /// entry, and it is composed (or kept raw without ffmpeg).
    fn finished(&self, id: &str, duration_ms: u64, written: u64) {
        // Several writers share the count: taken back in one step, never below zero.
        let _ = self.writing.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(written)));
        // Earlier parts whose server died while writing them (another node went on) are closed
        // now: nobody writes them any more, the recording is over.
        let mended =
            Manifest::load_parts(&self.dir.join(id)).is_ok_and(|mut parts| mend(id, &self.dir.join(id), &mut parts));
        let room = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(id) else { return };
            e.duration_ms = duration_ms;
            e.bytes = dir_bytes(&self.dir.join(id));
            e.state = match (self.ffmpeg.is_some(), mended) {
                (true, _) => RecordingFileState::Composing,
                (false, true) => RecordingFileState::Interrupted,
                (false, false) => RecordingFileState::Raw,
            };
            e.handed_on = None;
            e.room.clone()
        };
        self.queue_compose(id);
        self.notify(&room);
    }

    /// The room's recordings, newest first, with download links for those ready.
    pub fn list(&self, room: &str) -> Vec<RecordingEntry> {
        let entries = self.lock();
        let mut list: Vec<RecordingEntry> = entries
            .iter()
            .filter(|(_, e)| e.room == room)
            .map(|(id, e)| RecordingEntry {
                id: id.clone(),
                started_at: e.started_at,
                duration_ms: e.duration_ms,
                bytes: e.bytes,
                state: e.state,
                progress: if e.state == RecordingFileState::Ready {
                    1.0
                } else {
                    (f64::from(e.progress) * 100.0).round() / 100.0
                },
                url: (e.state == RecordingFileState::Ready).then(|| self.link(id, e.started_at)),
            })
            .collect();
        list.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
        list
    }

    /// Deletes one of `room`'s recordings (not one in progress: stop it first).
    pub fn delete(&self, room: &str, id: &str) -> Result<(), ErrorCode> {
        {
            let mut entries = self.lock();
            match entries.get(id) {
                Some(e) if e.room == room && e.state != RecordingFileState::Recording => {}
                Some(e) if e.room == room => return Err(ErrorCode::NotAllowed),
                _ => return Err(ErrorCode::UnknownRecording),
            }
            if let Some(e) = entries.remove(id) {
                e.cancel.store(true, Ordering::Relaxed);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(self.dir.join(id)) {
            warn!(%id, error = %e, "cannot delete a recording's files");
        }
        info!(%id, "recording deleted");
        self.notify(room);
        Ok(())
    }

    /// `/recordings/<id>/composite.webm?exp=<unix s>&sig=<hex>`, valid until the recording's
    /// retention ends.
    fn link(&self, id: &str, started_at: u64) -> String {
        let exp = started_at / 1000 + self.retention.as_secs();
        format!("/recordings/{id}/{COMPOSITE_FILE}?exp={exp}&sig={}", self.sign(id, exp))
    }

    fn sign(&self, id: &str, exp: u64) -> String {
        let key = self.key.lock().unwrap_or_else(|e| e.into_inner());
        let tag = aws_lc_rs::hmac::sign(&key, format!("recording:{id}:{exp}").as_bytes());
        tag.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The file a download link names, if the link is genuine, unexpired and the file exists.
    pub fn verify(&self, id: &str, file: &str, exp: u64, sig: &str) -> Option<PathBuf> {
        if !valid_id(id) || file != COMPOSITE_FILE || exp < unix_ms() / 1000 {
            return None;
        }
        let expected = self.sign(id, exp);
        // Constant time: a link's signature is its only secret.
        if expected.len() != sig.len()
            || aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), sig.as_bytes()).is_err()
        {
            return None;
        }
        // One node of several also serves what another node composed into the directory they
        // share (the link is the cluster's: another node made it).
        let ready = match self.lock().get(id) {
            Some(e) => e.state == RecordingFileState::Ready,
            None => self.shared,
        };
        let path = self.dir.join(id).join(COMPOSITE_FILE);
        (ready && path.is_file()).then_some(path)
    }

    /// Tells every hub that `room`'s list changed (the room's owner sends it to its hosts).
    fn notify(&self, room: &str) {
        let Some(hubs) = self.hubs.get() else { return };
        let room: Arc<str> = room.into();
        for hub in hubs.iter().filter_map(mpsc::WeakSender::upgrade) {
            let _ = hub.try_send(Command::RecordingsChanged { room: room.clone() });
        }
    }

    fn set_progress(&self, id: &str, progress: f32) -> Option<String> {
        let mut entries = self.lock();
        let e = entries.get_mut(id)?;
        e.progress = progress;
        Some(e.room.clone())
    }

    fn composed(&self, id: &str, ok: bool, cancel: &AtomicBool) {
        let room = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(id) else { return };
            if cancel.load(Ordering::Relaxed) {
                return; // it goes on (a new part) or was deleted meanwhile
            }
            e.state = if ok { RecordingFileState::Ready } else { RecordingFileState::Failed };
            e.progress = if ok { 1.0 } else { e.progress };
            e.bytes = dir_bytes(&self.dir.join(id));
            e.room.clone()
        };
        self.notify(&room);
    }

    /// Deletes the recordings past their retention.
    fn sweep(&self) {
        let limit = self.retention.as_millis() as u64;
        let now = unix_ms();
        let old: Vec<(String, String)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.state != RecordingFileState::Recording && now.saturating_sub(e.started_at) > limit)
            .map(|(id, e)| (id.clone(), e.room.clone()))
            .collect();
        for (id, room) in old {
            info!(%id, "recording past its retention; deleted");
            let _ = self.delete(&room, &id);
        }
    }
}

/// Removes what composites cut short left in `dir` (ffmpeg writes on while it runs: one not
/// written for [`STALE`] is nobody's).
fn remove_stale_parts(dir: &Path) {
    let Ok(files) = std::fs::read_dir(dir) else { return };
    for f in files.flatten() {
        let name = f.file_name();
        let Some(name) = name.to_str() else { continue };
        let old =
            f.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a >= STALE);
        if name.starts_with(COMPOSITE_FILE) && name.ends_with(".part") && old {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

/// How long ago part `part`'s manifest in `dir` was last written (long ago when unreadable).
fn part_age(dir: &Path, part: u32) -> Duration {
    std::fs::metadata(dir.join(huddle_record::manifest::manifest_file(part)))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::MAX)
}

/// Closes what the parts of recording `id` still "recording" left when their server stopped:
/// each track cut at its last whole block, the part marked interrupted. Only for parts nobody
/// writes any more (the caller knows). Whether any part was.
fn mend(id: &str, dir: &Path, parts: &mut [Manifest]) -> bool {
    let mut mended = false;
    for manifest in parts.iter_mut().filter(|m| m.state == RecordingState::Recording) {
        manifest.state = RecordingState::Interrupted;
        for t in &mut manifest.tracks {
            if let Ok(scan) = huddle_record::writer::repair(&dir.join(&t.file)) {
                // A frame's length past the last complete block's time.
                t.end = t.end.or(scan.last_ms.map(|ms| t.start + ms + 20));
                t.frames = scan.frames;
                t.bytes = scan.valid_len;
            }
        }
        if let Err(e) = manifest.save(dir) {
            warn!(%id, part = manifest.part, error = %e, "cannot update an interrupted recording's manifest");
        }
        info!(%id, part = manifest.part, "recording interrupted when its server stopped; kept and composed");
        mended = true;
    }
    mended
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|f| f.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// The composite thread: one job at a time, in the order the recordings stopped; a sweep of
/// old recordings every [`SWEEP_EVERY`].
fn compose_loop(store: std::sync::Weak<Recordings>, rx: std_mpsc::Receiver<String>) {
    let mut swept = std::time::Instant::now();
    loop {
        let id = match rx.recv_timeout(TICK) {
            Ok(id) => id,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                let Some(store) = store.upgrade() else { return };
                store.settle();
                if swept.elapsed() >= SWEEP_EVERY {
                    swept = std::time::Instant::now();
                    store.sweep();
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let Some(store) = store.upgrade() else { return };
        compose_one(&store, &id);
    }
}

fn compose_one(store: &Recordings, id: &str) {
    let Some(ffmpeg) = store.ffmpeg.clone() else { return };
    let Some(cancel) = store.lock().get(id).map(|e| e.cancel.clone()) else { return };
    let dir = store.dir.join(id);
    // Every part, on the first one's clock; parts a stopped server left are closed first.
    let manifest = match Manifest::load_parts(&dir) {
        Ok(mut parts) => {
            mend(id, &dir, &mut parts);
            Manifest::joined(&parts)
        }
        Err(e) => {
            warn!(%id, error = %e, "cannot read a recording's manifest to compose it");
            None
        }
    };
    let Some(manifest) = manifest else { return store.composed(id, false, &cancel) };
    // A name of this server's own: another node sharing the directory may compose it too.
    let part = dir.join(format!("{COMPOSITE_FILE}.{}.part", std::process::id()));
    remove_stale_parts(&dir);
    let _ = std::fs::remove_file(&part);
    let plan = match huddle_record::compose::plan(&manifest, &dir, &part) {
        Ok(p) => p,
        Err(e) => {
            warn!(%id, error = %e, "cannot plan a recording's composite");
            return store.composed(id, false, &cancel);
        }
    };
    info!(%id, seconds = plan.duration_ms / 1000, "composing a recording");
    let started = std::time::Instant::now();
    let mut told = 0.0f32;
    let result = huddle_record::compose::run(
        &ffmpeg,
        &plan,
        |p| {
            // The hosts' list moves in steps of 5 %.
            if p - told >= 0.05 {
                told = p;
                if let Some(room) = store.set_progress(id, p) {
                    store.notify(&room);
                }
            }
        },
        &cancel,
    );
    match result.and_then(|()| std::fs::rename(&part, dir.join(COMPOSITE_FILE)).map_err(Into::into)) {
        Ok(()) => {
            info!(%id, secs = started.elapsed().as_secs_f64(), "recording composed");
            store.composed(id, true, &cancel);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            if !cancel.load(Ordering::Relaxed) {
                warn!(%id, error = %e, "composing a recording failed; its raw tracks are kept");
                store.composed(id, false, &cancel);
            }
        }
    }
}

/// What a worker's writer thread is told, in order, by its media task.
#[derive(Debug)]
pub enum WriterMsg {
    /// `room` starts recording into `dir` (the manifest as it begins).
    Start { room: String, dir: PathBuf, manifest: Box<Manifest> },
    /// Something happened in the room (who came and went, mutes, cameras, screens).
    Note { room: String, at_unix_ms: u64, peer: String, event: EventKind, name: Option<String> },
    /// The recording is stopping (the core's `Stopped` follows): who stopped it, or (with
    /// `continues`) that only this part ends, the room moving to another server.
    Stop { room: String, by: Option<huddle_protocol::Person>, continues: bool },
    /// What the core made of the room's tracks.
    Core(Recorded),
}

/// The media task's end of a writer thread: messages, and the bytes of frames queued.
#[derive(Clone, Debug)]
pub struct WriterTx {
    tx: std_mpsc::Sender<(WriterMsg, usize)>,
    queued: Arc<AtomicUsize>,
}

impl WriterTx {
    /// Passes `msg` on; a frame is refused (`false`) while [`WRITER_QUEUE_BYTES`] wait.
    pub fn send(&self, msg: WriterMsg) -> bool {
        let bytes = match &msg {
            WriterMsg::Core(Recorded::Frame { data, .. }) => data.len(),
            _ => 0,
        };
        if bytes > 0 && self.queued.load(Ordering::Relaxed) + bytes > WRITER_QUEUE_BYTES {
            return false;
        }
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        self.tx.send((msg, bytes)).is_ok()
    }
}

/// Starts worker `worker`'s writer thread; `hub` is told to stop a recording that cannot go on.
/// The thread ends, its files closed and manifests written, once every [`WriterTx`] is gone
/// (join it then: a server that stops must not exit before).
pub fn spawn_writer(
    worker: usize,
    store: Arc<Recordings>,
    hub: mpsc::Sender<Command>,
    max_len: Duration,
) -> std::io::Result<(WriterTx, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel::<(WriterMsg, usize)>();
    let queued = Arc::new(AtomicUsize::new(0));
    let counter = queued.clone();
    let thread = std::thread::Builder::new().name(format!("recorder-{worker}")).spawn(move || {
        let mut w =
            Writer { store, hub, max_ms: max_len.as_millis() as u64, rooms: HashMap::new(), tracks: HashMap::new() };
        let mut flushed = std::time::Instant::now();
        loop {
            match rx.recv_timeout(FLUSH_EVERY) {
                Ok((msg, bytes)) => {
                    counter.fetch_sub(bytes, Ordering::Relaxed);
                    w.handle(msg);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // A track that went quiet (muted, camera off) still reaches the disk: what a crash
            // leaves is at most this old.
            if flushed.elapsed() >= FLUSH_EVERY {
                flushed = std::time::Instant::now();
                w.flush();
            }
        }
        w.close_all();
    })?;
    Ok((WriterTx { tx, queued }, thread))
}

/// One room's recording on a writer thread.
struct Active {
    id: String,
    dir: PathBuf,
    manifest: Manifest,
    /// Bytes written so far (given back to the store's count when it ends).
    written: u64,
    /// Asked the hub to stop it already (a limit or an error).
    stopping: bool,
    stopped_by: Option<huddle_protocol::Person>,
    /// Only this part ends: the room goes on recording elsewhere.
    continues: bool,
    /// When its manifest was last written (see [`HEARTBEAT`]).
    saved: std::time::Instant,
}

struct TrackFile {
    room: String,
    /// Its entry in the manifest's tracks.
    index: usize,
    writer: Option<TrackWriter>,
}

struct Writer {
    store: Arc<Recordings>,
    hub: mpsc::Sender<Command>,
    max_ms: u64,
    rooms: HashMap<String, Active>,
    tracks: HashMap<u64, TrackFile>,
}

fn person(p: huddle_protocol::Person) -> Person {
    Person { id: p.id.0, name: p.name }
}

/// A file name's part made of a peer id: only characters safe anywhere.
fn safe(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect()
}

impl Writer {
    fn handle(&mut self, msg: WriterMsg) {
        match msg {
            WriterMsg::Start { room, dir, manifest } => {
                if let Err(e) = manifest.save(&dir) {
                    warn!(%room, error = %e, "cannot write a recording's manifest");
                    self.ask_stop(&room, RecordingStopReason::WriteError);
                }
                let id = manifest.id.clone();
                let active = Active {
                    id,
                    dir,
                    manifest: *manifest,
                    written: 0,
                    stopping: false,
                    stopped_by: None,
                    continues: false,
                    saved: std::time::Instant::now(),
                };
                self.rooms.insert(room, active);
            }
            WriterMsg::Note { room, at_unix_ms, peer, event, name } => {
                let Some(a) = self.rooms.get_mut(&room) else { return };
                let at = at_unix_ms.saturating_sub(a.manifest.started_at);
                if let Some(name) = name {
                    if !a.manifest.participants.iter().any(|p| p.id == peer) {
                        a.manifest.participants.push(Participant { id: peer.clone(), name });
                    }
                }
                a.manifest.events.push(TimelineEvent { at, peer, event });
                save(a);
            }
            WriterMsg::Stop { room, by, continues } => {
                if let Some(a) = self.rooms.get_mut(&room) {
                    a.stopped_by = by;
                    a.continues = continues;
                }
            }
            WriterMsg::Core(r) => self.core(r),
        }
    }

    fn core(&mut self, r: Recorded) {
        match r {
            Recorded::TrackStarted { room, track, peer, kind, codec, at_ms } => {
                let Some(a) = self.rooms.get_mut(&room) else { return };
                let peer = crate::media::signal_id(peer).0;
                let (codec, kind) =
                    (codec_of(codec), if kind == RecordedKind::Audio { TrackKind::Audio } else { TrackKind::Video });
                let kind_name = if kind == TrackKind::Audio { "audio" } else { "video" };
                let prefix = huddle_record::manifest::track_prefix(a.manifest.part);
                let file = format!("{prefix}{}-{kind_name}-{track}.{}", safe(&peer), codec.extension());
                let writer = match TrackWriter::create(&a.dir.join(&file), codec) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        warn!(%room, %file, error = %e, "cannot create a recording's track file");
                        None
                    }
                };
                let failed = writer.is_none();
                a.manifest.tracks.push(TrackInfo {
                    file,
                    peer,
                    kind,
                    codec,
                    start: at_ms,
                    end: None,
                    bytes: 0,
                    frames: 0,
                    width: None,
                    height: None,
                });
                let index = a.manifest.tracks.len() - 1;
                save(a);
                self.tracks.insert(track, TrackFile { room: room.clone(), index, writer });
                if failed {
                    self.ask_stop(&room, RecordingStopReason::WriteError);
                }
            }
            Recorded::Frame { track, at_ms, keyframe, data } => {
                let Some(t) = self.tracks.get_mut(&track) else { return };
                let Some(w) = t.writer.as_mut() else { return };
                let before = w.bytes();
                let result = w.write_frame(at_ms, keyframe, &data);
                let grown = w.bytes().saturating_sub(before);
                let room = t.room.clone();
                if let Err(e) = result {
                    warn!(%room, error = %e, "cannot write a recording's frame");
                    t.writer = None;
                    return self.ask_stop(&room, RecordingStopReason::WriteError);
                }
                if let Some(a) = self.rooms.get_mut(&room) {
                    a.written += grown;
                }
                if !self.store.grow(grown) {
                    self.ask_stop(&room, RecordingStopReason::StorageFull);
                } else if at_ms > self.max_ms {
                    self.ask_stop(&room, RecordingStopReason::TimeLimit);
                }
            }
            Recorded::TrackEnded { track, at_ms } => {
                let Some(t) = self.tracks.remove(&track) else { return };
                let Some(a) = self.rooms.get_mut(&t.room) else { return };
                close_track(a, t, at_ms);
                save(a);
            }
            Recorded::Stopped { room, at_ms } => {
                let Some(mut a) = self.rooms.remove(&room) else { return };
                // Tracks the core did not end (none, normally) end here.
                let left: Vec<u64> = self.tracks.iter().filter(|(_, t)| t.room == room).map(|(k, _)| *k).collect();
                for k in left {
                    if let Some(t) = self.tracks.remove(&k) {
                        close_track(&mut a, t, at_ms);
                    }
                }
                a.manifest.stopped_at = Some(a.manifest.started_at + at_ms);
                a.manifest.stopped_by = a.stopped_by.take().map(person);
                self.end(a, at_ms);
            }
        }
    }

    fn ask_stop(&mut self, room: &str, reason: RecordingStopReason) {
        if let Some(a) = self.rooms.get_mut(room) {
            if std::mem::replace(&mut a.stopping, true) {
                return;
            }
        }
        warn!(%room, ?reason, "stopping a recording");
        let _ = self.hub.try_send(Command::RecordingStop { room: room.into(), reason });
    }

    fn flush(&mut self) {
        for a in self.rooms.values_mut().filter(|a| a.saved.elapsed() >= HEARTBEAT) {
            a.saved = std::time::Instant::now();
            save(a);
        }
        for t in self.tracks.values_mut() {
            if let Some(w) = t.writer.as_mut() {
                if let Err(e) = w.flush() {
                    warn!(room = %t.room, error = %e, "cannot flush a recording's track file");
                }
            }
        }
    }

    /// The thread's end (the media task stopped): every recording is closed as it stands.
    fn close_all(&mut self) {
        for t in std::mem::take(&mut self.tracks).into_values() {
            if let Some(a) = self.rooms.get_mut(&t.room) {
                let end = t.writer.as_ref().and_then(TrackWriter::end_ms).unwrap_or(0);
                close_track(a, t, end);
            }
        }
        for (_, mut a) in std::mem::take(&mut self.rooms) {
            let at_ms = a.manifest.duration_ms();
            a.manifest.stopped_at = Some(a.manifest.started_at + at_ms);
            self.end(a, at_ms);
        }
    }

    /// A part's end: the recording stops (and is composed), or goes on elsewhere.
    fn end(&mut self, mut a: Active, at_ms: u64) {
        a.manifest.state = if a.continues { RecordingState::Continued } else { RecordingState::Stopped };
        save(&a);
        let (room, part) = (&a.manifest.room, a.manifest.part);
        if a.continues {
            info!(%room, id = %a.id, part, seconds = at_ms / 1000, "recording part ended; the room goes on elsewhere");
            // The joined length: the store lists the recording as a whole.
            let whole = Manifest::load_parts(&a.dir).ok().and_then(|p| Manifest::joined(&p)).map(|m| m.duration_ms());
            self.store.moved_on(&a.id, whole.unwrap_or(at_ms), a.written);
        } else {
            info!(%room, id = %a.id, part, seconds = at_ms / 1000, "recording stopped");
            let whole = Manifest::load_parts(&a.dir).ok().and_then(|p| Manifest::joined(&p)).map(|m| m.duration_ms());
            self.store.finished(&a.id, whole.unwrap_or(at_ms), a.written);
        }
    }
}

fn codec_of(c: RecordedCodec) -> Codec {
    match c {
        RecordedCodec::Opus => Codec::Opus,
        RecordedCodec::Vp8 => Codec::Vp8,
        RecordedCodec::H264 => Codec::H264,
    }
}

fn close_track(a: &mut Active, t: TrackFile, at_ms: u64) {
    let Some(info) = a.manifest.tracks.get_mut(t.index) else { return };
    info.end = Some(at_ms);
    if let Some(w) = t.writer {
        info.frames = w.frames();
        if let Some((width, height)) = w.size() {
            info.width = Some(width);
            info.height = Some(height);
        }
        if let Some(start) = w.start_ms() {
            info.start = start;
        }
        if let Some(end) = w.end_ms() {
            info.end = Some(end);
        }
        match w.finish() {
            Ok(bytes) => info.bytes = bytes,
            Err(e) => warn!(file = %info.file, error = %e, "cannot close a recording's track file"),
        }
    }
}

fn save(a: &Active) {
    if let Err(e) = a.manifest.save(&a.dir) {
        warn!(id = %a.id, error = %e, "cannot write a recording's manifest");
    }
}

/// The manifest a recording starts with: everyone in the room, as they are.
pub fn first_manifest(info: &RecordingInfo, room: &str, members: &[huddle_protocol::Peer]) -> Manifest {
    let mut manifest = Manifest {
        version: huddle_record::manifest::VERSION,
        part: 1,
        id: info.id.clone(),
        room: room.to_string(),
        started_at: info.started_at,
        started_by: person(info.started_by.clone()),
        stopped_at: None,
        stopped_by: None,
        state: RecordingState::Recording,
        participants: Vec::new(),
        tracks: Vec::new(),
        events: Vec::new(),
    };
    for p in members {
        manifest.participants.push(Participant { id: p.id.0.clone(), name: p.name.clone() });
        for event in initial_events(p) {
            manifest.events.push(TimelineEvent { at: 0, peer: p.id.0.clone(), event });
        }
    }
    manifest
}

/// How someone is when they enter the recording (or the room while it records).
pub fn initial_events(p: &huddle_protocol::Peer) -> Vec<EventKind> {
    let mut events = vec![EventKind::Joined];
    if !p.audio {
        events.push(EventKind::Muted);
    }
    if !p.video {
        events.push(EventKind::VideoOff);
    }
    if p.screen {
        events.push(EventKind::ScreenOn);
    }
    events
}

/// What changed between two states of someone's media, as timeline events.
pub fn media_events(before: &huddle_protocol::Peer, after: &huddle_protocol::Peer) -> Vec<EventKind> {
    let mut events = Vec::new();
    if before.audio != after.audio {
        events.push(if after.audio { EventKind::Unmuted } else { EventKind::Muted });
    }
    if before.video != after.video {
        events.push(if after.video { EventKind::VideoOn } else { EventKind::VideoOff });
    }
    if before.screen != after.screen {
        events.push(if after.screen { EventKind::ScreenOn } else { EventKind::ScreenOff });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_name_a_directory() {
        assert!(valid_id("r1796629712-0a1b2c3d"));
        for bad in ["", "x123", "r../etc", "r/abs", "r1 2", "r\u{0}", &format!("r{}", "1".repeat(60))] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert_eq!(safe("p12/../x"), "p12x");
    }
}

/// `huddle recordings`: list and delete the recordings on this machine, without a running
/// server (or beside one: a recording being made is not deleted).
#[derive(clap::Parser, Debug)]
#[command(name = "huddle recordings", about = "List or delete the recordings huddle keeps")]
pub struct RecordingsCli {
    /// The recordings directory [default: recordings/ in --data-dir]
    #[arg(long, env = "HUDDLE_RECORDINGS_DIR", value_name = "DIR")]
    recordings_dir: Option<PathBuf>,
    /// huddle's data directory [default: $XDG_DATA_HOME/huddle, else ~/.local/share/huddle]
    #[arg(long, env = "HUDDLE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<RecordingsAction>,
}

#[derive(clap::Subcommand, Debug)]
enum RecordingsAction {
    /// Every recording: id, room, start (UTC), length, size, state (the default)
    List,
    /// Deletes recordings by id, with their files
    Delete { ids: Vec<String> },
}

/// Runs `huddle recordings …` (`args` after `recordings`); writes to `out`.
pub fn run_cli(args: Vec<std::ffi::OsString>, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    use clap::Parser as _;
    let cli = RecordingsCli::parse_from(std::iter::once(std::ffi::OsString::from("huddle recordings")).chain(args));
    let data_dir = cli.data_dir.or_else(crate::config::default_data_dir);
    let dir = cli
        .recordings_dir
        .or_else(|| data_dir.map(|d| d.join("recordings")))
        .ok_or_else(|| anyhow::anyhow!("no recordings directory: give --recordings-dir or --data-dir"))?;
    match cli.action.unwrap_or(RecordingsAction::List) {
        RecordingsAction::List => {
            let mut rows = Vec::new();
            for d in
                std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?.flatten()
            {
                let path = d.path();
                let Some(id) = path.file_name().and_then(|n| n.to_str()).filter(|id| valid_id(id)) else { continue };
                let Some(m) = Manifest::load_parts(&path).ok().and_then(|p| Manifest::joined(&p)) else { continue };
                let state = match m.state {
                    RecordingState::Recording => "recording (or interrupted)",
                    RecordingState::Continued => "recording (goes on elsewhere, or interrupted)",
                    _ if path.join(COMPOSITE_FILE).is_file() => "ready",
                    RecordingState::Stopped => "raw",
                    RecordingState::Interrupted => "interrupted",
                };
                let parts = if m.part > 1 { format!(" ({} parts)", m.part) } else { String::new() };
                let state = format!("{state}{parts}");
                rows.push((m.started_at, id.to_string(), m.room.clone(), m.duration_ms(), dir_bytes(&path), state));
            }
            rows.sort();
            writeln!(out, "{:<22} {:<20} {:<20} {:>9} {:>10}  state", "id", "room", "started (UTC)", "length", "size")?;
            for (started, id, room, ms, bytes, state) in rows {
                let room: String = room.chars().take(20).collect();
                let length = format!("{}:{:02}", ms / 60_000, ms / 1000 % 60);
                let size = format!("{:.1} MB", bytes as f64 / 1e6);
                writeln!(out, "{id:<22} {room:<20} {:<20} {length:>9} {size:>10}  {state}", utc(started))?;
            }
        }
        RecordingsAction::Delete { ids } => {
            for id in ids {
                if !valid_id(&id) {
                    anyhow::bail!("{id:?} is not a recording id");
                }
                let path = dir.join(&id);
                let m = Manifest::load_parts(&path)
                    .ok()
                    .and_then(|p| Manifest::joined(&p))
                    .ok_or_else(|| anyhow::anyhow!("no recording {id}"))?;
                if matches!(m.state, RecordingState::Recording | RecordingState::Continued) {
                    writeln!(out, "{id} may still be recording (or was interrupted); deleting it anyway")?;
                }
                std::fs::remove_dir_all(&path)?;
                writeln!(out, "deleted {id}")?;
            }
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix milliseconds.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m) = (secs % 86_400 / 3600, secs % 3600 / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

#[cfg(test)]
mod cli_tests {
    use super::*;

    #[test]
    fn dates_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_796_629_712_000), "2026-12-07 07:48");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00");
    }

    #[test]
    fn the_subcommand_lists_and_deletes() {
        let dir = std::env::temp_dir().join(format!("huddle-rec-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = "r1796629712-0a1b2c3d";
        std::fs::create_dir_all(dir.join(id)).expect("mkdir");
        let info = RecordingInfo {
            id: id.into(),
            started_at: 1_796_629_712_000,
            started_by: huddle_protocol::Person { id: huddle_protocol::PeerId("p1".into()), name: "Dana".into() },
        };
        let mut m = first_manifest(&info, "standup", &[]);
        m.state = RecordingState::Stopped;
        m.stopped_at = Some(m.started_at + 61_000);
        m.save(&dir.join(id)).expect("save");
        let args = |a: &[&str]| {
            let mut v: Vec<std::ffi::OsString> = vec!["--recordings-dir".into(), dir.clone().into()];
            v.extend(a.iter().map(Into::into));
            v
        };
        let mut out = Vec::new();
        run_cli(args(&["list"]), &mut out).expect("lists");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains(id) && text.contains("standup") && text.contains("1:01") && text.contains("raw"),
            "{text}"
        );
        let mut out = Vec::new();
        run_cli(args(&["delete", id]), &mut out).expect("deletes");
        assert!(!dir.join(id).exists());
        assert!(run_cli(args(&["delete", "../etc"]), &mut Vec::new()).is_err(), "only recording ids");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    /// A download link works only as signed, unexpired, for the file it names, and only while the
    /// recording exists: an old link of a deleted recording (or one re-made under its id) fails.
    #[test]
    fn links_do_not_outlive_their_recording_nor_open_anything_else() {
        let dir = std::env::temp_dir().join(format!("huddle-rec-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config =
            Config { recordings_dir: Some(dir.clone()), ffmpeg: Some("/nonexistent".into()), ..Config::default() };
        let store = Recordings::open(&config).expect("recordings on");
        let by = huddle_protocol::Person { id: huddle_protocol::PeerId("p1".into()), name: "Dana".into() };
        let (info, rec_dir) = store.begin("r", by).expect("begins");
        std::fs::write(rec_dir.join(COMPOSITE_FILE), b"webm").expect("a composite");
        store.composed(&info.id, true, &AtomicBool::new(false));
        let url = store.list("r")[0].url.clone().expect("a ready recording has a link");
        let query = url.split_once('?').map(|(_, q)| q).expect("a query");
        let exp: u64 =
            query.split('&').find_map(|kv| kv.strip_prefix("exp=")).and_then(|v| v.parse().ok()).expect("exp");
        let sig = query.split('&').find_map(|kv| kv.strip_prefix("sig=")).expect("sig");
        assert!(store.verify(&info.id, COMPOSITE_FILE, exp, sig).is_some(), "the link works");
        assert!(store.verify(&info.id, COMPOSITE_FILE, exp + 1, sig).is_none(), "its expiry cannot be moved");
        assert!(store.verify(&info.id, COMPOSITE_FILE, 1, sig).is_none(), "an expired link fails");
        assert!(
            store.verify(&info.id, huddle_record::manifest::MANIFEST_FILE, exp, sig).is_none(),
            "nothing else of the directory"
        );
        assert!(store.verify("r1-00000000", COMPOSITE_FILE, exp, sig).is_none(), "not for another id");
        assert_eq!(store.delete("other room", &info.id), Err(ErrorCode::UnknownRecording), "not another room's");
        store.delete("r", &info.id).expect("its room's host deletes it");
        assert!(store.verify(&info.id, COMPOSITE_FILE, exp, sig).is_none(), "the old link fails after delete");
        // The same id made again (a new directory, a file there): the old link still finds nothing.
        std::fs::create_dir_all(dir.join(&info.id)).expect("mkdir");
        std::fs::write(dir.join(&info.id).join(COMPOSITE_FILE), b"x").expect("write");
        assert!(store.verify(&info.id, COMPOSITE_FILE, exp, sig).is_none(), "only a recording the store knows");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
