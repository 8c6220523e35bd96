//! A directory of the benchmark's own, removed when it is dropped.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// A new directory `<parent>/<prefix>-<pid>-<n>` (`parent`: the system's temporary directory by
/// default), removed with everything in it when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(parent: Option<&Path>, prefix: &str) -> anyhow::Result<TempDir> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = parent.join(format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000));
        std::fs::create_dir_all(&parent).with_context(|| format!("making {}", parent.display()))?;
        std::fs::create_dir(&path).with_context(|| format!("making {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Bytes of every file under `dir`, subdirectories included (symbolic links not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
        .map(|(path, kind)| {
            if kind.is_dir() {
                dir_bytes(&path)
            } else if kind.is_file() {
                std::fs::metadata(&path).map_or(0, |m| m.len())
            } else {
                0
            }
        })
        .sum()
}
