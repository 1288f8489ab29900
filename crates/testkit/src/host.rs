//! The model-host virtualenv for tests: its interpreter, and tiny
//! randomly initialised pipelines written through the host package's
//! `make-tiny` (the production `from_pretrained` path loads them back).

use std::path::{Path, PathBuf};
use std::process::Command;

pub const INSTALL_HINT: &str = "run scripts/host-venv.sh to build it (scripts/test.sh does)";

/// The interpreter of the host virtualenv: `VIDEOGEN_HOST_PYTHON`, else
/// `target/host-venv/bin/python` of the workspace. Panics (never skips)
/// when it is missing or cannot import the host package.
pub fn python() -> PathBuf {
    let path = std::env::var_os("VIDEOGEN_HOST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/host-venv/bin/python"));
    let ok = Command::new(&path)
        .args(["-c", "import videogen_host"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the model-host virtualenv ({}) is missing or cannot import videogen_host: {INSTALL_HINT}",
        path.display()
    );
    path
}

/// Writes a tiny pipeline of `adapter` (`wan`, `ltx`, `noop`, ...) into
/// `dir` (`extra`: more `make-tiny` flags, e.g. `--seed 1`).
pub fn make_tiny(adapter: &str, dir: &Path, extra: &[&str]) {
    let out = Command::new(python())
        .args(["-m", "videogen_host.testing", "make-tiny", "--adapter", adapter])
        .args(extra)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running make-tiny: {e}"));
    assert!(
        out.status.success(),
        "make-tiny --adapter {adapter} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Merges `fields` into the `model_index.json` of a model directory (the
/// noop adapter's test knobs: `crash_at_step`, `step_ms`, `audio`, ...).
pub fn patch_model_index(dir: &Path, fields: serde_json::Value) {
    let path = dir.join("model_index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut index: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    if let (Some(index), serde_json::Value::Object(fields)) = (index.as_object_mut(), fields) {
        index.extend(fields);
    }
    std::fs::write(&path, index.to_string()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
