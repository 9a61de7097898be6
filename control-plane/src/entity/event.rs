//! `events`.

use sea_orm::entity::prelude::*;

/// One event reported by a data plane, as stored. No foreign keys: events outlive what they
/// name.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// The event's own id (UUID v7 from the data plane); re-deliveries are stored once.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub at: DateTimeUtc,
    /// Dotted kind ([`airlock_shared::events::EventKind::as_str`]).
    pub kind: String,
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    #[sea_orm(column_type = "Text")]
    pub request_id: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub function: Option<String>,
    pub api_key_id: Option<Uuid>,
    /// JSON array of secret names (never values).
    #[sea_orm(column_type = "Text")]
    pub secrets: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub upstream_host: Option<String>,
    pub status: i32,
    #[sea_orm(column_type = "Text")]
    pub message: String,
    /// The OAuth connection the event is about, by name.
    #[sea_orm(column_type = "Text", nullable)]
    pub oauth_connection: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
