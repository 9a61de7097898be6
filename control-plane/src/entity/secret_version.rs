//! `secret_versions`.

use sea_orm::entity::prelude::*;

/// One version of a secret, sealed to the data planes' public key.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "secret_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub secret_id: Uuid,
    pub version: i32,
    /// JSON of [`airlock_shared::seal::SealedSecret`]; the control plane cannot open it.
    #[sea_orm(column_type = "Text")]
    pub sealed: String,
    pub created_at: DateTimeUtc,
    /// Who stored this version (`audit_log.actor_type` vocabulary); `None` for versions
    /// stored before authorship was recorded.
    pub created_by_type: Option<String>,
    pub created_by_id: Option<Uuid>,
}

impl ActiveModelBehavior for ActiveModel {}
