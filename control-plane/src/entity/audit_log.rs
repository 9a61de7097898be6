//! `audit_log`: append-only; written through [`crate::domain::audit::record`] only.

use sea_orm::entity::prelude::*;

/// One audited action: who did what to which thing. Never a secret value.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub at: DateTimeUtc,
    /// `admin_token`, `provisioning_link` or `data_plane`.
    pub actor_type: String,
    pub actor_id: Option<Uuid>,
    /// Dotted name (`secret.set`, ...).
    pub action: String,
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    pub target_type: String,
    pub target_id: Option<Uuid>,
    #[sea_orm(column_type = "Text", nullable)]
    pub target_name: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub request_id: Option<String>,
    /// JSON object of metadata.
    #[sea_orm(column_type = "Text")]
    pub detail: String,
}

impl ActiveModelBehavior for ActiveModel {}
