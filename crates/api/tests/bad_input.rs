//! Bad input over HTTP, in process: every rejection is the OpenAI error
//! envelope with the right status, `type`, `code` and `param`, and a
//! rejected request leaves nothing behind (no video, no blob, no consumed
//! idempotency key). Ends with a bounded, seeded fuzz loop: no 5xx, ever.
//!
//! Requests go through the router with `tower::ServiceExt::oneshot`; only
//! the cases whose body framing is the point (a declared length the body
//! never reaches, chunked uploads past the limit) cross a real socket, to
//! the same `videogen_api::serve` the binary runs, bound to port 0. The
//! state is the binary's (SQLite store, blobs in a directory, the built-in
//! moderator, `Limits::default()`); no process adds anything here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;
use common::ADMIN_KEY;

use axum::body::Body;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use videogen_api::state::{AppState, Limits};

const BOUNDARY: &str = "vgTestBoundary7MA4YWxkTrZu0gW";
const INVALID: &str = "invalid_request_error";
const AUTH_ERROR: &str = "authentication_error";
/// `Limits::default().body_bytes_max` of the API.
const BODY_BYTES_MAX: usize = 12 * 1024 * 1024;
/// A valid 1x1 GIF.
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
const ZERO_ID: &str = "video_00000000000000000000000000000000";

// ------------------------------------------------------------ image bytes

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// zlib stream made of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(block.len()).unwrap();
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

fn png_chunk(out: &mut Vec<u8>, tag: &[u8; 4], data: &[u8]) {
    out.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
    let start = out.len();
    out.extend_from_slice(tag);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A valid 8-bit RGB PNG (a gradient), built by hand.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::with_capacity((width as usize * 3 + 1) * height as usize);
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend([(x % 256) as u8, (y % 256) as u8, 128]);
        }
    }
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", base64(bytes))
}

// --------------------------------------------------------------- multipart

enum Part<'a> {
    Text(&'a str, &'a [u8]),
    File {
        name: &'a str,
        filename: &'a str,
        content_type: &'a str,
        data: &'a [u8],
    },
}

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(format!("--{BOUNDARY}\r\n").bytes());
        match p {
            Part::Text(name, value) => {
                out.extend(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").bytes());
                out.extend_from_slice(value);
            }
            Part::File {
                name,
                filename,
                content_type,
                data,
            } => {
                out.extend(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                         Content-Type: {content_type}\r\n\r\n"
                    )
                    .bytes(),
                );
                out.extend_from_slice(data);
            }
        }
        out.extend(b"\r\n");
    }
    out.extend(format!("--{BOUNDARY}--\r\n").bytes());
    out
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

// ------------------------------------------------------------------ cases

#[derive(Clone)]
struct Case {
    name: String,
    method: Method,
    path: String,
    /// The whole `Authorization` header value; `None` sends none.
    auth: Option<String>,
    content_type: Option<String>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send over a raw socket (for bodies the server refuses mid-upload).
    raw: Option<Raw>,
    status: u16,
    kind: &'static str,
    code: &'static str,
    /// Expected `error.param`; `None` means JSON `null`.
    param: Option<&'static str>,
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>) -> Case {
        Case {
            name: name.into(),
            method,
            path: path.into(),
            auth: Some(format!("Bearer {ADMIN_KEY}")),
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
            raw: None,
            status: 400,
            kind: INVALID,
            code: "",
            param: None,
        }
    }

    fn get(name: impl Into<String>, path: impl Into<String>) -> Case {
        Case::new(name, Method::GET, path)
    }

    /// `POST /v1/videos` with a raw JSON body.
    fn json(name: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
        let mut c = Case::new(name, Method::POST, "/v1/videos");
        c.content_type = Some("application/json".into());
        c.body = body.into();
        c
    }

    fn json_value(name: impl Into<String>, v: Value) -> Case {
        Case::json(name, v.to_string())
    }

    fn multipart(name: impl Into<String>, parts: &[Part]) -> Case {
        let mut c = Case::new(name, Method::POST, "/v1/videos");
        c.content_type = Some(multipart_type());
        c.body = multipart(parts);
        c
    }

    fn expect(mut self, status: u16, code: &'static str, param: Option<&'static str>) -> Case {
        self.status = status;
        self.code = code;
        self.param = param;
        self
    }

    fn kind(mut self, kind: &'static str) -> Case {
        self.kind = kind;
        self
    }

    fn auth(mut self, auth: Option<&str>) -> Case {
        self.auth = auth.map(str::to_owned);
        self
    }

    fn content_type(mut self, ct: Option<&str>) -> Case {
        self.content_type = ct.map(str::to_owned);
        self
    }

    fn raw(mut self, raw: Raw) -> Case {
        self.raw = Some(raw);
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }
}

struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Raw {
    /// With a `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`, no length up front.
    Chunked,
    /// Declares this `Content-Length` but sends only the case's body.
    Declared(usize),
}

/// Sends `c` over a plain socket, reading the reply while the body is still
/// being written: a server may answer (413) and close before taking it all,
/// which makes HTTP clients report a broken pipe instead of the response.
fn raw_send(base: &str, c: &Case, mode: Raw) -> Result<Reply, String> {
    use std::io::{Read, Write};
    let addr = base
        .strip_prefix("http://")
        .ok_or("base is not http://")?
        .trim_end_matches('/')
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        c.method, c.path
    );
    if let Some(a) = &c.auth {
        head += &format!("Authorization: {a}\r\n");
    }
    if let Some(ct) = &c.content_type {
        head += &format!("Content-Type: {ct}\r\n");
    }
    for (k, v) in &c.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &match mode {
        Raw::Length => format!("Content-Length: {}\r\n\r\n", c.body.len()),
        Raw::Declared(n) => format!("Content-Length: {n}\r\n\r\n"),
        Raw::Chunked => "Transfer-Encoding: chunked\r\n\r\n".to_owned(),
    };
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let body = c.body.clone();
    let write = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(head.as_bytes())?;
        match mode {
            Raw::Length | Raw::Declared(_) => writer.write_all(&body)?,
            Raw::Chunked => {
                for chunk in body.chunks(64 * 1024) {
                    writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                    writer.write_all(chunk)?;
                    writer.write_all(b"\r\n")?;
                }
                writer.write_all(b"0\r\n\r\n")?;
            }
        }
        writer.flush()
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let reply = loop {
        if let Some(r) = parse_reply(&buf) {
            break Some(r);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break parse_reply(&buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = write.join(); // the server may refuse the rest: write errors are expected
    reply.ok_or_else(|| format!("no complete HTTP response; got {:?}", String::from_utf8_lossy(&buf)))
}

/// A complete response in `buf` (one with a `Content-Length`).
fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = String::new();
    let mut length = None;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = v.trim().to_owned(),
            "content-length" => length = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = &buf[end + 4..];
    let body = &body[..length?.min(body.len())];
    (body.len() == length?).then(|| Reply {
        status,
        content_type,
        body: body.to_vec(),
    })
}

// ------------------------------------------------------------ the server

/// The API as `videogen serve --workers 0` builds it, in this process.
struct Server {
    router: axum::Router,
    state: AppState,
    /// `http://127.0.0.1:port` of the same state served on a socket, for the
    /// raw cases.
    base: String,
    /// Blobs live under `data_dir/blobs`, as in the binary.
    data_dir: PathBuf,
    stop: CancellationToken,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_owned();
        let state = common::state(&data_dir, Limits::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(videogen_api::serve(
            listener,
            state.clone(),
            stop.clone().cancelled_owned(),
        ));
        Server {
            router: videogen_api::router(state.clone()),
            state,
            base,
            data_dir,
            stop,
            _dir: dir,
        }
    }

    /// One request through the router, as a client would send it: the path
    /// normalised like a URL, `Host` and `Content-Length` set.
    async fn oneshot(&self, req: axum::http::request::Builder, body: Vec<u8>) -> Result<Reply, String> {
        let mut req = req.header("host", self.base.trim_start_matches("http://"));
        if !body.is_empty() {
            req = req.header("content-length", body.len());
        }
        let req = req.body(Body::from(body)).map_err(|e| format!("request: {e}"))?;
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| format!("router: {e}"))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = tokio::time::timeout(
            Duration::from_secs(60),
            axum::body::to_bytes(resp.into_body(), usize::MAX),
        )
        .await
        .map_err(|_| "the body never ended".to_owned())?
        .map_err(|e| format!("reading the body failed: {e:?}"))?
        .to_vec();
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    async fn get_json(&self, key: &str, path: &str) -> (u16, Value) {
        let req = axum::http::Request::get(uri(path).unwrap()).header("authorization", format!("Bearer {key}"));
        let r = self.oneshot(req, Vec::new()).await.unwrap();
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    async fn submit(&self, key: &str, body: Value) -> (u16, Value) {
        let req = axum::http::Request::post("/v1/videos")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json");
        let r = self.oneshot(req, body.to_string().into_bytes()).await.unwrap();
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    async fn video(&self, key: &str, id: &str) -> Value {
        let (s, v) = self.get_json(key, &format!("/v1/videos/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn completed_video(&self) -> String {
        common::completed_video(&self.state).await
    }
}

/// A path as a client sends it: parsed and normalised like a URL.
fn uri(path: &str) -> Result<axum::http::Uri, String> {
    let url = reqwest::Url::parse(&format!("http://127.0.0.1{path}")).map_err(|e| format!("bad path {path:?}: {e}"))?;
    let pq = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    pq.parse().map_err(|e| format!("bad path {pq:?}: {e}"))
}

fn body(prompt: &str, seed: u64) -> Value {
    json!({ "model": "videogen-ref", "prompt": prompt, "seconds": "4", "size": "720x1280", "seed": seed })
}

use videogen_testkit::files::blob_files;

async fn send(s: &Server, c: &Case) -> Result<Reply, String> {
    if let Some(mode) = c.raw {
        let base = s.base.clone();
        let c = c.clone();
        return tokio::task::spawn_blocking(move || raw_send(&base, &c, mode))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut req = axum::http::Request::builder()
        .method(c.method.clone())
        .uri(uri(&c.path)?);
    if let Some(a) = &c.auth {
        req = req.header("Authorization", a);
    }
    if let Some(ct) = &c.content_type {
        req = req.header("Content-Type", ct);
    }
    for (k, v) in &c.headers {
        req = req.header(*k, v);
    }
    s.oneshot(req, c.body.clone()).await
}

/// Checks that `r` is exactly OpenAI's envelope and returns its `error`.
fn envelope(r: &Reply) -> Result<Value, String> {
    let shown = String::from_utf8_lossy(&r.body[..r.body.len().min(400)]).into_owned();
    if !r.content_type.starts_with("application/json") {
        return Err(format!("content-type {:?}, not JSON; body {shown:?}", r.content_type));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("body is not JSON ({e}): {shown:?}"))?;
    let obj = v.as_object().ok_or_else(|| format!("body is not an object: {shown}"))?;
    if obj.len() != 1 || !obj.contains_key("error") {
        return Err(format!("body is not {{\"error\": ...}}: {shown}"));
    }
    let e = obj["error"]
        .as_object()
        .ok_or_else(|| format!("error is not an object: {shown}"))?;
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["code", "message", "param", "type"] {
        return Err(format!("error has keys {keys:?}: {shown}"));
    }
    if e["message"].as_str().is_none_or(str::is_empty) {
        return Err(format!("error.message is not a non-empty string: {shown}"));
    }
    if !e["type"].is_string() || !e["code"].is_string() {
        return Err(format!("error.type and error.code must be strings: {shown}"));
    }
    if !(e["param"].is_null() || e["param"].is_string()) {
        return Err(format!("error.param must be null or a string: {shown}"));
    }
    Ok(obj["error"].clone())
}

async fn check(s: &Server, c: &Case) -> Result<(), String> {
    let r = send(s, c).await?;
    let shown = String::from_utf8_lossy(&r.body[..r.body.len().min(400)]).into_owned();
    if r.status != c.status {
        return Err(format!("status {} (expected {}): {shown}", r.status, c.status));
    }
    let e = envelope(&r)?;
    let want_param = c.param.map_or(Value::Null, |p| Value::String(p.into()));
    if e["type"] != c.kind || e["code"] != c.code || e["param"] != want_param {
        return Err(format!(
            "got type={} code={} param={}, expected type={} code={} param={want_param}",
            e["type"], e["code"], e["param"], c.kind, c.code
        ));
    }
    Ok(())
}

/// Runs every case and fails once, listing every mismatch.
async fn run_all(s: &Server, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        if let Err(why) = check(s, c).await {
            failures.push(format!("[{}] {} {}: {why}", c.name, c.method, c.path));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

async fn assert_nothing_left(s: &Server) {
    for q in ["/v1/videos?limit=100", "/v1/videos?limit=100&order=asc"] {
        let (st, page) = s.get_json(ADMIN_KEY, q).await;
        assert_eq!(st, 200, "{page}");
        assert_eq!(
            page["data"].as_array().map(Vec::len),
            Some(0),
            "a rejected request created a video: {page}"
        );
        assert_eq!(page["has_more"], false);
    }
    let files = blob_files(&s.data_dir);
    assert!(files.is_empty(), "a rejected request left bytes behind: {files:?}");
}

fn valid_json() -> Value {
    json!({"prompt": "a quiet harbour at dawn", "model": "videogen-ref", "seconds": "4", "size": "720x1280"})
}

fn with(field: &str, v: Value) -> Value {
    let mut b = valid_json();
    b[field] = v;
    b
}

fn without(field: &str) -> Value {
    let mut b = valid_json();
    b.as_object_mut().unwrap().remove(field);
    b
}

fn json_cases(no_fetch_url: &str) -> Vec<Case> {
    let png8 = png(8, 8);
    let truncated = &png8[..png8.len() / 2];
    let image_url = |url: String| with("input_reference", json!({ "image_url": url }));
    vec![
        Case::json_value("missing prompt", without("prompt")).expect(400, "missing_required_parameter", Some("prompt")),
        Case::json_value("empty prompt", with("prompt", json!(""))).expect(400, "invalid_value", Some("prompt")),
        Case::json_value("whitespace prompt", with("prompt", json!(" \n\t  "))).expect(
            400,
            "invalid_value",
            Some("prompt"),
        ),
        Case::json_value("prompt of 4001 chars", with("prompt", json!("a".repeat(4001)))).expect(
            400,
            "invalid_value",
            Some("prompt"),
        ),
        Case::json_value(
            "prompt of 4001 multibyte chars",
            with("prompt", json!("é".repeat(4001))),
        )
        .expect(400, "invalid_value", Some("prompt")),
        Case::json_value("prompt with BEL", with("prompt", json!("a bell \u{7} rings"))).expect(
            400,
            "invalid_value",
            Some("prompt"),
        ),
        Case::json_value("prompt with NUL", with("prompt", json!("nul \u{0} byte"))).expect(
            400,
            "invalid_value",
            Some("prompt"),
        ),
        Case::json_value("prompt is a number", with("prompt", json!(42))).expect(400, "invalid_type", Some("prompt")),
        Case::json_value("prompt is null", with("prompt", Value::Null)).expect(400, "invalid_type", Some("prompt")),
        Case::json_value("seconds is a bool", with("seconds", json!(true))).expect(
            400,
            "invalid_type",
            Some("seconds"),
        ),
        Case::json_value("size is a number", with("size", json!(720))).expect(400, "invalid_type", Some("size")),
        Case::json_value("model is a number", with("model", json!(2))).expect(400, "invalid_type", Some("model")),
        // Well-formed, but not a duration or size this model makes.
        Case::json_value("seconds \"5\"", with("seconds", json!("5"))).expect(
            400,
            "unsupported_by_model",
            Some("seconds"),
        ),
        Case::json_value("seconds 7", with("seconds", json!(7))).expect(400, "unsupported_by_model", Some("seconds")),
        Case::json_value("seconds 0", with("seconds", json!("0"))).expect(400, "invalid_value", Some("seconds")),
        Case::json_value("size 641x480", with("size", json!("641x480"))).expect(400, "invalid_value", Some("size")),
        Case::json_value("num_inference_steps 0", with("num_inference_steps", json!(0))).expect(
            400,
            "invalid_value",
            Some("num_inference_steps"),
        ),
        Case::json_value(
            "num_inference_steps a string",
            with("num_inference_steps", json!("many")),
        )
        .expect(400, "invalid_type", Some("num_inference_steps")),
        Case::json_value(
            "guidance_scale on a model without it",
            with("guidance_scale", json!(5.0)),
        )
        .expect(400, "unsupported_by_model", Some("guidance_scale")),
        Case::json_value(
            "negative_prompt on a model without it",
            with("negative_prompt", json!("blur")),
        )
        .expect(400, "unsupported_by_model", Some("negative_prompt")),
        Case::json_value("fps the model does not make", with("fps", json!(30))).expect(
            400,
            "invalid_value",
            Some("fps"),
        ),
        Case::json_value("seconds 4.0", with("seconds", json!(4.0))).expect(400, "invalid_value", Some("seconds")),
        Case::json_value("size 640x480", with("size", json!("640x480"))).expect(
            400,
            "unsupported_by_model",
            Some("size"),
        ),
        Case::json_value("unknown model sora-2", with("model", json!("sora-2"))).expect(
            400,
            "invalid_value",
            Some("model"),
        ),
        Case::json_value("empty model", with("model", json!(""))).expect(400, "invalid_value", Some("model")),
        Case::json_value("style of 65 chars", with("style", json!("s".repeat(65)))).expect(
            400,
            "invalid_value",
            Some("style"),
        ),
        Case::json_value("empty style", with("style", json!(""))).expect(400, "invalid_value", Some("style")),
        Case::json_value("style with control char", with("style", json!("noir\u{1b}[0m"))).expect(
            400,
            "invalid_value",
            Some("style"),
        ),
        Case::json_value("seed -1", with("seed", json!(-1))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed 2^53", with("seed", json!(1u64 << 53))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed u64::MAX", with("seed", json!(u64::MAX))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed 1.5", with("seed", json!(1.5))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed \"abc\"", with("seed", json!("abc"))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed is a bool", with("seed", json!(true))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed \"+5\"", with("seed", json!("+5"))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("seed \"\"", with("seed", json!(""))).expect(400, "invalid_seed", Some("seed")),
        Case::json_value("unknown field", with("colour", json!("red"))).expect(
            400,
            "unknown_parameter",
            Some("colour"),
        ),
        Case::json("array, not an object", "[1, 2]").expect(400, "invalid_json", None),
        Case::json("string, not an object", "\"a prompt\"").expect(400, "invalid_json", None),
        Case::json("null, not an object", "null").expect(400, "invalid_json", None),
        Case::json("invalid JSON", "{\"prompt\": ").expect(400, "invalid_json", None),
        Case::json("trailing garbage", "{\"prompt\": \"x\"} {}").expect(400, "invalid_json", None),
        Case::json("not UTF-8", b"{\"prompt\": \"\xff\xfe\"}".to_vec()).expect(400, "invalid_json", None),
        Case::json("empty body", "").expect(400, "invalid_json", None),
        Case::json("deeply nested", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))).expect(
            400,
            "invalid_json",
            None,
        ),
        Case::json_value(
            "input_reference http URL is not fetched",
            image_url(no_fetch_url.to_owned()),
        )
        .expect(400, "invalid_image_url", Some("input_reference.image_url")),
        Case::json_value(
            "input_reference metadata URL",
            image_url("http://169.254.169.254/latest/meta-data".into()),
        )
        .expect(400, "invalid_image_url", Some("input_reference.image_url")),
        Case::json_value("input_reference file URL", image_url("file:///etc/passwd".into())).expect(
            400,
            "invalid_image_url",
            Some("input_reference.image_url"),
        ),
        Case::json_value(
            "input_reference file_id",
            with("input_reference", json!({"file_id": "file-abc123"})),
        )
        .expect(400, "unsupported_parameter", Some("input_reference.file_id")),
        Case::json_value("input_reference without image_url", with("input_reference", json!({}))).expect(
            400,
            "missing_required_parameter",
            Some("input_reference"),
        ),
        Case::json_value(
            "input_reference unknown key",
            with("input_reference", json!({"url": "x"})),
        )
        .expect(400, "unknown_parameter", Some("input_reference.url")),
        Case::json_value(
            "input_reference is a string",
            with("input_reference", json!("data:image/png;base64,AAAA")),
        )
        .expect(400, "invalid_type", Some("input_reference")),
        Case::json_value(
            "data URL not base64",
            image_url("data:image/png;base64,!!not*base64$$".into()),
        )
        .expect(400, "invalid_image_url", Some("input_reference.image_url")),
        Case::json_value("data URL without ;base64", image_url("data:image/png,rawbytes".into())).expect(
            400,
            "invalid_image_url",
            Some("input_reference.image_url"),
        ),
        Case::json_value("data URL without comma", image_url("data:image/png;base64".into())).expect(
            400,
            "invalid_image_url",
            Some("input_reference.image_url"),
        ),
        Case::json_value("data URL of a GIF", image_url(data_url("image/gif", GIF))).expect(
            400,
            "invalid_image_format",
            Some("input_reference"),
        ),
        Case::json_value("GIF data URL labelled PNG", image_url(data_url("image/png", GIF))).expect(
            400,
            "invalid_image_format",
            Some("input_reference"),
        ),
        Case::json_value(
            "data URL of a truncated PNG",
            image_url(data_url("image/png", truncated)),
        )
        .expect(400, "invalid_image", Some("input_reference")),
        Case::json_value("data URL of an empty image", image_url("data:image/png;base64,".into())).expect(
            400,
            "invalid_image_format",
            Some("input_reference"),
        ),
        Case::json_value(
            "data URL of a 4097x1 PNG",
            image_url(data_url("image/png", &png(4097, 1))),
        )
        .expect(400, "invalid_image_dimensions", Some("input_reference")),
        // Valid image, invalid prompt: nothing may be uploaded.
        Case::json_value("valid image but empty prompt", {
            let mut b = image_url(data_url("image/png", &png8));
            b["prompt"] = json!("");
            b
        })
        .expect(400, "invalid_value", Some("prompt")),
    ]
}

fn multipart_cases() -> Vec<Case> {
    let png8 = png(8, 8);
    let wide = png(4097, 1);
    let tall = png(1, 4097);
    let ok_prompt = Part::Text("prompt", b"a quiet harbour at dawn");
    let file = |filename: &'static str, content_type: &'static str, data: &'static [u8]| Part::File {
        name: "input_reference",
        filename,
        content_type,
        data,
    };
    let wide: &'static [u8] = wide.leak();
    let tall: &'static [u8] = tall.leak();
    let png8: &'static [u8] = png8.leak();
    let mut cases = vec![
        Case::multipart("multipart: missing prompt", &[Part::Text("model", b"videogen-ref")]).expect(
            400,
            "missing_required_parameter",
            Some("prompt"),
        ),
        Case::multipart("multipart: no fields at all", &[]).expect(400, "missing_required_parameter", Some("prompt")),
        Case::multipart(
            "multipart: duplicate prompt",
            &[Part::Text("prompt", b"one"), Part::Text("prompt", b"two")],
        )
        .expect(400, "duplicate_parameter", Some("prompt")),
        Case::multipart(
            "multipart: unknown field",
            &[Part::Text("prompt", b"x"), Part::Text("colour", b"red")],
        )
        .expect(400, "unknown_parameter", Some("colour")),
        Case::multipart("multipart: empty prompt", &[Part::Text("prompt", b"")]).expect(
            400,
            "invalid_value",
            Some("prompt"),
        ),
        Case::multipart("multipart: prompt not UTF-8", &[Part::Text("prompt", b"caf\xe9")]).expect(
            400,
            "invalid_encoding",
            Some("prompt"),
        ),
        Case::multipart(
            "multipart: seconds 5",
            &[Part::Text("prompt", b"x"), Part::Text("seconds", b"5")],
        )
        .expect(400, "unsupported_by_model", Some("seconds")),
        Case::multipart(
            "multipart: seed abc",
            &[Part::Text("prompt", b"x"), Part::Text("seed", b"abc")],
        )
        .expect(400, "invalid_seed", Some("seed")),
        Case::multipart(
            "multipart: model sora-2",
            &[Part::Text("prompt", b"x"), Part::Text("model", b"sora-2")],
        )
        .expect(400, "invalid_value", Some("model")),
        Case::multipart(
            "multipart: input_reference as a text field",
            &[Part::Text("prompt", b"x"), Part::Text("input_reference", png8)],
        )
        .expect(400, "invalid_type", Some("input_reference")),
        Case::multipart(
            "multipart: GIF file",
            &[Part::Text("prompt", b"x"), file("x.gif", "image/gif", GIF)],
        )
        .expect(400, "invalid_image_format", Some("input_reference")),
        Case::multipart(
            "multipart: GIF named .png",
            &[Part::Text("prompt", b"x"), file("x.png", "image/png", GIF)],
        )
        .expect(400, "invalid_image_format", Some("input_reference")),
        Case::multipart(
            "multipart: garbage file",
            &[
                Part::Text("prompt", b"x"),
                file("x.png", "image/png", b"this is not an image at all"),
            ],
        )
        .expect(400, "invalid_image_format", Some("input_reference")),
        Case::multipart(
            "multipart: empty file",
            &[Part::Text("prompt", b"x"), file("x.png", "image/png", b"")],
        )
        .expect(400, "invalid_image_format", Some("input_reference")),
        Case::multipart(
            "multipart: truncated PNG",
            &[
                Part::Text("prompt", b"x"),
                file("x.png", "image/png", &png8[..png8.len() / 2]),
            ],
        )
        .expect(400, "invalid_image", Some("input_reference")),
        Case::multipart(
            "multipart: 4097x1 PNG",
            &[Part::Text("prompt", b"x"), file("w.png", "image/png", wide)],
        )
        .expect(400, "invalid_image_dimensions", Some("input_reference")),
        Case::multipart(
            "multipart: 1x4097 PNG",
            &[Part::Text("prompt", b"x"), file("t.png", "image/png", tall)],
        )
        .expect(400, "invalid_image_dimensions", Some("input_reference")),
        Case::multipart(
            "multipart: image_url http",
            &[
                Part::Text("prompt", b"x"),
                Part::Text("input_reference[image_url]", b"http://127.0.0.1:1/x.png"),
            ],
        )
        .expect(400, "invalid_image_url", Some("input_reference.image_url")),
        Case::multipart(
            "multipart: file_id",
            &[
                Part::Text("prompt", b"x"),
                Part::Text("input_reference[file_id]", b"file-abc"),
            ],
        )
        .expect(400, "unsupported_parameter", Some("input_reference.file_id")),
        Case::multipart(
            "multipart: valid image, bad size after it",
            &[
                file("ok.png", "image/png", png8),
                ok_prompt,
                Part::Text("size", b"640x480"),
            ],
        )
        .expect(400, "unsupported_by_model", Some("size")),
        Case::multipart(
            "multipart: text field over 64 KiB",
            &[Part::Text("prompt", "p".repeat(70_000).as_bytes())],
        )
        .expect(400, "field_too_large", Some("prompt")),
        Case::json("multipart: no boundary", "--x\r\n")
            .content_type(Some("multipart/form-data"))
            .expect(400, "invalid_multipart", None),
        Case::json("multipart: garbage body", "this is not multipart")
            .content_type(Some(&multipart_type()))
            .expect(400, "invalid_multipart", None),
        {
            let mut body = multipart(&[Part::Text("prompt", b"x")]);
            body.truncate(body.len() - 10);
            Case::json("multipart: unterminated", body)
                .content_type(Some(&multipart_type()))
                .expect(400, "invalid_multipart", None)
        },
    ];
    // A file over the 10 MiB image limit in a body under the 12 MiB body limit.
    let big = png(2000, 1800);
    assert!(
        big.len() > 10 * 1024 * 1024 && big.len() < BODY_BYTES_MAX - 4096,
        "{}",
        big.len()
    );
    cases.push(
        Case::multipart(
            "multipart: 10.3 MiB image",
            &[Part::Text("prompt", b"x"), file("big.png", "image/png", big.leak())],
        )
        .expect(413, "request_too_large", Some("input_reference")),
    );
    cases
}

fn transport_and_auth_cases() -> Vec<Case> {
    let valid = valid_json().to_string();
    let post_valid = |name: &str| Case::json(name, valid.clone());
    vec![
        Case::json("body over 12 MiB", vec![b' '; BODY_BYTES_MAX + 1])
            .raw(Raw::Length)
            .expect(413, "request_too_large", None),
        Case::json("chunked body over 12 MiB", vec![b' '; BODY_BYTES_MAX + 1])
            .raw(Raw::Chunked)
            .expect(413, "request_too_large", None),
        Case::json("declared length over 12 MiB, short body", valid_json().to_string())
            .raw(Raw::Declared(BODY_BYTES_MAX + 1))
            .expect(413, "request_too_large", None),
        post_valid("text/plain")
            .content_type(Some("text/plain"))
            .expect(415, "unsupported_media_type", None),
        post_valid("no content type")
            .content_type(None)
            .expect(415, "unsupported_media_type", None),
        post_valid("form-urlencoded")
            .content_type(Some("application/x-www-form-urlencoded"))
            .expect(415, "unsupported_media_type", None),
        post_valid("application/jsonfoo")
            .content_type(Some("application/jsonfoo"))
            .expect(415, "unsupported_media_type", None),
        post_valid("multipart/form-datax")
            .content_type(Some("multipart/form-datax; boundary=x"))
            .expect(415, "unsupported_media_type", None),
        Case::json(
            "duplicate JSON key",
            r#"{"model":"videogen-ref","prompt":"x","prompt":"y","seconds":"4","size":"720x1280"}"#,
        )
        .expect(400, "duplicate_parameter", Some("prompt")),
        post_valid("Idempotency-Key of 300 chars")
            .header("Idempotency-Key", "k".repeat(300))
            .expect(400, "invalid_idempotency_key", Some("Idempotency-Key")),
        post_valid("blank Idempotency-Key")
            .header("Idempotency-Key", "   ")
            .expect(400, "invalid_idempotency_key", Some("Idempotency-Key")),
        post_valid("no Authorization")
            .auth(None)
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        post_valid("Bearer wrong")
            .auth(Some("Bearer wrong"))
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        post_valid("Basic xyz")
            .auth(Some("Basic xyz"))
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        post_valid("empty bearer")
            .auth(Some("Bearer "))
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        post_valid("raw key, no scheme")
            .auth(Some(ADMIN_KEY))
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        post_valid("bearer of 300 chars")
            .auth(Some(&format!("Bearer {}", "k".repeat(300))))
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        Case::get("list without Authorization", "/v1/videos")
            .auth(None)
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
        Case::get("retrieve with Bearer wrong", format!("/v1/videos/{ZERO_ID}"))
            .auth(Some("Bearer wrong"))
            .expect(401, "invalid_api_key", None)
            .kind(AUTH_ERROR),
    ]
}

fn id_list_route_cases() -> Vec<Case> {
    let nf = |c: Case| c.expect(404, "video_not_found", Some("video_id"));
    let list = |q: &str| Case::get(format!("list ?{q}"), format!("/v1/videos?{q}"));
    vec![
        nf(Case::get("retrieve not-an-id", "/v1/videos/not-an-id")),
        nf(Case::get("retrieve zero id", format!("/v1/videos/{ZERO_ID}"))),
        nf(Case::get(
            "retrieve uppercase id",
            format!("/v1/videos/{}", ZERO_ID.to_uppercase()),
        )),
        nf(Case::get(
            "retrieve over-long id",
            format!("/v1/videos/video_{}", "0".repeat(500)),
        )),
        nf(Case::get("retrieve percent-encoded junk id", "/v1/videos/%20%27%22%3B")),
        nf(Case::get("retrieve non-UTF-8 id", "/v1/videos/%FF%FE")),
        nf(Case::get("content of non-UTF-8 id", "/v1/videos/%FF/content")),
        nf(Case::new(
            "delete zero id",
            Method::DELETE,
            format!("/v1/videos/{ZERO_ID}"),
        )),
        nf(Case::new("delete not-an-id", Method::DELETE, "/v1/videos/not-an-id")),
        nf(Case::new(
            "cancel zero id",
            Method::POST,
            format!("/v1/videos/{ZERO_ID}/cancel"),
        )),
        nf(Case::get("content of zero id", format!("/v1/videos/{ZERO_ID}/content"))),
        nf(Case::get("events of zero id", format!("/v1/videos/{ZERO_ID}/events"))),
        list("limit=0").expect(400, "invalid_value", Some("limit")),
        list("limit=101").expect(400, "invalid_value", Some("limit")),
        list("limit=abc").expect(400, "invalid_value", Some("limit")),
        list("limit=-1").expect(400, "invalid_value", Some("limit")),
        list("limit=").expect(400, "invalid_value", Some("limit")),
        list("limit=99999999999999999999").expect(400, "invalid_value", Some("limit")),
        list("order=sideways").expect(400, "invalid_value", Some("order")),
        list("after=garbage").expect(400, "invalid_value", Some("after")),
        list("foo=1").expect(400, "unknown_parameter", Some("foo")),
        list("limit=1&limit=2").expect(400, "duplicate_parameter", Some("limit")),
        Case::get("content ?foo=1", format!("/v1/videos/{ZERO_ID}/content?foo=1")).expect(
            400,
            "unknown_parameter",
            Some("foo"),
        ),
        Case::get("unknown route /v1/nope", "/v1/nope").expect(404, "not_found", None),
        Case::get("unknown route /nope", "/nope").expect(404, "not_found", None),
        Case::get("unknown route /v2/videos", "/v2/videos").expect(404, "not_found", None),
        Case::get("unknown sub-resource", format!("/v1/videos/{ZERO_ID}/remix")).expect(404, "not_found", None),
        Case::get("unknown route, no auth", "/v1/nope")
            .auth(None)
            .expect(404, "not_found", None),
        Case::new("PUT /v1/videos", Method::PUT, "/v1/videos").expect(405, "method_not_allowed", None),
        Case::new("DELETE /v1/videos", Method::DELETE, "/v1/videos").expect(405, "method_not_allowed", None),
        Case::new("PATCH a video", Method::PATCH, format!("/v1/videos/{ZERO_ID}")).expect(
            405,
            "method_not_allowed",
            None,
        ),
        Case::get("GET cancel", format!("/v1/videos/{ZERO_ID}/cancel")).expect(405, "method_not_allowed", None),
        Case::new("PUT /healthz", Method::PUT, "/healthz").expect(405, "method_not_allowed", None),
        Case::new("POST /readyz", Method::POST, "/readyz").expect(405, "method_not_allowed", None),
    ]
}

#[tokio::test]
async fn bad_requests_get_the_openai_error_envelope_and_leave_nothing_behind() {
    let s = Server::start().await;
    // A remote image URL must be refused without being fetched: nothing may
    // connect to this listener.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/image.png", trap.local_addr().unwrap());

    let mut cases = json_cases(&trap_url);
    cases.extend(multipart_cases());
    cases.extend(transport_and_auth_cases());
    cases.extend(id_list_route_cases());
    run_all(&s, &cases).await;

    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the server fetched a remote input_reference URL: {other:?}"),
    }
    assert_nothing_left(&s).await;
}

async fn accepted(s: &Server, c: Case) -> Value {
    let r = send(s, &c).await.unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!(r.status, 200, "[{}] {v}", c.name);
    assert_eq!(v["status"], "queued", "[{}] {v}", c.name);
    v
}

/// Limits are inclusive, images are judged by content not name, and a
/// rejected request does not consume its Idempotency-Key.
#[tokio::test]
async fn edge_values_are_accepted_and_rejections_do_not_consume_idempotency_keys() {
    let s = Server::start().await;
    let ok = |c: Case| accepted(&s, c);
    let v = ok(Case::json_value(
        "prompt of 4000 chars",
        with("prompt", json!("a".repeat(4000))),
    ))
    .await;
    assert_eq!(v["prompt"].as_str().unwrap().len(), 4000);
    ok(Case::json_value(
        "prompt of 4000 multibyte chars",
        with("prompt", json!("é".repeat(4000))),
    ))
    .await;
    ok(Case::json_value(
        "style of 64 chars",
        with("style", json!("s".repeat(64))),
    ))
    .await;
    let v = ok(Case::json_value("seed 2^53-1", with("seed", json!((1u64 << 53) - 1)))).await;
    assert_eq!(v["seed"], (1u64 << 53) - 1);
    ok(Case::json_value("seconds 12 as a number", with("seconds", json!(12)))).await;
    ok(Case::json_value(
        "4096x1 PNG",
        with(
            "input_reference",
            json!({"image_url": data_url("image/png", &png(4096, 1))}),
        ),
    ))
    .await;
    assert_eq!(
        blob_files(&s.data_dir).len(),
        1,
        "the accepted input reference is stored"
    );

    // A PNG sent as x.jpg with image/jpeg: the bytes decide, not the name.
    let png16 = png(16, 16);
    let as_jpg = Part::File {
        name: "input_reference",
        filename: "x.jpg",
        content_type: "image/jpeg",
        data: &png16,
    };
    ok(Case::multipart(
        "PNG named x.jpg",
        &[Part::Text("prompt", b"named wrongly"), as_jpg],
    ))
    .await;
    let files = blob_files(&s.data_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        assert!(
            std::fs::read(f).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"),
            "{f:?} is not the re-encoded PNG"
        );
    }

    // A rejected request with an Idempotency-Key does not consume the key.
    let keyed = |name: &str, body: Value| {
        let mut c = Case::json_value(name, body);
        c.headers.push(("Idempotency-Key", "retry-after-fixing-it".into()));
        c
    };
    let bad = keyed("keyed, bad", with("size", json!("640x480"))).expect(400, "unsupported_by_model", Some("size"));
    check(&s, &bad).await.unwrap();
    let png_body = with(
        "input_reference",
        json!({"image_url": data_url("image/png", &png(8, 8))}),
    );
    let first = ok(keyed("keyed, fixed", png_body.clone())).await;
    let files = blob_files(&s.data_dir);
    assert_eq!(files.len(), 3, "{files:?}");
    // A replay returns the same video and leaves no second upload behind.
    let replay = ok(keyed("keyed, replay", png_body.clone())).await;
    assert_eq!(replay["id"], first["id"]);
    assert_eq!(blob_files(&s.data_dir), files, "a replay left its upload behind");
    // A different body under the same key: 409, and its upload is removed.
    let other_png = with(
        "input_reference",
        json!({"image_url": data_url("image/png", &png(9, 9))}),
    );
    let conflict = keyed("keyed, different body", other_png).expect(409, "idempotency_key_reused", None);
    check(&s, &conflict).await.unwrap();
    assert_eq!(
        blob_files(&s.data_dir),
        files,
        "a refused request left its upload behind"
    );
    let (_, page) = s.get_json(ADMIN_KEY, "/v1/videos?limit=100").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 8, "{page}");
}

/// Content and events errors need an existing video.
#[tokio::test]
async fn content_and_events_of_existing_videos_reject_bad_input() {
    let s = Server::start().await;
    let id = s.completed_video().await;
    let done = s.video(ADMIN_KEY, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let content = |q: &str| Case::get(format!("content ?{q}"), format!("/v1/videos/{id}/content?{q}"));
    let events = |name: &str, last: &str| {
        Case::get(name, format!("/v1/videos/{id}/events"))
            .header("Last-Event-ID", last)
            .expect(400, "invalid_value", Some("Last-Event-ID"))
    };
    let cases = vec![
        content("variant=gif").expect(400, "invalid_value", Some("variant")),
        content("variant=").expect(400, "invalid_value", Some("variant")),
        content("variant=VIDEO").expect(400, "invalid_value", Some("variant")),
        content("variant=video&variant=thumbnail").expect(400, "duplicate_parameter", Some("variant")),
        content("size=1").expect(400, "unknown_parameter", Some("size")),
        content("variant=video")
            .header("Range", "bytes=999999999-")
            .expect(416, "range_not_satisfiable", None),
        content("variant=thumbnail")
            .header("Range", "bytes=5-2")
            .expect(416, "range_not_satisfiable", None),
        events("Last-Event-ID: abc", "abc"),
        events("Last-Event-ID: -1", "-1"),
        events("Last-Event-ID: 1.5", "1.5"),
        Case::new(
            "cancel a completed video",
            Method::POST,
            format!("/v1/videos/{id}/cancel"),
        )
        .expect(409, "invalid_state", None),
    ];
    run_all(&s, &cases).await;
}

#[tokio::test]
async fn content_of_a_queued_video_is_not_ready() {
    let s = Server::start().await;
    let (st, v) = s.submit(ADMIN_KEY, body("waiting forever", 1)).await;
    assert_eq!(st, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let cases: Vec<Case> = ["video", "thumbnail", "spritesheet"]
        .into_iter()
        .map(|variant| {
            Case::get(
                format!("content {variant} of a queued video"),
                format!("/v1/videos/{id}/content?variant={variant}"),
            )
            .expect(409, "video_not_ready", None)
        })
        .chain([Case::get("Last-Event-ID: abc", format!("/v1/videos/{id}/events"))
            .header("Last-Event-ID", "abc")
            .expect(400, "invalid_value", Some("Last-Event-ID"))])
        .collect();
    run_all(&s, &cases).await;
    assert_eq!(s.video(ADMIN_KEY, &id).await["status"], "queued");
}

// ------------------------------------------------------------------- fuzz

/// splitmix64: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Visible ASCII (valid in a header value).
    fn visible(&mut self, max: usize) -> String {
        let n = self.below(max + 1);
        (0..n).map(|_| (b'!' + self.below(94) as u8) as char).collect()
    }
    /// Arbitrary bytes, percent-encoded for a URL.
    fn url_part(&mut self, max: usize) -> String {
        let interesting: &[&str] = &[
            "video_",
            "..",
            "%2F",
            "%00",
            "%FF",
            "0",
            "a",
            "-",
            "~",
            "%E2%82%AC",
            "?",
            "#",
        ];
        let n = self.below(max + 1);
        let mut out = String::new();
        for _ in 0..n {
            match self.below(3) {
                0 => out.push_str(self.pick::<&str>(interesting)),
                1 => out.push((b'a' + self.below(26) as u8) as char),
                _ => out.push_str(&format!("%{:02X}", self.next() as u8)),
            }
        }
        out
    }
    fn json_value(&mut self, depth: u32) -> Value {
        match self.below(if depth > 2 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => json!(self.chance(50)),
            2 => json!(self.next() as i64),
            3 => json!((self.next() as f64) / 1e3),
            4 => json!(String::from_utf8_lossy(&self.bytes(40))),
            5 => json!(self.pick(&[
                "4",
                "8",
                "12",
                "720x1280",
                "videogen-ref",
                "",
                " ",
                "data:image/png;base64,AA=="
            ])),
            6 => Value::Array((0..self.below(4)).map(|_| self.json_value(depth + 1)).collect()),
            _ => {
                let keys = [
                    "prompt",
                    "model",
                    "seconds",
                    "size",
                    "seed",
                    "style",
                    "input_reference",
                    "image_url",
                    "x",
                ];
                let mut m = serde_json::Map::new();
                for _ in 0..self.below(5) {
                    m.insert(self.pick(&keys).to_string(), self.json_value(depth + 1));
                }
                Value::Object(m)
            }
        }
    }
}

fn fuzz_body(rng: &mut Rng) -> (Option<String>, Vec<u8>) {
    let content_types = [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "multipart/form-data",
        "application/octet-stream",
        "multipart/form-data; boundary=",
        "image/png",
    ];
    match rng.below(6) {
        0 => (None, Vec::new()),
        1 => (Some(rng.pick(&content_types).to_string()), rng.bytes(2048)),
        2 => {
            // A mutated valid JSON body.
            let mut b = valid_json().to_string().into_bytes();
            for _ in 0..=rng.below(6) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] = rng.next() as u8,
                    1 => b.insert(i, rng.next() as u8),
                    _ => {
                        b.remove(i);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            (Some("application/json".into()), b)
        }
        3 => (
            Some("application/json".into()),
            rng.json_value(0).to_string().into_bytes(),
        ),
        4 => {
            // Well-formed multipart with random fields.
            let names = [
                "prompt",
                "model",
                "seconds",
                "size",
                "seed",
                "style",
                "input_reference",
                "input_reference[image_url]",
                "",
            ];
            let values: Vec<(String, Vec<u8>, bool)> = (0..rng.below(5))
                .map(|_| (rng.pick(&names).to_string(), rng.bytes(300), rng.chance(30)))
                .collect();
            let parts: Vec<Part> = values
                .iter()
                .map(|(n, v, is_file)| {
                    if *is_file {
                        Part::File {
                            name: n,
                            filename: "f.png",
                            content_type: "image/png",
                            data: v,
                        }
                    } else {
                        Part::Text(n, v)
                    }
                })
                .collect();
            (Some(multipart_type()), multipart(&parts))
        }
        _ => {
            // Multipart, broken at a random byte.
            let mut b = multipart(&[Part::Text("prompt", b"broken"), Part::Text("seconds", b"4")]);
            let at = rng.below(b.len());
            b.truncate(at);
            (Some(multipart_type()), b)
        }
    }
}

fn fuzz_case(rng: &mut Rng, i: usize) -> Case {
    let methods = [
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::PUT,
        Method::PATCH,
        Method::OPTIONS,
        Method::HEAD,
    ];
    let method = rng.pick(&methods).clone();
    let id = match rng.below(4) {
        0 => ZERO_ID.to_owned(),
        1 => format!("video_{:032x}", u128::from(rng.next()) << 64 | u128::from(rng.next())),
        _ => rng.url_part(12),
    };
    let mut path = match rng.below(10) {
        0..=2 => "/v1/videos".to_owned(),
        3 => format!("/v1/videos/{id}"),
        4 => format!("/v1/videos/{id}/content"),
        5 => format!("/v1/videos/{id}/cancel"),
        6 => format!("/v1/videos/{id}/events"),
        7 => rng
            .pick(&["/healthz", "/readyz", "/metrics", "/", "/v1", "/v1/"])
            .to_string(),
        8 => format!("/v1/videos/{id}/{}", rng.url_part(6)),
        _ => format!("/{}", rng.url_part(10)),
    };
    if rng.chance(40) {
        let keys = ["limit", "order", "after", "variant", "foo", ""];
        let q: Vec<String> = (0..=rng.below(3))
            .map(|_| format!("{}={}", rng.pick(&keys), rng.url_part(6)))
            .collect();
        path = format!("{path}?{}", q.join("&"));
    }
    let mut c = Case::new(format!("fuzz #{i}"), method, path);
    c.auth = match rng.below(6) {
        0 => None,
        1 => Some("Bearer wrong".into()),
        2 => Some(format!("Basic {}", rng.visible(20))),
        3 => Some(rng.visible(40)),
        _ => Some(format!("Bearer {ADMIN_KEY}")),
    };
    let (ct, body) = fuzz_body(rng);
    c.content_type = ct;
    c.body = body;
    if rng.chance(20) {
        c.headers.push(("Idempotency-Key", rng.visible(300)));
    }
    if rng.chance(15) {
        c.headers.push(("Last-Event-ID", rng.visible(12)));
    }
    if rng.chance(15) {
        c.headers.push(("Range", format!("bytes={}", rng.visible(10))));
    }
    c
}

#[tokio::test]
async fn junk_requests_never_get_a_5xx_and_4xx_is_always_the_envelope() {
    let seed: u64 = std::env::var("VIDEOGEN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let rounds: usize = std::env::var("VIDEOGEN_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    eprintln!("fuzz seed {seed} ({rounds} requests); rerun with VIDEOGEN_FUZZ_SEED={seed}");
    let s = Server::start().await;
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..rounds {
        let c = fuzz_case(&mut rng, i);
        let describe = || {
            format!(
                "[{}] {} {} auth={:?} ct={:?} headers={:?} body={:?}",
                c.name,
                c.method,
                c.path,
                c.auth,
                c.content_type,
                c.headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", &v[..v.len().min(40)]))
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(&c.body[..c.body.len().min(80)])
            )
        };
        let r = match send(&s, &c).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", describe()));
                continue;
            }
        };
        *statuses.entry(r.status).or_default() += 1;
        if r.status >= 500 {
            failures.push(format!("{}: status {}", describe(), r.status));
        } else if r.status >= 400
            && c.method != Method::HEAD
            && let Err(e) = envelope(&r)
        {
            failures.push(format!("{}: status {}: {e}", describe(), r.status));
        }
    }
    eprintln!("fuzz statuses: {statuses:?}");
    // The server is still healthy.
    let (st, _) = s.get_json(ADMIN_KEY, "/v1/videos?limit=1").await;
    assert_eq!(st, 200);
    assert!(
        failures.is_empty(),
        "{} of {rounds} junk requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
