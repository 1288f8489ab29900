//! One running host process and its connection: spawn, handshake, calls.

use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::wire::{Frame, read_frame, write_frame};
use crate::{HostConfig, HostError, PROTOCOL_VERSION};

/// A live host process. Dropping it kills the process.
pub(crate) struct HostConn {
    child: Child,
    stream: UnixStream,
    /// Holds the socket's directory until the connection ends.
    _dir: tempfile::TempDir,
    pub hello: Frame,
    max_payload: u64,
}

impl HostConn {
    /// Starts the host and waits for its `hello`, within `cfg.start_timeout`.
    pub fn start(cfg: &HostConfig) -> Result<Self, HostError> {
        let dir = tempfile::Builder::new()
            .prefix("videogen-host-")
            .tempdir()
            .map_err(|e| HostError::Start(format!("socket directory: {e}")))?;
        let path: PathBuf = dir.path().join("host.sock");
        let listener = UnixListener::bind(&path).map_err(|e| HostError::Start(format!("binding {path:?}: {e}")))?;
        let mut cmd = Command::new(&cfg.program);
        cmd.args(&cfg.args)
            .arg("--connect")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("VIDEOGEN_HOST_DEVICE", &cfg.device)
            .env("HF_HUB_OFFLINE", "1")
            .env("PYTHONUNBUFFERED", "1");
        match &cfg.gpus {
            Some(g) => cmd.env("CUDA_VISIBLE_DEVICES", g),
            None => cmd.env_remove("CUDA_VISIBLE_DEVICES"),
        };
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| HostError::Start(format!("running {:?}: {e}", cfg.program)))?;
        forward_output(&cfg.name, child.stdout.take(), "stdout");
        forward_output(&cfg.name, child.stderr.take(), "stderr");

        // Accept in a thread so the wait can also notice the process dying.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(listener.accept());
        });
        let deadline = Instant::now() + cfg.start_timeout;
        let stream = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok((s, _))) => break s,
                Ok(Err(e)) => {
                    kill(&mut child);
                    return Err(HostError::Start(format!("accepting the host's connection: {e}")));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(HostError::Start(format!("host exited before connecting ({status})")));
                    }
                    if Instant::now() >= deadline {
                        kill(&mut child);
                        return Err(HostError::Start(format!(
                            "host did not connect within {} s",
                            cfg.start_timeout.as_secs()
                        )));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    kill(&mut child);
                    return Err(HostError::Start("accept thread ended".into()));
                }
            }
        };
        let mut conn = Self {
            child,
            stream,
            _dir: dir,
            hello: Frame::new(json!({})),
            max_payload: cfg.max_payload_bytes,
        };
        let hello = conn.read(cfg.start_timeout)?;
        if hello.str("op") != Some("hello") {
            return Err(HostError::Protocol("the host's first message is not hello".into()));
        }
        let version = hello.u64("protocol").unwrap_or(0);
        if version != PROTOCOL_VERSION {
            return Err(HostError::Start(format!(
                "host speaks protocol {version}; this worker speaks {PROTOCOL_VERSION}"
            )));
        }
        let hello_json = Value::Object(hello.header.clone()).to_string();
        tracing::info!(host = %cfg.name, pid = conn.child.id(), hello = %hello_json, "model host started");
        conn.hello = hello;
        Ok(conn)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a request and reads its reply; an error reply is
    /// [`HostError::Remote`].
    pub fn call(&mut self, header: Value, payload: &[u8], timeout: Duration) -> Result<Frame, HostError> {
        let op = header.get("op").and_then(Value::as_str).unwrap_or("?").to_owned();
        let Value::Object(map) = header else {
            return Err(HostError::Protocol("request header must be an object".into()));
        };
        self.stream.set_write_timeout(Some(timeout)).map_err(HostError::io)?;
        write_frame(&mut self.stream, &map, payload).map_err(|e| self.timed(e, &op, timeout))?;
        let reply = self.read(timeout).map_err(|e| self.timed(e, &op, timeout))?;
        check_reply(reply)
    }

    /// Reads the next frame (the messages that follow a `decode` reply).
    pub fn read(&mut self, timeout: Duration) -> Result<Frame, HostError> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(HostError::io)?;
        read_frame(&mut self.stream, self.max_payload)
    }

    fn timed(&mut self, e: HostError, op: &str, timeout: Duration) -> HostError {
        match e {
            HostError::Timeout { .. } => HostError::Timeout {
                op: op.to_owned(),
                secs: timeout.as_secs(),
            },
            HostError::Exited(m) => match self.child.try_wait() {
                Ok(Some(status)) => HostError::Exited(format!("{m} ({status})")),
                _ => HostError::Exited(m),
            },
            other => other,
        }
    }

    /// Asks the host to exit, then makes sure it has.
    pub fn shutdown(mut self, grace: Duration) {
        let _ = self.call(json!({"op": "shutdown"}), &[], grace);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills it.
    }
}

impl Drop for HostConn {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn kill(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// An `ok: false` reply becomes [`HostError::Remote`].
fn check_reply(reply: Frame) -> Result<Frame, HostError> {
    match reply.header.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(reply),
        Some(false) => {
            let err = reply
                .header
                .get("error")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let s = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
            Err(HostError::Remote {
                code: s("code").unwrap_or_else(|| "internal".into()),
                message: s("message").unwrap_or_default(),
                param: s("param"),
            })
        }
        None => Err(HostError::Protocol("reply has no \"ok\"".into())),
    }
}

/// Copies a host's stdout or stderr into the worker's log, line by line.
fn forward_output(name: &str, pipe: Option<impl std::io::Read + Send + 'static>, stream: &'static str) {
    let Some(pipe) = pipe else { return };
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(l) if !l.trim().is_empty() => tracing::info!(target: "videogen_host", host = %name, stream, "{l}"),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
}

/// A request header: `{"op": op, ..fields}`.
pub(crate) fn request(op: &str, fields: Value) -> Value {
    let mut m = Map::new();
    m.insert("op".into(), Value::String(op.into()));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}
