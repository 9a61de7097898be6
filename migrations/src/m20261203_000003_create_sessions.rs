//! Console sign-in: `sessions` (a signed-in browser) and `login_attempts` (a sign-in between
//! the redirect to the OpenID provider and its callback).
//!
//! Neither table holds a credential: a session is found by the SHA-256 of its cookie value,
//! an attempt by the SHA-256 of its `state` and bound to the browser by the SHA-256 of a
//! value only the browser's cookie holds (the PKCE verifier and the nonce are derived from
//! that value, so they are not stored either).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::belongs_to;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("sessions")
                    .col(pk_uuid("id"))
                    .col(uuid("user_id"))
                    .col(text_uniq("token_hash"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .foreign_key(&mut belongs_to("sessions", "user_id", "users"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_sessions_expires_at")
                    .table("sessions")
                    .col("expires_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("login_attempts")
                    .col(pk_uuid("id"))
                    .col(text_uniq("state_hash"))
                    .col(text("binding_hash"))
                    // A same-origin relative path, checked before it is stored.
                    .col(text("return_to"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("login_attempts").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("sessions").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
