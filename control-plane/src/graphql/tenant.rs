//! Tenants: queries, mutations and the `Tenant` type.

use async_graphql::{Context, InputObject, Object, Result, ID};
use chrono::{DateTime, Utc};

use super::environment::Environment;
use super::function::Function;
use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{caller, Can, Target};
use crate::authz::Permission;
use crate::domain::{environments, functions, tenants};
use crate::entity::tenant;
use crate::error::GraphqlResultExt;

/// A tenant: owns environments and functions.
pub struct Tenant(pub tenant::Model);

/// A tenant: owns environments and functions.
#[Object]
impl Tenant {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    /// Unique name: 1-64 ASCII letters, digits, `-` and `_`.
    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Environments of the tenant, by name.
    #[graphql(guard = "Can::see(Target::Tenant(\"id\", to_id(self.0.id)))")]
    async fn environments(&self, ctx: &Context<'_>) -> Result<Vec<Environment>> {
        let environments = environments::list_of_tenant(&state(ctx).db, self.0.id)
            .await
            .gql()?;
        super::environment::readable(ctx, environments)
    }

    /// Functions of the tenant, by name.
    #[graphql(
        guard = "Can::new(Permission::FunctionRead, Target::Tenant(\"id\", to_id(self.0.id)))"
    )]
    async fn functions(&self, ctx: &Context<'_>) -> Result<Vec<Function>> {
        let functions = functions::list_of_tenant(&state(ctx).db, self.0.id)
            .await
            .gql()?;
        Ok(functions.into_iter().map(Function).collect())
    }
}

/// Input of `createTenant`.
#[derive(InputObject)]
pub struct CreateTenantInput {
    /// 1-64 ASCII letters, digits, `-` and `_`; unique.
    pub name: String,
}

/// Tenant queries.
#[derive(Default)]
pub struct TenantQuery;

#[Object]
impl TenantQuery {
    /// Every tenant the caller holds a role in (every tenant for a platform role), by name.
    #[graphql(guard = "Can::authenticated()")]
    async fn tenants(&self, ctx: &Context<'_>) -> Result<Vec<Tenant>> {
        let caller = caller(ctx).gql()?;
        let visible = state(ctx).authz.visible_tenants(&caller.principal);
        let tenants = tenants::list(&state(ctx).db).await.gql()?;
        Ok(tenants
            .into_iter()
            .filter(|t| visible.as_ref().is_none_or(|v| v.contains(&t.id)))
            .map(Tenant)
            .collect())
    }

    /// One tenant. `NOT_FOUND` if the id is unknown.
    #[graphql(guard = "Can::see(Target::Tenant(\"id\", id.clone()))")]
    async fn tenant(&self, ctx: &Context<'_>, id: ID) -> Result<Tenant> {
        let id = parse_id("id", &id).gql()?;
        Ok(Tenant(tenants::get(&state(ctx).db, id).await.gql()?))
    }
}

/// Tenant mutations.
#[derive(Default)]
pub struct TenantMutation;

#[Object]
impl TenantMutation {
    /// Create a tenant.
    #[graphql(guard = "Can::new(Permission::TenantCreate, Target::Platform)")]
    async fn create_tenant(&self, ctx: &Context<'_>, input: CreateTenantInput) -> Result<Tenant> {
        // A tenant has no environments yet, so there is nothing to publish.
        let actor = actor(ctx).gql()?;
        Ok(Tenant(
            tenants::create(&state(ctx).db, actor, &input.name)
                .await
                .gql()?,
        ))
    }
}
