//! Secrets: write-only, versioned, sealed to the data planes' public key, bound to hosts.
//!
//! The control plane holds only the [`SealingKey`]: it can store a new version but can never
//! read a value back, and no function here returns one.
//!
//! Host binding: a secret is created with the hosts it may be sent to (at least one; there is
//! no pattern that allows every host), and the data plane refuses to send it anywhere else.
//! Hosts belong to the secret, not to a version: a rollback changes the value, not where it
//! may go.
//!
//! Versions: every set stores a new version (the highest so far + 1); the secret points at its
//! current one. A rollback moves that pointer back to an existing version, whose ciphertext
//! stays bound to its own version number.

use airlock_shared::hosts::HostPattern;
use airlock_shared::seal::{SealingKey, SecretIdentity};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::environments::{self, lock_environment};
use super::{begin_write, names, not_found, now};
use crate::entity::{environment, secret, secret_version};
use crate::error::AppError;

/// Largest secret value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most host patterns one secret may be bound to.
pub const MAX_ALLOWED_HOSTS: usize = 64;

/// A secret's metadata and host binding (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    /// The version the data planes use.
    pub version: i32,
    /// Hosts the secret may be sent to.
    pub allowed_hosts: Vec<HostPattern>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One stored version of a secret: metadata only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    pub version: i32,
    pub created_at: DateTime<Utc>,
    /// Who stored it; `None` for versions stored before authorship was recorded.
    pub actor: Option<Actor>,
    /// Whether this is the version the data planes use.
    pub current: bool,
}

/// A secret that was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedSecret {
    pub id: Uuid,
    pub environment_id: Uuid,
}

/// What `setSecret` asks for.
pub struct SetSecret<'a> {
    pub environment_id: Uuid,
    pub name: &'a str,
    pub value: &'a str,
    /// Required when the secret is new; `None` keeps the hosts of an existing secret.
    pub allowed_hosts: Option<&'a [String]>,
}

impl std::fmt::Debug for SetSecret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecret")
            .field("environment_id", &self.environment_id)
            .field("name", &self.name)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

/// Parse a host list from input `field`: 1 to [`MAX_ALLOWED_HOSTS`] valid patterns
/// (repeats dropped, order kept). The error names the offending entry.
pub fn parse_allowed_hosts(
    field: &'static str,
    hosts: &[String],
) -> Result<Vec<HostPattern>, AppError> {
    if hosts.is_empty() {
        return Err(AppError::invalid(
            field,
            "must name at least one host the secret may be sent to (`api.example.com`, `*.example.com`, `127.0.0.1`); there is no allow-all",
        ));
    }
    if hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(AppError::invalid(
            field,
            format!("at most {MAX_ALLOWED_HOSTS} entries"),
        ));
    }
    let mut patterns: Vec<HostPattern> = Vec::with_capacity(hosts.len());
    for host in hosts {
        let pattern = HostPattern::parse(host).map_err(|_| {
            AppError::invalid(
                field,
                format!(
                    "`{}` is not a host name, an IP address or `*.` followed by a domain (no scheme, port or path)",
                    host.chars().take(100).collect::<String>()
                ),
            )
        })?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

/// Check a value before anything is written.
pub fn check_value(field: &'static str, value: &str) -> Result<(), AppError> {
    if value.is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_VALUE_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Store `value` as the next version of a secret (version 1 when the secret is new, which
/// requires `allowed_hosts`). Returns the secret's metadata.
pub async fn set(
    db: &DatabaseConnection,
    sealing_key: &SealingKey,
    actor: Actor,
    input: SetSecret<'_>,
) -> Result<Secret, AppError> {
    names::check_secret_name("name", input.name)?;
    check_value("value", input.value)?;
    let hosts = input
        .allowed_hosts
        .map(|hosts| parse_allowed_hosts("allowedHosts", hosts))
        .transpose()?;

    let txn = begin_write(db).await?;
    // The environment row lock serializes writers of this environment's secrets, so two
    // concurrent sets of one secret get versions n+1 and n+2 rather than a conflict.
    let environment = lock_environment(&txn, input.environment_id).await?;
    let secret = set_in(
        &txn,
        sealing_key,
        actor,
        &environment,
        input.name,
        input.value,
        hosts,
    )
    .await?;
    txn.commit().await?;
    Ok(secret)
}

/// The body of [`set`], inside a write transaction that holds the environment's lock. The
/// name, value and hosts are already checked. Records the audit entry.
pub(crate) async fn set_in(
    txn: &impl ConnectionTrait,
    sealing_key: &SealingKey,
    actor: Actor,
    environment: &environment::Model,
    name: &str,
    value: &str,
    allowed_hosts: Option<Vec<HostPattern>>,
) -> Result<Secret, AppError> {
    let existing = secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment.id))
        .filter(secret::Column::Name.eq(name))
        .one(txn)
        .await?;
    let at = now();
    let hosts_json = allowed_hosts
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(AppError::internal)?;
    let created = existing.is_none();
    let metadata = match existing {
        Some(current) => {
            // After a rollback the current version is not the highest: never reuse a number.
            let version = highest_version(txn, current.id)
                .await?
                .checked_add(1)
                .ok_or_else(|| {
                    AppError::internal(anyhow::anyhow!(
                        "secret {} has too many versions",
                        current.id
                    ))
                })?;
            let mut active = current.into_active_model();
            active.current_version = Set(version);
            active.updated_at = Set(at);
            if let Some(hosts) = hosts_json {
                active.allowed_hosts = Set(hosts);
            }
            active.update(txn).await?
        }
        None => {
            let hosts = hosts_json.ok_or_else(|| {
                AppError::invalid(
                    "allowedHosts",
                    format!(
                        "required when a secret is created: name the hosts `{name}` may be sent to (there is no allow-all)"
                    ),
                )
            })?;
            secret::ActiveModel {
                id: Set(Uuid::new_v4()),
                environment_id: Set(environment.id),
                name: Set(name.to_string()),
                current_version: Set(1),
                allowed_hosts: Set(hosts),
                created_at: Set(at),
                updated_at: Set(at),
            }
            .insert(txn)
            .await
            .map_err(|e| super::insert_error(e, "secret", name))?
        }
    };

    let identity = SecretIdentity {
        tenant_id: environment.tenant_id,
        environment_id: environment.id,
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
        created_by_type: Set(Some(actor.actor_type().as_str().to_string())),
        created_by_id: Set(actor.id()),
    }
    .insert(txn)
    .await?;

    let secret = from_model(metadata)?;
    let mut detail = json!({ "version": secret.version, "created": created });
    if created || allowed_hosts.is_some() {
        detail["allowedHosts"] = json!(secret.allowed_hosts);
    }
    audit::record(
        txn,
        AuditEntry::new(actor, actions::SECRET_SET, targets::SECRET)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(secret.id, secret.name.clone())
            .detail(detail),
    )
    .await?;
    Ok(secret)
}

/// Replace the hosts a secret may be sent to.
pub async fn set_hosts(
    db: &DatabaseConnection,
    actor: Actor,
    secret_id: Uuid,
    allowed_hosts: &[String],
) -> Result<Secret, AppError> {
    let hosts = parse_allowed_hosts("allowedHosts", allowed_hosts)?;
    let txn = begin_write(db).await?;
    let (current, environment) = lock_secret(&txn, secret_id).await?;
    let before = from_model(current.clone())?;
    let mut active = current.into_active_model();
    active.allowed_hosts = Set(serde_json::to_string(&hosts).map_err(AppError::internal)?);
    active.updated_at = Set(now());
    let secret = from_model(active.update(&txn).await?)?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::SECRET_HOSTS, targets::SECRET)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(secret.id, secret.name.clone())
            .detail(json!({ "from": before.allowed_hosts, "to": secret.allowed_hosts })),
    )
    .await?;
    txn.commit().await?;
    Ok(secret)
}

/// Make an existing version current again. `NOT_FOUND` for an unknown secret or version.
pub async fn rollback(
    db: &DatabaseConnection,
    actor: Actor,
    secret_id: Uuid,
    version: i32,
) -> Result<Secret, AppError> {
    let txn = begin_write(db).await?;
    let (current, environment) = lock_secret(&txn, secret_id).await?;
    let exists = secret_version::Entity::find()
        .filter(secret_version::Column::SecretId.eq(secret_id))
        .filter(secret_version::Column::Version.eq(version))
        .count(&txn)
        .await?
        > 0;
    if !exists {
        return Err(AppError::NotFound {
            kind: "secret version",
            id: format!("{secret_id} v{version}"),
        });
    }
    let from_version = current.current_version;
    let mut active = current.into_active_model();
    active.current_version = Set(version);
    active.updated_at = Set(now());
    let secret = from_model(active.update(&txn).await?)?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::SECRET_ROLLBACK, targets::SECRET)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(secret.id, secret.name.clone())
            .detail(json!({ "fromVersion": from_version, "toVersion": version })),
    )
    .await?;
    txn.commit().await?;
    Ok(secret)
}

/// Delete a secret and every version of it.
pub async fn delete(
    db: &DatabaseConnection,
    actor: Actor,
    secret_id: Uuid,
) -> Result<DeletedSecret, AppError> {
    let txn = begin_write(db).await?;
    let (current, environment) = lock_secret(&txn, secret_id).await?;
    let versions = secret_version::Entity::delete_many()
        .filter(secret_version::Column::SecretId.eq(secret_id))
        .exec(&txn)
        .await?
        .rows_affected;
    secret::Entity::delete_by_id(secret_id).exec(&txn).await?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::SECRET_DELETE, targets::SECRET)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(secret_id, current.name.clone())
            .detail(json!({ "currentVersion": current.current_version, "versions": versions })),
    )
    .await?;
    txn.commit().await?;
    Ok(DeletedSecret {
        id: secret_id,
        environment_id: environment.id,
    })
}

/// Metadata of a secret's versions, newest first; `NOT_FOUND` if the secret is unknown.
pub async fn versions(
    db: &DatabaseConnection,
    secret_id: Uuid,
) -> Result<Vec<SecretVersion>, AppError> {
    let secret = secret::Entity::find_by_id(secret_id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("secret", secret_id))?;
    // Metadata columns only: the sealed values are not even read.
    let rows = secret_version::Entity::find()
        .filter(secret_version::Column::SecretId.eq(secret_id))
        .select_only()
        .columns([
            secret_version::Column::Version,
            secret_version::Column::CreatedAt,
            secret_version::Column::CreatedByType,
            secret_version::Column::CreatedById,
        ])
        .order_by_desc(secret_version::Column::Version)
        .into_tuple::<(i32, DateTime<Utc>, Option<String>, Option<Uuid>)>()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(version, created_at, actor_type, actor_id)| SecretVersion {
                version,
                created_at,
                actor: actor_type.and_then(|t| Actor::from_stored(&t, actor_id)),
                current: version == secret.current_version,
            },
        )
        .collect())
}

/// Metadata of an environment's secrets, by name; `NOT_FOUND` if the environment is unknown.
pub async fn list(db: &DatabaseConnection, environment_id: Uuid) -> Result<Vec<Secret>, AppError> {
    environments::get(db, environment_id).await?;
    secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(secret::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(from_model)
        .collect()
}

/// Load a secret and lock its environment inside a write transaction. Every writer of an
/// environment's secrets takes that lock first, so the secret read after it is current.
async fn lock_secret(
    txn: &impl ConnectionTrait,
    secret_id: Uuid,
) -> Result<(secret::Model, environment::Model), AppError> {
    let found = secret::Entity::find_by_id(secret_id)
        .one(txn)
        .await?
        .ok_or_else(|| not_found("secret", secret_id))?;
    let environment = lock_environment(txn, found.environment_id).await?;
    let current = secret::Entity::find_by_id(secret_id)
        .one(txn)
        .await?
        .ok_or_else(|| not_found("secret", secret_id))?;
    Ok((current, environment))
}

async fn highest_version(txn: &impl ConnectionTrait, secret_id: Uuid) -> Result<i32, AppError> {
    let highest: Option<Option<i32>> = secret_version::Entity::find()
        .filter(secret_version::Column::SecretId.eq(secret_id))
        .select_only()
        .column_as(secret_version::Column::Version.max(), "highest")
        .into_tuple()
        .one(txn)
        .await?;
    Ok(highest.flatten().unwrap_or(0))
}

/// Parse a stored host list.
pub(crate) fn stored_hosts(secret_id: Uuid, json: &str) -> Result<Vec<HostPattern>, AppError> {
    serde_json::from_str(json).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "secret {secret_id} has a malformed stored host list: {e}"
        ))
    })
}

fn from_model(model: secret::Model) -> Result<Secret, AppError> {
    Ok(Secret {
        allowed_hosts: stored_hosts(model.id, &model.allowed_hosts)?,
        id: model.id,
        environment_id: model.environment_id,
        name: model.name,
        version: model.current_version,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_and_message(result: Result<Vec<HostPattern>, AppError>) -> (&'static str, String) {
        match result {
            Err(AppError::InvalidInput { field, message }) => (field, message),
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn host_lists_are_validated_normalised_and_deduplicated() {
        let hosts = parse_allowed_hosts(
            "allowedHosts",
            &[
                "API.example.com".into(),
                "*.example.org".into(),
                "api.example.com".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            hosts.iter().map(HostPattern::as_str).collect::<Vec<_>>(),
            ["api.example.com", "*.example.org"]
        );

        let (field, message) = field_and_message(parse_allowed_hosts("allowedHosts", &[]));
        assert_eq!(field, "allowedHosts");
        assert!(message.contains("at least one host"), "{message}");

        let (_, message) = field_and_message(parse_allowed_hosts(
            "allowedHosts",
            &["api.example.com".into(), "https://evil.example/x".into()],
        ));
        assert!(message.contains("`https://evil.example/x`"), "{message}");
        let (_, message) = field_and_message(parse_allowed_hosts("allowedHosts", &["*".into()]));
        assert!(message.contains("`*`"), "{message}");

        let many: Vec<String> = (0..=MAX_ALLOWED_HOSTS)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        assert!(parse_allowed_hosts("allowedHosts", &many).is_err());
    }

    #[test]
    fn set_secret_input_debug_hides_the_value() {
        let input = SetSecret {
            environment_id: Uuid::nil(),
            name: "TOKEN",
            value: "hunter2-canary",
            allowed_hosts: None,
        };
        assert!(!format!("{input:?}").contains("hunter2"));
    }
}
