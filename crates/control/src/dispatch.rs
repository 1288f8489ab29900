//! The dispatcher: the server-side owner of the scheduler.
//!
//! The store is the source of truth; the scheduler is an in-memory index of
//! runnable jobs rebuilt from the store on start-up ([`Dispatcher::seed`]) and
//! kept current by every path that makes a job runnable (submit, release,
//! reaper). A job the scheduler hands out may have been cancelled since: the
//! store's compare-and-set lease then returns `None` and the worker asks again.
//!
//! Two things keep a runnable job from being handed out:
//! - its retry backoff ([`QueuedJob::not_before_ms`]): such a job is held
//!   aside, outside the scheduler, until it is due;
//! - a [pause](Dispatcher::pause): while the node's storage refuses writes
//!   (see `storage_health`), nothing is dispatched, so no attempt starts
//!   that could only fail; workers keep waiting and resume when it lifts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use videogen_core::{Clock, QueuedJob, VideoId};
use videogen_sched::{Scheduler, SchedulerConfig, TierMap, WorkerView};

pub struct Dispatcher {
    sched: Mutex<Scheduler>,
    /// Jobs waiting out a retry backoff. Locked after `sched` when both are
    /// held.
    delayed: Mutex<Delayed>,
    /// Why dispatch is paused, if it is.
    paused: watch::Sender<Option<String>>,
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
            delayed: Mutex::new(Delayed::default()),
            paused: watch::Sender::new(None),
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

    fn delayed(&self) -> MutexGuard<'_, Delayed> {
        self.delayed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops handing out jobs until [`Dispatcher::resume`]; `reason` is
    /// shown by `/readyz` and counted in `videogen_dispatch_paused{reason}`.
    /// Waiting workers keep waiting; queued jobs keep their places.
    pub fn pause(&self, reason: &'static str, detail: &str) {
        let text = format!("{reason}: {detail}");
        self.paused.send_if_modified(|p| {
            if p.is_none() {
                tracing::warn!(reason, detail, "dispatch paused");
                metrics::gauge!("videogen_dispatch_paused", "reason" => reason).set(1.0);
            }
            let changed = p.as_deref() != Some(text.as_str());
            *p = Some(text);
            changed
        });
    }

    /// Lifts a [pause](Dispatcher::pause) set for `reason`.
    pub fn resume(&self, reason: &'static str) {
        let lifted = self.paused.send_if_modified(|p| {
            let ours = p.as_deref().is_some_and(|r| r.starts_with(reason));
            if ours {
                *p = None;
            }
            ours
        });
        if lifted {
            tracing::info!(reason, "dispatch resumed");
            metrics::gauge!("videogen_dispatch_paused", "reason" => reason).set(0.0);
            self.wake.notify_waiters();
        }
    }

    /// Why dispatch is paused (`"reason: detail"`), if it is.
    pub fn paused(&self) -> Option<String> {
        self.paused.borrow().clone()
    }

    /// Follows [`Dispatcher::paused`].
    pub fn watch_paused(&self) -> watch::Receiver<Option<String>> {
        self.paused.subscribe()
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
            self.delayed().clear();
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
        self.delayed().clear();
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
        let now = self.clock.now_ms();
        for j in jobs {
            self.place(&mut s, j, now);
        }
        drop(s);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    pub fn enqueue(&self, job: QueuedJob) {
        let delayed = {
            let mut s = self.sched();
            if !self.is_active() {
                return;
            }
            self.place(&mut s, job, self.clock.now_ms())
        };
        self.publish_depth();
        if delayed {
            // Waiting workers sleep until the earliest due job: this one may be sooner.
            self.wake.notify_waiters();
        } else {
            self.wake.notify_one();
        }
    }

    /// Into the scheduler, or aside until its backoff ends (true).
    fn place(&self, sched: &mut Scheduler, job: QueuedJob, now_ms: i64) -> bool {
        match job.not_before_ms {
            Some(due) if due > now_ms => {
                sched.remove(&job.id);
                self.delayed().insert(due, job);
                true
            }
            _ => {
                self.delayed().remove(&job.id);
                sched.enqueue(job);
                false
            }
        }
    }

    /// Moves the jobs whose backoff is over into the scheduler; returns when
    /// the next one is due, if any is still waiting.
    fn promote_due(&self, sched: &mut Scheduler, now_ms: i64) -> Option<i64> {
        let mut delayed = self.delayed();
        loop {
            match delayed.pop_due(now_ms) {
                Ok(job) => sched.enqueue(job),
                Err(next) => return next,
            }
        }
    }

    /// Forgets a queued job. (A running one learns of its cancellation from
    /// its next heartbeat, wherever its worker runs.)
    pub fn cancel(&self, id: &VideoId) {
        let mut s = self.sched();
        s.remove(id);
        self.delayed().remove(id);
        drop(s);
        self.publish_depth();
    }

    /// Jobs waiting out a retry backoff.
    pub fn backing_off(&self) -> usize {
        self.delayed().len()
    }

    /// Waits until a job is due for a worker with these models loaded.
    ///
    /// Model warmth: a cold worker (without the job's model) leaves the job to
    /// a warm worker that is idle at that moment, and takes it otherwise:
    /// with no warm worker free, waiting for one would cost more than loading.
    pub async fn next(&self, loaded_models: &[String], shutdown: &CancellationToken) -> Option<QueuedJob> {
        self.next_with(loaded_models, None, shutdown, &|_| None).await
    }

    /// [`Dispatcher::next`] for a worker that runs only `serves` (`None`:
    /// any model), where `defer` may also leave a job a cold worker drew to
    /// a busy warm worker that will be free sooner than a load would take
    /// (it returns how long to step aside, then the job is drawn again).
    pub async fn next_with(
        &self,
        loaded_models: &[String],
        serves: Option<&[String]>,
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
            let (picked, next_due) = {
                let now = self.clock.now_ms();
                let mut sched = self.sched();
                let next_due = self.promote_due(&mut sched, now).map(|due| due - now);
                let pick = if self.paused.borrow().is_some() {
                    Pick::Nothing
                } else {
                    match sched.next(now, &WorkerView { loaded_models, serves }) {
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
                (pick, next_due)
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
                    // Until something changes, or the next backoff ends.
                    let due = next_due.map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = sleep_or_never(due) => {}
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

    /// Runnable jobs, including those waiting out a backoff.
    pub fn queued(&self) -> usize {
        let s = self.sched();
        s.len() + self.delayed().len()
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
        metrics::gauge!("videogen_queue_backing_off").set(self.backing_off() as f64);
    }
}

/// Jobs held aside until their backoff ends: ordered by when they are due,
/// and found by id (a re-enqueue or cancel of one must not scan them all).
#[derive(Default)]
struct Delayed {
    by_due: BTreeMap<(i64, VideoId), QueuedJob>,
    due_of: HashMap<VideoId, i64>,
}

impl Delayed {
    fn insert(&mut self, due: i64, job: QueuedJob) {
        self.remove(&job.id);
        self.due_of.insert(job.id.clone(), due);
        self.by_due.insert((due, job.id.clone()), job);
    }

    fn remove(&mut self, id: &VideoId) -> Option<QueuedJob> {
        let due = self.due_of.remove(id)?;
        self.by_due.remove(&(due, id.clone()))
    }

    /// The earliest job due by `now_ms`, or (`Err`) when the next one is due.
    fn pop_due(&mut self, now_ms: i64) -> Result<QueuedJob, Option<i64>> {
        let entry = self.by_due.first_entry().ok_or(None)?;
        if entry.key().0 > now_ms {
            return Err(Some(entry.key().0));
        }
        let job = entry.remove();
        self.due_of.remove(&job.id);
        Ok(job)
    }

    fn len(&self) -> usize {
        self.by_due.len()
    }

    fn clear(&mut self) {
        self.by_due.clear();
        self.due_of.clear();
    }
}

async fn sleep_or_never(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
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
            not_before_ms: None,
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
            d.next_with(&[], None, &stop, &defer).await
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

    /// A job re-queued with a backoff is not handed out before it is due,
    /// even to a worker already waiting; once due it is, without any
    /// enqueue to wake the worker.
    #[tokio::test(start_paused = true)]
    async fn a_job_backing_off_is_handed_out_only_once_due() {
        let clock = Arc::new(ManualClock::new(0));
        let d = Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone()));
        let stop = CancellationToken::new();
        let mut j = job(Tier::Paid, 0);
        j.not_before_ms = Some(5_000);
        d.enqueue(j.clone());
        assert_eq!((d.queued(), d.backing_off()), (1, 1));
        let waiter = {
            let (d, stop) = (d.clone(), stop.clone());
            tokio::spawn(async move { d.next(&[], &stop).await })
        };
        until_waiting(&d, 1).await;
        clock.set_ms(4_999);
        tokio::time::advance(std::time::Duration::from_millis(4_999)).await;
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "handed out before its backoff ended");
        clock.set_ms(5_000);
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert_eq!(waiter.await.unwrap().map(|g| g.id), Some(j.id));
        assert_eq!(d.backing_off(), 0);
    }

    #[tokio::test]
    async fn a_job_backing_off_can_be_cancelled_and_a_due_one_is_not_held() {
        let d = Dispatcher::new(SchedulerConfig::default(), Arc::new(ManualClock::new(10_000)));
        let mut later = job(Tier::Free, 0);
        later.not_before_ms = Some(30_000);
        d.enqueue(later.clone());
        // Enqueued again with another backoff: one job, due at the new time.
        later.not_before_ms = Some(20_000);
        d.enqueue(later.clone());
        assert_eq!((d.queued(), d.backing_off()), (1, 1));
        d.cancel(&later.id);
        assert_eq!(d.queued(), 0);
        let mut due = job(Tier::Free, 0);
        due.not_before_ms = Some(10_000);
        d.enqueue(due.clone());
        assert_eq!((d.queued(), d.backing_off()), (1, 0));
        let stop = CancellationToken::new();
        assert_eq!(d.next(&[], &stop).await.map(|g| g.id), Some(due.id));
    }

    /// While paused nothing is handed out; resuming wakes the waiting worker.
    #[tokio::test]
    async fn a_paused_dispatcher_hands_out_nothing_until_resumed() {
        let d = Arc::new(Dispatcher::new(
            SchedulerConfig::default(),
            Arc::new(ManualClock::new(0)),
        ));
        d.pause("blob_store_unwritable", "No space left on device");
        assert_eq!(
            d.paused().as_deref(),
            Some("blob_store_unwritable: No space left on device")
        );
        let j = job(Tier::Paid, 0);
        d.enqueue(j.clone());
        let stop = CancellationToken::new();
        let waiter = {
            let (d, stop) = (d.clone(), stop.clone());
            tokio::spawn(async move { d.next(&[], &stop).await })
        };
        until_waiting(&d, 1).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "handed out while paused");
        assert_eq!(d.queued(), 1);
        d.resume("some_other_reason");
        assert!(d.paused().is_some(), "only the pause's own reason lifts it");
        d.resume("blob_store_unwritable");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.map(|g| g.id), Some(j.id));
        assert_eq!(d.paused(), None);
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
