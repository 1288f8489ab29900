//! Per-tier values and the scheduler's tunables.

use videogen_core::Tier;

/// One value per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierMap<T> {
    pub free: T,
    pub paid: T,
    pub internal: T,
}

impl<T> TierMap<T> {
    pub fn get(&self, tier: Tier) -> &T {
        match tier {
            Tier::Free => &self.free,
            Tier::Paid => &self.paid,
            Tier::Internal => &self.internal,
        }
    }

    pub fn get_mut(&mut self, tier: Tier) -> &mut T {
        match tier {
            Tier::Free => &mut self.free,
            Tier::Paid => &mut self.paid,
            Tier::Internal => &mut self.internal,
        }
    }

    /// Builds a map by calling `f` once per tier.
    pub fn from_fn(mut f: impl FnMut(Tier) -> T) -> Self {
        Self {
            free: f(Tier::Free),
            paid: f(Tier::Paid),
            internal: f(Tier::Internal),
        }
    }
}

/// Scheduling policy knobs. See the crate docs for what each one guarantees.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Fair-share weights between competing tiers, clamped to
    /// `1..=MAX_WEIGHT`: 0 counts as 1, so every tier keeps a share and the
    /// wait bound stays finite.
    pub weights: TierMap<u32>,
    /// A job that has waited at least this long is "aged" and goes ahead of
    /// every job that is not. Negative values are treated as 0.
    pub max_wait_ms: TierMap<i64>,
    /// How many jobs at the head of the chosen tier affinity may look at to
    /// find one whose model the worker already has loaded. 0 or 1 disables it.
    pub affinity_window: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            weights: TierMap {
                free: 1,
                paid: 4,
                internal: 8,
            },
            max_wait_ms: TierMap {
                free: 120_000,
                paid: 300_000,
                internal: 600_000,
            },
            affinity_window: 4,
        }
    }
}
