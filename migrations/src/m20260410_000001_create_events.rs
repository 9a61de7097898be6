//! `events`: what data planes reported (failures, denials, uses of secrets), as received from
//! the events stream. Names and ids only, never a secret value or an API key.
//!
//! The id is the event's own id, so a re-delivered event is stored once. There are no foreign
//! keys on purpose: an event outlives the tenant, environment or key it names (a deleted
//! environment's history stays queryable), and an event about an unknown key has no tenant.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("events")
                    .col(pk_uuid("id"))
                    .col(timestamp_with_time_zone("at"))
                    // Dotted name (`secret.used`, `auth.denied`, ...).
                    .col(string("kind"))
                    .col(uuid_null("tenant_id"))
                    .col(uuid_null("environment_id"))
                    .col(text("request_id"))
                    .col(text_null("function"))
                    .col(uuid_null("api_key_id"))
                    // JSON array of secret names.
                    .col(text("secrets"))
                    .col(text_null("upstream_host"))
                    .col(integer("status"))
                    .col(text("message"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_tenant_at")
                    .table("events")
                    .col("tenant_id")
                    .col("at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_environment_kind_at")
                    .table("events")
                    .col("environment_id")
                    .col("kind")
                    .col("at")
                    .to_owned(),
            )
            .await?;
        // "What happened to request X": the request id from a client's error response.
        manager
            .create_index(
                Index::create()
                    .name("ix_events_request_id")
                    .table("events")
                    .col("request_id")
                    .to_owned(),
            )
            .await?;
        // Unfiltered listing, newest first, pages by (at, id).
        manager
            .create_index(
                Index::create()
                    .name("ix_events_at_id")
                    .table("events")
                    .col("at")
                    .col("id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("events").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
