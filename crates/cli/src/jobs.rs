//! `videogen jobs`: operator commands on a running server's admin API
//! (`/v1/admin`), with an admin API key.
//!
//! - `jobs dead`: the dead letters (jobs whose attempts ran out), oldest first.
//! - `jobs retry ID`: re-runs a dead letter with a fresh budget of attempts.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::time::Duration;

#[derive(Subcommand)]
pub enum JobsCommand {
    /// List dead-lettered jobs (failed with max_attempts_exceeded), oldest first.
    Dead(DeadArgs),
    /// Re-run a dead-lettered job with a fresh budget of attempts.
    Retry {
        /// The video id (`video_…`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// Server base URL.
    #[arg(long, env = "VIDEOGEN_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An admin API key.
    #[arg(long, env = "VIDEOGEN_API_KEY", hide_env_values = true)]
    api_key: String,
}

#[derive(Args)]
pub struct DeadArgs {
    /// At most this many jobs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    limit: u32,
    /// Start after this video id (the last one of a previous listing).
    #[arg(long)]
    after: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Longest error message shown in the table.
const MESSAGE_CHARS_SHOWN: usize = 80;

struct Admin {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Admin {
    fn new(a: &ServerArgs) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            base: a.server.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {}", a.api_key),
        })
    }

    /// Sends `req` and returns the JSON body of a success; a failure becomes
    /// an error with the server's message.
    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .header("authorization", &self.auth)
            .send()
            .await
            .with_context(|| format!("connecting to {} (is `videogen serve` running?)", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.context("reading the server's answer")?;
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            bail!("server refused the request ({status}): {message}");
        }
        Ok(body)
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("-")
}

pub async fn run(cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::Dead(a) => {
            let admin = Admin::new(&a.server)?;
            let mut query = vec![("limit", a.limit.to_string())];
            if let Some(after) = a.after {
                query.push(("after", after));
            }
            let url = format!("{}/v1/admin/dead_letters", admin.base);
            let url =
                reqwest::Url::parse_with_params(&url, &query).with_context(|| format!("invalid --server {url}"))?;
            let page = admin.call(admin.http.get(url)).await?;
            let jobs = page["data"].as_array().map(Vec::as_slice).unwrap_or_default();
            if jobs.is_empty() {
                println!("no dead-lettered jobs");
                return Ok(());
            }
            println!("{:<38} {:<20} {:>7}  last error", "id", "tenant", "attempt");
            for v in jobs {
                let message: String = text(v, "/error/message").chars().take(MESSAGE_CHARS_SHOWN).collect();
                println!(
                    "{:<38} {:<20} {:>7}  {message}",
                    text(v, "/id"),
                    text(v, "/tenant"),
                    v["attempt"].as_u64().unwrap_or(0)
                );
            }
            if page["has_more"].as_bool() == Some(true) {
                eprintln!("more: videogen jobs dead --after {}", text(&page, "/last_id"));
            }
        }
        JobsCommand::Retry { id, server } => {
            let admin = Admin::new(&server)?;
            let url = format!("{}/v1/admin/videos/{id}/retry", admin.base);
            let v = admin.call(admin.http.post(url)).await?;
            let position = match v["queue_position"].as_u64() {
                Some(p) => format!(", {p} ahead in the queue"),
                None => String::new(),
            };
            println!(
                "retrying {}: {} (attempts so far {}){position}",
                text(&v, "/id"),
                text(&v, "/status"),
                v["attempt"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}
