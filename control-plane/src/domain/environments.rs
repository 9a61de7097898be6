//! Environments of a tenant.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::{begin_write, insert_error, names, not_found, now, tenants};
use crate::entity::{environment, tenant};
use crate::error::AppError;

/// Create an environment in a tenant. Names are unique per tenant.
pub async fn create(
    db: &DatabaseConnection,
    actor: Actor,
    tenant_id: Uuid,
    name: &str,
) -> Result<environment::Model, AppError> {
    names::check_resource_name("name", name)?;
    let txn = begin_write(db).await?;
    lock_tenant(&txn, tenant_id).await?;
    let taken = environment::Entity::find()
        .filter(environment::Column::TenantId.eq(tenant_id))
        .filter(environment::Column::Name.eq(name))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "environment",
            name: name.to_string(),
        });
    }
    let model = environment::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant_id),
        name: Set(name.to_string()),
        created_at: Set(now()),
    }
    .insert(&txn)
    .await
    .map_err(|e| insert_error(e, "environment", name))?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::ENVIRONMENT_CREATE, targets::ENVIRONMENT)
            .tenant(tenant_id)
            .environment(model.id)
            .target(model.id, model.name.clone()),
    )
    .await?;
    txn.commit().await?;
    Ok(model)
}

/// Environments of a tenant, by name; `NOT_FOUND` if the tenant is unknown.
pub async fn list(
    db: &DatabaseConnection,
    tenant_id: Uuid,
) -> Result<Vec<environment::Model>, AppError> {
    tenants::get(db, tenant_id).await?;
    list_of_tenant(db, tenant_id).await
}

/// Environments of a tenant, by name, without checking the tenant exists.
pub async fn list_of_tenant(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> Result<Vec<environment::Model>, AppError> {
    Ok(environment::Entity::find()
        .filter(environment::Column::TenantId.eq(tenant_id))
        .order_by_asc(environment::Column::Name)
        .all(db)
        .await?)
}

/// One environment; `NOT_FOUND` if the id is unknown.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<environment::Model, AppError> {
    environment::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("environment", id))
}

/// Load a tenant inside a write transaction, locking its row on PostgreSQL so that
/// concurrent changes under one tenant (e.g. two functions with the same name) take turns.
/// SQLite needs no row lock: its write transactions are already serialized.
pub(crate) async fn lock_tenant(
    txn: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> Result<tenant::Model, AppError> {
    tenant::Entity::find_by_id(tenant_id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| not_found("tenant", tenant_id))
}

/// Load an environment inside a write transaction, locking its row (see [`lock_tenant`]).
pub(crate) async fn lock_environment(
    txn: &impl ConnectionTrait,
    environment_id: Uuid,
) -> Result<environment::Model, AppError> {
    environment::Entity::find_by_id(environment_id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| not_found("environment", environment_id))
}
