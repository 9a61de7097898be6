//! `POST /graphql` (authenticated) and `GET /graphql` (GraphiQL).

use async_graphql::http::{receive_body, GraphiQLSource, MultipartOptions};
use async_graphql::Value;
use async_graphql_axum::GraphQLResponse;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use tracing::Instrument;

use super::{auth, HttpState, MAX_BODY_BYTES};
use crate::error::AppError;
use crate::graphql::RequestOrigin;

/// GraphiQL. The page itself needs no token; its requests do (set `Authorization` in its
/// Headers tab). GraphQL is never executed over GET: a GET with a `query` parameter is refused,
/// so no link or image tag can run an operation with someone's session cookie.
pub(crate) async fn graphiql(RawQuery(query): RawQuery) -> Response {
    let has_operation = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("query"))
    });
    if has_operation {
        return AppError::GetNotSupported.into_response();
    }
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Airlock")
            .finish(),
    )
    .into_response()
}

/// Authenticate, then execute one GraphQL request. Follows GraphQL-over-HTTP: the response is
/// `application/graphql-response+json`, and a request that fails before execution (parse or
/// validation error, limits exceeded) gets 400.
pub(crate) async fn execute(State(http): State<HttpState>, request: Request) -> Response {
    let caller = match auth::authenticate(&http, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };

    let origin = request_origin(&request);
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => return payload_too_large(),
    };
    // One operation per request: batches would multiply the work one request can cause.
    let graphql_request = match receive_body(content_type, &body[..], MultipartOptions::default())
        .await
    {
        Ok(request) => request,
        Err(error) => {
            return AppError::invalid("request", malformed_request_message(&error)).into_response()
        }
    };

    // The one place the caller's identity enters GraphQL: every resolver's guard
    // (`authz::guard::Can`) and every audit entry read it from here.
    let span = tracing::info_span!("graphql", principal = %caller.principal);
    let mut graphql_request = graphql_request.data(caller);
    if let Some(origin) = origin {
        graphql_request = graphql_request.data(origin);
    }
    let response = http.schema.execute(graphql_request).instrument(span).await;
    let status = if is_request_error(&response) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, GraphQLResponse::from(response)).into_response()
}

/// `http://<authority>` as the client addressed this server (`Host`, or the HTTP/2
/// `:authority`), when that is a plain `host[:port]`. Behind a TLS-terminating proxy set
/// `AIRLOCK_PUBLIC_URL` instead: this cannot know the client used `https`.
fn request_origin(request: &Request) -> Option<RequestOrigin> {
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))?;
    let parsed: axum::http::uri::Authority = authority.parse().ok()?;
    if parsed.as_str().contains('@') {
        return None;
    }
    Some(RequestOrigin(format!("http://{}", parsed.as_str())))
}

/// A request error never started executing: there is no data and no error has a path.
fn is_request_error(response: &async_graphql::Response) -> bool {
    !response.errors.is_empty()
        && matches!(response.data, Value::Null)
        && response.errors.iter().all(|e| e.path.is_empty())
}

/// Describe a malformed request without echoing its content (it may hold a secret value).
fn malformed_request_message(error: &async_graphql::ParseRequestError) -> &'static str {
    use async_graphql::ParseRequestError as E;
    match error {
        E::UnsupportedBatch => "batched requests are not supported; send one operation per request",
        E::InvalidRequest(_) => "the body is not a valid GraphQL request (expected JSON with `query`, optional `variables` and `operationName`)",
        E::PayloadTooLarge => "the request is too large",
        _ => "the body is not a valid GraphQL request",
    }
}

fn payload_too_large() -> Response {
    Response::builder()
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .body(Body::from(format!(
            "request body larger than {MAX_BODY_BYTES} bytes"
        )))
        .unwrap_or_else(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())
}
