//! Files shared through the server — for `sfu` rooms, where pages have no peer-to-peer data
//! channel to send them over (in `p2p` rooms the server refuses them: `not_sfu_room`).
//!
//! The flow (see `docs/protocol.md`): a member sends `file_offer` over the WebSocket; the hub
//! validates it, reserves its size against the quotas ([`FileStore::offer`]) and answers
//! `file_upload` with a one-time upload URL. The page `PUT`s the bytes there; the upload handler
//! ([`upload`]) streams them to a file while hashing, checks size and SHA-256, and only then tells
//! the hub, which announces `file` to the room. Members `GET` it ([`download`]) as an attachment.
//! Files are deleted when their room empties.
//!
//! What a client can make the server hold is bounded ([`FileLimits`]): bytes per participant,
//! per IP address, per room and in all, and files per room and in all, counting offers not yet
//! uploaded. Every stage has a deadline: an offer whose upload has not started within the timeout
//! expires; an upload or a download that stalls for the timeout, or runs past the timeout plus
//! its size at the minimum rate, is cut off; and one address has a bounded number of downloads
//! at once. An upload whose file goes (its room closed, its time ran out) is called off at once.
//!
//! The [`FileStore`] (which files exist, their state, the bytes reserved) is owned by the hub like
//! every other piece of room state; the HTTP handlers reach it with [`FileCommand`]s. Ids and
//! upload keys are 128-bit random, so a URL is a capability only room members learn.
//!
//! On disk: each hub keeps its files in a directory of its own, `huddle-files-<pid>-<n>` under
//! `--file-dir` or the system's temporary directory, readable by the server's user only, and
//! removed when the server stops. A server that crashed cannot remove its directory; the next
//! start does ([`remove_stale_dirs`]).

use crate::client_ip::{client_ip, PeerAddr};
use crate::hub::Command;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use huddle_protocol::{ErrorCode, PeerId, SharedFile};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Offers of one participant that may wait for their upload at once.
pub const MAX_PENDING_PER_CONNECTION: usize = 2;
/// Files one room may hold at once (so that tiny files cannot make an endless list).
pub const MAX_FILES_PER_ROOM: usize = 256;
/// Files the server holds at once.
pub const MAX_FILES: usize = 16_384;
/// Downloads from one IP address at once.
pub const MAX_DOWNLOADS_PER_IP: usize = 32;
/// The longest declared media type kept.
pub const MAX_MIME_CHARS: usize = 100;
/// The longest file name, in characters.
pub const MAX_FILE_NAME_CHARS: u32 = 255;
/// Download chunk size.
const READ_CHUNK: usize = 64 * 1024;
/// The start of the name of a hub's file directory.
const DIR_PREFIX: &str = "huddle-files-";

/// What files through the server may take, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimits {
    /// The largest file.
    pub max_file: u64,
    /// Bytes in all.
    pub total: u64,
    /// Bytes per participant (session), per IP address, per room.
    pub per_connection: u64,
    pub per_ip: u64,
    pub per_room: u64,
    /// How long an offer waits for its upload, and a transfer for its next bytes.
    pub timeout: Duration,
    /// Bytes a second a transfer is given time for (at least 1).
    pub min_rate: u64,
}

impl From<&crate::Config> for FileLimits {
    fn from(c: &crate::Config) -> FileLimits {
        FileLimits {
            max_file: c.max_file_bytes,
            total: c.file_storage_bytes,
            per_connection: c.file_connection_bytes,
            per_ip: c.file_ip_bytes,
            per_room: c.file_room_bytes,
            timeout: c.file_transfer_timeout,
            min_rate: c.file_min_rate.max(1),
        }
    }
}

impl FileLimits {
    /// The longest a transfer of `size` bytes may take: the timeout, plus the size at the
    /// minimum rate.
    pub fn transfer_time(&self, size: u64) -> Duration {
        self.timeout.saturating_add(Duration::from_secs(size / self.min_rate))
    }
}

/// `now + d`, or as late as the clock can say.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// What the HTTP handlers ask the hub.
#[derive(Debug)]
pub enum FileCommand {
    /// Start the upload of an offered file; answered with where to write it and what to expect.
    BeginUpload { id: String, key: String, reply: oneshot::Sender<Result<UploadTicket, UploadRefusal>> },
    /// The upload ended: `ok` when size and checksum matched (then the room is told), otherwise
    /// the file is dropped and its reservation freed.
    EndUpload { id: String, ok: bool },
    /// Where a ready file is, for a download by `ip`.
    Download { id: String, ip: IpAddr, reply: oneshot::Sender<Result<Download, DownloadRefusal>> },
}

#[derive(Debug)]
pub struct UploadTicket {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// When the whole upload must be in.
    pub deadline: Instant,
    /// The longest wait for the next bytes.
    pub stall: Duration,
    /// Fires (its sender dropped) when the file goes while it is being uploaded.
    pub called_off: oneshot::Receiver<()>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UploadRefusal {
    /// No such offer (or it expired, or went with its owner or room), or the key does not match.
    Unknown,
    /// Already being uploaded or uploaded.
    Conflict,
    /// The storage directory cannot be created.
    Storage,
}

#[derive(Debug)]
pub struct Download {
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
    /// When the whole download must be out.
    pub deadline: Instant,
    /// The longest wait for the reader to take the next bytes.
    pub stall: Duration,
    /// Held while the download runs: counts against its address's downloads.
    pub permit: DownloadPermit,
}

/// One running download of an address ([`MAX_DOWNLOADS_PER_IP`]); dropping it ends the count.
#[derive(Debug)]
pub struct DownloadPermit(#[allow(dead_code)] Arc<()>);

#[derive(Debug, PartialEq, Eq)]
pub enum DownloadRefusal {
    /// No such file, or not uploaded yet.
    Unknown,
    /// The address has as many downloads running as it may.
    Busy,
}

#[derive(Debug)]
enum Stage {
    /// The upload must start by `until`.
    Offered {
        until: Instant,
    },
    /// The upload must be in by `until`; dropping `_cancel` calls it off.
    Uploading {
        until: Instant,
        _cancel: oneshot::Sender<()>,
    },
    Ready,
}

impl Stage {
    fn until(&self) -> Option<Instant> {
        match self {
            Stage::Offered { until } | Stage::Uploading { until, .. } => Some(*until),
            Stage::Ready => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    room: Arc<str>,
    ip: IpAddr,
    key: String,
    stage: Stage,
    file: SharedFile,
}

/// Bytes and files held by one participant, address or room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    files: usize,
}

/// [`Tally`]s by key; a key holding nothing is not kept.
#[derive(Debug)]
struct Usage<K>(HashMap<K, Tally>);

impl<K: Hash + Eq + Clone> Usage<K> {
    fn new() -> Self {
        Usage(HashMap::new())
    }

    fn of(&self, k: &K) -> Tally {
        self.0.get(k).copied().unwrap_or_default()
    }

    fn add(&mut self, k: &K, bytes: u64) {
        let t = self.0.entry(k.clone()).or_default();
        t.bytes += bytes;
        t.files += 1;
    }

    fn sub(&mut self, k: &K, bytes: u64) {
        if let Some(t) = self.0.get_mut(k) {
            t.bytes = t.bytes.saturating_sub(bytes);
            t.files = t.files.saturating_sub(1);
            if t.files == 0 {
                self.0.remove(k);
            }
        }
    }
}

/// What the quotas of the whole server count, shared by every worker's store (see
/// [`crate::workers`]): taken on offers, downloads and removals, never per message.
#[derive(Debug)]
pub struct ServerUsage {
    /// What files (in every stage) hold in all, and per address.
    used: Tally,
    by_ip: Usage<IpAddr>,
    /// Running downloads per address: the count is the number of [`DownloadPermit`]s out.
    downloads: HashMap<IpAddr, Arc<()>>,
}

impl ServerUsage {
    pub fn shared() -> Arc<std::sync::Mutex<ServerUsage>> {
        Arc::new(std::sync::Mutex::new(ServerUsage {
            used: Tally::default(),
            by_ip: Usage::new(),
            downloads: HashMap::new(),
        }))
    }
}

/// Every shared file of one worker's rooms, owned by its hub.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    limits: FileLimits,
    files: HashMap<String, Entry>,
    /// What files (in every stage) hold in the whole server, and per address.
    server: Arc<std::sync::Mutex<ServerUsage>>,
    /// The same per participant and room.
    by_owner: Usage<PeerId>,
    by_room: Usage<Arc<str>>,
    /// Files of each participant not uploaded yet.
    pending: Usage<PeerId>,
    /// When offers and uploads run out of time, earliest first; an entry whose file has since
    /// moved on or gone is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    /// What every id starts with: a node of several's id and `-`, or nothing.
    id_prefix: String,
}

impl FileStore {
    pub fn new(dir: PathBuf, limits: FileLimits) -> FileStore {
        FileStore {
            dir,
            limits,
            files: HashMap::new(),
            server: ServerUsage::shared(),
            by_owner: Usage::new(),
            by_room: Usage::new(),
            pending: Usage::new(),
            deadlines: BinaryHeap::new(),
            id_prefix: String::new(),
        }
    }

    /// Counts the server's and each address's quotas together with the other stores of
    /// `server` (one per worker). Set before any file is offered.
    pub fn share_usage(&mut self, server: Arc<std::sync::Mutex<ServerUsage>>) {
        self.server = server;
    }

    /// The server-wide usage; a poisoned lock (a panic while it was held) still holds counts
    /// that were updated whole.
    fn server(&self) -> std::sync::MutexGuard<'_, ServerUsage> {
        self.server.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ids of files offered from now on start with `prefix` (see [`node_of_file`]).
    pub fn set_id_prefix(&mut self, prefix: &str) {
        self.id_prefix = prefix.to_string();
    }

    /// The directory files are written to (created on the first upload).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Validates an offer from `from` (at `ip`) in `room` and reserves its size. Returns the id
    /// and the upload URL.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        room: &Arc<str>,
        from: &PeerId,
        ip: IpAddr,
        sender: &str,
        name: &str,
        size: u64,
        mime: &str,
        sha256: &str,
        now: Instant,
    ) -> Result<(String, String), ErrorCode> {
        let name = crate::validate::label(name, MAX_FILE_NAME_CHARS).ok_or(ErrorCode::InvalidFile)?;
        let name = name.as_str();
        let sha_ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mime_ok = mime.chars().count() <= MAX_MIME_CHARS && !mime.chars().any(char::is_control);
        if name.contains(['/', '\\']) || size == 0 || size > self.limits.max_file || !sha_ok || !mime_ok {
            return Err(ErrorCode::InvalidFile);
        }
        self.check_quotas(room, from, ip, size)?;
        let id = format!("{}{}", self.id_prefix, random_hex());
        let key = random_hex();
        let url = format!("/files/{id}");
        let upload_url = format!("{url}?key={key}");
        let file = SharedFile {
            id: id.clone(),
            from: from.clone(),
            sender: sender.to_string(),
            name: name.to_string(),
            size,
            mime: mime.to_string(),
            sha256: sha256.to_string(),
            url,
        };
        let until = later(now, self.limits.timeout);
        self.deadlines.push(Reverse((until, id.clone())));
        {
            let mut server = self.server();
            server.used.bytes += size;
            server.used.files += 1;
            server.by_ip.add(&ip, size);
        }
        self.by_owner.add(from, size);
        self.by_room.add(room, size);
        self.pending.add(from, size);
        let stage = Stage::Offered { until };
        self.files.insert(id.clone(), Entry { room: room.clone(), ip, key, stage, file });
        Ok((id, upload_url))
    }

    /// Whether `size` more bytes fit: the participant's, address's and room's quotas first (a
    /// refusal that is about the asker: `file_quota`), then the server's (`file_storage_full`).
    fn check_quotas(&self, room: &Arc<str>, from: &PeerId, ip: IpAddr, size: u64) -> Result<(), ErrorCode> {
        let l = &self.limits;
        let fits = |t: Tally, limit: u64| t.bytes.saturating_add(size) <= limit;
        let room_t = self.by_room.of(room);
        let server = self.server();
        if self.pending.of(from).files >= MAX_PENDING_PER_CONNECTION
            || !fits(self.by_owner.of(from), l.per_connection)
            || !fits(server.by_ip.of(&ip), l.per_ip)
            || !fits(room_t, l.per_room)
            || room_t.files >= MAX_FILES_PER_ROOM
        {
            return Err(ErrorCode::FileQuota);
        }
        if !fits(server.used, l.total) || server.used.files >= MAX_FILES {
            return Err(ErrorCode::FileStorageFull);
        }
        Ok(())
    }

    pub fn begin_upload(&mut self, id: &str, key: &str, now: Instant) -> Result<UploadTicket, UploadRefusal> {
        let path = self.dir.join(id);
        let entry = self.files.get_mut(id).filter(|e| constant_time_eq(&e.key, key)).ok_or(UploadRefusal::Unknown)?;
        match entry.stage {
            Stage::Offered { until } if until > now => {}
            // Expired; the next `expire` removes it.
            Stage::Offered { .. } => return Err(UploadRefusal::Unknown),
            Stage::Uploading { .. } | Stage::Ready => return Err(UploadRefusal::Conflict),
        }
        if let Err(e) = crate::persist::create_private_dir(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "cannot create the file directory");
            return Err(UploadRefusal::Storage);
        }
        let stall = self.limits.timeout;
        let deadline = later(now, self.limits.transfer_time(entry.file.size));
        // The handler keeps its own deadline; the hub's, a little later, is the backstop.
        let until = later(deadline, stall);
        let (cancel, called_off) = oneshot::channel();
        entry.stage = Stage::Uploading { until, _cancel: cancel };
        self.deadlines.push(Reverse((until, id.to_string())));
        Ok(UploadTicket { path, size: entry.file.size, sha256: entry.file.sha256.clone(), deadline, stall, called_off })
    }

    /// Ends an upload; returns the room and the file to announce when it succeeded.
    pub fn end_upload(&mut self, id: &str, ok: bool) -> Option<(Arc<str>, SharedFile)> {
        let entry = self.files.get_mut(id)?;
        if !matches!(entry.stage, Stage::Uploading { .. }) {
            return None;
        }
        if ok {
            entry.stage = Stage::Ready;
            let (room, file) = (entry.room.clone(), entry.file.clone());
            self.pending.sub(&file.from, file.size);
            return Some((room, file));
        }
        self.remove(id);
        None
    }

    /// A ready file for a download by `ip`, unless that address has as many running as it may.
    pub fn download(&mut self, id: &str, ip: IpAddr, now: Instant) -> Result<Download, DownloadRefusal> {
        let e = self.files.get(id).filter(|e| matches!(e.stage, Stage::Ready)).ok_or(DownloadRefusal::Unknown)?;
        let mut server = self.server.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if server.downloads.len() > MAX_FILES {
            // Forget the addresses with nothing running.
            server.downloads.retain(|_, running| Arc::strong_count(running) > 1);
        }
        let running = server.downloads.entry(ip).or_default();
        if Arc::strong_count(running) > MAX_DOWNLOADS_PER_IP {
            return Err(DownloadRefusal::Busy);
        }
        Ok(Download {
            path: self.dir.join(id),
            name: e.file.name.clone(),
            size: e.file.size,
            deadline: later(now, self.limits.transfer_time(e.file.size)),
            stall: self.limits.timeout,
            permit: DownloadPermit(running.clone()),
        })
    }

    /// Drops the offers whose upload did not start in time, and the uploads that did not end in
    /// time (the upload handler has normally cut those off already).
    pub fn expire(&mut self, now: Instant) {
        while let Some(Reverse((until, _))) = self.deadlines.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((until, id))) = self.deadlines.pop() else { break };
            if self.files.get(&id).is_some_and(|e| e.stage.until() == Some(until)) {
                debug!("a file offer or upload ran out of time");
                self.remove(&id);
            }
        }
    }

    /// When [`FileStore::expire`] has something to do next (perhaps nothing, for a deadline
    /// whose file moved on).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((until, _))| *until)
    }

    /// The room emptied: its files go (uploads under way are called off).
    pub fn room_closed(&mut self, room: &str) {
        let ids: Vec<String> = self.files.iter().filter(|(_, e)| &*e.room == room).map(|(id, _)| id.clone()).collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// A connection went: offers it never started uploading are dropped.
    pub fn owner_left(&mut self, owner: &PeerId) {
        if self.pending.of(owner).files == 0 {
            return;
        }
        let ids: Vec<String> = self
            .files
            .iter()
            .filter(|(_, e)| &e.file.from == owner && matches!(e.stage, Stage::Offered { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.server().used.bytes
    }

    fn remove(&mut self, id: &str) {
        let Some(e) = self.files.remove(id) else { return };
        let size = e.file.size;
        {
            let mut server = self.server();
            server.used.bytes = server.used.bytes.saturating_sub(size);
            server.used.files = server.used.files.saturating_sub(1);
            server.by_ip.sub(&e.ip, size);
        }
        self.by_owner.sub(&e.file.from, size);
        self.by_room.sub(&e.room, size);
        if !matches!(e.stage, Stage::Ready) {
            self.pending.sub(&e.file.from, size);
        }
        if !matches!(e.stage, Stage::Offered { .. }) {
            // An open download keeps reading an unlinked file (until its deadline); an upload in
            // flight is called off as its stage (with the sender) is dropped here.
            match std::fs::remove_file(self.dir.join(id)) {
                Ok(()) => debug!("deleted a shared file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(error = %e, "cannot delete a shared file"),
            }
        }
    }

    /// Deletes every file and the directory (at shutdown).
    pub fn clear(&mut self) {
        let ids: Vec<String> = self.files.keys().cloned().collect();
        for id in ids {
            self.remove(&id);
        }
        // The hub's own directory: also whatever an upload called off left behind.
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "cannot remove the file directory"),
        }
    }
}

/// The directory a new hub keeps its files in: `huddle-files-<pid>-<n>` under `file_dir` or the
/// system's temporary directory. One per hub, not per process: a hub removes its directory when
/// it stops, and the servers of one test binary share a process (one's shutdown removed the
/// directory another was about to upload into, failing that upload with `storage`).
pub fn hub_dir(file_dir: Option<&std::path::Path>) -> PathBuf {
    static HUBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = HUBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let parent = file_dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    parent.join(format!("{DIR_PREFIX}{}-{n}", std::process::id()))
}

/// The process id in a hub directory's name (`huddle-files-<pid>-<n>`).
fn pid_of_dir(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(DIR_PREFIX)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// A shared file's name: its 128-bit id in lower-case hex.
fn is_file_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Removes what servers that did not stop cleanly left under `file_dir` (or the system's
/// temporary directory): the directories `huddle-files-<pid>-<n>` of processes that no longer
/// exist, and, in a `file_dir`, files an older huddle kept straight in it (named by their id).
/// Only real directories and files owned by this user are touched; links, other names, and
/// the directories of running processes (this one's included) are left alone. Needs `/proc`
/// (Linux) to tell a running process; elsewhere nothing is removed.
pub fn remove_stale_dirs(file_dir: Option<&std::path::Path>) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(me) = std::fs::metadata("/proc/self") else { return };
        let parent = file_dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let Ok(entries) = std::fs::read_dir(&parent) else { return };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Not followed: a link is neither a directory nor a file here.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            if meta.uid() != me.uid() {
                continue;
            }
            let stale = match pid_of_dir(name) {
                Some(pid) => {
                    meta.is_dir()
                        && pid != std::process::id()
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                }
                None => file_dir.is_some() && meta.is_file() && is_file_id(name),
            };
            if !stale {
                continue;
            }
            let gone =
                if meta.is_dir() { std::fs::remove_dir_all(entry.path()) } else { std::fs::remove_file(entry.path()) };
            match gone {
                Ok(()) => removed += 1,
                Err(e) => warn!(path = %entry.path().display(), error = %e, "cannot remove a stale shared file"),
            }
        }
        if removed > 0 {
            info!(dir = %parent.display(), removed, "removed shared files a server that did not stop left behind");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file_dir;
}

/// 128 random bits, hex.
pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on the platforms huddle runs on; a zeroed id would still be
    // unique enough to work, only guessable, so this must not be silently ignored.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    key: String,
}

pub(crate) fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// The node of several that keeps file `id` (ids made there start with its id and `-`).
pub fn node_of_file(id: &str) -> Option<&str> {
    let (node, rest) = id.split_once('-')?;
    (node.len() == 8 && node.bytes().all(|b| b.is_ascii_hexdigit()) && !rest.is_empty()).then_some(node)
}

/// Where a request for file `id` goes: `Err(req)` back, for this node's hub to answer; or, when
/// the file is kept by another node of several, `Ok` with that node's answer passed through (or
/// why there is none).
async fn elsewhere(app: &AppState, id: &str, client: IpAddr, req: Request) -> Result<Response, Request> {
    let Some(cluster) = &app.cluster else { return Err(req) };
    let Some(node) = node_of_file(id).filter(|n| *n != cluster.node) else { return Err(req) };
    let not_found = || refusal(StatusCode::NOT_FOUND, "unknown_file", "No such file.");
    let Some(target) = cluster.node_address(node).await else { return Ok(not_found()) };
    if target.tls {
        return Ok(refusal(
            StatusCode::BAD_GATEWAY,
            "file_elsewhere",
            "This file is kept by another server node, which this one cannot pass the request to.",
        ));
    }
    Ok(crate::cluster::forward(cluster, &target.address, id, client, req, app.config.handshake_timeout).await)
}

async fn ask_hub(hub: &mpsc::Sender<Command>, cmd: FileCommand) -> bool {
    hub.send(Command::Files(cmd)).await.is_ok()
}

/// Tells the hub the upload failed if the handler ends (or is dropped) before saying otherwise.
struct UploadGuard {
    hub: mpsc::Sender<Command>,
    id: String,
    path: PathBuf,
    done: bool,
}

impl UploadGuard {
    async fn finish(mut self, ok: bool) {
        self.done = true;
        if !ok {
            let _ = tokio::fs::remove_file(&self.path).await;
        }
        let _ = ask_hub(&self.hub, FileCommand::EndUpload { id: self.id.clone(), ok }).await;
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if !self.done {
            // The client went away mid-upload. The hub deletes the partial file with the entry,
            // or at the entry's deadline if this message is lost.
            if self.hub.try_send(Command::Files(FileCommand::EndUpload { id: self.id.clone(), ok: false })).is_err() {
                warn!("hub queue full; an abandoned upload stays reserved until its deadline");
            }
        }
    }
}

/// How an upload's body ended.
enum Received {
    All,
    CutOff,
    TooMany,
    TooSlow,
    CalledOff,
    Unwritable,
}

/// `PUT /files/{id}?key=…`: the bytes of an offered file. A refused or failed upload says
/// `Connection: close`, so that its connection ends with the answer, whatever is left of its body
/// (hyper closes such a connection anyway; the header says so to the client and to proxies).
pub async fn upload(
    State(app): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(id): Path<String>,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Response {
    let ip = client_ip(peer.ip(), req.headers(), &app.config.trusted_proxies);
    let mut response = match elsewhere(&app, &id, ip, req).await {
        Ok(passed) => passed,
        Err(req) => receive_upload(app, id, q, req.into_body()).await,
    };
    if !response.status().is_success() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn receive_upload(app: AppState, id: String, q: UploadQuery, body: Body) -> Response {
    let (reply, answer) = oneshot::channel();
    let hub = app.workers.hub(crate::workers::worker_of_file(&id, app.workers.len())).clone();
    if !ask_hub(&hub, FileCommand::BeginUpload { id: id.clone(), key: q.key, reply }).await {
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "The server is stopping.");
    }
    let ticket = match answer.await {
        Ok(Ok(t)) => t,
        Ok(Err(UploadRefusal::Unknown)) | Err(_) => {
            return refusal(StatusCode::NOT_FOUND, "unknown_file", "No such upload.");
        }
        Ok(Err(UploadRefusal::Conflict)) => {
            return refusal(StatusCode::CONFLICT, "already_uploaded", "This file is already being uploaded.");
        }
        Ok(Err(UploadRefusal::Storage)) => {
            return refusal(StatusCode::INSUFFICIENT_STORAGE, "storage", "The server cannot store files now.");
        }
    };
    let guard = UploadGuard { hub, id, path: ticket.path.clone(), done: false };
    let mut options = tokio::fs::OpenOptions::new();
    // A new file (the id is new), readable by the server's user only.
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = match options.open(&ticket.path).await {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot create an upload file");
            guard.finish(false).await;
            return refusal(StatusCode::INSUFFICIENT_STORAGE, "storage", "The server cannot store files now.");
        }
    };
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let UploadTicket { size, sha256, deadline, stall, called_off, .. } = ticket;
    let (received, outcome) = receive(body, &mut file, &mut hash, (size, deadline, stall), called_off).await;
    let answer = match outcome {
        Received::All => None,
        Received::CutOff => Some((StatusCode::BAD_REQUEST, "file_mismatch", "The upload was cut off.")),
        Received::TooMany => Some((StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", "More bytes than offered.")),
        Received::TooSlow => Some((
            StatusCode::REQUEST_TIMEOUT,
            "upload_too_slow",
            "The upload stalled or was too slow to finish in time; offer the file again.",
        )),
        Received::CalledOff => {
            Some((StatusCode::NOT_FOUND, "unknown_file", "The upload was called off: its room closed."))
        }
        Received::Unwritable => {
            Some((StatusCode::INSUFFICIENT_STORAGE, "storage", "The server cannot store files now."))
        }
    };
    if let Some((status, code, message)) = answer {
        debug!(code, "an upload failed");
        guard.finish(false).await;
        return refusal(status, code, message);
    }
    let flushed = file.flush().await.is_ok();
    let digest: String = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if !flushed || received != size || digest != sha256 {
        guard.finish(false).await;
        return refusal(StatusCode::BAD_REQUEST, "file_mismatch", "The size or checksum does not match the offer.");
    }
    info!(bytes = received, "a file was shared");
    guard.finish(true).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Streams an upload's body to `file` and `hash` — at most `size` bytes, each within `stall` of
/// the last and all by `deadline` — and stops as soon as the hub calls the upload off. Returns the
/// bytes received and how it ended.
async fn receive(
    body: Body,
    file: &mut tokio::fs::File,
    hash: &mut aws_lc_rs::digest::Context,
    (size, deadline, stall): (u64, Instant, Duration),
    mut called_off: oneshot::Receiver<()>,
) -> (u64, Received) {
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    loop {
        let until = deadline.min(Instant::now() + stall);
        let chunk = tokio::select! {
            // Never sent: the sender is dropped when the file goes.
            _ = &mut called_off => return (received, Received::CalledOff),
            next = tokio::time::timeout_at(until, stream.next()) => match next {
                Err(_) => return (received, Received::TooSlow),
                Ok(None) => return (received, Received::All),
                Ok(Some(Err(_))) => return (received, Received::CutOff),
                Ok(Some(Ok(chunk))) => chunk,
            },
        };
        received += chunk.len() as u64;
        if received > size {
            return (received, Received::TooMany);
        }
        hash.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            warn!(error = %e, "cannot write an upload");
            return (received, Received::Unwritable);
        }
    }
}

/// `GET /files/{id}`: a ready file, as an attachment that no browser will render. A reader that
/// stops taking bytes for the timeout, or is still reading at the deadline, is cut off, and the
/// file (perhaps deleted since) is closed at once; one address has at most
/// [`MAX_DOWNLOADS_PER_IP`] downloads at once.
pub async fn download(
    State(app): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let ip = client_ip(peer.ip(), req.headers(), &app.config.trusted_proxies);
    // Passed on by another node of several: the address it vouches for counts (per-address
    // limits).
    let ip = app.cluster.as_ref().and_then(|c| c.vouched_client(req.headers(), &id)).unwrap_or(ip);
    let req = match elsewhere(&app, &id, ip, req).await {
        Ok(passed) => return passed,
        Err(req) => req,
    };
    drop(req);
    let (reply, answer) = oneshot::channel();
    let not_found = || refusal(StatusCode::NOT_FOUND, "unknown_file", "No such file.");
    let hub = app.workers.hub(crate::workers::worker_of_file(&id, app.workers.len()));
    if !ask_hub(hub, FileCommand::Download { id, ip, reply }).await {
        return not_found();
    }
    let d = match answer.await {
        Ok(Ok(d)) => d,
        Ok(Err(DownloadRefusal::Busy)) => {
            let mut res = refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_downloads",
                "Too many downloads from this address at once; try again when one has finished.",
            );
            let wait = HeaderValue::from(app.config.file_transfer_timeout.as_secs());
            res.headers_mut().insert(header::RETRY_AFTER, wait);
            return res;
        }
        Ok(Err(DownloadRefusal::Unknown)) | Err(_) => return not_found(),
    };
    let Ok(file) = tokio::fs::File::open(&d.path).await else { return not_found() };
    let mut res = Body::from_stream(send_file(file, d.deadline, d.stall, d.permit)).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.size));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&d.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    res
}

/// A download's body. The file is read by a task of its own that hands each chunk over within
/// `stall` (and all by `deadline`), or gives up: a reader that stops reading stops polling the
/// body, so only a task that is not waiting on it can let go of the file and the permit. The body
/// then ends short of its `Content-Length`, which ends the connection. `permit` is held until
/// then (a shared file's download slot; a recording's link has none: `()`).
pub(crate) fn send_file<P: Send + 'static>(
    mut file: tokio::fs::File,
    deadline: Instant,
    stall: Duration,
    permit: P,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(1);
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            let chunk = match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            let until = deadline.min(Instant::now() + stall);
            match tokio::time::timeout_at(until, tx.send(chunk)).await {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return,
                Err(_) => {
                    debug!("a download stalled or ran out of time; closing its file");
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) })
}

/// `attachment` with an ASCII fallback name and the real name percent-encoded (RFC 6266/8187).
fn content_disposition(name: &str) -> String {
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn limits(total: u64) -> FileLimits {
        FileLimits {
            max_file: 600,
            total,
            per_connection: total,
            per_ip: total,
            per_room: total,
            timeout: Duration::from_secs(30),
            min_rate: 100,
        }
    }

    fn store(limits: FileLimits) -> FileStore {
        FileStore::new(std::env::temp_dir().join(format!("huddle-files-test-{}", random_hex())), limits)
    }

    fn key_of(url: &str) -> String {
        url.split("key=").nth(1).expect("key in the url").to_string()
    }

    #[test]
    fn offers_are_validated_and_reserved() {
        let mut s = store(limits(1000));
        let room: Arc<str> = "r".into();
        let p = PeerId("p1".into());
        let now = Instant::now();
        let ok =
            |s: &mut FileStore, name: &str, size: u64, sha: &str| s.offer(&room, &p, IP, "A", name, size, "", sha, now);
        assert_eq!(ok(&mut s, "", 10, SHA), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "../etc/passwd", 10, SHA), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "a.txt", 0, SHA), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "a.txt", 601, SHA), Err(ErrorCode::InvalidFile), "over the per-file limit");
        assert_eq!(ok(&mut s, "a.txt", 10, "XYZ"), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "a.txt", 10, &SHA.to_uppercase()), Err(ErrorCode::InvalidFile));
        let (id, url) = ok(&mut s, "a.txt", 600, SHA).expect("valid offer");
        assert!(url.starts_with(&format!("/files/{id}?key=")));
        assert_eq!(s.used(), 600);
        assert_eq!(ok(&mut s, "b.txt", 500, SHA), Err(ErrorCode::FileQuota), "over this participant's share");
        ok(&mut s, "b.txt", 400, SHA).expect("fits");
        assert_eq!(ok(&mut s, "c.txt", 1, SHA), Err(ErrorCode::FileQuota), "two offers already wait");
        s.owner_left(&p);
        assert_eq!(s.used(), 0, "offers never uploaded are dropped with their owner");
        assert_eq!(
            s.by_owner.0.len() + s.server().by_ip.0.len() + s.by_room.0.len() + s.pending.0.len(),
            0,
            "nothing tallied"
        );
    }

    #[test]
    fn quotas_count_per_participant_address_and_room_then_the_server() {
        let l = FileLimits { per_connection: 300, per_ip: 500, per_room: 700, ..limits(1100) };
        let mut s = store(l);
        let (r1, r2): (Arc<str>, Arc<str>) = ("r1".into(), "r2".into());
        let ip2: IpAddr = "127.0.0.2".parse().expect("ip");
        let ip3: IpAddr = "127.0.0.3".parse().expect("ip");
        let now = Instant::now();
        let offer = |s: &mut FileStore, room: &Arc<str>, who: &str, ip: IpAddr, size: u64| {
            s.offer(room, &PeerId(who.into()), ip, who, "f", size, "", SHA, now).map(|_| ())
        };
        offer(&mut s, &r1, "p1", IP, 300).expect("p1's whole share");
        assert_eq!(offer(&mut s, &r1, "p1", IP, 1), Err(ErrorCode::FileQuota), "participant");
        offer(&mut s, &r2, "p2", IP, 200).expect("the rest of the address's share");
        assert_eq!(offer(&mut s, &r2, "p2", IP, 1), Err(ErrorCode::FileQuota), "address");
        offer(&mut s, &r1, "p3", ip2, 300).expect("fits r1");
        offer(&mut s, &r1, "p4", ip3, 100).expect("fills r1");
        assert_eq!(offer(&mut s, &r1, "p4", ip3, 1), Err(ErrorCode::FileQuota), "room");
        offer(&mut s, &r2, "p4", ip3, 200).expect("fills the server");
        assert_eq!(offer(&mut s, &r2, "p5", ip2, 1), Err(ErrorCode::FileStorageFull), "server");
        s.room_closed("r1");
        assert_eq!(s.used(), 400);
        offer(&mut s, &r1, "p1", IP, 300).expect("r1's files went, and with them what they counted");
    }

    #[test]
    fn offers_and_uploads_run_out_of_time() {
        let mut s = store(limits(1000));
        let room: Arc<str> = "r".into();
        let p = PeerId("p1".into());
        let t0 = Instant::now();
        let (id, url) = s.offer(&room, &p, IP, "A", "a.txt", 500, "", SHA, t0).expect("ok");
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(30)));
        let late = t0 + Duration::from_secs(30);
        assert_eq!(s.begin_upload(&id, &key_of(&url), late).err(), Some(UploadRefusal::Unknown), "too late");
        s.expire(late);
        assert_eq!(s.used(), 0, "an offer not uploaded in time is dropped");

        let (id, url) = s.offer(&room, &p, IP, "A", "a.txt", 500, "", SHA, t0).expect("ok");
        let mut ticket = s.begin_upload(&id, &key_of(&url), t0 + Duration::from_secs(1)).expect("in time");
        // 30 s, plus 500 bytes at 100 a second.
        assert_eq!(ticket.deadline, t0 + Duration::from_secs(36));
        assert_eq!(ticket.stall, Duration::from_secs(30));
        s.expire(t0 + Duration::from_secs(40));
        assert_eq!(s.used(), 500, "the offer's old deadline no longer applies");
        assert!(ticket.called_off.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        s.expire(ticket.deadline + ticket.stall);
        assert_eq!(s.used(), 0, "the hub's backstop");
        assert_eq!(ticket.called_off.try_recv(), Err(oneshot::error::TryRecvError::Closed), "called off");
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn uploads_need_the_key_and_happen_once() {
        let mut s = store(limits(1000));
        let room: Arc<str> = "r".into();
        let now = Instant::now();
        let (id, url) = s.offer(&room, &PeerId("p1".into()), IP, "A", "a.txt", 4, "text/plain", SHA, now).expect("ok");
        let key = key_of(&url);
        assert_eq!(s.begin_upload(&id, "wrong", now).err(), Some(UploadRefusal::Unknown));
        assert!(s.download(&id, IP, now).is_err(), "not downloadable before the upload");
        let ticket = s.begin_upload(&id, &key, now).expect("right key");
        assert_eq!(ticket.size, 4);
        assert_eq!(s.begin_upload(&id, &key, now).err(), Some(UploadRefusal::Conflict));
        let (r, file) = s.end_upload(&id, true).expect("announced");
        assert_eq!(&*r, "r");
        assert_eq!(file.name, "a.txt");
        assert!(s.download(&id, IP, now).is_ok());
        let mut ticket = ticket;
        s.room_closed("r");
        assert_eq!(s.download(&id, IP, now).err(), Some(DownloadRefusal::Unknown));
        assert_eq!(s.used(), 0);
        assert!(ticket.called_off.try_recv().is_err());
        s.clear();
    }

    #[test]
    fn one_address_has_a_bounded_number_of_downloads() {
        let mut s = store(limits(1000));
        let room: Arc<str> = "r".into();
        let now = Instant::now();
        let (id, url) = s.offer(&room, &PeerId("p1".into()), IP, "A", "a.txt", 4, "", SHA, now).expect("ok");
        s.begin_upload(&id, &key_of(&url), now).expect("begins");
        s.end_upload(&id, true).expect("ready");
        let running: Vec<Download> =
            (0..MAX_DOWNLOADS_PER_IP).map(|_| s.download(&id, IP, now).expect("within the cap")).collect();
        assert_eq!(s.download(&id, IP, now).err(), Some(DownloadRefusal::Busy));
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(s.download(&id, other, now).is_ok(), "another address is not affected");
        drop(running);
        assert!(s.download(&id, IP, now).is_ok(), "finished downloads no longer count");
        s.clear();
    }

    #[test]
    fn a_failed_upload_frees_its_reservation() {
        let mut s = store(limits(1000));
        let room: Arc<str> = "r".into();
        let now = Instant::now();
        let (id, url) = s.offer(&room, &PeerId("p1".into()), IP, "A", "a.txt", 4, "", SHA, now).expect("ok");
        let key = key_of(&url);
        s.begin_upload(&id, &key, now).expect("begins");
        assert!(s.end_upload(&id, false).is_none());
        assert_eq!(s.used(), 0);
        assert_eq!(s.begin_upload(&id, &key, now).err(), Some(UploadRefusal::Unknown));
        s.clear();
    }

    #[test]
    fn stale_directories_are_told_by_name() {
        assert_eq!(pid_of_dir("huddle-files-1234-0"), Some(1234));
        assert_eq!(pid_of_dir("huddle-files-1234-17"), Some(1234));
        for other in ["huddle-files-1234", "huddle-files--0", "huddle-files-12a-0", "huddle-files-1-0-0", "x-1-0", ""] {
            assert_eq!(pid_of_dir(other), None, "{other:?}");
        }
        assert!(is_file_id(&random_hex()));
        assert!(!is_file_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_file_id("0123456789abcdef"));
        let dir = hub_dir(None);
        assert_eq!(dir.parent(), Some(std::env::temp_dir().as_path()));
        let name = dir.file_name().and_then(|n| n.to_str()).expect("a name");
        assert_eq!(pid_of_dir(name), Some(std::process::id()));
    }

    #[test]
    fn download_names_are_quoted_safely() {
        assert_eq!(
            content_disposition("주간 \"보고\".pdf"),
            "attachment; filename=\"__ ____.pdf\"; filename*=UTF-8''%EC%A3%BC%EA%B0%84%20%22%EB%B3%B4%EA%B3%A0%22.pdf"
        );
    }
}
