//! `me`: who the caller is and which roles apply to it.

use async_graphql::{Context, Enum, Object, Result, ID};

use super::role::RoleAssignment;
use super::{state, to_id};
use crate::authz::guard::{caller, Can};
use crate::authz::Principal;
use crate::domain::{roles, users};
use crate::error::GraphqlResultExt;

/// What kind of principal the caller is.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ViewerKind {
    /// A person signed in with OpenID Connect (a session, a bearer JWT, or a token that
    /// acts for them).
    User,
    /// An admin token that acts for itself.
    Token,
}

/// The caller of this request.
pub struct Viewer {
    principal: Principal,
    email: Option<String>,
}

/// The caller of this request.
#[Object]
impl Viewer {
    async fn kind(&self) -> ViewerKind {
        match self.principal {
            Principal::Token(_) => ViewerKind::Token,
            _ => ViewerKind::User,
        }
    }

    /// The user's or the token's id.
    async fn id(&self) -> Option<ID> {
        match &self.principal {
            Principal::User(id) | Principal::Token(id) => Some(to_id(*id)),
            Principal::Email(_) => None,
        }
    }

    /// `user:<id>` or `token:<id>`: what roles are granted to.
    async fn principal(&self) -> String {
        self.principal.to_string()
    }

    /// A user's email address, as the identity provider last reported it.
    async fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }

    /// The roles held, and where.
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<RoleAssignment>> {
        let held = roles::held_by(&state(ctx).db, &self.principal)
            .await
            .gql()?;
        Ok(held.into_iter().map(RoleAssignment).collect())
    }
}

/// The `me` query.
#[derive(Default)]
pub struct ViewerQuery;

#[Object]
impl ViewerQuery {
    /// The authenticated caller.
    #[graphql(guard = "Can::authenticated()")]
    async fn me(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let caller = caller(ctx).gql()?;
        let email = match caller.principal {
            Principal::User(id) => users::get(&state(ctx).db, id).await.gql()?.email,
            _ => None,
        };
        Ok(Viewer {
            principal: caller.principal.clone(),
            email,
        })
    }
}
