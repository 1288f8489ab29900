//! API keys and worker tokens: one implementation for both kinds of
//! credential, each in a table of its own.

use crate::exec::{Columns, Param, Tx, params};
use crate::{rows, sql};
use videogen_core::store::{ApiKey, StoreError, WorkerToken};

/// What differs between the two kinds: their table's statements and columns.
pub(crate) trait Credential: Sized + Send + Sync + 'static {
    const INSERT: &'static str;
    const BY_HASH: &'static str;
    const LIST: &'static str;
    const REVOKE: &'static str;
    /// The values of the `INSERT`, in its column order.
    fn values(&self) -> Vec<Param>;
    fn decode(row: &dyn Columns) -> Result<Self, StoreError>;
    /// Where a listing continues after this one: (created_at_ms, id).
    fn cursor(&self) -> (i64, &str);
}

impl Credential for ApiKey {
    const INSERT: &'static str = sql::INSERT_API_KEY;
    const BY_HASH: &'static str = sql::API_KEY_BY_HASH;
    const LIST: &'static str = sql::LIST_API_KEYS;
    const REVOKE: &'static str = sql::REVOKE_API_KEY;

    fn values(&self) -> Vec<Param> {
        params![
            &self.id,
            &self.hash,
            &self.prefix,
            self.tenant.as_str(),
            self.tier.as_str(),
            self.admin,
            self.created_at_ms,
            self.revoked_at_ms
        ]
    }

    fn decode(row: &dyn Columns) -> Result<Self, StoreError> {
        rows::api_key(row)
    }

    fn cursor(&self) -> (i64, &str) {
        (self.created_at_ms, &self.id)
    }
}

impl Credential for WorkerToken {
    const INSERT: &'static str = sql::INSERT_WORKER_TOKEN;
    const BY_HASH: &'static str = sql::WORKER_TOKEN_BY_HASH;
    const LIST: &'static str = sql::LIST_WORKER_TOKENS;
    const REVOKE: &'static str = sql::REVOKE_WORKER_TOKEN;

    fn values(&self) -> Vec<Param> {
        params![
            &self.id,
            &self.hash,
            &self.prefix,
            &self.name,
            self.created_at_ms,
            self.revoked_at_ms
        ]
    }

    fn decode(row: &dyn Columns) -> Result<Self, StoreError> {
        rows::worker_token(row)
    }

    fn cursor(&self) -> (i64, &str) {
        (self.created_at_ms, &self.id)
    }
}

pub(crate) async fn insert<C: Credential>(tx: &mut impl Tx, c: &C) -> Result<(), StoreError> {
    tx.exec(C::INSERT, c.values()).await.map(drop)
}

pub(crate) async fn by_hash<C: Credential>(tx: &mut impl Tx, hash: &str) -> Result<Option<C>, StoreError> {
    tx.row(C::BY_HASH, params![hash], C::decode).await
}

/// In creation order; the first page starts before every row.
pub(crate) async fn list<C: Credential>(
    tx: &mut impl Tx,
    after: Option<(i64, String)>,
    limit: u32,
) -> Result<Vec<C>, StoreError> {
    let (at, id) = after.unwrap_or((i64::MIN, String::new()));
    tx.rows(C::LIST, params![at, id, limit], C::decode).await
}

/// `true` if it was live.
pub(crate) async fn revoke<C: Credential>(tx: &mut impl Tx, id: &str, now_ms: i64) -> Result<bool, StoreError> {
    Ok(tx.exec(C::REVOKE, params![now_ms, id]).await? > 0)
}
