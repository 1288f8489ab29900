//! The attempt logic against a fault-injecting [`ControlPlane`], in process.
//!
//! [`FakeControl`] records every call and answers like the real control
//! plane would once its fault has struck: after a reclaim every fenced call
//! is a 409 ([`ControlError::Stale`]); after a cancel the heartbeat says
//! `cancel` and fenced writes are 409s. [`GatedModel`] wraps the CPU
//! reference model and holds one step (or one frame decoding) until the
//! fault has been delivered, so "the lease is lost *during* step 2" is a
//! fact of the test, not a timing guess.
//!
//! Ordering: tests run on a current-thread runtime. The fake opens the gate
//! from a task it spawns, which cannot run before the lease keeper has
//! finished handling the reply (firing `lost` or `release`), so the held step
//! always resumes after the runner's signal is set.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use videogen_core::{JobState, TenantId, Tier, VideoId, VideoSpec, WorkerId};
use videogen_model::{ReferenceConfig, ReferenceModel, RgbFrame};
use videogen_protocol::{FleetInfo, HeartbeatReply, Upload};

const STEPS: u32 = 6;
/// Lease TTL of the test assignments: the keeper renews every 50 ms.
const TTL_MS: i64 = 150;
/// Longest a held step waits for its fault; only reached when the test fails.
const GATE_WAIT: Duration = Duration::from_secs(20);

// ---- the fake control plane

/// What the fake does wrong, and when.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// The reaper hands the job to another attempt once the heartbeat reports
    /// this step: from then on every fenced call is a 409.
    reclaim_at_step: Option<u32>,
    /// The same, once the attempt reports the encoding phase.
    reclaim_while_encoding: bool,
    /// The job is cancelled once the heartbeat reports this step.
    cancel_at_step: Option<u32>,
    /// The job is cancelled while the checkpoint of this step uploads: that
    /// write (and every fenced call after it) finds the lease stale.
    cancel_during_checkpoint_at: Option<u32>,
    /// A heartbeat during encoding answers `release` (a preemption notice).
    release_while_encoding: bool,
    /// Storing this asset fails (bucket unavailable).
    fail_asset: Option<AssetKind>,
    /// Checkpoint uploads the store refuses (`Unavailable`, a full disk)
    /// before it takes one; `u32::MAX`: every one.
    refuse_checkpoints: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Us,
    /// Another attempt owns the job.
    Reclaimed,
    Cancelled,
}

/// One call the runner made, with what the fake answered where it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Heartbeat {
        step: u32,
        phase: Phase,
        answer: &'static str,
    },
    ReadBlob,
    WriteCheckpoint {
        step: u32,
        stored: bool,
    },
    Event,
    PutAsset {
        kind: AssetKind,
        stored: bool,
    },
    Complete {
        video_bytes: u64,
    },
    Fail {
        code: String,
    },
    Release {
        cause: ReleaseCause,
    },
    Retry {
        message: String,
    },
    Fleet,
}

#[derive(Debug)]
struct FakeState {
    owner: Owner,
    calls: Vec<Call>,
    /// Bodies the fake accepted: checkpoints by step, assets by kind.
    checkpoints: BTreeMap<u32, Vec<u8>>,
    assets: BTreeMap<&'static str, Vec<u8>>,
}

struct FakeControl {
    faults: Faults,
    gate: Arc<Gate>,
    state: Mutex<FakeState>,
}

/// The one place that reads an upload body (a checkpoint or an asset), so
/// a change of the body type touches only this.
/// An upload's bytes after the control plane's own size and CRC check. The
/// runner uploads whole bodies it holds (a stream here would be a change in
/// the runner worth a failing test).
fn receive(body: Upload, crc32: u32) -> Result<Vec<u8>, ControlError> {
    match body {
        Upload::Bytes(bytes) => {
            videogen_protocol::upload::check(&bytes, crc32, videogen_protocol::MAX_UPLOAD_BYTES)?;
            Ok(bytes.to_vec())
        }
        Upload::Stream(_) => Err(ControlError::Rejected("the runner streamed an upload".into())),
    }
}

impl FakeControl {
    fn new(faults: Faults, gate: Arc<Gate>) -> Arc<Self> {
        Arc::new(Self {
            faults,
            gate,
            state: Mutex::new(FakeState {
                owner: Owner::Us,
                calls: Vec::new(),
                checkpoints: BTreeMap::new(),
                assets: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn owner(&self) -> Owner {
        self.lock().owner
    }

    /// Lets the held step go on, once the current task (the keeper handling
    /// this reply) has yielded.
    fn open_gate_after_reply(&self) {
        let gate = self.gate.clone();
        tokio::spawn(async move { gate.open() });
    }

    /// A fenced call: a 409 once the job is not ours.
    fn fenced(state: &FakeState, lease: &Lease) -> Result<(), ControlError> {
        match state.owner {
            Owner::Us => Ok(()),
            Owner::Reclaimed | Owner::Cancelled => Err(ControlError::stale(lease)),
        }
    }

    /// Applies the heartbeat-triggered faults; `Some` answers instead of the normal reply.
    fn strike(&self, state: &mut FakeState, p: &Progress) -> Option<Directive> {
        let f = &self.faults;
        if f.reclaim_at_step.is_some_and(|s| p.step >= s) || (f.reclaim_while_encoding && p.phase == Phase::Encoding) {
            state.owner = Owner::Reclaimed;
            self.open_gate_after_reply();
        } else if f.cancel_at_step.is_some_and(|s| p.step >= s) {
            state.owner = Owner::Cancelled;
            self.open_gate_after_reply();
        } else if f.release_while_encoding && p.phase == Phase::Encoding && !self.gate.is_open() {
            self.open_gate_after_reply();
            return Some(Directive::Release);
        }
        None
    }
}

#[async_trait::async_trait]
impl ControlPlane for FakeControl {
    async fn acquire(&self, _worker: &WorkerInfo, _wait: Duration) -> Result<Option<Assignment>, ControlError> {
        Err(ControlError::Unavailable(
            "the tests hand out assignments themselves".into(),
        ))
    }

    async fn heartbeat(&self, lease: &Lease, p: &Progress) -> Result<HeartbeatReply, ControlError> {
        let mut state = self.lock();
        let struck = if state.owner == Owner::Us {
            self.strike(&mut state, p)
        } else {
            None
        };
        let (answer, reply) = match (state.owner, struck) {
            (Owner::Us, Some(directive)) => ("release", Ok(directive)),
            (Owner::Us, None) => ("continue", Ok(Directive::Continue)),
            (Owner::Cancelled, _) => ("cancel", Ok(Directive::Cancel)),
            (Owner::Reclaimed, _) => ("409", Err(ControlError::stale(lease))),
        };
        state.calls.push(Call::Heartbeat {
            step: p.step,
            phase: p.phase,
            answer,
        });
        reply.map(|directive| HeartbeatReply {
            directive,
            expires_at_ms: lease.expires_at_ms,
        })
    }

    async fn read_blob(&self, lease: &Lease, key: &str) -> Result<Bytes, ControlError> {
        let mut state = self.lock();
        state.calls.push(Call::ReadBlob);
        Self::fenced(&state, lease)?;
        Err(ControlError::Rejected(format!("no blob at {key}")))
    }

    async fn write_checkpoint(
        &self,
        lease: &Lease,
        step: u32,
        crc32: u32,
        bytes: Upload,
    ) -> Result<CheckpointRef, ControlError> {
        let mut state = self.lock();
        if self.faults.cancel_during_checkpoint_at == Some(step) && state.owner == Owner::Us {
            state.owner = Owner::Cancelled;
        }
        let refused = state
            .calls
            .iter()
            .filter(|c| matches!(c, Call::WriteCheckpoint { stored: false, .. }))
            .count();
        let full = u32::try_from(refused).unwrap_or(u32::MAX) < self.faults.refuse_checkpoints;
        let stored = Self::fenced(&state, lease).and_then(|()| {
            if full {
                return Err(ControlError::Unavailable("No space left on device".into()));
            }
            receive(bytes, crc32)
        });
        state.calls.push(Call::WriteCheckpoint {
            step,
            stored: stored.is_ok(),
        });
        let body = stored?;
        let size_bytes = body.len() as u64;
        state.checkpoints.insert(step, body);
        Ok(CheckpointRef {
            key: format!("checkpoints/{}/{}/{step}", lease.job_id, lease.attempt),
            step,
            attempt: lease.attempt,
            crc32,
            size_bytes,
        })
    }

    async fn event(&self, lease: &Lease, _event: &AttemptEvent) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.calls.push(Call::Event);
        Self::fenced(&state, lease)
    }

    async fn put_asset(&self, lease: &Lease, kind: AssetKind, crc32: u32, bytes: Upload) -> Result<(), ControlError> {
        let mut state = self.lock();
        let stored = Self::fenced(&state, lease).and_then(|()| {
            if self.faults.fail_asset == Some(kind) {
                return Err(ControlError::Unavailable("bucket unreachable".into()));
            }
            receive(bytes, crc32)
        });
        state.calls.push(Call::PutAsset {
            kind,
            stored: stored.is_ok(),
        });
        state.assets.insert(kind.as_str(), stored?);
        Ok(())
    }

    async fn complete(&self, lease: &Lease, video_bytes: u64) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.calls.push(Call::Complete { video_bytes });
        Self::fenced(&state, lease)
    }

    async fn fail(&self, lease: &Lease, error: &JobError) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.calls.push(Call::Fail {
            code: error.code.clone(),
        });
        Self::fenced(&state, lease)
    }

    async fn release(&self, lease: &Lease, cause: ReleaseCause) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.calls.push(Call::Release { cause });
        Self::fenced(&state, lease)
    }

    async fn retry(&self, lease: &Lease, message: &str) -> Result<RetryOutcome, ControlError> {
        let mut state = self.lock();
        state.calls.push(Call::Retry {
            message: message.to_owned(),
        });
        Self::fenced(&state, lease)?;
        Ok(RetryOutcome::Requeued)
    }

    async fn fleet(&self) -> Result<FleetInfo, ControlError> {
        self.lock().calls.push(Call::Fleet);
        Ok(FleetInfo { mtbf_secs: 36_000.0 })
    }
}

// ---- the gated model

/// A one-shot latch a blocking model thread waits on.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    fn is_open(&self) -> bool {
        *self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `open` (bounded, so a broken test fails instead of hanging).
    fn wait(&self) {
        let guard = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (_guard, timeout) = self
            .cv
            .wait_timeout_while(guard, GATE_WAIT, |open| !*open)
            .unwrap_or_else(|p| p.into_inner());
        assert!(!timeout.timed_out(), "the fault the held step waits for never came");
    }
}

/// Where the gated model holds until the gate opens.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    /// Before running the step with this index (0-based).
    step: Option<u32>,
    /// Before the `n`th frame decoding (1-based; moderation samples count).
    decode_call: Option<u32>,
}

#[derive(Default)]
struct Counts {
    steps_run: AtomicU32,
    decodes: AtomicU32,
}

struct GatedModel {
    inner: ReferenceModel,
    gate: Arc<Gate>,
    hold: Hold,
    counts: Arc<Counts>,
}

struct GatedGeneration {
    inner: Box<dyn Generation>,
    gate: Arc<Gate>,
    hold: Hold,
    counts: Arc<Counts>,
}

impl GatedModel {
    fn wrap(&self, inner: Box<dyn Generation>) -> Box<dyn Generation> {
        Box::new(GatedGeneration {
            inner,
            gate: self.gate.clone(),
            hold: self.hold,
            counts: self.counts.clone(),
        })
    }
}

impl Model for GatedModel {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn load(&self) -> Result<(), ModelError> {
        self.inner.load()
    }
    fn start(&self, req: &GenerationRequest) -> Result<Box<dyn Generation>, ModelError> {
        Ok(self.wrap(self.inner.start(req)?))
    }
    fn resume(&self, req: &GenerationRequest, checkpoint: &[u8]) -> Result<Box<dyn Generation>, ModelError> {
        Ok(self.wrap(self.inner.resume(req, checkpoint)?))
    }
}

impl Generation for GatedGeneration {
    fn step(&mut self) -> Result<(), ModelError> {
        if self.hold.step == Some(self.inner.steps_done()) {
            self.gate.wait();
        }
        self.counts.steps_run.fetch_add(1, Ordering::SeqCst);
        self.inner.step()
    }
    fn steps_done(&self) -> u32 {
        self.inner.steps_done()
    }
    fn total_steps(&self) -> u32 {
        self.inner.total_steps()
    }
    fn checkpoint(&self) -> Result<Vec<u8>, ModelError> {
        self.inner.checkpoint()
    }
    fn frame_count(&self) -> u32 {
        self.inner.frame_count()
    }
    fn decode_frame(&self, index: u32) -> RgbFrame {
        let n = self.counts.decodes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.hold.decode_call == Some(n) {
            self.gate.wait();
        }
        self.inner.decode_frame(index)
    }
    fn into_frames(self: Box<Self>) -> Result<Box<dyn videogen_model::Frames>, ModelError> {
        // Decoded lazily through `decode_frame`, so the decode holds still apply.
        Ok(Box::new(videogen_model::frames::LazyFrames {
            generation: self,
            fps: 24,
            audio: None,
        }))
    }
}

struct AllowAll;

#[async_trait::async_trait]
impl Moderator for AllowAll {
    async fn check_prompt(&self, _prompt: &str, _style: Option<&str>) -> Verdict {
        Verdict::Allow
    }
    async fn check_frames(&self, _prompt: &str, _frames: &[FrameSample]) -> Verdict {
        Verdict::Allow
    }
}

// ---- one attempt, end to end

/// Checkpoint every `every_steps` (0: never, by steps; never by time).
fn config(every_steps: u32) -> WorkerConfig {
    WorkerConfig {
        checkpoint: CheckpointPolicy::Fixed {
            every_steps,
            every: Duration::from_secs(3600),
        },
        moderation_samples: 1,
        preemption_deadline: Duration::from_secs(30),
        acquire_wait: Duration::from_secs(1),
        finishing_max: 1,
        ..WorkerConfig::default()
    }
}

fn assignment() -> Assignment {
    let id = VideoId::generate();
    let lease = Lease {
        job_id: id.clone(),
        attempt: 1,
        worker: WorkerId::new("test", "w0"),
        expires_at_ms: 1_700_000_000_000,
    };
    let job = Job {
        id,
        tenant: TenantId::parse("acme").expect("valid tenant"),
        tier: Tier::Paid,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: "a lighthouse at dusk".into(),
            seconds: videogen_core::Seconds::S4,
            size: videogen_core::VideoSize::LANDSCAPE_720,
            seed: 7,
            style: None,
            steps: STEPS,
            input_reference: None,
            params: Default::default(),
        },
        state: JobState::Running,
        phase: Phase::Queued,
        progress: 0,
        step: 0,
        attempt: 1,
        created_at_ms: 0,
        enqueued_at_ms: 0,
        started_at_ms: Some(0),
        completed_at_ms: None,
        expires_at_ms: None,
        error: None,
        checkpoint: None,
        prev_checkpoint: None,
        outputs: None,
        lease: Some(lease.clone()),
    };
    Assignment {
        lease,
        job,
        ttl_ms: TTL_MS,
    }
}

struct Run {
    outcome: Outcome,
    fake: Arc<FakeControl>,
    counts: Arc<Counts>,
    /// `videogen_attempts_total` by outcome label, as recorded.
    attempts_total: BTreeMap<String, u64>,
}

/// Runs one attempt to its end on a current-thread runtime, recording metrics.
fn run_one(faults: Faults, hold: Hold, config: WorkerConfig) -> Run {
    let gate = Arc::new(Gate::default());
    let fake = FakeControl::new(faults, gate.clone());
    let counts = Arc::new(Counts::default());
    let model = GatedModel {
        inner: ReferenceModel::new(ReferenceConfig::instant()),
        gate,
        hold,
        counts: counts.clone(),
    };
    let engine = Arc::new(Engine::single(Arc::new(model), Arc::new(AllowAll)));
    let info = WorkerInfo {
        id: WorkerId::new("test", "w0"),
        loaded_models: Vec::new(),
        spot: false,
        memory_class: None,
        model_load_ms: 0,
        serves: None,
        models: Vec::new(),
    };
    let mut worker = Worker::new(fake.clone(), engine, info, config);
    let recorder = metrics_capture::Recorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let outcome = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let shutdown = CancellationToken::new();
            worker.run_attempt(assignment(), &shutdown).await
        })
    });
    Run {
        outcome,
        fake,
        counts,
        attempts_total: recorder.counter_by_label("videogen_attempts_total", "outcome"),
    }
}

fn counted(outcome: &str) -> BTreeMap<String, u64> {
    BTreeMap::from([(outcome.to_owned(), 1)])
}

/// Calls that are not heartbeats, events or fleet reads: what changes the job.
fn writes(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| !matches!(c, Call::Heartbeat { .. } | Call::Event | Call::Fleet))
        .cloned()
        .collect()
}

fn heartbeats_after_the_first(calls: &[Call], answer: &str) -> usize {
    calls
        .iter()
        .skip_while(|c| !matches!(c, Call::Heartbeat { answer: a, .. } if *a == answer))
        .skip(1)
        .filter(|c| matches!(c, Call::Heartbeat { .. }))
        .count()
}

#[test]
fn a_healthy_attempt_uploads_three_assets_then_completes() {
    let run = run_one(Faults::default(), Hold::default(), config(2));
    assert_eq!(run.outcome, Outcome::Completed);
    let state = run.fake.lock();
    let video_bytes = state.assets["video"].len() as u64;
    assert_eq!(&state.assets["video"][4..8], b"ftyp", "an MP4");
    assert_eq!(
        writes(&state.calls),
        [
            Call::WriteCheckpoint { step: 2, stored: true },
            Call::WriteCheckpoint { step: 4, stored: true },
            Call::PutAsset {
                kind: AssetKind::Video,
                stored: true
            },
            Call::PutAsset {
                kind: AssetKind::Thumbnail,
                stored: true
            },
            Call::PutAsset {
                kind: AssetKind::Spritesheet,
                stored: true
            },
            Call::Complete { video_bytes },
        ]
    );
    assert_eq!(run.counts.steps_run.load(Ordering::SeqCst), STEPS);
    assert_eq!(run.attempts_total, counted("completed"));
}

#[test]
fn a_lease_lost_mid_step_ends_the_attempt_at_that_step_boundary() {
    // Step 2 is running when the reaper gives the job to another attempt.
    let faults = Faults {
        reclaim_at_step: Some(2),
        ..Faults::default()
    };
    let hold = Hold {
        step: Some(2),
        ..Hold::default()
    };
    let run = run_one(faults, hold, config(0));
    assert_eq!(run.outcome, Outcome::LeaseLost);
    assert_eq!(run.fake.owner(), Owner::Reclaimed);
    // The step in flight finishes; no step starts after the loss.
    assert_eq!(run.counts.steps_run.load(Ordering::SeqCst), 3);
    let calls = run.fake.calls();
    assert_eq!(writes(&calls), [], "nothing uploaded, completed, released or retried");
    assert_eq!(
        heartbeats_after_the_first(&calls, "409"),
        0,
        "the keeper stops at the 409"
    );
    assert_eq!(run.attempts_total, counted("lease_lost"));
}

#[test]
fn a_heartbeat_conflict_while_encoding_uploads_nothing() {
    // Moderation decodes one frame, encoding frame 0 the second: hold the
    // third (frame 1), after the encoder reported its phase.
    let faults = Faults {
        reclaim_while_encoding: true,
        ..Faults::default()
    };
    let hold = Hold {
        decode_call: Some(3),
        ..Hold::default()
    };
    let run = run_one(faults, hold, config(0));
    assert_eq!(run.outcome, Outcome::LeaseLost);
    assert_eq!(run.counts.steps_run.load(Ordering::SeqCst), STEPS);
    // The encoder checks the lease every 8 frames: it stops before frame 8.
    assert_eq!(run.counts.decodes.load(Ordering::SeqCst), 1 + 8);
    let calls = run.fake.calls();
    assert!(
        calls.contains(&Call::Heartbeat {
            step: STEPS,
            phase: Phase::Encoding,
            answer: "409"
        }),
        "{calls:?}"
    );
    assert_eq!(writes(&calls), [], "no asset and no completion after the 409");
    assert_eq!(run.attempts_total, counted("lease_lost"));
}

/// The bucket refusing an output is the platform's fault: the job goes
/// back uncharged (a release, not a retry) and nothing is completed.
#[test]
fn an_asset_the_store_refuses_gives_the_job_back_uncharged() {
    let faults = Faults {
        fail_asset: Some(AssetKind::Video),
        ..Faults::default()
    };
    let run = run_one(faults, Hold::default(), config(0));
    assert_eq!(run.outcome, Outcome::Infrastructure);
    let state = run.fake.lock();
    assert!(state.assets.is_empty(), "{:?}", state.assets.keys());
    assert_eq!(
        writes(&state.calls),
        [
            Call::PutAsset {
                kind: AssetKind::Video,
                stored: false
            },
            Call::Release {
                cause: ReleaseCause::Infrastructure
            }
        ]
    );
    assert_eq!(run.attempts_total, counted("infrastructure"));
}

/// A checkpoint the store refuses once is uploaded again, and the attempt
/// goes on.
#[test]
fn a_refused_checkpoint_upload_is_retried() {
    let faults = Faults {
        refuse_checkpoints: 1,
        ..Faults::default()
    };
    let run = run_one(faults, Hold::default(), config(3));
    assert_eq!(run.outcome, Outcome::Completed);
    let state = run.fake.lock();
    let checkpoints: Vec<&Call> = state
        .calls
        .iter()
        .filter(|c| matches!(c, Call::WriteCheckpoint { .. }))
        .collect();
    assert_eq!(
        checkpoints,
        [
            &Call::WriteCheckpoint { step: 3, stored: false },
            &Call::WriteCheckpoint { step: 3, stored: true }
        ]
    );
    assert_eq!(state.checkpoints.keys().copied().collect::<Vec<_>>(), [3]);
}

/// A store that keeps refusing checkpoints costs the attempt its
/// checkpoints, not the attempt: it completes without them (the defect
/// was an attempt ended, and with it the job's budget, by a full disk).
#[test]
fn checkpoints_that_keep_failing_are_skipped_and_the_attempt_completes() {
    let faults = Faults {
        refuse_checkpoints: u32::MAX,
        ..Faults::default()
    };
    let run = run_one(faults, Hold::default(), config(2));
    assert_eq!(run.outcome, Outcome::Completed);
    let state = run.fake.lock();
    assert!(state.checkpoints.is_empty());
    let tries = |step| {
        state
            .calls
            .iter()
            .filter(|c| **c == Call::WriteCheckpoint { step, stored: false })
            .count()
    };
    // Checkpoints at steps 2 and 4 (step 6 is the end), each tried in full.
    let expected = CHECKPOINT_TRIES as usize;
    assert_eq!((tries(2), tries(4)), (expected, expected));
    assert_eq!(state.assets.len(), 3);
    assert!(state.calls.iter().any(|c| matches!(c, Call::Complete { .. })));
    assert!(
        !state
            .calls
            .iter()
            .any(|c| matches!(c, Call::Retry { .. } | Call::Release { .. }))
    );
    assert_eq!(run.attempts_total, counted("completed"));
}

#[test]
fn a_cancel_reported_by_the_heartbeat_counts_as_cancelled() {
    let faults = Faults {
        cancel_at_step: Some(2),
        ..Faults::default()
    };
    let hold = Hold {
        step: Some(2),
        ..Hold::default()
    };
    let run = run_one(faults, hold, config(0));
    assert_eq!(run.outcome, Outcome::Cancelled);
    assert_eq!(run.counts.steps_run.load(Ordering::SeqCst), 3);
    let calls = run.fake.calls();
    assert_eq!(writes(&calls), []);
    assert_eq!(heartbeats_after_the_first(&calls, "cancel"), 0);
    assert_eq!(run.attempts_total, counted("cancelled"));
}

#[test]
fn a_cancel_during_a_checkpoint_upload_counts_as_cancelled() {
    // The upload of step 2's checkpoint finds the job cancelled; the runner
    // learns it from the keeper or from that upload's result, whichever
    // comes first, and asks the control plane why when it was the upload.
    let faults = Faults {
        cancel_during_checkpoint_at: Some(2),
        ..Faults::default()
    };
    let run = run_one(faults, Hold::default(), config(2));
    assert_eq!(run.outcome, Outcome::Cancelled);
    assert_eq!(run.fake.owner(), Owner::Cancelled);
    let state = run.fake.lock();
    assert!(state.checkpoints.is_empty());
    assert_eq!(
        writes(&state.calls),
        [Call::WriteCheckpoint { step: 2, stored: false }],
        "no later checkpoint, no asset, no completion, no release"
    );
    assert!(
        state
            .calls
            .iter()
            .any(|c| matches!(c, Call::Heartbeat { answer: "cancel", .. })),
        "{:?}",
        state.calls
    );
    assert_eq!(run.attempts_total, counted("cancelled"));
}

#[test]
fn a_release_during_encoding_still_completes() {
    // Generation is over: there is nothing left to checkpoint, and finishing
    // costs less than redoing every step, so the attempt completes.
    let faults = Faults {
        release_while_encoding: true,
        ..Faults::default()
    };
    let hold = Hold {
        decode_call: Some(3),
        ..Hold::default()
    };
    let run = run_one(faults, hold, config(0));
    assert_eq!(run.outcome, Outcome::Completed);
    let state = run.fake.lock();
    assert!(
        state.calls.contains(&Call::Heartbeat {
            step: STEPS,
            phase: Phase::Encoding,
            answer: "release"
        }),
        "{:?}",
        state.calls
    );
    let video_bytes = state.assets["video"].len() as u64;
    assert_eq!(
        writes(&state.calls),
        [
            Call::PutAsset {
                kind: AssetKind::Video,
                stored: true
            },
            Call::PutAsset {
                kind: AssetKind::Thumbnail,
                stored: true
            },
            Call::PutAsset {
                kind: AssetKind::Spritesheet,
                stored: true
            },
            Call::Complete { video_bytes },
        ],
        "no checkpoint and no release after generation"
    );
    assert_eq!(run.attempts_total, counted("completed"));
}

#[test]
fn outcome_labels_are_the_documented_ones() {
    let labels: Vec<&str> = [
        Outcome::Completed,
        Outcome::Cancelled,
        Outcome::LeaseLost,
        Outcome::Released,
        Outcome::Failed,
        Outcome::Retry,
        Outcome::DeadLettered,
        Outcome::Infrastructure,
    ]
    .into_iter()
    .map(Outcome::as_str)
    .collect();
    assert_eq!(
        labels,
        [
            "completed",
            "cancelled",
            "lease_lost",
            "released",
            "failed",
            "retry",
            "dead_lettered",
            "infrastructure"
        ]
    );
}

/// A `metrics` recorder that keeps counters, installed for one thread.
mod metrics_capture {
    use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub(super) struct Recorder {
        counters: Mutex<Vec<(Key, Arc<Count>)>>,
    }

    #[derive(Default)]
    struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::SeqCst);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::SeqCst);
        }
    }

    impl Recorder {
        /// Counts of counter `name` by the value of its `label`.
        pub(super) fn counter_by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
            let mut by = BTreeMap::new();
            for (key, count) in self.counters.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if key.name() != name {
                    continue;
                }
                let value = key.labels().find(|l| l.key() == label).map(|l| l.value().to_owned());
                *by.entry(value.unwrap_or_default()).or_insert(0) += count.0.load(Ordering::SeqCst);
            }
            by
        }
    }

    impl metrics::Recorder for Recorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let count = Arc::new(Count::default());
            self.counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key.clone(), count.clone()));
            Counter::from_arc(count)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}
