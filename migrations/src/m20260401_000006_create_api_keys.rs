//! `api_keys`: what applications present. Only the SHA-256 hash of a key is stored (unique,
//! it is how the data plane finds the key); the prefix is kept so people can tell keys apart.

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
                    .table("api_keys")
                    .col(pk_uuid("id"))
                    .col(uuid("environment_id"))
                    .col(string("name"))
                    .col(string("prefix"))
                    .col(string_uniq("key_hash"))
                    // JSON array of function names the key may invoke; `*` means all.
                    .col(text("functions"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(&mut belongs_to(
                        "api_keys",
                        "environment_id",
                        "environments",
                    ))
                    .to_owned(),
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
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("api_keys").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
