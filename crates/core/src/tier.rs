//! Service tiers. Paid and internal work goes ahead of free work, but free
//! work is never starved (see the `videogen-sched` crate for the bound).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Paid,
    Internal,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Paid, Tier::Internal];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Paid => "paid",
            Tier::Internal => "internal",
        }
    }

    /// Default time a completed video's bytes are kept.
    pub fn default_retention_ms(self) -> i64 {
        const DAY_MS: i64 = 24 * 3600 * 1000;
        match self {
            Tier::Free => DAY_MS,
            Tier::Paid => 7 * DAY_MS,
            Tier::Internal => 30 * DAY_MS,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "free" => Ok(Tier::Free),
            "paid" => Ok(Tier::Paid),
            "internal" => Ok(Tier::Internal),
            other => Err(format!("unknown tier {other:?} (expected free, paid or internal)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_round_trip_through_strings() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
        }
        assert!("gold".parse::<Tier>().is_err());
    }

    #[test]
    fn higher_tiers_keep_videos_longer() {
        assert!(Tier::Free.default_retention_ms() < Tier::Paid.default_retention_ms());
        assert!(Tier::Paid.default_retention_ms() < Tier::Internal.default_retention_ms());
    }
}
