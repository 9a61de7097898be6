//! Every error a client can see, and the one place where each becomes a GraphQL error or an
//! HTTP response with a stable `extensions.code`.
//!
//! Resolvers must not turn an [`AppError`] into a GraphQL error with a bare `?`: async-graphql
//! accepts anything that implements `Display` and would drop the code. They use
//! [`GraphqlResultExt::gql`] instead.

use airlock_shared::template::TemplateError;
use async_graphql::ErrorExtensions;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sea_orm::DbErr;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No credential, or one that is unknown, revoked, expired or otherwise invalid. The
    /// message never echoes what was presented.
    #[error("authentication required: sign in, or send Authorization: Bearer <admin token or access token>")]
    Unauthenticated,
    /// A request authenticated by the session cookie without the session's CSRF token.
    #[error("this request is authenticated by the session cookie and needs the header X-CSRF-Token (GET /auth/session returns it)")]
    CsrfTokenInvalid,
    /// GraphQL over GET (only POST executes operations).
    #[error("GraphQL operations are executed over POST only")]
    GetNotSupported,
    /// Too much of something at once; try again later.
    #[error("{0}")]
    RateLimited(&'static str),
    /// Authenticated, but the caller's roles do not allow this here.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// An input field failed validation. `field` is its GraphQL name.
    #[error("{field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },
    /// A name that must be unique is taken.
    #[error("{kind} `{name}` already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// An id that names nothing (or nothing visible to the caller).
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    /// An OAuth client that connections still use cannot be deleted.
    #[error("OAuth client `{name}` is used by {connections} connection(s): delete them first")]
    OAuthClientInUse { name: String, connections: u64 },
    /// The provider's metadata could not be fetched or does not fit the configured issuer.
    #[error("OAuth discovery failed: {reason}")]
    OAuthDiscoveryFailed { reason: String },
    /// The client lacks what an authorization-code flow needs (authorize URL, redirect URI).
    #[error("{0}")]
    OAuthClientIncomplete(String),
    /// A function definition failed template checks; carries the template error's own code.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Anything else. The client sees a generic message; the detail is logged.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Generic message shown for [`AppError::Internal`].
const INTERNAL_MESSAGE: &str = "internal error";

impl AppError {
    /// Shorthand for [`AppError::InvalidInput`].
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            message: message.into(),
        }
    }

    /// Shorthand for [`AppError::Forbidden`].
    pub fn forbidden(message: &'static str) -> Self {
        Self::Forbidden(message)
    }

    /// Shorthand for [`AppError::Internal`].
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// Stable machine-readable code (`extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::CsrfTokenInvalid => "CSRF_TOKEN_INVALID",
            Self::GetNotSupported => "METHOD_NOT_ALLOWED",
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::InvalidInput { .. } => "INVALID_INPUT",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::OAuthClientInUse { .. } => "OAUTH_CLIENT_IN_USE",
            Self::OAuthDiscoveryFailed { .. } => "OAUTH_DISCOVERY_FAILED",
            Self::OAuthClientIncomplete(_) => "OAUTH_CLIENT_INCOMPLETE",
            Self::Template(e) => e.code(),
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// HTTP status when the error ends a request outside GraphQL execution.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::CsrfTokenInvalid => StatusCode::FORBIDDEN,
            Self::GetNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidInput { .. } | Self::Template(_) => StatusCode::BAD_REQUEST,
            Self::AlreadyExists { .. } | Self::OAuthClientInUse { .. } => StatusCode::CONFLICT,
            Self::OAuthDiscoveryFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::OAuthClientIncomplete(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Full description for logs and startup errors (internal details included). Never send
    /// this to a client.
    pub fn detail(&self) -> String {
        match self {
            Self::Internal(detail) => format!("{detail:#}"),
            other => other.to_string(),
        }
    }

    /// The message a client sees. Internal details are logged here, never returned.
    fn client_message(&self) -> String {
        match self {
            Self::Internal(_) => {
                tracing::error!(error = self.detail(), "internal error");
                INTERNAL_MESSAGE.to_string()
            }
            other => other.to_string(),
        }
    }

    /// The GraphQL error: client message plus `extensions.code` (and `extensions.field` for
    /// invalid input).
    pub fn to_graphql(&self) -> async_graphql::Error {
        let code = self.code();
        let field = match self {
            Self::InvalidInput { field, .. } => Some(*field),
            _ => None,
        };
        async_graphql::Error::new(self.client_message()).extend_with(|_, ext| {
            ext.set("code", code);
            if let Some(field) = field {
                ext.set("field", field);
            }
        })
    }
}

impl From<DbErr> for AppError {
    fn from(error: DbErr) -> Self {
        Self::Internal(error.into())
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        self.to_graphql()
    }
}

impl IntoResponse for AppError {
    /// A GraphQL-shaped error body (`{"errors":[{"message","extensions":{"code"}}]}`), so
    /// GraphQL clients can show it like any other error.
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = serde_json::json!({
            "errors": [{
                "message": self.client_message(),
                "extensions": { "code": self.code() },
            }]
        });
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, Self::Unauthenticated) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, Self::GetNotSupported) {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        response
    }
}

/// Turns a domain result into a resolver result, keeping the error code.
pub trait GraphqlResultExt<T> {
    /// Map the error with [`AppError::to_graphql`].
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GraphqlResultExt<T> for Result<T, AppError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.to_graphql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extensions(error: &async_graphql::Error) -> serde_json::Value {
        serde_json::to_value(error.extensions.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn invalid_input_carries_code_and_field() {
        let error = AppError::invalid("name", "must not be empty").to_graphql();
        assert_eq!(error.message, "name: must not be empty");
        let ext = extensions(&error);
        assert_eq!(ext["code"], "INVALID_INPUT");
        assert_eq!(ext["field"], "name");
    }

    #[test]
    fn template_errors_keep_their_code() {
        let error = AppError::from(TemplateError::BadMethod("BREW".into())).to_graphql();
        assert_eq!(extensions(&error)["code"], "INVALID_METHOD");
        assert!(error.message.contains("BREW"));
    }

    #[test]
    fn internal_errors_hide_the_detail() {
        let error = AppError::internal(anyhow::anyhow!("connection to 10.0.0.7 refused"));
        let graphql = error.to_graphql();
        assert_eq!(graphql.message, "internal error");
        assert_eq!(extensions(&graphql)["code"], "INTERNAL");
    }

    #[tokio::test]
    async fn unauthenticated_is_a_401_with_a_graphql_body() {
        let response = AppError::Unauthenticated.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }
}
