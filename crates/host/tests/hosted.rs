//! `HostedModel` against real host processes of `python/videogen_host`:
//! stepping, checkpoint and resume in a fresh process, a host killed in
//! the middle of a generation, models that fail to load, a host that breaks
//! the protocol, LRU eviction. The `noop` adapter keeps most of these fast;
//! the tiny Wan pipeline runs the real diffusers path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;
use videogen_core::catalog::ModelCard;
use videogen_host::{Host, HostConfig, HostedModel, HostedSpec};
use videogen_model::{Availability, Frames, Generation, GenerationRequest, Model, ModelError};
use videogen_testkit::host::{make_tiny, patch_model_index, python};

fn config(name: &str) -> HostConfig {
    let mut c = HostConfig::python(name, python());
    c.env.push(("VIDEOGEN_HOST_THREADS".into(), "1".into()));
    // The tests drive restarts themselves: no background checks, and a
    // replacement starts at the next call.
    c.health_interval = Duration::ZERO;
    c.restart_backoff = Duration::ZERO;
    c.start_timeout = Duration::from_secs(60);
    c
}

fn spec(id: &str, adapter: &str, path: &Path) -> HostedSpec {
    HostedSpec {
        card: ModelCard {
            id: id.into(),
            ..ModelCard::reference(4)
        },
        adapter: adapter.into(),
        path: path.to_owned(),
        dtype: "float32".into(),
        memory_bytes: 10,
    }
}

fn request(width: u32, height: u32, frames: u32, steps: u32) -> GenerationRequest {
    let mut r = GenerationRequest::new("a red fox in the snow", 7, width, height, frames);
    r.steps = steps;
    r.fps = 16;
    r
}

fn run_to_end(mut g: Box<dyn Generation>) -> Vec<Vec<u8>> {
    while !g.is_done() {
        g.step().unwrap();
    }
    frames_of(g.into_frames().unwrap().as_ref())
}

fn frames_of(f: &dyn Frames) -> Vec<Vec<u8>> {
    (0..f.count()).map(|i| f.frame(i).data).collect()
}

#[test]
fn noop_generation_checkpoints_and_resumes_in_a_fresh_process() {
    let dir = tempfile::tempdir().unwrap();
    make_tiny("noop", dir.path(), &[]);
    let req = request(64, 32, 9, 6);
    let a = HostedModel::new(Host::new(config("a")), spec("noop", "noop", dir.path()));
    let full = run_to_end(a.start(&req).unwrap());
    assert_eq!(full.len(), 9);
    assert!(a.version().starts_with("sha256:"), "{}", a.version());
    assert_eq!(a.availability(), Availability::Warm);

    for k in [1, 3, 6] {
        let mut g = a.start(&req).unwrap();
        for _ in 0..k {
            g.step().unwrap();
        }
        let ck = g.checkpoint().unwrap();
        drop(g);
        // A second host: another process resumes it.
        let b = HostedModel::new(Host::new(config("b")), spec("noop", "noop", dir.path()));
        let resumed = b.resume(&req, &ck).unwrap();
        assert_eq!(resumed.steps_done(), k);
        assert_eq!(run_to_end(resumed), full, "resumed at step {k}");
        b.host().shutdown();
    }

    // Another request, or damaged bytes, are refused.
    let mut g = a.start(&req).unwrap();
    g.step().unwrap();
    let mut ck = g.checkpoint().unwrap();
    let other = request(64, 32, 9, 5);
    assert!(matches!(a.resume(&other, &ck), Err(ModelError::CheckpointMismatch(_))));
    let mid = ck.len() / 2;
    ck[mid] ^= 0x40;
    assert!(matches!(a.resume(&req, &ck), Err(ModelError::CorruptCheckpoint(_))));
    a.host().shutdown();
}

#[test]
fn a_host_killed_mid_generation_is_replaced_and_the_job_resumes() {
    let dir = tempfile::tempdir().unwrap();
    make_tiny("noop", dir.path(), &[]);
    let req = request(32, 32, 5, 5);
    let host = Host::new(config("crash"));
    let m = HostedModel::new(host.clone(), spec("noop", "noop", dir.path()));
    let want = run_to_end(m.start(&req).unwrap());

    let mut g = m.start(&req).unwrap();
    g.step().unwrap();
    g.step().unwrap();
    let ck = g.checkpoint().unwrap();
    let pid = host.pid().unwrap();
    host.kill_for_test();
    // The attempt in flight fails with a retryable error...
    let err = g.step().unwrap_err();
    assert!(
        err.is_retryable() && !matches!(err, ModelError::Unavailable(_)),
        "{err}"
    );
    assert_eq!(host.restarts(), 1);
    drop(g);
    // ...and the retry resumes from the checkpoint in a new process.
    let resumed = m.resume(&req, &ck).unwrap();
    assert_ne!(host.pid(), Some(pid));
    assert_eq!(run_to_end(resumed), want);
    host.shutdown();
}

#[test]
fn a_crash_inside_a_step_is_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    make_tiny("noop", dir.path(), &[]);
    let marker = dir.path().join("crashed-once");
    patch_model_index(
        dir.path(),
        serde_json::json!({"crash_at_step": 2, "crash_marker": marker}),
    );
    let host = Host::new(config("crash-in-step"));
    let m = HostedModel::new(host.clone(), spec("noop", "noop", dir.path()));
    let mut g = m.start(&request(32, 32, 5, 4)).unwrap();
    g.step().unwrap();
    g.step().unwrap();
    let err = g.step().unwrap_err();
    assert!(matches!(err, ModelError::Internal(_)), "{err}");
    assert!(marker.exists());
    host.shutdown();
}

#[test]
fn a_model_that_cannot_load_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = HostedModel::new(
        Host::new(config("missing")),
        spec("gone", "noop", &dir.path().join("nope")),
    );
    let err = missing.load().unwrap_err();
    assert!(matches!(err, ModelError::Unavailable(_)), "{err}");
    assert!(matches!(missing.availability(), Availability::Unavailable(_)));
    // A start fails the same way, without charging the job (Unavailable).
    assert!(matches!(
        missing.start(&request(32, 32, 5, 2)),
        Err(ModelError::Unavailable(_))
    ));

    make_tiny("noop", dir.path(), &[]);
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            std::fs::write(&p, b"not a safetensors file").unwrap();
        }
    }
    let corrupt = HostedModel::new(Host::new(config("corrupt")), spec("bad", "noop", dir.path()));
    assert!(matches!(corrupt.load(), Err(ModelError::Unavailable(_))));

    // An interpreter that is not there: the host cannot start.
    let mut cfg = config("no-python");
    cfg.program = dir.path().join("no-such-python");
    let m = HostedModel::new(Host::new(cfg), spec("x", "noop", dir.path()));
    assert!(matches!(m.load(), Err(ModelError::Unavailable(_))));
}

#[test]
fn a_host_that_breaks_the_protocol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad_host.py");
    std::fs::write(
        &script,
        "import socket, sys\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect(sys.argv[sys.argv.index('--connect') + 1])\n\
         s.sendall(b'HTTP/1.1 200 OK\\r\\n\\r\\n' + b'x' * 64)\n\
         s.recv(1)\n",
    )
    .unwrap();
    let mut cfg = config("bad");
    cfg.args = vec![script.display().to_string()];
    let m = HostedModel::new(Host::new(cfg), spec("x", "noop", dir.path()));
    let err = m.load().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("protocol") || err.to_string().contains("magic"),
        "{err}"
    );
}

#[test]
fn models_past_the_memory_budget_evict_the_least_recently_used() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_tiny("noop", d1.path(), &[]);
    make_tiny("noop", d2.path(), &["--seed", "1"]);
    let mut cfg = config("lru");
    cfg.memory_budget_bytes = Some(15);
    let host = Host::new(cfg);
    let one = HostedModel::new(host.clone(), spec("one", "noop", d1.path()));
    let two = HostedModel::new(host.clone(), spec("two", "noop", d2.path()));
    one.load().unwrap();
    assert_eq!(one.availability(), Availability::Warm);
    two.load().unwrap();
    // 10 + 10 bytes do not fit in 15: `one` went.
    assert_eq!(one.availability(), Availability::Cold);
    assert_eq!(two.availability(), Availability::Warm);
    assert_ne!(one.version(), two.version(), "different weights, different hashes");
    let ids: Vec<String> = host.loaded().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["two"]);
    host.shutdown();
}

#[test]
fn tiny_wan_resumes_bit_exactly_in_a_fresh_process() {
    let dir = tempfile::tempdir().unwrap();
    make_tiny("wan", dir.path(), &[]);
    let mut req = request(32, 32, 5, 4);
    req.guidance_scale = Some(5.0);
    req.negative_prompt = Some("blurry".into());
    let a = HostedModel::new(Host::new(config("wan-a")), spec("wan-tiny", "wan", dir.path()));
    let full = run_to_end(a.start(&req).unwrap());
    assert_eq!(full.len(), 5);
    assert_eq!(full[0].len(), 32 * 32 * 3);

    let mut g = a.start(&req).unwrap();
    g.step().unwrap();
    g.step().unwrap();
    let ck = g.checkpoint().unwrap();
    drop(g);
    let b = HostedModel::new(Host::new(config("wan-b")), spec("wan-tiny", "wan", dir.path()));
    let resumed = b.resume(&req, &ck).unwrap();
    assert_eq!(resumed.steps_done(), 2);
    assert_eq!(run_to_end(resumed), full);

    // Other weights (same config, another init seed) refuse the checkpoint.
    let other = tempfile::tempdir().unwrap();
    make_tiny("wan", other.path(), &["--seed", "1"]);
    let c = HostedModel::new(b.host().clone(), spec("wan-other", "wan", other.path()));
    assert!(matches!(c.resume(&req, &ck), Err(ModelError::CheckpointMismatch(_))));
    a.host().shutdown();
    b.host().shutdown();
}
