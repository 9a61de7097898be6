//! `audit_log`: every mutation and every use of a secret, append-only. Who (`actor_type`,
//! `actor_id`), what (`action`, e.g. `secret.set`), where (`tenant_id`, `environment_id`) and
//! on what (`target_type`, `target_id`, `target_name`); `detail` is a JSON object of
//! metadata (versions, host lists), never a secret value.
//!
//! No foreign keys on purpose: an audit entry must outlive what it names (the entry that
//! records a deletion would otherwise be deleted with it), and nothing may cascade into it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("audit_log")
                    // UUID v7: ordered by creation time, the tie-breaker when pages by `at`.
                    .col(pk_uuid("id"))
                    .col(timestamp_with_time_zone("at"))
                    // `admin_token`, `provisioning_link` or `data_plane`.
                    .col(string("actor_type"))
                    .col(uuid_null("actor_id"))
                    // Dotted name: `tenant.create`, `secret.set`, `secret.used`, ...
                    .col(string("action"))
                    .col(uuid_null("tenant_id"))
                    .col(uuid_null("environment_id"))
                    .col(string("target_type"))
                    .col(uuid_null("target_id"))
                    .col(text_null("target_name"))
                    .col(text_null("request_id"))
                    // JSON object.
                    .col(text("detail"))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("ix_audit_log_tenant_at", "tenant_id"),
            ("ix_audit_log_environment_at", "environment_id"),
            ("ix_audit_log_target_at", "target_id"),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table("audit_log")
                        .col(column)
                        .col("at")
                        .to_owned(),
                )
                .await?;
        }
        // Unfiltered listing, newest first, pages by (at, id).
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_log_at_id")
                    .table("audit_log")
                    .col("at")
                    .col("id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("audit_log").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
