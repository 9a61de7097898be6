//! API keys: queries, mutations and types. The plaintext key appears exactly once, in the
//! result of `createApiKey` or `rotateApiKey`.

use async_graphql::{Context, Enum, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::api_keys;
use crate::error::GraphqlResultExt;

/// An API key of an environment (never the key itself).
pub struct ApiKey(pub api_keys::ApiKey);

/// Where a key is in its life.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ApiKeyStatus {
    /// Accepted by the data planes.
    Active,
    /// Past `expiresAt` (also an old key whose rotation grace period is over).
    Expired,
    /// Revoked with `revokeApiKey`.
    Revoked,
}

impl From<api_keys::ApiKeyStatus> for ApiKeyStatus {
    fn from(status: api_keys::ApiKeyStatus) -> Self {
        match status {
            api_keys::ApiKeyStatus::Active => Self::Active,
            api_keys::ApiKeyStatus::Expired => Self::Expired,
            api_keys::ApiKeyStatus::Revoked => Self::Revoked,
        }
    }
}

/// An API key of an environment (never the key itself).
#[Object]
impl ApiKey {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn environment_id(&self) -> ID {
        to_id(self.0.environment_id)
    }

    /// Unique among the environment's current keys (a rotation's old and new key share it).
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// First characters of the key, to tell keys apart.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// Function patterns the key may invoke: exact names, `*` for all of the tenant's
    /// functions, or globs with `*` and `?` such as `billing_*` (matched against the whole
    /// name).
    async fn functions(&self) -> &[String] {
        &self.0.functions
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// When the key stops working; null: never. A rotation sets the old key's expiry to the
    /// end of its grace period.
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }

    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }

    /// When a rotation replaced this key.
    async fn rotated_at(&self) -> Option<DateTime<Utc>> {
        self.0.rotated_at
    }

    /// The key this one replaced, when it was issued by `rotateApiKey`.
    async fn rotated_from_id(&self) -> Option<ID> {
        self.0.rotated_from_id.map(to_id)
    }

    /// Latest use seen by a data plane (an authenticated request), reported about once a
    /// second, to the millisecond. Null: never used.
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }

    /// Status now.
    async fn status(&self) -> ApiKeyStatus {
        self.0.status(Utc::now()).into()
    }
}

/// A key just created. `key` is shown only here; store it now.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// The key. Only its hash is stored; it cannot be shown again.
    pub key: String,
}

/// A key just rotated: the new key, shown only here, and when the old one stops working.
#[derive(SimpleObject)]
pub struct RotatedApiKey {
    /// The new key's record (`rotatedFromId` names the old one).
    pub api_key: ApiKey,
    /// The new key. Only its hash is stored; it cannot be shown again.
    pub key: String,
    /// The old key works until then.
    pub previous_key_expires_at: DateTime<Utc>,
}

/// Input of `createApiKey`.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    pub environment_id: ID,
    /// 1-64 printable characters; unique among the environment's current keys.
    pub name: String,
    /// Function patterns the key may invoke (at most 256): names of the tenant's functions,
    /// `*` for all, or globs over letters, digits, `-` and `_` with the wildcards `*` and `?`
    /// (`billing_*`). Nothing else is accepted.
    pub functions: Vec<String>,
    /// When the key stops working (must be in the future); omitted: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Input of `rotateApiKey`.
#[derive(InputObject)]
pub struct RotateApiKeyInput {
    /// The key to replace: a current key (not revoked, not already rotated).
    pub id: ID,
    /// How long the old key keeps working: 0 (it stops now) to 2592000 (30 days).
    pub grace_period_seconds: i64,
    /// When the new key stops working (must be in the future); omitted: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// API key queries.
#[derive(Default)]
pub struct ApiKeyQuery;

#[Object]
impl ApiKeyQuery {
    /// API keys of an environment (also revoked, rotated and expired ones), by name and then
    /// newest first. `NOT_FOUND` if the environment is unknown.
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
            input.expires_at,
        )
        .await
        .gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(CreatedApiKey {
            api_key: ApiKey(created.api_key),
            key: created.plaintext,
        })
    }

    /// Replace a key's secret: a new key with the same name, environment and functions,
    /// shown once; the old key keeps working for `gracePeriodSeconds`. `INVALID_INPUT` for a
    /// revoked key, a key already rotated, or a grace period out of range.
    #[graphql(
        guard = "Can::new(Permission::ApiKeyWrite, Target::ApiKey(\"id\", input.id.clone()))"
    )]
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        input: RotateApiKeyInput,
    ) -> Result<RotatedApiKey> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &input.id).gql()?;
        let rotated = api_keys::rotate(
            &state.db,
            actor,
            id,
            input.grace_period_seconds,
            input.expires_at,
        )
        .await
        .gql()?;
        state
            .publisher
            .publish_environment(rotated.created.api_key.environment_id)
            .await;
        Ok(RotatedApiKey {
            api_key: ApiKey(rotated.created.api_key),
            key: rotated.created.plaintext,
            previous_key_expires_at: rotated.previous_key_expires_at,
        })
    }

    /// Revoke a key: the data planes refuse it once this returns (within a second with
    /// separate data planes). Revoking a revoked key changes nothing and returns it.
    #[graphql(guard = "Can::new(Permission::ApiKeyWrite, Target::ApiKey(\"id\", id.clone()))")]
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<ApiKey> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &id).gql()?;
        let key = api_keys::revoke(&state.db, actor, id).await.gql()?;
        state
            .publisher
            .publish_environment(key.environment_id)
            .await;
        Ok(ApiKey(key))
    }
}
