//! The dispatcher: the server-side owner of the scheduler.
//!
//! The store is the source of truth; the scheduler is an in-memory index of
//! runnable jobs rebuilt from the store on start-up ([`Dispatcher::seed`]) and
//! kept current by every path that makes a job runnable (submit, release,
//! reaper). A job the scheduler hands out may have been cancelled since: the
//! store's compare-and-set lease then returns `None` and the worker asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use videogen_core::{Clock, QueuedJob, VideoId};
use videogen_sched::{Scheduler, SchedulerConfig, TierMap, WorkerView};

pub struct Dispatcher {
    sched: Mutex<Scheduler>,
    wake: Notify,
    /// Cancellation handles of jobs running in this process.
    running: Mutex<HashMap<VideoId, CancellationToken>>,
    clock: Arc<dyn Clock>,
}

impl Dispatcher {
    pub fn new(cfg: SchedulerConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            sched: Mutex::new(Scheduler::new(cfg)),
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn sched(&self) -> MutexGuard<'_, Scheduler> {
        // A panic while holding the lock cannot leave the scheduler half-updated
        // in a way that matters more than stopping: keep serving.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every queued job (start-up).
    pub fn seed(&self, jobs: impl IntoIterator<Item = QueuedJob>) {
        let mut s = self.sched();
        for j in jobs {
            s.enqueue(j);
        }
        drop(s);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    pub fn enqueue(&self, job: QueuedJob) {
        self.sched().enqueue(job);
        self.publish_depth();
        self.wake.notify_one();
    }

    /// Forgets a queued job and stops it if it runs here.
    pub fn cancel(&self, id: &VideoId) {
        self.sched().remove(id);
        if let Some(t) = self.running_map().get(id) {
            t.cancel();
        }
        self.publish_depth();
    }

    /// Waits until a job is due for a worker with these models loaded.
    pub async fn next(&self, loaded_models: &[String], shutdown: &CancellationToken) -> Option<QueuedJob> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Register interest before checking, so an enqueue between the
            // check and the await is not missed.
            notified.as_mut().enable();
            let picked = {
                let now = self.clock.now_ms();
                self.sched().next(now, &WorkerView { loaded_models })
            };
            if let Some(job) = picked {
                self.publish_depth();
                return Some(job);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    pub fn position(&self, id: &VideoId) -> Option<u64> {
        let now = self.clock.now_ms();
        self.sched().position(id, now)
    }

    pub fn depth(&self) -> TierMap<usize> {
        self.sched().depth()
    }

    pub fn queued(&self) -> usize {
        self.sched().len()
    }

    fn running_map(&self) -> MutexGuard<'_, HashMap<VideoId, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a job as running here; the token fires on cancel.
    pub fn track_running(&self, id: &VideoId) -> CancellationToken {
        let t = CancellationToken::new();
        self.running_map().insert(id.clone(), t.clone());
        t
    }

    pub fn untrack_running(&self, id: &VideoId) {
        self.running_map().remove(id);
    }

    fn publish_depth(&self) {
        let d = self.depth();
        metrics::gauge!("videogen_queue_depth", "tier" => "free").set(d.free as f64);
        metrics::gauge!("videogen_queue_depth", "tier" => "paid").set(d.paid as f64);
        metrics::gauge!("videogen_queue_depth", "tier" => "internal").set(d.internal as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use videogen_core::{ManualClock, TenantId, Tier};

    fn job(tier: Tier, at: i64) -> QueuedJob {
        QueuedJob {
            id: VideoId::generate(),
            tenant: TenantId::parse("t").unwrap(),
            tier,
            model: "videogen-ref".into(),
            enqueued_at_ms: at,
        }
    }

    #[tokio::test]
    async fn an_idle_worker_wakes_when_a_job_arrives() {
        let d = Arc::new(Dispatcher::new(
            SchedulerConfig::default(),
            Arc::new(ManualClock::new(0)),
        ));
        let stop = CancellationToken::new();
        let waiter = {
            let d = d.clone();
            let stop = stop.clone();
            tokio::spawn(async move { d.next(&[], &stop).await })
        };
        tokio::task::yield_now().await;
        let j = job(Tier::Free, 0);
        d.enqueue(j.clone());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.map(|g| g.id), Some(j.id));
    }

    #[tokio::test]
    async fn shutdown_releases_waiting_workers() {
        let d = Dispatcher::new(SchedulerConfig::default(), Arc::new(ManualClock::new(0)));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(d.next(&[], &stop).await.is_none());
    }

    #[tokio::test]
    async fn cancel_removes_queued_and_signals_running() {
        let d = Dispatcher::new(SchedulerConfig::default(), Arc::new(ManualClock::new(0)));
        let queued = job(Tier::Paid, 0);
        d.enqueue(queued.clone());
        d.cancel(&queued.id);
        assert_eq!(d.queued(), 0);
        let running = VideoId::generate();
        let token = d.track_running(&running);
        d.cancel(&running);
        assert!(token.is_cancelled());
    }
}
