//! API keys: generated here, shown once, stored as a hash.

use airlock_shared::api_key::{self, ApiKeyHash};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
};
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::environments::{self, lock_environment};
use super::{begin_write, functions, insert_error, names, now};
use crate::entity::api_key as api_key_entity;
use crate::error::AppError;

/// Grant that allows every function of the tenant.
pub const ALL_FUNCTIONS: &str = "*";
/// Most entries in a key's function list.
pub const MAX_GRANTS: usize = 256;

/// An API key as stored (no plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub hash: ApiKeyHash,
    /// Function names it may invoke; `*` grants all.
    pub functions: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A key just created: the stored record and the plaintext, which exists only in this value.
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    pub plaintext: String,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

/// Create a key for an environment that may invoke `grants` (each `*` or the name of one of
/// the tenant's functions). Key names are unique per environment.
pub async fn create(
    db: &DatabaseConnection,
    actor: Actor,
    environment_id: Uuid,
    name: &str,
    grants: &[String],
) -> Result<CreatedApiKey, AppError> {
    names::check_api_key_name("name", name)?;
    if grants.is_empty() {
        return Err(AppError::invalid(
            "functions",
            "must name at least one function (or `*` for all)",
        ));
    }
    if grants.len() > MAX_GRANTS {
        return Err(AppError::invalid(
            "functions",
            format!("at most {MAX_GRANTS} entries"),
        ));
    }

    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, environment_id).await?;
    let known = functions::names_of_tenant(&txn, environment.tenant_id).await?;
    let mut granted: Vec<String> = Vec::with_capacity(grants.len());
    for grant in grants {
        if grant != ALL_FUNCTIONS && !known.contains(grant) {
            return Err(AppError::invalid(
                "functions",
                format!(
                    "unknown function `{}` (not defined in this environment's tenant)",
                    grant.chars().take(64).collect::<String>()
                ),
            ));
        }
        // Repeats add nothing; keep the first occurrence so the order stays the caller's.
        if !granted.contains(grant) {
            granted.push(grant.clone());
        }
    }
    let taken = api_key_entity::Entity::find()
        .filter(api_key_entity::Column::EnvironmentId.eq(environment_id))
        .filter(api_key_entity::Column::Name.eq(name))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "API key",
            name: name.to_string(),
        });
    }

    let generated = api_key::generate();
    let model = api_key_entity::ActiveModel {
        id: Set(Uuid::new_v4()),
        environment_id: Set(environment_id),
        name: Set(name.to_string()),
        prefix: Set(generated.prefix.clone()),
        key_hash: Set(generated.hash.as_str().to_string()),
        functions: Set(serde_json::to_string(&granted).map_err(AppError::internal)?),
        created_at: Set(now()),
    }
    .insert(&txn)
    .await
    .map_err(|e| insert_error(e, "API key", name))?;
    // Names and grants only: never the key, its prefix or its hash.
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::API_KEY_CREATE, targets::API_KEY)
            .tenant(environment.tenant_id)
            .environment(environment_id)
            .target(model.id, model.name.clone())
            .detail(serde_json::json!({ "functions": granted })),
    )
    .await?;
    txn.commit().await?;
    Ok(CreatedApiKey {
        api_key: from_model(model)?,
        plaintext: generated.plaintext,
    })
}

/// Keys of an environment, by name; `NOT_FOUND` if the environment is unknown.
pub async fn list(db: &DatabaseConnection, environment_id: Uuid) -> Result<Vec<ApiKey>, AppError> {
    environments::get(db, environment_id).await?;
    list_of_environment(db, environment_id).await
}

/// Keys of an environment, by name, without checking the environment exists.
pub async fn list_of_environment(
    db: &impl sea_orm::ConnectionTrait,
    environment_id: Uuid,
) -> Result<Vec<ApiKey>, AppError> {
    api_key_entity::Entity::find()
        .filter(api_key_entity::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(api_key_entity::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(from_model)
        .collect()
}

fn from_model(model: api_key_entity::Model) -> Result<ApiKey, AppError> {
    let functions: Vec<String> = serde_json::from_str(&model.functions).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "API key {} has a malformed stored function list: {e}",
            model.id
        ))
    })?;
    Ok(ApiKey {
        id: model.id,
        environment_id: model.environment_id,
        name: model.name,
        prefix: model.prefix,
        hash: ApiKeyHash::from_hex(model.key_hash),
        functions,
        created_at: model.created_at,
    })
}
