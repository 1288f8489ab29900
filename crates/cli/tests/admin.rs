//! Operator features on the real binary: dead letters and their re-drive
//! (`/v1/admin`, `videogen jobs`), and worker tokens (`VIDEOGEN_WORKER_TOKEN`,
//! `videogen keys create --worker`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(180);
/// Slow enough to kill the server mid-generation; one attempt per budget.
const ONE_ATTEMPT: &[&str] = &[
    "--steps",
    "40",
    "--step-ms",
    "60",
    "--checkpoint-every-steps",
    "4",
    "--poll-after-ms",
    "100",
    "--max-attempts",
    "1",
    "--workers",
    "2",
];
const BOOTSTRAP_WORKER_TOKEN: &str = "vgw_test_bootstrap_token_0123456789";
/// A route of the internal worker API: it takes worker tokens only.
const WORKER_ROUTE: &str = "/internal/v1/fleet";

/// Runs `videogen args…` with only the given credentials in its environment.
fn videogen(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VIDEOGEN_API_KEY")
        .env_remove("VIDEOGEN_SERVER")
        .env_remove("VIDEOGEN_DATA_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("run videogen")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "videogen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn post(s: &Server, key: &str, path: &str) -> (u16, Value) {
    let r = s.http.post(s.url(path)).bearer_auth(key).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn ids_of(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn dead_letters_are_listed_and_retried_to_completion_by_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), ONE_ATTEMPT);
    let tenant = create_key(dir.path(), "acme", "paid");
    let mut ids = Vec::new();
    for seed in 0..2 {
        let (st, v) = s.submit(&tenant, body("a paper boat on a river", seed)).await;
        assert_eq!(st, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        s.wait_until(&tenant, id, T, |v| v["step"].as_u64().unwrap_or(0) >= 2)
            .await;
    }
    // The attempts die with the server; with one attempt allowed, the restart
    // dead-letters both jobs.
    s.kill9();
    let s = Server::start(dir.path(), ONE_ATTEMPT);
    for id in &ids {
        let v = s.wait_done(&tenant, id, T).await;
        assert_eq!(v["status"], "failed", "{v}");
        assert_eq!(v["error"]["code"], "max_attempts_exceeded", "{v}");
        assert_eq!(v["attempt"], 1, "{v}");
    }
    ids.sort();

    // The admin listing: oldest first, OpenAI's list envelope, pages by cursor.
    let (st, page) = s.get_json(ADMIN_KEY, "/v1/admin/dead_letters").await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["object"], "list");
    assert_eq!(ids_of(&page), ids);
    assert_eq!(page["has_more"], false);
    assert_eq!(page["first_id"], ids[0].as_str());
    assert_eq!(page["last_id"], ids[1].as_str());
    for v in page["data"].as_array().unwrap() {
        assert_eq!(v["object"], "video");
        assert_eq!(v["status"], "failed");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["error"]["code"], "max_attempts_exceeded");
    }
    let (_, first) = s.get_json(ADMIN_KEY, "/v1/admin/dead_letters?limit=1").await;
    assert_eq!(
        (ids_of(&first), &first["has_more"]),
        (vec![ids[0].clone()], &Value::Bool(true))
    );
    let (_, second) = s
        .get_json(ADMIN_KEY, &format!("/v1/admin/dead_letters?limit=1&after={}", ids[0]))
        .await;
    assert_eq!(
        (ids_of(&second), &second["has_more"]),
        (vec![ids[1].clone()], &Value::Bool(false))
    );

    // Tenants may neither list nor retry; worker tokens are not API keys.
    let (st, body) = s.get_json(&tenant, "/v1/admin/dead_letters").await;
    assert_error(st, &body, 403, "forbidden");
    let (st, body) = post(&s, &tenant, &format!("/v1/admin/videos/{}/retry", ids[0])).await;
    assert_error(st, &body, 403, "forbidden");
    assert_eq!(
        s.video(&tenant, &ids[0]).await["status"],
        "failed",
        "a refused retry changed the job"
    );
    let out = videogen(
        &["jobs", "retry", &ids[0], "--server", &s.base],
        &[("VIDEOGEN_API_KEY", &tenant)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{out:?}");

    // The CLI lists them as a table.
    let table = stdout(&videogen(
        &["jobs", "dead", "--server", &s.base],
        &[("VIDEOGEN_API_KEY", ADMIN_KEY)],
    ));
    for id in &ids {
        let row = table
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .expect("a row per dead letter");
        assert!(
            row.contains("acme") && row.contains("gave up after 1 attempts"),
            "{row}"
        );
    }

    // Retry one over HTTP, the other with the CLI.
    let (st, v) = post(&s, ADMIN_KEY, &format!("/v1/admin/videos/{}/retry", ids[0])).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], ids[0].as_str());
    assert!(matches!(v["status"].as_str(), Some("queued" | "in_progress")), "{v}");
    assert_eq!(v["error"], Value::Null);
    let said = stdout(&videogen(
        &["jobs", "retry", &ids[1], "--server", &s.base],
        &[("VIDEOGEN_API_KEY", ADMIN_KEY)],
    ));
    assert!(said.starts_with(&format!("retrying {}", ids[1])), "{said}");

    // Both run again, to completion, with a new attempt number.
    for id in &ids {
        let v = s.wait_done(&tenant, id, T).await;
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["attempt"], 2, "{v}");
        assert_eq!(v["error"], Value::Null, "{v}");
        let (st, mp4) = s.content(&tenant, id, "video").await;
        assert_eq!(st, 200);
        assert!(mp4.len() > 1000, "{} bytes", mp4.len());
        let log = s.event_data(&tenant, id).await;
        let kinds: Vec<&str> = log.iter().filter_map(|e| e["type"].as_str()).collect();
        let failed = kinds.iter().position(|k| *k == "failed").expect("failed event");
        let redriven = kinds.iter().position(|k| *k == "redriven").expect("redriven event");
        assert!(failed < redriven, "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
        assert_eq!(log[redriven]["previous_error"]["code"], "max_attempts_exceeded");
        assert_eq!(log[redriven]["attempt"], 1);
    }

    // Nothing is dead any more; retrying again or an unknown id is refused.
    let (_, page) = s.get_json(ADMIN_KEY, "/v1/admin/dead_letters").await;
    assert_eq!(ids_of(&page), Vec::<String>::new());
    assert_eq!(page["has_more"], false);
    let (st, body) = post(&s, ADMIN_KEY, &format!("/v1/admin/videos/{}/retry", ids[0])).await;
    assert_error(st, &body, 409, "not_dead_lettered");
    let (st, body) = post(
        &s,
        ADMIN_KEY,
        "/v1/admin/videos/video_0123456789abcdef0123456789abcdef/retry",
    )
    .await;
    assert_error(st, &body, 404, "video_not_found");
    let empty = stdout(&videogen(
        &["jobs", "dead", "--server", &s.base],
        &[("VIDEOGEN_API_KEY", ADMIN_KEY)],
    ));
    assert_eq!(empty.trim(), "no dead-lettered jobs");
}

/// `keys list` rows of worker tokens: `(id, line)`.
fn worker_rows(dir: &Path) -> Vec<(String, String)> {
    let data_dir = dir.to_str().unwrap();
    stdout(&videogen(&["keys", "list", "--data-dir", data_dir], &[]))
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("worker"))
        .map(|l| (l.split_whitespace().next().unwrap().to_owned(), l.to_owned()))
        .collect()
}

async fn status_of(s: &Server, key: &str, path: &str) -> u16 {
    s.get_json(key, path).await.0
}

#[tokio::test]
async fn worker_tokens_come_from_the_environment_and_the_cli_and_are_not_api_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let env = [("VIDEOGEN_WORKER_TOKEN", BOOTSTRAP_WORKER_TOKEN)];
    let mut s = Server::start_with_env(dir.path(), &["--workers", "0"], &env);
    let tenant = create_key(dir.path(), "acme", "free");

    // The bootstrap token is a worker credential, and only that.
    assert_eq!(status_of(&s, BOOTSTRAP_WORKER_TOKEN, WORKER_ROUTE).await, 200);
    let (st, body) = s.get_json(BOOTSTRAP_WORKER_TOKEN, "/v1/videos").await;
    assert_error(st, &body, 401, "invalid_api_key");
    assert_eq!(body["error"]["type"], "authentication_error");
    for key in [tenant.as_str(), ADMIN_KEY] {
        let (st, body) = s.get_json(key, WORKER_ROUTE).await;
        assert_error(st, &body, 401, "invalid_api_key");
        assert_eq!(status_of(&s, key, "/v1/videos").await, 200);
    }

    // `keys create --worker`, while the server runs.
    let secret = stdout(&videogen(
        &[
            "keys",
            "create",
            "--worker",
            "--name",
            "gpu-host-1",
            "--data-dir",
            data_dir,
        ],
        &[],
    ))
    .trim()
    .to_owned();
    assert!(secret.starts_with("vgw_") && secret.len() > 20, "{secret}");
    assert_eq!(status_of(&s, &secret, WORKER_ROUTE).await, 200);
    assert_eq!(status_of(&s, &secret, "/v1/videos").await, 401);
    let refused = videogen(
        &["keys", "create", "--worker", "--tenant", "acme", "--data-dir", data_dir],
        &[],
    );
    assert!(!refused.status.success(), "a worker token has no tenant");

    // `keys list` shows both, marked as worker tokens, next to the API keys.
    let rows = worker_rows(dir.path());
    assert_eq!(rows.len(), 2, "{rows:?}");
    let boot = rows
        .iter()
        .find(|(_, l)| l.contains("bootstrap"))
        .expect("bootstrap row");
    let cli = rows.iter().find(|(_, l)| l.contains("gpu-host-1")).expect("cli row");
    assert!(
        boot.1.contains(&BOOTSTRAP_WORKER_TOKEN[..8]) && boot.1.ends_with("active"),
        "{}",
        boot.1
    );
    assert!(cli.1.contains(&secret[..8]) && cli.1.ends_with("active"), "{}", cli.1);
    assert!(boot.0.starts_with("wtok_") && cli.0.starts_with("wtok_"));
    let listing = stdout(&videogen(&["keys", "list", "--data-dir", data_dir], &[]));
    assert_eq!(listing.lines().filter(|l| l.contains(" api ")).count(), 2, "{listing}");

    // `keys revoke` works on worker tokens, at once.
    let said = stdout(&videogen(&["keys", "revoke", &cli.0, "--data-dir", data_dir], &[]));
    assert_eq!(said.trim(), format!("revoked {}", cli.0));
    assert_eq!(status_of(&s, &secret, WORKER_ROUTE).await, 401);
    assert!(
        !videogen(&["keys", "revoke", &cli.0, "--data-dir", data_dir], &[])
            .status
            .success()
    );

    // Restarts install the bootstrap token once...
    s.kill9();
    let mut s = Server::start_with_env(dir.path(), &["--workers", "0"], &env);
    let rows = worker_rows(dir.path());
    assert_eq!(
        rows.iter().filter(|(_, l)| l.contains("bootstrap")).count(),
        1,
        "{rows:?}"
    );
    assert_eq!(status_of(&s, BOOTSTRAP_WORKER_TOKEN, WORKER_ROUTE).await, 200);

    // ...and do not bring it back once revoked.
    stdout(&videogen(&["keys", "revoke", &boot.0, "--data-dir", data_dir], &[]));
    assert_eq!(status_of(&s, BOOTSTRAP_WORKER_TOKEN, WORKER_ROUTE).await, 401);
    s.kill9();
    let s = Server::start_with_env(dir.path(), &["--workers", "0"], &env);
    assert_eq!(status_of(&s, BOOTSTRAP_WORKER_TOKEN, WORKER_ROUTE).await, 401);
    let rows = worker_rows(dir.path());
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|(_, l)| l.ends_with("revoked")), "{rows:?}");
}
