//! `videogen config print` and `serve`'s start-up checks, on the built binary:
//! flags over `VIDEOGEN_*` over the `--config` file over defaults, secrets
//! masked, and an invalid option failing at once with its name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_videogen");

/// The binary with no inherited `VIDEOGEN_*` variables, plus `env`.
fn videogen(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("VIDEOGEN_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run videogen")
}

#[test]
fn config_print_merges_file_env_and_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("videogen.toml");
    let signing_key = "file-signing-key-0123456789abcdefXYZ";
    std::fs::write(
        &file,
        format!(
            "listen = \"0.0.0.0:9000\"\n\
             [scheduler]\nlease_ttl_secs = 12\nmax_attempts = 7\n\
             [api]\nsteps = 11\n\
             [downloads]\nurl_signing_key = \"{signing_key}\"\n"
        ),
    )
    .unwrap();
    let out = videogen(
        &[
            "config",
            "print",
            "--config",
            file.to_str().unwrap(),
            "--steps",
            "33",
            "--data-dir",
            "/srv/vg",
        ],
        &[
            ("VIDEOGEN_STEPS", "22"),
            ("VIDEOGEN_MAX_ATTEMPTS", "5"),
            ("VIDEOGEN_DATABASE_URL", "postgres://vg:db-password-1@db:5432/vg"),
            ("VIDEOGEN_API_KEY", "vg_admin_key_should_not_print_0123"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "config print failed: {stderr}");
    for line in [
        "listen = \"0.0.0.0:9000\"  # file ",
        "data_dir = \"/srv/vg\"  # flag --data-dir",
        "steps = 33  # flag --steps",
        "max_attempts = 5  # env VIDEOGEN_MAX_ATTEMPTS",
        "lease_ttl_secs = 12  # file ",
        "housekeeping_secs = 1  # default",
        "url = \"postgres://vg:****@db:5432/vg\"  # env VIDEOGEN_DATABASE_URL",
        "url = \"file:///srv/vg/blobs\"  # default",
        "url_signing_key = \"****\"  # file ",
        "# VIDEOGEN_API_KEY (environment only): set (not shown)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    for secret in [signing_key, "db-password-1", "vg_admin_key_should_not_print_0123"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} was printed"
        );
    }
}

#[test]
fn config_print_rejects_an_unknown_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("videogen.toml");
    std::fs::write(&file, "[scheduler]\nlease_tll_secs = 3\n").unwrap();
    let out = videogen(&["config", "print", "--config", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("lease_tll_secs") && stderr.contains("videogen.toml:2:"),
        "{stderr}"
    );
}

#[test]
fn serve_with_an_invalid_option_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = videogen(
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://x",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve accepted mysql://");
    assert!(stderr.contains("--database-url"), "{stderr}");
    // "At once": it exited before touching anything, so it never got as far
    // as opening (or retrying) a store.
    assert!(
        !data.exists(),
        "serve touched the data dir before checking its configuration"
    );

    let out = videogen(
        &["serve", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[("VIDEOGEN_REDIS_URL", "http://cache:6379")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("VIDEOGEN_REDIS_URL (--redis-url)"), "{stderr}");
}
