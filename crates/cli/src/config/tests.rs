use super::*;
use clap::{CommandFactory, Parser};
use std::collections::HashMap;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ServeArgs,
    #[command(flatten)]
    log: Flags<LogOptions>,
}

fn flags(argv: &[&str]) -> Cli {
    let mut full = vec!["videogen"];
    full.extend_from_slice(argv);
    Cli::try_parse_from(full).expect("flags parse")
}

fn env_of(pairs: &[(&str, &str)]) -> Env {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Box::new(move |k| map.get(k).cloned())
}

fn load_cli(cli: &Cli, env: &[(&str, &str)]) -> anyhow::Result<Config> {
    Config::from_loader(Loader::with_env(&cli.args.file, env_of(env)), &cli.args, &cli.log)
}

fn load(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Config> {
    load_cli(&flags(argv), env)
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// The printed values, without the comments on their sources.
fn values(c: &Config) -> Vec<String> {
    c.to_toml()
        .lines()
        .filter(|l| !l.starts_with("# Config file:"))
        .map(|l| l.split("  # ").next().unwrap_or(l).to_owned())
        .collect()
}

fn err(r: anyhow::Result<Config>) -> String {
    format!("{:#}", r.expect_err("the configuration is invalid"))
}

#[test]
fn defaults_follow_the_data_dir_and_the_libraries() {
    let c = load(&[], &[]).unwrap();
    assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
    assert_eq!(c.storage.database_url.to_string(), "sqlite://./data/videogen.db");
    assert_eq!(c.storage.blob_url.to_string(), "file://./data/blobs");
    let c = load(&["--data-dir", "/srv/vg"], &[]).unwrap();
    assert!(matches!(&c.storage.database_url, DatabaseUrl::Sqlite(p) if p == Path::new("/srv/vg/videogen.db")));
    assert_eq!(c.storage.blob_url.to_string(), "file:///srv/vg/blobs");
    assert_eq!(c.storage.blob_url, BlobUrl::Local(PathBuf::from("/srv/vg/blobs")));
    let s = &c.server;
    assert_eq!(s.listen, "127.0.0.1:8080");
    assert_eq!(s.role, Role::All);
    assert_eq!(s.steps, videogen_model::REFERENCE_DEFAULT_STEPS);
    assert_eq!(s.lease_ttl, Duration::from_secs(30));
    assert_eq!(s.max_attempts, 3);
    assert_eq!(s.signed_url_ttl, Duration::from_secs(3600));
    assert_eq!(s.leader_lease, Duration::from_secs(5));
    assert_eq!(s.rate_limit_per_minute, 0);
    assert_eq!((s.max_concurrent_requests, s.max_sse_streams), (1024, 1024));
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    assert_eq!(s.worker_request_timeout, Duration::from_secs(120));
    assert!(s.redis_url.is_none() && s.node_id.is_none() && s.retention.is_none());
    assert_eq!(c.log.log_format, LogFormat::Text);
    assert_eq!(c.origin.source("database.url"), Source::Default);
    assert_eq!(c.origin.source("data_dir"), Source::Flag);
    // The runtime's own defaults are the options' defaults.
    let runtime = RuntimeConfig::default();
    assert_eq!(
        (s.lease_ttl, s.housekeeping),
        (runtime.lease_ttl, runtime.housekeeping_interval)
    );
    let w = crate::worker::worker_config(&c.worker);
    let d = WorkerConfig::default();
    assert_eq!(format!("{:?}", w.checkpoint), format!("{:?}", d.checkpoint));
    assert_eq!(w.preemption_deadline, d.preemption_deadline);
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let f = file("[api]\nsteps = 11\npoll_after_ms = 300\n[scheduler]\nlease_ttl_secs = 12\nmax_attempts = 7\n");
    let path = f.path().to_str().unwrap();
    let env = [("VIDEOGEN_STEPS", "22"), ("VIDEOGEN_POLL_AFTER_MS", "400")];
    let c = load(&["--config", path, "--steps", "33"], &env).unwrap();
    assert_eq!((c.server.steps, c.origin.source("api.steps")), (33, Source::Flag));
    assert_eq!(
        (c.server.poll_after_ms, c.origin.source("api.poll_after_ms")),
        (400, Source::Env)
    );
    assert_eq!(
        (c.server.lease_ttl, c.origin.source("scheduler.lease_ttl_secs")),
        (Duration::from_secs(12), Source::File)
    );
    assert_eq!(c.server.max_attempts, 7);
    assert_eq!(
        (c.server.housekeeping, c.origin.source("scheduler.housekeeping_secs")),
        (Duration::from_secs(1), Source::Default)
    );
    // The file may also come from VIDEOGEN_CONFIG; an empty variable is unset.
    let c = load(&[], &[("VIDEOGEN_CONFIG", path), ("VIDEOGEN_STEPS", "")]).unwrap();
    assert_eq!((c.server.steps, c.origin.source("api.steps")), (11, Source::File));
    assert_eq!(c.origin.file.as_deref(), Some(f.path()));
    // The new options and the log format take the same layers.
    let f = file("[http]\nrequest_timeout = \"45s\"\nmax_sse_streams = 7\n[log]\nformat = \"json\"\n");
    let c = load(
        &["--config", f.path().to_str().unwrap(), "--max-concurrent-requests", "9"],
        &[("VIDEOGEN_WORKER_REQUEST_TIMEOUT", "2m 30s")],
    )
    .unwrap();
    assert_eq!(c.server.request_timeout, Duration::from_secs(45));
    assert_eq!(c.server.worker_request_timeout, Duration::from_secs(150));
    assert_eq!((c.server.max_concurrent_requests, c.server.max_sse_streams), (9, 7));
    assert_eq!(
        (c.log.log_format, c.origin.source("log.format")),
        (LogFormat::Json, Source::File)
    );
}

#[test]
fn every_existing_serve_flag_still_parses() {
    let c = load(
        &[
            "--data-dir",
            "/tmp/d",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "0",
            "--steps",
            "8",
            "--lease-ttl-secs",
            "1.5",
            "--max-attempts",
            "2",
            "--retention-secs",
            "60",
            "--housekeeping-secs",
            "0.2",
            "--poll-after-ms",
            "100",
            "--step-ms",
            "5",
            "--model-load-ms",
            "10",
            "--checkpoint-policy",
            "adaptive",
            "--checkpoint-every-steps",
            "2",
            "--checkpoint-every-secs",
            "3",
            "--checkpoint-min-secs",
            "1",
            "--checkpoint-max-secs",
            "9",
            "--preemption-deadline-secs",
            "4",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.server.workers, 0);
    assert_eq!(c.server.lease_ttl, Duration::from_millis(1500));
    assert_eq!(c.server.retention, Some(Duration::from_secs(60)));
    assert_eq!(c.server.housekeeping, Duration::from_millis(200));
    let w = &c.worker;
    assert_eq!(w.checkpoint_policy, PolicyKind::Adaptive);
    assert_eq!((w.step_ms, w.model_load_ms, w.checkpoint_every_steps), (5, 10, 2));
    assert_eq!(
        (w.checkpoint_min, w.checkpoint_max),
        (Duration::from_secs(1), Duration::from_secs(9))
    );
    assert!(matches!(
        crate::worker::worker_config(w).checkpoint,
        CheckpointPolicy::Adaptive { min, max, .. } if min == Duration::from_secs(1) && max == Duration::from_secs(9)
    ));
}

#[test]
fn unknown_file_keys_are_named() {
    let f = file("[scheduler]\nlease_ttl_secs = 3\nlease_tl_secs = 5\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(e.contains("lease_tl_secs"), "{e}");
    assert!(e.contains(":3:"), "names the line: {e}");
    assert!(e.contains("in `scheduler`"), "names the section: {e}");
    let f = file("listen = \"127.0.0.1:1\"\n[databse]\nurl = \"sqlite://x\"\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(e.contains("databse"), "{e}");
    let f = file("lissen = \"127.0.0.1:1\"\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(
        e.contains("unknown key `lissen` at the top level") && e.contains(":1:1"),
        "{e}"
    );
    let f = file("[api]\nsteps = \"many\"\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(
        e.contains("`api.steps` in ") && e.contains(":2:") && e.contains("(--steps)"),
        "{e}"
    );
    let f = file("[api]\nsteps = [1]\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(e.contains("`api.steps` in ") && e.contains("expected a string"), "{e}");
    let f = file("[api\nsteps = 1\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(e.contains("invalid config file") && e.contains(":1:"), "{e}");
    let e = err(load(&["--config", "/nonexistent/videogen.toml"], &[]));
    assert!(e.contains("--config /nonexistent/videogen.toml"), "{e}");
}

#[test]
fn bad_values_name_the_option_as_it_was_set() {
    let e = err(load(&["--database-url", "mysql://root:hunter2@db/vg"], &[]));
    assert!(e.contains("--database-url:"), "{e}");
    assert!(!e.contains("hunter2"), "the password leaked: {e}");
    let e = err(load(&[], &[("VIDEOGEN_DATABASE_URL", "mysql://x")]));
    assert!(e.contains("VIDEOGEN_DATABASE_URL (--database-url)"), "{e}");
    let f = file("[database]\nurl = \"mysql://x\"\n");
    let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
    assert!(
        e.contains("`database.url` in ") && e.contains("(--database-url)"),
        "{e}"
    );
    for (argv, name) in [
        (&["--redis-url", "http://x"][..], "--redis-url"),
        (&["--redis-url", "rediss://cache:6380"], "--redis-url"),
        (&["--blob-url", "gs://bucket"], "--blob-url"),
        (&["--blob-url", "s3://bucket?endpiont=http://m:9000"], "--blob-url"),
        (&["--blob-url", "file://"], "--blob-url"),
        (&["--steps", "0"], "--steps"),
        (&["--steps", "1001"], "--steps"),
        (&["--max-attempts", "0"], "--max-attempts"),
        (&["--lease-ttl-secs", "0"], "--lease-ttl-secs"),
        (&["--housekeeping-secs=-1"], "--housekeeping-secs"),
        (&["--leader-lease-secs", "NaN"], "--leader-lease-secs"),
        (&["--signed-url-ttl-secs", "999999999"], "--signed-url-ttl-secs"),
        (&["--retention-secs", "0"], "--retention-secs"),
        (&["--listen", "8080"], "--listen"),
        (&["--node-id", "a/b"], "--node-id"),
        (&["--public-url", "ftp://x"], "--public-url"),
        (&["--url-signing-key", "short"], "--url-signing-key"),
        (
            &["--checkpoint-min-secs", "10", "--checkpoint-max-secs", "5"],
            "--checkpoint-min-secs",
        ),
        (&["--blocked-hashes", "/nonexistent/hashes.txt"], "--blocked-hashes"),
        (&["--request-timeout", "0s"], "--request-timeout"),
        (&["--request-timeout", "soon"], "--request-timeout"),
        (&["--worker-request-timeout", "30s"], "--worker-request-timeout"),
        (&["--max-concurrent-requests", "0"], "--max-concurrent-requests"),
        (&["--max-sse-streams", "0"], "--max-sse-streams"),
    ] {
        let e = err(load(argv, &[]));
        assert!(e.contains(&format!("{name}:")), "{argv:?}: {e}");
    }
    let e = err(load(&[], &[("VIDEOGEN_ROLE", "worker")]));
    assert!(
        e.contains("VIDEOGEN_ROLE (--role)") && e.contains("all, api, scheduler"),
        "{e}"
    );
    let e = err(load(&[], &[("VIDEOGEN_WORKERS", "two")]));
    assert!(e.contains("VIDEOGEN_WORKERS (--workers)"), "{e}");
    let e = err(load(&[], &[("VIDEOGEN_LOG_FORMAT", "xml")]));
    assert!(
        e.contains("VIDEOGEN_LOG_FORMAT (--log-format)") && e.contains("text, json"),
        "{e}"
    );
    // All the errors at once.
    let e = err(load(&["--steps", "0", "--max-attempts", "0"], &[]));
    assert!(e.contains("--steps:") && e.contains("--max-attempts:"), "{e}");
}

#[test]
fn good_urls_pass() {
    let c = load(
        &[
            "--database-url",
            "postgresql://vg:pw@db.internal:5432/videogen?sslmode=require",
            "--redis-url",
            "redis://:pw@cache:6380/0",
            "--blob-url",
            "s3://videos?endpoint=http://minio:9000&region=us-east-1",
        ],
        &[],
    )
    .unwrap();
    assert!(matches!(c.storage.database_url, DatabaseUrl::Postgres(_)));
    assert_eq!(
        c.storage.blob_url,
        BlobUrl::S3(videogen_blob::S3Location {
            bucket: "videos".into(),
            endpoint: Some("http://minio:9000".into()),
            region: "us-east-1".into(),
        })
    );
    // What `serve` could not open fails at load, naming the option.
    let e = err(load(&["--blob-url", "s3://videos/prod?region=us-east-1"], &[]));
    assert!(
        e.contains("--blob-url") && e.contains("prefixes are not supported"),
        "{e}"
    );
    load(&["--database-url", "postgres://localhost/vg"], &[]).unwrap();
    load(&["--database-url", "sqlite:///var/lib/vg.db?mode=rwc"], &[]).unwrap();
}

#[test]
fn download_redirect_over_local_files_needs_a_key_and_a_public_url() {
    let e = err(load(&["--download-redirect"], &[]));
    assert!(e.contains("--download-redirect:"), "{e}");
    assert!(e.contains("--url-signing-key") && e.contains("--public-url"), "{e}");
    let key = "k".repeat(32);
    let e = err(load(&["--download-redirect", "--url-signing-key", &key], &[]));
    assert!(e.contains("--public-url") && !e.contains(&key), "{e}");
    let c = load(
        &["--download-redirect", "--public-url", "https://vg.example.com"],
        &[("VIDEOGEN_URL_SIGNING_KEY", &key)],
    )
    .unwrap();
    assert!(c.server.download_redirect);
    // S3 signs its own URLs.
    let c = load(&["--download-redirect=true", "--blob-url", "s3://videos"], &[]).unwrap();
    assert!(c.server.download_redirect);
    let c = load(
        &["--download-redirect=false"],
        &[("VIDEOGEN_DOWNLOAD_REDIRECT", "true")],
    )
    .unwrap();
    assert!(!c.server.download_redirect);
}

#[test]
fn print_masks_secrets_and_parses_back() {
    let key = "sekrit-signing-key-0123456789abcdef";
    let f = file(&format!("[downloads]\nurl_signing_key = \"{key}\"\n"));
    let c = load(
        &[
            "--config",
            f.path().to_str().unwrap(),
            "--database-url",
            "postgres://vg:pg-pass-1@db/vg?password=pg-pass-2",
        ],
        &[("VIDEOGEN_REDIS_URL", "redis://:redis-pass@cache:6379")],
    )
    .unwrap();
    let out = c.to_toml();
    let debug = format!("{c:?}");
    for secret in [key, "pg-pass-1", "pg-pass-2", "redis-pass"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
        assert!(!debug.contains(secret), "{secret} in Debug:\n{debug}");
    }
    assert!(
        out.contains("url = \"postgres://vg:****@db/vg?password=****\"  # flag --database-url"),
        "{out}"
    );
    assert!(
        out.contains("url = \"redis://:****@cache:6379\"  # env VIDEOGEN_REDIS_URL"),
        "{out}"
    );
    assert!(out.contains("url_signing_key = \"****\"  # file "), "{out}");
    assert!(out.contains("lease_ttl_secs = 30  # default"), "{out}");
    assert!(out.contains("request_timeout = \"30s\"  # default"), "{out}");
    assert!(out.contains("# node_id is unset  # default"), "{out}");
    // Every key is printed, and the output is a valid config file.
    for o in all_options() {
        let name = o.key.rsplit('.').next().unwrap();
        assert!(
            out.contains(&format!("\n{name} = ")) || out.contains(&format!("# {name} is unset")),
            "{}",
            o.key
        );
    }
    let reparsed: toml::Table = toml::from_str(&out).expect("print output parses as TOML");
    assert_eq!(reparsed["scheduler"]["lease_ttl_secs"].as_integer(), Some(30));
}

#[test]
fn printed_config_reloads_to_the_same_config() {
    let c = load(
        &[
            "--retention-secs",
            "0.5",
            "--checkpoint-policy",
            "adaptive",
            "--request-timeout",
            "1m 5s",
        ],
        &[],
    )
    .unwrap();
    let f = file(&c.to_toml());
    let again = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
    assert_eq!(values(&c), values(&again));
    assert_eq!(again.server.retention, Some(Duration::from_millis(500)));
    assert_eq!(again.server.request_timeout, Duration::from_secs(65));
    assert_eq!(again.worker.checkpoint_policy, PolicyKind::Adaptive);
    assert_eq!(format!("{:?}", c.server), format!("{:?}", again.server));
    assert_eq!(format!("{:?}", c.worker), format!("{:?}", again.worker));
}

#[test]
fn parsed_flags_do_not_show_secrets_in_debug() {
    let cli = flags(&[
        "--url-signing-key",
        "flag-signing-key-0123456789abcdefXYZ",
        "--database-url",
        "postgres://vg:flag-db-pass@db/vg",
        "--redis-url",
        "redis://:flag-redis-pass@cache",
    ]);
    let debug = format!("{:?}", cli.args);
    for secret in ["flag-signing-key", "flag-db-pass", "flag-redis-pass"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    let c = load_cli(&cli, &[]).unwrap();
    assert!(
        matches!(&c.storage.database_url, DatabaseUrl::Postgres(u) if u.expose() == "postgres://vg:flag-db-pass@db/vg")
    );
    assert_eq!(
        c.server.url_signing_key.as_ref().map(ExposeSecret::expose_secret),
        Some("flag-signing-key-0123456789abcdefXYZ")
    );
}

#[test]
fn every_option_has_a_flag_with_its_env_key_and_default_in_help() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut keys = Vec::new();
    for o in all_options() {
        let arg = cmd.get_arguments().find(|a| a.get_long() == Some(o.flag));
        let help = arg
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(
            help.contains(&env_var(o.flag)) && help.contains(o.key),
            "--{}: {help}",
            o.flag
        );
        assert!(
            help.contains("[default: "),
            "--{} documents its default: {help}",
            o.flag
        );
        assert!(!keys.contains(&o.key), "{} declared twice", o.key);
        keys.push(o.key);
    }
    let c = load(&[], &[]).unwrap();
    assert_eq!(c.origin.sources.len(), keys.len(), "every option is resolved");
}

#[test]
fn example_file_parses_and_lists_every_option_with_its_default() {
    let text = include_str!("../../../../videogen.example.toml");
    let f = file(text);
    let with = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
    let without = load(&[], &[]).unwrap();
    assert_eq!(values(&with), values(&without), "the example's values are the defaults");
    let mut section = String::new();
    let mut documented = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_owned();
        } else if let Some((name, _)) = line.trim_start_matches('#').trim().split_once(" = ") {
            documented.push(if section.is_empty() {
                name.to_owned()
            } else {
                format!("{section}.{name}")
            });
        }
    }
    for o in all_options() {
        assert!(
            documented.iter().any(|d| d == o.key),
            "{} is not in videogen.example.toml",
            o.key
        );
    }
}
