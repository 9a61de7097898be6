//! `api_keys`.

use sea_orm::entity::prelude::*;

/// An API key of an environment: its hash and the functions it may invoke.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    pub prefix: String,
    /// Hex SHA-256 of the key ([`airlock_shared::api_key::ApiKeyHash`]).
    #[sea_orm(unique)]
    pub key_hash: String,
    /// JSON array of function patterns ([`airlock_shared::grants`]); `*` grants every function.
    #[sea_orm(column_type = "Text")]
    pub functions: String,
    pub created_at: DateTimeUtc,
    /// When the key stops working; `None`: never.
    pub expires_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// When this key was replaced by a rotation (the new row names it in `rotated_from_id`).
    pub rotated_at: Option<DateTimeUtc>,
    pub rotated_from_id: Option<Uuid>,
    /// Latest use reported by a data plane (about one second of delay, millisecond precision).
    pub last_used_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
