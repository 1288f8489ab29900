//! The two executors of the one statement set: a [`Tx`] runs a statement of
//! [`crate::sql`] with its parameters and decodes the rows, on SQLite
//! (`rusqlite`, on the thread that owns the connection) or on PostgreSQL
//! (`sqlx`). The operations in [`crate::ops`] are written once against it.
//!
//! Statements use `$1`, `$2`, … placeholders, which both engines accept:
//! PostgreSQL natively, SQLite as named parameters numbered in order of
//! first appearance. Every statement therefore introduces its parameters in
//! ascending order (a test in `sql.rs` checks it on SQLite), so binding by
//! position is right on both.

use crate::error;
use futures::future::BoxFuture;
use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use std::future::{Future, ready};
use videogen_core::store::StoreError;

/// A statement parameter, typed the way both engines bind it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Text(String),
    Bool(bool),
    /// A NULL of an integer column (PostgreSQL binds NULLs with a type).
    NullInt,
    /// A NULL of a text column.
    NullText,
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl From<u32> for Param {
    fn from(v: u32) -> Self {
        Param::Int(i64::from(v))
    }
}

impl From<u8> for Param {
    fn from(v: u8) -> Self {
        Param::Int(i64::from(v))
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(v.to_owned())
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(v)
    }
}

impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Param::Text(v.clone())
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Param::NullInt, Param::Int)
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Param::NullText, Param::from)
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        v.map_or(Param::NullText, Param::Text)
    }
}

/// `params![a, b, …]`: the parameters `$1`, `$2`, … of a statement.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        vec![$($crate::exec::Param::from($p)),*]
    };
}
pub(crate) use params;

/// A result row of either engine, read by column name.
pub trait Columns {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
}

/// Decodes one row.
pub type Decode<T> = fn(&dyn Columns) -> Result<T, StoreError>;

/// Runs statements of one transaction (or, for reads, of one snapshot).
///
/// Futures are `Send` so operations written against this run on
/// PostgreSQL's async pool as well as on SQLite's writer thread, where every
/// future is ready when returned (the work happens in the call).
pub trait Tx: Send {
    /// Runs a statement; the number of rows it changed.
    fn exec(&mut self, sql: &'static str, params: Vec<Param>) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every row the statement returns, decoded.
    fn rows<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Vec<Param>,
        decode: Decode<T>,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send;

    /// The first row the statement returns, decoded, if any.
    fn row<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Vec<Param>,
        decode: Decode<T>,
    ) -> impl Future<Output = Result<Option<T>, StoreError>> + Send;
}

/// An operation of [`crate::ops`] on a transaction: what a backend runs.
pub type Op<'t, R> = BoxFuture<'t, Result<R, StoreError>>;

// ---- SQLite

/// A statement runner on a `rusqlite` connection, borrowed for the call.
/// Statements come from the connection's cache of prepared statements.
pub struct SqliteTx<'c> {
    conn: &'c mut rusqlite::Connection,
}

impl<'c> SqliteTx<'c> {
    pub(crate) fn new(conn: &'c mut rusqlite::Connection) -> Self {
        Self { conn }
    }

    fn query<T>(&self, sql: &str, params: &[Param], decode: Decode<T>, first_only: bool) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(error::sqlite)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(error::sqlite)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(error::sqlite)? {
            out.push(decode(row)?);
            if first_only {
                break;
            }
        }
        Ok(out)
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Int(v) => ToSqlOutput::Owned(SqlValue::Integer(*v)),
            Param::Text(v) => ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(v.as_bytes())),
            Param::Bool(v) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*v))),
            Param::NullInt | Param::NullText => ToSqlOutput::Owned(SqlValue::Null),
        })
    }
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &'static str, params: Vec<Param>) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let changed = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(params.iter())))
            .map(|n| n as u64)
            .map_err(error::sqlite);
        ready(changed)
    }

    fn rows<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Vec<Param>,
        decode: Decode<T>,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send {
        ready(self.query(sql, &params, decode, false))
    }

    fn row<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Vec<Param>,
        decode: Decode<T>,
    ) -> impl Future<Output = Result<Option<T>, StoreError>> + Send {
        ready(self.query(sql, &params, decode, true).map(|v| v.into_iter().next()))
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.get(col).map_err(error::sqlite)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.get(col).map_err(error::sqlite)
    }
    /// SQLite has no booleans: 0 / 1.
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.get::<_, i64>(col).map_err(error::sqlite)? != 0)
    }
}

/// Runs `op` on `conn` on the calling thread. SQLite's futures are ready
/// when created, so one poll completes it; one that is not ready is a bug,
/// reported as a fault rather than blocking the writer thread.
pub(crate) fn run_sqlite<R>(
    conn: &mut rusqlite::Connection,
    op: impl for<'t> FnOnce(&'t mut SqliteTx<'t>) -> Op<'t, R>,
) -> Result<R, StoreError> {
    use futures::FutureExt;
    let mut tx = SqliteTx::new(conn);
    op(&mut tx).now_or_never().unwrap_or_else(|| {
        Err(StoreError::fault(
            "a SQLite store operation did not complete in one poll",
        ))
    })
}

// ---- PostgreSQL

/// A statement runner on a PostgreSQL connection: one from the pool (each
/// statement its own transaction) or inside `BEGIN … COMMIT`.
pub struct PgTx<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> PgTx<'c> {
    pub(crate) fn new(conn: &'c mut PgConnection) -> Self {
        Self { conn }
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind(sql: &'static str, params: Vec<Param>) -> PgQuery<'static> {
    params.into_iter().fold(sqlx::query(sql), |q, p| match p {
        Param::Int(v) => q.bind(v),
        Param::Text(v) => q.bind(v),
        Param::Bool(v) => q.bind(v),
        Param::NullInt => q.bind(None::<i64>),
        Param::NullText => q.bind(None::<String>),
    })
}

impl Tx for PgTx<'_> {
    async fn exec(&mut self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError> {
        let done = bind(sql, params).execute(&mut *self.conn).await.map_err(error::pg)?;
        Ok(done.rows_affected())
    }

    async fn rows<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Vec<Param>,
        decode: Decode<T>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = bind(sql, params).fetch_all(&mut *self.conn).await.map_err(error::pg)?;
        rows.iter().map(|r| decode(r)).collect()
    }

    async fn row<T: Send + 'static>(
        &mut self,
        sql: &'static str,
        params: Vec<Param>,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError> {
        let row = bind(sql, params)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(error::pg)?;
        row.as_ref().map(|r| decode(r)).transpose()
    }
}

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.try_get(col).map_err(error::pg)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(col).map_err(error::pg)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        self.try_get(col).map_err(error::pg)
    }
}
