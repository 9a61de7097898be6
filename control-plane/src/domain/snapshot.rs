//! Building an environment's config snapshot from the database.

use std::collections::{BTreeMap, HashMap};

use airlock_shared::seal::SealedSecret;
use airlock_shared::wire::SecretEntry;
use airlock_shared::wire::{ApiKeyGrant, EnvironmentSnapshot};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IsolationLevel, QueryFilter, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use super::{api_keys, functions, oauth, secrets};
use crate::entity::{environment, secret, secret_version};
use crate::error::AppError;

/// The snapshot of one environment at `revision`, or `None` if the environment does not
/// exist. Everything is read in one transaction so the snapshot is consistent (on
/// PostgreSQL a repeatable-read, read-only one; SQLite transactions are serializable).
pub async fn build(
    db: &DatabaseConnection,
    environment_id: Uuid,
    revision: i64,
) -> Result<Option<EnvironmentSnapshot>, AppError> {
    let txn = match db.get_database_backend() {
        DbBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
        _ => db.begin().await?,
    };
    let Some(environment) = environment::Entity::find_by_id(environment_id)
        .one(&txn)
        .await?
    else {
        return Ok(None);
    };

    let functions = functions::list_of_tenant(&txn, environment.tenant_id)
        .await?
        .into_iter()
        .map(|f| (f.spec.name.clone(), f.spec))
        .collect();
    let secrets = current_secrets(&txn, environment_id).await?;
    // Revoked and expired keys are left out; data planes refuse the others at their expiry.
    let api_keys = api_keys::usable_of_environment(&txn, environment_id, super::now())
        .await?
        .into_iter()
        .map(|k| ApiKeyGrant {
            id: k.id,
            name: k.name,
            hash: k.hash,
            functions: k.functions,
            expires_at: k.expires_at,
        })
        .collect();
    let oauth = oauth::snapshot_parts(&txn, environment_id, super::now()).await?;
    txn.commit().await?;

    Ok(Some(EnvironmentSnapshot {
        tenant_id: environment.tenant_id,
        environment_id,
        revision,
        functions,
        secrets,
        api_keys,
        oauth_clients: oauth.clients,
        oauth_connections: oauth.connections,
        oauth_authorizations: oauth.authorizations,
    }))
}

/// The current sealed version of each secret of an environment, by name.
async fn current_secrets(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
) -> Result<BTreeMap<String, SecretEntry>, AppError> {
    let secrets = secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .all(db)
        .await?;
    if secrets.is_empty() {
        return Ok(BTreeMap::new());
    }
    let by_id: HashMap<Uuid, &secret::Model> = secrets.iter().map(|s| (s.id, s)).collect();
    let versions = secret_version::Entity::find()
        .filter(secret_version::Column::SecretId.is_in(by_id.keys().copied()))
        .select_only()
        .columns([
            secret_version::Column::SecretId,
            secret_version::Column::Version,
            secret_version::Column::Sealed,
        ])
        .into_tuple::<(Uuid, i32, String)>()
        .all(db)
        .await?;

    let mut current = BTreeMap::new();
    for (secret_id, version, sealed) in versions {
        let Some(secret) = by_id.get(&secret_id) else {
            continue;
        };
        if secret.current_version != version {
            continue;
        }
        let sealed: SealedSecret = serde_json::from_str(&sealed).map_err(|e| {
            AppError::internal(anyhow::anyhow!(
                "secret {secret_id} version {version} has a malformed sealed value: {e}"
            ))
        })?;
        current.insert(
            secret.name.clone(),
            SecretEntry {
                sealed,
                allowed_hosts: secrets::stored_hosts(secret.id, &secret.allowed_hosts)?,
            },
        );
    }
    // A secret without its current version would be a broken invariant; failing closed
    // (the data plane reports the secret missing) is right, but say so loudly.
    for secret in &secrets {
        if !current.contains_key(&secret.name) {
            tracing::error!(
                secret_id = %secret.id,
                version = secret.current_version,
                "secret has no stored current version; leaving it out of the snapshot"
            );
        }
    }
    Ok(current)
}

/// Ids of every environment of a tenant.
pub async fn environment_ids_of_tenant(
    db: &DatabaseConnection,
    tenant_id: Uuid,
) -> Result<Vec<Uuid>, AppError> {
    Ok(environment::Entity::find()
        .filter(environment::Column::TenantId.eq(tenant_id))
        .select_only()
        .column(environment::Column::Id)
        .into_tuple::<Uuid>()
        .all(db)
        .await?)
}

/// Ids of every environment.
pub async fn all_environment_ids(db: &DatabaseConnection) -> Result<Vec<Uuid>, AppError> {
    Ok(environment::Entity::find()
        .select_only()
        .column(environment::Column::Id)
        .into_tuple::<Uuid>()
        .all(db)
        .await?)
}
