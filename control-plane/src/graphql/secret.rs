//! Secrets: write-only. No type here has a field that could return a value.

use async_graphql::{Context, InputObject, Object, Result, ID};
use chrono::{DateTime, Utc};

use super::{parse_id, state, to_id};
use crate::domain::secrets;
use crate::entity::secret;
use crate::error::GraphqlResultExt;

/// A secret's metadata. The value can be set, never read.
pub struct Secret(pub secret::Model);

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

    /// Current version: 1 when first set, +1 on every change.
    async fn version(&self) -> i32 {
        self.0.current_version
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// Input of `setSecret`. `Debug` leaves the value out.
#[derive(InputObject)]
pub struct SetSecretInput {
    pub environment_id: ID,
    /// A letter or `_`, then letters, digits, `_` or `-`.
    pub name: String,
    /// The secret value, 1 byte to 64 KiB. Sealed on arrival; never returned.
    pub value: String,
}

impl std::fmt::Debug for SetSecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecretInput")
            .field("environment_id", &self.environment_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Secret queries (metadata only).
#[derive(Default)]
pub struct SecretQuery;

#[Object]
impl SecretQuery {
    /// Metadata of an environment's secrets, by name. `NOT_FOUND` if the environment is
    /// unknown.
    async fn secrets(&self, ctx: &Context<'_>, environment_id: ID) -> Result<Vec<Secret>> {
        let environment_id = parse_id("environmentId", &environment_id).gql()?;
        let secrets = secrets::list(&state(ctx).db, environment_id).await.gql()?;
        Ok(secrets.into_iter().map(Secret).collect())
    }
}

/// Secret mutations.
#[derive(Default)]
pub struct SecretMutation;

#[Object]
impl SecretMutation {
    /// Set a secret: stores the value, sealed, as its next version. The new version is live in
    /// the data planes when this returns.
    async fn set_secret(&self, ctx: &Context<'_>, input: SetSecretInput) -> Result<Secret> {
        let state = state(ctx);
        let environment_id = parse_id("environmentId", &input.environment_id).gql()?;
        let secret = secrets::set(
            &state.db,
            &state.sealing_key,
            environment_id,
            &input.name,
            &input.value,
        )
        .await
        .gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(Secret(secret))
    }
}
