//! What `bench host` and `bench latent-checkpoint` share: the model-host
//! virtualenv (`scripts/host-venv.sh`), tiny pipelines written by the host
//! package's `make-tiny`, and one supervised host process
//! ([`videogen_host::Host`]) configured for measuring.

use anyhow::{Context, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use videogen_core::catalog::ModelCard;
use videogen_host::{Host, HostConfig, HostedModel, HostedSpec};

use crate::Percentiles;

pub(crate) const INSTALL_HINT: &str = "build it with scripts/host-venv.sh, or pass --python PATH";
/// The interpreter the tests use (relative to the repository root).
const DEFAULT_PYTHON: &str = "target/host-venv/bin/python";
/// Torch's CPU threads in every host and every in-process loop, so the
/// two are comparable (and a step does not fight the other core's work).
pub(crate) const HOST_THREADS: &str = "1";

/// The host interpreter: `--python`, else `VIDEOGEN_HOST_PYTHON`, else the
/// workspace virtualenv. Fails unless it imports `videogen_host`.
pub(crate) fn python(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = arg
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("VIDEOGEN_HOST_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PYTHON));
    let ok = Command::new(&path)
        .args(["-c", "import videogen_host"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "{} is missing or cannot import videogen_host: {INSTALL_HINT}",
            path.display()
        );
    }
    Ok(path)
}

/// What the host reports about itself: its package version and torch's.
pub(crate) fn versions(python: &Path) -> String {
    let out = Command::new(python)
        .args([
            "-c",
            "import videogen_host, sys\n\
             try:\n    import torch; t = torch.__version__\nexcept Exception:\n    t = 'none'\n\
             print(videogen_host.HOST_NAME, 'python', sys.version.split()[0], 'torch', t)",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// Writes the tiny pipeline of `adapter` (`wan`, `noop`, ...) into `dir`.
pub(crate) fn make_tiny(python: &Path, adapter: &str, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(python)
        .args(["-m", "videogen_host.testing", "make-tiny", "--adapter", adapter])
        .arg(dir)
        .output()
        .with_context(|| format!("running {} -m videogen_host.testing make-tiny", python.display()))?;
    if !out.status.success() {
        bail!(
            "make-tiny --adapter {adapter} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One CPU host process for `python`: one torch thread, no idle health
/// checks (nothing but the measured requests reaches it), quiet logs.
pub(crate) fn host(name: &str, python: &Path) -> Arc<Host> {
    let mut cfg = HostConfig::python(name, python);
    cfg.env.push(("VIDEOGEN_HOST_THREADS".into(), HOST_THREADS.into()));
    cfg.env.push(("VIDEOGEN_HOST_LOG".into(), "WARNING".into()));
    cfg.health_interval = Duration::ZERO;
    cfg.restart_backoff = Duration::ZERO;
    Host::new(cfg)
}

/// `dir` (a tiny pipeline of `adapter`) served by `host` as model `id`.
pub(crate) fn hosted(host: Arc<Host>, id: &str, adapter: &str, dir: &Path) -> HostedModel {
    HostedModel::new(
        host,
        HostedSpec {
            card: ModelCard {
                id: id.into(),
                ..ModelCard::reference(4)
            },
            adapter: adapter.into(),
            path: dir.to_owned(),
            dtype: "float32".into(),
            memory_bytes: 0,
        },
    )
}

/// Nearest-rank percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Micros {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Micros {
    pub(crate) fn of(samples: &mut [Duration]) -> Self {
        let p = Percentiles::of(samples);
        Self {
            count: p.count,
            mean_us: p.mean_ms * 1e3,
            p50_us: p.p50_ms * 1e3,
            p90_us: p.p90_ms * 1e3,
            p99_us: p.p99_ms * 1e3,
            max_us: p.max_ms * 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_are_percentiles_times_a_thousand() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let m = Micros::of(&mut s);
        assert_eq!(m.count, 100);
        assert!((m.p50_us - 50.0).abs() < 1e-6, "{m:?}");
        assert!((m.p99_us - 99.0).abs() < 1e-6, "{m:?}");
        assert!((m.max_us - 100.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn a_missing_interpreter_is_an_error_with_the_hint() {
        let err = python(Some(Path::new("/nonexistent/python"))).unwrap_err().to_string();
        assert!(err.contains("host-venv.sh"), "{err}");
    }
}
