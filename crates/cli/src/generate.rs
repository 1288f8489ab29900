//! `videogen generate`: the quickest demo. Submits a prompt to a running
//! server, shows queue position and step/phase in a progress bar, and saves
//! the MP4.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

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
    #[arg(long, default_value = "4")]
    seconds: String,
    #[arg(long, default_value = "1280x720")]
    size: String,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    style: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
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

    let bar = ProgressBar::new(100);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos:>3}% {msg}",
    )?);
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
        bar.set_position(v["progress"].as_u64().unwrap_or(0));
        let phase = v["phase"].as_str().unwrap_or("");
        let msg = match (v["status"].as_str(), v["queue_position"].as_u64()) {
            (Some("queued"), Some(p)) => format!("queued, {p} ahead"),
            (Some("queued"), None) => "queued".into(),
            _ => format!(
                "{phase} step {}/{} (attempt {})",
                v["step"], v["total_steps"], v["attempt"]
            ),
        };
        bar.set_message(msg);
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
    bar.finish_with_message("done");
    let bytes = client
        .get(format!("{base}/v1/videos/{id}/content"))
        .header("authorization", &auth)
        .timeout(Duration::from_secs(600))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    std::fs::write(&a.output, &bytes).with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "{} ({} bytes, {} s, {}) saved to {}",
        id,
        bytes.len(),
        final_video["seconds"].as_str().unwrap_or("?"),
        final_video["size"].as_str().unwrap_or("?"),
        a.output.display()
    );
    Ok(())
}
