//! Tenants.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
};
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::{begin_write, insert_error, names, not_found, now};
use crate::entity::tenant;
use crate::error::AppError;

/// Create a tenant. Names are unique across the installation.
pub async fn create(
    db: &DatabaseConnection,
    actor: Actor,
    name: &str,
) -> Result<tenant::Model, AppError> {
    names::check_resource_name("name", name)?;
    let txn = begin_write(db).await?;
    let taken = tenant::Entity::find()
        .filter(tenant::Column::Name.eq(name))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "tenant",
            name: name.to_string(),
        });
    }
    let model = tenant::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(name.to_string()),
        created_at: Set(now()),
    }
    .insert(&txn)
    .await
    .map_err(|e| insert_error(e, "tenant", name))?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::TENANT_CREATE, targets::TENANT)
            .tenant(model.id)
            .target(model.id, model.name.clone()),
    )
    .await?;
    txn.commit().await?;
    Ok(model)
}

/// Every tenant, by name.
pub async fn list(db: &DatabaseConnection) -> Result<Vec<tenant::Model>, AppError> {
    Ok(tenant::Entity::find()
        .order_by_asc(tenant::Column::Name)
        .all(db)
        .await?)
}

/// One tenant; `NOT_FOUND` if the id is unknown.
pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<tenant::Model, AppError> {
    tenant::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("tenant", id))
}
