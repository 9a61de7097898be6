//! Every error the gateway answers itself, and the one place that turns it into a response.

use airlock_shared::template::RenderError;

use crate::oauth::OAuthError;
use airlock_shared::wire::{GatewayErrorBody, GatewayErrorDetail};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-airlock-request-id";

/// An error answered by the gateway (not by the upstream). Messages name functions,
/// arguments and secrets, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed on this path (allowed: {allow})")]
    MethodNotAllowed { allow: &'static str },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this API key may not invoke function `{0}`")]
    Forbidden(String),
    #[error("function `{0}` does not exist in this environment")]
    FunctionNotFound(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request body must be a JSON object of arguments: {0}")]
    InvalidJson(String),
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    Render(RenderError),
    #[error("secret `{0}` cannot be opened by this data plane (sealed to a key it does not hold, or damaged)")]
    SecretNotOpened(String),
    #[error("secret `{secret}` may not be sent to host `{host}`")]
    SecretHostDenied { secret: String, host: String },
    #[error("the upstream could not be reached: {0}")]
    UpstreamUnreachable(String),
    #[error("the upstream did not answer within {timeout_ms} ms")]
    UpstreamTimeout { timeout_ms: u64 },
    #[error("the upstream's response was refused: {0}")]
    UpstreamResponseRejected(String),
    #[error(
        "the access token of OAuth connection `{connection}` may not be sent to host `{host}`"
    )]
    OAuthHostDenied { connection: String, host: String },
    #[error(transparent)]
    OAuth(OAuthError),
    #[error("OAuth connection `{0}` does not exist in this environment")]
    OAuthConnectionNotFound(String),
    #[error("the data plane has not loaded its configuration yet")]
    NotReady,
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// HTTP status of the error response.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound | Self::FunctionNotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::Unauthorized => 401,
            Self::Forbidden(_) | Self::SecretHostDenied { .. } | Self::OAuthHostDenied { .. } => {
                403
            }
            Self::OAuthConnectionNotFound(_) => 404,
            Self::OAuth(OAuthError::ConnectionMissing(_)) => 500,
            Self::OAuth(OAuthError::NotConnected(_)) => 409,
            Self::OAuth(OAuthError::Broken { .. } | OAuthError::Unavailable { .. }) => 502,
            Self::PayloadTooLarge { .. } => 413,
            Self::InvalidJson(_) | Self::BadRequest(_) => 400,
            Self::Render(RenderError::MissingArgument(_) | RenderError::InvalidArgument { .. }) => {
                400
            }
            Self::Render(RenderError::MissingSecret(_) | RenderError::UnusableSecret(_))
            | Self::SecretNotOpened(_) => 500,
            Self::Render(RenderError::InvalidOAuthHandle(_)) => 400,
            Self::Render(RenderError::MissingOAuthToken(_)) => 502,
            Self::UpstreamUnreachable(_) | Self::UpstreamResponseRejected(_) => 502,
            Self::UpstreamTimeout { .. } => 504,
            Self::NotReady => 503,
            Self::Internal => 500,
        }
    }

    /// Stable machine-readable code (`error.code` in the body).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::FunctionNotFound(_) => "function_not_found",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InvalidJson(_) => "invalid_json",
            Self::BadRequest(_) => "bad_request",
            Self::Render(RenderError::MissingArgument(_)) => "missing_argument",
            Self::Render(RenderError::InvalidArgument { .. }) => "invalid_argument",
            Self::Render(RenderError::MissingSecret(_) | RenderError::UnusableSecret(_))
            | Self::SecretNotOpened(_) => "secret_unavailable",
            Self::Render(RenderError::InvalidOAuthHandle(_)) => "invalid_oauth_handle",
            Self::Render(RenderError::MissingOAuthToken(_)) => "oauth_token_unavailable",
            Self::SecretHostDenied { .. } => "secret_host_denied",
            Self::OAuthHostDenied { .. } => "oauth_host_denied",
            Self::OAuthConnectionNotFound(_) => "oauth_connection_not_found",
            Self::OAuth(OAuthError::ConnectionMissing(_)) => "oauth_connection_missing",
            Self::OAuth(OAuthError::NotConnected(_)) => "oauth_not_connected",
            Self::OAuth(OAuthError::Broken { .. }) => "oauth_connection_broken",
            Self::OAuth(OAuthError::Unavailable { .. }) => "oauth_token_unavailable",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamResponseRejected(_) => "upstream_response_rejected",
            Self::NotReady => "not_ready",
            Self::Internal => "internal_error",
        }
    }

    /// Map a Pingora error raised while proxying to what the client is told. `None` when the
    /// client itself is gone (nothing can be sent).
    pub fn from_proxy_error(error: &Error, timeout_ms: u64) -> Option<Self> {
        use ErrorType::*;
        if let HTTPStatus(status) = error.etype() {
            return Some(match status {
                504 => Self::UpstreamTimeout { timeout_ms },
                400..=499 => Self::BadRequest("rejected by the gateway"),
                _ => Self::UpstreamUnreachable("upstream failure".into()),
            });
        }
        if *error.esource() == ErrorSource::Downstream {
            return match error.etype() {
                WriteError | ReadError | ConnectionClosed => None,
                _ => Some(Self::BadRequest("the request could not be read")),
            };
        }
        Some(match error.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => Self::UpstreamTimeout { timeout_ms },
            ConnectRefused => Self::UpstreamUnreachable("connection refused".into()),
            ConnectNoRoute => Self::UpstreamUnreachable("no route to the upstream host".into()),
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | TLSWantX509Lookup
            | HandshakeError => {
                Self::UpstreamUnreachable("TLS handshake with the upstream failed".into())
            }
            ConnectError | BindError | SocketError | ConnectProxyFailure => {
                Self::UpstreamUnreachable("connection to the upstream failed".into())
            }
            ConnectionClosed | ReadError | WriteError | H1Error | H2Error | InvalidHTTPHeader
            | H2Downgrade | InvalidH2 => {
                if *error.esource() == ErrorSource::Upstream {
                    Self::UpstreamUnreachable("the upstream connection failed".into())
                } else {
                    Self::Internal
                }
            }
            _ if *error.esource() == ErrorSource::Upstream => {
                Self::UpstreamUnreachable("the upstream connection failed".into())
            }
            _ => Self::Internal,
        })
    }

    /// The JSON body `{"error":{"code","message","requestId"}}`.
    pub fn body(&self, request_id: &str) -> Bytes {
        let body = GatewayErrorBody {
            error: GatewayErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                request_id: request_id.to_string(),
            },
        };
        // Serializing plain strings cannot fail; fall back to an empty object just in case.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
    }

    /// Full response head for this error; the caller writes [`Self::body`] after it.
    pub fn response_header(
        &self,
        request_id: &str,
        body_len: usize,
    ) -> pingora::Result<ResponseHeader> {
        let mut header = json_response_header(self.status(), request_id, body_len)?;
        if matches!(self, Self::Unauthorized) {
            header.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
        }
        if let Self::MethodNotAllowed { allow } = self {
            header.insert_header(http::header::ALLOW, *allow)?;
        }
        Ok(header)
    }
}

/// Head of a JSON response the gateway produces itself.
pub fn json_response_header(
    status: u16,
    request_id: &str,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(status, Some(5))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    header.insert_header(REQUEST_ID_HEADER, request_id)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases = [
            (GatewayError::NotFound, 404, "not_found"),
            (
                GatewayError::MethodNotAllowed { allow: "POST" },
                405,
                "method_not_allowed",
            ),
            (GatewayError::Unauthorized, 401, "unauthorized"),
            (GatewayError::Forbidden("f".into()), 403, "forbidden"),
            (
                GatewayError::FunctionNotFound("f".into()),
                404,
                "function_not_found",
            ),
            (
                GatewayError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (GatewayError::InvalidJson("x".into()), 400, "invalid_json"),
            (
                GatewayError::Render(RenderError::MissingArgument("a".into())),
                400,
                "missing_argument",
            ),
            (
                GatewayError::Render(RenderError::InvalidArgument {
                    name: "a".into(),
                    reason: "r",
                }),
                400,
                "invalid_argument",
            ),
            (
                GatewayError::Render(RenderError::MissingSecret("S".into())),
                500,
                "secret_unavailable",
            ),
            (
                GatewayError::Render(RenderError::UnusableSecret("S".into())),
                500,
                "secret_unavailable",
            ),
            (
                GatewayError::SecretNotOpened("S".into()),
                500,
                "secret_unavailable",
            ),
            (
                GatewayError::SecretHostDenied {
                    secret: "S".into(),
                    host: "h".into(),
                },
                403,
                "secret_host_denied",
            ),
            (
                GatewayError::UpstreamUnreachable("x".into()),
                502,
                "upstream_unreachable",
            ),
            (
                GatewayError::UpstreamResponseRejected("x".into()),
                502,
                "upstream_response_rejected",
            ),
            (
                GatewayError::UpstreamTimeout { timeout_ms: 5 },
                504,
                "upstream_timeout",
            ),
            (
                GatewayError::OAuthHostDenied {
                    connection: "crm".into(),
                    host: "h".into(),
                },
                403,
                "oauth_host_denied",
            ),
            (
                GatewayError::OAuth(OAuthError::ConnectionMissing("crm".into())),
                500,
                "oauth_connection_missing",
            ),
            (
                GatewayError::OAuth(OAuthError::NotConnected("crm".into())),
                409,
                "oauth_not_connected",
            ),
            (
                GatewayError::OAuth(OAuthError::Broken {
                    connection: "crm".into(),
                    error: "invalid_grant".into(),
                }),
                502,
                "oauth_connection_broken",
            ),
            (
                GatewayError::OAuth(OAuthError::Unavailable {
                    connection: "crm".into(),
                    reason: "r".into(),
                }),
                502,
                "oauth_token_unavailable",
            ),
            (
                GatewayError::Render(RenderError::InvalidOAuthHandle("a".into())),
                400,
                "invalid_oauth_handle",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[test]
    fn host_denied_message_names_secret_and_host() {
        let error = GatewayError::SecretHostDenied {
            secret: "TOKEN".into(),
            host: "evil.example".into(),
        };
        assert_eq!(
            error.to_string(),
            "secret `TOKEN` may not be sent to host `evil.example`"
        );
    }

    #[test]
    fn broken_connection_message_says_to_reconnect() {
        let error = GatewayError::OAuth(OAuthError::Broken {
            connection: "crm".into(),
            error: "invalid_grant: grant revoked".into(),
        });
        let message = error.to_string();
        assert!(message.contains("`crm`"), "{message}");
        assert!(message.contains("invalid_grant"), "{message}");
        assert!(message.contains("startOAuthConnection"), "{message}");
        assert!(message.contains("resetOAuthConnection"), "{message}");
    }

    #[test]
    fn body_shape() {
        let body = GatewayError::Forbidden("get_user".into()).body("req-1");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "forbidden");
        assert_eq!(json["error"]["requestId"], "req-1");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("get_user"));
    }

    #[test]
    fn pingora_errors_map_to_gateway_errors() {
        let up = |etype| GatewayError::from_proxy_error(&Error::new_up(etype), 100);
        assert_eq!(up(ErrorType::ConnectRefused).unwrap().status(), 502);
        assert_eq!(up(ErrorType::ConnectTimedout).unwrap().status(), 504);
        assert_eq!(up(ErrorType::ReadTimedout).unwrap().status(), 504);
        assert_eq!(up(ErrorType::ConnectionClosed).unwrap().status(), 502);
        let down = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(GatewayError::from_proxy_error(&down, 100), None);
    }
}
