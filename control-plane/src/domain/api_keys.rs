//! API keys: generated here, shown once, stored as a hash.
//!
//! ## Lifecycle
//!
//! - A key may expire (`expires_at`, in the future when set). Data planes compare it with
//!   their clock on every request; keys already expired are left out of new snapshots.
//! - [`revoke`] sets `revoked_at`; the environment is republished without the key, so every
//!   data plane refuses it as soon as it applies the snapshot. Revoking a revoked key changes
//!   nothing and returns it as it is (idempotent, so a retried request is harmless).
//! - [`rotate`] keeps one row per secret: the old row stays (it is the old secret's record and
//!   may still work during the grace period), gets `rotated_at` and its expiry shortened to
//!   the end of the grace period (never lengthened); a new row with the same environment,
//!   name and functions holds the new secret and names the old one in `rotated_from_id`. So
//!   every secret ever issued has exactly one row with its own expiry, revocation and last
//!   use, and revoking the old row ends its grace period early.
//! - Names are unique among the *current* keys of an environment (neither rotated away nor
//!   revoked; a partial unique index enforces it): both rows of a rotation share a name, and
//!   a revoked key's name can be given to a new key.
//! - `last_used_at` is moved forward by the data planes' usage reports ([`record_uses`]).

use airlock_shared::api_key::{self, ApiKeyHash};
use airlock_shared::events::KeyUse;
use airlock_shared::grants;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    QueryFilter, QueryOrder, Set,
};
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::environments::{self, lock_environment};
use super::{begin_write, functions, insert_error, names, not_found, now};
use crate::entity::api_key as api_key_entity;
use crate::error::AppError;

/// Grant that allows every function of the tenant.
pub const ALL_FUNCTIONS: &str = grants::ALL_FUNCTIONS;
/// Most entries in a key's function list.
pub const MAX_GRANTS: usize = 256;
/// Longest grace period a rotation may give the old key.
pub const MAX_GRACE_SECONDS: i64 = 30 * 24 * 60 * 60;

/// Where a key is in its life, at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyStatus {
    /// Accepted by the data planes.
    Active,
    /// Past its expiry (including an old key whose rotation grace period is over).
    Expired,
    /// Revoked.
    Revoked,
}

/// An API key as stored (no plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub hash: ApiKeyHash,
    /// Function patterns it may invoke ([`grants`]); `*` grants all.
    pub functions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a rotation replaced this key.
    pub rotated_at: Option<DateTime<Utc>>,
    /// The key this one replaced, when it was issued by a rotation.
    pub rotated_from_id: Option<Uuid>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// The key's status at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> ApiKeyStatus {
        if self.revoked_at.is_some() {
            ApiKeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| now >= at) {
            ApiKeyStatus::Expired
        } else {
            ApiKeyStatus::Active
        }
    }
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

/// The result of [`rotate`]: the new key (plaintext shown once) and when the old one stops.
#[derive(Debug)]
pub struct RotatedApiKey {
    pub created: CreatedApiKey,
    /// The old key's expiry now: the end of the grace period, or its earlier expiry.
    pub previous_key_expires_at: DateTime<Utc>,
}

/// Check a key's function patterns and drop repeats (keeping the caller's order). Exact names
/// must name one of the tenant's functions; `*` and globs may match none yet.
fn check_grants(grants: &[String], known: &[String]) -> Result<Vec<String>, AppError> {
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
    let shown = |grant: &str| grant.chars().take(64).collect::<String>();
    let mut granted: Vec<String> = Vec::with_capacity(grants.len());
    for grant in grants {
        grants::check_pattern(grant).map_err(|error| {
            AppError::invalid(
                "functions",
                format!(
                    "`{}` is not a function pattern: {error}",
                    shown(grant).escape_debug()
                ),
            )
        })?;
        if !grants::is_wildcard(grant) && !known.contains(grant) {
            return Err(AppError::invalid(
                "functions",
                format!(
                    "unknown function `{}` (not defined in this environment's tenant)",
                    shown(grant)
                ),
            ));
        }
        if !granted.contains(grant) {
            granted.push(grant.clone());
        }
    }
    Ok(granted)
}

/// An expiry given by a caller: in the future, at the precision the database stores.
fn check_expiry(
    field: &'static str,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, AppError> {
    match expires_at {
        Some(at) if at <= now => Err(AppError::invalid(field, "must be in the future")),
        Some(at) => Ok(Some(at.trunc_subsecs(6))),
        None => Ok(None),
    }
}

/// Create a key for an environment that may invoke `grants` (function patterns, see
/// [`grants`]), optionally expiring at `expires_at` (which must be in the future). Key names
/// are unique among the environment's current keys.
pub async fn create(
    db: &DatabaseConnection,
    actor: Actor,
    environment_id: Uuid,
    name: &str,
    grants: &[String],
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedApiKey, AppError> {
    names::check_api_key_name("name", name)?;
    let created_at = now();
    let expires_at = check_expiry("expiresAt", expires_at, created_at)?;

    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, environment_id).await?;
    let known = functions::names_of_tenant(&txn, environment.tenant_id).await?;
    let granted = check_grants(grants, &known)?;
    let taken = api_key_entity::Entity::find()
        .filter(api_key_entity::Column::EnvironmentId.eq(environment_id))
        .filter(api_key_entity::Column::Name.eq(name))
        .filter(api_key_entity::Column::RotatedAt.is_null())
        .filter(api_key_entity::Column::RevokedAt.is_null())
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "API key",
            name: name.to_string(),
        });
    }

    let (model, plaintext) = insert_key(
        &txn,
        NewKey {
            environment_id,
            name,
            functions: &granted,
            created_at,
            expires_at,
            rotated_from_id: None,
        },
    )
    .await?;
    // Names and grants only: never the key, its prefix or its hash.
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::API_KEY_CREATE, targets::API_KEY)
            .tenant(environment.tenant_id)
            .environment(environment_id)
            .target(model.id, model.name.clone())
            .detail(serde_json::json!({ "functions": granted, "expiresAt": expires_at })),
    )
    .await?;
    txn.commit().await?;
    Ok(CreatedApiKey {
        api_key: from_model(model)?,
        plaintext,
    })
}

/// What [`insert_key`] stores.
struct NewKey<'a> {
    environment_id: Uuid,
    name: &'a str,
    functions: &'a [String],
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    rotated_from_id: Option<Uuid>,
}

/// Generate a secret and insert its row; the plaintext is returned, never stored.
async fn insert_key(
    txn: &impl ConnectionTrait,
    key: NewKey<'_>,
) -> Result<(api_key_entity::Model, String), AppError> {
    let generated = api_key::generate();
    let model = api_key_entity::ActiveModel {
        id: Set(Uuid::new_v4()),
        environment_id: Set(key.environment_id),
        name: Set(key.name.to_string()),
        prefix: Set(generated.prefix.clone()),
        key_hash: Set(generated.hash.to_hex()),
        functions: Set(serde_json::to_string(key.functions).map_err(AppError::internal)?),
        created_at: Set(key.created_at),
        expires_at: Set(key.expires_at),
        revoked_at: Set(None),
        rotated_at: Set(None),
        rotated_from_id: Set(key.rotated_from_id),
        last_used_at: Set(None),
    }
    .insert(txn)
    .await
    .map_err(|e| insert_error(e, "API key", key.name))?;
    Ok((model, generated.plaintext))
}

/// Issue a new secret for key `id`: same environment, name and functions; the old secret keeps
/// working for `grace_seconds` more (0: it stops now; at most [`MAX_GRACE_SECONDS`]), or
/// until its own earlier expiry. The new key expires at `expires_at` if given (in the
/// future), else never. Only a current key can be rotated: not a revoked one, and not one
/// already rotated (rotate its successor instead).
pub async fn rotate(
    db: &DatabaseConnection,
    actor: Actor,
    id: Uuid,
    grace_seconds: i64,
    expires_at: Option<DateTime<Utc>>,
) -> Result<RotatedApiKey, AppError> {
    if !(0..=MAX_GRACE_SECONDS).contains(&grace_seconds) {
        return Err(AppError::invalid(
            "gracePeriodSeconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS} (30 days)"),
        ));
    }
    let rotated_at = now();
    let expires_at = check_expiry("expiresAt", expires_at, rotated_at)?;

    let txn = begin_write(db).await?;
    let old = find(&txn, id).await?;
    let environment = lock_environment(&txn, old.environment_id).await?;
    // Read again under the environment's lock: a concurrent rotate or revoke is done by now.
    let old = find(&txn, id).await?;
    if old.revoked_at.is_some() {
        return Err(AppError::invalid("id", "the API key is revoked"));
    }
    if old.rotated_at.is_some() {
        let successor = api_key_entity::Entity::find()
            .filter(api_key_entity::Column::RotatedFromId.eq(id))
            .one(&txn)
            .await?;
        return Err(AppError::invalid(
            "id",
            match successor {
                Some(successor) => format!(
                    "the API key was already rotated; rotate its successor `{}`",
                    successor.id
                ),
                None => "the API key was already rotated".to_string(),
            },
        ));
    }
    let grace_end = rotated_at + chrono::Duration::seconds(grace_seconds);
    let previous_key_expires_at = old.expires_at.map_or(grace_end, |at| at.min(grace_end));
    let functions: Vec<String> = parse_functions(&old)?;

    // The old row leaves the set of current names first, so the new row may take the name.
    let mut retired: api_key_entity::ActiveModel = old.clone().into();
    retired.rotated_at = Set(Some(rotated_at));
    retired.expires_at = Set(Some(previous_key_expires_at));
    retired.update(&txn).await?;
    let (model, plaintext) = insert_key(
        &txn,
        NewKey {
            environment_id: old.environment_id,
            name: &old.name,
            functions: &functions,
            created_at: rotated_at,
            expires_at,
            rotated_from_id: Some(old.id),
        },
    )
    .await?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::API_KEY_ROTATE, targets::API_KEY)
            .tenant(environment.tenant_id)
            .environment(old.environment_id)
            .target(model.id, model.name.clone())
            .detail(serde_json::json!({
                "rotatedFromId": old.id,
                "gracePeriodSeconds": grace_seconds,
                "previousKeyExpiresAt": previous_key_expires_at,
                "expiresAt": expires_at,
            })),
    )
    .await?;
    txn.commit().await?;
    Ok(RotatedApiKey {
        created: CreatedApiKey {
            api_key: from_model(model)?,
            plaintext,
        },
        previous_key_expires_at,
    })
}

/// Revoke key `id`: it stops working in every data plane once its environment is
/// republished. Revoking a revoked key writes nothing and returns it unchanged.
pub async fn revoke(db: &DatabaseConnection, actor: Actor, id: Uuid) -> Result<ApiKey, AppError> {
    let txn = begin_write(db).await?;
    let key = find(&txn, id).await?;
    let environment = lock_environment(&txn, key.environment_id).await?;
    let key = find(&txn, id).await?;
    if key.revoked_at.is_some() {
        return from_model(key);
    }
    let mut revoked: api_key_entity::ActiveModel = key.into();
    revoked.revoked_at = Set(Some(now()));
    let model = revoked.update(&txn).await?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::API_KEY_REVOKE, targets::API_KEY)
            .tenant(environment.tenant_id)
            .environment(model.environment_id)
            .target(model.id, model.name.clone()),
    )
    .await?;
    txn.commit().await?;
    from_model(model)
}

/// Move `last_used_at` forward to each reported use (never backward: reports from several
/// data planes arrive in any order). Unknown key ids are ignored. Returns the rows changed.
pub async fn record_uses(db: &DatabaseConnection, uses: &[KeyUse]) -> Result<u64, AppError> {
    if uses.is_empty() {
        return Ok(0);
    }
    let txn = begin_write(db).await?;
    let mut changed = 0;
    for key_use in uses {
        let at = key_use.last_used_at.trunc_subsecs(6);
        let result = api_key_entity::Entity::update_many()
            .col_expr(api_key_entity::Column::LastUsedAt, Expr::value(at))
            .filter(api_key_entity::Column::Id.eq(key_use.api_key_id))
            .filter(
                Condition::any()
                    .add(api_key_entity::Column::LastUsedAt.is_null())
                    .add(api_key_entity::Column::LastUsedAt.lt(at)),
            )
            .exec(&txn)
            .await?;
        changed += result.rows_affected;
    }
    txn.commit().await?;
    Ok(changed)
}

/// The key with this id; `NOT_FOUND` if there is none.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<ApiKey, AppError> {
    from_model(find(db, id).await?)
}

async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<api_key_entity::Model, AppError> {
    api_key_entity::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("API key", id))
}

/// Keys of an environment (revoked, rotated and expired ones too), by name and then newest
/// first; `NOT_FOUND` if the environment is unknown.
pub async fn list(db: &DatabaseConnection, environment_id: Uuid) -> Result<Vec<ApiKey>, AppError> {
    environments::get(db, environment_id).await?;
    list_of_environment(db, environment_id).await
}

/// Keys of an environment, by name and then newest first, without checking the environment
/// exists.
pub async fn list_of_environment(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
) -> Result<Vec<ApiKey>, AppError> {
    api_key_entity::Entity::find()
        .filter(api_key_entity::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(api_key_entity::Column::Name)
        .order_by_desc(api_key_entity::Column::CreatedAt)
        .all(db)
        .await?
        .into_iter()
        .map(from_model)
        .collect()
}

/// The keys data planes must accept at `now`: not revoked, not expired.
pub async fn usable_of_environment(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<ApiKey>, AppError> {
    Ok(list_of_environment(db, environment_id)
        .await?
        .into_iter()
        .filter(|key| key.status(now) == ApiKeyStatus::Active)
        .collect())
}

fn parse_functions(model: &api_key_entity::Model) -> Result<Vec<String>, AppError> {
    serde_json::from_str(&model.functions).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "API key {} has a malformed stored function list: {e}",
            model.id
        ))
    })
}

fn from_model(model: api_key_entity::Model) -> Result<ApiKey, AppError> {
    let functions = parse_functions(&model)?;
    let hash = ApiKeyHash::from_hex(&model.key_hash).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "API key {} has a malformed stored hash: {e}",
            model.id
        ))
    })?;
    Ok(ApiKey {
        id: model.id,
        environment_id: model.environment_id,
        name: model.name,
        prefix: model.prefix,
        hash,
        functions,
        created_at: model.created_at,
        expires_at: model.expires_at,
        revoked_at: model.revoked_at,
        rotated_at: model.rotated_at,
        rotated_from_id: model.rotated_from_id,
        last_used_at: model.last_used_at,
    })
}
