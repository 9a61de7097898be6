//! API key lifecycle: expiry, revocation, rotation and last use.
//!
//! - `expires_at`: when the key stops working (`NULL`: never). A rotation shortens the old
//!   key's expiry to the end of its grace period.
//! - `revoked_at`: set by `revokeApiKey`; a revoked key is no longer published to data planes.
//! - `rotated_at` / `rotated_from_id`: a rotation keeps the old row (it may still work during
//!   its grace period, and it stays in the history) and inserts a new row for the new key,
//!   which names the old one in `rotated_from_id`; the old row gets `rotated_at`.
//! - `last_used_at`: moved forward by the usage reports of the data planes.
//!
//! A key's name is now unique only among the *current* keys of an environment (neither
//! rotated away nor revoked): the old and the new row of a rotation share the name.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const CURRENT_NAME_INDEX: &str = "ux_api_keys_environment_current_name";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["expires_at", "revoked_at", "rotated_at", "last_used_at"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("api_keys")
                        .add_column(
                            ColumnDef::new(column)
                                .timestamp_with_time_zone()
                                .null()
                                .to_owned(),
                        )
                        .to_owned(),
                )
                .await?;
        }
        // No foreign key: SQLite cannot add one to an existing table. Rows go with their
        // environment (which cascades), so the old row of a rotation outlives the new one
        // only as long as the environment does.
        manager
            .alter_table(
                Table::alter()
                    .table("api_keys")
                    .add_column(ColumnDef::new("rotated_from_id").uuid().null().to_owned())
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ux_api_keys_environment_name")
                    .table("api_keys")
                    .to_owned(),
            )
            .await?;
        // A partial index (same syntax on SQLite and PostgreSQL).
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {CURRENT_NAME_INDEX} ON api_keys (environment_id, name) \
                 WHERE rotated_at IS NULL AND revoked_at IS NULL"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(CURRENT_NAME_INDEX)
                    .table("api_keys")
                    .to_owned(),
            )
            .await?;
        // Only the current key of each name can come back under the old unique index.
        manager
            .get_connection()
            .execute_unprepared(
                "DELETE FROM api_keys WHERE rotated_at IS NOT NULL OR revoked_at IS NOT NULL",
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_api_keys_environment_name")
                    .table("api_keys")
                    .col("environment_id")
                    .col("name")
                    .unique()
                    .to_owned(),
            )
            .await?;
        for column in [
            "expires_at",
            "revoked_at",
            "rotated_at",
            "last_used_at",
            "rotated_from_id",
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("api_keys")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
