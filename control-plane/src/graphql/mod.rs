//! The GraphQL API: one module per domain, merged at the root. Resolvers are thin: parse ids,
//! call `crate::domain`, publish the changed config, wrap the result.

pub mod admin_token;
pub mod api_key;
pub mod audit;
pub mod environment;
pub mod event;
pub mod function;
pub mod oauth;
pub mod provisioning;
pub mod role;
pub mod secret;
pub mod tenant;
pub mod viewer;

use async_graphql::{Context, EmptySubscription, MergedObject, Schema, ID};
use uuid::Uuid;

use crate::domain::audit::Actor;
use crate::error::AppError;
use crate::state::AppState;

/// The schema served at `/graphql`.
pub type AppSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Deepest query accepted. Real queries are shallow (tenant → functions → headers is 3);
/// the standard introspection query GraphiQL sends needs about 13.
pub const MAX_DEPTH: usize = 16;
/// Most fields a query may select (counting each field once).
pub const MAX_COMPLEXITY: usize = 500;
/// Deepest nesting of input values and selection sets the parser accepts.
pub const MAX_RECURSIVE_DEPTH: usize = 24;
/// Most directives on one field.
pub const MAX_DIRECTIVES: usize = 8;

/// Every query.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    tenant::TenantQuery,
    environment::EnvironmentQuery,
    function::FunctionQuery,
    secret::SecretQuery,
    api_key::ApiKeyQuery,
    audit::AuditQuery,
    provisioning::ProvisioningQuery,
    event::EventQuery,
    oauth::OAuthQuery,
    role::RoleQuery,
    admin_token::AdminTokenQuery,
    viewer::ViewerQuery,
);

/// Every mutation.
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    tenant::TenantMutation,
    environment::EnvironmentMutation,
    function::FunctionMutation,
    secret::SecretMutation,
    api_key::ApiKeyMutation,
    provisioning::ProvisioningMutation,
    oauth::OAuthMutation,
    role::RoleMutation,
    admin_token::AdminTokenMutation,
);

/// Build the schema over `state`, with depth, complexity, recursion and directive limits
/// (async-graphql sets none by default).
pub fn build_schema(state: AppState) -> AppSchema {
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        EmptySubscription,
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .limit_recursive_depth(MAX_RECURSIVE_DEPTH)
    .limit_directives(MAX_DIRECTIVES)
    .data(state)
    .finish()
}

/// The application state every resolver works with. `build_schema` always provides it.
pub fn state<'a>(ctx: &Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

/// Who is making this request, for the audit log. The HTTP layer puts the authenticated
/// [`Caller`](crate::authz::Caller) into every request's data ([`crate::http`]); a request
/// without one (which the HTTP layer never executes) may not do anything.
pub(crate) fn actor(ctx: &Context<'_>) -> Result<Actor, AppError> {
    crate::authz::guard::caller(ctx).map(|caller| caller.actor)
}

/// Base URL (`scheme://authority`) of the control plane as the client reached it, taken from
/// the request's `Host` by the HTTP layer. Used for links handed out (provisioning links)
/// when no public URL is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOrigin(pub String);

/// Parse an `ID` argument that must be a UUID.
pub fn parse_id(field: &'static str, id: &ID) -> Result<Uuid, AppError> {
    Uuid::parse_str(id.as_str()).map_err(|_| AppError::invalid(field, "is not a valid id"))
}

/// A UUID as a GraphQL `ID`.
pub(crate) fn to_id(id: Uuid) -> ID {
    ID(id.to_string())
}
