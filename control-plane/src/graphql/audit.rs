//! The audit log: the `auditLog` query and the `Actor` type (also used by secret versions).

use async_graphql::{Context, Enum, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::audit::{self, AuditFilter};
use crate::error::GraphqlResultExt;

/// Kind of actor.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ActorType {
    /// An admin request authenticated by an admin token.
    AdminToken,
    /// Someone using a provisioning link.
    ProvisioningLink,
    /// A data plane (uses of secrets).
    DataPlane,
    /// A person signed in with OpenID Connect.
    User,
}

/// Who did something: an admin token, a provisioning link, a user (by id) or a data plane.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Actor")]
pub struct ActorObject {
    #[graphql(name = "type")]
    pub actor_type: ActorType,
    /// The admin token, provisioning link or user id; null for a data plane.
    pub id: Option<ID>,
}

impl From<audit::Actor> for ActorObject {
    fn from(actor: audit::Actor) -> Self {
        let actor_type = match actor.actor_type() {
            audit::ActorType::AdminToken => ActorType::AdminToken,
            audit::ActorType::ProvisioningLink => ActorType::ProvisioningLink,
            audit::ActorType::DataPlane => ActorType::DataPlane,
            audit::ActorType::User => ActorType::User,
        };
        Self {
            actor_type,
            id: actor.id().map(to_id),
        }
    }
}

/// One audit log entry: who did what, where, to what. Never a secret value.
pub struct AuditEntry(pub audit::AuditRecord);

/// One audit log entry: who did what, where, to what. Never a secret value.
#[Object]
impl AuditEntry {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }

    async fn actor(&self) -> ActorObject {
        self.0.actor.into()
    }

    /// Dotted action name: `tenant.create`, `environment.create`, `function.create`,
    /// `api_key.create`, `secret.set`, `secret.hosts`, `secret.rollback`, `secret.delete`,
    /// `secret.used`, `provisioning_link.create`, `provisioning_link.revoke`,
    /// `provisioning_link.use`, `oauth_client.create|update|delete`,
    /// `oauth_connection.create|start|delete|connected|broken`, ... (docs/VAULT.md lists
    /// them all).
    async fn action(&self) -> &str {
        &self.0.action
    }

    async fn tenant_id(&self) -> Option<ID> {
        self.0.tenant_id.map(to_id)
    }

    async fn environment_id(&self) -> Option<ID> {
        self.0.environment_id.map(to_id)
    }

    /// Kind of thing acted on: `tenant`, `environment`, `function`, `api_key`, `secret`,
    /// `provisioning_link`, `oauth_client`, `oauth_connection`, ...
    async fn target_type(&self) -> &str {
        &self.0.target_type
    }

    async fn target_id(&self) -> Option<ID> {
        self.0.target_id.map(to_id)
    }

    /// Name of the target when the entry was written (it may since have been deleted).
    async fn target_name(&self) -> Option<&str> {
        self.0.target_name.as_deref()
    }

    /// The gateway request id, for entries caused by an invocation.
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// Metadata as a JSON object (versions, host lists, names).
    async fn detail(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(self.0.detail.clone())
    }
}

/// Which entries `auditLog` returns; every field given must match.
#[derive(InputObject, Default)]
pub struct AuditLogFilter {
    pub tenant_id: Option<ID>,
    pub environment_id: Option<ID>,
    /// Exact action name, e.g. `secret.set`.
    pub action: Option<String>,
    pub target_id: Option<ID>,
}

impl AuditLogFilter {
    /// What the guard checks: the filter's environment, else its tenant, else the platform.
    pub fn target(filter: &Option<AuditLogFilter>) -> Target {
        Target::Filter {
            tenant: filter.as_ref().and_then(|f| f.tenant_id.clone()),
            environment: filter.as_ref().and_then(|f| f.environment_id.clone()),
        }
    }
}

/// A page of audit entries, newest first.
#[derive(SimpleObject)]
pub struct AuditLogPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Audit log queries.
#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Audit entries, newest first. `first`: 1-500 (default 50). `after`: the `nextCursor`
    /// of the previous page.
    #[graphql(guard = "Can::new(Permission::AuditRead, AuditLogFilter::target(&filter))")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        #[graphql(default_with = "Some(audit::DEFAULT_PAGE_SIZE)")] first: Option<i32>,
        after: Option<String>,
    ) -> Result<AuditLogPage> {
        let filter = filter.unwrap_or_default();
        let parse = |field, id: &Option<ID>| id.as_ref().map(|id| parse_id(field, id)).transpose();
        let filter = AuditFilter {
            tenant_id: parse("tenantId", &filter.tenant_id).gql()?,
            environment_id: parse("environmentId", &filter.environment_id).gql()?,
            action: filter.action,
            target_id: parse("targetId", &filter.target_id).gql()?,
        };
        // An explicit `null` (e.g. an unset variable) means the default too.
        let first = first.unwrap_or(audit::DEFAULT_PAGE_SIZE);
        let page = audit::list(&state(ctx).db, &filter, first, after.as_deref())
            .await
            .gql()?;
        Ok(AuditLogPage {
            entries: page.entries.into_iter().map(AuditEntry).collect(),
            next_cursor: page.next_cursor,
        })
    }
}
