//! The orphan sweep: bytes in the blob store that no job wants.
//!
//! Every path that ends a job deletes its bytes (cancel, failure, expiry,
//! delete), but a crash between a write and its commit, a delete that
//! failed, or an upload that raced a cancel leaves some behind. The sweep
//! walks the store one shard (`{root}/{xx}/`) per pass, looks up each job
//! directory's job, and deletes what [`wanted`] says the job no longer
//! needs, sparing anything younger than the grace period (its job row may
//! not be committed yet: an input is stored before its submit commits).

use videogen_core::blob::BlobStore;
use videogen_core::store::StoreError;
use videogen_core::{Job, JobState, VideoId};

use crate::local::Runtime;

/// The three trees a job's bytes live in (see `videogen_core::blob::keys::job_prefixes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Outputs,
    Checkpoints,
    Inputs,
}

impl Root {
    pub const ALL: [Root; 3] = [Root::Outputs, Root::Checkpoints, Root::Inputs];

    fn as_str(self) -> &'static str {
        match self {
            Root::Outputs => "outputs",
            Root::Checkpoints => "checkpoints",
            Root::Inputs => "inputs",
        }
    }
}

/// Which of a job directory's objects its job still needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    All,
    Nothing,
    /// Only these keys (a completed job's committed outputs).
    Only(Vec<String>),
}

/// The pure decision: what `root` of a job in this state should hold.
/// `None`: the job row is gone (deleted), so nothing.
pub fn wanted(root: Root, job: Option<&Job>) -> Wanted {
    let Some(job) = job else { return Wanted::Nothing };
    match (job.state, root) {
        // An attempt may be writing any of it.
        (JobState::Queued | JobState::Running, _) => Wanted::All,
        (JobState::Completed, Root::Outputs) => match &job.outputs {
            Some(o) => Wanted::Only(vec![
                o.video_key.clone(),
                o.thumbnail_key.clone(),
                o.spritesheet_key.clone(),
            ]),
            None => Wanted::Nothing,
        },
        (JobState::Completed, Root::Checkpoints) => Wanted::Nothing,
        // A remix may start from it while the video is kept.
        (JobState::Completed, Root::Inputs) => Wanted::All,
        // A re-drive resumes from them (the retention sweep bounds how long).
        (JobState::Failed, Root::Checkpoints | Root::Inputs) if job.is_dead_letter() => Wanted::All,
        (JobState::Failed | JobState::Cancelled | JobState::Expired, _) => Wanted::Nothing,
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    pub jobs_seen: usize,
    pub deleted: usize,
    pub deleted_bytes: u64,
}

/// Sweeps shard `shard` (0..=255) of every root; `now_ms` and the grace
/// period decide what is old enough to go.
pub async fn sweep_shard(rt: &Runtime, shard: u8, now_ms: i64) -> Result<SweepStats, SweepError> {
    let grace_ms = i64::try_from(rt.config.orphan_grace.as_millis()).unwrap_or(i64::MAX);
    let mut stats = SweepStats::default();
    for root in Root::ALL {
        let dirs = rt.blob.list_dirs(&format!("{}/{shard:02x}/", root.as_str())).await?;
        for dir in dirs {
            let Some(id) = dir.trim_end_matches('/').rsplit('/').next().and_then(VideoId::parse) else {
                continue;
            };
            stats.jobs_seen += 1;
            let job = rt.store.job(&id).await?;
            let keep = wanted(root, job.as_ref());
            if keep == Wanted::All {
                continue;
            }
            let (n, bytes) = delete_unwanted(rt.blob.as_ref(), &dir, &keep, now_ms - grace_ms).await?;
            stats.deleted += n;
            stats.deleted_bytes += bytes;
        }
    }
    if stats.deleted > 0 {
        tracing::info!(
            shard,
            deleted = stats.deleted,
            bytes = stats.deleted_bytes,
            "orphaned blobs deleted"
        );
        metrics::counter!("videogen_orphan_blobs_deleted_total").increment(stats.deleted as u64);
        metrics::counter!("videogen_orphan_bytes_deleted_total").increment(stats.deleted_bytes);
    }
    Ok(stats)
}

async fn delete_unwanted(
    blob: &dyn BlobStore,
    dir: &str,
    keep: &Wanted,
    older_than_ms: i64,
) -> Result<(usize, u64), SweepError> {
    let mut deleted = (0, 0);
    for meta in blob.list(dir).await? {
        let wanted = match keep {
            Wanted::All => true,
            Wanted::Nothing => false,
            Wanted::Only(keys) => keys.contains(&meta.key),
        };
        if wanted || meta.modified_ms > older_than_ms {
            continue;
        }
        blob.delete(&meta.key).await?;
        deleted.0 += 1;
        deleted.1 += meta.size;
    }
    Ok(deleted)
}

/// Why a sweep pass stopped early (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] videogen_core::blob::BlobError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use videogen_core::JobError;

    fn job(state: JobState) -> Job {
        let spec = videogen_core::VideoSpec {
            model: "videogen-ref".into(),
            prompt: "p".into(),
            seconds: videogen_core::Seconds::S4,
            size: videogen_core::VideoSize::PORTRAIT_720,
            seed: 1,
            style: None,
            steps: 8,
            input_reference: None,
            params: Default::default(),
        };
        Job {
            id: VideoId::generate(),
            tenant: videogen_core::TenantId::parse("t").unwrap(),
            tier: videogen_core::Tier::Free,
            spec,
            state,
            phase: videogen_core::Phase::Queued,
            progress: 0,
            step: 0,
            attempt: 1,
            created_at_ms: 0,
            enqueued_at_ms: 0,
            started_at_ms: None,
            completed_at_ms: None,
            expires_at_ms: None,
            error: None,
            checkpoint: None,
            prev_checkpoint: None,
            outputs: None,
            lease: None,
        }
    }

    #[test]
    fn what_each_state_keeps() {
        use Root::*;
        for root in Root::ALL {
            assert_eq!(wanted(root, None), Wanted::Nothing, "deleted job, {root:?}");
            assert_eq!(wanted(root, Some(&job(JobState::Queued))), Wanted::All);
            assert_eq!(wanted(root, Some(&job(JobState::Running))), Wanted::All);
            assert_eq!(wanted(root, Some(&job(JobState::Cancelled))), Wanted::Nothing);
            assert_eq!(wanted(root, Some(&job(JobState::Expired))), Wanted::Nothing);
        }
        let mut failed = job(JobState::Failed);
        failed.error = Some(JobError::new("output_moderation_blocked", "no"));
        assert_eq!(wanted(Checkpoints, Some(&failed)), Wanted::Nothing);
        assert_eq!(wanted(Inputs, Some(&failed)), Wanted::Nothing);
        failed.error = Some(JobError::new(videogen_core::job::MAX_ATTEMPTS_EXCEEDED, "gave up"));
        assert_eq!(
            wanted(Checkpoints, Some(&failed)),
            Wanted::All,
            "a dead letter may be re-driven"
        );
        assert_eq!(wanted(Inputs, Some(&failed)), Wanted::All);
        assert_eq!(wanted(Outputs, Some(&failed)), Wanted::Nothing);

        let mut done = job(JobState::Completed);
        done.outputs = Some(videogen_core::Outputs {
            video_key: "outputs/aa/v/2/video.mp4".into(),
            thumbnail_key: "outputs/aa/v/2/thumbnail.jpg".into(),
            spritesheet_key: "outputs/aa/v/2/spritesheet.jpg".into(),
            video_bytes: 1,
        });
        let Wanted::Only(keys) = wanted(Outputs, Some(&done)) else {
            panic!()
        };
        assert_eq!(keys.len(), 3);
        assert_eq!(wanted(Checkpoints, Some(&done)), Wanted::Nothing);
        assert_eq!(wanted(Inputs, Some(&done)), Wanted::All);
    }
}
