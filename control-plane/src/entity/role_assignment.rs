//! `role_assignments`: who holds which role where. Each row is one casbin grouping policy
//! (`g, principal, role, domain`).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "role_assignments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// `user:<id>`, `token:<id>` or `email:<address>`.
    pub principal: String,
    pub role: String,
    /// `platform`, `tenant:<id>` or `env:<id>`.
    pub domain: String,
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    /// Principal that granted the role (`migration` for upgrades).
    pub created_by: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
