//! Which endpoint a request is for.

use airlock_shared::oauth::{CALLBACK_PATH, HANDLE_PATH_PREFIX};
use http::Method;

use super::error::GatewayError;

/// The endpoints of the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/functions/{name}/invoke`
    Invoke { function: String },
    /// `GET /healthz`: the process is up.
    Health,
    /// `GET /readyz`: the first config sync has completed.
    Ready,
    /// `GET /v1/oauth/callback`: a provider redirects a browser here (no API key).
    OAuthCallback,
    /// `POST /v1/oauth/connections/{name}/handle`: issue a handle (API key).
    OAuthHandle { connection: String },
}

const INVOKE_PREFIX: &str = "/v1/functions/";
const INVOKE_SUFFIX: &str = "/invoke";

/// Route by method and path (the query string is not part of `path`).
pub fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let probe = |route| {
        if method == Method::GET {
            Ok(route)
        } else {
            Err(GatewayError::MethodNotAllowed { allow: "GET" })
        }
    };
    match path {
        "/healthz" => return probe(Route::Health),
        "/readyz" => return probe(Route::Ready),
        CALLBACK_PATH => return probe(Route::OAuthCallback),
        _ => {}
    }
    if let Some(connection) = path
        .strip_prefix(HANDLE_PATH_PREFIX)
        .and_then(|rest| rest.strip_suffix("/handle"))
        .filter(|name| !name.is_empty() && !name.contains('/'))
    {
        if method != Method::POST {
            return Err(GatewayError::MethodNotAllowed { allow: "POST" });
        }
        return Ok(Route::OAuthHandle {
            connection: connection.to_string(),
        });
    }
    let function = path
        .strip_prefix(INVOKE_PREFIX)
        .and_then(|rest| rest.strip_suffix(INVOKE_SUFFIX))
        // Exactly one non-empty segment: no `/`, so `/v1/functions/a/b/invoke` is not `a/b`.
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .ok_or(GatewayError::NotFound)?;
    if method != Method::POST {
        return Err(GatewayError::MethodNotAllowed { allow: "POST" });
    }
    Ok(Route::Invoke {
        function: function.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_path() {
        assert_eq!(
            route(&Method::POST, "/v1/functions/get_user/invoke"),
            Ok(Route::Invoke {
                function: "get_user".into()
            })
        );
        assert_eq!(
            route(&Method::GET, "/v1/functions/get_user/invoke"),
            Err(GatewayError::MethodNotAllowed { allow: "POST" })
        );
        for path in [
            "/v1/functions//invoke",
            "/v1/functions/a/b/invoke",
            "/v1/functions/a/invoke/",
            "/v1/functions/a",
            "/v2/functions/a/invoke",
            "/",
        ] {
            assert_eq!(
                route(&Method::POST, path),
                Err(GatewayError::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn oauth_paths() {
        assert_eq!(
            route(&Method::GET, "/v1/oauth/callback"),
            Ok(Route::OAuthCallback)
        );
        assert_eq!(
            route(&Method::POST, "/v1/oauth/callback"),
            Err(GatewayError::MethodNotAllowed { allow: "GET" })
        );
        assert_eq!(
            route(&Method::POST, "/v1/oauth/connections/crm/handle"),
            Ok(Route::OAuthHandle {
                connection: "crm".into()
            })
        );
        assert_eq!(
            route(&Method::GET, "/v1/oauth/connections/crm/handle"),
            Err(GatewayError::MethodNotAllowed { allow: "POST" })
        );
        for path in [
            "/v1/oauth/connections//handle",
            "/v1/oauth/connections/a/b/handle",
        ] {
            assert_eq!(
                route(&Method::POST, path),
                Err(GatewayError::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn probes() {
        assert_eq!(route(&Method::GET, "/healthz"), Ok(Route::Health));
        assert_eq!(route(&Method::GET, "/readyz"), Ok(Route::Ready));
        assert_eq!(
            route(&Method::POST, "/healthz"),
            Err(GatewayError::MethodNotAllowed { allow: "GET" })
        );
    }
}
