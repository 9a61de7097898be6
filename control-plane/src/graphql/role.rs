//! Role assignments: `grantRole`, `revokeRole`, `roleAssignments`. Each change reloads the
//! access-control policy before it returns, so it is in force for the next request.

use async_graphql::{Context, InputObject, Object, Result, ID};
use chrono::{DateTime, Utc};

use super::{actor, state, to_id};
use crate::authz::guard::{caller, Can, Target};
use crate::authz::{Permission, Principal, Role};
use crate::domain::roles;
use crate::entity::role_assignment;
use crate::error::{AppError, GraphqlResultExt};

/// A role held by a principal in a tenant, an environment, or (superadmin) the platform.
pub struct RoleAssignment(pub role_assignment::Model);

/// A role held by a principal in a tenant, an environment, or (superadmin) the platform.
#[Object]
impl RoleAssignment {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    /// `user:<id>`, `token:<id>` or `email:<address>` (an invitation).
    async fn principal(&self) -> &str {
        &self.0.principal
    }

    async fn role(&self) -> Result<Role> {
        Role::parse(&self.0.role)
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown role in database")))
            .gql()
    }

    /// `None` for a platform role.
    async fn tenant_id(&self) -> Option<ID> {
        self.0.tenant_id.map(to_id)
    }

    /// `None` for a role on the whole tenant (or the platform).
    async fn environment_id(&self) -> Option<ID> {
        self.0.environment_id.map(to_id)
    }

    /// The principal that granted it.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// Input of `grantRole`. The role applies to `environmentId` if given, else to the whole
/// `tenantId`; `superadmin` takes neither.
#[derive(InputObject)]
pub struct GrantRoleInput {
    /// `user:<id>`, `token:<id>` (a token that acts for itself) or `email:<address>`: an
    /// invitation, whose roles the user signing in with that verified email receives.
    pub principal: String,
    pub role: Role,
    pub tenant_id: Option<ID>,
    pub environment_id: Option<ID>,
}

impl GrantRoleInput {
    /// Granting `owner` (or `superadmin`) needs owner rights; other roles need `role:write`.
    fn permission(&self) -> Permission {
        match self.role {
            Role::Owner | Role::Superadmin => Permission::OwnerRoleWrite,
            _ => Permission::RoleWrite,
        }
    }

    fn target(&self) -> Target {
        Target::Filter {
            tenant: self.tenant_id.clone(),
            environment: self.environment_id.clone(),
        }
    }
}

/// Role queries.
#[derive(Default)]
pub struct RoleQuery;

#[Object]
impl RoleQuery {
    /// Assignments of an environment, of a tenant (including its environments'), or with
    /// neither, of the platform.
    #[graphql(
        guard = "Can::new(Permission::RoleRead, Target::Filter { tenant: tenant_id.clone(), environment: environment_id.clone() })"
    )]
    async fn role_assignments(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        environment_id: Option<ID>,
    ) -> Result<Vec<RoleAssignment>> {
        let state = state(ctx);
        let target = Target::Filter {
            tenant: tenant_id,
            environment: environment_id,
        };
        let scope = target.resolve(&state.db).await.gql()?;
        let assignments = roles::list(&state.db, scope).await.gql()?;
        Ok(assignments.into_iter().map(RoleAssignment).collect())
    }
}

/// Role mutations.
#[derive(Default)]
pub struct RoleMutation;

#[Object]
impl RoleMutation {
    /// Grant a role. `ALREADY_EXISTS` if the principal holds it there already; `NOT_FOUND`
    /// for an unknown user, token, tenant or environment. In force when this returns.
    #[graphql(guard = "Can::new(input.permission(), input.target())")]
    async fn grant_role(&self, ctx: &Context<'_>, input: GrantRoleInput) -> Result<RoleAssignment> {
        let state = state(ctx);
        let caller = caller(ctx).gql()?;
        let principal = Principal::parse(&input.principal)
            .map_err(|message| AppError::invalid("principal", message))
            .gql()?;
        let scope = input.target().resolve(&state.db).await.gql()?;
        if let Some(tenant) = &input.tenant_id {
            if scope.tenant.map(to_id).as_ref() != Some(tenant) {
                return Err(AppError::invalid(
                    "environmentId",
                    "is not an environment of tenantId",
                ))
                .gql()?;
            }
        }
        let assignment = roles::grant(
            &state.db,
            actor(ctx).gql()?,
            &caller.principal,
            &principal,
            input.role,
            scope,
        )
        .await
        .gql()?;
        state.authz.reload().await.gql()?;
        Ok(RoleAssignment(assignment))
    }

    /// Revoke a role assignment; returns it as it was. Revoking an `owner` needs owner
    /// rights; the last `superadmin` cannot be revoked. In force when this returns.
    #[graphql(
        guard = "Can::new(Permission::RoleWrite, Target::RoleAssignment(\"id\", id.clone()))"
    )]
    async fn revoke_role(&self, ctx: &Context<'_>, id: ID) -> Result<RoleAssignment> {
        let state = state(ctx);
        let caller = caller(ctx).gql()?;
        let target = Target::RoleAssignment("id", id.clone());
        let id = super::parse_id("id", &id).gql()?;
        let assignment = roles::get(&state.db, id).await.gql()?;
        if matches!(
            Role::parse(&assignment.role),
            Some(Role::Owner | Role::Superadmin)
        ) {
            Can::new(Permission::OwnerRoleWrite, target)
                .check_caller(&state.db, &state.authz, caller)
                .await
                .gql()?;
        }
        let assignment = roles::revoke(&state.db, actor(ctx).gql()?, id)
            .await
            .gql()?;
        state.authz.reload().await.gql()?;
        Ok(RoleAssignment(assignment))
    }
}
