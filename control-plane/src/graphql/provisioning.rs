//! Provisioning links: queries, mutations and types. A link's URL (which carries its token)
//! appears exactly once, in the result of `createProvisioningLink`; no field anywhere can
//! return a value submitted through a link.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id, RequestOrigin};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::provisioning::{self, NewLinkSecret};
use crate::error::{AppError, GraphqlResultExt};

/// A single-use link that lets someone without an account set the values of named secrets
/// of one environment.
pub struct ProvisioningLink(pub provisioning::ProvisioningLink);

/// A secret a link asks for.
#[derive(SimpleObject)]
pub struct ProvisioningLinkSecret {
    pub name: String,
    /// Hosts the secret gets when the link is used; empty: it keeps its current hosts.
    pub allowed_hosts: Vec<String>,
}

/// A single-use link that lets someone without an account set the values of named secrets
/// of one environment.
#[Object]
impl ProvisioningLink {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn environment_id(&self) -> ID {
        to_id(self.0.environment_id)
    }

    /// Names of the secrets it asks for, in form order.
    async fn secret_names(&self) -> Vec<String> {
        self.0.secret_names()
    }

    /// The secrets it asks for, with the hosts each gets.
    async fn secrets(&self) -> Vec<ProvisioningLinkSecret> {
        self.0
            .secrets
            .iter()
            .map(|s| ProvisioningLinkSecret {
                name: s.name.clone(),
                allowed_hosts: s
                    .allowed_hosts
                    .iter()
                    .map(|h| h.as_str().to_string())
                    .collect(),
            })
            .collect()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }

    /// When the values were submitted; a link works once.
    async fn used_at(&self) -> Option<DateTime<Utc>> {
        self.0.used_at
    }

    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
}

/// A link just created. `url` is shown only here: send it to whoever holds the values.
#[derive(SimpleObject)]
pub struct CreatedProvisioningLink {
    pub link: ProvisioningLink,
    /// `<control plane base URL>/provision/<token>`. Only a hash of the token is stored; it
    /// cannot be shown again.
    pub url: String,
}

/// A secret a new link asks for.
#[derive(InputObject)]
pub struct ProvisioningLinkSecretInput {
    pub name: String,
    /// Hosts the secret may be sent to. Required for a secret that does not exist yet;
    /// omitted: an existing secret keeps its hosts.
    pub allowed_hosts: Option<Vec<String>>,
}

/// Input of `createProvisioningLink`.
#[derive(InputObject)]
pub struct CreateProvisioningLinkInput {
    pub environment_id: ID,
    /// 1-32 secrets, each named once.
    pub secrets: Vec<ProvisioningLinkSecretInput>,
    /// Lifetime: 60 (one minute) to 604800 (seven days); default 86400 (one day).
    #[graphql(default_with = "Some(provisioning::DEFAULT_EXPIRES_IN_SECONDS)")]
    pub expires_in_seconds: Option<i32>,
}

/// Provisioning link queries.
#[derive(Default)]
pub struct ProvisioningQuery;

#[Object]
impl ProvisioningQuery {
    /// Links of an environment, newest first. `NOT_FOUND` if the environment is unknown.
    #[graphql(
        guard = "Can::new(Permission::ProvisioningRead, Target::environment(&environment_id))"
    )]
    async fn provisioning_links(
        &self,
        ctx: &Context<'_>,
        environment_id: ID,
    ) -> Result<Vec<ProvisioningLink>> {
        let environment_id = parse_id("environmentId", &environment_id).gql()?;
        let links = provisioning::list(&state(ctx).db, environment_id)
            .await
            .gql()?;
        Ok(links.into_iter().map(ProvisioningLink).collect())
    }
}

/// Provisioning link mutations.
#[derive(Default)]
pub struct ProvisioningMutation;

#[Object]
impl ProvisioningMutation {
    /// Create a single-use link to set the named secrets of an environment. Whoever opens
    /// the URL can set those values (and nothing else) once, until it expires or is revoked.
    #[graphql(
        guard = "Can::new(Permission::ProvisioningWrite, Target::environment(&input.environment_id))"
    )]
    async fn create_provisioning_link(
        &self,
        ctx: &Context<'_>,
        input: CreateProvisioningLinkInput,
    ) -> Result<CreatedProvisioningLink> {
        let state = state(ctx);
        let created_by = actor(ctx).gql()?;
        let environment_id = parse_id("environmentId", &input.environment_id).gql()?;
        let base_url = match (&state.public_url, ctx.data_opt::<RequestOrigin>()) {
            (Some(configured), _) => configured.clone(),
            (None, Some(origin)) => origin.0.clone(),
            (None, None) => {
                return Err(AppError::internal(anyhow::anyhow!(
                    "no public URL to build a provisioning link with: set AIRLOCK_PUBLIC_URL"
                ))
                .to_graphql())
            }
        };
        let secrets: Vec<NewLinkSecret> = input
            .secrets
            .into_iter()
            .map(|s| NewLinkSecret {
                name: s.name,
                allowed_hosts: s.allowed_hosts,
            })
            .collect();
        let created = provisioning::create(
            &state.db,
            created_by,
            environment_id,
            &secrets,
            // An explicit `null` means the default too.
            input
                .expires_in_seconds
                .unwrap_or(provisioning::DEFAULT_EXPIRES_IN_SECONDS),
        )
        .await
        .gql()?;
        Ok(CreatedProvisioningLink {
            url: provisioning::link_url(&base_url, &created.token),
            link: ProvisioningLink(created.link),
        })
    }

    /// Revoke a link; it can no longer be used. Revoking twice changes nothing.
    /// `NOT_FOUND` if the id is unknown.
    #[graphql(
        guard = "Can::new(Permission::ProvisioningWrite, Target::ProvisioningLink(\"id\", id.clone()))"
    )]
    async fn revoke_provisioning_link(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<ProvisioningLink> {
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &id).gql()?;
        let link = provisioning::revoke(&state(ctx).db, actor, id)
            .await
            .gql()?;
        Ok(ProvisioningLink(link))
    }
}
