//! Embeds every file under `web/` into the binary: writes `$OUT_DIR/assets.rs` with a table of
//! `(url path, bytes)`. Re-runs when anything under `web/` changes.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("../../web").canonicalize().expect("the web/ directory exists beside crates/");
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files = Vec::new();
    collect(&web, &web, &mut files);
    files.sort();
    let mut out = String::from("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (url, path) in files {
        writeln!(out, "    ({url:?}, include_bytes!({:?})),", path.display().to_string()).expect("write to String");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(dest, out).expect("write assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).expect("read web/ directory");
    for entry in entries {
        let path = entry.expect("read web/ entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "tsconfig.json" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(root, &path, files);
        } else {
            let rel = path.strip_prefix(root).expect("path under web/");
            let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            files.push((url, path));
        }
    }
}
