//! Test support shared by every crate's tests and the benchmarks: real
//! servers started per test, never mocks. Not published; a dev-dependency
//! (and a dependency of `videogen-bench`).
//!
//! # Layout
//! - [`files`]: what a test finds on disk (blob files left behind).
//! - [`pg`]: a fresh PostgreSQL database per test, cloned from a migrated
//!   template (`CREATE DATABASE … TEMPLATE`), on the server at
//!   `VIDEOGEN_TEST_DATABASE_URL` or a private one started with `initdb`.
//! - [`pg_server`]: databases created for one benchmark run on a server a
//!   `--database-url` names, with its settings and WAL counters.
//! - [`sqlite`]: a file-backed SQLite store in a temporary directory.
//! - [`host`]: the model-host virtualenv's interpreter and tiny pipelines (`make-tiny`).
//! - [`s3`]: a private `s3s-fs` (S3-compatible, checks SigV4 and checksums).
//! - [`redis`]: a private `redis-server` that tests may kill, pause or flush.
//! - [`proxy`]: a TCP proxy that can refuse or black-hole a real server's
//!   traffic (outage and partition tests).
//! - [`on_every_backend!`]: runs one store scenario on SQLite (file and
//!   memory) and PostgreSQL.
//!
//! A test that needs a tool that is missing fails, saying how to install it;
//! it never passes silently.

// Test support: a server that fails to start or a database that cannot be
// created is a failed test, so this crate panics with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod files;
pub mod host;
pub mod pg;
pub mod pg_server;
pub mod proxy;
pub mod redis;
pub mod s3;
pub mod sqlite;

/// Runs a scenario (`async fn name(store: &dyn Store)`) on a file-backed
/// SQLite store, in memory, and on a fresh PostgreSQL database (see [`pg`]),
/// as three tests in a module named after the scenario.
#[macro_export]
macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn on_file() {
                let (store, _dir) = $crate::sqlite::file_store().await;
                super::$name(&store).await;
            }
            #[tokio::test]
            async fn in_memory() {
                let store = videogen_store::SqliteStore::open_in_memory().await.unwrap();
                super::$name(&store).await;
            }
            #[tokio::test]
            async fn postgres() {
                let db = $crate::pg::TestDb::create().await;
                let store = db.store().await;
                super::$name(&store).await;
                store.close().await.unwrap();
            }
        }
    };
}
