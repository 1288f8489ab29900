//! The scheduler leader on a real PostgreSQL store: a renewal that hangs
//! (the lease table locked by another session) makes the leader step down
//! instead of dispatching on a lease it can no longer vouch for, and it leads
//! again once the store answers. Synchronised on the dispatcher's active
//! flag; the only bound is a hang guard, not a timing claim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use sqlx::{Connection, Executor, PgConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_control::leader::{self, LeaderConfig};
use videogen_control::{Dispatcher, JobBus, Runtime, RuntimeConfig};
use videogen_core::{Clock, SystemClock};
use videogen_sched::SchedulerConfig;
use videogen_testkit::pg::TestDb;

/// Far longer than any step here needs; reaching it is the failure.
const HANG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_renewal_that_hangs_steps_the_leader_down_and_it_leads_again_once_the_store_answers() {
    let db = TestDb::create().await;
    let blobs = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let rt = Arc::new(Runtime {
        store: Arc::new(db.store().await),
        blob: Arc::new(videogen_blob::LocalBlobStore::new(blobs.path()).unwrap()),
        dispatcher: Arc::new(Dispatcher::passive(SchedulerConfig::default(), clock.clone())),
        bus: JobBus::default(),
        clock,
        config: RuntimeConfig::default(),
        fleet: Arc::default(),
        storage: Default::default(),
    });
    let cfg = LeaderConfig {
        node: "node-1".into(),
        ttl: Duration::from_secs(3),
        contend: true,
    };
    let mut active = rt.dispatcher.watch_active();
    let stop = CancellationToken::new();
    let leading = tokio::spawn(leader::run(rt.clone(), cfg, None, stop.clone()));
    tokio::time::timeout(HANG, active.wait_for(|a| *a))
        .await
        .expect("never led")
        .unwrap();

    // Another session holds the lease table: the next renewal blocks on it.
    let mut lock = PgConnection::connect(&db.url()).await.unwrap();
    lock.execute("BEGIN").await.unwrap();
    lock.execute("LOCK TABLE leader_leases IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::time::timeout(HANG, active.wait_for(|a| !*a))
        .await
        .expect("the leader kept dispatching while its renewal hung")
        .unwrap();

    lock.execute("ROLLBACK").await.unwrap();
    tokio::time::timeout(HANG, active.wait_for(|a| *a))
        .await
        .expect("never led again after the store answered")
        .unwrap();
    stop.cancel();
    leading.await.unwrap();
}
