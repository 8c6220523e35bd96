//! Files shared through the server — for `sfu` rooms, where pages have no peer-to-peer data
//! channel to send them over.
//!
//! The flow (see `docs/protocol.md`): a member sends `file_offer` over the WebSocket; the hub
//! validates it, reserves its size against the storage limit ([`FileStore::offer`]) and answers
//! `file_upload` with a one-time upload URL. The page `PUT`s the bytes there; the upload handler
//! ([`upload`]) streams them to a file while hashing, checks size and SHA-256, and only then tells
//! the hub, which announces `file` to the room. Members `GET` it ([`download`]) as an attachment.
//! Files are deleted when their room empties.
//!
//! The [`FileStore`] (which files exist, their state, the bytes reserved) is owned by the hub like
//! every other piece of room state; the HTTP handlers reach it with [`FileCommand`]s. Ids and
//! upload keys are 128-bit random, so a URL is a capability only room members learn.

use crate::hub::Command;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use huddle_protocol::{ErrorCode, PeerId, SharedFile};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Offers of one connection that may wait for their upload at once.
pub const MAX_PENDING_PER_CONNECTION: usize = 2;
/// The longest declared media type kept.
pub const MAX_MIME_CHARS: usize = 100;
/// The longest file name, in characters.
pub const MAX_FILE_NAME_CHARS: u32 = 255;
/// Download chunk size.
const READ_CHUNK: usize = 64 * 1024;

/// What the HTTP handlers ask the hub.
#[derive(Debug)]
pub enum FileCommand {
    /// Start the upload of an offered file; answered with where to write it and what to expect.
    BeginUpload { id: String, key: String, reply: oneshot::Sender<Result<UploadTicket, UploadRefusal>> },
    /// The upload ended: `ok` when size and checksum matched (then the room is told), otherwise
    /// the file is dropped and its reservation freed.
    EndUpload { id: String, ok: bool },
    /// Where a ready file is, for a download.
    Download { id: String, reply: oneshot::Sender<Option<Download>> },
}

#[derive(Debug)]
pub struct UploadTicket {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UploadRefusal {
    /// No such offer, or the key does not match.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Offered,
    Uploading,
    Ready,
}

#[derive(Debug)]
struct Entry {
    room: Arc<str>,
    key: String,
    state: Stage,
    file: SharedFile,
}

/// Every shared file, owned by the hub.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    limit: u64,
    /// Bytes reserved by offers, uploads and ready files.
    used: u64,
    files: HashMap<String, Entry>,
}

impl FileStore {
    pub fn new(dir: PathBuf, limit: u64) -> FileStore {
        FileStore { dir, limit, used: 0, files: HashMap::new() }
    }

    /// The directory files are written to (created on the first upload).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Validates an offer and reserves its size. Returns the id and the upload URL.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        room: &Arc<str>,
        from: &PeerId,
        sender: &str,
        name: &str,
        size: u64,
        mime: &str,
        sha256: &str,
        max_size: u64,
    ) -> Result<(String, String), ErrorCode> {
        let name = crate::validate::label(name, MAX_FILE_NAME_CHARS).ok_or(ErrorCode::InvalidFile)?;
        let name = name.as_str();
        let sha_ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mime_ok = mime.chars().count() <= MAX_MIME_CHARS && !mime.chars().any(char::is_control);
        if name.contains(['/', '\\']) || size == 0 || size > max_size || !sha_ok || !mime_ok {
            return Err(ErrorCode::InvalidFile);
        }
        let pending = self.files.values().filter(|e| &e.file.from == from && e.state != Stage::Ready).count();
        if pending >= MAX_PENDING_PER_CONNECTION {
            return Err(ErrorCode::InvalidFile);
        }
        if self.used.saturating_add(size) > self.limit {
            return Err(ErrorCode::FileStorageFull);
        }
        let id = random_hex();
        let key = random_hex();
        let url = format!("/files/{id}");
        let upload_url = format!("{url}?key={key}");
        self.used += size;
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
        self.files.insert(id.clone(), Entry { room: room.clone(), key, state: Stage::Offered, file });
        Ok((id, upload_url))
    }

    pub fn begin_upload(&mut self, id: &str, key: &str) -> Result<UploadTicket, UploadRefusal> {
        let path = self.dir.join(id);
        let entry = self.files.get_mut(id).filter(|e| constant_time_eq(&e.key, key)).ok_or(UploadRefusal::Unknown)?;
        if entry.state != Stage::Offered {
            return Err(UploadRefusal::Conflict);
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "cannot create the file directory");
            return Err(UploadRefusal::Storage);
        }
        entry.state = Stage::Uploading;
        Ok(UploadTicket { path, size: entry.file.size, sha256: entry.file.sha256.clone() })
    }

    /// Ends an upload; returns the room and the file to announce when it succeeded.
    pub fn end_upload(&mut self, id: &str, ok: bool) -> Option<(Arc<str>, SharedFile)> {
        let entry = self.files.get_mut(id)?;
        if entry.state != Stage::Uploading {
            return None;
        }
        if ok {
            entry.state = Stage::Ready;
            return Some((entry.room.clone(), entry.file.clone()));
        }
        self.remove(id);
        None
    }

    pub fn download(&self, id: &str) -> Option<Download> {
        let e = self.files.get(id).filter(|e| e.state == Stage::Ready)?;
        Some(Download { path: self.dir.join(id), name: e.file.name.clone(), size: e.file.size })
    }

    /// The room emptied: its files go.
    pub fn room_closed(&mut self, room: &str) {
        let ids: Vec<String> = self.files.iter().filter(|(_, e)| &*e.room == room).map(|(id, _)| id.clone()).collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// A connection went: offers it never started uploading are dropped.
    pub fn owner_left(&mut self, owner: &PeerId) {
        let ids: Vec<String> = self
            .files
            .iter()
            .filter(|(_, e)| &e.file.from == owner && e.state == Stage::Offered)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn remove(&mut self, id: &str) {
        let Some(e) = self.files.remove(id) else { return };
        self.used = self.used.saturating_sub(e.file.size);
        if e.state != Stage::Offered {
            // An open download keeps reading an unlinked file; an upload in flight fails its
            // checks or finds its entry gone.
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
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn random_hex() -> String {
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

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
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
            // The client went away mid-upload. The hub deletes the partial file with the entry.
            if self.hub.try_send(Command::Files(FileCommand::EndUpload { id: self.id.clone(), ok: false })).is_err() {
                warn!("hub queue full; an abandoned upload stays reserved until its room empties");
            }
        }
    }
}

/// `PUT /files/{id}?key=…`: the bytes of an offered file.
pub async fn upload(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Response {
    let (reply, answer) = oneshot::channel();
    if !ask_hub(&app.hub, FileCommand::BeginUpload { id: id.clone(), key: q.key, reply }).await {
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
    let guard = UploadGuard { hub: app.hub.clone(), id, path: ticket.path.clone(), done: false };
    let mut file = match tokio::fs::File::create(&ticket.path).await {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot create an upload file");
            guard.finish(false).await;
            return refusal(StatusCode::INSUFFICIENT_STORAGE, "storage", "The server cannot store files now.");
        }
    };
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            debug!("an upload ended early");
            guard.finish(false).await;
            return refusal(StatusCode::BAD_REQUEST, "file_mismatch", "The upload was cut off.");
        };
        received += chunk.len() as u64;
        if received > ticket.size {
            guard.finish(false).await;
            return refusal(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", "More bytes than offered.");
        }
        hash.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            warn!(error = %e, "cannot write an upload");
            guard.finish(false).await;
            return refusal(StatusCode::INSUFFICIENT_STORAGE, "storage", "The server cannot store files now.");
        }
    }
    let flushed = file.flush().await.is_ok();
    let digest: String = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if !flushed || received != ticket.size || digest != ticket.sha256 {
        guard.finish(false).await;
        return refusal(StatusCode::BAD_REQUEST, "file_mismatch", "The size or checksum does not match the offer.");
    }
    info!(bytes = received, "a file was shared");
    guard.finish(true).await;
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /files/{id}`: a ready file, as an attachment that no browser will render.
pub async fn download(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let (reply, answer) = oneshot::channel();
    let not_found = || refusal(StatusCode::NOT_FOUND, "unknown_file", "No such file.");
    if !ask_hub(&app.hub, FileCommand::Download { id, reply }).await {
        return not_found();
    }
    let Ok(Some(d)) = answer.await else { return not_found() };
    let Ok(file) = tokio::fs::File::open(&d.path).await else { return not_found() };
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; READ_CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut res = Body::from_stream(stream).into_response();
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

    fn store(limit: u64) -> FileStore {
        FileStore::new(std::env::temp_dir().join(format!("huddle-files-test-{}", random_hex())), limit)
    }

    #[test]
    fn offers_are_validated_and_reserved() {
        let mut s = store(1000);
        let room: Arc<str> = "r".into();
        let p = PeerId("p1".into());
        let ok =
            |s: &mut FileStore, name: &str, size: u64, sha: &str| s.offer(&room, &p, "A", name, size, "", sha, 600);
        assert_eq!(ok(&mut s, "", 10, SHA), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "../etc/passwd", 10, SHA), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "a.txt", 0, SHA), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "a.txt", 601, SHA), Err(ErrorCode::InvalidFile), "over the per-file limit");
        assert_eq!(ok(&mut s, "a.txt", 10, "XYZ"), Err(ErrorCode::InvalidFile));
        assert_eq!(ok(&mut s, "a.txt", 10, &SHA.to_uppercase()), Err(ErrorCode::InvalidFile));
        let (id, url) = ok(&mut s, "a.txt", 600, SHA).expect("valid offer");
        assert!(url.starts_with(&format!("/files/{id}?key=")));
        assert_eq!(s.used(), 600);
        assert_eq!(ok(&mut s, "b.txt", 500, SHA), Err(ErrorCode::FileStorageFull));
        ok(&mut s, "b.txt", 400, SHA).expect("fits");
        assert_eq!(ok(&mut s, "c.txt", 1, SHA), Err(ErrorCode::InvalidFile), "two offers already wait");
        s.owner_left(&p);
        assert_eq!(s.used(), 0, "offers never uploaded are dropped with their owner");
    }

    #[test]
    fn uploads_need_the_key_and_happen_once() {
        let mut s = store(1000);
        let room: Arc<str> = "r".into();
        let (id, url) = s.offer(&room, &PeerId("p1".into()), "A", "a.txt", 4, "text/plain", SHA, 100).expect("ok");
        let key = url.split("key=").nth(1).expect("key in the url").to_string();
        assert_eq!(s.begin_upload(&id, "wrong").err(), Some(UploadRefusal::Unknown));
        assert!(s.download(&id).is_none(), "not downloadable before the upload");
        let ticket = s.begin_upload(&id, &key).expect("right key");
        assert_eq!(ticket.size, 4);
        assert_eq!(s.begin_upload(&id, &key).err(), Some(UploadRefusal::Conflict));
        let (r, file) = s.end_upload(&id, true).expect("announced");
        assert_eq!(&*r, "r");
        assert_eq!(file.name, "a.txt");
        assert!(s.download(&id).is_some());
        s.room_closed("r");
        assert!(s.download(&id).is_none());
        assert_eq!(s.used(), 0);
        s.clear();
    }

    #[test]
    fn a_failed_upload_frees_its_reservation() {
        let mut s = store(1000);
        let room: Arc<str> = "r".into();
        let (id, url) = s.offer(&room, &PeerId("p1".into()), "A", "a.txt", 4, "", SHA, 100).expect("ok");
        let key = url.split("key=").nth(1).expect("key").to_string();
        s.begin_upload(&id, &key).expect("begins");
        assert!(s.end_upload(&id, false).is_none());
        assert_eq!(s.used(), 0);
        assert_eq!(s.begin_upload(&id, &key).err(), Some(UploadRefusal::Unknown));
        s.clear();
    }

    #[test]
    fn download_names_are_quoted_safely() {
        assert_eq!(
            content_disposition("주간 \"보고\".pdf"),
            "attachment; filename=\"__ ____.pdf\"; filename*=UTF-8''%EC%A3%BC%EA%B0%84%20%22%EB%B3%B4%EA%B3%A0%22.pdf"
        );
    }
}
