//! Wire compatibility with the official `openai` Python SDK: runs the pytest
//! suite in `tests/sdk/` against a real server.
//!
//! Needs `VIDEOGEN_SDK_PYTHON`, a Python with `tests/sdk/requirements.txt`
//! installed:
//!
//! ```text
//! python3 -m venv /tmp/sdkvenv && /tmp/sdkvenv/bin/pip install -r tests/sdk/requirements.txt
//! VIDEOGEN_SDK_PYTHON=/tmp/sdkvenv/bin/python cargo test -p videogen --test sdk -- --nocapture
//! ```
//!
//! Without it the test is skipped locally, and fails under CI (`CI` set).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use common::*;
use std::process::Command;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sdk/test_openai_sdk.py");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn the_official_openai_python_sdk_suite_passes() {
    let Some(python) = std::env::var_os("VIDEOGEN_SDK_PYTHON").filter(|p| !p.is_empty()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but VIDEOGEN_SDK_PYTHON is not: CI must run the SDK compatibility suite \
             (pip install -r tests/sdk/requirements.txt and point VIDEOGEN_SDK_PYTHON at that python)"
        );
        eprintln!(
            "SKIPPED: VIDEOGEN_SDK_PYTHON is not set, so the openai SDK suite ({SUITE}) did not run. \
             Install tests/sdk/requirements.txt into a venv and set VIDEOGEN_SDK_PYTHON=<venv>/bin/python."
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The server creates the database; `keys` refuses to invent one.
    let server = Server::start(dir.path(), FAST);
    let other = create_key(dir.path(), "sdk-other-tenant", "free");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"])
        .arg(SUITE)
        .current_dir(WORKSPACE)
        .env("VIDEOGEN_BASE_URL", format!("{}/v1", server.base))
        .env("VIDEOGEN_API_KEY", ADMIN_KEY)
        .env("VIDEOGEN_OTHER_API_KEY", &other)
        .env("VIDEOGEN_SDK_POLL_TIMEOUT", "120")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the SDK python (VIDEOGEN_SDK_PYTHON)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("---- pytest stdout ----\n{stdout}");
    if !stderr.trim().is_empty() {
        println!("---- pytest stderr ----\n{stderr}");
    }
    assert!(
        out.status.success(),
        "the openai SDK suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // A skip (e.g. the env not reaching pytest) exits 0 too: every test must run.
    assert!(stdout.contains(" passed"), "the SDK suite ran no test:\n{stdout}");
    assert!(!stdout.contains("skipped"), "SDK tests were skipped:\n{stdout}");
}
