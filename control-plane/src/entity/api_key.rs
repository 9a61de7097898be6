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
    /// JSON array of function names; `*` grants every function.
    #[sea_orm(column_type = "Text")]
    pub functions: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
