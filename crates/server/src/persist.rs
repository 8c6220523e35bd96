//! What outlives a restart, in the data directory (`--data-dir`): the keys that sign invite
//! links and TURN credentials, and the sessions a stopping server hands to the next start.
//!
//! On SIGTERM or Ctrl-C the hub writes every in-room session and its room to
//! `sessions-<port>.json` ([`crate::hub::Hub::save_for_restart`]) before it says goodbye; the next
//! start on the same port reads the file once, deletes it, and keeps those sessions for their
//! pages to resume within the grace period, as after a lost connection. A crash saves nothing:
//! pages then join their rooms again as new participants. Both files hold secrets (session
//! secrets, the invite key; room passwords only as salted hashes) and are readable by their
//! owner only.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Bytes of a signing key.
const KEY_BYTES: usize = 32;
/// The largest sessions file read back (a full server's worth of rooms and replay buffers).
const MAX_SESSIONS_FILE: u64 = 256 << 20;

/// Where a server listening on `port` keeps its sessions over a restart; `None` without a data
/// directory or with resuming turned off.
pub fn sessions_file(data_dir: Option<&Path>, port: u16, resume_grace_secs: u64) -> Option<PathBuf> {
    (resume_grace_secs > 0).then(|| data_dir.map(|d| d.join(format!("sessions-{port}.json"))))?
}

/// Where worker `index` (of several, see [`crate::workers`]) saves its sessions: the first in
/// `file` itself, the others beside it (`sessions-<port>.w<index>.json`).
pub fn worker_file(file: &Path, index: usize) -> PathBuf {
    match index {
        0 => file.to_path_buf(),
        i => file.with_extension(format!("w{i}.json")),
    }
}

/// Creates `dir`, and the directories above it that are missing, readable by their owner only
/// (0700). A directory that exists already is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` to `path` readable by its owner only, whole or not at all (a temporary file
/// renamed into place); a missing directory is made private ([`create_private_dir`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Saves the hub's sessions for the next start; a failure is logged and the server stops as
/// it would have without it.
pub fn save_sessions(path: &Path, bytes: &[u8]) {
    match write_private(path, bytes) {
        Ok(()) => info!(file = %path.display(), bytes = bytes.len(), "sessions saved for the restart"),
        Err(e) => warn!(file = %path.display(), error = %e, "could not save the sessions; pages will join again"),
    }
}

/// Reads the sessions a previous run saved, and removes the file: it is used once.
pub fn take_sessions(path: &Path) -> Option<Vec<u8>> {
    let size = std::fs::metadata(path).ok()?.len();
    let bytes = if size <= MAX_SESSIONS_FILE { std::fs::read(path).ok() } else { None };
    if let Err(e) = std::fs::remove_file(path) {
        warn!(file = %path.display(), error = %e, "could not remove the saved sessions");
    }
    if bytes.is_none() {
        warn!(file = %path.display(), size, "saved sessions unreadable or too large; not used");
    }
    bytes
}

/// A signing key kept as `dir/<file>` (e.g. `invite.key`, `turn.key`): read, or made there.
/// `None` (a key for this run only) without a data directory or when it cannot be kept.
pub fn key(dir: Option<&Path>, file: &str) -> Option<Vec<u8>> {
    let path = dir?.join(file);
    match std::fs::read(&path) {
        Ok(key) if key.len() == KEY_BYTES => return Some(key),
        Ok(_) => warn!(file = %path.display(), "key has the wrong length; making a new one"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the key; what it signs lasts until a restart");
            return None;
        }
    }
    let mut key = vec![0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut key).ok()?;
    match write_private(&path, &key) {
        Ok(()) => Some(key),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot keep the key; what it signs lasts until a restart");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("huddle-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sessions_are_read_once_and_kept_private() {
        let dir = temp_dir("sessions");
        let path = sessions_file(Some(&dir), 8080, 30).expect("a data dir and a grace period");
        assert_eq!(path, dir.join("sessions-8080.json"));
        save_sessions(&path, b"{\"x\":1}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("saved").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&dir).expect("made").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "the data directory is its owner's only");
        }
        assert_eq!(take_sessions(&path).as_deref(), Some(&b"{\"x\":1}"[..]));
        assert_eq!(take_sessions(&path), None, "used once");
        assert_eq!(sessions_file(Some(&dir), 8080, 0), None, "nothing to resume without a grace period");
        assert_eq!(sessions_file(None, 8080, 30), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_are_made_once_and_kept() {
        let dir = temp_dir("keys");
        let first = key(Some(&dir), "invite.key").expect("made");
        assert_eq!(first.len(), KEY_BYTES);
        assert_eq!(key(Some(&dir), "invite.key"), Some(first.clone()), "the same key on the next start");
        assert_ne!(key(Some(&dir), "turn.key"), Some(first), "one key per use");
        assert_eq!(key(None, "invite.key"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
