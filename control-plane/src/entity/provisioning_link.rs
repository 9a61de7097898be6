//! `provisioning_links`.

use sea_orm::entity::prelude::*;

/// A single-use link to set named secrets of one environment. Holds the token's hash only.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provisioning_links")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    /// JSON array of `{"name", "allowedHosts"}`.
    #[sea_orm(column_type = "Text")]
    pub secrets: String,
    /// Hex SHA-256 of the link's token.
    #[sea_orm(unique)]
    pub token_hash: String,
    /// The admin token that created the link.
    pub created_by: Uuid,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
