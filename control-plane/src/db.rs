//! Connecting to the database and applying migrations.

use std::path::Path;
use std::time::Duration;

use airlock_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// The default database: an SQLite file in the data directory, created if missing.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("airlock.db").display()
    )
}

/// Connect to `url` (`sqlite://...` or `postgres://...`) and apply pending migrations.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // Statement logging is off: logs are no place for what the database is sent.
        .sqlx_logging(false)
        // WAL lets readers (snapshot builds, queries) run while a write is in progress.
        .map_sqlx_sqlite_opts(|opts| opts.journal_mode(SqliteJournalMode::Wal));
    let db = Database::connect(options).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}
