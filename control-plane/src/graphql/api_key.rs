//! API keys: queries, mutations and types. The plaintext key appears exactly once, in the
//! result of `createApiKey`.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::api_keys;
use crate::error::GraphqlResultExt;

/// An API key of an environment (never the key itself).
pub struct ApiKey(pub api_keys::ApiKey);

/// An API key of an environment (never the key itself).
#[Object]
impl ApiKey {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn environment_id(&self) -> ID {
        to_id(self.0.environment_id)
    }

    /// Unique within the environment.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// First characters of the key, to tell keys apart.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// Functions the key may invoke; `*` means all of the tenant's functions.
    async fn functions(&self) -> &[String] {
        &self.0.functions
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A key just created. `key` is shown only here; store it now.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// The key. Only its hash is stored; it cannot be shown again.
    pub key: String,
}

/// Input of `createApiKey`.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    pub environment_id: ID,
    /// 1-64 printable characters; unique within the environment.
    pub name: String,
    /// Functions the key may invoke: names of the tenant's functions, or `*` for all.
    pub functions: Vec<String>,
}

/// API key queries.
#[derive(Default)]
pub struct ApiKeyQuery;

#[Object]
impl ApiKeyQuery {
    /// API keys of an environment, by name. `NOT_FOUND` if the environment is unknown.
    #[graphql(guard = "Can::new(Permission::ApiKeyRead, Target::environment(&environment_id))")]
    async fn api_keys(&self, ctx: &Context<'_>, environment_id: ID) -> Result<Vec<ApiKey>> {
        let environment_id = parse_id("environmentId", &environment_id).gql()?;
        let keys = api_keys::list(&state(ctx).db, environment_id).await.gql()?;
        Ok(keys.into_iter().map(ApiKey).collect())
    }
}

/// API key mutations.
#[derive(Default)]
pub struct ApiKeyMutation;

#[Object]
impl ApiKeyMutation {
    /// Create an API key. It works against the data planes when this returns.
    #[graphql(
        guard = "Can::new(Permission::ApiKeyWrite, Target::environment(&input.environment_id))"
    )]
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> Result<CreatedApiKey> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let environment_id = parse_id("environmentId", &input.environment_id).gql()?;
        let created = api_keys::create(
            &state.db,
            actor,
            environment_id,
            &input.name,
            &input.functions,
        )
        .await
        .gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(CreatedApiKey {
            api_key: ApiKey(created.api_key),
            key: created.plaintext,
        })
    }
}
