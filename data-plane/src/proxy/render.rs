//! Turning invoke arguments into the upstream request.

use std::time::Duration;

use airlock_shared::template::Scheme;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use super::error::GatewayError;
use crate::snapshot::{CompiledEnvironment, CompiledFunction};

/// The request to send upstream, fully rendered. Header values and the body may hold secret
/// values: `Debug` shows neither, and header values are marked sensitive so Pingora's own
/// debug logging of request heads prints `Sensitive` instead.
pub struct Invocation {
    pub method: Method,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub authority: HeaderValue,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

/// Parse the invoke body: empty means no arguments, anything else must be a JSON object.
pub fn parse_arguments(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(args)) => Ok(args),
        Ok(_) => Err(GatewayError::InvalidJson("expected a JSON object".into())),
        // serde_json messages give a position, never the input.
        Err(error) => Err(GatewayError::InvalidJson(error.to_string())),
    }
}

/// Render `function` with `args` and the environment's secrets. A missing secret fails the
/// invocation: a request is never sent without one.
pub fn render(
    function: &CompiledFunction,
    environment: &CompiledEnvironment,
    args: &Map<String, Value>,
) -> Result<Invocation, GatewayError> {
    let rendered = function
        .template
        .render(args, |name| environment.secret(name))
        .map_err(GatewayError::Render)?;

    // The template already refused control characters; these conversions only fail on a
    // template/http disagreement, which is a bug, not the caller's fault.
    let internal = |what: &str| {
        tracing::error!(function = %function.name, what, "rendered request is not valid HTTP");
        GatewayError::Internal
    };
    let method = Method::from_bytes(rendered.method.as_bytes()).map_err(|_| internal("method"))?;
    let authority =
        HeaderValue::from_str(&rendered.authority).map_err(|_| internal("authority"))?;
    let mut headers = Vec::with_capacity(rendered.headers.len());
    for (name, value) in rendered.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| internal("header name"))?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| internal("header value"))?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(Invocation {
        method,
        tls: rendered.scheme == Scheme::Https,
        host: rendered.host,
        port: rendered.port,
        authority,
        path_and_query: rendered.path_and_query,
        headers,
        body: rendered.body.map(Bytes::from),
        timeout: Duration::from_millis(function.template.timeout_ms.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments(b"").unwrap().is_empty());
        assert!(parse_arguments(b"  \n").unwrap().is_empty());
        assert_eq!(parse_arguments(br#"{"a":1}"#).unwrap()["a"], 1);
        for bad in [&b"[1]"[..], b"1", b"\"s\"", b"{", b"null"] {
            assert_eq!(
                parse_arguments(bad).unwrap_err().code(),
                "invalid_json",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
