//! The data plane's HTTP application: the invoke request path, on Pingora's HTTP/1 sessions,
//! upstream connector and connection pool.
//!
//! Each request runs these steps in order ([`Gateway::serve`]):
//! 1. route, authenticate the API key, check its scope ([`route`], [`auth`]);
//! 2. read the arguments (the whole request body) and render the upstream request, checking
//!    that its secrets may go to its host ([`render`]); every gateway error is answered here;
//! 3. the upstream exchange: a pooled connection, the rendered request, the response head
//!    ([`exchange`], [`upstream`]), with the retries described below;
//! 4. the response head: hop-by-hop headers and `set-cookie` dropped, injected secrets
//!    redacted from the headers ([`redact`]), the request id added;
//! 5. the body, decoded and redacted as it streams;
//! 6. one access log line and the request's events ([`report`]), queued without waiting
//!    ([`crate::events`]).
//!
//! Why not Pingora's `ProxyHttp`: an invocation is not a transparent proxy. The client's body
//! is the arguments, never the upstream body; the upstream request is built from scratch; the
//! retry rules depend on the upstream method and on OAuth tokens. `ProxyHttp` forwards the
//! downstream request through a duplex task pipeline (two channels and a cloned request head
//! per request), and the rendered body could only be substituted through its retry buffer.
//! Driving the sessions directly does the same work with less CPU (29 % less per invoke than
//! the `ProxyHttp` version, docs/BENCHMARKS.md) and says what happens in one place.
//!
//! ## Retries
//!
//! - A pooled connection that fails before anything of the response arrived was most likely
//!   closed by the upstream while idle: the request is sent again once on a new connection,
//!   if the upstream method is idempotent and the function's deadline has not passed.
//! - OAuth: a function whose templates name `{{oauth.NAME}}`, or an invocation whose
//!   arguments hold `{"$oauth": HANDLE}`, gets its tokens from the [`crate::oauth::TokenManager`]
//!   before rendering (lock-free when they are valid); others do no OAuth work at all. When
//!   the upstream answers 401 to a request that injected a token, the token may have been
//!   revoked or rotated before its announced expiry: the tokens are replaced
//!   ([`crate::oauth::TokenManager::replace_rejected`]: a refresh only if the rejected
//!   generation is still the current one, so 200 simultaneous 401s cause one refresh), the
//!   request is rendered again and sent once more, whatever the method: a 401 means the
//!   upstream did not act on the request. If no new token can be had, the client gets the
//!   gateway's OAuth error (the upstream's 401 is not passed on).

mod auth;
pub mod error;
mod exchange;
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
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::sync::Notify;
use uuid::Uuid;

use self::error::{json_response_header, GatewayError, REQUEST_ID_HEADER};
use self::redact::{BodyRedactor, RequestRedaction};
use self::render::{Invocation, OAuthValues};
use self::report::RequestReport;
use self::route::Route;
use self::upstream::{Resolver, POOL_IDLE_TIMEOUT};
use crate::events::EventEmitter;
use crate::oauth::handle::{HandleClaims, HANDLE_TTL_SECONDS};
use crate::oauth::TokenManager;
use crate::snapshot::{CompiledEnvironment, CompiledFunction, KeyBinding, SnapshotStore};

/// Largest accepted invoke body (`content-length` or chunked).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
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
pub(crate) struct GatewayState {
    pub(crate) store: Arc<SnapshotStore>,
    pub(crate) events: EventEmitter,
    pub(crate) tokens: TokenManager,
    resolver: Resolver,
    /// Upstream connections (TCP and TLS), pooled per peer.
    connector: Connector,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    /// Set once Pingora stops the service; idle keep-alive connections waiting for their next
    /// request are woken through `stopped` and closed.
    stopping: AtomicBool,
    stopped: Notify,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("in_flight", &self.in_flight)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
    pub(crate) fn new(
        store: Arc<SnapshotStore>,
        events: EventEmitter,
        tokens: TokenManager,
        connector: Connector,
    ) -> Self {
        Self {
            store,
            events,
            tokens,
            resolver: Resolver::default(),
            connector,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
        }
    }

    /// Requests currently being handled.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// From now on `/readyz` answers 503, so load balancers move traffic away, and responses
    /// close their connections.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.store.is_synced() && !self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the service is stopping (at once if it already is).
    async fn stopping(&self) {
        let stopped = self.stopped.notified();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        stopped.await;
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

/// Per-request state, shared by the steps.
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
    /// Whether the rendered request was handed to an upstream connection.
    sent_upstream: bool,
    /// When the whole upstream exchange must be over (the function's timeout).
    deadline: Option<Instant>,
    upstream_status: Option<u16>,
    /// What an invocation that injected OAuth tokens needs to render again (401 retry).
    oauth: Option<Box<OAuthInvocation>>,
    /// Whether a stale pooled connection was already retried.
    stale_retried: bool,
    /// The gateway error answered (or, once the response head was out, that cut it short),
    /// for the access log and events.
    error: Option<GatewayError>,
    /// The Pingora error behind a failed upstream exchange, for the access log.
    proxy_error: Option<ErrorType>,
}

impl RequestCtx {
    fn new(state: &Arc<GatewayState>) -> Self {
        // Encoded into a buffer, without `to_string`'s `Display` machinery.
        let mut request_id = Uuid::encode_buffer();
        let request_id = Uuid::now_v7().hyphenated().encode_lower(&mut request_id);
        Self {
            request_id: request_id.to_owned(),
            started: Instant::now(),
            _in_flight: InFlight::new(state),
            function: None,
            key_id: None,
            tenant_id: None,
            environment_id: None,
            upstream_host: None,
            invocation: None,
            redaction: None,
            sent_upstream: false,
            deadline: None,
            upstream_status: None,
            oauth: None,
            stale_retried: false,
            error: None,
            proxy_error: None,
        }
    }

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

    fn in_time(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() < deadline)
    }

    /// The gateway error for a failed upstream exchange.
    fn upstream_failure(&mut self, error: &Error) -> GatewayError {
        self.proxy_error = Some(error.etype().clone());
        GatewayError::from_proxy_error(error, self.timeout_ms()).unwrap_or(GatewayError::Internal)
    }
}

/// An invocation that injected OAuth tokens: enough to render it again with new ones.
struct OAuthInvocation {
    environment: Arc<CompiledEnvironment>,
    function: Arc<CompiledFunction>,
    args: serde_json::Map<String, serde_json::Value>,
    values: OAuthValues,
    /// The one retry has been used.
    retried: bool,
}

/// Whether the client connection may carry another request once this one is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Reusable,
    /// The response was cut short, or the client is gone.
    Close,
}

/// The data plane's HTTP application.
pub(crate) struct Gateway {
    state: Arc<GatewayState>,
}

impl Gateway {
    pub(crate) fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }

    /// Answer one request (steps 1 to 5 of the module docs).
    async fn serve(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Connection {
        match self.prepare(session, ctx).await {
            Ok(true) => Connection::Reusable,
            Ok(false) => self.forward(session, ctx).await,
            Err(error) => {
                respond_error(session, ctx, &error).await;
                Connection::Reusable
            }
        }
    }

    /// Steps 1 and 2. `Ok(true)` when a response was already written (probes, the OAuth
    /// callback and handles).
    async fn prepare(
        &self,
        session: &mut ServerSession,
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
                    retried: false,
                }));
            }
            invocation
        };
        ctx.deadline = Some(Instant::now() + invocation.timeout);
        ctx.invocation = Some(invocation);
        Ok(false)
    }

    /// Steps 3 to 5: the upstream exchange, then the response, streamed.
    async fn forward(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Connection {
        let (mut upstream, peer) = match self.exchange(ctx).await {
            Ok(exchanged) => exchanged,
            Err(error) => {
                respond_error(session, ctx, &error).await;
                return Connection::Reusable;
            }
        };
        // The upstream connection is dropped (closed) on every early return below: its
        // response was not read to the end.
        let (head, mut redactor) = match response_head(&upstream, ctx) {
            Ok(head) => head,
            Err(error) => {
                respond_error(session, ctx, &error).await;
                return Connection::Reusable;
            }
        };
        if session.write_response_header(Box::new(head)).await.is_err() {
            return Connection::Close;
        }
        loop {
            let chunk = if upstream.response_done() {
                None
            } else {
                match read_body_in_time(&mut upstream, ctx).await {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        // The head is already out: the client sees the body cut short.
                        ctx.error = Some(error);
                        return Connection::Close;
                    }
                }
            };
            let end = chunk.is_none() || upstream.response_done();
            let chunk = match redactor.as_mut() {
                Some(redactor) => match redactor.push(chunk.as_deref(), end) {
                    Ok(redacted) => redacted,
                    Err(error) => {
                        ctx.error = Some(GatewayError::UpstreamResponseRejected(error.to_string()));
                        return Connection::Close;
                    }
                },
                None => chunk,
            };
            if session
                .write_response_body(chunk.unwrap_or_default(), end)
                .await
                .is_err()
            {
                return Connection::Close;
            }
            if end {
                break;
            }
        }
        self.state
            .connector
            .release_http_session(upstream, &peer, Some(POOL_IDLE_TIMEOUT))
            .await;
        Connection::Reusable
    }

    /// Step 3: send the rendered request and read the response head, retrying a stale pooled
    /// connection and a refused OAuth token once each (module docs).
    async fn exchange(
        &self,
        ctx: &mut RequestCtx,
    ) -> Result<(UpstreamSession, HttpPeer), GatewayError> {
        loop {
            let remaining = ctx.remaining();
            let invocation = ctx.invocation.as_ref().ok_or(GatewayError::Internal)?;
            let addr = self
                .state
                .resolver
                .resolve(&invocation.host, invocation.port, remaining)
                .await?;
            let peer = upstream::peer(invocation, addr, remaining);
            let (mut upstream, reused) = match self.state.connector.get_http_session(&peer).await {
                Ok(connected) => connected,
                // Retrying a refused or timed-out connection would only double the wait.
                Err(mut error) => {
                    error.as_up();
                    return Err(ctx.upstream_failure(&error));
                }
            };
            ctx.sent_upstream = true;
            let invocation = ctx.invocation.as_ref().ok_or(GatewayError::Internal)?;
            let sent = exchange::send(&mut upstream, reused, invocation, ctx.remaining()).await;
            // Only what is harmless to repeat is sent again after a stale connection.
            let repeatable = invocation.method.is_idempotent();
            if let Err(failure) = sent {
                if failure.stale_connection && repeatable && ctx.in_time() && !ctx.stale_retried {
                    ctx.stale_retried = true;
                    continue;
                }
                return Err(ctx.upstream_failure(&failure.error));
            }
            let refused_token = upstream
                .response_header()
                .is_some_and(|head| head.status == http::StatusCode::UNAUTHORIZED);
            let in_time = ctx.in_time();
            if refused_token {
                if let Some(oauth) = ctx.oauth.as_mut().filter(|o| !o.retried && in_time) {
                    // Nothing of this response is sent; its connection is dropped.
                    oauth.retried = true;
                    self.replace_rejected_tokens(ctx).await?;
                    continue;
                }
            }
            return Ok((upstream, peer));
        }
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
        session: &mut ServerSession,
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
            session.write_response_header(Box::new(header)).await?;
            session.write_response_body(body, true).await
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

/// Step 4: the client's response head, made from the upstream's, and the body's redactor when
/// secrets were injected.
fn response_head(
    upstream: &UpstreamSession,
    ctx: &mut RequestCtx,
) -> Result<(ResponseHeader, Option<BodyRedactor>), GatewayError> {
    let mut head = upstream
        .response_header()
        .ok_or(GatewayError::Internal)?
        .clone();
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(GatewayError::UpstreamResponseRejected(
            "the upstream switched protocols, which nothing asked for".into(),
        ));
    }
    ctx.upstream_status = Some(head.status.as_u16());
    // Headers the upstream nominated as hop-by-hop go too.
    let nominated: Vec<String> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty() && name != "content-length" && name != "transfer-encoding")
        .collect();
    // One pass over the names the response holds, then a removal for each dropped one
    // (most responses hold one or none; removing all nine unasked cost 3 000 instructions).
    let dropped: Vec<header::HeaderName> = head
        .headers
        .keys()
        .filter(|name| {
            DROPPED_RESPONSE_HEADERS.contains(name)
                || nominated.iter().any(|nominated| name.as_str() == nominated)
        })
        .cloned()
        .collect();
    for name in &dropped {
        head.remove_header(name);
    }
    let redactor = match &ctx.redaction {
        Some(redaction) => Some(
            redact::redact_response_head(&mut head, redaction)
                .map_err(|error| GatewayError::UpstreamResponseRejected(error.to_string()))?,
        ),
        None => None,
    };
    set_framing(&mut head, ctx);
    head.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())
        .map_err(|_| GatewayError::Internal)?;
    Ok((head, redactor))
}

/// How the client's response body is delimited. The client's request is always a `POST`,
/// whatever the upstream method: the answer to an upstream `HEAD` has no body, so it says
/// `content-length: 0` (the upstream's length describes a body that is not sent). A body of
/// unknown length (HTTP/1.0 style, or decoded for redaction) is sent chunked, so the client
/// connection stays reusable.
fn set_framing(head: &mut ResponseHeader, ctx: &RequestCtx) {
    let upstream_head = ctx
        .invocation
        .as_ref()
        .is_some_and(|invocation| invocation.method == http::Method::HEAD);
    if upstream_head {
        head.remove_header(&header::TRANSFER_ENCODING);
        // A static value into a map that has room: cannot fail.
        let _ = head.insert_header(header::CONTENT_LENGTH, "0");
        return;
    }
    let bodiless = matches!(head.status.as_u16(), 204 | 304);
    if !bodiless
        && !head.headers.contains_key(header::CONTENT_LENGTH)
        && !head.headers.contains_key(header::TRANSFER_ENCODING)
    {
        head.set_version(http::Version::HTTP_11);
        let _ = head.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
}

/// Read the next piece of the upstream's body within the function's deadline. Per-read
/// timeouts alone cannot stop an upstream that trickles; the deadline covers the whole
/// response.
async fn read_body_in_time(
    upstream: &mut UpstreamSession,
    ctx: &mut RequestCtx,
) -> Result<Option<Bytes>, GatewayError> {
    let timed_out = GatewayError::UpstreamTimeout {
        timeout_ms: ctx.timeout_ms(),
    };
    if !ctx.in_time() {
        ctx.proxy_error = Some(ErrorType::ReadTimedout);
        return Err(timed_out);
    }
    upstream.set_read_timeout(Some(ctx.remaining()));
    upstream.read_response_body().await.map_err(|mut error| {
        error.as_up();
        ctx.upstream_failure(&error)
    })
}

/// Read the whole invoke body: the arguments.
async fn read_invoke_body(session: &mut ServerSession) -> Result<Bytes, GatewayError> {
    let declared = declared_length(session.req_header())?;
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(GatewayError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if session.is_body_empty() {
        return Ok(Bytes::new());
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // A response written before the body is read makes Pingora close the connection
        // afterwards (`respond_error`); the interim 100 is not such a response.
        session.set_close_on_response_before_downstream_finish(false);
        let written = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        written.map_err(|_| GatewayError::BadRequest("the request could not be read"))?;
    }
    session.set_read_timeout(Some(BODY_READ_TIMEOUT));
    // Grow as bytes arrive rather than trusting the declared length up front.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(64 * 1024));
    loop {
        let chunk = match session.read_request_body().await {
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
async fn respond_json(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    status: u16,
    body: &'static [u8],
) {
    let written = async {
        let header = json_response_header(status, &ctx.request_id, body.len())?;
        session.write_response_header(Box::new(header)).await?;
        session
            .write_response_body(Bytes::from_static(body), true)
            .await
    };
    if let Err(error) = written.await {
        tracing::debug!(request_id = %ctx.request_id, %error, "could not write response");
    }
}

/// Write a small HTML page (the OAuth callback's answer). Nothing in it comes from the
/// request.
async fn respond_page(session: &mut ServerSession, ctx: &RequestCtx, status: u16, body: String) {
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
        session.write_response_header(Box::new(header)).await?;
        session.write_response_body(body, true).await
    };
    if let Err(error) = written.await {
        tracing::debug!(request_id = %ctx.request_id, %error, "could not write response");
    }
}

/// Write `error` as the response (the one place gateway errors become HTTP).
async fn respond_error(session: &mut ServerSession, ctx: &mut RequestCtx, error: &GatewayError) {
    ctx.error = Some(error.clone());
    if session
        .response_written()
        .is_some_and(|response| !response.status.is_informational())
    {
        // The upstream's response head is already out (e.g. the deadline passed mid-body):
        // the only signal left is the connection closing.
        return;
    }
    if !session.is_body_done() {
        // Answering before the body is read: by default Pingora then closes the connection,
        // and a client still uploading sees a reset instead of this answer. Up to a limit,
        // keep the connection so Pingora drains the rest of the body after the response;
        // huge or endless bodies are cut off.
        let drainable = declared_length(session.req_header())
            .ok()
            .flatten()
            .is_some_and(|len| len <= DRAIN_LIMIT_BYTES);
        let downstream = &mut *session;
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
        session.write_response_header(Box::new(header)).await?;
        session.write_response_body(body, true).await
    };
    if let Err(write_error) = written.await {
        tracing::debug!(request_id = %ctx.request_id, error = %write_error, "could not write error response");
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            // An idle keep-alive connection while the service stops: close it.
            () = self.state.stopping() => return None,
        };
        match read {
            Ok(true) => {}
            // The client closed the connection.
            Ok(false) => return None,
            Err(error) => {
                if error.etype() == &ErrorType::InvalidHTTPHeader {
                    // Not HTTP/1, or ambiguous framing (a smuggling attempt): 400 and close.
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() || self.state.draining.load(Ordering::Acquire) {
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx::new(&self.state);
        let connection = self.serve(&mut session, &mut ctx).await;
        self.log_request(&session, &ctx);
        if connection == Connection::Close {
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        // Drains what is left of the request body (see `respond_error`) and keeps the
        // connection if the client asked for keep-alive.
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    async fn http_cleanup(&self) {
        self.state.stopping.store(true, Ordering::Release);
        self.state.stopped.notify_waiters();
    }
}

impl Gateway {
    /// Step 6: the access log line and the request's events.
    fn log_request(&self, session: &ServerSession, ctx: &RequestCtx) {
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
            proxy_error = ctx.proxy_error.as_ref().map(ErrorType::as_str),
            duration_ms,
            "request"
        );
    }
}
