//! The memory a node spends decoding input images, shared by every request.
//!
//! A small compressed image can decode to hundreds of megabytes (a 49 KB PNG
//! of 4096×4096 is 64 MiB as RGBA, more while it is converted and
//! re-encoded), so bounding each request's bytes is not enough: 64 parallel
//! uploads took 4 GB (issue 11). Each decode reserves what its dimensions
//! will cost, read from the header before anything is allocated; when the
//! budget is spent the request is answered 503 with `Retry-After` at once,
//! without queueing on the blocking pool.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Granularity of the budget: a permit is one MiB.
const MIB: u64 = 1 << 20;

/// Bytes decoding one pixel takes at its peak: the decoded RGBA buffer, its
/// RGB copy, and the re-encoded PNG (at most about the RGB size).
const BYTES_PER_PIXEL: u64 = 4 + 3 + 3;

/// The node's decode budget (cheap to clone: one semaphore).
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    mib_max: u32,
    permits: Arc<Semaphore>,
}

impl DecodeBudget {
    /// A budget of `bytes_max` bytes (at least one MiB).
    pub fn new(bytes_max: u64) -> Self {
        let mib_max = u32::try_from((bytes_max / MIB).max(1)).unwrap_or(u32::MAX);
        Self {
            mib_max,
            permits: Arc::new(Semaphore::new(mib_max as usize)),
        }
    }

    /// What decoding a `width`×`height` image reserves, in MiB.
    pub fn cost_mib(width: u32, height: u32) -> u32 {
        let bytes = u64::from(width)
            .saturating_mul(u64::from(height))
            .saturating_mul(BYTES_PER_PIXEL);
        u32::try_from(bytes.div_ceil(MIB).max(1)).unwrap_or(u32::MAX)
    }

    /// Reserves the memory for one decode, held until the guard drops; 503
    /// `decode_capacity` when the node is decoding as much as it may.
    pub fn reserve(&self, width: u32, height: u32) -> Result<OwnedSemaphorePermit, ApiError> {
        // One decode larger than the whole budget still runs, alone.
        let cost = Self::cost_mib(width, height).min(self.mib_max);
        self.permits.clone().try_acquire_many_owned(cost).map_err(|_| {
            metrics::counter!("videogen_http_shed_total", "reason" => "decode").increment(1);
            ApiError::overloaded(
                "decode_capacity",
                "This server is decoding as many input images as its memory budget allows; retry shortly.",
            )
        })
    }

    /// MiB free now (for tests and `/readyz`).
    pub fn available_mib(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Default for DecodeBudget {
    /// 512 MiB: four 4096×4096 decodes at once.
    fn default() -> Self {
        Self::new(512 * MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeBudget;

    #[test]
    fn decodes_reserve_by_their_pixels_and_give_back_on_drop() {
        let budget = DecodeBudget::new(200 << 20);
        assert_eq!(DecodeBudget::cost_mib(4096, 4096), 160);
        assert_eq!(DecodeBudget::cost_mib(1, 1), 1);
        let big = budget.reserve(4096, 4096).map_err(|e| e.code);
        assert!(big.is_ok());
        assert_eq!(
            budget.reserve(4096, 4096).map(|_| ()).map_err(|e| e.code),
            Err("decode_capacity")
        );
        assert!(budget.reserve(1024, 1024).is_ok(), "a small one still fits");
        drop(big);
        assert_eq!(budget.available_mib(), 200);
        // Larger than the whole budget: runs when nothing else does.
        let tiny = DecodeBudget::new(1 << 20);
        assert!(tiny.reserve(4096, 4096).is_ok());
    }
}
