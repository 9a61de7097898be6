//! `secret_versions`: every version of a secret, sealed (JSON of `SealedSecret`). Kept so a
//! change can be rolled back; the plaintext is never stored.

use sea_orm_migration::{prelude::*, schema::*};

use crate::belongs_to;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("secret_versions")
                    .col(pk_uuid("id"))
                    .col(uuid("secret_id"))
                    .col(integer("version"))
                    .col(text("sealed"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(&mut belongs_to("secret_versions", "secret_id", "secrets"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_secret_versions_secret_version")
                    .table("secret_versions")
                    .col("secret_id")
                    .col("version")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("secret_versions").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
