//! HTTP surface: the GraphQL endpoint (and GraphiQL), health checks.

mod graphql;
mod health;

use axum::routing::get;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::graphql::{build_schema, AppSchema};
use crate::state::AppState;

/// Largest request body accepted on `/graphql`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) app: AppState,
    pub(crate) schema: AppSchema,
}

/// The control plane's routes over `state`.
pub fn router(state: AppState) -> Router {
    let http = HttpState {
        schema: build_schema(state.clone()),
        app: state,
    };
    Router::new()
        .route(
            "/graphql",
            get(graphql::graphiql)
                .post(graphql::execute)
                // Rejects a declared oversized body before reading it; the handler also stops
                // reading at the limit when no length is declared.
                .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .layer(TraceLayer::new_for_http())
        .with_state(http)
}
