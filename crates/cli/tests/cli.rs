//! The CLI's edges on the built binary: errors as one line (no backtrace,
//! even with RUST_BACKTRACE=1), `keys` refusing a database that does not
//! exist, logs without colour codes when redirected (or as JSON), and
//! `generate` off a terminal (plain progress lines, thumbnail, spritesheet).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use common::{ADMIN_KEY, BIN, FAST, Server};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

/// The binary with no inherited `VIDEOGEN_*` variables, RUST_BACKTRACE=1, plus `env`.
fn videogen(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("VIDEOGEN_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run videogen")
}

/// Fails with one `error: …` line (a few for a configuration), no backtrace.
fn assert_one_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert!(stderr.lines().count() <= 4, "{stderr}");
}

#[test]
fn keys_refuse_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    for args in [
        &["keys", "list", "--data-dir", data_arg][..],
        &["keys", "create", "--tenant", "acme", "--data-dir", data_arg],
        &["keys", "revoke", "key_x", "--data-dir", data_arg],
    ] {
        let out = videogen(args, &[]);
        assert_one_error(&out, "no database at");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--data-dir") && stderr.contains("--database-url"),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "printed a key: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(!data.join("videogen.db").exists(), "keys created an empty database");
    // VIDEOGEN_DATA_DIR is the same option.
    let out = videogen(&["keys", "list"], &[("VIDEOGEN_DATA_DIR", data_arg)]);
    assert_one_error(&out, &data.join("videogen.db").display().to_string());
}

#[test]
fn user_errors_are_one_line_without_a_backtrace() {
    let out = videogen(
        &[
            "generate",
            "a cat",
            "--server",
            "http://127.0.0.1:1",
            "--api-key",
            "vg_x",
        ],
        &[],
    );
    assert_one_error(&out, "connecting to http://127.0.0.1:1");
    let out = videogen(&["config", "print", "--steps", "0"], &[]);
    assert_one_error(&out, "--steps: 0 is not in 1..=1000");
    // Values no model could take are refused by the flag, saying what it takes
    // (which durations and sizes a model makes, the server says).
    for (flag, value, want) in [
        ("--seconds", "0", "expected 1..=120"),
        ("--size", "641x480", "multiple of 8"),
    ] {
        let out = videogen(&["generate", "a cat", "--api-key", "vg_x", flag, value], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    }
    let out = videogen(&["generate", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for listed in [
        "4, 8, 12",
        "720x1280, 1280x720, 1024x1792, 1792x1024",
        "videogen-ref",
        "9007199254740991",
    ] {
        assert!(help.contains(listed), "{listed} not in:\n{help}");
    }
    let out = videogen(&["keys", "create", "--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("free, paid, internal"));
}

#[tokio::test]
async fn a_bad_key_and_a_bad_request_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let out = videogen(
        &[
            "generate",
            "a cat",
            "--server",
            &server.base,
            "--api-key",
            "vg_wrong_key_0123456789",
        ],
        &[],
    );
    assert_one_error(&out, "server refused the request (401");
    let out = videogen(
        &[
            "jobs",
            "dead",
            "--server",
            &server.base,
            "--api-key",
            "vg_wrong_key_0123456789",
        ],
        &[],
    );
    assert_one_error(&out, "server refused the request (401");
}

#[tokio::test]
async fn generate_off_a_terminal_prints_progress_lines_and_saves_every_variant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let out_dir = tempfile::tempdir().unwrap();
    let (mp4, thumb, sprites) = (
        out_dir.path().join("v.mp4"),
        out_dir.path().join("t.jpg"),
        out_dir.path().join("s.jpg"),
    );
    let out = videogen(
        &[
            "generate",
            "a red square",
            "--server",
            &server.base,
            "--api-key",
            ADMIN_KEY,
            "--seed",
            "7",
            "--seconds",
            "4",
            "--size",
            "720x1280",
            "-o",
            mp4.to_str().unwrap(),
            "--thumbnail",
            thumb.to_str().unwrap(),
            "--spritesheet",
            sprites.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // One line per change, ending with `done`; no bar, no escape codes.
    assert!(stderr.lines().any(|l| l.contains('%')), "{stderr}");
    assert_eq!(stderr.lines().last(), Some("done"), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\r'), "{stderr:?}");
    let mp4_bytes = std::fs::read(&mp4).unwrap();
    assert_eq!(mp4_bytes.get(4..8), Some(&b"ftyp"[..]));
    for jpeg in [&thumb, &sprites] {
        assert_eq!(
            std::fs::read(jpeg).unwrap().get(..2),
            Some(&[0xff, 0xd8][..]),
            "{}",
            jpeg.display()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("thumbnail (") && stdout.contains("spritesheet ("),
        "{stdout}"
    );
}

/// Starts `serve` on a new data dir, kills it once it listens (its start-up
/// has logged the migrations by then), and returns its stderr.
fn serve_log(extra: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        if line.starts_with("videogen listening on ") {
            break;
        }
    }
    child.kill().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    child.wait().unwrap();
    stderr
}

#[test]
fn redirected_logs_have_no_colour_codes_and_json_is_one_object_a_line() {
    let text = serve_log(&[], &[]);
    assert!(text.contains("applied store migration"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a redirected log: {text:?}");
    let json = serve_log(&[], &[("VIDEOGEN_LOG_FORMAT", "json")]);
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
    assert!(json.contains("applied store migration"), "{json}");
}
