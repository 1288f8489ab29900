//! `videogen_gpu_utilization{worker, gpu_id}` from the model's stepping: the
//! fraction of wall time a slot's device spent in denoising steps, over
//! windows of about [`WINDOW`]. Used where NVML is not (no NVIDIA GPU, or a
//! CPU host); on an NVIDIA machine the worker samples NVML instead.

use std::time::{Duration, Instant};

/// Shortest window a published fraction covers.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Busy time of one slot since the window began.
pub struct StepMeter {
    worker: String,
    gpu_id: String,
    started: Instant,
    busy: Duration,
    /// Publishes at all (off when NVML reports the real figure).
    enabled: bool,
}

impl StepMeter {
    pub fn new(worker: impl Into<String>, gpu_id: impl Into<String>, enabled: bool) -> Self {
        Self {
            worker: worker.into(),
            gpu_id: gpu_id.into(),
            started: Instant::now(),
            busy: Duration::ZERO,
            enabled,
        }
    }

    /// One step ran for `d`.
    pub fn stepped(&mut self, d: Duration) {
        self.busy += d;
        self.maybe_publish(Instant::now());
    }

    /// Publishes the window's fraction once it is long enough (call when idle too).
    pub fn maybe_publish(&mut self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < WINDOW {
            return None;
        }
        let fraction = (self.busy.as_secs_f64() / elapsed.as_secs_f64()).clamp(0.0, 1.0);
        if self.enabled {
            metrics::gauge!("videogen_gpu_utilization", "worker" => self.worker.clone(), "gpu_id" => self.gpu_id.clone())
                .set(fraction);
        }
        self.started = now;
        self.busy = Duration::ZERO;
        Some(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_is_busy_time_over_the_window() {
        let mut m = StepMeter::new("w", "0", false);
        let t0 = m.started;
        m.busy = Duration::from_secs(8);
        assert_eq!(m.maybe_publish(t0 + Duration::from_secs(5)), None, "window too short");
        assert_eq!(m.maybe_publish(t0 + Duration::from_secs(10)), Some(0.8));
        // A new window starts empty.
        assert_eq!(m.maybe_publish(t0 + Duration::from_secs(20)), Some(0.0));
        m.busy = Duration::from_secs(30);
        assert_eq!(m.maybe_publish(t0 + Duration::from_secs(30)), Some(1.0), "clamped");
    }
}
