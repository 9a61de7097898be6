//! Admin tokens: `createAdminToken`, `adminTokens`, `revokeAdminToken`. Everyone manages
//! their own tokens; a platform role sees and revokes all of them. The plaintext token
//! appears once, in the result of `createAdminToken`.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{caller, Can};
use crate::authz::Caller;
use crate::domain::admin_tokens;
use crate::entity::admin_token;
use crate::error::GraphqlResultExt;

/// A bearer token for the GraphQL API (never the token itself).
pub struct AdminToken(pub admin_token::Model);

/// A bearer token for the GraphQL API (never the token itself).
#[Object]
impl AdminToken {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    /// Unique across the installation.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// The principal whose roles the token carries: a user (`user:<id>`), or the token
    /// itself (`token:<id>`).
    async fn acts_for(&self) -> String {
        admin_tokens::caller_of(&self.0).principal.to_string()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Last successful authentication, to the minute.
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }

    /// Set once revoked; a revoked token no longer authenticates.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
}

/// A token just created. `token` is shown only here; store it now.
#[derive(SimpleObject)]
pub struct CreatedAdminToken {
    pub admin_token: AdminToken,
    /// The token. Only its hash is stored; it cannot be shown again.
    pub token: String,
}

/// Input of `createAdminToken`.
#[derive(InputObject)]
pub struct CreateAdminTokenInput {
    /// 1-64 ASCII letters, digits, `-` and `_`; unique across the installation.
    pub name: String,
    /// `false` (default): the token acts for the caller, with the caller's roles. `true`: the
    /// token is a principal of its own (`token:<id>`, for automation) with no role until one
    /// is granted to it.
    #[graphql(default)]
    pub standalone: bool,
}

/// Whether the caller holds a platform role (and so manages every token).
fn manages_all(ctx: &Context<'_>, caller: &Caller) -> bool {
    state(ctx)
        .authz
        .visible_tenants(&caller.principal)
        .is_none()
}

/// Admin token queries.
#[derive(Default)]
pub struct AdminTokenQuery;

#[Object]
impl AdminTokenQuery {
    /// The caller's tokens (every token for a platform role), by name.
    #[graphql(guard = "Can::authenticated()")]
    async fn admin_tokens(&self, ctx: &Context<'_>) -> Result<Vec<AdminToken>> {
        let caller = caller(ctx).gql()?;
        let tokens =
            admin_tokens::list(&state(ctx).db, &caller.principal, manages_all(ctx, caller))
                .await
                .gql()?;
        Ok(tokens.into_iter().map(AdminToken).collect())
    }
}

/// Admin token mutations.
#[derive(Default)]
pub struct AdminTokenMutation;

#[Object]
impl AdminTokenMutation {
    /// Create an admin token. `ALREADY_EXISTS` if the name is taken.
    #[graphql(guard = "Can::authenticated()")]
    async fn create_admin_token(
        &self,
        ctx: &Context<'_>,
        input: CreateAdminTokenInput,
    ) -> Result<CreatedAdminToken> {
        let caller = caller(ctx).gql()?;
        let acts_for = (!input.standalone).then_some(&caller.principal);
        let (model, token) =
            admin_tokens::create(&state(ctx).db, actor(ctx).gql()?, &input.name, acts_for)
                .await
                .gql()?;
        Ok(CreatedAdminToken {
            admin_token: AdminToken(model),
            token: token.plaintext,
        })
    }

    /// Revoke one of the caller's tokens (any token, for a platform role): it stops working
    /// at once. Revoking twice changes nothing. `NOT_FOUND` for anyone else's token.
    #[graphql(guard = "Can::authenticated()")]
    async fn revoke_admin_token(&self, ctx: &Context<'_>, id: ID) -> Result<AdminToken> {
        let caller = caller(ctx).gql()?;
        let id = parse_id("id", &id).gql()?;
        let model = admin_tokens::revoke(
            &state(ctx).db,
            actor(ctx).gql()?,
            &caller.principal,
            manages_all(ctx, caller),
            id,
        )
        .await
        .gql()?;
        Ok(AdminToken(model))
    }
}
