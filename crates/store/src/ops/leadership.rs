//! The leader lease: which node is the scheduler singleton.

use crate::exec::{Columns, Tx, params};
use crate::sql;
use videogen_core::store::StoreError;

fn term(row: &dyn Columns) -> Result<i64, StoreError> {
    row.int("term")?.ok_or_else(|| StoreError::corrupt("term", "NULL"))
}

/// The lease's term while `holder` holds it, `None` while another node does.
pub(crate) async fn try_lead(
    tx: &mut impl Tx,
    name: &str,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Option<i64>, StoreError> {
    tx.row(
        sql::TRY_LEAD,
        params![name, holder, now_ms.saturating_add(ttl_ms), now_ms],
        term,
    )
    .await
}

pub(crate) async fn resign(tx: &mut impl Tx, name: &str, holder: &str) -> Result<(), StoreError> {
    tx.exec(sql::RESIGN, params![name, holder]).await.map(drop)
}
