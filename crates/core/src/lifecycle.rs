//! The job state machine: the only place that says which changes are legal.
//!
//! ```text
//!            lease                 complete
//!  Queued ─────────▶ Running ──────────────▶ Completed ──expire──▶ Expired
//!    ▲  │              │  │
//!    │  │   requeue    │  │ fail (fatal, or attempts exhausted = dead letter)
//!    │  │◀─────────────┘  └──────────────▶ Failed
//!    │  │ cancel             cancel
//!    │  └──────────▶ Cancelled ◀──────── Running
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
}

impl RequeueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RequeueReason::LeaseExpired => "lease_expired",
            RequeueReason::Released => "released",
            RequeueReason::NodeRestarted => "node_restarted",
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
            (from, transition) => return Err(IllegalTransition { from, transition }),
        };
        Ok(next)
    }

    /// No transition leaves a terminal state except `Completed → Expired`.
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

    const ALL_TRANSITIONS: [Transition; 8] = [
        Transition::Lease,
        Transition::Requeue(RequeueReason::LeaseExpired),
        Transition::Requeue(RequeueReason::Released),
        Transition::Requeue(RequeueReason::NodeRestarted),
        Transition::Complete,
        Transition::Fail,
        Transition::Cancel,
        Transition::Expire,
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
            (Running, "complete", Completed),
            (Running, "fail", Failed),
            (Running, "cancel", Cancelled),
            (Completed, "expire", Expired),
        ];
        assert_eq!(legal, expected);
    }

    #[test]
    fn terminal_states_only_allow_expiring_a_completed_job() {
        for s in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for t in ALL_TRANSITIONS {
                let r = s.apply(t);
                if (s, t) == (Completed, Transition::Expire) {
                    assert_eq!(r, Ok(Expired));
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
    }
}
