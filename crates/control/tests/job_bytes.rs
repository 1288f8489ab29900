//! A job's bytes go when nothing will read them again: on a failure for
//! good, for a dead letter's checkpoints once their retention is over, and
//! for orphans (no job, or a job that no longer wants them) on the sweep,
//! never before the grace period. Real SQLite store and local bucket; the
//! clock is a [`ManualClock`] started at the real time (blob ages are the
//! files' own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use videogen_control::housekeeping;
use videogen_control::orphans;
use videogen_control::{Dispatcher, JobBus, LocalControl, Runtime, RuntimeConfig};
use videogen_core::blob::{BlobError, keys};
use videogen_core::store::{NewJob, Submitted};
use videogen_core::{
    Clock, JobError, Lease, ManualClock, Seconds, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId,
};
use videogen_protocol::{AssetKind, ControlPlane, RetryOutcome};

const HOUR_MS: i64 = 3_600_000;

struct Fixture {
    rt: Arc<Runtime>,
    clock: Arc<ManualClock>,
    control: LocalControl,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Starts at the real time: the sweep compares it with the files' mtimes.
    let clock = Arc::new(ManualClock::new(videogen_core::SystemClock.now_ms()));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let rt = Arc::new(Runtime {
        store: Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap()),
        blob: Arc::new(videogen_blob::LocalBlobStore::new(dir.path()).unwrap()),
        dispatcher: Arc::new(Dispatcher::new(Default::default(), dyn_clock.clone())),
        bus: JobBus::default(),
        clock: dyn_clock,
        config: RuntimeConfig {
            max_attempts: 1,
            dead_letter_checkpoint_retention: Duration::from_secs(24 * 3600),
            orphan_grace: Duration::from_secs(3600),
            ..RuntimeConfig::default()
        },
        fleet: Arc::default(),
        storage: Default::default(),
    });
    let control = LocalControl::new(rt.clone());
    Fixture {
        rt,
        clock,
        control,
        _dir: dir,
    }
}

async fn leased(f: &Fixture) -> Lease {
    let new = NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Paid,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: "a kite over dunes".into(),
            seconds: Seconds::S4,
            size: VideoSize::PORTRAIT_720,
            seed: 3,
            style: None,
            steps: 8,
            input_reference: None,
            params: Default::default(),
        },
        now_ms: f.clock.now_ms(),
    };
    let Submitted::Created(job) = f.rt.store.submit(new, None).await.unwrap() else {
        panic!("replayed without a key")
    };
    // The input reference a submit stores.
    f.rt.blob
        .put(&keys::input_reference(&job.id), Bytes::from_static(b"png"))
        .await
        .unwrap();
    f.rt.store
        .lease(&job.id, &WorkerId::new("n", "w0"), f.clock.now_ms(), 30_000)
        .await
        .unwrap()
        .unwrap()
}

async fn checkpoint(f: &Fixture, lease: &Lease, step: u32) -> String {
    let bytes = Bytes::from(vec![step as u8; 4096]);
    let crc = crc32fast::hash(&bytes);
    f.control
        .write_checkpoint(lease, step, crc, bytes.into())
        .await
        .unwrap()
        .key
}

async fn exists(f: &Fixture, key: &str) -> bool {
    match f.rt.blob.size(key).await {
        Ok(_) => true,
        Err(BlobError::NotFound(_)) => false,
        Err(e) => panic!("{key}: {e}"),
    }
}

#[tokio::test]
async fn a_job_failed_for_good_loses_its_checkpoints_and_input() {
    let f = fixture().await;
    let lease = leased(&f).await;
    let ck = checkpoint(&f, &lease, 2).await;
    let input = keys::input_reference(&lease.job_id);
    assert!(exists(&f, &ck).await && exists(&f, &input).await);
    f.control
        .fail(&lease, &JobError::new("output_moderation_blocked", "blocked"))
        .await
        .unwrap();
    assert!(!exists(&f, &ck).await, "checkpoint kept after a final failure");
    assert!(!exists(&f, &input).await, "input kept after a final failure");
}

#[tokio::test]
async fn a_dead_letter_keeps_its_checkpoints_for_the_retention_then_loses_them() {
    let f = fixture().await;
    let lease = leased(&f).await;
    let ck = checkpoint(&f, &lease, 4).await;
    // One attempt allowed: this error dead-letters the job.
    let outcome = f.control.retry(&lease, "worker crashed").await.unwrap();
    assert_eq!(outcome, RetryOutcome::DeadLettered);

    // Within the retention a re-drive could still resume: all kept.
    f.clock.advance_ms(23 * HOUR_MS);
    assert_eq!(housekeeping::sweep_dead_letter_checkpoints(&f.rt).await.unwrap(), 0);
    assert!(exists(&f, &ck).await);
    let job = f.rt.store.job(&lease.job_id).await.unwrap().unwrap();
    assert!(job.is_dead_letter() && job.checkpoint.is_some());

    // Past it: the checkpoints go, and the job no longer points at them, so
    // a later re-drive starts over instead of failing to read them.
    f.clock.advance_ms(2 * HOUR_MS);
    assert_eq!(housekeeping::sweep_dead_letter_checkpoints(&f.rt).await.unwrap(), 1);
    assert!(!exists(&f, &ck).await);
    let job = f.rt.store.job(&lease.job_id).await.unwrap().unwrap();
    assert_eq!((&job.checkpoint, &job.prev_checkpoint), (&None, &None));
    assert!(job.is_dead_letter(), "still a dead letter an operator can re-drive");
    assert!(
        exists(&f, &keys::input_reference(&lease.job_id)).await,
        "the input stays for a re-drive"
    );
    assert_eq!(housekeeping::sweep_dead_letter_checkpoints(&f.rt).await.unwrap(), 0);
}

fn shard_of(id: &VideoId) -> u8 {
    let s = id.as_str();
    u8::from_str_radix(&s[s.len() - 2..], 16).unwrap()
}

#[tokio::test]
async fn the_orphan_sweep_deletes_what_no_job_wants_after_the_grace_period() {
    let f = fixture().await;
    // A completed job: its committed outputs stay, an output of an attempt
    // that lost the race and a leftover checkpoint are orphans.
    let lease = leased(&f).await;
    let stray_ck = checkpoint(&f, &lease, 2).await;
    for kind in AssetKind::ALL {
        let bytes = Bytes::from_static(b"asset");
        f.control
            .put_asset(&lease, kind, crc32fast::hash(&bytes), bytes.into())
            .await
            .unwrap();
    }
    f.control.complete(&lease, 5).await.unwrap();
    // `complete` deleted the checkpoints itself; put one back as if that
    // delete had failed.
    f.rt.blob.put(&stray_ck, Bytes::from_static(b"old")).await.unwrap();
    let stray_output = keys::video(&lease.job_id, lease.attempt + 7);
    f.rt.blob.put(&stray_output, Bytes::from_static(b"x")).await.unwrap();
    // Bytes of a job whose row is gone (deleted while a write was in flight).
    let ghost = VideoId::generate();
    let ghost_input = keys::input_reference(&ghost);
    f.rt.blob.put(&ghost_input, Bytes::from_static(b"png")).await.unwrap();
    // A running job's bytes are never touched.
    let running = leased(&f).await;
    let running_ck = checkpoint(&f, &running, 2).await;

    let sweep_all = async |now: i64| {
        let mut deleted = 0;
        for shard in [shard_of(&lease.job_id), shard_of(&ghost), shard_of(&running.job_id)] {
            deleted += orphans::sweep_shard(&f.rt, shard, now).await.unwrap().deleted;
        }
        deleted
    };
    // Within the grace period nothing goes: a job row may not be committed yet.
    assert_eq!(sweep_all(f.clock.now_ms()).await, 0);
    assert!(exists(&f, &ghost_input).await);

    let later = f.clock.now_ms() + 2 * HOUR_MS;
    let deleted = sweep_all(later).await;
    assert!(!exists(&f, &stray_ck).await, "a completed job's checkpoint survived");
    assert!(!exists(&f, &stray_output).await, "an uncommitted output survived");
    assert!(!exists(&f, &ghost_input).await, "a deleted job's input survived");
    assert_eq!(deleted, 3);
    let job = f.rt.store.job(&lease.job_id).await.unwrap().unwrap();
    let outputs = job.outputs.unwrap();
    for key in [&outputs.video_key, &outputs.thumbnail_key, &outputs.spritesheet_key] {
        assert!(exists(&f, key).await, "committed output {key} was swept");
    }
    assert!(exists(&f, &keys::input_reference(&lease.job_id)).await);
    assert!(exists(&f, &running_ck).await, "a running job's checkpoint was swept");
    assert_eq!(sweep_all(later).await, 0, "a second pass finds nothing");
}
