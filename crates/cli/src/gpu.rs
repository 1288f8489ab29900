//! `videogen_gpu_utilization{worker, gpu_id}` from NVML, when the machine
//! has NVIDIA's management library (probed at run time: `nvml-wrapper`
//! loads `libnvidia-ml` dynamically, so the binary builds and runs without
//! it). Without it, each slot publishes its model's stepping fraction
//! instead (`videogen_worker::utilization`).

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often NVML is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// One slot's GPUs: its worker id and the NVML indices of its group.
pub struct SlotGpus {
    pub worker: String,
    /// The group as `gpu_id` shows it, e.g. `0` or `0+1`.
    pub label: String,
    pub indices: Vec<u32>,
}

/// Starts sampling if NVML answers; `false` if it does not (then the slots
/// publish their stepping fraction).
pub fn start_nvml(slots: Vec<SlotGpus>, shutdown: CancellationToken) -> bool {
    if slots.is_empty() {
        return false;
    }
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(error = %e, "NVML not available; GPU utilization comes from the model's stepping");
            return false;
        }
    };
    std::thread::Builder::new()
        .name("nvml".into())
        .spawn(move || {
            while !shutdown.is_cancelled() {
                for s in &slots {
                    let rates: Vec<f64> = s
                        .indices
                        .iter()
                        .filter_map(|&i| nvml.device_by_index(i).ok()?.utilization_rates().ok())
                        .map(|u| f64::from(u.gpu) / 100.0)
                        .collect();
                    if !rates.is_empty() {
                        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
                        metrics::gauge!("videogen_gpu_utilization", "worker" => s.worker.clone(), "gpu_id" => s.label.clone())
                            .set(mean);
                    }
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
        .is_ok()
}

/// The NVML indices of a `--gpus` group such as `0+1`.
pub fn indices(group: &str) -> Vec<u32> {
    group.split(['+', ',']).filter_map(|d| d.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_name_their_indices() {
        assert_eq!(super::indices("0+1"), vec![0, 1]);
        assert_eq!(super::indices("3"), vec![3]);
    }

    #[test]
    fn sampling_starts_exactly_when_nvml_answers() {
        let stop = tokio_util::sync::CancellationToken::new();
        assert!(!super::start_nvml(Vec::new(), stop.clone()), "no GPU slots, no sampler");
        let slots = vec![super::SlotGpus {
            worker: "w/s0".into(),
            label: "0".into(),
            indices: vec![0],
        }];
        let available = nvml_wrapper::Nvml::init().is_ok();
        assert_eq!(super::start_nvml(slots, stop.clone()), available);
        stop.cancel();
    }
}
