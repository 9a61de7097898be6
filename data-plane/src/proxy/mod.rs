//! The Pingora `ProxyHttp` implementation: the invoke request path.
//!
//! Phases, in order:
//! - `request_filter`: route, authenticate, check scope, read the arguments, render the
//!   upstream request and check that its secrets may go to its host ([`route`], [`auth`],
//!   [`render`]). Every gateway error is answered here.
//! - `upstream_peer`: resolve the function's host and build the pooled peer ([`upstream`]).
//! - `upstream_request_filter` / `request_body_filter`: replace the whole upstream request,
//!   head and body, with the rendered one. Nothing from the client goes upstream.
//! - `upstream_response_filter` / `response_filter`: drop hop-by-hop headers and `set-cookie`,
//!   redact injected secrets from the headers and prepare the body's redaction ([`redact`]),
//!   add the request id.
//! - `response_body_filter`: decode and redact the body as it streams.
//! - `fail_to_connect` / `error_while_proxy` / `fail_to_proxy`: retry policy and mapping of
//!   Pingora errors to gateway errors ([`error`]).
//! - `logging`: one access log line per request, and its events ([`report`]), queued without
//!   waiting ([`crate::events`]).
//!
//! ## Sending the rendered body
//!
//! The arguments are the downstream body, so it is read completely in `request_filter`, before
//! the upstream request exists. Pingora 0.9.1 (`proxy_h1.rs`, `proxy_handle_downstream`) then
//! only feeds `request_body_filter` when the downstream body is empty or when the session's
//! retry buffer holds data; a body consumed earlier is otherwise never signalled and the
//! upstream would wait forever. So the body reader arms Pingora's retry buffer (64 KiB,
//! `BODY_BUF_LIMIT` in pingora-core) for the last part of the body: Pingora then replays that
//! buffer through `request_body_filter` with `end_of_stream = true`, where it is swapped for
//! the rendered body (also on a retry). The upstream head carries the rendered body's
//! `content-length`. Chunked request bodies have no known end, so they are limited to what
//! the retry buffer holds.
//!
//! ## OAuth tokens, and one retry when the upstream refuses one
//!
//! A function whose templates name `{{oauth.NAME}}`, or an invocation whose arguments hold
//! `{"$oauth": HANDLE}`, gets its tokens from the [`crate::oauth::TokenManager`] before
//! rendering (lock-free when they are valid); others do no OAuth work at all.
//!
//! When the upstream answers 401 to a request that injected a token, the token may have been
//! revoked or rotated before its announced expiry. Pingora 0.9.1 retries a request when an
//! error raised while proxying has `retry` set (`proxy_to_upstream` in a loop bounded by
//! `max_retries`), and an error returned by `upstream_response_filter` is raised before
//! anything of the response reaches the client (`h1_response_filter` runs the upstream filter
//! first; the head is written later). So on such a 401, `upstream_response_filter` marks the
//! context and fails with a retryable error; `error_while_proxy` keeps `retry` set (the 401
//! connection is dropped, not reused); Pingora calls `upstream_peer` again, which replaces
//! the rejected tokens ([`crate::oauth::TokenManager::replace_rejected`]: a refresh only if
//! the rejected generation is still the current one, so 200 simultaneous 401s cause one
//! refresh) and renders the request again; the rendered body is replayed from the retry
//! buffer as on any retry. This happens once per invocation, whatever the method: a 401
//! means the upstream did not act on the request. If no new token can be had, the client gets
//! the gateway's OAuth error (the upstream's 401 is gone by then).

mod auth;
pub mod error;
pub(crate) mod redact;
pub(crate) mod render;
mod report;
mod route;
mod upstream;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_shared::hosts::is_allowed;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use uuid::Uuid;

use self::error::{json_response_header, GatewayError, REQUEST_ID_HEADER};
use self::redact::{BodyRedactor, RequestRedaction};
use self::render::{Invocation, OAuthValues};
use self::report::RequestReport;
use self::route::Route;
use self::upstream::Resolver;
use crate::events::EventEmitter;
use crate::oauth::handle::{HandleClaims, HANDLE_TTL_SECONDS};
use crate::oauth::TokenManager;
use crate::snapshot::{CompiledEnvironment, CompiledFunction, KeyBinding, SnapshotStore};

/// Largest accepted invoke body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Size of Pingora's retry buffer (`BODY_BUF_LIMIT` in pingora-core 0.9.1).
const RETRY_BUFFER_BYTES: usize = 64 * 1024;
/// Up to this declared size, an unread body is drained after an error response so the client
/// reads the response instead of a connection reset; beyond it the connection is closed.
const DRAIN_LIMIT_BYTES: usize = 8 * MAX_BODY_BYTES;
/// Per-read timeout while receiving the invoke body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Response headers never passed from the upstream to the client: hop-by-hop headers (framing,
/// `content-length` / `transfer-encoding`, is Pingora's job) and cookies, which would belong to
/// the upstream's site and not to the application calling the gateway.
static DROPPED_RESPONSE_HEADERS: [header::HeaderName; 9] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::SET_COOKIE,
];

/// State shared by every request of one data plane.
#[derive(Debug)]
pub(crate) struct GatewayState {
    pub(crate) store: Arc<SnapshotStore>,
    pub(crate) events: EventEmitter,
    pub(crate) tokens: TokenManager,
    resolver: Resolver,
    in_flight: AtomicUsize,
    draining: AtomicBool,
}

impl GatewayState {
    pub(crate) fn new(
        store: Arc<SnapshotStore>,
        events: EventEmitter,
        tokens: TokenManager,
    ) -> Self {
        Self {
            store,
            events,
            tokens,
            resolver: Resolver::default(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Requests currently being handled.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// From now on `/readyz` answers 503, so load balancers move traffic away.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.store.is_synced() && !self.draining.load(Ordering::Acquire)
    }
}

/// Counts a request as in flight for as long as its context lives.
struct InFlight(Arc<GatewayState>);

impl InFlight {
    fn new(state: &Arc<GatewayState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state, shared by the phases.
pub struct RequestCtx {
    request_id: String,
    started: Instant,
    _in_flight: InFlight,
    function: Option<String>,
    key_id: Option<Uuid>,
    tenant_id: Option<Uuid>,
    environment_id: Option<Uuid>,
    /// The function's destination host, once the function is known.
    upstream_host: Option<String>,
    invocation: Option<Invocation>,
    /// What to redact from the response, when secrets were injected.
    redaction: Option<RequestRedaction>,
    /// The body redactor of the current upstream response.
    body_redactor: Option<BodyRedactor>,
    /// Whether the rendered request was handed to an upstream connection.
    sent_upstream: bool,
    /// When the whole upstream exchange must be over (the function's timeout).
    deadline: Option<Instant>,
    upstream_status: Option<u16>,
    /// A gateway error raised inside a Pingora hook, answered as is by `fail_to_proxy`.
    failure: Option<GatewayError>,
    /// What an invocation that injected OAuth tokens needs to render again (401 retry).
    oauth: Option<Box<OAuthInvocation>>,
    /// Whether a stale pooled connection was already retried.
    stale_retried: bool,
    /// The gateway error answered, for the access log and events.
    error: Option<GatewayError>,
}

impl RequestCtx {
    fn timeout_ms(&self) -> u64 {
        self.invocation.as_ref().map_or(0, |invocation| {
            u64::try_from(invocation.timeout.as_millis()).unwrap_or(u64::MAX)
        })
    }

    fn remaining(&self) -> Duration {
        self.deadline
            .map_or(Duration::ZERO, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1))
    }
}

/// An invocation that injected OAuth tokens: enough to render it again with new ones.
struct OAuthInvocation {
    environment: Arc<CompiledEnvironment>,
    function: Arc<CompiledFunction>,
    args: serde_json::Map<String, serde_json::Value>,
    values: OAuthValues,
    /// The upstream refused the token (401): replace it before the retry.
    retry_pending: bool,
    /// The one retry has been used.
    retried: bool,
}

/// The data plane's proxy logic.
pub(crate) struct Gateway {
    state: Arc<GatewayState>,
}

impl Gateway {
    pub(crate) fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }

    /// Steps 1-5 of the request path. `Ok(true)` when a response was already written.
    async fn prepare(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool, GatewayError> {
        let request = session.req_header();
        let route = route::route(&request.method, request.uri.path())?;
        let function = match route {
            Route::Health => {
                respond_json(session, ctx, 200, br#"{"status":"ok"}"#).await;
                return Ok(true);
            }
            Route::Ready if self.state.is_ready() => {
                respond_json(session, ctx, 200, br#"{"status":"ready"}"#).await;
                return Ok(true);
            }
            Route::Ready => return Err(GatewayError::NotReady),
            Route::OAuthCallback => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                let snapshot = self.state.store.load();
                let page = self
                    .state
                    .tokens
                    .callback(&snapshot, &query, &ctx.request_id)
                    .await;
                respond_page(session, ctx, page.status, page.body).await;
                return Ok(true);
            }
            Route::OAuthHandle { connection } => {
                self.issue_handle(session, ctx, &connection).await?;
                return Ok(true);
            }
            Route::Invoke { function } => function,
        };
        ctx.function = Some(function.clone());

        let snapshot = self.state.store.load();
        let binding = auth::authenticate(&snapshot, &session.req_header().headers)?;
        let environment = &binding.environment;
        ctx.key_id = Some(binding.grant().id);
        ctx.tenant_id = Some(environment.tenant_id);
        ctx.environment_id = Some(environment.environment_id);
        let now = chrono::Utc::now();
        auth::ensure_unexpired(&binding, now)?;
        binding.record_use(now);
        let found = environment.function(&function);
        auth::ensure_granted(&binding, &function, found.map(|f| &**f))?;
        let compiled = found.ok_or_else(|| GatewayError::FunctionNotFound(function.clone()))?;
        ctx.upstream_host = Some(compiled.template.host.clone());

        let body = read_invoke_body(session).await?;
        let args = render::parse_arguments(&body)?;
        // Only a function naming a connection, or an object argument (a possible handle),
        // pays for OAuth.
        let invocation = if compiled.oauth_connections.is_empty()
            && !args.values().any(serde_json::Value::is_object)
        {
            let invocation = render::render(compiled, environment, &args)?;
            if !invocation.secrets.is_empty() {
                ctx.redaction = Some(
                    environment.request_redaction(invocation.secrets.iter().map(String::as_str)),
                );
            }
            invocation
        } else {
            let values = self.fetch_tokens(&binding, compiled, &args).await?;
            let invocation =
                render::render_with_oauth(compiled, environment, &args, Some(&values))?;
            if !invocation.secrets.is_empty() || !invocation.oauth.is_empty() {
                ctx.redaction = Some(oauth_redaction(environment, &invocation, &values, None));
            }
            if !invocation.oauth.is_empty() {
                ctx.oauth = Some(Box::new(OAuthInvocation {
                    environment: environment.clone(),
                    function: compiled.clone(),
                    args,
                    values,
                    retry_pending: false,
                    retried: false,
                }));
            }
            invocation
        };
        ctx.deadline = Some(Instant::now() + invocation.timeout);
        ctx.invocation = Some(invocation);
        Ok(false)
    }

    /// The tokens an invocation needs: of the connections its templates name, and of the
    /// handles among its arguments that verify (for this environment and this API key).
    async fn fetch_tokens(
        &self,
        binding: &KeyBinding,
        function: &CompiledFunction,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<OAuthValues, GatewayError> {
        let environment = &binding.environment;
        let key_id = binding.grant().id;
        let now = chrono::Utc::now();
        let mut values = OAuthValues::default();
        for handle in function.template.oauth_handles(args) {
            let connection = self
                .state
                .tokens
                .handles()
                .verify(handle, now)
                .filter(|claims| {
                    claims.environment_id == environment.environment_id
                        && claims.api_key_id == key_id
                })
                .and_then(|claims| environment.oauth.connection_name(&claims.connection_id));
            // An unverified handle is left out: rendering refuses it (invalid_oauth_handle).
            if let Some(connection) = connection {
                values
                    .handles
                    .push((handle.to_string(), connection.to_string()));
            }
        }
        let mut names: Vec<&str> = function
            .oauth_connections
            .iter()
            .map(String::as_str)
            .collect();
        for (_, connection) in &values.handles {
            if !names.contains(&connection.as_str()) {
                names.push(connection);
            }
        }
        // Host binding before anything else: a token that may not go to this host is not
        // even fetched (rendering checks again what was actually injected).
        for name in &names {
            if let Some(client) = environment.oauth.client_of(name) {
                if !is_allowed(&client.allowed_hosts, &function.template.host) {
                    return Err(GatewayError::OAuthHostDenied {
                        connection: name.to_string(),
                        host: function.template.host.clone(),
                    });
                }
            }
        }
        let deadline = Instant::now() + Duration::from_millis(function.template.timeout_ms.max(1));
        let mut tokens = Vec::with_capacity(names.len());
        for name in names {
            let live = self
                .state
                .tokens
                .access_token(environment, name, deadline)
                .await
                .map_err(GatewayError::OAuth)?;
            tokens.push((name.to_string(), live));
        }
        values.tokens = tokens;
        Ok(values)
    }

    /// `POST /v1/oauth/connections/{name}/handle`: a handle for the caller's environment and
    /// API key.
    async fn issue_handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        connection: &str,
    ) -> Result<(), GatewayError> {
        let snapshot = self.state.store.load();
        let binding = auth::authenticate(&snapshot, &session.req_header().headers)?;
        let environment = &binding.environment;
        ctx.key_id = Some(binding.grant().id);
        ctx.tenant_id = Some(environment.tenant_id);
        ctx.environment_id = Some(environment.environment_id);
        let now = chrono::Utc::now();
        auth::ensure_unexpired(&binding, now)?;
        binding.record_use(now);
        let (spec, _) = environment
            .oauth
            .connection(connection)
            .ok_or_else(|| GatewayError::OAuthConnectionNotFound(connection.to_string()))?;
        let expires_at = now + chrono::Duration::seconds(HANDLE_TTL_SECONDS);
        let handle = self.state.tokens.handles().issue(&HandleClaims {
            environment_id: environment.environment_id,
            connection_id: spec.id,
            api_key_id: binding.grant().id,
            expires_at,
        });
        let body = serde_json::json!({
            "handle": handle,
            "connection": connection,
            "expiresAt": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|_| GatewayError::Internal)?);
        let written = async {
            let header = json_response_header(200, &ctx.request_id, body.len())?;
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session.write_response_body(Some(body), true).await
        };
        if let Err(error) = written.await {
            tracing::debug!(request_id = %ctx.request_id, %error, "could not write response");
        }
        Ok(())
    }

    /// Before the retry of a request whose token the upstream refused: new tokens, rendered
    /// again (see the module docs).
    async fn replace_rejected_tokens(&self, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        let deadline = ctx.deadline.unwrap_or_else(Instant::now);
        let Some(oauth) = ctx.oauth.as_mut() else {
            return Ok(());
        };
        oauth.retry_pending = false;
        oauth.retried = true;
        let mut replaced = Vec::with_capacity(oauth.values.tokens.len());
        for (name, rejected) in &oauth.values.tokens {
            let live = self
                .state
                .tokens
                .replace_rejected(&oauth.environment, name, rejected.generation, deadline)
                .await
                .map_err(GatewayError::OAuth)?;
            replaced.push((name.clone(), live));
        }
        let previous = std::mem::replace(&mut oauth.values.tokens, replaced);
        let invocation = render::render_with_oauth(
            &oauth.function,
            &oauth.environment,
            &oauth.args,
            Some(&oauth.values),
        )?;
        // Redact the old tokens too: the upstream may echo what it saw earlier.
        ctx.redaction = Some(oauth_redaction(
            &oauth.environment,
            &invocation,
            &oauth.values,
            Some(&previous),
        ));
        ctx.invocation = Some(invocation);
        Ok(())
    }
}

/// The redaction of a request that injected secrets and OAuth tokens (and, after a 401
/// retry, the tokens it replaced).
fn oauth_redaction(
    environment: &CompiledEnvironment,
    invocation: &Invocation,
    values: &OAuthValues,
    previous: Option<&[(String, Arc<crate::oauth::LiveTokens>)]>,
) -> RequestRedaction {
    let mut indexes = environment.secret_redactions(invocation.secrets.iter().map(String::as_str));
    let used = |name: &String| invocation.oauth.contains(name);
    for (name, live) in values.tokens.iter().chain(previous.into_iter().flatten()) {
        if used(name) {
            indexes.push(live.redaction.clone());
        }
    }
    RequestRedaction::new(indexes)
}

/// Read the whole invoke body (see the module docs for why the retry buffer is armed).
async fn read_invoke_body(session: &mut Session) -> Result<Bytes, GatewayError> {
    let declared = declared_length(session.req_header())?;
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(GatewayError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let downstream = session.as_downstream_mut();
    if downstream.is_body_empty() {
        return Ok(Bytes::new());
    }
    let expects_continue = downstream
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        downstream
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::BadRequest("the request could not be read"))?;
    }
    downstream.set_read_timeout(Some(BODY_READ_TIMEOUT));

    // Arm the 64 KiB retry buffer only once the rest of the body fits in it: it must end up
    // holding data (so Pingora calls request_body_filter) without being truncated (which
    // empties it). Pingora reads at most 64 KiB at a time, so the last read lands in it.
    let arm_at = declared.map_or(0, |len| len.saturating_sub(RETRY_BUFFER_BYTES));
    let mut armed = false;
    // Grow as bytes arrive rather than trusting the declared length up front.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(RETRY_BUFFER_BYTES));
    loop {
        if !armed && body.len() >= arm_at {
            downstream.enable_retry_buffering();
            armed = true;
        }
        let chunk = match downstream.read_request_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) if error.etype() == &ErrorType::ReadTimedout => {
                return Err(GatewayError::BadRequest(
                    "timed out reading the request body",
                ))
            }
            Err(_) => {
                return Err(GatewayError::BadRequest(
                    "the request body could not be read",
                ))
            }
        };
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(GatewayError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    if !body.is_empty() && downstream.get_retry_buffer().is_none() {
        return Err(match declared {
            None => GatewayError::ChunkedBodyTooLarge {
                limit: RETRY_BUFFER_BYTES,
            },
            Some(_) => {
                tracing::error!(
                    len = body.len(),
                    "request body did not land in the retry buffer"
                );
                GatewayError::Internal
            }
        });
    }
    Ok(body.freeze())
}

/// The body length the client declared with `content-length`, `None` for chunked bodies.
/// Pingora has already refused ambiguous framing (both headers, conflicting lengths).
fn declared_length(request: &RequestHeader) -> Result<Option<usize>, GatewayError> {
    if request.headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(None);
    }
    match request.headers.get(header::CONTENT_LENGTH) {
        None => Ok(Some(0)),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or(GatewayError::BadRequest("invalid content-length")),
    }
}

/// Write a JSON response the gateway produces itself. A failed write means the client is
/// gone; there is nobody left to tell.
async fn respond_json(session: &mut Session, ctx: &RequestCtx, status: u16, body: &'static [u8]) {
    let written = async {
        let header = json_response_header(status, &ctx.request_id, body.len())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(Bytes::from_static(body)), true)
            .await
    };
    if let Err(error) = written.await {
        tracing::debug!(request_id = %ctx.request_id, %error, "could not write response");
    }
}

/// Write a small HTML page (the OAuth callback's answer). Nothing in it comes from the
/// request.
async fn respond_page(session: &mut Session, ctx: &RequestCtx, status: u16, body: String) {
    let body = Bytes::from(body);
    let written = async {
        let mut header = ResponseHeader::build(status, Some(8))?;
        header.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
        header.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        header.insert_header(header::CACHE_CONTROL, "no-store")?;
        header.insert_header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        )?;
        header.insert_header("referrer-policy", "no-referrer")?;
        header.insert_header("x-frame-options", "DENY")?;
        header.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await
    };
    if let Err(error) = written.await {
        tracing::debug!(request_id = %ctx.request_id, %error, "could not write response");
    }
}

/// Write `error` as the response (the one place gateway errors become HTTP).
async fn respond_error(session: &mut Session, ctx: &mut RequestCtx, error: &GatewayError) {
    ctx.error = Some(error.clone());
    if session
        .response_written()
        .is_some_and(|response| !response.status.is_informational())
    {
        // The upstream's response head is already out (e.g. the deadline passed mid-body):
        // the only signal left is the connection closing.
        return;
    }
    if !session.as_downstream_mut().is_body_done() {
        // Answering before the body is read: by default Pingora then closes the connection,
        // and a client still uploading sees a reset instead of this answer. Up to a limit,
        // keep the connection so Pingora drains the rest of the body after the response;
        // huge or endless bodies are cut off.
        let drainable = declared_length(session.req_header())
            .ok()
            .flatten()
            .is_some_and(|len| len <= DRAIN_LIMIT_BYTES);
        let downstream = session.as_downstream_mut();
        if drainable {
            downstream.set_close_on_response_before_downstream_finish(false);
            downstream.set_read_timeout(Some(BODY_READ_TIMEOUT));
            downstream.set_total_drain_timeout(Some(BODY_READ_TIMEOUT));
        } else {
            downstream.set_keepalive(None);
        }
    }
    let body = error.body(&ctx.request_id);
    let written = async {
        let header = error.response_header(&ctx.request_id, body.len())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await
    };
    if let Err(write_error) = written.await {
        tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not write error response");
    }
}

fn internal(what: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, what)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: Uuid::now_v7().to_string(),
            started: Instant::now(),
            _in_flight: InFlight::new(&self.state),
            function: None,
            key_id: None,
            tenant_id: None,
            environment_id: None,
            upstream_host: None,
            invocation: None,
            redaction: None,
            body_redactor: None,
            sent_upstream: false,
            deadline: None,
            upstream_status: None,
            failure: None,
            oauth: None,
            stale_retried: false,
            error: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        match self.prepare(session, ctx).await {
            Ok(answered) => Ok(answered),
            Err(error) => {
                respond_error(session, ctx, &error).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        if ctx.oauth.as_ref().is_some_and(|oauth| oauth.retry_pending) {
            if let Err(error) = self.replace_rejected_tokens(ctx).await {
                ctx.failure = Some(error);
                return Err(internal("no replacement for the refused OAuth token"));
            }
        }
        let remaining = ctx.remaining();
        let invocation = ctx
            .invocation
            .as_ref()
            .ok_or_else(|| internal("no rendered request"))?;
        match self
            .state
            .resolver
            .resolve(&invocation.host, invocation.port, remaining)
            .await
        {
            Ok(addr) => Ok(Box::new(upstream::peer(invocation, addr, remaining))),
            Err(error) => {
                ctx.failure = Some(error);
                Err(Error::explain(
                    ErrorType::ConnectNoRoute,
                    "cannot resolve the upstream host",
                ))
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let invocation = ctx
            .invocation
            .as_ref()
            .ok_or_else(|| internal("no rendered request"))?;
        // A fresh head: method, target, Host and the rendered headers only. Nothing of the
        // client's request (its Authorization header above all) is carried over.
        let mut request = RequestHeader::build(
            invocation.method.clone(),
            invocation.path_and_query.as_bytes(),
            Some(invocation.headers.len() + 2),
        )?;
        request.insert_header(header::HOST, invocation.authority.clone())?;
        for (name, value) in &invocation.headers {
            request.append_header(name.clone(), value.clone())?;
        }
        match &invocation.body {
            Some(body) => request.insert_header(header::CONTENT_LENGTH, body.len().to_string())?,
            // Without a length Pingora would frame the (replaced) downstream body as chunked.
            None if matches!(invocation.method.as_str(), "POST" | "PUT" | "PATCH")
                || !session.as_downstream_mut().is_body_empty() =>
            {
                request.insert_header(header::CONTENT_LENGTH, "0")?
            }
            None => {}
        }
        *upstream_request = request;
        ctx.sent_upstream = true;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The client's bytes are the arguments, never the upstream body: replace them with
        // the rendered body once, when Pingora signals the end of the downstream body.
        *body = if end_of_stream {
            ctx.invocation
                .as_ref()
                .and_then(|invocation| invocation.body.clone())
        } else {
            None
        };
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if upstream_response.status.is_informational() {
            if let Some(redaction) = &ctx.redaction {
                // Interim responses (103 Early Hints...) can reach the client too.
                redact::redact_headers(upstream_response, redaction);
            }
            return Ok(());
        }
        if upstream_response.status == http::StatusCode::UNAUTHORIZED {
            let in_time = ctx
                .deadline
                .is_some_and(|deadline| Instant::now() < deadline);
            if let Some(oauth) = ctx.oauth.as_mut().filter(|o| !o.retried && in_time) {
                // Retried with a new token (module docs); nothing of this response is sent.
                oauth.retry_pending = true;
                return Err(Error::explain(
                    ErrorType::Custom("oauth_token_refused"),
                    "the upstream refused the OAuth access token",
                )
                .into_up());
            }
        }
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        // Headers the upstream nominated as hop-by-hop go too.
        let nominated: Vec<String> = upstream_response
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| {
                !name.is_empty() && name != "content-length" && name != "transfer-encoding"
            })
            .collect();
        // One pass over the names the response holds, then a removal for each dropped one
        // (most responses hold one or none; removing all nine unasked cost 3 000 instructions).
        let dropped: Vec<header::HeaderName> = upstream_response
            .headers
            .keys()
            .filter(|name| {
                DROPPED_RESPONSE_HEADERS.contains(name)
                    || nominated.iter().any(|nominated| name.as_str() == nominated)
            })
            .cloned()
            .collect();
        for name in &dropped {
            upstream_response.remove_header(name);
        }
        ctx.body_redactor = None;
        if let Some(redaction) = &ctx.redaction {
            match redact::redact_response_head(upstream_response, redaction) {
                Ok(redactor) => ctx.body_redactor = Some(redactor),
                Err(error) => {
                    ctx.failure = Some(GatewayError::UpstreamResponseRejected(error.to_string()));
                    return Err(Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "the upstream response cannot be redacted",
                    )
                    .into_up());
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        response.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        // Per-read timeouts cannot stop an upstream that trickles; the deadline covers the
        // whole response.
        if !end_of_stream
            && ctx
                .deadline
                .is_some_and(|deadline| Instant::now() > deadline)
        {
            ctx.failure = Some(GatewayError::UpstreamTimeout {
                timeout_ms: ctx.timeout_ms(),
            });
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "upstream response exceeded the function timeout",
            )
            .into_up());
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        let Some(redactor) = ctx.body_redactor.as_mut() else {
            return Ok(None);
        };
        match redactor.push(body.as_deref(), end_of_stream) {
            Ok(redacted) => *body = redacted,
            Err(error) => {
                // The head is already out: the client sees the body cut short.
                ctx.failure = Some(GatewayError::UpstreamResponseRejected(error.to_string()));
                return Err(Error::explain(
                    ErrorType::ReadError,
                    "the upstream response body cannot be redacted",
                )
                .into_up());
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Retrying a refused or timed-out connection would only double the wait.
        e.set_retry(false);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if ctx.oauth.as_ref().is_some_and(|oauth| oauth.retry_pending) {
            // The upstream refused the token: retry once with a new one (module docs).
            e.set_retry(true);
            return e;
        }
        // Pingora's default policy looks at the downstream method (always POST here). What
        // matters is the upstream method: a stale pooled connection may be retried only when
        // repeating the upstream request is harmless, and only within the deadline.
        let idempotent = ctx
            .invocation
            .as_ref()
            .is_some_and(|invocation| invocation.method.is_idempotent());
        let in_time = ctx
            .deadline
            .is_some_and(|deadline| Instant::now() < deadline);
        if idempotent && in_time && ctx.failure.is_none() && !ctx.stale_retried {
            e.retry.decide_reuse(client_reused);
            ctx.stale_retried = e.retry();
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = ctx
            .failure
            .take()
            .or_else(|| GatewayError::from_proxy_error(e, ctx.timeout_ms()));
        let error_code = match error {
            Some(error) => {
                // Pingora closes the client connection after a proxy failure whatever we return
                // below; say so in the response, or the client may reuse a dying connection.
                session.set_keepalive(None);
                respond_error(session, ctx, &error).await;
                error.status()
            }
            None => 0,
        };
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        // Pingora's default summary includes the query string; ours never does.
        let request = session.req_header();
        format!(
            "{} {}, request_id: {}, function: {}",
            request.method,
            request.uri.path(),
            ctx.request_id,
            ctx.function.as_deref().unwrap_or("-"),
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|response| response.status.as_u16())
            .or_else(|| ctx.error.as_ref().map(GatewayError::status))
            .unwrap_or(0);
        let no_secrets: &[String] = &[];
        let sent = ctx.sent_upstream;
        let report = RequestReport {
            request_id: &ctx.request_id,
            tenant_id: ctx.tenant_id,
            environment_id: ctx.environment_id,
            function: ctx.function.as_deref(),
            api_key_id: ctx.key_id,
            upstream_host: ctx.upstream_host.as_deref(),
            secrets_sent: match &ctx.invocation {
                Some(invocation) if sent => &invocation.secrets,
                _ => no_secrets,
            },
            oauth_sent: match &ctx.invocation {
                Some(invocation) if sent => &invocation.oauth,
                _ => no_secrets,
            },
            upstream_status: ctx.upstream_status,
            error: ctx.error.as_ref(),
            status,
        };
        for event in report.events() {
            self.state.events.emit(event);
        }
        let request = session.req_header();
        let duration_ms = u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            target: crate::log_writer::ACCESS_LOG_TARGET,
            request_id = %ctx.request_id,
            method = %request.method,
            path = request.uri.path(),
            function = ctx.function.as_deref(),
            key_id = ctx.key_id.map(tracing::field::display),
            environment_id = ctx.environment_id.map(tracing::field::display),
            status,
            upstream_status = ctx.upstream_status,
            error = ctx.error.as_ref().map(GatewayError::code),
            proxy_error = e.map(|e| e.etype().as_str()),
            duration_ms,
            "request"
        );
    }
}
