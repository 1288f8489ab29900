//! The dispatcher: the server-side owner of the scheduler.
//!
//! The store is the source of truth; the scheduler is an in-memory index of
//! runnable jobs rebuilt from the store on start-up ([`Dispatcher::seed`]) and
//! kept current by every path that makes a job runnable (submit, release,
//! reaper). A job the scheduler hands out may have been cancelled since: the
//! store's compare-and-set lease then returns `None` and the worker asks again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use videogen_core::{Clock, QueuedJob, VideoId};
use videogen_sched::{Scheduler, SchedulerConfig, TierMap, WorkerView};

pub struct Dispatcher {
    sched: Mutex<Scheduler>,
    cfg: SchedulerConfig,
    /// Whether this node dispatches. Only the scheduler leader does: a
    /// passive dispatcher ignores enqueues (the leader hears of the job
    /// through the store's wake-ups), holds nothing and hands out nothing.
    /// Read and written under the `sched` lock so it flips atomically with
    /// the queue's contents.
    active: AtomicBool,
    /// The same flag for those who wait on its changes (the leader's tests,
    /// `/readyz`).
    active_tx: watch::Sender<bool>,
    wake: Notify,
    /// Idle workers waiting right now, per model they have loaded (warm).
    warm_waiting: Mutex<HashMap<String, usize>>,
    /// Workers inside [`Dispatcher::next_with`] right now, warm or cold.
    waiting: AtomicUsize,
    clock: Arc<dyn Clock>,
}

impl Dispatcher {
    /// An active dispatcher: a node that is the scheduler by itself.
    pub fn new(cfg: SchedulerConfig, clock: Arc<dyn Clock>) -> Self {
        let d = Self::passive(cfg, clock);
        d.active.store(true, Ordering::Relaxed);
        d.active_tx.send_replace(true);
        d
    }

    /// A dispatcher that waits to be [activated](Self::activate) (a node that
    /// must win the leader lease first, or never dispatches).
    pub fn passive(cfg: SchedulerConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            sched: Mutex::new(Scheduler::new(cfg.clone())),
            cfg,
            active: AtomicBool::new(false),
            active_tx: watch::Sender::new(false),
            wake: Notify::new(),
            warm_waiting: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            clock,
        }
    }

    fn sched(&self) -> MutexGuard<'_, Scheduler> {
        // A panic while holding the lock cannot leave the scheduler half-updated
        // in a way that matters more than stopping: keep serving.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Follows [`Dispatcher::is_active`]: changes whenever this node starts or
    /// stops dispatching.
    pub fn watch_active(&self) -> watch::Receiver<bool> {
        self.active_tx.subscribe()
    }

    /// Starts dispatching from exactly `jobs` (this node became the leader:
    /// whatever an earlier term held may be stale).
    pub fn activate(&self, jobs: impl IntoIterator<Item = QueuedJob>) {
        {
            let mut s = self.sched();
            *s = Scheduler::new(self.cfg.clone());
            self.active.store(true, Ordering::Relaxed);
        }
        self.active_tx.send_replace(true);
        self.seed(jobs);
    }

    /// Stops dispatching and forgets the queue (another node leads now).
    pub fn deactivate(&self) {
        let mut s = self.sched();
        self.active.store(false, Ordering::Relaxed);
        *s = Scheduler::new(self.cfg.clone());
        drop(s);
        self.active_tx.send_replace(false);
        self.publish_depth();
    }

    /// Loads queued jobs (start-up, or a re-sync with the store); jobs
    /// already queued here are left as they are.
    pub fn seed(&self, jobs: impl IntoIterator<Item = QueuedJob>) {
        let mut s = self.sched();
        if !self.is_active() {
            return;
        }
        for j in jobs {
            s.enqueue(j);
        }
        drop(s);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    pub fn enqueue(&self, job: QueuedJob) {
        {
            let mut s = self.sched();
            if !self.is_active() {
                return;
            }
            s.enqueue(job);
        }
        self.publish_depth();
        self.wake.notify_one();
    }

    /// Forgets a queued job. (A running one learns of its cancellation from
    /// its next heartbeat, wherever its worker runs.)
    pub fn cancel(&self, id: &VideoId) {
        self.sched().remove(id);
        self.publish_depth();
    }

    /// Waits until a job is due for a worker with these models loaded.
    ///
    /// Model warmth: a cold worker (without the job's model) leaves the job to
    /// a warm worker that is idle at that moment, and takes it otherwise:
    /// with no warm worker free, waiting for one would cost more than loading.
    pub async fn next(&self, loaded_models: &[String], shutdown: &CancellationToken) -> Option<QueuedJob> {
        self.next_with(loaded_models, shutdown, &|_| None).await
    }

    /// [`Dispatcher::next`], where `defer` may also leave a job a cold worker
    /// drew to a busy warm worker that will be free sooner than a load would
    /// take (it returns how long to step aside, then the job is drawn again).
    pub async fn next_with(
        &self,
        loaded_models: &[String],
        shutdown: &CancellationToken,
        defer: &(dyn Fn(&QueuedJob) -> Option<std::time::Duration> + Sync),
    ) -> Option<QueuedJob> {
        let _warm = WarmGuard::register(&self.warm_waiting, &self.waiting, loaded_models);
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Register interest before checking, so an enqueue between the
            // check and the await is not missed.
            notified.as_mut().enable();
            let picked = {
                let now = self.clock.now_ms();
                let mut sched = self.sched();
                match sched.next(now, &WorkerView { loaded_models }) {
                    Some(job) if !loaded_models.contains(&job.model) && self.warm_idle(&job.model) => {
                        sched.enqueue(job);
                        Pick::LeftForWarm
                    }
                    Some(job) if !loaded_models.contains(&job.model) => match defer(&job) {
                        Some(wait) => {
                            sched.enqueue(job);
                            Pick::StepAside(wait)
                        }
                        None => Pick::Job(job),
                    },
                    Some(job) => Pick::Job(job),
                    None => Pick::Nothing,
                }
            };
            match picked {
                Pick::Job(job) => {
                    self.publish_depth();
                    return Some(job);
                }
                Pick::LeftForWarm => {
                    // Wake the warm worker(s); this one waits for what comes next.
                    self.wake.notify_waiters();
                    let later = self.wake.notified();
                    tokio::pin!(later);
                    tokio::select! {
                        _ = &mut later => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
                Pick::StepAside(wait) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
                Pick::Nothing => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    fn warm_idle(&self, model: &str) -> bool {
        self.warm_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .is_some_and(|n| *n > 0)
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

    /// Workers waiting in [`Dispatcher::next`] right now (for health pages
    /// and for tests that must know a worker is waiting before they act).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn publish_depth(&self) {
        let d = self.depth();
        metrics::gauge!("videogen_queue_depth", "tier" => "free").set(d.free as f64);
        metrics::gauge!("videogen_queue_depth", "tier" => "paid").set(d.paid as f64);
        metrics::gauge!("videogen_queue_depth", "tier" => "internal").set(d.internal as f64);
    }
}

enum Pick {
    Job(QueuedJob),
    /// A warm worker is idle: it takes the job.
    LeftForWarm,
    /// A busy warm worker will be free sooner than a load: check again after this.
    StepAside(std::time::Duration),
    Nothing,
}

/// Counts a waiting worker, and as warm for its models, while it waits.
struct WarmGuard<'a> {
    map: &'a Mutex<HashMap<String, usize>>,
    waiting: &'a AtomicUsize,
    models: &'a [String],
}

impl<'a> WarmGuard<'a> {
    fn register(map: &'a Mutex<HashMap<String, usize>>, waiting: &'a AtomicUsize, models: &'a [String]) -> Self {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        for model in models {
            *m.entry(model.clone()).or_default() += 1;
        }
        waiting.fetch_add(1, Ordering::SeqCst);
        Self { map, waiting, models }
    }
}

impl Drop for WarmGuard<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for model in self.models {
            if let Some(n) = m.get_mut(model) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(model);
                }
            }
        }
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
        until_waiting(&d, 1).await;
        let j = job(Tier::Free, 0);
        d.enqueue(j.clone());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.map(|g| g.id), Some(j.id));
    }

    #[tokio::test]
    async fn an_idle_warm_worker_gets_the_job_before_a_cold_one() {
        let d = Arc::new(Dispatcher::new(
            SchedulerConfig::default(),
            Arc::new(ManualClock::new(0)),
        ));
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, models) in [("cold", vec![]), ("warm", vec!["videogen-ref".to_owned()])] {
            let (d, stop, tx) = (d.clone(), stop.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(j) = d.next(&models, &stop).await {
                    let _ = tx.send((name, j.id));
                }
            });
        }
        // Both wait (the warm one counted as warm) before the job comes.
        until_waiting(&d, 2).await;
        let j = job(Tier::Free, 0);
        d.enqueue(j.clone());
        let (who, id) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((who, id), ("warm", j.id));
        // With no warm worker idle, the cold one takes the next job at once.
        let k = job(Tier::Free, 1);
        d.enqueue(k.clone());
        let (who, id) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((who, id), ("cold", k.id));
        stop.cancel();
    }

    /// Lets spawned workers run until `n` of them wait in the dispatcher.
    async fn until_waiting(d: &Dispatcher, n: usize) {
        for _ in 0..1000 {
            if d.waiting() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{} workers waiting, not {n}", d.waiting());
    }

    /// A cold worker whose defer rule says "a warm worker frees up within
    /// 200 ms" until `warm_free`; every draw it steps aside from is sent on
    /// the returned channel.
    fn cold_worker(
        d: &Arc<Dispatcher>,
        stop: &CancellationToken,
        warm_free: &Arc<AtomicBool>,
    ) -> (
        tokio::task::JoinHandle<Option<QueuedJob>>,
        tokio::sync::mpsc::UnboundedReceiver<VideoId>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (d, stop, warm_free) = (d.clone(), stop.clone(), warm_free.clone());
        let task = tokio::spawn(async move {
            let defer = move |j: &QueuedJob| {
                let wait = (!warm_free.load(Ordering::SeqCst)).then_some(STEP_ASIDE);
                if wait.is_some() {
                    let _ = tx.send(j.id.clone());
                }
                wait
            };
            d.next_with(&[], &stop, &defer).await
        });
        (task, rx)
    }

    const STEP_ASIDE: std::time::Duration = std::time::Duration::from_millis(200);

    #[tokio::test(start_paused = true)]
    async fn a_cold_worker_steps_aside_while_a_warm_one_is_about_to_be_free() {
        let d = Arc::new(Dispatcher::new(
            SchedulerConfig::default(),
            Arc::new(ManualClock::new(0)),
        ));
        let stop = CancellationToken::new();
        let warm_free = Arc::new(AtomicBool::new(false));
        let (cold, mut stepped_aside) = cold_worker(&d, &stop, &warm_free);
        // Waiting before the job comes, so the enqueue's wake-up is its one
        // reason to draw (an enqueue with nobody waiting leaves a permit that
        // would make it draw twice).
        until_waiting(&d, 1).await;
        let j = job(Tier::Free, 0);
        d.enqueue(j.clone());
        // The cold worker drew the job and put it back.
        assert_eq!(stepped_aside.recv().await, Some(j.id.clone()));
        assert_eq!(d.queued(), 1);
        // The warm worker, free now, finds the job still queued.
        let warm = d.next(&["videogen-ref".to_owned()], &stop).await;
        assert_eq!(warm.map(|w| w.id), Some(j.id));
        warm_free.store(true, Ordering::SeqCst);
        // The cold worker takes the next one: nothing to wait for any more.
        let k = job(Tier::Free, 1);
        d.enqueue(k.clone());
        let got = cold.await.unwrap();
        assert_eq!(got.map(|g| g.id), Some(k.id));
        assert!(stepped_aside.try_recv().is_err(), "stepped aside only once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_worker_that_stepped_aside_draws_again_when_the_wait_is_over() {
        let d = Arc::new(Dispatcher::new(
            SchedulerConfig::default(),
            Arc::new(ManualClock::new(0)),
        ));
        let stop = CancellationToken::new();
        let warm_free = Arc::new(AtomicBool::new(false));
        let (cold, mut stepped_aside) = cold_worker(&d, &stop, &warm_free);
        // Waiting before the job comes, so the enqueue's wake-up is its one
        // reason to draw (an enqueue with nobody waiting leaves a permit that
        // would make it draw twice).
        until_waiting(&d, 1).await;
        let j = job(Tier::Free, 0);
        d.enqueue(j.clone());
        assert_eq!(stepped_aside.recv().await, Some(j.id.clone()));

        // Just short of the wait: the job stays queued, nobody draws.
        tokio::time::advance(STEP_ASIDE - std::time::Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(stepped_aside.try_recv().is_err());
        assert!(!cold.is_finished());
        assert_eq!(d.queued(), 1);

        // The wait is over: it draws again and, the warm worker having never
        // turned up, the rule (still "soon") sends it aside once more.
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert_eq!(stepped_aside.recv().await, Some(j.id.clone()));
        // Once the rule lets go, the next wait's end hands it the job.
        warm_free.store(true, Ordering::SeqCst);
        tokio::time::advance(STEP_ASIDE).await;
        assert_eq!(cold.await.unwrap().map(|g| g.id), Some(j.id));
        assert_eq!(d.queued(), 0);
    }

    #[tokio::test]
    async fn shutdown_releases_waiting_workers() {
        let d = Dispatcher::new(SchedulerConfig::default(), Arc::new(ManualClock::new(0)));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(d.next(&[], &stop).await.is_none());
    }

    #[tokio::test]
    async fn cancel_removes_queued() {
        let d = Dispatcher::new(SchedulerConfig::default(), Arc::new(ManualClock::new(0)));
        let queued = job(Tier::Paid, 0);
        d.enqueue(queued.clone());
        d.cancel(&queued.id);
        assert_eq!(d.queued(), 0);
    }
}
