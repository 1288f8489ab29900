//! The Video object as OpenAI's SDKs parse it, plus videogen's extension
//! fields (`phase`, `queue_position`, `attempt`, `seed`, ...), which the SDKs
//! keep as extra attributes.

use serde_json::{Value, json};
use videogen_core::{Job, JobState};

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// Renders a job. `queue_position` is only known for queued jobs.
pub fn render(job: &Job, queue_position: Option<u64>) -> Value {
    let error = job
        .error
        .as_ref()
        .map(|e| json!({ "code": e.code, "message": e.message }));
    let queue_position = if job.state == JobState::Queued {
        queue_position
    } else {
        None
    };
    json!({
        "id": job.id.as_str(),
        "object": "video",
        "created_at": secs(job.created_at_ms),
        "completed_at": job.completed_at_ms.map(secs),
        "expires_at": job.expires_at_ms.map(secs),
        "error": error,
        "model": job.spec.model,
        "progress": job.progress,
        "prompt": job.spec.prompt,
        "remixed_from_video_id": Value::Null,
        "seconds": job.spec.seconds.to_string(),
        "size": job.spec.size.to_string(),
        "status": job.state.api_status(),
        // extensions
        "phase": job.phase.as_str(),
        "queue_position": queue_position,
        "attempt": job.attempt,
        "seed": job.spec.seed,
        "style": job.spec.style,
        "step": job.step,
        "total_steps": job.spec.steps,
        "tier": job.tier.as_str(),
    })
}
