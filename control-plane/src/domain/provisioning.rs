//! Provisioning links: self-service setting of secret values.
//!
//! An admin creates a link naming secrets of one environment (and, for each, the hosts it may
//! be sent to); the link goes to whoever holds the values (a customer's ops person). They open
//! it, type the values into a form, and submit once: every named secret gets a new sealed
//! version, in one transaction that also marks the link used. The admin never sees a value,
//! and the person with the values never needs an account.
//!
//! The link's token (`apl_` + 32 random bytes, base64url) is the only credential; only its
//! SHA-256 is stored. A link expires (60 s to 7 days after creation), can be revoked, and
//! works once: the claim is one `UPDATE ... WHERE used_at IS NULL AND revoked_at IS NULL AND
//! expires_at > now` whose row count decides, so two concurrent submissions cannot both win.

use airlock_shared::hosts::HostPattern;
use airlock_shared::seal::SealingKey;
use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::environments::{self, lock_environment};
use super::secrets::{self, Secret};
use super::{begin_write, names, not_found, now, tokens};
use crate::entity::{provisioning_link, secret};
use crate::error::AppError;

/// Marker every provisioning link token starts with.
pub const TOKEN_MARKER: &str = "apl_";
/// Path under which links are served: `<base URL>/provision/<token>`.
pub const PATH_PREFIX: &str = "/provision/";
/// Lifetime of a link when the caller does not choose one (one day).
pub const DEFAULT_EXPIRES_IN_SECONDS: i32 = 86_400;
/// Shortest lifetime (one minute).
pub const MIN_EXPIRES_IN_SECONDS: i32 = 60;
/// Longest lifetime (seven days).
pub const MAX_EXPIRES_IN_SECONDS: i32 = 604_800;
/// Most secrets one link may name.
pub const MAX_SECRETS_PER_LINK: usize = 32;

/// A secret a link asks for, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSecret {
    pub name: String,
    /// Hosts the secret gets when the link is used. Empty: keep the existing secret's hosts
    /// (allowed only for secrets that exist when the link is created).
    pub allowed_hosts: Vec<HostPattern>,
}

/// A link as stored (no token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningLink {
    pub id: Uuid,
    pub environment_id: Uuid,
    pub secrets: Vec<LinkSecret>,
    /// The admin token or user that created it (the audit entry says which).
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Whether a link can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    Active,
    Used,
    Revoked,
    Expired,
}

impl ProvisioningLink {
    /// The link's state at `at`. Used and revoked win over expired.
    pub fn status(&self, at: DateTime<Utc>) -> LinkStatus {
        if self.used_at.is_some() {
            LinkStatus::Used
        } else if self.revoked_at.is_some() {
            LinkStatus::Revoked
        } else if self.expires_at <= at {
            LinkStatus::Expired
        } else {
            LinkStatus::Active
        }
    }

    /// Names of the secrets it asks for, in order.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets.iter().map(|s| s.name.clone()).collect()
    }
}

/// A secret to ask for, as the admin gives it.
#[derive(Debug, Clone)]
pub struct NewLinkSecret {
    pub name: String,
    /// Required for a secret that does not exist yet; `None` keeps an existing secret's hosts.
    pub allowed_hosts: Option<Vec<String>>,
}

/// A link just created. The token exists only in this value; `Debug` hides it.
pub struct CreatedLink {
    pub link: ProvisioningLink,
    pub token: String,
}

impl std::fmt::Debug for CreatedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedLink")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a token: what the database holds.
pub fn token_hash(token: &str) -> String {
    tokens::sha256_hex(token)
}

fn generate_token() -> String {
    format!("{TOKEN_MARKER}{}", tokens::random_token())
}

/// The link's URL under `base_url` (`scheme://authority[/path]`, no trailing slash needed).
pub fn link_url(base_url: &str, token: &str) -> String {
    format!("{}{PATH_PREFIX}{token}", base_url.trim_end_matches('/'))
}

/// Create a link for `secrets` of an environment, expiring after `expires_in_seconds`
/// ([`MIN_EXPIRES_IN_SECONDS`] to [`MAX_EXPIRES_IN_SECONDS`]). `created_by` is the admin
/// token or signed-in user creating it.
pub async fn create(
    db: &DatabaseConnection,
    created_by: Actor,
    environment_id: Uuid,
    secrets: &[NewLinkSecret],
    expires_in_seconds: i32,
) -> Result<CreatedLink, AppError> {
    // Only GraphQL callers (tokens and users) create links; both have an id.
    let creator_id = created_by.id().ok_or(AppError::Unauthenticated)?;
    if !(MIN_EXPIRES_IN_SECONDS..=MAX_EXPIRES_IN_SECONDS).contains(&expires_in_seconds) {
        return Err(AppError::invalid(
            "expiresInSeconds",
            format!("must be between {MIN_EXPIRES_IN_SECONDS} and {MAX_EXPIRES_IN_SECONDS}"),
        ));
    }
    if secrets.is_empty() {
        return Err(AppError::invalid(
            "secrets",
            "must name at least one secret",
        ));
    }
    if secrets.len() > MAX_SECRETS_PER_LINK {
        return Err(AppError::invalid(
            "secrets",
            format!("at most {MAX_SECRETS_PER_LINK} secrets per link"),
        ));
    }
    let mut wanted: Vec<LinkSecret> = Vec::with_capacity(secrets.len());
    for entry in secrets {
        names::check_secret_name("secrets", &entry.name)?;
        if wanted.iter().any(|w| w.name == entry.name) {
            return Err(AppError::invalid(
                "secrets",
                format!("`{}` is listed twice", entry.name),
            ));
        }
        let allowed_hosts = match &entry.allowed_hosts {
            Some(hosts) => secrets::parse_allowed_hosts("allowedHosts", hosts).map_err(|e| {
                AppError::invalid("allowedHosts", format!("`{}`: {}", entry.name, message(e)))
            })?,
            None => Vec::new(),
        };
        wanted.push(LinkSecret {
            name: entry.name.clone(),
            allowed_hosts,
        });
    }

    let token = generate_token();
    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, environment_id).await?;
    for entry in wanted.iter().filter(|w| w.allowed_hosts.is_empty()) {
        let exists = secret::Entity::find()
            .filter(secret::Column::EnvironmentId.eq(environment_id))
            .filter(secret::Column::Name.eq(&entry.name))
            .one(&txn)
            .await?
            .is_some();
        if !exists {
            return Err(AppError::invalid(
                "allowedHosts",
                format!(
                    "`{}` does not exist yet: name the hosts it may be sent to (there is no allow-all)",
                    entry.name
                ),
            ));
        }
    }
    let at = now();
    let model = provisioning_link::ActiveModel {
        id: Set(Uuid::new_v4()),
        environment_id: Set(environment_id),
        secrets: Set(serde_json::to_string(&wanted).map_err(AppError::internal)?),
        token_hash: Set(token_hash(&token)),
        created_by: Set(creator_id),
        created_at: Set(at),
        expires_at: Set(at + Duration::seconds(i64::from(expires_in_seconds))),
        used_at: Set(None),
        revoked_at: Set(None),
    }
    .insert(&txn)
    .await?;
    let link = from_model(model)?;
    audit::record(
        &txn,
        AuditEntry::new(
            created_by,
            actions::PROVISIONING_LINK_CREATE,
            targets::PROVISIONING_LINK,
        )
        .tenant(environment.tenant_id)
        .environment(environment_id)
        .target_id(link.id)
        .detail(json!({ "secrets": link.secrets, "expiresAt": link.expires_at })),
    )
    .await?;
    txn.commit().await?;
    Ok(CreatedLink { link, token })
}

fn message(error: AppError) -> String {
    match error {
        AppError::InvalidInput { message, .. } => message,
        other => other.to_string(),
    }
}

/// Links of an environment, newest first; `NOT_FOUND` if the environment is unknown.
pub async fn list(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<Vec<ProvisioningLink>, AppError> {
    environments::get(db, environment_id).await?;
    provisioning_link::Entity::find()
        .filter(provisioning_link::Column::EnvironmentId.eq(environment_id))
        .order_by_desc(provisioning_link::Column::CreatedAt)
        .order_by_desc(provisioning_link::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(from_model)
        .collect()
}

/// Revoke a link so it can no longer be used. Revoking a revoked link changes nothing and
/// records nothing. `NOT_FOUND` if the id is unknown.
pub async fn revoke(
    db: &DatabaseConnection,
    actor: Actor,
    id: Uuid,
) -> Result<ProvisioningLink, AppError> {
    let txn = begin_write(db).await?;
    let found = provisioning_link::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("provisioning link", id))?;
    let environment = lock_environment(&txn, found.environment_id).await?;
    let current = provisioning_link::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("provisioning link", id))?;
    if current.revoked_at.is_some() {
        return from_model(current);
    }
    let mut active = current.into_active_model();
    active.revoked_at = Set(Some(now()));
    let link = from_model(active.update(&txn).await?)?;
    audit::record(
        &txn,
        AuditEntry::new(
            actor,
            actions::PROVISIONING_LINK_REVOKE,
            targets::PROVISIONING_LINK,
        )
        .tenant(environment.tenant_id)
        .environment(environment.id)
        .target_id(link.id)
        .detail(json!({ "secretNames": link.secret_names() })),
    )
    .await?;
    txn.commit().await?;
    Ok(link)
}

/// The link a presented token names, whatever its state; `None` for an unknown token.
pub async fn find_by_token(
    db: &DatabaseConnection,
    token: &str,
) -> Result<Option<ProvisioningLink>, AppError> {
    if !token.starts_with(TOKEN_MARKER) {
        return Ok(None);
    }
    provisioning_link::Entity::find()
        .filter(provisioning_link::Column::TokenHash.eq(token_hash(token)))
        .one(db)
        .await?
        .map(from_model)
        .transpose()
}

/// Why a submission was refused. Each variant is safe to describe to the submitter; none
/// says anything about the link beyond whether it can be used.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No link has this token.
    #[error("unknown link")]
    UnknownLink,
    /// The link was used, revoked or has expired.
    #[error("link no longer usable")]
    Gone,
    /// A named secret has no (or an empty) value. Nothing was written.
    #[error("missing values")]
    Incomplete { missing: Vec<String> },
    /// The form does not match the link (unknown or repeated field, value too large).
    #[error("{0}")]
    BadForm(String),
    /// A secret without hosts on the link no longer exists (deleted since the link was
    /// created), so there is nothing to bind it to. Nothing was written.
    #[error("the link no longer matches the environment")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] AppError),
}

impl From<sea_orm::DbErr> for RedeemError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::Internal(error.into())
    }
}

/// A successful submission.
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub link_id: Uuid,
    pub environment_id: Uuid,
    /// The secrets as now stored (metadata).
    pub secrets: Vec<Secret>,
}

/// Use a link: set every secret it names to the submitted value (form fields are secret
/// names), mark it used, record the audit entries, all in one transaction. Checks the link
/// before the form, so an unusable link reveals nothing about what it asked for.
pub async fn redeem(
    db: &DatabaseConnection,
    sealing_key: &SealingKey,
    token: &str,
    fields: &[(String, String)],
) -> Result<Redeemed, RedeemError> {
    let link = find_by_token(db, token)
        .await?
        .ok_or(RedeemError::UnknownLink)?;
    if link.status(now()) != LinkStatus::Active {
        return Err(RedeemError::Gone);
    }
    let values = match_form(&link, fields)?;

    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, link.environment_id)
        .await
        .map_err(|e| match e {
            AppError::NotFound { .. } => RedeemError::UnknownLink,
            other => other.into(),
        })?;
    // The claim: whichever submission updates the row first wins; the others see 0 rows.
    let at = now();
    let claimed = provisioning_link::Entity::update_many()
        .col_expr(provisioning_link::Column::UsedAt, Expr::value(Some(at)))
        .filter(provisioning_link::Column::Id.eq(link.id))
        .filter(provisioning_link::Column::UsedAt.is_null())
        .filter(provisioning_link::Column::RevokedAt.is_null())
        .filter(provisioning_link::Column::ExpiresAt.gt(at))
        .exec(&txn)
        .await?
        .rows_affected;
    if claimed != 1 {
        return Err(RedeemError::Gone);
    }

    let actor = Actor::ProvisioningLink(link.id);
    let mut stored = Vec::with_capacity(link.secrets.len());
    for (wanted, value) in link.secrets.iter().zip(values) {
        let hosts = (!wanted.allowed_hosts.is_empty()).then(|| wanted.allowed_hosts.clone());
        let secret = secrets::set_in(
            &txn,
            sealing_key,
            actor,
            &environment,
            &wanted.name,
            value,
            hosts,
        )
        .await
        .map_err(|e| match e {
            AppError::InvalidInput { .. } => RedeemError::Conflict,
            other => other.into(),
        })?;
        stored.push(secret);
    }
    audit::record(
        &txn,
        AuditEntry::new(
            actor,
            actions::PROVISIONING_LINK_USE,
            targets::PROVISIONING_LINK,
        )
        .tenant(environment.tenant_id)
        .environment(environment.id)
        .target_id(link.id)
        .detail(json!({
            "secrets": stored
                .iter()
                .map(|s| json!({ "name": s.name, "version": s.version }))
                .collect::<Vec<_>>(),
        })),
    )
    .await?;
    txn.commit().await?;
    Ok(Redeemed {
        link_id: link.id,
        environment_id: environment.id,
        secrets: stored,
    })
}

/// The submitted value of each secret of the link, in the link's order.
fn match_form<'a>(
    link: &ProvisioningLink,
    fields: &'a [(String, String)],
) -> Result<Vec<&'a str>, RedeemError> {
    for (index, (name, _)) in fields.iter().enumerate() {
        if !link.secrets.iter().any(|s| &s.name == name) {
            return Err(RedeemError::BadForm(
                "the form has a field this link does not ask for".into(),
            ));
        }
        if fields[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(RedeemError::BadForm(format!(
                "`{name}` was submitted more than once"
            )));
        }
    }
    let mut values = Vec::with_capacity(link.secrets.len());
    let mut missing = Vec::new();
    for wanted in &link.secrets {
        match fields.iter().find(|(name, _)| name == &wanted.name) {
            Some((_, value)) if !value.is_empty() => {
                if value.len() > secrets::MAX_VALUE_LEN {
                    return Err(RedeemError::BadForm(format!(
                        "the value of `{}` is larger than {} KiB",
                        wanted.name,
                        secrets::MAX_VALUE_LEN / 1024
                    )));
                }
                values.push(value.as_str());
            }
            _ => missing.push(wanted.name.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(RedeemError::Incomplete { missing });
    }
    Ok(values)
}

fn from_model(model: provisioning_link::Model) -> Result<ProvisioningLink, AppError> {
    let secrets: Vec<LinkSecret> = serde_json::from_str(&model.secrets).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "provisioning link {} has a malformed stored secret list: {e}",
            model.id
        ))
    })?;
    Ok(ProvisioningLink {
        id: model.id,
        environment_id: model.environment_id,
        secrets,
        created_by: model.created_by,
        created_at: model.created_at,
        expires_at: model.expires_at,
        used_at: model.used_at,
        revoked_at: model.revoked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(names: &[&str]) -> ProvisioningLink {
        let at = now();
        ProvisioningLink {
            id: Uuid::nil(),
            environment_id: Uuid::nil(),
            secrets: names
                .iter()
                .map(|n| LinkSecret {
                    name: n.to_string(),
                    allowed_hosts: Vec::new(),
                })
                .collect(),
            created_by: Uuid::nil(),
            created_at: at,
            expires_at: at + Duration::seconds(60),
            used_at: None,
            revoked_at: None,
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tokens_are_marked_random_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_MARKER));
        assert_eq!(a.len(), TOKEN_MARKER.len() + 43);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
        let created = CreatedLink {
            link: link(&["A"]),
            token: a.clone(),
        };
        assert!(!format!("{created:?}").contains(&a));
        assert_eq!(
            link_url("https://airlock.example.com/", &a),
            format!("https://airlock.example.com/provision/{a}")
        );
    }

    #[test]
    fn status_prefers_used_and_revoked_over_expired() {
        let mut l = link(&["A"]);
        let at = l.created_at;
        assert_eq!(l.status(at), LinkStatus::Active);
        assert_eq!(l.status(l.expires_at), LinkStatus::Expired);
        l.revoked_at = Some(at);
        assert_eq!(l.status(at), LinkStatus::Revoked);
        l.used_at = Some(at);
        assert_eq!(l.status(l.expires_at), LinkStatus::Used);
    }

    #[test]
    fn forms_must_match_the_link() {
        let l = link(&["A", "B"]);
        assert_eq!(
            match_form(&l, &fields(&[("B", "2"), ("A", "1")])).unwrap(),
            ["1", "2"]
        );
        match match_form(&l, &fields(&[("A", "1"), ("B", "")])) {
            Err(RedeemError::Incomplete { missing }) => assert_eq!(missing, ["B"]),
            other => panic!("{other:?}"),
        }
        match match_form(&l, &fields(&[("A", "1")])) {
            Err(RedeemError::Incomplete { missing }) => assert_eq!(missing, ["B"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            match_form(&l, &fields(&[("A", "1"), ("B", "2"), ("C", "3")])),
            Err(RedeemError::BadForm(_))
        ));
        assert!(matches!(
            match_form(&l, &fields(&[("A", "1"), ("A", "1"), ("B", "2")])),
            Err(RedeemError::BadForm(_))
        ));
        let big = "x".repeat(secrets::MAX_VALUE_LEN + 1);
        assert!(matches!(
            match_form(&l, &fields(&[("A", &big), ("B", "2")])),
            Err(RedeemError::BadForm(_))
        ));
    }
}
