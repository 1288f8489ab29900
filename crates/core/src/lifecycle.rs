//! The job state machine: the only place that says which changes are legal.
//!
//! ```text
//!            lease                 complete
//!  Queued ─────────▶ Running ──────────────▶ Completed ──expire──▶ Expired
//!    ▲  │              │  │
//!    │  │   requeue    │  │ fail (fatal, or attempts exhausted = dead letter)
//!    │  │◀─────────────┘  └──────────────▶ Failed ──┐
//!    │  │ cancel             cancel                 │ redrive (an operator
//!    │  └──────────▶ Cancelled ◀──────── Running    │ re-runs a dead letter)
//!    └──────────────────────────────────────────────┘
//! ```
//!
//! Stores persist a transition with a compare-and-set on the state it was
//! computed from (and, for worker writes, on the lease's attempt), so a
//! transition computed from a stale read cannot land.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a job is in its life. Persisted as [`JobState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

/// Why a running job went back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequeueReason {
    /// The worker stopped heart-beating (crash, kill -9, partition).
    LeaseExpired,
    /// The worker gave the job back on purpose (shutdown, preemption notice).
    Released,
    /// The node that ran the job restarted and reclaimed its own leases.
    NodeRestarted,
    /// The attempt hit an error that may not recur; attempts remain.
    Error,
    /// The platform failed the attempt (storage full or unreachable, the
    /// database unavailable): not the job's fault, so not charged.
    Infrastructure,
}

impl RequeueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RequeueReason::LeaseExpired => "lease_expired",
            RequeueReason::Released => "released",
            RequeueReason::NodeRestarted => "node_restarted",
            RequeueReason::Error => "error",
            RequeueReason::Infrastructure => "infrastructure",
        }
    }
}

/// A requested change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Lease,
    Requeue(RequeueReason),
    Complete,
    Fail,
    Cancel,
    Expire,
    /// An operator re-runs a dead-lettered job with a fresh attempt budget.
    Redrive,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Transition::Lease => "lease",
            Transition::Requeue(_) => "requeue",
            Transition::Complete => "complete",
            Transition::Fail => "fail",
            Transition::Cancel => "cancel",
            Transition::Expire => "expire",
            Transition::Redrive => "redrive",
        }
    }
}

/// A transition that the state machine does not allow from this state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a job that is {}", .transition.name(), .from.as_str())]
pub struct IllegalTransition {
    pub from: JobState,
    pub transition: Transition,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Expired,
    ];

    /// The state after `t`, or why `t` is not allowed here.
    pub fn apply(self, t: Transition) -> Result<JobState, IllegalTransition> {
        use JobState::*;
        let next = match (self, t) {
            (Queued, Transition::Lease) => Running,
            (Running, Transition::Requeue(_)) => Queued,
            (Running, Transition::Complete) => Completed,
            // Queued → Failed covers dead-lettering a job whose input became unusable.
            (Queued | Running, Transition::Fail) => Failed,
            (Queued | Running, Transition::Cancel) => Cancelled,
            (Completed, Transition::Expire) => Expired,
            // Only an operator's action; the store also requires the failure
            // to be a dead letter (attempts exhausted), not a fatal error.
            (Failed, Transition::Redrive) => Queued,
            (from, transition) => return Err(IllegalTransition { from, transition }),
        };
        Ok(next)
    }

    /// Nothing happens to a job in a terminal state by itself. The only ways
    /// out are `Completed → Expired` (retention) and `Failed → Queued` (an
    /// operator's re-drive of a dead letter).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled | JobState::Expired
        )
    }

    /// The status OpenAI's SDKs understand. Only these four literals may ever
    /// reach a client: an unknown one breaks `create_and_poll`.
    pub fn api_status(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "in_progress",
            JobState::Completed | JobState::Expired => "completed",
            JobState::Failed | JobState::Cancelled => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    const ALL_TRANSITIONS: [Transition; 10] = [
        Transition::Lease,
        Transition::Requeue(RequeueReason::LeaseExpired),
        Transition::Requeue(RequeueReason::Released),
        Transition::Requeue(RequeueReason::NodeRestarted),
        Transition::Requeue(RequeueReason::Error),
        Transition::Complete,
        Transition::Fail,
        Transition::Cancel,
        Transition::Expire,
        Transition::Redrive,
    ];

    /// The full table: every (state, transition) pair, legal or not.
    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        let legal: Vec<(JobState, &str, JobState)> = JobState::ALL
            .iter()
            .flat_map(|&s| ALL_TRANSITIONS.iter().map(move |&t| (s, t)))
            .filter_map(|(s, t)| s.apply(t).ok().map(|n| (s, t.name(), n)))
            .collect();
        let expected = vec![
            (Queued, "lease", Running),
            (Queued, "fail", Failed),
            (Queued, "cancel", Cancelled),
            (Running, "requeue", Queued),
            (Running, "requeue", Queued),
            (Running, "requeue", Queued),
            (Running, "requeue", Queued),
            (Running, "complete", Completed),
            (Running, "fail", Failed),
            (Running, "cancel", Cancelled),
            (Completed, "expire", Expired),
            (Failed, "redrive", Queued),
        ];
        assert_eq!(legal, expected);
    }

    #[test]
    fn terminal_states_only_allow_expiry_and_redrive() {
        for s in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for t in ALL_TRANSITIONS {
                let r = s.apply(t);
                if (s, t) == (Completed, Transition::Expire) {
                    assert_eq!(r, Ok(Expired));
                } else if (s, t) == (Failed, Transition::Redrive) {
                    assert_eq!(r, Ok(Queued));
                } else {
                    assert_eq!(r, Err(IllegalTransition { from: s, transition: t }));
                }
            }
        }
    }

    #[test]
    fn api_status_is_always_an_sdk_literal() {
        for s in JobState::ALL {
            assert!(["queued", "in_progress", "completed", "failed"].contains(&s.api_status()));
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn illegal_transition_explains_itself() {
        let e = Completed.apply(Transition::Cancel).unwrap_err();
        assert_eq!(e.to_string(), "cannot cancel a job that is completed");
        let e = Cancelled.apply(Transition::Redrive).unwrap_err();
        assert_eq!(e.to_string(), "cannot redrive a job that is cancelled");
    }

    #[test]
    fn only_a_failed_job_can_be_redriven() {
        for s in JobState::ALL {
            let r = s.apply(Transition::Redrive);
            if s == Failed {
                assert_eq!(r, Ok(Queued));
            } else {
                assert_eq!(
                    r,
                    Err(IllegalTransition {
                        from: s,
                        transition: Transition::Redrive
                    })
                );
            }
        }
    }
}
