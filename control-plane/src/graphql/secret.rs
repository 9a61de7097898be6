//! Secrets: write-only. No type here has a field that could return a value.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::audit::ActorObject;
use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::secrets::{self, SetSecret};
use crate::error::GraphqlResultExt;

/// A secret's metadata. The value can be set, never read.
pub struct Secret(pub secrets::Secret);

/// A secret's metadata. The value can be set, never read.
#[Object]
impl Secret {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn environment_id(&self) -> ID {
        to_id(self.0.environment_id)
    }

    /// Referenced in templates as `{{secrets.NAME}}`.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Current version: the one data planes use. A new value gets the highest version so
    /// far + 1; a rollback makes an earlier one current.
    async fn version(&self) -> i32 {
        self.0.version
    }

    /// Hosts the secret may be sent to: exact hosts (`api.example.com`, `127.0.0.1`) or
    /// `*.domain` (exactly one more label). The data plane refuses to send it anywhere else.
    async fn allowed_hosts(&self) -> Vec<String> {
        self.0
            .allowed_hosts
            .iter()
            .map(|h| h.as_str().to_string())
            .collect()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// One stored version of a secret: metadata only.
#[derive(SimpleObject)]
pub struct SecretVersion {
    pub version: i32,
    pub created_at: DateTime<Utc>,
    /// Who stored it; null for versions stored before authorship was recorded.
    pub actor: Option<ActorObject>,
    /// Whether this is the version data planes use.
    pub current: bool,
}

/// Input of `setSecret`. `Debug` leaves the value out.
#[derive(InputObject)]
pub struct SetSecretInput {
    pub environment_id: ID,
    /// A letter or `_`, then letters, digits, `_` or `-`.
    pub name: String,
    /// The secret value, 1 byte to 64 KiB. Sealed on arrival; never returned.
    pub value: String,
    /// Hosts the secret may be sent to (1-64 entries: `api.example.com`, `*.example.com`,
    /// `127.0.0.1`). Required when the secret is created; omit it to keep the current hosts.
    pub allowed_hosts: Option<Vec<String>>,
}

impl std::fmt::Debug for SetSecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecretInput")
            .field("environment_id", &self.environment_id)
            .field("name", &self.name)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

/// Input of `setSecretHosts`.
#[derive(InputObject)]
pub struct SetSecretHostsInput {
    pub secret_id: ID,
    /// The new host list (1-64 entries); replaces the current one.
    pub allowed_hosts: Vec<String>,
}

/// Input of `rollbackSecret`.
#[derive(InputObject)]
pub struct RollbackSecretInput {
    pub secret_id: ID,
    /// An existing version (see `secretVersions`).
    pub version: i32,
}

/// Input of `deleteSecret`.
#[derive(InputObject)]
pub struct DeleteSecretInput {
    pub secret_id: ID,
}

/// Secret queries (metadata only).
#[derive(Default)]
pub struct SecretQuery;

#[Object]
impl SecretQuery {
    /// Metadata of an environment's secrets, by name. `NOT_FOUND` if the environment is
    /// unknown.
    #[graphql(guard = "Can::new(Permission::SecretRead, Target::environment(&environment_id))")]
    async fn secrets(&self, ctx: &Context<'_>, environment_id: ID) -> Result<Vec<Secret>> {
        let environment_id = parse_id("environmentId", &environment_id).gql()?;
        let secrets = secrets::list(&state(ctx).db, environment_id).await.gql()?;
        Ok(secrets.into_iter().map(Secret).collect())
    }

    /// Versions of a secret, newest first: metadata only. `NOT_FOUND` if the secret is
    /// unknown.
    #[graphql(guard = "Can::new(Permission::SecretRead, Target::secret(&secret_id))")]
    async fn secret_versions(
        &self,
        ctx: &Context<'_>,
        secret_id: ID,
    ) -> Result<Vec<SecretVersion>> {
        let secret_id = parse_id("secretId", &secret_id).gql()?;
        let versions = secrets::versions(&state(ctx).db, secret_id).await.gql()?;
        Ok(versions
            .into_iter()
            .map(|v| SecretVersion {
                version: v.version,
                created_at: v.created_at,
                actor: v.actor.map(ActorObject::from),
                current: v.current,
            })
            .collect())
    }
}

/// Secret mutations.
#[derive(Default)]
pub struct SecretMutation;

#[Object]
impl SecretMutation {
    /// Set a secret: stores the value, sealed, as its next version. A new secret needs
    /// `allowedHosts` (`INVALID_INPUT` on field `allowedHosts` otherwise). The new version is
    /// live in the data planes when this returns.
    #[graphql(
        guard = "Can::new(Permission::SecretWrite, Target::environment(&input.environment_id))"
    )]
    async fn set_secret(&self, ctx: &Context<'_>, input: SetSecretInput) -> Result<Secret> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let environment_id = parse_id("environmentId", &input.environment_id).gql()?;
        let secret = secrets::set(
            &state.db,
            &state.sealing_key,
            actor,
            SetSecret {
                environment_id,
                name: &input.name,
                value: &input.value,
                allowed_hosts: input.allowed_hosts.as_deref(),
            },
        )
        .await
        .gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(Secret(secret))
    }

    /// Replace the hosts a secret may be sent to. Live in the data planes when this returns.
    #[graphql(guard = "Can::new(Permission::SecretWrite, Target::secret(&input.secret_id))")]
    async fn set_secret_hosts(
        &self,
        ctx: &Context<'_>,
        input: SetSecretHostsInput,
    ) -> Result<Secret> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let secret_id = parse_id("secretId", &input.secret_id).gql()?;
        let secret = secrets::set_hosts(&state.db, actor, secret_id, &input.allowed_hosts)
            .await
            .gql()?;
        state
            .publisher
            .publish_environment(secret.environment_id)
            .await;
        Ok(Secret(secret))
    }

    /// Make an earlier version current again (its value, sealed for that version, is what data
    /// planes use when this returns). `NOT_FOUND` for an unknown secret or version.
    #[graphql(guard = "Can::new(Permission::SecretWrite, Target::secret(&input.secret_id))")]
    async fn rollback_secret(
        &self,
        ctx: &Context<'_>,
        input: RollbackSecretInput,
    ) -> Result<Secret> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let secret_id = parse_id("secretId", &input.secret_id).gql()?;
        let secret = secrets::rollback(&state.db, actor, secret_id, input.version)
            .await
            .gql()?;
        state
            .publisher
            .publish_environment(secret.environment_id)
            .await;
        Ok(Secret(secret))
    }

    /// Delete a secret and all of its versions; returns its id. Functions that use it fail
    /// closed (`secret_unavailable`) from when this returns.
    #[graphql(guard = "Can::new(Permission::SecretWrite, Target::secret(&input.secret_id))")]
    async fn delete_secret(&self, ctx: &Context<'_>, input: DeleteSecretInput) -> Result<ID> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let secret_id = parse_id("secretId", &input.secret_id).gql()?;
        let deleted = secrets::delete(&state.db, actor, secret_id).await.gql()?;
        state
            .publisher
            .publish_environment(deleted.environment_id)
            .await;
        Ok(to_id(deleted.id))
    }
}
