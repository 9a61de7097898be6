//! Admin tokens: bearer tokens for the GraphQL API.
//!
//! A token is `atk_` followed by 32 random bytes in URL-safe base64. Only its SHA-256 is
//! stored; like API keys, a fast hash is right for a high-entropy random token.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::{begin_write, names, now, roles, tokens};
use crate::authz::{Caller, Principal};
use crate::entity::admin_token;
use crate::error::AppError;

/// Marker every admin token starts with (helps secret scanners recognise leaked tokens).
pub const TOKEN_MARKER: &str = "atk_";
/// Name of the token created on first start.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// A freshly created token. The plaintext exists only in this value; `Debug` hides it.
pub struct NewAdminToken {
    pub id: Uuid,
    pub plaintext: String,
}

impl std::fmt::Debug for NewAdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAdminToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a presented token: what the database holds.
pub fn token_hash(token: &str) -> String {
    tokens::sha256_hex(token)
}

fn generate_plaintext() -> String {
    format!("{TOKEN_MARKER}{}", tokens::random_token())
}

/// Whether `text` has the shape of an admin token.
pub fn is_well_formed(text: &str) -> bool {
    text.strip_prefix(TOKEN_MARKER).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Create a named admin token. With `acts_for` it authenticates as that principal (a user's
/// personal token, or a token of the bootstrap token); without, it is a principal of its own
/// (`token:<id>`) that holds no role until one is granted to it.
pub async fn create(
    db: &DatabaseConnection,
    actor: Actor,
    name: &str,
    acts_for: Option<&Principal>,
) -> Result<(admin_token::Model, NewAdminToken), AppError> {
    names::check_resource_name("name", name)?;
    insert(db, Some(actor), name, generate_plaintext(), acts_for, false).await
}

/// `actor: None`: the token records itself as its creator (the bootstrap token).
async fn insert(
    db: &DatabaseConnection,
    actor: Option<Actor>,
    name: &str,
    plaintext: String,
    acts_for: Option<&Principal>,
    superadmin: bool,
) -> Result<(admin_token::Model, NewAdminToken), AppError> {
    let txn = begin_write(db).await?;
    let taken = admin_token::Entity::find()
        .filter(admin_token::Column::Name.eq(name))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "admin token",
            name: name.to_string(),
        });
    }
    let id = Uuid::new_v4();
    let model = admin_token::ActiveModel {
        id: Set(id),
        name: Set(name.to_string()),
        token_hash: Set(token_hash(&plaintext)),
        created_at: Set(now()),
        principal: Set(acts_for.map(ToString::to_string)),
        revoked_at: Set(None),
        last_used_at: Set(None),
    }
    .insert(&txn)
    .await
    .map_err(|e| super::insert_error(e, "admin token", name))?;
    if superadmin {
        roles::grant_superadmin_in(&txn, id).await?;
    }
    let actor = actor.unwrap_or(Actor::AdminToken(id));
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::ADMIN_TOKEN_CREATE, targets::ADMIN_TOKEN)
            .target(id, name.to_string())
            .detail(json!({ "actsFor": model.principal })),
    )
    .await?;
    txn.commit().await?;
    Ok((model, NewAdminToken { id, plaintext }))
}

/// On first start (no admin token at all), create the bootstrap token, a `superadmin`, and
/// return it; `None` when a token already exists. Two replicas starting together cannot both
/// create one: the name is unique, and the loser gets `None`.
///
/// `adopt` is the token already in the data dir's token file, if any: a fresh database adopts
/// it instead of minting a new one, so that pointing a second database at the same data dir
/// never replaces (and so locks out) the token another database still knows.
pub async fn ensure_bootstrap(
    db: &DatabaseConnection,
    adopt: Option<&str>,
) -> Result<Option<NewAdminToken>, AppError> {
    if admin_token::Entity::find().count(db).await? > 0 {
        return Ok(None);
    }
    let plaintext = match adopt {
        Some(token) if is_well_formed(token) => token.to_string(),
        _ => generate_plaintext(),
    };
    match insert(db, None, BOOTSTRAP_NAME, plaintext, None, true).await {
        Ok((_, token)) => Ok(Some(token)),
        Err(AppError::AlreadyExists { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// How often `last_used_at` is written for a token in steady use.
const LAST_USED_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The caller `token` authenticates: the token's id and the principal it acts for. `None`
/// for anything that is not a live (unrevoked) admin token.
pub async fn authenticate(
    db: &DatabaseConnection,
    token: &str,
) -> Result<Option<Caller>, AppError> {
    if !token.starts_with(TOKEN_MARKER) {
        return Ok(None);
    }
    let Some(model) = admin_token::Entity::find()
        .filter(admin_token::Column::TokenHash.eq(token_hash(token)))
        .filter(admin_token::Column::RevokedAt.is_null())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let now = now();
    if model
        .last_used_at
        .is_none_or(|used| now - used >= LAST_USED_RESOLUTION)
    {
        admin_token::Entity::update_many()
            .col_expr(admin_token::Column::LastUsedAt, Expr::value(now))
            .filter(admin_token::Column::Id.eq(model.id))
            .exec(db)
            .await?;
    }
    Ok(Some(caller_of(&model)))
}

/// The caller a token authenticates as.
pub fn caller_of(model: &admin_token::Model) -> Caller {
    let principal = model
        .principal
        .as_deref()
        .and_then(|p| Principal::parse(p).ok())
        .unwrap_or(Principal::Token(model.id));
    Caller {
        actor: Actor::AdminToken(model.id),
        principal,
    }
}

/// Tokens that act as `principal` (and the token that is `principal` itself), by name; every
/// token when `all`.
pub async fn list(
    db: &DatabaseConnection,
    principal: &Principal,
    all: bool,
) -> Result<Vec<admin_token::Model>, AppError> {
    let mut query = admin_token::Entity::find().order_by_asc(admin_token::Column::Name);
    if !all {
        query = query.filter(owned_by(principal));
    }
    Ok(query.all(db).await?)
}

fn owned_by(principal: &Principal) -> Condition {
    let mut condition =
        Condition::any().add(admin_token::Column::Principal.eq(principal.to_string()));
    if let Principal::Token(id) = principal {
        condition = condition.add(admin_token::Column::Id.eq(*id));
    }
    condition
}

/// Revoke a token of `principal` (any token when `all`): it stops authenticating at once.
/// Revoking twice changes nothing. `NOT_FOUND` for a token that is not the caller's.
pub async fn revoke(
    db: &DatabaseConnection,
    actor: Actor,
    principal: &Principal,
    all: bool,
    id: Uuid,
) -> Result<admin_token::Model, AppError> {
    let txn = begin_write(db).await?;
    let mut query = admin_token::Entity::find_by_id(id);
    if !all {
        query = query.filter(owned_by(principal));
    }
    let model = query
        .one(&txn)
        .await?
        .ok_or_else(|| super::not_found("admin token", id))?;
    if model.revoked_at.is_some() {
        return Ok(model);
    }
    let mut active: admin_token::ActiveModel = model.into();
    active.revoked_at = Set(Some(now()));
    let model = active.update(&txn).await?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::ADMIN_TOKEN_REVOKE, targets::ADMIN_TOKEN)
            .target(model.id, model.name.clone()),
    )
    .await?;
    txn.commit().await?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_marked_random_and_hidden_from_debug() {
        let a = generate_plaintext();
        let b = generate_plaintext();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_MARKER));
        assert_eq!(a.len(), TOKEN_MARKER.len() + 43);
        let token = NewAdminToken {
            id: Uuid::nil(),
            plaintext: a.clone(),
        };
        assert!(!format!("{token:?}").contains(&a));
        assert_eq!(token_hash(&a).len(), 64);
        assert!(is_well_formed(&a));
        assert!(!is_well_formed("atk_short"));
        assert!(!is_well_formed(&format!("{a}\n")));
    }
}
