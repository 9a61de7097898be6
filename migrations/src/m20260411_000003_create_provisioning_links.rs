//! `provisioning_links`: single-use links that let someone without an account set the values
//! of named secrets of one environment. Only the SHA-256 of the link's token is stored; the
//! values go straight into `secret_versions`, sealed, and never touch this table.

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
                    .table("provisioning_links")
                    .col(pk_uuid("id"))
                    .col(uuid("environment_id"))
                    // JSON array of `{"name", "allowedHosts"}`.
                    .col(text("secrets"))
                    .col(string_uniq("token_hash"))
                    // The admin token that created the link.
                    .col(uuid("created_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(timestamp_with_time_zone_null("used_at"))
                    .col(timestamp_with_time_zone_null("revoked_at"))
                    .foreign_key(&mut belongs_to(
                        "provisioning_links",
                        "environment_id",
                        "environments",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_provisioning_links_environment_created")
                    .table("provisioning_links")
                    .col("environment_id")
                    .col("created_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("provisioning_links").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
