//! `functions`.

use sea_orm::entity::prelude::*;

/// A trained function of a tenant, as template sources.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "functions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub method: String,
    #[sea_orm(column_type = "Text")]
    pub url: String,
    /// JSON array of `{"name", "value"}` ([`airlock_shared::wire::HeaderSpec`]).
    #[sea_orm(column_type = "Text")]
    pub headers: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub body: Option<String>,
    pub timeout_ms: i64,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
