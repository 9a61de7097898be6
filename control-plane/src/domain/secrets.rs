//! Secrets: write-only, versioned, sealed to the data planes' public key.
//!
//! The control plane holds only the [`SealingKey`]: it can store a new version but can never
//! read a value back, and no function here returns one.

use airlock_shared::seal::{SealingKey, SecretIdentity};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, Set,
};
use uuid::Uuid;

use super::environments::{self, lock_environment};
use super::{begin_write, names, now};
use crate::entity::{secret, secret_version};
use crate::error::AppError;

/// Largest secret value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Store `value` as the next version of secret `name` in an environment (version 1 when the
/// secret is new). Returns the secret's metadata.
pub async fn set(
    db: &DatabaseConnection,
    sealing_key: &SealingKey,
    environment_id: Uuid,
    name: &str,
    value: &str,
) -> Result<secret::Model, AppError> {
    names::check_secret_name("name", name)?;
    if value.is_empty() {
        return Err(AppError::invalid("value", "must not be empty"));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(AppError::invalid(
            "value",
            format!("must be at most {MAX_VALUE_LEN} bytes"),
        ));
    }

    let txn = begin_write(db).await?;
    // The environment row lock serializes writers of this environment's secrets, so two
    // concurrent sets of one secret get versions n+1 and n+2 rather than a conflict.
    let environment = lock_environment(&txn, environment_id).await?;
    let existing = secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .filter(secret::Column::Name.eq(name))
        .one(&txn)
        .await?;
    let at = now();
    let metadata = match existing {
        Some(current) => {
            let version = current.current_version.checked_add(1).ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "secret {} has too many versions",
                    current.id
                ))
            })?;
            let mut active = current.into_active_model();
            active.current_version = Set(version);
            active.updated_at = Set(at);
            active.update(&txn).await?
        }
        None => {
            secret::ActiveModel {
                id: Set(Uuid::new_v4()),
                environment_id: Set(environment_id),
                name: Set(name.to_string()),
                current_version: Set(1),
                created_at: Set(at),
                updated_at: Set(at),
            }
            .insert(&txn)
            .await?
        }
    };

    let identity = SecretIdentity {
        tenant_id: environment.tenant_id,
        environment_id,
        name,
        version: metadata.current_version,
    };
    let sealed = sealing_key
        .seal(identity, value)
        .map_err(AppError::internal)?;
    secret_version::ActiveModel {
        id: Set(Uuid::new_v4()),
        secret_id: Set(metadata.id),
        version: Set(metadata.current_version),
        sealed: Set(serde_json::to_string(&sealed).map_err(AppError::internal)?),
        created_at: Set(at),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(metadata)
}

/// Metadata of an environment's secrets, by name; `NOT_FOUND` if the environment is unknown.
pub async fn list(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<Vec<secret::Model>, AppError> {
    environments::get(db, environment_id).await?;
    Ok(secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(secret::Column::Name)
        .all(db)
        .await?)
}
