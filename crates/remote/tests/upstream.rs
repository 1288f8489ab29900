//! The adapter against small real HTTP servers (axum on a loopback port)
//! that play an upstream engine: scripted progress, failures, hangs,
//! content that is not a video, refusals, and an upstream that is not there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use videogen_media::Mp4Encoder;
use videogen_model::{Availability, Generation, GenerationRequest, Model, ModelError, RgbImage};
use videogen_remote::{RemoteOpenAiConfig, RemoteOpenAiModel, RequestEncoding, TOTAL_STEPS};

/// One request the upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    auth: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

/// How the upstream answers one request.
#[derive(Clone)]
enum Reply {
    Json(u16, Value),
    /// With an `openai-poll-after-ms` header.
    JsonHint(u16, Value, u64),
    Bytes(u16, &'static str, Vec<u8>),
    /// 302 to this URL.
    Redirect(String),
    /// Never answers.
    Hang,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = |s: u16| StatusCode::from_u16(s).unwrap();
        match self {
            Reply::Json(s, v) => (status(s), axum::Json(v)).into_response(),
            Reply::JsonHint(s, v, ms) => {
                (status(s), [("openai-poll-after-ms", ms.to_string())], axum::Json(v)).into_response()
            }
            Reply::Bytes(s, ct, b) => (status(s), [(header::CONTENT_TYPE, ct)], b).into_response(),
            Reply::Redirect(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
            Reply::Hang => unreachable!("handled by the handler"),
        }
    }
}

type Create = dyn Fn(&Seen, u32) -> Reply + Send + Sync;
type Poll = dyn Fn(&str, u32) -> Reply + Send + Sync;
type Content = dyn Fn(&str) -> Reply + Send + Sync;

/// The script of one upstream: create gets the request and how many
/// creates came before; poll the id and how many polls of it came before.
#[derive(Clone)]
struct Script {
    create: Arc<Create>,
    poll: Arc<Poll>,
    content: Arc<Content>,
    bucket: Arc<Content>,
}

impl Script {
    fn new() -> Self {
        Script {
            create: Arc::new(|_, n| Reply::Json(200, video(&format!("vid_{n}"), "queued", 0))),
            poll: Arc::new(|id, _| Reply::Json(200, video(id, "completed", 100))),
            content: Arc::new(|_| Reply::Bytes(200, "video/mp4", clip(64, 48, 12, 12))),
            bucket: Arc::new(|_| Reply::Json(404, json!({"detail": "no such object"}))),
        }
    }
}

fn video(id: &str, status: &str, progress: u32) -> Value {
    json!({"id": id, "object": "video", "model": "m", "status": status, "progress": progress,
           "created_at": 1, "size": "64x48", "seconds": "1"})
}

#[derive(Clone)]
struct AppState {
    script: Script,
    seen: Arc<Journal>,
    creates: Arc<AtomicU32>,
    polls: Arc<Mutex<std::collections::HashMap<String, u32>>>,
}

/// A real HTTP server on a loopback port, on its own runtime and thread.
struct Upstream {
    base: String,
    seen: Arc<Journal>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(script: Script) -> Upstream {
        let seen = Arc::new(Journal::default());
        let state = AppState {
            script,
            seen: seen.clone(),
            creates: Arc::new(AtomicU32::new(0)),
            polls: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/videos", axum::routing::post(create))
            .route("/v1/videos/{id}", get(poll).delete(delete))
            .route("/v1/videos/{id}/content", get(content))
            .route(
                "/v1/models",
                get(|| async { axum::Json(json!({"object": "list", "data": []})) }),
            )
            .route("/bucket/{name}", get(bucket))
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        let addr: SocketAddr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Upstream {
            base: format!("http://{addr}"),
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.requests.lock().unwrap().clone()
    }

    /// Waits for a request matching `method` and `path`: woken by each
    /// request the server records (a minute is only a guard against a hang).
    fn wait_for(&self, method: Method, path: &str) -> Seen {
        let guard = Instant::now() + Duration::from_secs(60);
        let mut requests = self.seen.requests.lock().unwrap();
        loop {
            if let Some(s) = requests.iter().find(|s| s.method == method && s.path == path) {
                return s.clone();
            }
            let left = guard.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {method} {path}; saw {:?}",
                requests
                    .iter()
                    .map(|s| format!("{} {}", s.method, s.path))
                    .collect::<Vec<_>>()
            );
            requests = self.seen.arrived.wait_timeout(requests, left).unwrap().0;
        }
    }
}

/// Every request the test server received, and a signal for each new one.
#[derive(Default)]
struct Journal {
    requests: Mutex<Vec<Seen>>,
    arrived: std::sync::Condvar,
}

impl Journal {
    fn push(&self, s: Seen) {
        self.requests.lock().unwrap().push(s);
        self.arrived.notify_all();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn record(State(st): State<AppState>, req: Request<Body>, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let h = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    st.seen.push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        auth: h(header::AUTHORIZATION),
        content_type: h(header::CONTENT_TYPE),
        body: bytes.clone(),
    });
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

async fn reply(r: Reply) -> Response {
    match r {
        Reply::Hang => std::future::pending().await,
        other => other.into_response(),
    }
}

async fn create(State(st): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let n = st.creates.fetch_add(1, Ordering::SeqCst);
    let seen = Seen {
        method: Method::POST,
        path: uri.path().to_owned(),
        auth: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    };
    reply((st.script.create)(&seen, n)).await
}

async fn poll(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let n = {
        let mut polls = st.polls.lock().unwrap();
        let n = polls.entry(id.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    reply((st.script.poll)(&id, n)).await
}

async fn delete(Path(id): Path<String>) -> Response {
    axum::Json(json!({"id": id, "object": "video.deleted", "deleted": true})).into_response()
}

async fn content(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    reply((st.script.content)(&id)).await
}

async fn bucket(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    reply((st.script.bucket)(&name)).await
}

/// A gradient clip from videogen's own encoder.
fn clip(w: u32, h: u32, fps: u32, n: u32) -> Vec<u8> {
    let mut enc = Mp4Encoder::new(w, h, fps).unwrap();
    for t in 0..n {
        enc.push_rgb(&pattern(w, h, t)).unwrap();
    }
    enc.finish().unwrap()
}

fn pattern(w: u32, h: u32, t: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, (t * 20) as u8]);
        }
    }
    v
}

fn config(up: &Upstream) -> RemoteOpenAiConfig {
    RemoteOpenAiConfig {
        poll_interval: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..RemoteOpenAiConfig::new(up.base.clone(), "upstream-model")
    }
}

fn request(w: u32, h: u32, frames: u32, fps: u32) -> GenerationRequest {
    let mut r = GenerationRequest::new("a red fox in the snow", 5, w, h, frames);
    r.fps = fps;
    r.steps = 30;
    r
}

fn run_to_end(g: &mut dyn Generation) -> Result<Vec<u32>, ModelError> {
    let mut seen = vec![g.steps_done()];
    while !g.is_done() {
        g.step()?;
        seen.push(g.steps_done());
    }
    Ok(seen)
}

#[test]
fn generates_with_mirrored_progress_the_poll_hint_and_a_resize() {
    let mut script = Script::new();
    script.create = Arc::new(|_, _| Reply::JsonHint(200, video("vid_a", "queued", 0), 20));
    let progress = [0u32, 10, 10, 35, 80];
    script.poll = Arc::new(move |id, n| match progress.get(n as usize) {
        Some(&p) => Reply::JsonHint(200, video(id, "in_progress", p), 20),
        None => Reply::JsonHint(200, video(id, "completed", 100), 20),
    });
    let up = Upstream::start(script);
    let cfg = RemoteOpenAiConfig {
        api_key: Some("sk-test-key".into()),
        // The upstream's 20 ms hint must win, or this test takes minutes.
        poll_interval: Duration::from_secs(30),
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    model.load().unwrap();
    assert_eq!(model.availability(), Availability::Warm);

    let mut req = request(32, 24, 12, 12);
    req.negative_prompt = Some("blurry".into());
    req.guidance_scale = Some(4.5);
    let mut g = model.start(&req).unwrap();
    assert_eq!(g.total_steps(), TOTAL_STEPS);
    assert!(!g.checkpointable());
    let steps = run_to_end(g.as_mut()).unwrap();
    // One step per change of the upstream's progress; 100 only at completed.
    assert_eq!(steps, [0, 10, 35, 80, 100]);
    g.step().unwrap(); // a no-op once done
    assert_eq!(g.steps_done(), 100);

    let frames = g.into_frames().unwrap();
    assert_eq!((frames.count(), frames.fps()), (12, 12));
    for t in 0..12 {
        let f = frames.frame(t);
        assert_eq!((f.width, f.height, f.data.len()), (32, 24, 32 * 24 * 3));
        let src = image::RgbImage::from_raw(64, 48, pattern(64, 48, t)).unwrap();
        let want = image::imageops::resize(&src, 32, 24, image::imageops::FilterType::Triangle).into_raw();
        let mae = f
            .data
            .iter()
            .zip(&want)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / want.len() as f64;
        assert!(mae < 12.0, "frame {t}: mean abs error {mae}");
    }

    let post = up.wait_for(Method::POST, "/v1/videos");
    assert_eq!(post.auth.as_deref(), Some("Bearer sk-test-key"));
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(
        body,
        json!({"prompt": "a red fox in the snow", "model": "upstream-model", "size": "32x24", "seconds": "1",
               "seed": 5, "num_inference_steps": 30, "fps": 12, "negative_prompt": "blurry", "guidance_scale": 4.5})
    );
    for s in up.seen().iter().filter(|s| s.path.starts_with("/v1/videos/")) {
        assert_eq!(s.auth.as_deref(), Some("Bearer sk-test-key"), "{} {}", s.method, s.path);
    }
    // Downloaded, so the upstream job is deleted.
    up.wait_for(Method::DELETE, "/v1/videos/vid_a");
}

#[test]
fn a_first_frame_goes_as_a_multipart_input_reference() {
    let mut script = Script::new();
    script.create = Arc::new(|seen, _| {
        let ct = seen.content_type.clone().unwrap_or_default();
        let text = String::from_utf8_lossy(&seen.body);
        let ok = ct.starts_with("multipart/form-data; boundary=")
            && text.contains("name=\"input_reference\"; filename=\"input_reference.png\"")
            && text.contains("name=\"prompt\"\r\n\r\na red fox in the snow\r\n")
            && text.contains("name=\"seconds\"\r\n\r\n1\r\n");
        if ok {
            Reply::Json(200, video("vid_i2v", "completed", 100))
        } else {
            Reply::Json(
                400,
                json!({"error": {"message": format!("bad body {ct}"), "code": "invalid"}}),
            )
        }
    });
    let up = Upstream::start(script);
    let model = RemoteOpenAiModel::new("remote", config(&up)).unwrap();
    let mut req = request(64, 48, 12, 12);
    req.first_frame = Some(RgbImage {
        width: 8,
        height: 8,
        data: vec![200; 8 * 8 * 3],
    });
    let mut g = model.start(&req).unwrap();
    // Completed at create: no polling needed.
    assert!(g.is_done());
    g.step().unwrap();
    let frames = g.into_frames().unwrap();
    assert_eq!(frames.count(), 12);
    assert!(
        up.seen()
            .iter()
            .all(|s| s.method != Method::GET || s.path != "/v1/videos/vid_i2v")
    );

    // vLLM-Omni mode: multipart without an image too.
    let mut script = Script::new();
    script.create = Arc::new(|seen, _| {
        let multipart = seen
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("multipart/form-data"));
        let status = if multipart { 200 } else { 415 };
        Reply::Json(status, video("vid_m", "queued", 0))
    });
    let up = Upstream::start(script);
    let cfg = RemoteOpenAiConfig {
        encoding: RequestEncoding::Multipart,
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let g = model.start_remote(&request(64, 48, 12, 12)).unwrap();
    assert_eq!(g.upstream_id(), "vid_m");
}

#[test]
fn failed_jobs_are_classified_and_cancelled() {
    let mut script = Script::new();
    script.poll = Arc::new(|id, _| {
        let error = match id {
            "vid_0" => json!({"code": "content_policy_violation", "message": "the prompt was blocked"}),
            "vid_1" => json!({"message": "CUDA out of memory"}), // SGLang: no code
            "vid_2" => json!({"code": 400, "message": "num_frames must be 4k+1"}), // vLLM-Omni
            _ => json!({"code": "internal_error", "message": "worker died"}),
        };
        let mut v = video(id, "failed", 0);
        v["error"] = error;
        Reply::Json(200, v)
    });
    let up = Upstream::start(script);
    let model = RemoteOpenAiModel::new("remote", config(&up)).unwrap();
    let cases = [
        ("vid_0", "invalid_request", "the prompt was blocked"),
        ("vid_1", "internal", "CUDA out of memory"),
        ("vid_2", "invalid_request", "4k+1"),
        ("vid_3", "internal", "worker died"),
    ];
    for (id, code, text) in cases {
        let mut g = model.start(&request(64, 48, 12, 12)).unwrap();
        let err = g.step().unwrap_err();
        assert_eq!(err.code(), code, "{id}: {err}");
        assert_eq!(err.is_retryable(), code == "internal", "{id}");
        assert!(err.to_string().contains(text) && err.to_string().contains(id), "{err}");
        up.wait_for(Method::DELETE, &format!("/v1/videos/{id}"));
    }
    // A failed job does not make the model unavailable.
    assert_eq!(model.availability(), Availability::Warm);
}

#[test]
fn refusals_to_create_say_whose_fault_it_is() {
    let mut script = Script::new();
    script.create = Arc::new(|_, n| match n {
        0 => Reply::Json(
            400,
            json!({"error": {"message": "Invalid size 64x48", "type": "invalid_request_error", "code": "invalid_value"}}),
        ),
        1 => Reply::Json(
            422,
            json!({"detail": [{"msg": "String should match pattern '^[1-9]\\d*$'"}]}),
        ),
        2 => Reply::Json(503, json!({"detail": "engine overloaded"})),
        3 => Reply::Bytes(502, "text/html", b"<html>Bad Gateway</html>".to_vec()),
        4 => Reply::Json(200, json!({"object": "video"})), // no id
        _ => Reply::Json(401, json!({"error": {"message": "Incorrect API key provided"}})),
    });
    let up = Upstream::start(script);
    let model = RemoteOpenAiModel::new("remote", config(&up)).unwrap();
    let req = request(64, 48, 12, 12);
    let expect = [
        ("invalid_request", "Invalid size 64x48"),
        ("invalid_request", "should match pattern"),
        ("internal", "engine overloaded"),
        ("internal", "Bad Gateway"),
        ("internal", "no string 'id'"),
        ("model_unavailable", "Incorrect API key"),
    ];
    for (i, (code, text)) in expect.into_iter().enumerate() {
        let err = model.start(&req).map(|_| ()).unwrap_err();
        assert_eq!(err.code(), code, "create {i}: {err}");
        assert!(err.to_string().contains(text), "create {i}: {err}");
    }
    // Refused credentials: the model is unavailable (the key is not the job's fault).
    assert!(matches!(model.availability(), Availability::Unavailable(r) if r.contains("credentials")));
    let err = model.load().unwrap_err();
    assert!(matches!(err, ModelError::Unavailable(_)), "{err}");
}

#[test]
fn a_job_stuck_past_the_overall_timeout_is_cancelled() {
    let mut script = Script::new();
    script.poll = Arc::new(|id, _| Reply::Json(200, video(id, "in_progress", 10)));
    let up = Upstream::start(script);
    let cfg = RemoteOpenAiConfig {
        overall_timeout: Duration::from_millis(700),
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let mut g = model.start_remote(&request(64, 48, 12, 12)).unwrap();
    let started = Instant::now();
    g.step().unwrap();
    assert_eq!(g.steps_done(), 10);
    let err = loop {
        match g.step() {
            // A guard against a hang, far beyond the 0.7 s timeout.
            Ok(()) => assert!(started.elapsed() < Duration::from_secs(60), "never timed out"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, ModelError::Internal(_)), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("not completed after"), "{err}");
    up.wait_for(Method::DELETE, "/v1/videos/vid_0");
    drop(g);
}

#[test]
fn a_poll_that_never_answers_times_out_and_cancels() {
    let mut script = Script::new();
    script.poll = Arc::new(|_, _| Reply::Hang);
    let up = Upstream::start(script);
    let cfg = RemoteOpenAiConfig {
        request_timeout: Duration::from_millis(300),
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let mut g = model.start(&request(64, 48, 12, 12)).unwrap();
    let err = g.step().unwrap_err();
    assert!(matches!(err, ModelError::Internal(_)), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    up.wait_for(Method::DELETE, "/v1/videos/vid_0");
    // A hung request is not an outage.
    assert_eq!(model.availability(), Availability::Warm);
}

#[test]
fn an_upstream_that_accepts_and_never_answers_times_out_create() {
    // A raw socket that accepts connections and never reads or writes. The
    // accept loop blocks; the test ends it by setting `stop` and connecting
    // once more itself.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let held = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                conns.push(c);
            }
            conns.len()
        })
    };
    let cfg = RemoteOpenAiConfig {
        request_timeout: Duration::from_millis(300),
        ..RemoteOpenAiConfig::new(format!("http://{addr}"), "m")
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let err = model.start(&request(64, 48, 12, 12)).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::Internal(_)), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("timed out"), "{err}");
    stop.store(true, Ordering::SeqCst);
    drop(std::net::TcpStream::connect(addr).unwrap());
    assert!(held.join().unwrap() >= 1);
}

#[test]
fn content_that_is_not_a_video_is_a_clear_error() {
    let mut script = Script::new();
    script.create = Arc::new(|_, n| Reply::Json(200, video(&format!("vid_{n}"), "completed", 100)));
    script.content = Arc::new(|id| match id {
        "vid_0" => Reply::Bytes(
            200,
            "text/html; charset=utf-8",
            b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>".to_vec(),
        ),
        "vid_1" => Reply::Bytes(
            200,
            "application/octet-stream",
            (0..=255u8).cycle().take(1024).collect(),
        ),
        "vid_2" => Reply::Json(404, json!({"detail": "Generation is still in-progress"})),
        "vid_3" => Reply::Bytes(200, "video/mp4", clip(64, 48, 12, 48)), // over max_download_bytes
        _ => {
            // An MP4 cut short: passes the sniff, fails the parse.
            let mut m = clip(64, 48, 12, 12);
            m.truncate(m.len() / 2);
            Reply::Bytes(200, "video/mp4", m)
        }
    });
    let up = Upstream::start(script);
    let small = clip(64, 48, 12, 12).len() as u64;
    let cfg = RemoteOpenAiConfig {
        max_download_bytes: small + 64,
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let expect = [
        ("internal", &["not an MP4", "DOCTYPE", "text/html"][..]),
        ("internal", &["not an MP4", "0x000102"][..]),
        ("internal", &["404", "still in-progress"][..]),
        ("invalid_request", &["too large", "max_download_bytes"][..]),
        ("internal", &["does not decode", "malformed"][..]),
    ];
    for (i, (code, texts)) in expect.into_iter().enumerate() {
        let g = model.start(&request(64, 48, 12, 12)).unwrap();
        assert!(g.is_done());
        let err = g.into_frames().map(|_| ()).unwrap_err();
        assert_eq!(err.code(), code, "vid_{i}: {err}");
        for t in texts {
            assert!(err.to_string().contains(t), "vid_{i}: {err} lacks {t:?}");
        }
        // The upstream job is cleaned up either way.
        up.wait_for(Method::DELETE, &format!("/v1/videos/vid_{i}"));
    }
}

#[test]
fn a_cloud_url_is_followed_without_the_key() {
    let mut script = Script::new();
    let port = Arc::new(Mutex::new(String::new()));
    let base = port.clone();
    script.create = Arc::new(move |_, _| {
        let mut v = video("vid_c", "completed", 100);
        v["url"] = json!(format!("{}/bucket/vid_c.mp4", base.lock().unwrap()));
        Reply::Json(200, v)
    });
    script.content = Arc::new(|_| {
        Reply::Json(
            400,
            json!({"detail": "Video has been uploaded to cloud storage. Please use the cloud URL"}),
        )
    });
    script.bucket = Arc::new(|_| Reply::Bytes(200, "video/mp4", clip(64, 48, 12, 6)));
    let up = Upstream::start(script);
    *port.lock().unwrap() = up.base.clone();
    let cfg = RemoteOpenAiConfig {
        api_key: Some("sk-secret".into()),
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let frames = model.start(&request(64, 48, 6, 12)).unwrap().into_frames().unwrap();
    assert_eq!(frames.count(), 6);
    let fetched = up.wait_for(Method::GET, "/bucket/vid_c.mp4");
    assert_eq!(fetched.auth, None, "the key went to the storage URL");
}

#[test]
fn a_content_redirect_is_followed_and_the_key_stays_home() {
    // Storage on another origin (another port), as a signed URL would be.
    let mut storage = Script::new();
    storage.bucket = Arc::new(|_| Reply::Bytes(200, "video/mp4", clip(64, 48, 12, 6)));
    let storage = Upstream::start(storage);
    let target = format!("{}/bucket/signed.mp4?sig=abc", storage.base);
    let mut script = Script::new();
    script.create = Arc::new(|_, _| Reply::Json(200, video("vid_r", "completed", 100)));
    script.content = Arc::new(move |_| Reply::Redirect(target.clone()));
    let up = Upstream::start(script);
    let cfg = RemoteOpenAiConfig {
        api_key: Some("sk-secret".into()),
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let frames = model.start(&request(64, 48, 6, 12)).unwrap().into_frames().unwrap();
    assert_eq!(frames.count(), 6);
    let first = up.wait_for(Method::GET, "/v1/videos/vid_r/content");
    assert_eq!(first.auth.as_deref(), Some("Bearer sk-secret"));
    let fetched = storage.wait_for(Method::GET, "/bucket/signed.mp4");
    assert_eq!(fetched.auth, None, "the key followed the redirect");
}

#[test]
fn an_unreachable_upstream_is_unavailable_with_backoff() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = RemoteOpenAiConfig::new(format!("http://127.0.0.1:{port}"), "m");
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    assert_eq!(model.availability(), Availability::Cold);
    let err = model.load().unwrap_err();
    assert!(matches!(err, ModelError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
    let Availability::Unavailable(reason) = model.availability() else {
        panic!("{:?}", model.availability())
    };
    assert!(reason.contains(&port.to_string()), "{reason}");
    // Within the backoff, load answers without trying again.
    assert!(matches!(model.load(), Err(ModelError::Unavailable(_))));
    // A start that cannot connect is not the job's fault either.
    let err = model.start(&request(64, 48, 12, 12)).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::Unavailable(_)), "{err}");
}

#[test]
fn dropping_an_unfinished_generation_cancels_it() {
    let mut script = Script::new();
    script.poll = Arc::new(|id, n| Reply::Json(200, video(id, "in_progress", 5 * (n + 1))));
    let up = Upstream::start(script);
    let model = RemoteOpenAiModel::new("remote", config(&up)).unwrap();
    let mut g = model.start(&request(64, 48, 12, 12)).unwrap();
    g.step().unwrap();
    assert_eq!(g.steps_done(), 5);
    let err = g.checkpoint().unwrap_err();
    assert!(
        matches!(err, ModelError::Internal(_)) && err.to_string().contains("cannot checkpoint"),
        "{err}"
    );
    let err = model.resume(&request(64, 48, 12, 12), b"ckpt").map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::CheckpointMismatch(_)), "{err}");
    assert!(up.seen().iter().all(|s| s.method != Method::DELETE));
    drop(g);
    up.wait_for(Method::DELETE, "/v1/videos/vid_0");
}

#[test]
fn a_step_without_progress_returns_in_bounded_time() {
    // SGLang reports nothing between 0 and 100: steps still come back, so
    // the runner sees stop requests.
    let mut script = Script::new();
    script.poll = Arc::new(|id, _| Reply::Json(200, video(id, "queued", 0)));
    let up = Upstream::start(script);
    let cfg = RemoteOpenAiConfig {
        poll_interval: Duration::from_millis(10),
        ..config(&up)
    };
    let model = RemoteOpenAiModel::new("remote", cfg).unwrap();
    let mut g = model.start(&request(64, 48, 12, 12)).unwrap();
    // The step comes back (after at most STEP_MAX_WAIT of polling) without
    // progress, having polled the upstream over and over meanwhile.
    g.step().unwrap();
    assert_eq!(g.steps_done(), 0);
    assert!(!g.is_done());
    let polls = up.seen().iter().filter(|s| s.method == Method::GET).count();
    assert!(polls > 1, "{polls} polls");
}
