//! `environments`: belong to a tenant; names are unique per tenant.

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
                    .table("environments")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(string("name"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(&mut belongs_to("environments", "tenant_id", "tenants"))
                    .to_owned(),
            )
            .await?;
        // Also serves lookups by tenant (leading column).
        manager
            .create_index(
                Index::create()
                    .name("ux_environments_tenant_name")
                    .table("environments")
                    .col("tenant_id")
                    .col("name")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("environments").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
