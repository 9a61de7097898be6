//! The audit log: every mutation and every use of a secret, append-only, never a value.
//!
//! Writers call [`record`] with the same connection as the change it describes, inside that
//! change's transaction: the entry commits with the change, and a change that fails (or is
//! rolled back) leaves no entry. Readers page through [`list`], newest first.
//!
//! ```ignore
//! audit::record(&txn, AuditEntry::new(actor, actions::SECRET_SET, targets::SECRET)
//!     .tenant(tenant_id)
//!     .environment(environment_id)
//!     .target(secret_id, "API_TOKEN")
//!     .detail(json!({ "version": 3 })))
//!     .await?;
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::Value;
use uuid::Uuid;

use crate::entity::audit_log;
use crate::error::AppError;

/// Page size when the caller does not ask for one.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: i32 = 500;
/// Longest action and target type name.
const MAX_NAME_LEN: usize = 64;
/// Longest target name and request id kept (longer ones are cut, never rejected: an audit
/// entry must not fail the change it records).
const MAX_TEXT_LEN: usize = 256;

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// An admin (GraphQL) request, authenticated by this admin token.
    AdminToken(Uuid),
    /// Someone who opened this provisioning link.
    ProvisioningLink(Uuid),
    /// A data plane (reporting a use of a secret).
    DataPlane,
    /// A person signed in with OpenID Connect (console session or bearer JWT).
    User(Uuid),
}

/// The kind of an [`Actor`], as stored in `actor_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorType {
    AdminToken,
    ProvisioningLink,
    DataPlane,
    User,
}

impl ActorType {
    /// Stored name: `admin_token`, `provisioning_link`, `data_plane`, `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdminToken => "admin_token",
            Self::ProvisioningLink => "provisioning_link",
            Self::DataPlane => "data_plane",
            Self::User => "user",
        }
    }

    /// The type named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin_token" => Some(Self::AdminToken),
            "provisioning_link" => Some(Self::ProvisioningLink),
            "data_plane" => Some(Self::DataPlane),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

impl Actor {
    pub fn actor_type(&self) -> ActorType {
        match self {
            Self::AdminToken(_) => ActorType::AdminToken,
            Self::ProvisioningLink(_) => ActorType::ProvisioningLink,
            Self::DataPlane => ActorType::DataPlane,
            Self::User(_) => ActorType::User,
        }
    }

    /// The admin token, link or user id; `None` for a data plane.
    pub fn id(&self) -> Option<Uuid> {
        match self {
            Self::AdminToken(id) | Self::ProvisioningLink(id) | Self::User(id) => Some(*id),
            Self::DataPlane => None,
        }
    }

    /// Rebuild an actor from its stored columns; `None` if they do not describe one.
    pub fn from_stored(actor_type: &str, actor_id: Option<Uuid>) -> Option<Self> {
        match (ActorType::parse(actor_type)?, actor_id) {
            (ActorType::AdminToken, Some(id)) => Some(Self::AdminToken(id)),
            (ActorType::ProvisioningLink, Some(id)) => Some(Self::ProvisioningLink(id)),
            (ActorType::DataPlane, _) => Some(Self::DataPlane),
            (ActorType::User, Some(id)) => Some(Self::User(id)),
            _ => None,
        }
    }
}

/// Action names written by the control plane. Other writers (the events consumer) use the
/// same dotted style (`secret.used`).
pub mod actions {
    pub const TENANT_CREATE: &str = "tenant.create";
    pub const ENVIRONMENT_CREATE: &str = "environment.create";
    pub const FUNCTION_CREATE: &str = "function.create";
    pub const API_KEY_CREATE: &str = "api_key.create";
    pub const API_KEY_ROTATE: &str = "api_key.rotate";
    pub const API_KEY_REVOKE: &str = "api_key.revoke";
    pub const SECRET_SET: &str = "secret.set";
    pub const SECRET_HOSTS: &str = "secret.hosts";
    pub const SECRET_ROLLBACK: &str = "secret.rollback";
    pub const SECRET_DELETE: &str = "secret.delete";
    pub const SECRET_USED: &str = "secret.used";
    pub const PROVISIONING_LINK_CREATE: &str = "provisioning_link.create";
    pub const PROVISIONING_LINK_REVOKE: &str = "provisioning_link.revoke";
    pub const PROVISIONING_LINK_USE: &str = "provisioning_link.use";
    pub const ROLE_GRANT: &str = "role.grant";
    pub const ROLE_REVOKE: &str = "role.revoke";
    /// An invitation (`email:<address>`) taken by the user who signed in with that address.
    pub const ROLE_CLAIM: &str = "role.claim";
    pub const USER_CREATE: &str = "user.create";
    pub const USER_SIGN_IN: &str = "user.sign_in";
    pub const ADMIN_TOKEN_CREATE: &str = "admin_token.create";
    pub const ADMIN_TOKEN_REVOKE: &str = "admin_token.revoke";
    pub const OAUTH_CLIENT_CREATE: &str = "oauth_client.create";
    pub const OAUTH_CLIENT_UPDATE: &str = "oauth_client.update";
    pub const OAUTH_CLIENT_DELETE: &str = "oauth_client.delete";
    pub const OAUTH_CONNECTION_CREATE: &str = "oauth_connection.create";
    /// An authorization-code flow started (`startOAuthConnection`).
    pub const OAUTH_CONNECTION_START: &str = "oauth_connection.start";
    pub const OAUTH_CONNECTION_DELETE: &str = "oauth_connection.delete";
    /// A broken client-credentials connection was reset (`resetOAuthConnection`).
    pub const OAUTH_CONNECTION_RESET: &str = "oauth_connection.reset";
    /// A data plane reported that a connection holds tokens (after being pending or broken).
    pub const OAUTH_CONNECTION_CONNECTED: &str = "oauth_connection.connected";
    /// A data plane reported that the provider refused a connection's grant.
    pub const OAUTH_CONNECTION_BROKEN: &str = "oauth_connection.broken";
}

/// Target type names.
pub mod targets {
    pub const TENANT: &str = "tenant";
    pub const ENVIRONMENT: &str = "environment";
    pub const FUNCTION: &str = "function";
    pub const API_KEY: &str = "api_key";
    pub const SECRET: &str = "secret";
    pub const PROVISIONING_LINK: &str = "provisioning_link";
    pub const ROLE_ASSIGNMENT: &str = "role_assignment";
    pub const ADMIN_TOKEN: &str = "admin_token";
    pub const USER: &str = "user";
    pub const OAUTH_CLIENT: &str = "oauth_client";
    pub const OAUTH_CONNECTION: &str = "oauth_connection";
}

/// One entry to record. Build it with [`AuditEntry::new`] and the setters, or as a literal.
/// `detail` must be a JSON object of metadata; it must never hold a secret value, an API key
/// or a token.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// When it happened (defaults to now). Stored at microsecond precision.
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// Dotted action name, see [`actions`].
    pub action: String,
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    /// Kind of thing acted on, see [`targets`].
    pub target_type: String,
    pub target_id: Option<Uuid>,
    pub target_name: Option<String>,
    /// The `x-airlock-request-id` of the request, when there is one.
    pub request_id: Option<String>,
    pub detail: Value,
}

impl AuditEntry {
    /// An entry happening now, with no scope, target or detail yet.
    pub fn new(actor: Actor, action: impl Into<String>, target_type: impl Into<String>) -> Self {
        Self {
            at: super::now(),
            actor,
            action: action.into(),
            tenant_id: None,
            environment_id: None,
            target_type: target_type.into(),
            target_id: None,
            target_name: None,
            request_id: None,
            detail: Value::Object(Default::default()),
        }
    }

    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    pub fn tenant(mut self, tenant_id: Uuid) -> Self {
        self.tenant_id = Some(tenant_id);
        self
    }

    pub fn environment(mut self, environment_id: Uuid) -> Self {
        self.environment_id = Some(environment_id);
        self
    }

    /// The thing acted on: its id and its name (as people know it).
    pub fn target(mut self, id: Uuid, name: impl Into<String>) -> Self {
        self.target_id = Some(id);
        self.target_name = Some(name.into());
        self
    }

    pub fn target_id(mut self, id: Uuid) -> Self {
        self.target_id = Some(id);
        self
    }

    pub fn target_name(mut self, name: impl Into<String>) -> Self {
        self.target_name = Some(name.into());
        self
    }

    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Metadata: a JSON object (versions, host lists, names). Never a value.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Append `entry` through `db`: pass the transaction of the change it describes, so that both
/// commit or neither does. A malformed entry (empty action, non-object detail) is a bug in
/// the caller and fails as an internal error.
pub async fn record(db: &impl ConnectionTrait, entry: AuditEntry) -> Result<(), AppError> {
    check_name("action", &entry.action)?;
    check_name("target type", &entry.target_type)?;
    if !entry.detail.is_object() {
        return Err(AppError::internal(anyhow::anyhow!(
            "audit detail for `{}` must be a JSON object",
            entry.action
        )));
    }
    let detail = serde_json::to_string(&entry.detail).map_err(AppError::internal)?;
    audit_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        at: Set(entry.at.trunc_subsecs(6)),
        actor_type: Set(entry.actor.actor_type().as_str().to_string()),
        actor_id: Set(entry.actor.id()),
        action: Set(entry.action),
        tenant_id: Set(entry.tenant_id),
        environment_id: Set(entry.environment_id),
        target_type: Set(entry.target_type),
        target_id: Set(entry.target_id),
        target_name: Set(entry.target_name.map(|n| truncate(n, MAX_TEXT_LEN))),
        request_id: Set(entry.request_id.map(|r| truncate(r, MAX_TEXT_LEN))),
        detail: Set(detail),
    }
    .insert(db)
    .await?;
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), AppError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(AppError::internal(anyhow::anyhow!(
            "audit {what} `{}` is not a lower-case dotted name",
            name.chars().take(MAX_NAME_LEN).collect::<String>()
        )))
    }
}

/// Cut `text` to at most `max` bytes on a character boundary, without NUL characters
/// (PostgreSQL refuses them in text columns, and an audit entry must not fail its change).
fn truncate(text: String, max: usize) -> String {
    let mut text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    };
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub action: String,
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    pub target_type: String,
    pub target_id: Option<Uuid>,
    pub target_name: Option<String>,
    pub request_id: Option<String>,
    pub detail: Value,
}

/// Which entries to list; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    pub action: Option<String>,
    pub target_id: Option<Uuid>,
}

/// One page of entries, newest first. `next_cursor` is set when more entries follow; pass
/// it as `after` to get them.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    pub next_cursor: Option<String>,
}

/// Entries matching `filter`, newest first (by `at`, then id), at most `first` (1 to
/// [`MAX_PAGE_SIZE`]), after the entry `after` names (a `next_cursor` of an earlier page).
pub async fn list(
    db: &impl ConnectionTrait,
    filter: &AuditFilter,
    first: i32,
    after: Option<&str>,
) -> Result<AuditPage, AppError> {
    if !(1..=MAX_PAGE_SIZE).contains(&first) {
        return Err(AppError::invalid(
            "first",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    let mut query = audit_log::Entity::find();
    if let Some(tenant_id) = filter.tenant_id {
        query = query.filter(audit_log::Column::TenantId.eq(tenant_id));
    }
    if let Some(environment_id) = filter.environment_id {
        query = query.filter(audit_log::Column::EnvironmentId.eq(environment_id));
    }
    if let Some(action) = &filter.action {
        query = query.filter(audit_log::Column::Action.eq(action.as_str()));
    }
    if let Some(target_id) = filter.target_id {
        query = query.filter(audit_log::Column::TargetId.eq(target_id));
    }
    if let Some(cursor) = after {
        let (at, id) = decode_cursor(cursor)?;
        query = query.filter(
            Condition::any().add(audit_log::Column::At.lt(at)).add(
                Condition::all()
                    .add(audit_log::Column::At.eq(at))
                    .add(audit_log::Column::Id.lt(id)),
            ),
        );
    }
    let limit = u64::try_from(first).map_err(AppError::internal)?;
    let mut models = query
        .order_by_desc(audit_log::Column::At)
        .order_by_desc(audit_log::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let more = models.len() as u64 > limit;
    models.truncate(limit as usize);
    let next_cursor = more
        .then(|| models.last().map(|last| encode_cursor(last.at, last.id)))
        .flatten();
    Ok(AuditPage {
        entries: models
            .into_iter()
            .map(from_model)
            .collect::<Result<_, _>>()?,
        next_cursor,
    })
}

/// Opaque cursor: base64url of `<at in µs since the epoch>:<id>`.
fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), AppError> {
    let bad = || AppError::invalid("after", "is not a cursor returned by auditLog");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (micros, id) = text.split_once(':').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((at, id))
}

fn from_model(model: audit_log::Model) -> Result<AuditRecord, AppError> {
    let actor = Actor::from_stored(&model.actor_type, model.actor_id).ok_or_else(|| {
        AppError::internal(anyhow::anyhow!(
            "audit entry {} has an unknown actor `{}`",
            model.id,
            model.actor_type
        ))
    })?;
    let detail = serde_json::from_str(&model.detail).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "audit entry {} has a malformed detail: {e}",
            model.id
        ))
    })?;
    Ok(AuditRecord {
        id: model.id,
        at: model.at,
        actor,
        action: model.action,
        tenant_id: model.tenant_id,
        environment_id: model.environment_id,
        target_type: model.target_type,
        target_id: model.target_id,
        target_name: model.target_name,
        request_id: model.request_id,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_round_trip_through_their_stored_form() {
        let id = Uuid::new_v4();
        for actor in [
            Actor::AdminToken(id),
            Actor::ProvisioningLink(id),
            Actor::DataPlane,
            Actor::User(id),
        ] {
            assert_eq!(
                Actor::from_stored(actor.actor_type().as_str(), actor.id()),
                Some(actor)
            );
        }
        assert_eq!(Actor::from_stored("admin_token", None), None);
        assert_eq!(Actor::from_stored("root", Some(id)), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_invalid_input() {
        let at = DateTime::from_timestamp_micros(1_775_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        for bad in [
            "",
            "!!!",
            "bm9wZQ",
            &URL_SAFE_NO_PAD.encode("12:not-a-uuid"),
        ] {
            match decode_cursor(bad) {
                Err(AppError::InvalidInput { field, .. }) => assert_eq!(field, "after"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn names_must_be_dotted_lower_case() {
        assert!(check_name("action", "secret.used").is_ok());
        assert!(check_name("action", "provisioning_link.create").is_ok());
        for bad in ["", "Secret.Set", "secret set", &"a".repeat(65)] {
            assert!(check_name("action", bad).is_err(), "{bad:?}");
        }
        assert_eq!(truncate("é".repeat(10), 5), "éé");
        assert_eq!(truncate("a\0b".into(), 10), "a\u{FFFD}b");
    }
}
