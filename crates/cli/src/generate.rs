//! `videogen generate`: the quickest demo. Submits a prompt to a running
//! server, shows queue position and step/phase in a progress bar (plain
//! lines, one per change of phase or 10 %, when stderr is not a terminal),
//! and saves the MP4 and, if asked, its thumbnail and spritesheet.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use videogen_api::create::SEED_MAX;
use videogen_core::spec::{REFERENCE_MODEL, STYLE_MAX_CHARS, Seconds, VideoSize};

#[derive(Args)]
pub struct GenerateArgs {
    /// What the video should show.
    prompt: String,
    /// Where to save the MP4.
    #[arg(short, long, default_value = "video.mp4")]
    output: PathBuf,
    /// Server base URL.
    #[arg(long, env = "VIDEOGEN_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API key.
    #[arg(long, env = "VIDEOGEN_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Where to save the thumbnail (a JPEG of the middle frame).
    #[arg(long, value_name = "PATH")]
    thumbnail: Option<PathBuf>,
    /// Where to save the spritesheet (a JPEG grid of 10 frames).
    #[arg(long, value_name = "PATH")]
    spritesheet: Option<PathBuf>,
    /// Length of the clip, in seconds (the model's card at /v1/models lists what it makes; the built-in model makes 4, 8, 12).
    #[arg(long, default_value = "4", value_parser = parse_seconds)]
    seconds: String,
    /// Width x height, in pixels (the built-in model makes 720x1280, 1280x720, 1024x1792, 1792x1024).
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    size: String,
    /// Seed of the generation.
    #[arg(
        long,
        value_parser = clap::value_parser!(u64).range(0..=SEED_MAX),
        help = format!("Seed of the generation, 0 to {SEED_MAX} (default: the server picks one and reports it)")
    )]
    seed: Option<u64>,
    /// Style preset, 1 to 64 printable characters.
    #[arg(long, value_parser = parse_style, help = format!("Style preset, 1 to {STYLE_MAX_CHARS} printable characters"))]
    style: Option<String>,
    /// Model to run.
    #[arg(long, help = format!("Model to run, one the server lists (default: the server's; the built-in one is {REFERENCE_MODEL})"))]
    model: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
}

fn parse_seconds(s: &str) -> Result<String, String> {
    s.parse::<Seconds>().map(|v| v.to_string()).map_err(|e| e.message)
}

fn parse_size(s: &str) -> Result<String, String> {
    s.parse::<VideoSize>().map(|v| v.to_string()).map_err(|e| e.message)
}

fn parse_style(s: &str) -> Result<String, String> {
    videogen_core::spec::validate_style(s).map_err(|e| e.message)?;
    Ok(s.to_owned())
}

/// Progress on stderr: a bar on a terminal, else a plain line whenever the
/// message changes phase or the percentage crosses a multiple of 10.
struct Progress {
    bar: Option<ProgressBar>,
    last: Option<(String, u64)>,
}

impl Progress {
    fn new() -> anyhow::Result<Self> {
        if !std::io::stderr().is_terminal() {
            return Ok(Self { bar: None, last: None });
        }
        let bar = ProgressBar::new(100);
        bar.set_style(ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos:>3}% {msg}",
        )?);
        Ok(Self {
            bar: Some(bar),
            last: None,
        })
    }

    fn update(&mut self, percent: u64, phase: &str, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_position(percent);
            bar.set_message(msg);
            return;
        }
        let changed = self
            .last
            .as_ref()
            .is_none_or(|(p, pct)| p != phase || percent / 10 != pct / 10);
        if changed {
            eprintln!("{percent:>3}% {msg}");
            self.last = Some((phase.to_owned(), percent));
        }
    }

    /// Leaves the bar drawn (or prints a last line), and ends its line.
    fn finish(&self, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.finish_with_message(msg.to_owned());
                eprintln!();
            }
            None => eprintln!("{msg}"),
        }
    }

    fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
            eprintln!();
        }
    }
}

fn error_message(body: &Value) -> String {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("unknown error")
        .to_owned()
}

pub async fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let base = a.server.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let auth = format!("Bearer {}", a.api_key);
    let mut body = serde_json::json!({ "prompt": a.prompt, "seconds": a.seconds, "size": a.size });
    for (k, v) in [
        ("model", a.model.map(Value::from)),
        ("style", a.style.map(Value::from)),
        ("seed", a.seed.map(Value::from)),
    ] {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    let resp = client
        .post(format!("{base}/v1/videos"))
        .header("authorization", &auth)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("connecting to {base} (is `videogen serve` running?)"))?;
    let status = resp.status();
    let video: Value = resp.json().await.context("reading the server's answer")?;
    if !status.is_success() {
        bail!("server refused the request ({status}): {}", error_message(&video));
    }
    let id = video["id"].as_str().context("no id in response")?.to_owned();
    eprintln!("submitted {id} (seed {})", video["seed"]);

    let mut bar = Progress::new()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
    let final_video = loop {
        let resp = client
            .get(format!("{base}/v1/videos/{id}"))
            .header("authorization", &auth)
            .send()
            .await?;
        let v: Value = resp.json().await?;
        if v.get("error").is_some_and(|e| e.get("type").is_some()) {
            bail!("{}", error_message(&v));
        }
        let phase = v["phase"].as_str().unwrap_or("");
        let msg = match (v["status"].as_str(), v["queue_position"].as_u64()) {
            (Some("queued"), Some(p)) => format!("queued, {p} ahead"),
            (Some("queued"), None) => "queued".into(),
            _ => format!(
                "{phase} step {}/{} (attempt {})",
                v["step"], v["total_steps"], v["attempt"]
            ),
        };
        let stage = match v["status"].as_str() {
            Some("queued") => "queued",
            _ => phase,
        };
        bar.update(v["progress"].as_u64().unwrap_or(0), stage, msg);
        match v["status"].as_str() {
            Some("completed") => break v,
            Some("failed") => {
                bar.abandon();
                bail!(
                    "generation failed: {}",
                    v.pointer("/error/message").and_then(Value::as_str).unwrap_or("unknown")
                );
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bar.abandon();
            bail!("timed out waiting for {id}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish("done");
    let download = |variant: &'static str, path: PathBuf| {
        let req = client
            .get(format!("{base}/v1/videos/{id}/content?variant={variant}"))
            .header("authorization", &auth)
            .timeout(Duration::from_secs(600));
        async move { save(req, variant, &path).await }
    };
    let bytes = download("video", a.output.clone()).await?;
    for (variant, path) in [("thumbnail", a.thumbnail), ("spritesheet", a.spritesheet)] {
        if let Some(path) = path {
            let n = download(variant, path.clone()).await?;
            println!("{variant} ({n} bytes) saved to {}", path.display());
        }
    }
    println!(
        "{} ({} bytes, {} s, {}) saved to {}",
        id,
        bytes,
        final_video["seconds"].as_str().unwrap_or("?"),
        final_video["size"].as_str().unwrap_or("?"),
        a.output.display()
    );
    Ok(())
}

/// Downloads one content variant to `path`; its size in bytes.
async fn save(req: reqwest::RequestBuilder, variant: &str, path: &Path) -> anyhow::Result<usize> {
    let resp = req.send().await.with_context(|| format!("downloading the {variant}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("downloading the {variant}"))?;
    if !status.is_success() {
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        bail!("server refused the {variant} ({status}): {}", error_message(&body));
    }
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len())
}
