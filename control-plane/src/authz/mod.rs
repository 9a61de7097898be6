//! Access control: casbin RBAC with domains.
//!
//! - The model (`model.conf`) asks: may subject `sub` do `act` on `obj` in tenant `ten` and
//!   environment `env`? Roles are granted in the domain `platform`, `tenant:<id>` (the tenant
//!   and all of its environments) or `env:<id>` (one environment).
//! - The role table (`policy.csv`) says what each role may do. It ships with the binary.
//! - Role assignments (who holds which role where) live in the database
//!   (`role_assignments`), are managed through GraphQL (`grantRole`, `revokeRole`) and are
//!   loaded into an immutable [`Policy`] that is swapped atomically on every change, and
//!   every [`RELOAD_INTERVAL`] so that changes made through another control plane replica
//!   arrive too.
//! - Every GraphQL resolver is guarded by [`guard::Can`], the one place permission is checked.
//!
//! A caller with no role in a tenant cannot tell the tenant's resources from ids that do not
//! exist: both answer `NOT_FOUND` with the same message. A caller who can see the tenant but
//! lacks the permission gets `FORBIDDEN`.

pub mod guard;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_graphql::Enum;
use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use sea_orm::{DatabaseConnection, EntityTrait};
use uuid::Uuid;

use crate::domain::audit::Actor;
use crate::entity::role_assignment;
use crate::error::AppError;

/// The casbin model.
pub const MODEL: &str = include_str!("model.conf");
/// The role table: `p, role, object, action` lines.
pub const ROLE_TABLE: &str = include_str!("policy.csv");
/// How often assignments are reloaded from the database, for changes made by other replicas.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A role. `superadmin` is granted on the platform; the others in a tenant or environment.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The platform operator: everything everywhere, including creating tenants.
    Superadmin,
    /// Everything in the tenant, including granting `owner`.
    Owner,
    /// Configuration and people (every role but `owner`).
    Admin,
    /// Functions, API keys, reading events.
    Developer,
    /// Sets and rotates secrets, connects OAuth accounts; reads their metadata only.
    Provisioner,
    /// Reads non-secret configuration.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 6] = [
        Role::Superadmin,
        Role::Owner,
        Role::Admin,
        Role::Developer,
        Role::Provisioner,
        Role::Viewer,
    ];

    /// Name in the role table and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Superadmin => "superadmin",
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Provisioner => "provisioner",
            Role::Viewer => "viewer",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// Someone roles can be granted to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A person who signs in with OpenID Connect (`user:<id>`).
    User(Uuid),
    /// An admin token that acts for itself, like the bootstrap token (`token:<id>`).
    Token(Uuid),
    /// An invitation (`email:<address>`): its roles move to the user who first signs in with
    /// this (verified) email address.
    Email(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(id) => write!(f, "user:{id}"),
            Principal::Token(id) => write!(f, "token:{id}"),
            Principal::Email(address) => write!(f, "email:{address}"),
        }
    }
}

impl Principal {
    /// Parse `user:<id>`, `token:<id>` or `email:<address>`; the address is lower-cased.
    pub fn parse(text: &str) -> Result<Principal, &'static str> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or("must be `user:<id>`, `token:<id>` or `email:<address>`")?;
        match kind {
            "user" => Uuid::parse_str(rest)
                .map(Principal::User)
                .map_err(|_| "has an invalid user id"),
            "token" => Uuid::parse_str(rest)
                .map(Principal::Token)
                .map_err(|_| "has an invalid token id"),
            "email" if is_plausible_email(rest) => Ok(Principal::Email(rest.to_ascii_lowercase())),
            "email" => Err("has an invalid email address"),
            _ => Err("must be `user:<id>`, `token:<id>` or `email:<address>`"),
        }
    }
}

/// `local@domain`, printable ASCII without spaces, commas or quotes (it ends up in a casbin
/// policy line), at most 254 characters.
fn is_plausible_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    address.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && address
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\'' | b'\\'))
}

/// The authenticated caller of one request: who acts (for the audit log) and whose roles
/// apply. The HTTP layer puts it into every GraphQL request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub principal: Principal,
}

/// What an operation does, as an (object, action) pair of the role table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    TenantCreate,
    TenantRead,
    EnvironmentRead,
    EnvironmentWrite,
    FunctionRead,
    FunctionWrite,
    SecretRead,
    SecretWrite,
    ApiKeyRead,
    ApiKeyWrite,
    EventRead,
    AuditRead,
    ProvisioningRead,
    ProvisioningWrite,
    RoleRead,
    RoleWrite,
    /// Listing OAuth clients and connections (never a token).
    OAuthRead,
    /// Creating, changing and deleting OAuth clients; deleting connections.
    OAuthWrite,
    /// Connecting an account: creating a connection, starting an authorization-code flow.
    OAuthConnect,
    /// Granting or revoking `owner`.
    OwnerRoleWrite,
}

impl Permission {
    /// (object, action) in the role table.
    pub fn object_action(self) -> (&'static str, &'static str) {
        match self {
            Permission::TenantCreate => ("tenant", "create"),
            Permission::TenantRead => ("tenant", "read"),
            Permission::EnvironmentRead => ("environment", "read"),
            Permission::EnvironmentWrite => ("environment", "write"),
            Permission::FunctionRead => ("function", "read"),
            Permission::FunctionWrite => ("function", "write"),
            Permission::SecretRead => ("secret", "read"),
            Permission::SecretWrite => ("secret", "write"),
            Permission::ApiKeyRead => ("api_key", "read"),
            Permission::ApiKeyWrite => ("api_key", "write"),
            Permission::EventRead => ("event", "read"),
            Permission::AuditRead => ("audit", "read"),
            Permission::ProvisioningRead => ("provisioning", "read"),
            Permission::ProvisioningWrite => ("provisioning", "write"),
            Permission::RoleRead => ("role", "read"),
            Permission::RoleWrite => ("role", "write"),
            Permission::OAuthRead => ("oauth", "read"),
            Permission::OAuthWrite => ("oauth", "write"),
            Permission::OAuthConnect => ("oauth", "connect"),
            Permission::OwnerRoleWrite => ("owner_role", "write"),
        }
    }
}

/// Where an operation applies: a tenant (and maybe one of its environments), or the whole
/// platform when both are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scope {
    pub tenant: Option<Uuid>,
    pub environment: Option<Uuid>,
}

impl Scope {
    pub const PLATFORM: Scope = Scope {
        tenant: None,
        environment: None,
    };

    pub fn tenant(tenant: Uuid) -> Scope {
        Scope {
            tenant: Some(tenant),
            environment: None,
        }
    }

    pub fn environment(tenant: Uuid, environment: Uuid) -> Scope {
        Scope {
            tenant: Some(tenant),
            environment: Some(environment),
        }
    }

    /// The casbin domain a role granted here is stored under.
    pub fn domain(self) -> String {
        match (self.tenant, self.environment) {
            (_, Some(environment)) => format!("env:{environment}"),
            (Some(tenant), None) => format!("tenant:{tenant}"),
            (None, None) => "platform".to_string(),
        }
    }
}

/// Role assignments as loaded at one moment, with the enforcer built from them.
struct Policy {
    enforcer: Enforcer,
    /// Tenants each principal holds any role in (in the tenant or one of its environments).
    tenants: HashMap<String, HashSet<Uuid>>,
    /// Principals holding a platform role.
    platform: HashSet<String>,
}

/// The access-control decisions of this control plane. Cheap to clone.
#[derive(Clone)]
pub struct Authz {
    db: DatabaseConnection,
    policy: Arc<ArcSwap<Policy>>,
    /// Serializes reloads, so that a slow reload cannot replace a newer one.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl Authz {
    /// Load the role assignments from `db`.
    pub async fn load(db: DatabaseConnection) -> Result<Authz, AppError> {
        let policy = build_policy(&db).await?;
        Ok(Authz {
            db,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            reloading: Arc::default(),
        })
    }

    /// Reload the role assignments from the database (after a change).
    pub async fn reload(&self) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        let policy = build_policy(&self.db).await?;
        self.policy.store(Arc::new(policy));
        Ok(())
    }

    /// Reload every [`RELOAD_INTERVAL`] until the process ends, picking up changes made by
    /// other control plane replicas.
    pub fn spawn_periodic_reload(&self) -> tokio::task::JoinHandle<()> {
        let authz = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(error) = authz.reload().await {
                    tracing::warn!(error = error.detail(), "reloading role assignments failed");
                }
            }
        })
    }

    /// Whether `principal` may do `permission` in `scope`.
    pub fn allows(&self, principal: &Principal, scope: Scope, permission: Permission) -> bool {
        let (object, action) = permission.object_action();
        let tenant = scope
            .tenant
            .map_or("-".to_string(), |t| format!("tenant:{t}"));
        let environment = scope
            .environment
            .map_or("-".to_string(), |e| format!("env:{e}"));
        let policy = self.policy.load();
        match policy
            .enforcer
            .enforce((principal.to_string(), tenant, environment, object, action))
        {
            Ok(allowed) => allowed,
            Err(error) => {
                tracing::error!(%error, "casbin enforce failed; denying");
                false
            }
        }
    }

    /// Whether `principal` holds any role in `tenant` (or on the platform): whether the
    /// tenant's resources exist as far as it can tell.
    pub fn sees_tenant(&self, principal: &Principal, tenant: Uuid) -> bool {
        let policy = self.policy.load();
        let principal = principal.to_string();
        policy.platform.contains(&principal)
            || policy
                .tenants
                .get(&principal)
                .is_some_and(|tenants| tenants.contains(&tenant))
    }

    /// The tenants `principal` can see; `None` when it holds a platform role (all of them).
    pub fn visible_tenants(&self, principal: &Principal) -> Option<HashSet<Uuid>> {
        let policy = self.policy.load();
        let principal = principal.to_string();
        if policy.platform.contains(&principal) {
            return None;
        }
        Some(policy.tenants.get(&principal).cloned().unwrap_or_default())
    }
}

async fn build_policy(db: &DatabaseConnection) -> Result<Policy, AppError> {
    let assignments = role_assignment::Entity::find().all(db).await?;
    let mut lines: Vec<String> = ROLE_TABLE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut tenants: HashMap<String, HashSet<Uuid>> = HashMap::new();
    let mut platform = HashSet::new();
    for assignment in &assignments {
        lines.push(format!(
            "g, {}, {}, {}",
            assignment.principal, assignment.role, assignment.domain
        ));
        match assignment.tenant_id {
            Some(tenant) => {
                tenants
                    .entry(assignment.principal.clone())
                    .or_default()
                    .insert(tenant);
            }
            None => {
                platform.insert(assignment.principal.clone());
            }
        }
    }
    let model = DefaultModel::from_str(MODEL)
        .await
        .map_err(|e| AppError::internal(anyhow::anyhow!("casbin model: {e}")))?;
    let enforcer = Enforcer::new(model, StringAdapter::new(lines.join("\n")))
        .await
        .map_err(|e| AppError::internal(anyhow::anyhow!("casbin policy: {e}")))?;
    Ok(Policy {
        enforcer,
        tenants,
        platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_and_reject_junk() {
        let id = Uuid::new_v4();
        for principal in [
            Principal::User(id),
            Principal::Token(id),
            Principal::Email("ops@example.com".into()),
        ] {
            assert_eq!(Principal::parse(&principal.to_string()), Ok(principal));
        }
        assert_eq!(
            Principal::parse("email:Ops@Example.COM"),
            Ok(Principal::Email("ops@example.com".into()))
        );
        for junk in [
            "",
            "alice",
            "user:",
            "user:not-a-uuid",
            "group:x",
            "email:nobody",
            "email:a@b",
            "email:a,b@example.com",
            "email:a b@example.com",
        ] {
            assert!(Principal::parse(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn every_role_in_the_table_is_a_role() {
        for line in ROLE_TABLE.lines().filter(|l| l.starts_with("p,")) {
            let role = line.split(',').nth(1).unwrap().trim();
            assert!(Role::parse(role).is_some(), "{role}");
        }
    }
}
