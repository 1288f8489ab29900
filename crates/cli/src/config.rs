//! The configuration: every option declared once, in the `options!` lists
//! below, with its type, TOML key, flag, help, default and check.
//!
//! An option has a flag (`--lease-ttl-secs`), an environment variable
//! (`VIDEOGEN_LEASE_TTL_SECS`) and a key in the TOML file named by `--config`
//! or `VIDEOGEN_CONFIG` (`scheduler.lease_ttl_secs`); the first that sets it
//! wins: flag, environment, file, default. An empty variable is unset. Every
//! layer is text read by the option's [`Kind`], so each accepts the same
//! spellings; URLs are parsed by the crates that open them. Every error is
//! reported at once, naming the option as it was set (flag, variable, or key
//! with file, line and column); unknown file keys are errors. `config print`
//! shows the effective TOML with each value's source, secrets masked.

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::{self, Display, Write as _};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use videogen_api::layers::ServerLimits;
use videogen_blob::BlobUrl;
use videogen_control::RuntimeConfig;
use videogen_redis::RedisUrl;
use videogen_sched::checkpoint::CheckpointPolicy;
use videogen_store::DatabaseUrl;
use videogen_worker::WorkerConfig;

/// The variable naming the config file (the flag is `--config`).
pub const CONFIG_ENV: &str = "VIDEOGEN_CONFIG";
/// Secrets `serve` reads from the environment only (listed by `config print` as set or unset).
pub const ENV_ONLY_SECRETS: &[&str] = &["VIDEOGEN_API_KEY", "VIDEOGEN_WORKER_TOKEN"];
/// Longest a signed download URL may live (S3 presigned URLs allow 7 days).
const SIGNED_URL_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest `url_signing_key`, in characters.
const SIGNING_KEY_MIN_CHARS: usize = 32;

/// The environment variable of a flag: `data-dir` → `VIDEOGEN_DATA_DIR`.
pub fn env_var(flag: &str) -> String {
    format!("VIDEOGEN_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// How values of one type are read from text (a flag, a variable or the
/// file) and printed as TOML (`None`: unset).
pub trait Kind<T> {
    const VALUE_NAME: &'static str;
    fn parse(s: &str) -> Result<T, String>;
    fn show(v: &T) -> Option<toml::Value>;
    fn arg(a: Arg) -> Arg {
        a
    }
}

/// `FromStr` values shown through serde (numbers, text, paths). URLs, whose
/// parsers say what is wrong without echoing a secret. Durations in seconds,
/// `1.5` (`*_secs` keys). Durations as `30s`, `2m` (humantime). Booleans
/// (also yes/no, on/off, 1/0; a bare flag is true). [`ValueEnum`]s. Secrets.
/// An optional value of another kind.
pub struct Plain;
pub struct Url;
pub struct Secs;
pub struct Human;
pub struct Bool;
pub struct Choice;
pub struct Secret;
pub struct Maybe<K>(PhantomData<K>);

impl<T: FromStr<Err: Display> + Serialize> Kind<T> for Plain {
    const VALUE_NAME: &'static str = "VALUE";
    fn parse(s: &str) -> Result<T, String> {
        s.parse().map_err(|e| format!("{s:?} is not valid ({e})"))
    }
    fn show(v: &T) -> Option<toml::Value> {
        toml::Value::try_from(v).ok()
    }
}

impl<T: FromStr<Err: Display> + Serialize> Kind<T> for Url {
    const VALUE_NAME: &'static str = "URL";
    fn parse(s: &str) -> Result<T, String> {
        s.parse().map_err(|e: T::Err| e.to_string())
    }
    fn show(v: &T) -> Option<toml::Value> {
        toml::Value::try_from(v).ok()
    }
}

impl Kind<Duration> for Secs {
    const VALUE_NAME: &'static str = "SECS";
    fn parse(s: &str) -> Result<Duration, String> {
        let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
        let d = Duration::try_from_secs_f64(v).ok().filter(|d| !d.is_zero());
        d.ok_or_else(|| format!("{v} is not a positive number of seconds"))
    }
    fn show(d: &Duration) -> Option<toml::Value> {
        Some(match (d.subsec_nanos(), i64::try_from(d.as_secs())) {
            (0, Ok(s)) => toml::Value::Integer(s),
            _ => toml::Value::Float(d.as_secs_f64()),
        })
    }
}

impl Kind<Duration> for Human {
    const VALUE_NAME: &'static str = "DURATION";
    fn parse(s: &str) -> Result<Duration, String> {
        let d = humantime::parse_duration(s).ok().filter(|d| !d.is_zero());
        d.ok_or_else(|| format!("{s:?} is not a positive duration (e.g. 30s, 2m, 1h 30m)"))
    }
    fn show(d: &Duration) -> Option<toml::Value> {
        Some(toml::Value::String(humantime::format_duration(*d).to_string()))
    }
}

impl Kind<bool> for Bool {
    const VALUE_NAME: &'static str = "BOOL";
    fn parse(s: &str) -> Result<bool, String> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("{s:?} is not true or false")),
        }
    }
    fn show(v: &bool) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*v))
    }
    fn arg(a: Arg) -> Arg {
        a.num_args(0..=1).default_missing_value("true")
    }
}

impl<T: ValueEnum> Kind<T> for Choice {
    const VALUE_NAME: &'static str = "NAME";
    fn parse(s: &str) -> Result<T, String> {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| Some(v.to_possible_value()?.get_name().to_owned()))
            .collect();
        T::from_str(s, true).map_err(|_| format!("{s:?} is not one of {}", names.join(", ")))
    }
    fn show(v: &T) -> Option<toml::Value> {
        Some(toml::Value::String(v.to_possible_value()?.get_name().to_owned()))
    }
    fn arg(a: Arg) -> Arg {
        a.value_parser(PossibleValuesParser::new(
            T::value_variants().iter().filter_map(|v| v.to_possible_value()),
        ))
    }
}

impl Kind<SecretString> for Secret {
    const VALUE_NAME: &'static str = "KEY";
    fn parse(s: &str) -> Result<SecretString, String> {
        Ok(SecretString::from(s))
    }
    fn show(_: &SecretString) -> Option<toml::Value> {
        Some(toml::Value::String(videogen_core::secret_url::MASK.to_owned()))
    }
}

impl<T, K: Kind<T>> Kind<Option<T>> for Maybe<K> {
    const VALUE_NAME: &'static str = K::VALUE_NAME;
    fn parse(s: &str) -> Result<Option<T>, String> {
        K::parse(s).map(Some)
    }
    fn show(v: &Option<T>) -> Option<toml::Value> {
        v.as_ref().and_then(K::show)
    }
    fn arg(a: Arg) -> Arg {
        K::arg(a)
    }
}

/// What this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// API, scheduler, housekeeping and the in-process workers.
    All,
    /// The HTTP API only.
    Api,
    /// The scheduler and housekeeping only.
    Scheduler,
}

/// How the checkpoint interval is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    /// Every `checkpoint_every_steps` steps or `checkpoint_every_secs` seconds.
    Fixed,
    /// Young–Daly `sqrt(2·C·MTBF)` from the measured checkpoint cost and the
    /// fleet's preemption rate, within `checkpoint_min_secs`..`checkpoint_max_secs`.
    Adaptive,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal unless NO_COLOR is set.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

/// One option, as clap and `config print` see it.
pub struct Opt {
    pub key: &'static str,
    pub flag: &'static str,
    help: &'static str,
    value_name: &'static str,
    default: fn() -> String,
    arg: fn(Arg) -> Arg,
}

/// A group of options: a struct built from the layers by [`Loader::resolve`].
pub trait Group: Sized {
    const OPTIONS: &'static [Opt];
    fn resolve(r: &mut Loader) -> Self;
    /// Each key's value as TOML (`None`: unset), masked.
    fn show(&self) -> Vec<(&'static str, Option<toml::Value>)>;
}

fn shown(v: Option<toml::Value>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

macro_rules! default_doc {
    ($doc:literal; $($rest:tt)*) => {
        || $doc.to_owned()
    };
    (; $kind:ty, $ty:ty, $default:expr) => {
        || shown(<$kind as Kind<$ty>>::show(&$default))
    };
}

/// Declares a group: per option `field: Type [Kind] = "toml.key", "flag",
/// default` (an expression, which may use the fields above it), then
/// optionally `; doc "how help shows the default"` and `; check FN`.
macro_rules! options {
    ($(#[doc = $gdoc:literal])* $group:ident { $(
        #[doc = $help:literal]
        $field:ident: $ty:ty [$kind:ty] = $key:literal, $flag:literal, $default:expr
            $(; doc $ddoc:literal)? $(; check $check:expr)?;
    )* }) => {
        $(#[doc = $gdoc])*
        #[derive(Debug, Clone)]
        pub struct $group { $( #[doc = $help] pub $field: $ty, )* }

        impl Group for $group {
            const OPTIONS: &'static [Opt] = &[$(Opt {
                key: $key,
                flag: $flag,
                help: $help,
                value_name: <$kind as Kind<$ty>>::VALUE_NAME,
                default: default_doc!($($ddoc)?; $kind, $ty, $default),
                arg: <$kind as Kind<$ty>>::arg,
            }),*];
            fn resolve(r: &mut Loader) -> Self {
                $(
                    let $field: $ty = r.value::<$kind, $ty>($key, $flag, || $default);
                    $( r.check($key, &$field, $check); )?
                )*
                Self { $($field),* }
            }
            fn show(&self) -> Vec<(&'static str, Option<toml::Value>)> {
                vec![$(($key, <$kind as Kind<$ty>>::show(&self.$field))),*]
            }
        }
    };
}

options! {
    /// Where the data lives: `serve`, `migrate` and `keys` read the same.
    StorageOptions {
        /// Directory of the embedded database, blobs and node id.
        data_dir: PathBuf [Plain] = "data_dir", "data-dir", PathBuf::from("./data");
            check |p: &PathBuf| ok(!p.as_os_str().is_empty(), "must not be empty");
        /// Database: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB (postgresql:// too).
        database_url: DatabaseUrl [Url] = "database.url", "database-url", DatabaseUrl::Sqlite(data_dir.join("videogen.db"));
            doc "sqlite://DATA_DIR/videogen.db";
        /// Blob store: file://DIR or s3://BUCKET?endpoint=URL&region=REGION, credentials from AWS_* variables.
        blob_url: BlobUrl [Url] = "blob.url", "blob-url", BlobUrl::Local(data_dir.join("blobs")); doc "file://DATA_DIR/blobs";
    }
}

options! {
    /// What `serve` alone reads: the node, its API and its scheduler.
    ServerOptions {
        /// Address to listen on, HOST:PORT (port 0 picks a free port; the real one is printed).
        listen: String [Plain] = "listen", "listen", "127.0.0.1:8080".to_owned(); check check_listen;
        /// What this node runs.
        role: Role [Choice] = "role", "role", Role::All;
        /// This node's id, 1 to 64 of A-Z a-z 0-9 - _ . (unset: the one kept in the data dir, made on first start).
        node_id: Option<String> [Maybe<Plain>] = "node_id", "node-id", None; check some(check_node_id);
        /// Base URL clients reach this node at, e.g. https://videogen.example.com; signed download URLs are built on it.
        public_url: Option<String> [Maybe<Plain>] = "public_url", "public-url", None; check some(check_public_url);
        /// Redis, for cross-node events and rate limits: redis://[:PASSWORD@]HOST[:PORT][/DB] (no TLS in this build).
        redis_url: Option<RedisUrl> [Maybe<Url>] = "redis.url", "redis-url", None;
        /// Answer video downloads with a redirect to a signed URL instead of the bytes. With a file:// blob store it needs --public-url and --url-signing-key.
        download_redirect: bool [Bool] = "downloads.redirect", "download-redirect", false;
        /// Lifetime of a signed download URL, in seconds, at most 7 days.
        signed_url_ttl: Duration [Secs] = "downloads.signed_url_ttl_secs", "signed-url-ttl-secs", Duration::from_secs(3600);
            check |d: &Duration| ok(*d <= SIGNED_URL_TTL_MAX, format!("{} s is longer than 7 days ({} s), the most a signed URL may live", d.as_secs_f64(), SIGNED_URL_TTL_MAX.as_secs()));
        /// Secret key signing the download URLs this node serves, at least 32 characters (e.g. `openssl rand -hex 32`). Prefer the variable or the file to the flag, which other users can see in the process list.
        url_signing_key: Option<SecretString> [Maybe<Secret>] = "downloads.url_signing_key", "url-signing-key", None; check some(check_signing_key);
        /// Lease time-to-live in seconds; heartbeats renew it every third of it.
        lease_ttl: Duration [Secs] = "scheduler.lease_ttl_secs", "lease-ttl-secs", RuntimeConfig::default().lease_ttl;
        /// Attempts before a job is dead-lettered, 1 to 100.
        max_attempts: u32 [Plain] = "scheduler.max_attempts", "max-attempts", RuntimeConfig::default().max_attempts; check in_range(1, 100);
        /// How often the reaper and the retention sweeper run, in seconds.
        housekeeping: Duration [Secs] = "scheduler.housekeeping_secs", "housekeeping-secs", RuntimeConfig::default().housekeeping_interval;
        /// Wait before the first retry of a failed attempt, e.g. 2s; each further retry waits twice as long (jittered), up to --retry-backoff-max.
        retry_backoff: Duration [Human] = "scheduler.retry_backoff", "retry-backoff", RuntimeConfig::default().retry_backoff.base;
        /// Longest wait between retries of a failed job, e.g. 5m.
        retry_backoff_max: Duration [Human] = "scheduler.retry_backoff_max", "retry-backoff-max", RuntimeConfig::default().retry_backoff.max;
        /// How long dead letters keep their checkpoints, so a re-drive resumes instead of starting over, e.g. 7d.
        dead_letter_checkpoints: Duration [Human] = "scheduler.dead_letter_checkpoint_retention", "dead-letter-checkpoint-retention", RuntimeConfig::default().dead_letter_checkpoint_retention;
        /// Retention of every tier's videos, in seconds (unset: per tier, free 1 d, paid 7 d, internal 30 d).
        retention: Option<Duration> [Maybe<Secs>] = "scheduler.retention_secs", "retention-secs", None;
        /// Lifetime of the scheduler leader's lease, in seconds, when several nodes run the scheduler.
        leader_lease: Duration [Secs] = "scheduler.leader_lease_secs", "leader-lease-secs", Duration::from_secs(5);
        /// In-process workers (0: none; run `videogen worker` processes).
        workers: usize [Plain] = "workers.count", "workers", 1;
        /// Denoising steps of every video, 1 to 1000.
        steps: u32 [Plain] = "api.steps", "steps", videogen_model::REFERENCE_DEFAULT_STEPS; check in_range(1, 1000);
        /// Poll interval suggested to SDK pollers (`openai-poll-after-ms`), in ms.
        poll_after_ms: u64 [Plain] = "api.poll_after_ms", "poll-after-ms", 1000; check in_range(1, u64::from(u32::MAX));
        /// Video submissions accepted per minute per tenant (malformed or invalid requests do not count); 0: no limit.
        rate_limit_per_minute: u32 [Plain] = "api.rate_limit_per_minute", "rate-limit-per-minute", 0;
        /// HTTP requests handled at once, each for tenant routes and for the worker API; more get 503 at once.
        max_concurrent_requests: usize [Plain] = "http.max_concurrent_requests", "max-concurrent-requests", ServerLimits::default().concurrent_requests_max; check in_range(1, 1 << 20);
        /// Longest a public API request may take (SSE streams excepted), e.g. 30s.
        request_timeout: Duration [Human] = "http.request_timeout", "request-timeout", ServerLimits::default().request_timeout;
        /// Longest an internal worker API request may take; must exceed the longest acquire long-poll (30 s).
        worker_request_timeout: Duration [Human] = "http.worker_request_timeout", "worker-request-timeout", ServerLimits::default().worker_request_timeout; check check_worker_timeout;
        /// Server-sent event streams open at once; more are refused.
        max_sse_streams: usize [Plain] = "http.max_sse_streams", "max-sse-streams", ServerLimits::default().sse_streams_max; check in_range(1, 1 << 20);
        /// Server-sent event streams one tenant may have open at once; more get 429.
        max_sse_streams_per_tenant: usize [Plain] = "http.max_sse_streams_per_tenant", "max-sse-streams-per-tenant", ServerLimits::default().sse_streams_per_tenant_max; check in_range(1, 1 << 20);
        /// TCP connections open at once (kept under the open-files limit); more are answered 503 and closed.
        max_connections: usize [Plain] = "http.max_connections", "max-connections", ServerLimits::default().connections_max; check in_range(1, 1 << 24);
        /// Longest a client may take to send a request's headers, and to start its next request on a kept-alive connection, e.g. 10s.
        header_read_timeout: Duration [Human] = "http.header_read_timeout", "header-read-timeout", ServerLimits::default().header_read_timeout;
        /// Memory for decoding input images at once, in MiB; a decode past it gets 503 with Retry-After.
        image_decode_mib: u64 [Plain] = "http.image_decode_mib", "image-decode-mib", 512; check in_range(1, 1 << 20);
    }
}

options! {
    /// The model, moderation and checkpoint options of a worker slot: `serve`'s
    /// in-process workers and `videogen worker` read the same.
    WorkerOptions {
        /// Minimum wall time of one reference-model step (speed knob), in ms.
        step_ms: u64 [Plain] = "workers.step_ms", "step-ms", millis(videogen_model::ReferenceConfig::default().step_time);
        /// Simulated model load time, in ms, paid once per worker.
        model_load_ms: u64 [Plain] = "workers.model_load_ms", "model-load-ms", millis(videogen_model::ReferenceConfig::default().load_time);
        /// How the checkpoint interval is chosen.
        checkpoint_policy: PolicyKind [Choice] = "workers.checkpoint_policy", "checkpoint-policy", PolicyKind::Fixed;
        /// Fixed policy: checkpoint every this many steps; 0: only by time.
        checkpoint_every_steps: u32 [Plain] = "workers.checkpoint_every_steps", "checkpoint-every-steps", fixed_default().0;
        /// Fixed policy: ... or every this many seconds, whichever is first.
        checkpoint_every: Duration [Secs] = "workers.checkpoint_every_secs", "checkpoint-every-secs", fixed_default().1;
        /// Adaptive policy: shortest interval, in seconds.
        checkpoint_min: Duration [Secs] = "workers.checkpoint_min_secs", "checkpoint-min-secs", Duration::from_secs(5);
        /// Adaptive policy: longest interval, in seconds.
        checkpoint_max: Duration [Secs] = "workers.checkpoint_max_secs", "checkpoint-max-secs", Duration::from_secs(600);
        /// Longest a graceful stop may take from notice to release, in seconds (GCE gives 30 s, AWS 120 s).
        preemption_deadline: Duration [Secs] = "workers.preemption_deadline_secs", "preemption-deadline-secs", WorkerConfig::default().preemption_deadline;
        /// Finished generations each slot moderates, encodes and uploads on the CPU while its GPU runs the next job (0: none; the GPU waits for each upload).
        finishing: usize [Plain] = "workers.finishing", "finishing", WorkerConfig::default().finishing_max; check in_range(0, 64);
        /// Give the reference model's clips a prompt-seeded soundtrack (exercises the audio path without a GPU).
        reference_audio: bool [Bool] = "workers.reference_audio", "reference-audio", false;
        /// Models the worker slots run, comma-separated ids of the `[[models]]` registry (unset: the built-in reference model).
        models: Option<String> [Maybe<Plain>] = "workers.models", "models", None; check some(check_model_list);
        /// GPUs, one model host and one slot per comma-separated group; `+` joins GPUs into one group (e.g. `0,1` or `0+1,2+3`). Unset: hosts run on the CPU.
        gpus: Option<String> [Maybe<Plain>] = "workers.gpus", "gpus", None; check some(check_gpus);
        /// Python interpreter of the model-host virtualenv (with `pip install ./python`).
        host_python: PathBuf [Plain] = "workers.host_python", "host-python", PathBuf::from("python3");
        /// Threads each CPU model host uses (unset: torch's default).
        host_threads: Option<u32> [Maybe<Plain>] = "workers.host_threads", "host-threads", None; check some(|n: &u32| ok((1..=1024).contains(n), "must be 1..=1024"));
        /// GPU memory of one host's GPU group, in GB: loading a model past it evicts the least recently used (unset: no limit).
        gpu_memory_gb: Option<f64> [Maybe<Plain>] = "workers.gpu_memory_gb", "gpu-memory-gb", None; check some(|g: &f64| ok(g.is_finite() && *g > 0.0, "must be a positive number"));
        /// File of 64-bit perceptual hashes (hex, one per line) that output moderation blocks.
        blocked_hashes: Option<PathBuf> [Maybe<Plain>] = "moderation.blocked_hashes", "blocked-hashes", None;
            check some(|p: &PathBuf| ok(p.is_file(), format!("{} is not a readable file", p.display())));
    }
}

options! {
    /// How every command logs.
    LogOptions {
        /// Log format on stderr: text (coloured only on a terminal without NO_COLOR) or json.
        log_format: LogFormat [Choice] = "log.format", "log-format", LogFormat::Text;
    }
}

/// Every group, in the order of `config print` (top-level keys go first there).
const GROUPS: &[&[Opt]] = &[
    StorageOptions::OPTIONS,
    ServerOptions::OPTIONS,
    WorkerOptions::OPTIONS,
    LogOptions::OPTIONS,
];

type Check<T> = Box<dyn Fn(&T) -> Result<(), String>>;

fn ok(good: bool, msg: impl Display) -> Result<(), String> {
    if good { Ok(()) } else { Err(msg.to_string()) }
}

fn in_range<T: PartialOrd + Display + 'static>(min: T, max: T) -> Check<T> {
    Box::new(move |v| ok(*v >= min && *v <= max, format!("{v} is not in {min}..={max}")))
}

/// A check of a value, applied to an optional one when it is set.
fn some<T>(check: impl Fn(&T) -> Result<(), String> + 'static) -> Check<Option<T>> {
    Box::new(move |v| v.as_ref().map_or(Ok(()), &check))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The worker runtime's default checkpoint policy, when it is the fixed one.
fn fixed_default() -> (u32, Duration) {
    match WorkerConfig::default().checkpoint {
        CheckpointPolicy::Fixed { every_steps, every } => (every_steps, every),
        CheckpointPolicy::Adaptive { min, .. } => (0, min),
    }
}

fn all_options() -> impl Iterator<Item = &'static Opt> {
    GROUPS.iter().flat_map(|g| g.iter())
}

/// `key` split at its last dot: (section, name); top-level keys have section "".
fn split(key: &str) -> (&str, &str) {
    key.rsplit_once('.').unwrap_or(("", key))
}

/// The environment: a variable's value by name.
pub type Env = Box<dyn Fn(&str) -> Option<String>>;

/// The layers below the flags, and what resolving has found so far.
pub struct Loader {
    env: Env,
    /// Each key of the file: its text (or why it has none) and `:line:column`.
    file_values: BTreeMap<String, (Result<String, String>, String)>,
    origin: Origin,
    errors: Vec<String>,
    flags: BTreeMap<&'static str, String>,
    /// The file's `[[models]]` entries (the model registry).
    models: Vec<crate::registry::RegistryEntry>,
}

impl Loader {
    /// The process environment and the file named by `file` or `VIDEOGEN_CONFIG`.
    pub fn new(file: &ConfigFile) -> Self {
        Self::with_env(file, Box::new(|name| std::env::var(name).ok()))
    }

    /// [`Loader::new`] with the environment given as a lookup function.
    pub fn with_env(file: &ConfigFile, env: Env) -> Self {
        let env: Env = Box::new(move |name| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()));
        let (path, named_by) = match (&file.config, env(CONFIG_ENV)) {
            (Some(p), _) => (Some(p.clone()), "--config"),
            (None, p) => (p.map(PathBuf::from), CONFIG_ENV),
        };
        let origin = Origin {
            sources: BTreeMap::new(),
            file: path.clone(),
        };
        let mut loader = Self {
            env,
            file_values: BTreeMap::new(),
            origin,
            errors: Vec::new(),
            flags: BTreeMap::new(),
            models: Vec::new(),
        };
        match path.as_deref().map(|p| (p, std::fs::read_to_string(p))) {
            Some((p, Ok(text))) => loader.read_file(p, &text),
            Some((p, Err(e))) => loader
                .errors
                .push(format!("{named_by} {}: cannot read it: {e}", p.display())),
            None => {}
        }
        loader
    }

    /// Reads every key of the file, naming unknown ones with their position
    /// (never quoting a line, which may hold a secret).
    fn read_file(&mut self, path: &Path, text: &str) {
        use toml::de::DeValue as V;
        let at = |span: std::ops::Range<usize>| {
            let before = text.get(..span.start).unwrap_or(text);
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(":{}:{column}", before.matches('\n').count() + 1)
        };
        let doc = match toml::de::DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let (pos, msg) = (
                    e.span().map(at).unwrap_or_default(),
                    e.message().trim().replace('\n', "; "),
                );
                return self
                    .errors
                    .push(format!("invalid config file {}{pos}: {msg}", path.display()));
            }
        };
        let known = |key: &str| all_options().any(|o| o.key == key);
        match crate::registry::parse(text) {
            Ok(models) => self.models = models,
            Err(e) => self.errors.push(format!("{}: {e}", path.display())),
        }
        for (k, v) in doc.get_ref() {
            if k.get_ref() == "models" && matches!(v.get_ref(), V::Array(_)) {
                continue; // The registry, read above.
            }
            let entries = match v.get_ref() {
                V::Table(t) if !known(k.get_ref()) => t
                    .iter()
                    .map(|(k2, v2)| (format!("{}.{}", k.get_ref(), k2.get_ref()), k2, v2))
                    .collect(),
                _ => vec![(k.get_ref().to_string(), k, v)],
            };
            for (key, k, v) in entries {
                if !known(&key) {
                    let (section, name) = split(&key);
                    let within: Vec<&str> = all_options()
                        .map(|o| split(o.key))
                        .filter(|(s, _)| *s == section)
                        .map(|(_, n)| n)
                        .collect();
                    let place = if section.is_empty() {
                        "at the top level".to_owned()
                    } else {
                        format!("in `{section}`")
                    };
                    let expected = if within.is_empty() {
                        "no such section".to_owned()
                    } else {
                        format!("known: {}", within.join(", "))
                    };
                    let (file, at) = (path.display(), at(k.span()));
                    self.errors
                        .push(format!("{file}{at}: unknown key `{name}` {place} ({expected})"));
                    continue;
                }
                let text = match v.get_ref() {
                    V::String(s) => Ok(s.to_string()),
                    V::Integer(i) => Ok(i.as_str().replace('_', "")),
                    V::Float(f) => Ok(f.as_str().replace('_', "")),
                    V::Boolean(b) => Ok(b.to_string()),
                    _ => Err("expected a string, a number or a boolean".to_owned()),
                };
                self.file_values.insert(key, (text, at(v.span())));
            }
        }
    }

    /// The model registry of the file (`[[models]]`).
    pub fn models(&self) -> &[crate::registry::RegistryEntry] {
        &self.models
    }

    /// Records an error found outside the option groups.
    pub fn error_at(&mut self, what: &str, msg: impl Display) {
        self.errors.push(format!("{what}: {msg}"));
    }

    /// Resolves a group, its flags over the layers.
    pub fn resolve<G: Group>(&mut self, flags: &Flags<G>) -> G {
        self.flags = flags.0.clone();
        G::resolve(self)
    }

    /// The value of `key`: the flag, else its variable, else the file, else
    /// `default` (also after an invalid value, whose error is kept).
    fn value<K: Kind<T>, T>(&mut self, key: &'static str, flag: &'static str, default: impl FnOnce() -> T) -> T {
        let (raw, source) = match (
            self.flags.get(key),
            (self.env)(&env_var(flag)),
            self.file_values.get(key),
        ) {
            (Some(v), _, _) => (Ok(v.clone()), Source::Flag),
            (None, Some(v), _) => (Ok(v), Source::Env),
            (None, None, Some((v, _))) => (v.clone(), Source::File),
            (None, None, None) => (Err(String::new()), Source::Default),
        };
        self.origin.sources.insert(key, (source, flag));
        raw.and_then(|raw| K::parse(&raw)).unwrap_or_else(|e| {
            if source != Source::Default {
                self.error(key, e);
            }
            default()
        })
    }

    fn check<T>(&mut self, key: &'static str, v: &T, check: impl FnOnce(&T) -> Result<(), String>) {
        if let Err(e) = check(v) {
            self.error(key, e);
        }
    }

    /// Records an error, naming the option as the user set it: `--flag`,
    /// `VAR (--flag)`, `` `key` in FILE:L:C (--flag) `` or `--flag (default)`.
    fn error(&mut self, key: &str, msg: impl Display) {
        let flag = self.origin.flag(key);
        let name = match self.origin.source(key) {
            Source::Flag => format!("--{flag}"),
            Source::Env => format!("{} (--{flag})", env_var(flag)),
            Source::File => {
                let pos = self.file_values.get(key).map_or("", |(_, pos)| pos.as_str());
                format!("`{key}` in {}{pos} (--{flag})", self.origin.file_name())
            }
            Source::Default => format!("--{flag} (default)"),
        };
        self.errors.push(format!("{name}: {msg}"));
    }

    /// Where the values came from, or every error found.
    pub fn finish(self) -> anyhow::Result<Origin> {
        if !self.errors.is_empty() {
            anyhow::bail!("invalid configuration:\n  {}", self.errors.join("\n  "));
        }
        Ok(self.origin)
    }
}

/// Where each resolved value came from (with its flag), and the file read.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub sources: BTreeMap<&'static str, (Source, &'static str)>,
    pub file: Option<PathBuf>,
}

impl Origin {
    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).map_or(Source::Default, |(s, _)| *s)
    }

    fn flag(&self, key: &str) -> &'static str {
        self.sources.get(key).map_or("?", |(_, f)| f)
    }

    fn file_name(&self) -> String {
        self.file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// For `config print`: `flag --x`, `env VAR`, `file PATH` or `default`.
    fn describe(&self, key: &str) -> String {
        match self.source(key) {
            Source::Flag => format!("flag --{}", self.flag(key)),
            Source::Env => format!("env {}", env_var(self.flag(key))),
            Source::File => format!("file {}", self.file_name()).trim_end().to_owned(),
            Source::Default => "default".to_owned(),
        }
    }
}

/// `--config`: the TOML file every command that reads options also reads.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigFile {
    /// TOML configuration file (every key: videogen.example.toml); flags and VIDEOGEN_* variables override it.
    /// [env: VIDEOGEN_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The flags of a group, as given on the command line, by key (all optional,
/// so that an unset flag lets the variable, the file or the default decide).
/// `Debug` shows which are set, never their values.
#[derive(Clone)]
pub struct Flags<G>(BTreeMap<&'static str, String>, PhantomData<fn() -> G>);

impl<G> fmt::Debug for Flags<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flags")
            .field("set", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<G: Group> FromArgMatches for Flags<G> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self(BTreeMap::new(), PhantomData);
        flags.update_from_arg_matches(m).map(|()| flags)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for o in G::OPTIONS {
            if let Ok(Some(v)) = m.try_get_one::<String>(o.key) {
                self.0.insert(o.key, v.clone());
            }
        }
        Ok(())
    }
}

impl<G: Group> Args for Flags<G> {
    /// Each option's flag, its help ending in its variable, key and default.
    fn augment_args(cmd: Command) -> Command {
        G::OPTIONS.iter().fold(cmd, |cmd, o| {
            let (help, env, default) = (o.help.trim(), env_var(o.flag), (o.default)());
            let help = format!("{help} [env: {env}] [config: {}] [default: {default}]", o.key);
            let arg = Arg::new(o.key).long(o.flag).value_name(o.value_name).help(help);
            cmd.arg((o.arg)(arg.global(true)))
        })
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The flags of `serve`, `migrate` and `config print`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub file: ConfigFile,
    #[command(flatten)]
    pub storage: Flags<StorageOptions>,
    #[command(flatten)]
    pub server: Flags<ServerOptions>,
    #[command(flatten)]
    pub worker: Flags<WorkerOptions>,
}

/// The effective configuration of `serve`. `Debug` masks secrets.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: StorageOptions,
    pub server: ServerOptions,
    pub worker: WorkerOptions,
    pub log: LogOptions,
    /// The model registry; its catalogue is what the API serves.
    pub models: Vec<crate::registry::RegistryEntry>,
    pub catalog: videogen_core::catalog::Catalog,
    pub origin: Origin,
}

impl Config {
    /// Loads from the flags, the process environment and the config file.
    pub fn load(args: &ServeArgs, log: &Flags<LogOptions>) -> anyhow::Result<Config> {
        Self::from_loader(Loader::new(&args.file), args, log)
    }

    /// Resolves every group, then the checks that span options.
    pub fn from_loader(mut l: Loader, args: &ServeArgs, log: &Flags<LogOptions>) -> anyhow::Result<Config> {
        let (storage, server) = (l.resolve(&args.storage), l.resolve::<ServerOptions>(&args.server));
        let (worker, log) = (l.resolve::<WorkerOptions>(&args.worker), l.resolve(log));
        if worker.checkpoint_min > worker.checkpoint_max {
            let (min, max) = (worker.checkpoint_min.as_secs_f64(), worker.checkpoint_max.as_secs_f64());
            l.error(
                "workers.checkpoint_min_secs",
                format!("{min} s exceeds --checkpoint-max-secs ({max} s)"),
            );
        }
        let missing: Vec<&str> = [
            ("--url-signing-key", server.url_signing_key.is_none()),
            ("--public-url", server.public_url.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        if server.download_redirect && matches!(storage.blob_url, BlobUrl::Local(_)) && !missing.is_empty() {
            let msg = format!(
                "with a file:// --blob-url, download redirects point at signed URLs that this node serves \
                 itself: it needs {} (--public-url is the base those URLs are built on, --url-signing-key \
                 signs them so they cannot be forged or extended; or set --download-redirect=false)",
                missing.join(" and ")
            );
            l.error("downloads.redirect", msg);
        }
        let models = l.models().to_vec();
        let catalog = match crate::registry::catalog(&models, server.steps) {
            Ok(c) => Some(c),
            Err(e) => {
                l.error_at("model registry", e);
                None
            }
        };
        let origin = l.finish()?;
        let catalog = catalog.ok_or_else(|| anyhow::anyhow!("invalid model registry"))?;
        Ok(Config {
            storage,
            server,
            worker,
            log,
            models,
            catalog,
            origin,
        })
    }

    /// The effective configuration as TOML, secrets masked, each value with
    /// a comment saying where it came from. It parses back as a config file.
    pub fn to_toml(&self) -> String {
        let values: Vec<_> = [
            self.storage.show(),
            self.server.show(),
            self.worker.show(),
            self.log.show(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut out = String::from(
            "# Effective videogen serve configuration (secrets masked).\n\
             # Precedence: flags, then VIDEOGEN_* environment variables, then the --config file, then defaults.\n",
        );
        if let Some(p) = &self.origin.file {
            let _ = writeln!(out, "# Config file: {}", p.display());
        }
        let models: Vec<String> = self
            .catalog
            .cards()
            .iter()
            .map(|c| {
                let aliases = if c.aliases.is_empty() {
                    String::new()
                } else {
                    format!(" (aliases {})", c.aliases.join(", "))
                };
                format!("{}{aliases}", c.id)
            })
            .collect();
        let _ = writeln!(
            out,
            "# Models ([[models]] in the config file; the first is the default): {}",
            models.join("; ")
        );
        let mut sections: Vec<&str> = vec![""];
        for (key, _) in &values {
            if !sections.contains(&split(key).0) {
                sections.push(split(key).0);
            }
        }
        for section in sections {
            if !section.is_empty() {
                let _ = write!(out, "\n[{section}]\n");
            }
            for (key, value) in values.iter().filter(|(k, _)| split(k).0 == section) {
                let (name, source) = (split(key).1, self.origin.describe(key));
                let _ = match value {
                    Some(v) => writeln!(out, "{name} = {v}  # {source}"),
                    None => writeln!(out, "# {name} is unset  # {source}"),
                };
            }
        }
        out
    }
}

fn check_model_list(s: &String) -> Result<(), String> {
    let ids: Vec<&str> = s.split(',').map(str::trim).collect();
    ok(
        !ids.is_empty() && ids.iter().all(|i| !i.is_empty() && i.len() <= 64),
        format!("{s:?} is not a comma-separated list of model ids"),
    )
}

fn check_gpus(s: &String) -> Result<(), String> {
    let good = s.split(',').all(|g| {
        !g.is_empty()
            && g.split('+')
                .all(|d| !d.is_empty() && d.len() <= 3 && d.bytes().all(|b| b.is_ascii_digit()))
    });
    ok(
        good,
        format!("{s:?} is not a list of GPU indices such as 0,1 or 0+1,2+3"),
    )
}

fn check_listen(s: &String) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:8080, [::]:8080)")),
    }
}

fn check_node_id(s: &String) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    ok(
        (1..=64).contains(&s.len()) && s.chars().all(allowed),
        format!("{s:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."),
    )
}

fn check_public_url(s: &String) -> Result<(), String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} must be an http:// or https:// URL with a host"));
    }
    ok(
        url.query().is_none() && url.fragment().is_none(),
        format!("{s:?} must be a base URL, without query or fragment"),
    )
}

fn check_signing_key(k: &SecretString) -> Result<(), String> {
    let n = k.expose_secret().chars().count();
    let msg = format!("is {n} characters; it needs at least {SIGNING_KEY_MIN_CHARS} (e.g. `openssl rand -hex 32`)");
    ok(n >= SIGNING_KEY_MIN_CHARS, msg)
}

fn check_worker_timeout(d: &Duration) -> Result<(), String> {
    let max = videogen_protocol::wire::MAX_ACQUIRE_WAIT;
    let (shown, poll) = (humantime::format_duration(*d), humantime::format_duration(max));
    ok(
        *d > max,
        format!("{shown} must exceed the longest acquire long-poll ({poll})"),
    )
}

/// `videogen config`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration of `serve` (the same flags, VIDEOGEN_* variables and --config file) as
    /// TOML, secrets masked, each value's source in a comment. Exits non-zero on an invalid configuration, as
    /// `serve` would.
    Print(ServeArgs),
}

pub fn run(cmd: ConfigCommand, log: &Flags<LogOptions>) -> anyhow::Result<()> {
    let ConfigCommand::Print(args) = cmd;
    let mut out = Config::load(&args, log)?.to_toml();
    out.push('\n');
    for name in ENV_ONLY_SECRETS {
        let set = std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let _ = writeln!(
            out,
            "# {name} (environment only): {}",
            if set { "set (not shown)" } else { "unset" }
        );
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests;
