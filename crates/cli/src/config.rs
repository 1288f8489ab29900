//! The configuration of `videogen serve`: one model, in one module.
//!
//! Every option has three names: a flag (`--lease-ttl-secs`), an environment
//! variable (`VIDEOGEN_LEASE_TTL_SECS`: `VIDEOGEN_` and the flag in upper
//! case) and a key in the TOML file named by `--config`
//! (`scheduler.lease_ttl_secs`); [`OPTIONS`] lists them all. A value is taken
//! from the first of these that sets it: flag, environment, file, default.
//! An empty environment variable counts as unset.
//!
//! Everything is checked when the configuration is loaded, before `serve`
//! opens anything: an invalid value stops start-up with a message naming the
//! option the way it was set (flag, variable, or key and file). Unknown keys
//! in the file are errors too, so a misspelt key never goes unnoticed.
//!
//! `videogen config print` shows the effective configuration as TOML with
//! where each value came from; secrets (the signing key, passwords in URLs)
//! are masked there and in `Debug`, and never appear in error messages.
//! `videogen.example.toml` at the repository root documents every key.

use clap::{Args, FromArgMatches, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::worker::{EngineArgs, PolicyKind};

/// Every option: its TOML key (`section.name`, or `name` at the top level)
/// and its flag (without `--`). Its environment variable is [`env_var`] of the
/// flag. The order is the order of `config print` and of the example file:
/// top-level keys first, each section's keys together.
pub const OPTIONS: &[(&str, &str)] = &[
    ("listen", "listen"),
    ("data_dir", "data-dir"),
    ("role", "role"),
    ("node_id", "node-id"),
    ("public_url", "public-url"),
    ("database.url", "database-url"),
    ("redis.url", "redis-url"),
    ("blob.url", "blob-url"),
    ("downloads.redirect", "download-redirect"),
    ("downloads.signed_url_ttl_secs", "signed-url-ttl-secs"),
    ("downloads.url_signing_key", "url-signing-key"),
    ("scheduler.lease_ttl_secs", "lease-ttl-secs"),
    ("scheduler.max_attempts", "max-attempts"),
    ("scheduler.housekeeping_secs", "housekeeping-secs"),
    ("scheduler.retention_secs", "retention-secs"),
    ("scheduler.leader_lease_secs", "leader-lease-secs"),
    ("workers.count", "workers"),
    ("workers.step_ms", "step-ms"),
    ("workers.model_load_ms", "model-load-ms"),
    ("workers.checkpoint_policy", "checkpoint-policy"),
    ("workers.checkpoint_every_steps", "checkpoint-every-steps"),
    ("workers.checkpoint_every_secs", "checkpoint-every-secs"),
    ("workers.checkpoint_min_secs", "checkpoint-min-secs"),
    ("workers.checkpoint_max_secs", "checkpoint-max-secs"),
    ("workers.preemption_deadline_secs", "preemption-deadline-secs"),
    ("moderation.blocked_hashes", "blocked-hashes"),
    ("api.steps", "steps"),
    ("api.poll_after_ms", "poll-after-ms"),
    ("api.rate_limit_per_minute", "rate-limit-per-minute"),
];

/// The variable naming the config file (the flag is `--config`).
pub const CONFIG_ENV: &str = "VIDEOGEN_CONFIG";
/// Secrets `serve` reads from the environment only, never from flags or the
/// file (listed by `config print` as set or unset).
const ENV_ONLY_SECRETS: &[&str] = &["VIDEOGEN_API_KEY", "VIDEOGEN_WORKER_TOKEN"];

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_SIGNED_URL_TTL_SECS: f64 = 3600.0;
pub const DEFAULT_LEASE_TTL_SECS: f64 = 30.0;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_HOUSEKEEPING_SECS: f64 = 1.0;
pub const DEFAULT_LEADER_LEASE_SECS: f64 = 5.0;
pub const DEFAULT_WORKERS: usize = 1;
pub const DEFAULT_STEP_MS: u64 = 100;
pub const DEFAULT_MODEL_LOAD_MS: u64 = 0;
pub const DEFAULT_CHECKPOINT_POLICY: PolicyKind = PolicyKind::Fixed;
pub const DEFAULT_CHECKPOINT_EVERY_STEPS: u32 = 5;
pub const DEFAULT_CHECKPOINT_EVERY_SECS: f64 = 10.0;
pub const DEFAULT_CHECKPOINT_MIN_SECS: f64 = 5.0;
pub const DEFAULT_CHECKPOINT_MAX_SECS: f64 = 600.0;
pub const DEFAULT_PREEMPTION_DEADLINE_SECS: f64 = 25.0;
pub const DEFAULT_STEPS: u32 = videogen_model::REFERENCE_DEFAULT_STEPS;
pub const DEFAULT_POLL_AFTER_MS: u64 = 1000;
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 0;

pub const STEPS_RANGE: RangeInclusive<u32> = 1..=1000;
pub const MAX_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=100;
/// Longest a signed download URL may live (S3 presigned URLs allow 7 days).
pub const SIGNED_URL_TTL_MAX_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// Shortest `url_signing_key`, in characters.
pub const SIGNING_KEY_MIN_CHARS: usize = 32;

/// The environment variable of a flag: `data-dir` → `VIDEOGEN_DATA_DIR`.
pub fn env_var(flag: &str) -> String {
    format!("VIDEOGEN_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

fn flag_of(key: &str) -> &'static str {
    OPTIONS.iter().find(|(k, _)| *k == key).map_or("?", |(_, flag)| flag)
}

/// What this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// API, scheduler, housekeeping and the in-process workers.
    All,
    /// The HTTP API only.
    Api,
    /// The scheduler and housekeeping only.
    Scheduler,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

/// A secret string: `Debug`, `Display` and `Serialize` show `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself: for using it, never for showing it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const MASK: &str = "****";

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// A service URL that may hold credentials (`postgres://user:pass@host/db`,
/// `?password=`): `Debug`, `Display` and `Serialize` mask them.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The URL with its credentials: for connecting, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with any password masked.
    pub fn masked(&self) -> String {
        mask_url(&self.0)
    }
}

impl FromStr for ServiceUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for ServiceUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// Masks the password of a URL's user info and the values of query
/// parameters that look secret (`password`, `token`, `secret`, `key`).
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut out = format!("{scheme}://{authority}{path}");
    if !query.is_empty() || tail.contains('?') {
        out.push('?');
        let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "key", "credential"]
        .iter()
        .any(|s| name.contains(s))
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_nanos() == 0 {
        s.serialize_u64(d.as_secs())
    } else {
        s.serialize_f64(d.as_secs_f64())
    }
}

fn ser_opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_secs(d, s),
        None => s.serialize_none(),
    }
}

/// The effective configuration of `serve`. Durations are `*_secs` keys in
/// TOML; `Debug` and `Serialize` mask secrets.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Address the HTTP API listens on (`HOST:PORT`; port 0 picks one).
    pub listen: String,
    /// Directory of the embedded database, blobs and node id.
    pub data_dir: PathBuf,
    /// What this node runs.
    pub role: Role,
    /// This node's id; `None`: the one kept in the data dir (made on first start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Base URL clients reach this node at (`https://videogen.example.com`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    pub database: DatabaseSection,
    pub redis: RedisSection,
    pub blob: BlobSection,
    pub downloads: DownloadsSection,
    pub scheduler: SchedulerSection,
    pub workers: WorkersSection,
    pub moderation: ModerationSection,
    pub api: ApiSection,
    /// Where each key's value came from.
    #[serde(skip)]
    pub sources: BTreeMap<&'static str, Source>,
    /// The file read, if any.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSection {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB` (`postgresql://` too).
    pub url: ServiceUrl,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisSection {
    /// `redis://` or `rediss://` (TLS); `None`: no Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<ServiceUrl>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobSection {
    /// `file://DIR` or `s3://BUCKET?endpoint=URL&region=REGION`.
    pub url: ServiceUrl,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownloadsSection {
    /// Answer downloads with a redirect to a signed URL instead of the bytes.
    pub redirect: bool,
    /// Lifetime of a signed download URL.
    #[serde(rename = "signed_url_ttl_secs", serialize_with = "ser_secs")]
    pub signed_url_ttl: Duration,
    /// Key signing download URLs that this node serves itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_signing_key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerSection {
    /// Lease time-to-live; heartbeats renew it every third of it.
    #[serde(rename = "lease_ttl_secs", serialize_with = "ser_secs")]
    pub lease_ttl: Duration,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// How often the reaper and the retention sweeper run.
    #[serde(rename = "housekeeping_secs", serialize_with = "ser_secs")]
    pub housekeeping: Duration,
    /// Retention of every tier; `None`: per tier (free 1 d, paid 7 d, internal 30 d).
    #[serde(
        rename = "retention_secs",
        serialize_with = "ser_opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub retention: Option<Duration>,
    /// Lifetime of the scheduler leader's lease.
    #[serde(rename = "leader_lease_secs", serialize_with = "ser_secs")]
    pub leader_lease: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkersSection {
    /// In-process workers.
    pub count: usize,
    /// Minimum wall time of one reference-model step, in ms.
    pub step_ms: u64,
    /// Simulated model load time, in ms.
    pub model_load_ms: u64,
    pub checkpoint_policy: PolicyKind,
    /// Fixed policy: checkpoint every this many steps (0: only by time).
    pub checkpoint_every_steps: u32,
    #[serde(rename = "checkpoint_every_secs", serialize_with = "ser_secs")]
    pub checkpoint_every: Duration,
    #[serde(rename = "checkpoint_min_secs", serialize_with = "ser_secs")]
    pub checkpoint_min: Duration,
    #[serde(rename = "checkpoint_max_secs", serialize_with = "ser_secs")]
    pub checkpoint_max: Duration,
    #[serde(rename = "preemption_deadline_secs", serialize_with = "ser_secs")]
    pub preemption_deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModerationSection {
    /// File of 64-bit perceptual hashes (hex, one per line) that output moderation blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_hashes: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiSection {
    /// Denoising steps of every video.
    pub steps: u32,
    /// Poll interval suggested to SDK pollers, in ms.
    pub poll_after_ms: u64,
    /// Requests per minute per API key; 0: no limit.
    pub rate_limit_per_minute: u32,
}

/// Where blobs live, from [`BlobSection::url`].
#[allow(dead_code, reason = "for serve's wiring of the new options")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    Dir(PathBuf),
    S3(videogen_blob::S3Location),
}

impl DatabaseSection {
    /// The SQLite file, when the database is SQLite.
    #[allow(dead_code, reason = "for serve's wiring of the new options")]
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.url.expose().strip_prefix("sqlite://")?;
        Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
    }
}

impl BlobSection {
    #[allow(dead_code, reason = "for serve's wiring of the new options")]
    pub fn location(&self) -> BlobLocation {
        let url = self.url.expose();
        if let Some(dir) = url.strip_prefix("file://") {
            return BlobLocation::Dir(PathBuf::from(dir));
        }
        // Validated at load: anything else is a parsable s3:// URL.
        match videogen_blob::BlobUrl::parse(url) {
            Ok(videogen_blob::BlobUrl::S3(loc)) => BlobLocation::S3(loc),
            Ok(videogen_blob::BlobUrl::Local(dir)) => BlobLocation::Dir(dir),
            Err(_) => BlobLocation::Dir(PathBuf::from(url)),
        }
    }
}

impl Config {
    /// Loads from the flags, the process environment and the `--config` file.
    pub fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
        Self::load_from(args, &|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment given as a lookup function.
    pub fn load_from(args: &ConfigArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let env = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let (path, path_name) = match (&args.flags.config, env(CONFIG_ENV)) {
            (Some(p), _) => (Some(p.clone()), "--config".to_owned()),
            (None, Some(p)) => (Some(PathBuf::from(p)), CONFIG_ENV.to_owned()),
            (None, None) => (None, String::new()),
        };
        let file = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("{path_name} {}: cannot read it: {e}", p.display()))?;
                parse_file(p, &text)?
            }
            None => FileConfig::default(),
        };
        let mut loader = Loader {
            env: &env,
            file: path.clone(),
            sources: BTreeMap::new(),
            errors: Vec::new(),
        };
        let mut config = loader.resolve(&args.flags, file);
        if !loader.errors.is_empty() {
            anyhow::bail!("invalid configuration:\n  {}", loader.errors.join("\n  "));
        }
        config.sources = loader.sources;
        config.file = path;
        Ok(config)
    }

    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).copied().unwrap_or(Source::Default)
    }

    /// The flags of the in-process workers' engine, for
    /// [`EngineArgs::engine`] and [`EngineArgs::worker_config`].
    pub fn engine_args(&self) -> EngineArgs {
        let w = &self.workers;
        EngineArgs {
            step_ms: w.step_ms,
            model_load_ms: w.model_load_ms,
            checkpoint_policy: w.checkpoint_policy,
            checkpoint_every_steps: w.checkpoint_every_steps,
            checkpoint_every_secs: w.checkpoint_every.as_secs_f64(),
            checkpoint_min_secs: w.checkpoint_min.as_secs_f64(),
            checkpoint_max_secs: w.checkpoint_max.as_secs_f64(),
            preemption_deadline_secs: w.preemption_deadline.as_secs_f64(),
            blocked_hashes: self.moderation.blocked_hashes.clone(),
        }
    }

    fn describe_source(&self, key: &str) -> String {
        let flag = flag_of(key);
        match self.source(key) {
            Source::Flag => format!("flag --{flag}"),
            Source::Env => format!("env {}", env_var(flag)),
            Source::File => match &self.file {
                Some(p) => format!("file {}", p.display()),
                None => "file".to_owned(),
            },
            Source::Default => "default".to_owned(),
        }
    }

    /// The effective configuration as TOML, secrets masked, each value with
    /// a comment saying where it came from. It parses back as a config file.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let toml::Value::Table(root) = toml::Value::try_from(self)? else {
            anyhow::bail!("the configuration did not serialize to a table");
        };
        let mut out = String::from(
            "# Effective videogen serve configuration (secrets masked).\n\
             # Precedence: flags, then VIDEOGEN_* environment variables, then the --config file, then defaults.\n",
        );
        if let Some(p) = &self.file {
            writeln!(out, "# Config file: {}", p.display())?;
        }
        let mut section = "";
        for (key, _) in OPTIONS {
            let (sec, name) = key.split_once('.').unwrap_or(("", key));
            if sec != section {
                write!(out, "\n[{sec}]\n")?;
                section = sec;
            }
            let value = match sec {
                "" => root.get(name),
                _ => root.get(sec).and_then(|t| t.get(name)),
            };
            let source = self.describe_source(key);
            match value {
                Some(v) => writeln!(out, "{name} = {v}  # {source}")?,
                None => writeln!(out, "# {name} is unset  # {source}")?,
            }
        }
        Ok(out)
    }
}

/// The TOML file: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    role: Option<Role>,
    node_id: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    redis: FileRedis,
    #[serde(default)]
    blob: FileBlob,
    #[serde(default)]
    downloads: FileDownloads,
    #[serde(default)]
    scheduler: FileScheduler,
    #[serde(default)]
    workers: FileWorkers,
    #[serde(default)]
    moderation: FileModeration,
    #[serde(default)]
    api: FileApi,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBlob {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDownloads {
    redirect: Option<bool>,
    signed_url_ttl_secs: Option<f64>,
    url_signing_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScheduler {
    lease_ttl_secs: Option<f64>,
    max_attempts: Option<u32>,
    housekeeping_secs: Option<f64>,
    retention_secs: Option<f64>,
    leader_lease_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorkers {
    count: Option<usize>,
    step_ms: Option<u64>,
    model_load_ms: Option<u64>,
    checkpoint_policy: Option<PolicyKind>,
    checkpoint_every_steps: Option<u32>,
    checkpoint_every_secs: Option<f64>,
    checkpoint_min_secs: Option<f64>,
    checkpoint_max_secs: Option<f64>,
    preemption_deadline_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModeration {
    blocked_hashes: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    steps: Option<u32>,
    poll_after_ms: Option<u64>,
    rate_limit_per_minute: Option<u32>,
}

/// Parses the file; errors say where (file, line, column, key) without
/// quoting the line, which may hold a secret.
fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|mut e| {
        let at = e.span().map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(":{line}:{column}")
        });
        e.set_input(None);
        let message = e.to_string().trim().replace('\n', "; ");
        anyhow::anyhow!(
            "invalid config file {}{}: {message}",
            path.display(),
            at.unwrap_or_default()
        )
    })
}

struct Loader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<PathBuf>,
    sources: BTreeMap<&'static str, Source>,
    errors: Vec<String>,
}

impl Loader<'_> {
    /// The option as the user set it.
    fn name(&self, key: &'static str) -> String {
        let flag = flag_of(key);
        match self.sources.get(key).copied().unwrap_or(Source::Default) {
            Source::Flag => format!("--{flag}"),
            Source::Env => format!("{} (--{flag})", env_var(flag)),
            Source::File => {
                let file = self.file.as_deref().map(Path::display);
                format!(
                    "`{key}` in {} (--{flag})",
                    file.map(|f| f.to_string()).unwrap_or_default()
                )
            }
            Source::Default => format!("--{flag} (default)"),
        }
    }

    fn error(&mut self, key: &'static str, msg: impl fmt::Display) {
        let name = self.name(key);
        self.errors.push(format!("{name}: {msg}"));
    }

    /// The value of `key`: the flag, else its environment variable, else the file.
    fn pick<T>(
        &mut self,
        key: &'static str,
        flag: Option<T>,
        file: Option<T>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        if let Some(v) = flag {
            self.sources.insert(key, Source::Flag);
            return Some(v);
        }
        if let Some(raw) = (self.env)(&env_var(flag_of(key))) {
            self.sources.insert(key, Source::Env);
            return match parse(&raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(key, e);
                    None
                }
            };
        }
        let source = if file.is_some() { Source::File } else { Source::Default };
        self.sources.insert(key, source);
        file
    }

    /// A validated value, or `default` after recording the error.
    fn checked<T>(&mut self, key: &'static str, v: T, default: T, check: impl FnOnce(&T) -> Result<(), String>) -> T {
        match check(&v) {
            Ok(()) => v,
            Err(e) => {
                self.error(key, e);
                default
            }
        }
    }

    fn secs(&mut self, key: &'static str, flag: Option<f64>, file: Option<f64>, default: f64) -> Duration {
        let v = self.pick(key, flag, file, parse_num).unwrap_or(default);
        self.duration(key, v).unwrap_or(Duration::from_secs_f64(default))
    }

    fn opt_secs(&mut self, key: &'static str, flag: Option<f64>, file: Option<f64>) -> Option<Duration> {
        let v = self.pick(key, flag, file, parse_num)?;
        self.duration(key, v)
    }

    fn duration(&mut self, key: &'static str, v: f64) -> Option<Duration> {
        match Duration::try_from_secs_f64(v).ok().filter(|d| !d.is_zero()) {
            Some(d) => Some(d),
            None => {
                self.error(key, format!("{v} is not a positive number of seconds"));
                None
            }
        }
    }

    fn ranged<T: PartialOrd + fmt::Display + Copy>(&mut self, key: &'static str, v: T, range: RangeInclusive<T>) -> T {
        let start = *range.start();
        self.checked(key, v, start, |v| {
            if range.contains(v) {
                Ok(())
            } else {
                Err(format!("{v} is not in {}..={}", range.start(), range.end()))
            }
        })
    }

    fn resolve(&mut self, a: &Flags, f: FileConfig) -> Config {
        let listen = self
            .pick("listen", a.listen.clone(), f.listen, parse_str)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = self.checked("listen", listen, DEFAULT_LISTEN.to_owned(), |s| check_listen(s));
        let data_dir = self
            .pick("data_dir", a.data_dir.clone(), f.data_dir, parse_path)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let data_dir = self.checked("data_dir", data_dir, PathBuf::from(DEFAULT_DATA_DIR), |p| {
            if p.as_os_str().is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(())
            }
        });
        let role = self.pick("role", a.role, f.role, parse_enum).unwrap_or(Role::All);
        let node_id = self.pick("node_id", a.node_id.clone(), f.node_id, parse_str);
        let node_id = node_id.and_then(|id| {
            let ok = check_node_id(&id);
            self.checked("node_id", Some(id), None, |_| ok)
        });
        let public_url = self.pick("public_url", a.public_url.clone(), f.public_url, parse_str);
        let public_url = public_url.and_then(|u| {
            let ok = check_public_url(&u);
            self.checked("public_url", Some(u), None, |_| ok)
        });

        let database = self
            .pick(
                "database.url",
                a.database_url.as_ref().map(|u| u.expose().to_owned()),
                f.database.url,
                parse_str,
            )
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("videogen.db").display()));
        if let Err(e) = check_database_url(&database) {
            self.error("database.url", e);
        }
        let redis = self.pick(
            "redis.url",
            a.redis_url.as_ref().map(|u| u.expose().to_owned()),
            f.redis.url,
            parse_str,
        );
        if let Some(Err(e)) = redis.as_deref().map(check_redis_url) {
            self.error("redis.url", e);
        }
        let blob = self
            .pick("blob.url", a.blob_url.clone(), f.blob.url, parse_str)
            .unwrap_or_else(|| format!("file://{}", data_dir.join("blobs").display()));
        if let Err(e) = check_blob_url(&blob) {
            self.error("blob.url", e);
        }

        let redirect = self
            .pick(
                "downloads.redirect",
                a.download_redirect,
                f.downloads.redirect,
                parse_bool,
            )
            .unwrap_or(false);
        let signed_url_ttl = self.secs(
            "downloads.signed_url_ttl_secs",
            a.signed_url_ttl_secs,
            f.downloads.signed_url_ttl_secs,
            DEFAULT_SIGNED_URL_TTL_SECS,
        );
        if signed_url_ttl.as_secs_f64() > SIGNED_URL_TTL_MAX_SECS {
            self.error(
                "downloads.signed_url_ttl_secs",
                format!(
                    "{} s is longer than 7 days ({SIGNED_URL_TTL_MAX_SECS} s), the most a signed URL may live",
                    signed_url_ttl.as_secs_f64()
                ),
            );
        }
        let key = self.pick(
            "downloads.url_signing_key",
            a.url_signing_key.as_ref().map(|k| k.expose().to_owned()),
            f.downloads.url_signing_key,
            parse_str,
        );
        if let Some(k) = &key
            && k.chars().count() < SIGNING_KEY_MIN_CHARS
        {
            self.error(
                "downloads.url_signing_key",
                format!(
                    "is {} characters; it needs at least {SIGNING_KEY_MIN_CHARS} (e.g. `openssl rand -hex 32`)",
                    k.chars().count()
                ),
            );
        }
        if redirect && blob.starts_with("file://") {
            let mut missing = Vec::new();
            if key.is_none() {
                missing.push("--url-signing-key");
            }
            if public_url.is_none() {
                missing.push("--public-url");
            }
            if !missing.is_empty() {
                self.error(
                    "downloads.redirect",
                    format!(
                        "with a file:// --blob-url, download redirects point at signed URLs that this node serves itself: \
                         it needs {} ({})",
                        missing.join(" and "),
                        "--public-url is the base those URLs are built on, --url-signing-key signs them so they \
                         cannot be forged or extended; or set --download-redirect=false",
                    ),
                );
            }
        }

        let lease_ttl = self.secs(
            "scheduler.lease_ttl_secs",
            a.lease_ttl_secs,
            f.scheduler.lease_ttl_secs,
            DEFAULT_LEASE_TTL_SECS,
        );
        let max_attempts = self
            .pick(
                "scheduler.max_attempts",
                a.max_attempts,
                f.scheduler.max_attempts,
                parse_num,
            )
            .unwrap_or(DEFAULT_MAX_ATTEMPTS);
        let max_attempts = self.ranged("scheduler.max_attempts", max_attempts, MAX_ATTEMPTS_RANGE);
        let housekeeping = self.secs(
            "scheduler.housekeeping_secs",
            a.housekeeping_secs,
            f.scheduler.housekeeping_secs,
            DEFAULT_HOUSEKEEPING_SECS,
        );
        let retention = self.opt_secs("scheduler.retention_secs", a.retention_secs, f.scheduler.retention_secs);
        let leader_lease = self.secs(
            "scheduler.leader_lease_secs",
            a.leader_lease_secs,
            f.scheduler.leader_lease_secs,
            DEFAULT_LEADER_LEASE_SECS,
        );

        let w = f.workers;
        let count = self
            .pick("workers.count", a.workers, w.count, parse_num)
            .unwrap_or(DEFAULT_WORKERS);
        let step_ms = self
            .pick("workers.step_ms", a.step_ms, w.step_ms, parse_num)
            .unwrap_or(DEFAULT_STEP_MS);
        let model_load_ms = self
            .pick("workers.model_load_ms", a.model_load_ms, w.model_load_ms, parse_num)
            .unwrap_or(DEFAULT_MODEL_LOAD_MS);
        let checkpoint_policy = self
            .pick(
                "workers.checkpoint_policy",
                a.checkpoint_policy,
                w.checkpoint_policy,
                parse_enum,
            )
            .unwrap_or(DEFAULT_CHECKPOINT_POLICY);
        let checkpoint_every_steps = self
            .pick(
                "workers.checkpoint_every_steps",
                a.checkpoint_every_steps,
                w.checkpoint_every_steps,
                parse_num,
            )
            .unwrap_or(DEFAULT_CHECKPOINT_EVERY_STEPS);
        let checkpoint_every = self.secs(
            "workers.checkpoint_every_secs",
            a.checkpoint_every_secs,
            w.checkpoint_every_secs,
            DEFAULT_CHECKPOINT_EVERY_SECS,
        );
        let checkpoint_min = self.secs(
            "workers.checkpoint_min_secs",
            a.checkpoint_min_secs,
            w.checkpoint_min_secs,
            DEFAULT_CHECKPOINT_MIN_SECS,
        );
        let checkpoint_max = self.secs(
            "workers.checkpoint_max_secs",
            a.checkpoint_max_secs,
            w.checkpoint_max_secs,
            DEFAULT_CHECKPOINT_MAX_SECS,
        );
        if checkpoint_min > checkpoint_max {
            self.error(
                "workers.checkpoint_min_secs",
                format!(
                    "{} s exceeds --checkpoint-max-secs ({} s)",
                    checkpoint_min.as_secs_f64(),
                    checkpoint_max.as_secs_f64()
                ),
            );
        }
        let preemption_deadline = self.secs(
            "workers.preemption_deadline_secs",
            a.preemption_deadline_secs,
            w.preemption_deadline_secs,
            DEFAULT_PREEMPTION_DEADLINE_SECS,
        );

        let blocked_hashes = self.pick(
            "moderation.blocked_hashes",
            a.blocked_hashes.clone(),
            f.moderation.blocked_hashes,
            parse_path,
        );
        if let Some(p) = &blocked_hashes
            && !p.is_file()
        {
            self.error(
                "moderation.blocked_hashes",
                format!("{} is not a readable file", p.display()),
            );
        }

        let steps = self
            .pick("api.steps", a.steps, f.api.steps, parse_num)
            .unwrap_or(DEFAULT_STEPS);
        let steps = self.ranged("api.steps", steps, STEPS_RANGE);
        let poll_after_ms = self
            .pick("api.poll_after_ms", a.poll_after_ms, f.api.poll_after_ms, parse_num)
            .unwrap_or(DEFAULT_POLL_AFTER_MS);
        let poll_after_ms = self.ranged("api.poll_after_ms", poll_after_ms, 1..=u64::from(u32::MAX));
        let rate_limit_per_minute = self
            .pick(
                "api.rate_limit_per_minute",
                a.rate_limit_per_minute,
                f.api.rate_limit_per_minute,
                parse_num,
            )
            .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE);

        Config {
            listen,
            data_dir,
            role,
            node_id,
            public_url,
            database: DatabaseSection {
                url: ServiceUrl::new(database),
            },
            redis: RedisSection {
                url: redis.map(ServiceUrl::new),
            },
            blob: BlobSection {
                url: ServiceUrl::new(blob),
            },
            downloads: DownloadsSection {
                redirect,
                signed_url_ttl,
                url_signing_key: key.map(Secret::new),
            },
            scheduler: SchedulerSection {
                lease_ttl,
                max_attempts,
                housekeeping,
                retention,
                leader_lease,
            },
            workers: WorkersSection {
                count,
                step_ms,
                model_load_ms,
                checkpoint_policy,
                checkpoint_every_steps,
                checkpoint_every,
                checkpoint_min,
                checkpoint_max,
                preemption_deadline,
            },
            moderation: ModerationSection { blocked_hashes },
            api: ApiSection {
                steps,
                poll_after_ms,
                rate_limit_per_minute,
            },
            sources: BTreeMap::new(),
            file: None,
        }
    }
}

fn parse_str(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

fn parse_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn parse_num<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    s.parse().map_err(|e| format!("{s:?} is not a valid number ({e})"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

fn parse_enum<T: ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_owned())
            .collect();
        format!("{s:?} is not one of {}", names.join(", "))
    })
}

fn check_listen(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:8080, [::]:8080)")),
    }
}

fn check_node_id(s: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."))
    }
}

fn check_public_url(s: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must be a base URL, without query or fragment"));
    }
    Ok(())
}

fn check_database_url(s: &str) -> Result<(), String> {
    let shown = mask_url(s);
    if let Some(rest) = s.strip_prefix("sqlite://") {
        if rest.split('?').next().unwrap_or_default().is_empty() {
            return Err(format!(
                "{shown:?} names no file: use sqlite://PATH (sqlite:///abs/path.db)"
            ));
        }
        return Ok(());
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return reqwest::Url::parse(s)
            .map(drop)
            .map_err(|e| format!("{shown:?} is not a valid PostgreSQL URL ({e})"));
    }
    Err(format!(
        "{shown:?} is not a supported database: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB \
         (postgresql:// too)"
    ))
}

fn check_redis_url(s: &str) -> Result<(), String> {
    let shown = mask_url(s);
    if !(s.starts_with("redis://") || s.starts_with("rediss://")) {
        return Err(format!(
            "{shown:?} is not a Redis URL: use redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss:// (TLS)"
        ));
    }
    let url = reqwest::Url::parse(s).map_err(|e| format!("{shown:?} is not a valid Redis URL ({e})"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} names no host"));
    }
    Ok(())
}

fn check_blob_url(s: &str) -> Result<(), String> {
    let shown = mask_url(s);
    if let Some(dir) = s.strip_prefix("file://") {
        if dir.is_empty() {
            return Err(format!(
                "{shown:?} names no directory: use file:///abs/dir or file://rel/dir"
            ));
        }
        return Ok(());
    }
    if s.starts_with("s3://") {
        // The parser `serve` opens the store with, so what passes here opens.
        return videogen_blob::BlobUrl::parse(s)
            .map(drop)
            .map_err(|e| format!("{shown:?}: {e}"));
    }
    Err(format!(
        "{shown:?} is not a supported blob store: use file://DIR or s3://BUCKET?endpoint=URL&region=REGION"
    ))
}

/// `videogen config`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration of `serve` (the same flags, VIDEOGEN_* variables and --config file) as
    /// TOML, secrets masked, each value's source in a comment. Exits non-zero on an invalid configuration, as
    /// `serve` would.
    Print(ConfigArgs),
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Print(args) => {
            let config = Config::load(&args)?;
            let mut out = config.to_toml()?;
            out.push('\n');
            for name in ENV_ONLY_SECRETS {
                let set = std::env::var_os(name).is_some_and(|v| !v.is_empty());
                let state = if set { "set (not shown)" } else { "unset" };
                writeln!(out, "# {name} (environment only): {state}")?;
            }
            print!("{out}");
            Ok(())
        }
    }
}

/// The flags of `serve` (and `config print`). Each also reads its
/// environment variable and TOML key (shown in `--help`); unset ones fall
/// back to the file, then to the default.
#[derive(Debug, Clone, Default)]
pub struct ConfigArgs {
    pub flags: Flags,
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Flags::from_arg_matches(m).map(|flags| Self { flags })
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.flags.update_from_arg_matches(m)
    }
}

impl Args for ConfigArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        annotate_help(Flags::augment_args(cmd))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        annotate_help(Flags::augment_args_for_update(cmd))
    }
}

/// Appends each option's environment variable and TOML key to its help.
fn annotate_help(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| {
        let Some(flag) = arg.get_long().map(str::to_owned) else {
            return arg;
        };
        let Some((key, _)) = OPTIONS.iter().find(|(_, f)| *f == flag) else {
            return arg;
        };
        let note = format!("[env: {}] [config: {key}]", env_var(&flag));
        let help = arg.get_help().map(|h| format!("{h} {note}"));
        let long_help = arg.get_long_help().map(|h| format!("{h}\n\n{note}"));
        let arg = match help {
            Some(h) => arg.help(h),
            None => arg.help(note),
        };
        match long_help {
            Some(h) => arg.long_help(h),
            None => arg,
        }
    })
}

/// The flags themselves; all optional, so that an unset flag lets the
/// environment, the file or the default decide.
#[derive(Args, Debug, Clone, Default)]
pub struct Flags {
    /// TOML configuration file (every key: videogen.example.toml); flags and VIDEOGEN_* variables override it.
    /// [env: VIDEOGEN_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded database, blobs and node id (default: ./data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (default: 127.0.0.1:8080; port 0 picks a free port, the real one is
    /// printed).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// What this node runs (default: all).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// This node's id (default: the one kept in the data dir, made on first start).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Base URL clients reach this node at, e.g. https://videogen.example.com (default: none).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Database: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB (default: sqlite://DATA_DIR/videogen.db).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<ServiceUrl>,
    /// Redis, for cross-node events and rate limits: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss:// (default:
    /// none).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<ServiceUrl>,
    /// Blob store: file://DIR or s3://BUCKET?endpoint=URL&region=REGION, credentials from AWS_*
    /// variables (default: file://DATA_DIR/blobs).
    #[arg(long, value_name = "URL")]
    pub blob_url: Option<String>,
    /// Answer video downloads with a redirect to a signed URL instead of the bytes (default: false). With a
    /// file:// blob store it needs --public-url and --url-signing-key.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub download_redirect: Option<bool>,
    /// Lifetime of a signed download URL, in seconds (default: 3600; at most 7 days).
    #[arg(long, value_name = "SECS")]
    pub signed_url_ttl_secs: Option<f64>,
    /// Secret key signing the download URLs this node serves, at least 32 characters (default: none). Secret:
    /// prefer the environment variable or the file to the flag, which other users can see in the process list.
    #[arg(long, value_name = "KEY")]
    pub url_signing_key: Option<Secret>,
    /// Lease time-to-live in seconds; heartbeats renew it every third of it (default: 30).
    #[arg(long, value_name = "SECS")]
    pub lease_ttl_secs: Option<f64>,
    /// Attempts before a job is dead-lettered, 1 to 100 (default: 3).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// How often the reaper and the retention sweeper run, in seconds (default: 1).
    #[arg(long, value_name = "SECS")]
    pub housekeeping_secs: Option<f64>,
    /// Override the retention of every tier, in seconds (default: free 1 d, paid 7 d, internal 30 d).
    #[arg(long, value_name = "SECS")]
    pub retention_secs: Option<f64>,
    /// Lifetime of the scheduler leader's lease, in seconds, when several nodes run the scheduler (default: 5).
    #[arg(long, value_name = "SECS")]
    pub leader_lease_secs: Option<f64>,
    /// In-process workers (default: 1; 0 for none).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Minimum wall time of one reference-model step (speed knob), in ms (default: 100).
    #[arg(long, value_name = "MS")]
    pub step_ms: Option<u64>,
    /// Simulated model load time, in ms, paid once per worker (default: 0).
    #[arg(long, value_name = "MS")]
    pub model_load_ms: Option<u64>,
    /// How the checkpoint interval is chosen (default: fixed).
    #[arg(long, value_enum)]
    pub checkpoint_policy: Option<PolicyKind>,
    /// Fixed policy: checkpoint every this many steps; 0: only by time (default: 5).
    #[arg(long, value_name = "N")]
    pub checkpoint_every_steps: Option<u32>,
    /// Fixed policy: ... or every this many seconds, whichever is first (default: 10).
    #[arg(long, value_name = "SECS")]
    pub checkpoint_every_secs: Option<f64>,
    /// Adaptive policy: shortest interval, in seconds (default: 5).
    #[arg(long, value_name = "SECS")]
    pub checkpoint_min_secs: Option<f64>,
    /// Adaptive policy: longest interval, in seconds (default: 600).
    #[arg(long, value_name = "SECS")]
    pub checkpoint_max_secs: Option<f64>,
    /// Longest a graceful stop may take from notice to release, in seconds (default: 25).
    #[arg(long, value_name = "SECS")]
    pub preemption_deadline_secs: Option<f64>,
    /// File of 64-bit perceptual hashes (hex, one per line) that output moderation blocks (default: none).
    #[arg(long, value_name = "PATH")]
    pub blocked_hashes: Option<PathBuf>,
    /// Denoising steps of every video, 1 to 1000 (default: 30, the reference model's).
    #[arg(long, value_name = "N")]
    pub steps: Option<u32>,
    /// Poll interval suggested to SDK pollers (`openai-poll-after-ms`), in ms (default: 1000).
    #[arg(long, value_name = "MS")]
    pub poll_after_ms: Option<u64>,
    /// Requests per minute per API key; 0: no limit (default: 0).
    #[arg(long, value_name = "N")]
    pub rate_limit_per_minute: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::collections::HashMap;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn flags(argv: &[&str]) -> ConfigArgs {
        let mut full = vec!["videogen"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).expect("flags parse").args
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    fn load(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::load_from(&flags(argv), &env_of(env))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    /// The printed values, without the comments on their sources.
    fn values(c: &Config) -> Vec<String> {
        let out = c.to_toml().unwrap();
        out.lines()
            .filter(|l| !l.starts_with("# Config file:"))
            .map(|l| l.split("  # ").next().unwrap_or(l).to_owned())
            .collect()
    }

    fn err(r: anyhow::Result<Config>) -> String {
        format!("{:#}", r.expect_err("the configuration is invalid"))
    }

    #[test]
    fn defaults_follow_the_data_dir() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.database.url.expose(), "sqlite://./data/videogen.db");
        assert_eq!(c.blob.url.expose(), "file://./data/blobs");
        let c = load(&["--data-dir", "/srv/vg"], &[]).unwrap();
        assert_eq!(c.database.url.expose(), "sqlite:///srv/vg/videogen.db");
        assert_eq!(c.database.sqlite_path(), Some(PathBuf::from("/srv/vg/videogen.db")));
        assert_eq!(c.blob.url.expose(), "file:///srv/vg/blobs");
        assert_eq!(c.blob.location(), BlobLocation::Dir(PathBuf::from("/srv/vg/blobs")));
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.role, Role::All);
        assert_eq!(c.api.steps, DEFAULT_STEPS);
        assert_eq!(c.scheduler.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.downloads.signed_url_ttl, Duration::from_secs(3600));
        assert_eq!(c.scheduler.leader_lease, Duration::from_secs(5));
        assert_eq!(c.api.rate_limit_per_minute, 0);
        assert!(c.redis.url.is_none() && c.node_id.is_none() && c.scheduler.retention.is_none());
        assert_eq!(c.source("database.url"), Source::Default);
        assert_eq!(c.source("data_dir"), Source::Flag);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let f = file("[api]\nsteps = 11\npoll_after_ms = 300\n[scheduler]\nlease_ttl_secs = 12\nmax_attempts = 7\n");
        let path = f.path().to_str().unwrap();
        let env = [("VIDEOGEN_STEPS", "22"), ("VIDEOGEN_POLL_AFTER_MS", "400")];
        let c = load(&["--config", path, "--steps", "33"], &env).unwrap();
        assert_eq!((c.api.steps, c.source("api.steps")), (33, Source::Flag));
        assert_eq!((c.api.poll_after_ms, c.source("api.poll_after_ms")), (400, Source::Env));
        assert_eq!(
            (c.scheduler.lease_ttl, c.source("scheduler.lease_ttl_secs")),
            (Duration::from_secs(12), Source::File)
        );
        assert_eq!(c.scheduler.max_attempts, 7);
        assert_eq!(
            (c.scheduler.housekeeping, c.source("scheduler.housekeeping_secs")),
            (Duration::from_secs(1), Source::Default)
        );
        // The file may also come from VIDEOGEN_CONFIG; an empty variable is unset.
        let c = load(&[], &[("VIDEOGEN_CONFIG", path), ("VIDEOGEN_STEPS", "")]).unwrap();
        assert_eq!((c.api.steps, c.source("api.steps")), (11, Source::File));
        assert_eq!(c.file.as_deref(), Some(f.path()));
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
        assert_eq!(c.workers.count, 0);
        assert_eq!(c.scheduler.lease_ttl, Duration::from_millis(1500));
        assert_eq!(c.scheduler.retention, Some(Duration::from_secs(60)));
        assert_eq!(c.scheduler.housekeeping, Duration::from_millis(200));
        let e = c.engine_args();
        assert_eq!(e.checkpoint_policy, PolicyKind::Adaptive);
        assert_eq!((e.step_ms, e.model_load_ms, e.checkpoint_every_steps), (5, 10, 2));
        assert_eq!((e.checkpoint_min_secs, e.checkpoint_max_secs), (1.0, 9.0));
        e.worker_config().expect("a valid worker config");
    }

    #[test]
    fn engine_defaults_match_the_worker_command() {
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            e: EngineArgs,
        }
        let w = W::try_parse_from(["worker"]).unwrap().e;
        let c = load(&[], &[]).unwrap().engine_args();
        assert_eq!((c.step_ms, c.model_load_ms), (w.step_ms, w.model_load_ms));
        assert_eq!(c.checkpoint_policy, w.checkpoint_policy);
        assert_eq!(c.checkpoint_every_steps, w.checkpoint_every_steps);
        assert_eq!(c.checkpoint_every_secs, w.checkpoint_every_secs);
        assert_eq!(c.checkpoint_min_secs, w.checkpoint_min_secs);
        assert_eq!(c.checkpoint_max_secs, w.checkpoint_max_secs);
        assert_eq!(c.preemption_deadline_secs, w.preemption_deadline_secs);
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
        let f = file("[api]\nsteps = \"many\"\n");
        let e = err(load(&["--config", f.path().to_str().unwrap()], &[]));
        assert!(e.contains("in `api.steps`") && e.contains(":2:"), "{e}");
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
                "rediss://:pw@cache:6380/0",
                "--blob-url",
                "s3://videos?endpoint=http://minio:9000&region=us-east-1",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.database.sqlite_path(), None);
        assert_eq!(
            c.blob.location(),
            BlobLocation::S3(videogen_blob::S3Location {
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
        assert!(c.downloads.redirect);
        // S3 signs its own URLs.
        let c = load(&["--download-redirect=true", "--blob-url", "s3://videos"], &[]).unwrap();
        assert!(c.downloads.redirect);
        let c = load(
            &["--download-redirect=false"],
            &[("VIDEOGEN_DOWNLOAD_REDIRECT", "true")],
        )
        .unwrap();
        assert!(!c.downloads.redirect);
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
        let out = c.to_toml().unwrap();
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
        assert!(out.contains("# node_id is unset  # default"), "{out}");
        // Every key is printed, and the output is a valid config file.
        for (key, _) in OPTIONS {
            let name = key.rsplit('.').next().unwrap();
            assert!(
                out.contains(&format!("\n{name} = ")) || out.contains(&format!("# {name} is unset")),
                "{key}"
            );
        }
        let reparsed: FileConfig = toml::from_str(&out).expect("print output parses as a config file");
        assert_eq!(reparsed.scheduler.lease_ttl_secs, Some(30.0));
    }

    #[test]
    fn printed_defaults_reload_to_the_same_config() {
        let c = load(&["--retention-secs", "0.5", "--checkpoint-policy", "adaptive"], &[]).unwrap();
        let f = file(&c.to_toml().unwrap());
        let again = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
        assert_eq!(values(&c), values(&again));
        assert_eq!(again.scheduler.retention, Some(Duration::from_millis(500)));
        assert_eq!(again.workers.checkpoint_policy, PolicyKind::Adaptive);
        assert_eq!(format!("{:?}", c.api), format!("{:?}", again.api));
        assert_eq!(format!("{:?}", c.scheduler), format!("{:?}", again.scheduler));
        assert_eq!(format!("{:?}", c.workers), format!("{:?}", again.workers));
    }

    #[test]
    fn parsed_flags_do_not_show_secrets_in_debug() {
        let args = flags(&[
            "--url-signing-key",
            "flag-signing-key-0123456789abcdefXYZ",
            "--database-url",
            "postgres://vg:flag-db-pass@db/vg",
            "--redis-url",
            "redis://:flag-redis-pass@cache",
        ]);
        let debug = format!("{args:?}");
        for secret in ["flag-signing-key", "flag-db-pass", "flag-redis-pass"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        let c = Config::load_from(&args, &env_of(&[])).unwrap();
        assert_eq!(c.database.url.expose(), "postgres://vg:flag-db-pass@db/vg");
        assert_eq!(
            c.downloads.url_signing_key.as_ref().map(Secret::expose),
            Some("flag-signing-key-0123456789abcdefXYZ")
        );
    }

    #[test]
    fn mask_url_hides_passwords_only() {
        assert_eq!(mask_url("postgres://u:p@h:5432/db"), "postgres://u:****@h:5432/db");
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_url("redis://:p@h"), "redis://:****@h");
        assert_eq!(
            mask_url("postgres://u:p:q@x@h/db?sslmode=require&password=z#f"),
            "postgres://u:****@h/db?sslmode=require&password=****#f"
        );
        assert_eq!(mask_url("s3://b?region=r"), "s3://b?region=r");
        assert_eq!(mask_url("sqlite://./data/videogen.db"), "sqlite://./data/videogen.db");
    }

    #[test]
    fn every_option_has_a_flag_with_its_env_and_key_in_help() {
        let mut cmd = Cli::command();
        cmd.build();
        for (key, flag) in OPTIONS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("no --{flag}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains(&env_var(flag)) && help.contains(key), "--{flag}: {help}");
            assert!(help.contains("default"), "--{flag} documents its default: {help}");
        }
        let keys: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
        let c = load(&[], &[]).unwrap();
        for key in c.sources.keys() {
            assert!(keys.contains(key), "{key} is not in OPTIONS");
        }
        assert_eq!(c.sources.len(), OPTIONS.len(), "every option is resolved");
    }

    #[test]
    fn example_file_lists_every_option_with_its_default() {
        let text = include_str!("../../../videogen.example.toml");
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
        for (key, _) in OPTIONS {
            assert!(
                documented.iter().any(|d| d == key),
                "{key} is not in videogen.example.toml"
            );
        }
    }
}
