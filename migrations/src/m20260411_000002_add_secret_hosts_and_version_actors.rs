//! Host binding and version authorship.
//!
//! - `secrets.allowed_hosts`: JSON array of host patterns the secret may be sent to. Secrets
//!   created before this migration get `[]`: they may be sent nowhere until someone names
//!   their hosts (fail closed, never "anywhere").
//! - `secret_versions.created_by_type` / `created_by_id`: who stored each version (same
//!   vocabulary as `audit_log.actor_type` / `actor_id`); unknown for earlier versions.
//!
//! One column per `ALTER TABLE`: SQLite accepts a single change per statement.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("secrets")
                    .add_column(text("allowed_hosts").default("[]"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("secret_versions")
                    .add_column(string_null("created_by_type"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("secret_versions")
                    .add_column(uuid_null("created_by_id"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in [
            ("secret_versions", "created_by_id"),
            ("secret_versions", "created_by_type"),
            ("secrets", "allowed_hosts"),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
