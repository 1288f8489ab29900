//! What a test finds on disk.

use std::path::{Path, PathBuf};

/// Files under `dir/blobs`, sorted (to prove nothing was left behind).
pub fn blob_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out)
                } else {
                    out.push(path)
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("blobs"), &mut out);
    out.sort();
    out
}
