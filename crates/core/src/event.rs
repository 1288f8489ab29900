//! A job's event log, typed: what happened ([`EventPayload`]) and the job as
//! it was right after ([`JobEvent`]).
//!
//! One definition serves every reader and writer: both stores persist
//! [`EventPayload`] as its kind and JSON payload; the store's trigger copies
//! the fields only the database knows at that moment (state, phase,
//! progress, attempt, checkpoint step) from the job row into the event, so
//! no writer assembles them by hand; SSE and the audit trail render
//! [`JobEvent::to_json`].

use crate::ids::WorkerId;
use crate::job::{JobError, Phase};
use crate::lifecycle::{JobState, RequeueReason};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What happened to a job, with what only the writer of the event knows.
///
/// Serialised adjacently tagged (`{"kind": "requeued", "data": {...}}`): the
/// store keeps `kind` and `data` in two columns, and the internal worker API
/// carries [`AttemptEvent`]s in the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum EventPayload {
    /// Accepted and queued.
    Created {},
    /// An attempt started on `worker`.
    Leased {
        worker: WorkerId,
    },
    /// The running attempt moved to a new phase or percent.
    Progress {
        step: u32,
        total_steps: u32,
    },
    /// A checkpoint of `step` was committed under `key`.
    Checkpoint {
        step: u32,
        key: String,
    },
    /// The attempt resumed from a checkpoint (written by the worker).
    Resumed {
        from_step: u32,
        checkpoint_attempt: u32,
        /// The step the job had reached before it was interrupted.
        previous_step: u32,
    },
    /// A checkpoint failed verification and was skipped (written by the worker).
    CheckpointRejected {
        key: String,
        step: u32,
        reason: String,
    },
    /// The attempt started again at step 0 although the job had made
    /// progress: no checkpoint was usable, or its model cannot checkpoint
    /// (an upstream engine). Written by the worker.
    Restarted {
        previous_step: u32,
        reason: String,
    },
    /// Back in the queue; the next attempt resumes from the newest checkpoint.
    Requeued {
        reason: RequeueReason,
        /// The attempt's error, for [`RequeueReason::Error`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Finished; its outputs are visible until `expires_at_ms`.
    Completed {
        expires_at_ms: i64,
    },
    /// Failed for good (a fatal error, or attempts exhausted: a dead letter).
    Failed {
        error: JobError,
    },
    Cancelled {},
    /// Retention ran out; the outputs were deleted.
    Expired {},
    /// An operator re-ran a dead letter with a fresh budget of attempts.
    Redriven {
        #[serde(default)]
        previous_error: Option<JobError>,
    },
}

/// The kind of an [`EventPayload`], as stored and as SSE's `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Leased,
    Progress,
    Checkpoint,
    Resumed,
    CheckpointRejected,
    Restarted,
    Requeued,
    Completed,
    Failed,
    Cancelled,
    Expired,
    Redriven,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::Created,
        EventKind::Leased,
        EventKind::Progress,
        EventKind::Checkpoint,
        EventKind::Resumed,
        EventKind::CheckpointRejected,
        EventKind::Restarted,
        EventKind::Requeued,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Cancelled,
        EventKind::Expired,
        EventKind::Redriven,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Leased => "leased",
            EventKind::Progress => "progress",
            EventKind::Checkpoint => "checkpoint",
            EventKind::Resumed => "resumed",
            EventKind::CheckpointRejected => "checkpoint_rejected",
            EventKind::Restarted => "restarted",
            EventKind::Requeued => "requeued",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::Expired => "expired",
            EventKind::Redriven => "redriven",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A kind after which nothing happens to the job by itself (an operator's
    /// re-drive may still follow a `failed`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled | EventKind::Expired
        )
    }
}

/// Why an [`EventPayload`] could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("event {kind:?}: {source}")]
pub struct EventDecodeError {
    kind: String,
    #[source]
    source: serde_json::Error,
}

impl EventPayload {
    pub fn kind(&self) -> EventKind {
        match self {
            EventPayload::Created {} => EventKind::Created,
            EventPayload::Leased { .. } => EventKind::Leased,
            EventPayload::Progress { .. } => EventKind::Progress,
            EventPayload::Checkpoint { .. } => EventKind::Checkpoint,
            EventPayload::Resumed { .. } => EventKind::Resumed,
            EventPayload::CheckpointRejected { .. } => EventKind::CheckpointRejected,
            EventPayload::Restarted { .. } => EventKind::Restarted,
            EventPayload::Requeued { .. } => EventKind::Requeued,
            EventPayload::Completed { .. } => EventKind::Completed,
            EventPayload::Failed { .. } => EventKind::Failed,
            EventPayload::Cancelled {} => EventKind::Cancelled,
            EventPayload::Expired {} => EventKind::Expired,
            EventPayload::Redriven { .. } => EventKind::Redriven,
        }
    }

    /// The payload's fields alone, as stored beside the kind.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("data").unwrap_or_else(|| json!({})),
            // Every variant is a struct of plain fields: serialising cannot fail.
            _ => json!({}),
        }
    }

    /// [`EventPayload::data`] as the JSON text the stores keep.
    pub fn data_json(&self) -> String {
        self.data().to_string()
    }

    /// The payload stored as `kind` and `data_json`. Fields a payload does
    /// not define are ignored, so rows written before events were typed
    /// (whose data also held the job's state) still read.
    pub fn decode(kind: &str, data_json: &str) -> Result<Self, EventDecodeError> {
        let err = |source| EventDecodeError {
            kind: kind.to_owned(),
            source,
        };
        let data: Value = serde_json::from_str(data_json).map_err(err)?;
        serde_json::from_value(json!({ "kind": kind, "data": data })).map_err(err)
    }
}

/// What a worker may append to its job's log; everything else is written by
/// the store with the state change it records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum AttemptEvent {
    Resumed {
        from_step: u32,
        checkpoint_attempt: u32,
        previous_step: u32,
    },
    CheckpointRejected {
        key: String,
        step: u32,
        reason: String,
    },
    Restarted {
        previous_step: u32,
        reason: String,
    },
}

impl From<AttemptEvent> for EventPayload {
    fn from(e: AttemptEvent) -> Self {
        match e {
            AttemptEvent::Resumed {
                from_step,
                checkpoint_attempt,
                previous_step,
            } => EventPayload::Resumed {
                from_step,
                checkpoint_attempt,
                previous_step,
            },
            AttemptEvent::CheckpointRejected { key, step, reason } => {
                EventPayload::CheckpointRejected { key, step, reason }
            }
            AttemptEvent::Restarted { previous_step, reason } => EventPayload::Restarted { previous_step, reason },
        }
    }
}

/// One entry of a job's append-only event log (drives SSE and the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Per-job sequence number, starting at 1; SSE's `id:`.
    pub seq: i64,
    pub at_ms: i64,
    /// The job right after the event, as the store recorded it.
    pub state: JobState,
    pub phase: Phase,
    pub progress: u8,
    pub attempt: u32,
    /// Step of the job's newest checkpoint then, if it had one.
    pub checkpoint_step: Option<u32>,
    pub payload: EventPayload,
}

impl JobEvent {
    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }

    /// The event as clients see it: `status` (the SDK's literal), `state`,
    /// `phase`, `progress`, `attempt`, then the payload's fields; a
    /// `requeued` event also says the step the next attempt resumes from.
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(10);
        m.insert("status".into(), json!(self.state.api_status()));
        m.insert("state".into(), json!(self.state.as_str()));
        m.insert("phase".into(), json!(self.phase.as_str()));
        m.insert("progress".into(), json!(self.progress));
        m.insert("attempt".into(), json!(self.attempt));
        if let EventPayload::Requeued { .. } = self.payload {
            m.insert("resume_step".into(), json!(self.checkpoint_step.unwrap_or(0)));
        }
        if let Value::Object(data) = self.payload.data() {
            m.extend(data);
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_payload() -> Vec<EventPayload> {
        let error = JobError::new("max_attempts_exceeded", "gave up");
        vec![
            EventPayload::Created {},
            EventPayload::Leased {
                worker: WorkerId::new("n", "w0"),
            },
            EventPayload::Progress {
                step: 3,
                total_steps: 30,
            },
            EventPayload::Checkpoint {
                step: 4,
                key: "k".into(),
            },
            EventPayload::Resumed {
                from_step: 4,
                checkpoint_attempt: 1,
                previous_step: 6,
            },
            EventPayload::CheckpointRejected {
                key: "k".into(),
                step: 4,
                reason: "crc".into(),
            },
            EventPayload::Restarted {
                previous_step: 4,
                reason: "no checkpoint".into(),
            },
            EventPayload::Requeued {
                reason: RequeueReason::Error,
                error: Some("boom".into()),
            },
            EventPayload::Completed { expires_at_ms: 9 },
            EventPayload::Failed { error: error.clone() },
            EventPayload::Cancelled {},
            EventPayload::Expired {},
            EventPayload::Redriven {
                previous_error: Some(error),
            },
        ]
    }

    #[test]
    fn every_payload_round_trips_through_kind_and_data() {
        let all = every_payload();
        assert_eq!(all.len(), EventKind::ALL.len());
        for (p, kind) in all.iter().zip(EventKind::ALL) {
            assert_eq!(p.kind(), kind);
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let back = EventPayload::decode(kind.as_str(), &p.data_json()).unwrap();
            assert_eq!(&back, p);
        }
    }

    #[test]
    fn rows_from_before_typed_events_still_read() {
        let old = r#"{"status":"queued","state":"queued","phase":"queued","progress":7,"attempt":2,
                      "reason":"lease_expired","resume_step":4}"#;
        let p = EventPayload::decode("requeued", old).unwrap();
        assert_eq!(
            p,
            EventPayload::Requeued {
                reason: RequeueReason::LeaseExpired,
                error: None
            }
        );
        assert!(EventPayload::decode("no_such_kind", "{}").is_err());
        assert!(
            EventPayload::decode("leased", "{}").is_err(),
            "a missing field is an error"
        );
    }

    #[test]
    fn client_json_has_the_job_fields_then_the_payload() {
        let ev = JobEvent {
            seq: 5,
            at_ms: 1,
            state: JobState::Queued,
            phase: Phase::Queued,
            progress: 40,
            attempt: 2,
            checkpoint_step: Some(12),
            payload: EventPayload::Requeued {
                reason: RequeueReason::Released,
                error: None,
            },
        };
        assert_eq!(
            ev.to_json(),
            json!({"status": "queued", "state": "queued", "phase": "queued", "progress": 40,
                   "attempt": 2, "resume_step": 12, "reason": "released"})
        );
        let running = JobEvent {
            state: JobState::Running,
            payload: EventPayload::Progress {
                step: 3,
                total_steps: 30,
            },
            ..ev
        };
        let v = running.to_json();
        assert_eq!(v["status"], "in_progress");
        assert!(v.get("resume_step").is_none());
        assert_eq!(v["total_steps"], 30);
    }

    #[test]
    fn worker_events_map_to_their_payloads() {
        let e = AttemptEvent::Resumed {
            from_step: 1,
            checkpoint_attempt: 1,
            previous_step: 2,
        };
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(wire["kind"], "resumed");
        assert_eq!(EventPayload::from(e).kind(), EventKind::Resumed);
        let bad = serde_json::from_value::<AttemptEvent>(json!({"kind": "completed", "data": {"expires_at_ms": 1}}));
        assert!(bad.is_err(), "a worker cannot append a completion");
    }
}
