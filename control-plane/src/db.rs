//! Connecting to the database and applying migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// Name of the default SQLite database file in the data directory.
pub const SQLITE_FILE: &str = "airlock.db";

/// Path of the default SQLite database in `data_dir`.
pub fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SQLITE_FILE)
}

/// The default database: an SQLite file in the data directory, created if missing.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", sqlite_path(data_dir).display())
}

/// Connect to `url` (`sqlite://...` or `postgres://...`) and apply pending migrations.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect_only(url).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Connect to a database the control plane has already migrated, for maintenance commands
/// (`airlock reseal`): they change no schema, and refuse a database whose schema is behind
/// this binary (`DbErr::Custom` naming the pending migrations).
pub async fn connect_migrated(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect_only(url).await?;
    let pending = Migrator::get_pending_migrations(&db).await?;
    if !pending.is_empty() {
        let names: Vec<&str> = pending.iter().map(|m| m.name()).collect();
        db.close().await?;
        return Err(DbErr::Custom(format!(
            "the database schema is behind this airlock version (pending migrations: {}); start the control plane of this version once (it migrates), then run again",
            names.join(", ")
        )));
    }
    Ok(db)
}

async fn connect_only(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // Statement logging is off: logs are no place for what the database is sent.
        .sqlx_logging(false)
        // WAL lets readers (snapshot builds, queries) run while a write is in progress.
        .map_sqlx_sqlite_opts(|opts| opts.journal_mode(SqliteJournalMode::Wal));
    Database::connect(options).await
}
