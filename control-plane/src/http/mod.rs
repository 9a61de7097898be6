//! HTTP surface: the GraphQL endpoint (and GraphiQL), console sign-in (`/auth/...`),
//! provisioning link pages, health checks.

pub mod auth;
mod graphql;
mod health;
mod provision;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/session", get(auth::session))
        // Provisioning links: no admin token, the link's token is the credential.
        .route(
            "/provision/{token}",
            get(provision::show)
                .post(provision::submit)
                .layer(DefaultBodyLimit::max(provision::MAX_FORM_BYTES)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(http)
}

/// The span of one request: method and path, with a provisioning link's token (a credential)
/// replaced and no query string (the sign-in callback's carries a code), so request logs
/// never carry one.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = loggable_path(request.uri().path()),
        version = ?request.version(),
    )
}

fn loggable_path(path: &str) -> &str {
    if path.starts_with(crate::domain::provisioning::PATH_PREFIX) {
        "/provision/{token}"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tokens_stay_out_of_request_logs() {
        assert_eq!(loggable_path("/provision/apl_secret"), "/provision/{token}");
        assert_eq!(loggable_path("/graphql"), "/graphql");
    }
}
