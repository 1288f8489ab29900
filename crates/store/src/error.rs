//! Driver errors as [`StoreError`]s: the cause kept as the source, and
//! classified by whether the same call may succeed later
//! ([`StoreError::Unavailable`]: the API answers 503 and callers retry) or
//! not ([`StoreError::Fault`]: a 500, and a bug or corruption to look at).

use rusqlite::ErrorCode;
use videogen_core::store::StoreError;

/// A `rusqlite` error. Locks held by another process, I/O errors and a full
/// disk are the database being unavailable for now; everything else
/// (constraints, corruption, a statement the schema rejects) is a fault.
pub(crate) fn sqlite(e: rusqlite::Error) -> StoreError {
    let transient = match &e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
        ),
        _ => false,
    };
    if transient {
        StoreError::unavailable(e)
    } else {
        StoreError::fault(e)
    }
}

/// A `sqlx` error. Connection trouble, an exhausted or closed pool and the
/// SQLSTATE classes that mean "not now" are unavailability:
/// 08 (connection exception), 40 (transaction rollback: serialization
/// failure, deadlock), 53 (insufficient resources: disk full, out of memory,
/// too many connections), 57 (operator intervention: shutdown, cannot
/// connect now), 58 (system error: I/O), and 55P03 (lock not available).
/// The rest (integrity, data, syntax, decoding) is a fault.
pub(crate) fn pg(e: sqlx::Error) -> StoreError {
    if pg_is_transient(&e) {
        StoreError::unavailable(e)
    } else {
        StoreError::fault(e)
    }
}

/// Whether [`pg`] calls `e` unavailability.
pub(crate) fn pg_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| transient_sqlstate(&c)),
        _ => false,
    }
}

fn transient_sqlstate(code: &str) -> bool {
    code == "55P03"
        || ["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
}

/// The store was closed (shutting down): a later call, on a node that is
/// up, may succeed.
pub(crate) fn closed() -> StoreError {
    StoreError::unavailable("the store is closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_busy_and_full_are_transient_constraints_are_faults() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(sqlite(failure(rusqlite::ffi::SQLITE_BUSY)).is_retryable());
        assert!(sqlite(failure(rusqlite::ffi::SQLITE_FULL)).is_retryable());
        assert!(sqlite(failure(rusqlite::ffi::SQLITE_IOERR)).is_retryable());
        assert!(!sqlite(failure(rusqlite::ffi::SQLITE_CONSTRAINT)).is_retryable());
        assert!(!sqlite(failure(rusqlite::ffi::SQLITE_CORRUPT)).is_retryable());
        assert!(!sqlite(rusqlite::Error::InvalidColumnName("x".into())).is_retryable());
    }

    #[test]
    fn postgres_connection_and_rollback_classes_are_transient() {
        for code in ["08006", "40001", "40P01", "53100", "57P01", "58030", "55P03"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "22P02", "42601", "42P01"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(pg(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!pg(sqlx::Error::RowNotFound).is_retryable());
    }

    #[test]
    fn the_cause_is_kept_as_the_source() {
        let e = pg(sqlx::Error::PoolTimedOut);
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source, Some(sqlx::Error::PoolTimedOut.to_string()));
    }
}
