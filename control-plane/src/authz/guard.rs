//! [`Can`]: the guard on every GraphQL resolver.
//!
//! ```ignore
//! #[graphql(guard = "Can::new(Permission::SecretWrite, Target::environment(&input.environment_id))")]
//! async fn set_secret(&self, ctx: &Context<'_>, input: SetSecretInput) -> Result<Secret> { .. }
//! ```
//!
//! The guard resolves the target to its tenant and environment (an unknown id is `NOT_FOUND`),
//! then asks [`Authz`]: a tenant the caller holds no role in answers exactly like an unknown
//! id, a missing permission is `FORBIDDEN`.

use async_graphql::{Context, Guard, ID};
use sea_orm::{DatabaseConnection, EntityTrait};
use uuid::Uuid;

use super::{Authz, Caller, Permission, Scope};
use crate::domain::not_found;
use crate::entity::{
    api_key, environment, oauth_client, oauth_connection, provisioning_link, role_assignment,
    secret, tenant,
};
use crate::error::{AppError, GraphqlResultExt};
use crate::graphql::{parse_id, state};

/// What an operation is about, named by the id arguments the client passed.
#[derive(Debug, Clone)]
pub enum Target {
    /// Nothing in particular (creating a tenant, listing one's own tokens).
    Platform,
    Tenant(&'static str, ID),
    Environment(&'static str, ID),
    Secret(&'static str, ID),
    ApiKey(&'static str, ID),
    ProvisioningLink(&'static str, ID),
    RoleAssignment(&'static str, ID),
    OAuthClient(&'static str, ID),
    OAuthConnection(&'static str, ID),
    /// A list filter: the environment if given, else the tenant, else the platform.
    Filter {
        tenant: Option<ID>,
        environment: Option<ID>,
    },
}

impl Target {
    pub fn tenant(id: &ID) -> Target {
        Target::Tenant("tenantId", id.clone())
    }

    pub fn environment(id: &ID) -> Target {
        Target::Environment("environmentId", id.clone())
    }

    pub fn secret(id: &ID) -> Target {
        Target::Secret("secretId", id.clone())
    }

    /// An OAuth client named by argument `field`.
    pub fn oauth_client(field: &'static str, id: &ID) -> Target {
        Target::OAuthClient(field, id.clone())
    }

    /// An OAuth connection named by argument `field`.
    pub fn oauth_connection(field: &'static str, id: &ID) -> Target {
        Target::OAuthConnection(field, id.clone())
    }

    /// Resolve to the tenant and environment the target belongs to; `NOT_FOUND` for an
    /// unknown id. (The guard has checked the caller may see it.)
    pub async fn resolve(&self, db: &DatabaseConnection) -> Result<Scope, AppError> {
        match self {
            Target::Platform => Ok(Scope::PLATFORM),
            Target::Tenant(field, id) => tenant_scope(db, parse_id(field, id)?).await,
            Target::Environment(field, id) => {
                environment_scope(db, parse_id(field, id)?, "environment").await
            }
            Target::Secret(field, id) => {
                let id = parse_id(field, id)?;
                let secret = secret::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| not_found("secret", id))?;
                environment_scope(db, secret.environment_id, "secret").await
            }
            Target::ApiKey(field, id) => {
                let id = parse_id(field, id)?;
                let key = api_key::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| not_found("API key", id))?;
                environment_scope(db, key.environment_id, "API key").await
            }
            Target::ProvisioningLink(field, id) => {
                let id = parse_id(field, id)?;
                let link = provisioning_link::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| not_found("provisioning link", id))?;
                environment_scope(db, link.environment_id, "provisioning link").await
            }
            Target::OAuthClient(field, id) => {
                let id = parse_id(field, id)?;
                let client = oauth_client::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| not_found("OAuth client", id))?;
                environment_scope(db, client.environment_id, "OAuth client").await
            }
            Target::OAuthConnection(field, id) => {
                let id = parse_id(field, id)?;
                let connection = oauth_connection::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| not_found("OAuth connection", id))?;
                environment_scope(db, connection.environment_id, "OAuth connection").await
            }
            Target::RoleAssignment(field, id) => {
                let id = parse_id(field, id)?;
                let assignment = role_assignment::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| not_found("role assignment", id))?;
                Ok(Scope {
                    tenant: assignment.tenant_id,
                    environment: assignment.environment_id,
                })
            }
            Target::Filter {
                tenant: _,
                environment: Some(environment),
            } => {
                environment_scope(db, parse_id("environmentId", environment)?, "environment").await
            }
            Target::Filter {
                tenant: Some(tenant),
                environment: None,
            } => tenant_scope(db, parse_id("tenantId", tenant)?).await,
            Target::Filter {
                tenant: None,
                environment: None,
            } => Ok(Scope::PLATFORM),
        }
    }

    /// The id and kind named in a `NOT_FOUND` for this target (the same error an unknown id
    /// gets).
    fn not_found(&self) -> AppError {
        let (kind, id) = match self {
            Target::Platform
            | Target::Filter {
                tenant: None,
                environment: None,
            } => return AppError::forbidden("this needs a platform role"),
            Target::Tenant(_, id) => ("tenant", id),
            Target::Environment(_, id)
            | Target::Filter {
                environment: Some(id),
                ..
            } => ("environment", id),
            Target::Filter {
                tenant: Some(id),
                environment: None,
            } => ("tenant", id),
            Target::Secret(_, id) => ("secret", id),
            Target::ApiKey(_, id) => ("API key", id),
            Target::ProvisioningLink(_, id) => ("provisioning link", id),
            Target::RoleAssignment(_, id) => ("role assignment", id),
            Target::OAuthClient(_, id) => ("OAuth client", id),
            Target::OAuthConnection(_, id) => ("OAuth connection", id),
        };
        AppError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

/// A tenant's scope; `NOT_FOUND` for an unknown tenant.
async fn tenant_scope(db: &DatabaseConnection, tenant_id: Uuid) -> Result<Scope, AppError> {
    tenant::Entity::find_by_id(tenant_id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("tenant", tenant_id))?;
    Ok(Scope::tenant(tenant_id))
}

/// An environment's scope; `NOT_FOUND` names `kind` (the environment of a secret that
/// exists always exists: foreign keys cascade).
async fn environment_scope(
    db: &DatabaseConnection,
    environment_id: Uuid,
    kind: &'static str,
) -> Result<Scope, AppError> {
    let environment = environment::Entity::find_by_id(environment_id)
        .one(db)
        .await?
        .ok_or_else(|| not_found(kind, environment_id))?;
    Ok(Scope::environment(environment.tenant_id, environment.id))
}

/// The guard: the caller must be authenticated, the target must exist and be visible to it,
/// and (unless `permission` is `None`: visibility is enough) its roles must allow
/// `permission` there.
pub struct Can {
    permission: Option<Permission>,
    target: Target,
}

impl Can {
    /// Require `permission` on `target`.
    pub fn new(permission: Permission, target: Target) -> Can {
        Can {
            permission: Some(permission),
            target,
        }
    }

    /// Require only that the caller can see `target` (any role in its tenant); the resolver
    /// filters what it returns.
    pub fn see(target: Target) -> Can {
        Can {
            permission: None,
            target,
        }
    }

    /// Require only an authenticated caller (the resolver filters by the caller's grants).
    pub fn authenticated() -> Can {
        Can {
            permission: None,
            target: Target::Platform,
        }
    }

    /// The check, outside GraphQL.
    pub async fn check_caller(
        &self,
        db: &DatabaseConnection,
        authz: &Authz,
        caller: &Caller,
    ) -> Result<Scope, AppError> {
        let scope = self.target.resolve(db).await?;
        if let Some(tenant) = scope.tenant {
            if !authz.sees_tenant(&caller.principal, tenant) {
                return Err(self.target.not_found());
            }
        }
        match self.permission {
            None => Ok(scope),
            Some(permission) if authz.allows(&caller.principal, scope, permission) => Ok(scope),
            Some(_) => Err(AppError::forbidden(
                "your roles do not allow this operation here",
            )),
        }
    }
}

impl Guard for Can {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let caller = caller(ctx).gql()?;
        let state = state(ctx);
        self.check_caller(&state.db, &state.authz, caller)
            .await
            .gql()?;
        Ok(())
    }
}

/// The authenticated caller of this request.
pub fn caller<'a>(ctx: &Context<'a>) -> Result<&'a Caller, AppError> {
    ctx.data_opt::<Caller>().ok_or(AppError::Unauthenticated)
}
