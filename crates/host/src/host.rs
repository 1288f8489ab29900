//! [`Host`]: one supervised host process (per GPU or GPU group). It is
//! started on first use, health-checked while idle, replaced when it dies,
//! hangs or breaks the protocol, and stopped on shutdown. Models loaded in
//! it are tracked in least-recently-used order and evicted when the GPU
//! memory their registry entries declare would not fit.

use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::conn::{HostConn, request};
use crate::wire::Frame;
use crate::{HostConfig, HostError, HostedSpec};

/// The longest wait between restarts (the first is the config's).
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What a successful `load` told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub id: String,
    pub weights_hash: String,
    pub memory_bytes: u64,
    /// Use counter value at the last use (LRU order).
    last_used: u64,
}

pub(crate) struct State {
    conn: Option<HostConn>,
    /// Bumped whenever the process is replaced: a generation started in an
    /// older process is gone.
    pub epoch: u64,
    loaded: Vec<Loaded>,
    uses: u64,
    /// Earliest next start after a crash.
    start_after: Option<Instant>,
    backoff: Duration,
    pub restarts: u64,
    last_error: Option<String>,
}

/// A supervised model host.
pub struct Host {
    cfg: HostConfig,
    state: Mutex<State>,
    stopping: Arc<Stop>,
}

/// The stop flag the health checker sleeps on (it holds no `Host` while
/// it sleeps, so dropping the last handle ends it).
#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    fn load(&self, o: Ordering) -> bool {
        self.flag.load(o)
    }

    /// Sleeps up to `d`; `true` if stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .wake
            .wait_timeout_while(guard, d, |_| !self.flag.load(Ordering::Acquire));
        self.flag.load(Ordering::Acquire)
    }
}

impl Host {
    /// A host that starts on first use; its health checker runs until
    /// [`Host::shutdown`] (or the last handle is dropped).
    pub fn new(cfg: HostConfig) -> Arc<Self> {
        let cfg_backoff = cfg.restart_backoff;
        let host = Arc::new(Self {
            cfg,
            state: Mutex::new(State {
                conn: None,
                epoch: 0,
                loaded: Vec::new(),
                uses: 0,
                start_after: None,
                backoff: cfg_backoff,
                restarts: 0,
                last_error: None,
            }),
            stopping: Arc::default(),
        });
        let weak = Arc::downgrade(&host);
        let stop = host.stopping.clone();
        let interval = host.cfg.health_interval;
        if !interval.is_zero() {
            std::thread::Builder::new()
                .name(format!("host-health-{}", host.cfg.name))
                .spawn(move || health_loop(weak, stop, interval))
                .ok();
        }
        host
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current process generation (see [`State::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.lock().restarts
    }

    /// The process id of the running host, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().conn.as_ref().map(HostConn::pid)
    }

    /// Models loaded in the running process, least recently used first.
    pub fn loaded(&self) -> Vec<Loaded> {
        let mut l = self.lock().loaded.clone();
        l.sort_by_key(|m| m.last_used);
        l
    }

    /// Runs `f` on the live connection, starting the host first if needed.
    /// A failure that means the process is broken replaces it: the caller
    /// gets the error, the next call a fresh process.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut HostConn, &mut State) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let mut st = self.lock();
        self.ensure_started(&mut st)?;
        let Some(mut conn) = st.conn.take() else {
            return Err(HostError::Exited("no host process".into()));
        };
        let r = f(&mut conn, &mut st);
        match &r {
            Err(e) if e.is_broken() => {
                tracing::warn!(host = %self.cfg.name, pid = conn.pid(), error = %e, "model host failed; replacing it");
                drop(conn);
                self.crashed(&mut st, e.to_string());
            }
            _ => st.conn = Some(conn),
        }
        r
    }

    fn ensure_started(&self, st: &mut State) -> Result<(), HostError> {
        if let Some(conn) = st.conn.as_mut() {
            if conn.alive() {
                return Ok(());
            }
            st.conn = None;
            self.crashed(st, "model host process exited".into());
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(HostError::Exited("worker is stopping".into()));
        }
        if let Some(at) = st.start_after {
            // Wait out the restart backoff here (a blocking call on the
            // slot's own thread): a restart is a pause, not an unavailable
            // model, and the call goes on once a fresh host is up.
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                tracing::info!(host = %self.cfg.name, wait_ms = wait.as_millis() as u64, "waiting to restart the model host");
                std::thread::sleep(wait);
            }
        }
        match HostConn::start(&self.cfg) {
            Ok(conn) => {
                st.conn = Some(conn);
                st.start_after = None;
                st.backoff = self.cfg.restart_backoff;
                metrics::counter!("videogen_model_host_starts_total").increment(1);
                Ok(())
            }
            Err(e) => {
                self.crashed(st, e.to_string());
                Err(e)
            }
        }
    }

    fn crashed(&self, st: &mut State, why: String) {
        st.epoch += 1;
        st.loaded.clear();
        st.restarts += 1;
        st.start_after = Some(Instant::now() + st.backoff);
        st.backoff = (st.backoff * 2).min(RESTART_BACKOFF_MAX);
        st.last_error = Some(why);
        metrics::counter!("videogen_model_host_restarts_total").increment(1);
    }

    /// Makes `spec` loaded in the running process (evicting least recently
    /// used models first if the memory budget needs it) and returns what the
    /// load reported. Runs inside [`Host::with`], so the caller's next
    /// request reaches the same process.
    pub(crate) fn ensure_loaded(
        &self,
        conn: &mut HostConn,
        st: &mut State,
        spec: &HostedSpec,
    ) -> Result<Loaded, HostError> {
        st.uses += 1;
        let uses = st.uses;
        if let Some(m) = st.loaded.iter_mut().find(|m| m.id == spec.card.id) {
            m.last_used = uses;
            return Ok(m.clone());
        }
        if let Some(budget) = self.cfg.memory_budget_bytes {
            loop {
                let used: u64 = st.loaded.iter().map(|m| m.memory_bytes).sum();
                if used.saturating_add(spec.memory_bytes) <= budget || st.loaded.is_empty() {
                    break;
                }
                let Some(victim) = st.loaded.iter().min_by_key(|m| m.last_used).map(|m| m.id.clone()) else {
                    break;
                };
                tracing::info!(host = %self.cfg.name, evict = %victim, load = %spec.card.id, "evicting the least recently used model");
                conn.call(request("unload", json!({"id": victim})), &[], self.cfg.op_timeout)?;
                st.loaded.retain(|m| m.id != victim);
                metrics::counter!("videogen_model_evictions_total").increment(1);
            }
        }
        let started = Instant::now();
        let reply = conn.call(
            request(
                "load",
                json!({"model": {"id": spec.card.id, "adapter": spec.adapter, "path": spec.path, "dtype": spec.dtype}}),
            ),
            &[],
            self.cfg.load_timeout,
        )?;
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!("videogen_model_load_seconds", "model" => spec.card.id.clone()).record(secs);
        let weights_hash = reply
            .str("weights_hash")
            .ok_or_else(|| HostError::Protocol("load reply lacks weights_hash".into()))?
            .to_owned();
        let loaded = Loaded {
            id: spec.card.id.clone(),
            weights_hash,
            memory_bytes: spec.memory_bytes,
            last_used: uses,
        };
        tracing::info!(host = %self.cfg.name, model = %spec.card.id, weights = %loaded.weights_hash, secs, "model loaded");
        st.loaded.push(loaded.clone());
        Ok(loaded)
    }

    /// One request on the running process (no start, no load).
    pub(crate) fn call(
        &self,
        conn: &mut HostConn,
        header: Value,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Frame, HostError> {
        conn.call(header, payload, timeout)
    }

    /// Stops the host process (it is not restarted).
    pub fn shutdown(&self) {
        self.stopping.set();
        let conn = self.lock().conn.take();
        if let Some(c) = conn {
            c.shutdown(Duration::from_secs(5));
        }
    }

    /// Kills the host process as a crash would (tests, chaos).
    pub fn kill_for_test(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
        }
    }

    /// One health pass: while idle, a dead or unresponsive process is
    /// replaced at once, so a crash between jobs costs the next job nothing.
    fn check(&self) {
        let Ok(mut st) = self.state.try_lock() else {
            return; // Busy with a request: that request notices a failure.
        };
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(conn) = st.conn.as_mut() else {
            // Crashed earlier: start a replacement when the backoff allows.
            if st.start_after.is_some_and(|at| Instant::now() >= at) {
                let _ = self.ensure_started(&mut st);
            }
            return;
        };
        let result = if conn.alive() {
            conn.call(request("health", json!({})), &[], self.cfg.health_timeout)
                .map(|_| ())
        } else {
            Err(HostError::Exited("model host process exited".into()))
        };
        if let Err(e) = result
            && e.is_broken()
        {
            tracing::warn!(host = %self.cfg.name, error = %e, "model host failed its health check; replacing it");
            st.conn = None;
            self.crashed(&mut st, e.to_string());
            // The next pass starts a replacement once the backoff allows.
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stopping.set();
    }
}

fn health_loop(host: Weak<Host>, stop: Arc<Stop>, interval: Duration) {
    while !stop.sleep(interval) {
        let Some(h) = host.upgrade() else { return };
        h.check();
    }
}
