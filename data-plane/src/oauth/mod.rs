//! OAuth 2 on the data plane: obtaining, refreshing, sharing and injecting access tokens,
//! the authorization-code callback, and handles.
//!
//! The control plane publishes each environment's OAuth clients, connections and pending
//! authorizations in its snapshot ([`CompiledOAuth`]); it never holds a plaintext token. The
//! data plane does everything that needs one ([`TokenManager`]), and seals every token it
//! obtains to the first key of its ring before the token leaves the process (to Redis, to the
//! control plane in an [`OAuthConnectionReport`]).
//!
//! ## Live tokens and the fast path
//!
//! Tokens are held per connection **id** (a republished snapshot keeps them; a connection
//! deleted and created again under the same name has a new id and starts empty), in an
//! [`ArcSwapOption`]: a request whose token is valid (`expires_at - refresh_skew > now`)
//! loads it without a lock, a network call or an allocation beyond the `Arc` clone.
//!
//! ## Single flight
//!
//! When the token is missing or expiring, the request takes the connection's tokio mutex and
//! checks again (the request before it may just have refreshed): concurrent requests of one
//! process wait for one refresh and share its result, success or failure.
//!
//! Across data-plane processes (Redis), the holder of the mutex first re-reads the shared
//! record; if another plane already stored a newer generation it adopts it (opening the
//! sealed tokens). Otherwise it takes the Redis refresh lock (`SET NX PX 15000`, random
//! value), re-reads once more, asks the token endpoint, seals the result with generation =
//! stored + 1 and writes it with a Lua script that checks the lock is still its own AND the
//! stored generation is still the one it read (fencing; see [`store`]). A plane that finds the
//! lock taken polls the record every 25 ms, within the lock's TTL and its request's deadline,
//! until a newer generation appears and adopts it; if the lock disappears without one (its
//! holder failed or crashed), it tries to take the lock itself. 200 concurrent requests over
//! two processes at expiry cause exactly one token request. Without Redis (`airlock dev`),
//! the in-process mutex is the single flight.
//!
//! A snapshot's [`SealedTokenSet`] is adopted too when its generation is higher than what is
//! held (a restarted plane, a flushed Redis, a completed re-authorization).
//!
//! ## Failures
//!
//! `invalid_grant` (and `invalid_client` / `unauthorized_client`) breaks the connection: the
//! broken state is written to the shared record (all planes see it), an `oauth.refresh_failed`
//! event and a `Broken` report go out, and requests fail with `oauth_connection_broken` until
//! the connection is authorized again. Other failures (network, 5xx, other errors) emit
//! `oauth.refresh_failed`, do not break anything, and are remembered for a second (in
//! process, and in the shared record for the other planes): requests in that second share
//! the failure instead of asking the provider again.
//!
//! ## Client secrets
//!
//! A client secret is a vault secret of the environment, named by the client, and like any
//! secret it only goes to hosts it is bound to: the token endpoint's host must be one of them,
//! or no token request is made (fail closed, `oauth_token_unavailable`).

pub(crate) mod callback;
pub(crate) mod endpoint;
pub(crate) mod handle;
pub(crate) mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_shared::events::{EventKind, GatewayEvent};
use airlock_shared::hosts::is_allowed;
use airlock_shared::oauth::{
    token_identity, token_identity_name, ConnectionStatus, OAuthClientSpec, OAuthConnectionReport,
    OAuthConnectionSpec, OAuthGrant, PendingAuthorization, SealedTokenSet, TokenKind,
};
use airlock_shared::seal::{OpeningKeyring, SealedSecret, SecretValue};
use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use uuid::Uuid;

use self::endpoint::{EndpointError, Grant, ObtainedTokens};
use self::store::{RedisTokenStore, StoredRecord, TokenRecord, LOCK_TTL, POLL_INTERVAL};
use crate::events::EventEmitter;
use crate::proxy::redact::RedactionIndex;
use crate::snapshot::CompiledEnvironment;

/// After a transient token-endpoint failure, requests share it for this long instead of
/// asking the provider again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// The OAuth part of a compiled environment.
#[derive(Debug, Default)]
pub struct CompiledOAuth {
    clients: HashMap<String, Arc<OAuthClientSpec>>,
    connections: HashMap<String, Arc<OAuthConnectionSpec>>,
    names_by_id: HashMap<Uuid, String>,
    /// Authorization-code flows waiting for their callback.
    pub(crate) authorizations: Vec<PendingAuthorization>,
}

impl CompiledOAuth {
    /// Compile the OAuth part of a snapshot.
    pub fn compile(
        clients: std::collections::BTreeMap<String, OAuthClientSpec>,
        connections: std::collections::BTreeMap<String, OAuthConnectionSpec>,
        authorizations: Vec<PendingAuthorization>,
    ) -> Self {
        let names_by_id = connections
            .iter()
            .map(|(name, spec)| (spec.id, name.clone()))
            .collect();
        Self {
            clients: clients.into_iter().map(|(n, c)| (n, Arc::new(c))).collect(),
            connections: connections
                .into_iter()
                .map(|(n, c)| (n, Arc::new(c)))
                .collect(),
            names_by_id,
            authorizations,
        }
    }

    /// Connection `name` and its client.
    pub fn connection(
        &self,
        name: &str,
    ) -> Option<(&Arc<OAuthConnectionSpec>, Option<&Arc<OAuthClientSpec>>)> {
        let connection = self.connections.get(name)?;
        Some((connection, self.clients.get(&connection.client)))
    }

    /// The name of the connection with this id.
    pub fn connection_name(&self, id: &Uuid) -> Option<&str> {
        self.names_by_id.get(id).map(String::as_str)
    }

    /// The client of connection `name`, if both exist.
    pub fn client_of(&self, name: &str) -> Option<&Arc<OAuthClientSpec>> {
        self.connection(name).and_then(|(_, client)| client)
    }

    /// Whether the environment has no OAuth at all.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.authorizations.is_empty()
    }
}

/// Why no token could be had for a connection. Messages name the connection and the
/// provider's error code, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("OAuth connection `{0}` does not exist in this environment")]
    ConnectionMissing(String),
    #[error("OAuth connection `{0}` is not connected yet: complete its authorization first")]
    NotConnected(String),
    #[error("OAuth connection `{connection}` is broken: the provider refused its token request ({error}); once the cause is fixed, reconnect it (startOAuthConnection) or, for client credentials, reset it (resetOAuthConnection)")]
    Broken { connection: String, error: String },
    #[error("no access token for OAuth connection `{connection}`: {reason}")]
    Unavailable { connection: String, reason: String },
}

impl OAuthError {
    /// The connection concerned.
    pub fn connection(&self) -> &str {
        match self {
            Self::ConnectionMissing(name) | Self::NotConnected(name) => name,
            Self::Broken { connection, .. } | Self::Unavailable { connection, .. } => connection,
        }
    }
}

/// Tokens held for a connection, opened.
pub struct LiveTokens {
    /// The generation (fencing number) these tokens were stored with.
    pub generation: i64,
    access: SecretValue,
    refresh: Option<SecretValue>,
    expires_at: Option<DateTime<Utc>>,
    /// When the provider issued them (bounds the refresh skew: see [`Self::is_valid_at`]).
    obtained_at: DateTime<Utc>,
    /// The forms of the access token, to redact responses that echo it.
    pub redaction: Arc<RedactionIndex>,
}

impl std::fmt::Debug for LiveTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTokens")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl LiveTokens {
    /// The access token, for rendering into an upstream request only.
    pub fn access_token(&self) -> &str {
        self.access.expose()
    }

    /// Whether the access token may still be used at `now`: it expires more than the skew
    /// later (or the provider did not say when it expires). The skew is at most half the
    /// token's lifetime: a skew as long as the lifetime (one hour for one-hour tokens) would
    /// otherwise send every request to the token endpoint.
    pub fn is_valid_at(&self, now: DateTime<Utc>, skew_seconds: u32) -> bool {
        self.expires_at.is_none_or(|expires_at| {
            let lifetime = (expires_at - self.obtained_at).max(chrono::Duration::zero());
            let skew = chrono::Duration::seconds(i64::from(skew_seconds)).min(lifetime / 2);
            expires_at - skew > now
        })
    }
}

/// What is held for a connection.
#[derive(Debug)]
enum Held {
    Live(Arc<LiveTokens>),
    /// Refused by the provider. `revision` is the environment's snapshot revision when this
    /// was learnt: a later snapshot that no longer says `Broken` (the control plane reset or
    /// reconnected the connection) lets the data plane try again.
    Broken {
        generation: i64,
        error: String,
        revision: i64,
    },
}

impl Held {
    fn generation(&self) -> i64 {
        match self {
            Self::Live(live) => live.generation,
            Self::Broken { generation, .. } => *generation,
        }
    }
}

/// One connection's state in this process.
#[derive(Debug, Default)]
struct Slot {
    held: ArcSwapOption<Held>,
    /// Taken by the one request that refreshes (single flight in process).
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Debug, Default)]
struct RefreshState {
    /// The last transient failure, shared with requests for [`FAILURE_BACKOFF`].
    last_failure: Option<(Instant, OAuthError)>,
}

/// What a token request is for: the connection, its environment and client.
struct Target<'a> {
    environment: &'a CompiledEnvironment,
    connection: &'a OAuthConnectionSpec,
    client: &'a OAuthClientSpec,
}

impl Target<'_> {
    fn name(&self) -> &str {
        &self.connection.name
    }

    fn unavailable(&self, reason: impl Into<String>) -> OAuthError {
        OAuthError::Unavailable {
            connection: self.name().to_string(),
            reason: reason.into(),
        }
    }
}

/// Obtains, refreshes, shares and caches the tokens of every connection this data plane
/// serves. Shared by all requests.
pub struct TokenManager {
    slots: ArcSwap<HashMap<Uuid, Arc<Slot>>>,
    slots_writer: Mutex<()>,
    keys: OpeningKeyring,
    store: Option<RedisTokenStore>,
    http: reqwest::Client,
    events: EventEmitter,
    handles: handle::HandleKeys,
    /// State claims of callbacks served without Redis: state hash -> expiry.
    /// State claims of callbacks served without Redis: state hash -> (expiry, what it was
    /// claimed for).
    local_claims: Mutex<HashMap<String, (DateTime<Utc>, String)>>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("connections", &self.slots.load().len())
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager sealing with `keys`, sharing tokens through `store` when given (Redis
    /// mode), asking token endpoints with `http`.
    pub(crate) fn new(
        keys: OpeningKeyring,
        store: Option<RedisTokenStore>,
        http: reqwest::Client,
        events: EventEmitter,
    ) -> Self {
        Self {
            slots: ArcSwap::from_pointee(HashMap::new()),
            slots_writer: Mutex::new(()),
            handles: handle::HandleKeys::derive(&keys),
            keys,
            store,
            http,
            events,
            local_claims: Mutex::new(HashMap::new()),
        }
    }

    /// The handle keys (issue and verify `{"$oauth": HANDLE}` arguments).
    pub(crate) fn handles(&self) -> &handle::HandleKeys {
        &self.handles
    }

    fn slot(&self, connection_id: Uuid) -> Arc<Slot> {
        if let Some(slot) = self.slots.load().get(&connection_id) {
            return slot.clone();
        }
        let _writer = self
            .slots_writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.slots.load();
        if let Some(slot) = current.get(&connection_id) {
            return slot.clone();
        }
        let mut next = HashMap::clone(&current);
        let slot = Arc::new(Slot::default());
        next.insert(connection_id, slot.clone());
        self.slots.store(Arc::new(next));
        slot
    }

    fn target<'a>(
        environment: &'a CompiledEnvironment,
        name: &str,
    ) -> Result<Target<'a>, OAuthError> {
        let (connection, client) = environment
            .oauth
            .connection(name)
            .ok_or_else(|| OAuthError::ConnectionMissing(name.to_string()))?;
        let client = client.ok_or_else(|| OAuthError::Unavailable {
            connection: name.to_string(),
            reason: format!("its OAuth client `{}` does not exist", connection.client),
        })?;
        Ok(Target {
            environment,
            connection,
            client,
        })
    }

    /// The access token of connection `name`, refreshing it if it is expiring. Lock-free
    /// when the held token is valid.
    pub(crate) async fn access_token(
        &self,
        environment: &CompiledEnvironment,
        name: &str,
        deadline: Instant,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let target = Self::target(environment, name)?;
        let slot = self.slot(target.connection.id);
        if let Some(live) = fresh(&slot, &target, None) {
            return Ok(live);
        }
        self.obtain(&target, &slot, deadline, None).await
    }

    /// A token to replace one the upstream refused (401): a newer generation than
    /// `rejected` if one exists (here, in Redis or in the snapshot), else a refresh now. 200
    /// simultaneous rejections of one generation cause one refresh.
    pub(crate) async fn replace_rejected(
        &self,
        environment: &CompiledEnvironment,
        name: &str,
        rejected: i64,
        deadline: Instant,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let target = Self::target(environment, name)?;
        let slot = self.slot(target.connection.id);
        if let Some(live) = fresh(&slot, &target, Some(rejected)) {
            return Ok(live);
        }
        self.obtain(&target, &slot, deadline, Some(rejected)).await
    }

    /// The slow path: single flight in process, then across processes.
    async fn obtain(
        &self,
        target: &Target<'_>,
        slot: &Slot,
        deadline: Instant,
        rejected: Option<i64>,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let mut state = tokio::time::timeout_at(deadline.into(), slot.refresh.lock())
            .await
            .map_err(|_| target.unavailable("timed out waiting for the token refresh"))?;
        // The request before us may have refreshed, or a snapshot brought newer tokens.
        self.adopt_snapshot(target, slot);
        if let Some(live) = fresh(slot, target, rejected) {
            return Ok(live);
        }
        if let Some(error) = broken(slot, target) {
            // A newer record in Redis may have repaired it (a callback on another plane).
            if self.store.is_none() {
                return Err(error);
            }
        }
        if let Some((at, error)) = &state.last_failure {
            if at.elapsed() < FAILURE_BACKOFF {
                return Err(error.clone());
            }
        }
        let result = match &self.store {
            Some(store) => {
                self.obtain_shared(store, target, slot, deadline, rejected)
                    .await
            }
            None => self.obtain_local(target, slot, rejected).await,
        };
        match &result {
            Ok(_) | Err(OAuthError::Broken { .. } | OAuthError::NotConnected(_)) => {
                state.last_failure = None
            }
            Err(error) => state.last_failure = Some((Instant::now(), error.clone())),
        }
        result
    }

    /// Without Redis: this process is the only one asking.
    async fn obtain_local(
        &self,
        target: &Target<'_>,
        slot: &Slot,
        rejected: Option<i64>,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let held = slot.held.load_full();
        let current = held
            .as_ref()
            .map_or(0, |h| h.generation())
            .max(snapshot_generation(target));
        let _ = rejected; // checked by `fresh` before: any held generation is the rejected one
        let refresh = refresh_token_of(held.as_deref());
        match self.request(target, refresh.as_ref()).await {
            Ok(tokens) => {
                let (live, sealed) =
                    self.seal_and_open(target, current + 1, tokens, held.as_deref())?;
                slot.held.store(Some(Arc::new(Held::Live(live.clone()))));
                self.report(
                    target,
                    ConnectionStatus::Connected,
                    Some(sealed),
                    None,
                    None,
                );
                Ok(live)
            }
            Err(error) => Err(self.fail(target, slot, current + 1, error)),
        }
    }

    /// With Redis: adopt another plane's newer tokens, or refresh under the shared lock.
    async fn obtain_shared(
        &self,
        store: &RedisTokenStore,
        target: &Target<'_>,
        slot: &Slot,
        deadline: Instant,
        rejected: Option<i64>,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let id = target.connection.id;
        let store_error = |_| target.unavailable("the shared token store (Redis) is unreachable");
        loop {
            if Instant::now() >= deadline {
                return Err(target.unavailable("timed out waiting for the token refresh"));
            }
            let stored = store.read(id).await.map_err(store_error)?;
            if let Some(result) = self.adopt_stored(target, slot, &stored, rejected) {
                return result;
            }
            if let Some((at, message)) = &stored.failure {
                let age = Utc::now().timestamp_millis() - at;
                if (0..FAILURE_BACKOFF.as_millis() as i64).contains(&age) {
                    // Another plane just failed to get a token: share its failure.
                    return Err(target.unavailable(message.clone()));
                }
            }
            if target.connection.grant == OAuthGrant::AuthorizationCode
                && refresh_token_of(slot.held.load().as_deref()).is_none()
            {
                // Nothing to refresh with: no need for the lock or the provider.
                return Err(match self.request(target, None).await {
                    Err(RequestFailure::Local(error)) => error,
                    _ => target.unavailable("no refresh token"),
                });
            }
            let mut lock_value = [0u8; 16];
            rand::rng().fill_bytes(&mut lock_value);
            let lock_value = hex::encode(lock_value);
            if store.try_lock(id, &lock_value).await.map_err(store_error)? {
                // Someone may have written between our read and our lock.
                let locked = store.read(id).await.map_err(store_error)?;
                if locked.generation != stored.generation {
                    let _ = store.release(id, &lock_value).await;
                    continue;
                }
                return self
                    .refresh_locked(store, target, slot, &locked, &lock_value)
                    .await;
            }
            // Another plane is refreshing: wait for its generation, or for its lock to go.
            let waited_until = Instant::now() + LOCK_TTL;
            loop {
                tokio::time::sleep(POLL_INTERVAL).await;
                if Instant::now() >= deadline.min(waited_until) {
                    break;
                }
                let now_stored = store.read(id).await.map_err(store_error)?;
                if now_stored.generation != stored.generation {
                    break;
                }
                if !store.is_locked(id).await.map_err(store_error)? {
                    break;
                }
            }
        }
    }

    /// Holding the Redis lock: ask the provider, write fenced, release.
    async fn refresh_locked(
        &self,
        store: &RedisTokenStore,
        target: &Target<'_>,
        slot: &Slot,
        stored: &StoredRecord,
        lock_value: &str,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let id = target.connection.id;
        let held = slot.held.load_full();
        let current = stored
            .generation
            .unwrap_or(0)
            .max(held.as_ref().map_or(0, |h| h.generation()))
            .max(snapshot_generation(target));
        let next = current + 1;
        let refresh = refresh_token_of(held.as_deref());
        let outcome = self.request(target, refresh.as_ref()).await;
        let tokens = match outcome {
            Ok(tokens) => tokens,
            Err(error) => {
                let failure = self.fail(target, slot, next, error);
                if let OAuthError::Broken { error, .. } = &failure {
                    let record = TokenRecord {
                        status: ConnectionStatus::Broken,
                        tokens: None,
                        error: Some(error.clone()),
                        updated_at: Utc::now(),
                    };
                    match store
                        .fenced_write(id, lock_value, stored, next, &record)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(connection_id = %id, "broken state not shared: another data plane wrote first")
                        }
                        Err(error) => {
                            tracing::warn!(connection_id = %id, %error, "cannot share the broken state")
                        }
                    }
                } else {
                    let reason = match &failure {
                        OAuthError::Unavailable { reason, .. } => reason.as_str(),
                        _ => "the token request failed",
                    };
                    if let Err(error) = store.record_failure(id, reason).await {
                        tracing::warn!(connection_id = %id, %error, "cannot share the token failure");
                    }
                    let _ = store.release(id, lock_value).await;
                }
                return Err(failure);
            }
        };
        let (live, sealed) = self.seal_and_open(target, next, tokens, held.as_deref())?;
        let record = TokenRecord {
            status: ConnectionStatus::Connected,
            tokens: Some(sealed.clone()),
            error: None,
            updated_at: Utc::now(),
        };
        match store
            .fenced_write(id, lock_value, stored, next, &record)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Our lock expired while the provider answered and someone else stored
                // newer tokens: theirs win (ours stay valid upstream, but are not shared).
                tracing::warn!(connection_id = %id, "token refresh fenced out by a newer generation");
                let stored = store.read(id).await.map_err(|_| {
                    target.unavailable("the shared token store (Redis) is unreachable")
                })?;
                if let Some(result) = self.adopt_stored(target, slot, &stored, None) {
                    return result;
                }
                return Err(
                    target.unavailable("the token refresh lost a race and nothing newer is stored")
                );
            }
            Err(error) => {
                tracing::warn!(connection_id = %id, %error, "cannot share refreshed tokens; using them locally");
            }
        }
        slot.held.store(Some(Arc::new(Held::Live(live.clone()))));
        self.report(
            target,
            ConnectionStatus::Connected,
            Some(sealed),
            None,
            None,
        );
        Ok(live)
    }

    /// Take a stored record if it is newer than what is held. `Some(result)` when the
    /// caller is done (a usable token, or a broken connection).
    fn adopt_stored(
        &self,
        target: &Target<'_>,
        slot: &Slot,
        stored: &StoredRecord,
        rejected: Option<i64>,
    ) -> Option<Result<Arc<LiveTokens>, OAuthError>> {
        let held_generation = slot.held.load().as_ref().map_or(0, |h| h.generation());
        if let (Some(generation), Some(record)) = (stored.generation, &stored.record) {
            if generation > held_generation {
                match (record.status, &record.tokens) {
                    (ConnectionStatus::Broken, _) => {
                        slot.held.store(Some(Arc::new(Held::Broken {
                            generation,
                            error: record.error.clone().unwrap_or_else(|| "refused".into()),
                            revision: target.environment.revision,
                        })));
                    }
                    (_, Some(tokens)) => match self.open(target, tokens, generation) {
                        Ok(live) => slot.held.store(Some(Arc::new(Held::Live(live)))),
                        Err(error) => return Some(Err(error)),
                    },
                    (_, None) => {}
                }
            }
        }
        if let Some(live) = fresh(slot, target, rejected) {
            return Some(Ok(live));
        }
        broken(slot, target).map(Err)
    }

    /// Adopt the snapshot's tokens or broken status when newer than what is held.
    fn adopt_snapshot(&self, target: &Target<'_>, slot: &Slot) {
        let held = slot.held.load();
        let held_generation = held.as_ref().map_or(0, |h| h.generation());
        let snapshot_generation = snapshot_generation(target);
        if target.connection.status == ConnectionStatus::Broken {
            if held.is_none() || snapshot_generation > held_generation {
                slot.held.store(Some(Arc::new(Held::Broken {
                    generation: snapshot_generation,
                    error: "marked broken by the control plane".into(),
                    revision: target.environment.revision,
                })));
            }
            return;
        }
        let Some(tokens) = &target.connection.tokens else {
            return;
        };
        if tokens.generation <= held_generation {
            return;
        }
        match self.open(target, tokens, tokens.generation) {
            Ok(live) => slot.held.store(Some(Arc::new(Held::Live(live)))),
            Err(error) => {
                tracing::error!(connection = %target.name(), %error, "snapshot tokens do not open")
            }
        }
    }

    /// Open a sealed token set (stored at `generation`).
    fn open(
        &self,
        target: &Target<'_>,
        tokens: &SealedTokenSet,
        generation: i64,
    ) -> Result<Arc<LiveTokens>, OAuthError> {
        let open = |kind, sealed: &SealedSecret| {
            let name = token_identity_name(target.connection.id, kind);
            let identity = token_identity(
                target.environment.tenant_id,
                target.environment.environment_id,
                &name,
                tokens.generation,
            );
            self.keys.open(identity, sealed).map_err(|error| {
                tracing::error!(connection = %target.name(), generation, %error, "stored OAuth tokens do not open");
                target.unavailable("the stored tokens cannot be opened by this data plane")
            })
        };
        let access = open(TokenKind::Access, &tokens.access_token)?;
        let refresh = match &tokens.refresh_token {
            Some(sealed) => Some(open(TokenKind::Refresh, sealed)?),
            None => None,
        };
        let redaction = RedactionIndex::build(access.expose())
            .map_err(|_| target.unavailable("the access token cannot be redacted"))?;
        Ok(Arc::new(LiveTokens {
            generation: generation.max(tokens.generation),
            access,
            refresh,
            expires_at: tokens.expires_at,
            obtained_at: tokens.obtained_at,
            redaction: Arc::new(redaction),
        }))
    }

    /// Seal freshly obtained tokens at `generation` (keeping the held refresh token when the
    /// provider sent none: rotation is optional) and open them for use.
    fn seal_and_open(
        &self,
        target: &Target<'_>,
        generation: i64,
        tokens: ObtainedTokens,
        held: Option<&Held>,
    ) -> Result<(Arc<LiveTokens>, SealedTokenSet), OAuthError> {
        let now = Utc::now();
        let refresh = tokens.refresh.or_else(|| match held {
            Some(Held::Live(live)) => live.refresh.clone(),
            _ => None,
        });
        let sealing = self.keys.sealing_key();
        let seal = |kind, value: &SecretValue| {
            let name = token_identity_name(target.connection.id, kind);
            let identity = token_identity(
                target.environment.tenant_id,
                target.environment.environment_id,
                &name,
                generation,
            );
            sealing
                .seal(identity, value.expose())
                .map_err(|_| target.unavailable("the new tokens cannot be sealed"))
        };
        let expires_at = tokens
            .expires_in
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d);
        let sealed = SealedTokenSet {
            generation,
            access_token: seal(TokenKind::Access, &tokens.access)?,
            refresh_token: refresh
                .as_ref()
                .map(|r| seal(TokenKind::Refresh, r))
                .transpose()?,
            expires_at,
            obtained_at: now,
        };
        let redaction = RedactionIndex::build(tokens.access.expose())
            .map_err(|_| target.unavailable("the access token cannot be redacted"))?;
        let live = Arc::new(LiveTokens {
            generation,
            access: tokens.access,
            refresh,
            expires_at,
            obtained_at: now,
            redaction: Arc::new(redaction),
        });
        Ok((live, sealed))
    }

    /// Seal held tokens again at another generation (a callback that lost a race).
    fn reseal(
        &self,
        target: &Target<'_>,
        generation: i64,
        live: &LiveTokens,
    ) -> Result<(Arc<LiveTokens>, SealedTokenSet), OAuthError> {
        let tokens = ObtainedTokens {
            access: live.access.clone(),
            refresh: live.refresh.clone(),
            expires_in: live
                .expires_at
                .and_then(|at| (at - Utc::now()).to_std().ok()),
        };
        self.seal_and_open(target, generation, tokens, None)
    }

    /// The client secret, if the client has one and it may go to the token endpoint.
    fn client_secret<'e>(&self, target: &Target<'e>) -> Result<Option<&'e str>, OAuthError> {
        let Some(name) = &target.client.client_secret else {
            return Ok(None);
        };
        let environment = target.environment;
        let value = environment.secret(name).ok_or_else(|| {
            target.unavailable(format!(
                "the client secret `{name}` is not set or cannot be opened"
            ))
        })?;
        let host = token_host(&target.client.token_url)
            .ok_or_else(|| target.unavailable("the client's token URL has no host"))?;
        let allowed = environment.secret_allowed_hosts(name).unwrap_or_default();
        if !is_allowed(allowed, &host) {
            return Err(target.unavailable(format!(
                "the client secret `{name}` may not be sent to the token endpoint's host `{host}`"
            )));
        }
        Ok(Some(value))
    }

    /// Ask the token endpoint for the connection's next tokens.
    async fn request(
        &self,
        target: &Target<'_>,
        refresh: Option<&SecretValue>,
    ) -> Result<ObtainedTokens, RequestFailure> {
        let secret = self.client_secret(target).map_err(RequestFailure::Local)?;
        let grant = match target.connection.grant {
            OAuthGrant::ClientCredentials => Grant::ClientCredentials,
            OAuthGrant::AuthorizationCode => match refresh {
                Some(refresh) => Grant::RefreshToken(refresh.expose()),
                None if target.connection.tokens.is_none()
                    && target.connection.status == ConnectionStatus::Pending =>
                {
                    return Err(RequestFailure::Local(OAuthError::NotConnected(
                        target.name().to_string(),
                    )))
                }
                None => {
                    return Err(RequestFailure::Local(target.unavailable(
                        "the access token expired and the provider gave no refresh token; reconnect the connection",
                    )))
                }
            },
        };
        endpoint::request_tokens(&self.http, target.client, secret, grant)
            .await
            .map_err(RequestFailure::Endpoint)
    }

    /// Turn a failed token request into the request's error; a refused grant breaks the
    /// connection here (the caller shares it in Redis). Emits the event and the report.
    fn fail(
        &self,
        target: &Target<'_>,
        slot: &Slot,
        next_generation: i64,
        failure: RequestFailure,
    ) -> OAuthError {
        let error = match failure {
            RequestFailure::Local(error) => {
                if matches!(error, OAuthError::Unavailable { .. }) {
                    self.emit(
                        target,
                        EventKind::OAuthRefreshFailed,
                        502,
                        error.to_string(),
                    );
                }
                return error;
            }
            RequestFailure::Endpoint(error) => error,
        };
        if error.breaks_connection() {
            let description = match &error {
                EndpointError::Refused { code, description } => match description {
                    Some(d) => format!("{code}: {d}"),
                    None => code.clone(),
                },
                other => other.to_string(),
            };
            slot.held.store(Some(Arc::new(Held::Broken {
                generation: next_generation,
                error: description.clone(),
                revision: target.environment.revision,
            })));
            let broken = OAuthError::Broken {
                connection: target.name().to_string(),
                error: description.clone(),
            };
            self.emit(
                target,
                EventKind::OAuthRefreshFailed,
                502,
                broken.to_string(),
            );
            self.report(
                target,
                ConnectionStatus::Broken,
                None,
                Some(description),
                None,
            );
            broken
        } else {
            let unavailable = target.unavailable(error.to_string());
            self.emit(
                target,
                EventKind::OAuthRefreshFailed,
                502,
                unavailable.to_string(),
            );
            unavailable
        }
    }

    /// An OAuth event about `target` (no request id: it is not one request's).
    fn emit(&self, target: &Target<'_>, kind: EventKind, status: u16, message: String) {
        self.events.emit(oauth_event(
            "",
            kind,
            Some(target.environment),
            Some(target.name()),
            status,
            message,
        ));
    }

    /// Tell the control plane about new tokens, a completed authorization or a failure.
    fn report(
        &self,
        target: &Target<'_>,
        status: ConnectionStatus,
        tokens: Option<SealedTokenSet>,
        error: Option<String>,
        authorization_id: Option<Uuid>,
    ) {
        self.events.report_oauth(OAuthConnectionReport {
            tenant_id: target.environment.tenant_id,
            environment_id: target.environment.environment_id,
            connection_id: target.connection.id,
            connection: target.name().to_string(),
            authorization_id,
            status,
            tokens,
            at: Utc::now(),
            error,
        });
    }
}

/// Why a token request was not made or failed.
enum RequestFailure {
    /// Decided here, before the provider was asked.
    Local(OAuthError),
    Endpoint(EndpointError),
}

/// An OAuth event. `request_id` is the callback's; token refreshes serve many requests and
/// leave it empty.
pub(crate) fn oauth_event(
    request_id: &str,
    kind: EventKind,
    environment: Option<&CompiledEnvironment>,
    connection: Option<&str>,
    status: u16,
    message: String,
) -> GatewayEvent {
    GatewayEvent {
        id: Uuid::now_v7(),
        at: Utc::now(),
        kind,
        tenant_id: environment.map(|e| e.tenant_id),
        environment_id: environment.map(|e| e.environment_id),
        request_id: request_id.to_string(),
        function: None,
        api_key_id: None,
        secrets: Vec::new(),
        upstream_host: None,
        status,
        message,
        oauth_connection: connection.map(str::to_string),
    }
}

/// The held token if it is valid and newer than `rejected`.
fn fresh(slot: &Slot, target: &Target<'_>, rejected: Option<i64>) -> Option<Arc<LiveTokens>> {
    let held = slot.held.load();
    let Some(Held::Live(live)) = held.as_deref() else {
        return None;
    };
    if snapshot_generation(target) > live.generation {
        return None; // a newer snapshot token set: adopt it first
    }
    let newer = rejected.is_none_or(|rejected| live.generation > rejected);
    (newer && live.is_valid_at(Utc::now(), target.client.refresh_skew_seconds))
        .then(|| live.clone())
}

/// The broken state held for the connection, unless a newer snapshot says it is no longer
/// broken (reset or reconnected by the control plane).
fn broken(slot: &Slot, target: &Target<'_>) -> Option<OAuthError> {
    match slot.held.load().as_deref() {
        Some(Held::Broken {
            error, revision, ..
        }) if target.connection.status == ConnectionStatus::Broken
            || target.environment.revision <= *revision =>
        {
            Some(OAuthError::Broken {
                connection: target.name().to_string(),
                error: error.clone(),
            })
        }
        _ => None,
    }
}

fn snapshot_generation(target: &Target<'_>) -> i64 {
    target
        .connection
        .tokens
        .as_ref()
        .map_or(0, |t| t.generation)
}

fn refresh_token_of(held: Option<&Held>) -> Option<SecretValue> {
    match held {
        Some(Held::Live(live)) => live.refresh.clone(),
        _ => None,
    }
}

/// The host of a token URL, as host binding compares it.
pub(crate) fn token_host(url: &str) -> Option<String> {
    let url = oauth2::url::Url::parse(url).ok()?;
    let host = url.host_str()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(expires_at: Option<DateTime<Utc>>) -> LiveTokens {
        LiveTokens {
            generation: 1,
            access: SecretValue::new("access-token-value".into()),
            refresh: None,
            expires_at,
            obtained_at: Utc::now() - chrono::Duration::hours(1),
            redaction: Arc::new(RedactionIndex::build("access-token-value").unwrap()),
        }
    }

    #[test]
    fn validity_honours_the_refresh_skew() {
        let now = Utc::now();
        let in_90s = live(Some(now + chrono::Duration::seconds(90)));
        assert!(in_90s.is_valid_at(now, 60));
        assert!(!in_90s.is_valid_at(now, 90));
        assert!(!in_90s.is_valid_at(now + chrono::Duration::seconds(31), 60));
        let expired = live(Some(now - chrono::Duration::seconds(1)));
        assert!(!expired.is_valid_at(now, 0));
        // No expiry given: valid until the upstream refuses it.
        assert!(live(None).is_valid_at(now, 60));
        // Debug never shows a token.
        assert!(!format!("{:?}", in_90s).contains("access-token-value"));
    }

    #[test]
    fn the_skew_is_at_most_half_the_lifetime() {
        let now = Utc::now();
        // A 4-second token with the default 60-second skew: refreshed after 2 s, not on
        // every request.
        let short = LiveTokens {
            obtained_at: now,
            ..live(Some(now + chrono::Duration::seconds(4)))
        };
        assert!(short.is_valid_at(now, 60));
        assert!(short.is_valid_at(now + chrono::Duration::milliseconds(1900), 60));
        assert!(!short.is_valid_at(now + chrono::Duration::milliseconds(2100), 60));
        // A shorter skew than half the lifetime is used as is.
        assert!(short.is_valid_at(now + chrono::Duration::milliseconds(2900), 1));
        assert!(!short.is_valid_at(now + chrono::Duration::milliseconds(3100), 1));
    }

    #[test]
    fn token_hosts_are_bare_and_lower_case() {
        assert_eq!(
            token_host("https://IdP.example:8443/token").as_deref(),
            Some("idp.example")
        );
        assert_eq!(token_host("http://[::1]:9/t").as_deref(), Some("::1"));
        assert_eq!(token_host("not a url"), None);
    }
}
