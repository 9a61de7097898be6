//! Environments: queries, mutations and the `Environment` type.

use async_graphql::{Context, InputObject, Object, Result, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{caller, Can, Target};
use crate::authz::{Permission, Scope};
use crate::domain::environments;
use crate::entity::environment;
use crate::error::GraphqlResultExt;

/// An environment of a tenant; functions run in it, secrets and API keys belong to it.
pub struct Environment(pub environment::Model);

/// An environment of a tenant; functions run in it, secrets and API keys belong to it.
#[Object]
impl Environment {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn tenant_id(&self) -> ID {
        to_id(self.0.tenant_id)
    }

    /// Unique within the tenant: 1-64 ASCII letters, digits, `-` and `_`.
    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// Input of `createEnvironment`.
#[derive(InputObject)]
pub struct CreateEnvironmentInput {
    pub tenant_id: ID,
    /// 1-64 ASCII letters, digits, `-` and `_`; unique within the tenant.
    pub name: String,
}

/// Environment queries.
#[derive(Default)]
pub struct EnvironmentQuery;

#[Object]
impl EnvironmentQuery {
    /// Environments of a tenant the caller may read, by name. `NOT_FOUND` if the tenant is
    /// unknown.
    #[graphql(guard = "Can::see(Target::tenant(&tenant_id))")]
    async fn environments(&self, ctx: &Context<'_>, tenant_id: ID) -> Result<Vec<Environment>> {
        let tenant_id = parse_id("tenantId", &tenant_id).gql()?;
        let environments = environments::list(&state(ctx).db, tenant_id).await.gql()?;
        readable(ctx, environments)
    }
}

/// The environments among `environments` the caller may read (a role granted on one
/// environment shows that one only).
pub(crate) fn readable(
    ctx: &Context<'_>,
    environments: Vec<environment::Model>,
) -> Result<Vec<Environment>> {
    let caller = caller(ctx).gql()?;
    let authz = &state(ctx).authz;
    Ok(environments
        .into_iter()
        .filter(|e| {
            authz.allows(
                &caller.principal,
                Scope::environment(e.tenant_id, e.id),
                Permission::EnvironmentRead,
            )
        })
        .map(Environment)
        .collect())
}

/// Environment mutations.
#[derive(Default)]
pub struct EnvironmentMutation;

#[Object]
impl EnvironmentMutation {
    /// Create an environment. Its (empty) config is live in the data planes when this returns.
    #[graphql(guard = "Can::new(Permission::EnvironmentWrite, Target::tenant(&input.tenant_id))")]
    async fn create_environment(
        &self,
        ctx: &Context<'_>,
        input: CreateEnvironmentInput,
    ) -> Result<Environment> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let tenant_id = parse_id("tenantId", &input.tenant_id).gql()?;
        let environment = environments::create(&state.db, actor, tenant_id, &input.name)
            .await
            .gql()?;
        state.publisher.publish_environment(environment.id).await;
        Ok(Environment(environment))
    }
}
