//! `secrets`: metadata only; values live sealed in `secret_versions`.

use sea_orm::entity::prelude::*;

/// A named secret of an environment and its current version.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "secrets")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    pub current_version: i32,
    /// JSON array of host patterns ([`airlock_shared::hosts::HostPattern`]) the secret may be
    /// sent to.
    #[sea_orm(column_type = "Text")]
    pub allowed_hosts: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
