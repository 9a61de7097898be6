//! `functions`: trained requests, defined once per tenant; names are unique per tenant because
//! they appear in invoke URLs.

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
                    .table("functions")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(string("name"))
                    .col(string("method"))
                    .col(text("url"))
                    // JSON array of {"name", "value"} template pairs, in order.
                    .col(text("headers"))
                    .col(text_null("body"))
                    .col(big_integer("timeout_ms"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(&mut belongs_to("functions", "tenant_id", "tenants"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_functions_tenant_name")
                    .table("functions")
                    .col("tenant_id")
                    .col("name")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("functions").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
