//! Business logic over sea-orm. No GraphQL types here: resolvers translate their inputs into
//! these calls and the results into GraphQL objects.
//!
//! Every mutation validates all of its input before it writes anything, and writes inside one
//! transaction, so bad input leaves the database untouched. Each records who did it in the
//! audit log ([`audit::record`]) inside that same transaction. Uniqueness is checked up front
//! (for a clear error) and enforced again by the database's unique indexes (for races).

pub mod admin_tokens;
pub mod api_keys;
pub mod audit;
pub mod environments;
pub mod events;
pub mod functions;
pub mod names;
pub mod oauth;
pub mod provisioning;
pub mod reseal;
pub mod roles;
pub mod secrets;
pub mod sessions;
pub mod snapshot;
pub mod tenants;
pub mod tokens;
pub mod users;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqlErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use uuid::Uuid;

use crate::error::AppError;

/// Current time at the precision PostgreSQL stores (microseconds), so a value read back
/// equals the value written on every backend.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Start a transaction that will write. On SQLite it takes the write lock up front
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes can fail with
/// "database is locked" instead of waiting its turn. Other backends ignore the mode.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Map a failed insert: a unique-constraint violation means a concurrent request took the
/// name between our check and our insert.
pub(crate) fn insert_error(error: DbErr, kind: &'static str, name: &str) -> AppError {
    match error.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => AppError::AlreadyExists {
            kind,
            name: name.to_string(),
        },
        _ => AppError::from(error),
    }
}

/// The error for an id that names no row.
pub fn not_found(kind: &'static str, id: Uuid) -> AppError {
    AppError::NotFound {
        kind,
        id: id.to_string(),
    }
}
