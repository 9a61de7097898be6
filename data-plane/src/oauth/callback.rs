//! The authorization-code callback: `GET /v1/oauth/callback?code=..&state=..`.
//!
//! The browser of the person who authorized arrives here from the provider. No API key: the
//! `state` authorizes the request. It must be one a pending authorization of a published
//! snapshot was started with (only its SHA-256 is known here), unexpired, and unclaimed: the
//! first data plane to see it claims it (`SET oauth_state_claim NX PX <until expiry>` in
//! Redis, a set in memory without Redis), so a replayed callback is refused by every plane.
//! Then the code is exchanged with the sealed PKCE verifier and the redirect URI, the tokens
//! are sealed and stored (generation = current + 1), the control plane gets a report with the
//! authorization id, and `oauth.connected` is emitted.
//!
//! Refusals emit `oauth.callback_refused` and answer a small page that never echoes the code
//! or the state; neither is ever logged.

use std::time::Instant;

use airlock_shared::events::EventKind;
use airlock_shared::oauth::{pkce_identity_name, state_hash, ConnectionStatus};
use airlock_shared::seal::SecretIdentity;
use chrono::Utc;
use zeroize::Zeroizing;

use super::endpoint::{self, Grant};
use super::store::TokenRecord;
use super::{oauth_event, Held, TokenManager};
use crate::snapshot::Snapshot;

/// How long the code exchange may take.
const EXCHANGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// What the callback answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPage {
    pub status: u16,
    pub body: String,
}

fn page(status: u16, title: &str, text: &str) -> CallbackPage {
    CallbackPage {
        status,
        body: format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{text}</p></body></html>"
        ),
    }
}

fn refused(text: &str) -> CallbackPage {
    page(400, "Authorization refused", text)
}

impl TokenManager {
    /// Serve one callback with the raw query string.
    pub(crate) async fn callback(
        &self,
        snapshot: &Snapshot,
        query: &str,
        request_id: &str,
    ) -> CallbackPage {
        let mut code = None;
        let mut state = None;
        let mut provider_error = None;
        let mut provider_description = None;
        for (name, value) in oauth2::url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "code" => code = Some(Zeroizing::new(value.into_owned())),
                "state" => state = Some(Zeroizing::new(value.into_owned())),
                "error" => provider_error = Some(clean(&value)),
                "error_description" => provider_description = Some(clean(&value)),
                _ => {}
            }
        }
        let refuse_unknown = |message: &str| {
            self.events.emit(oauth_event(
                request_id,
                EventKind::OAuthCallbackRefused,
                None,
                None,
                400,
                message.to_string(),
            ));
            refused("This authorization link is not valid. Start the connection again.")
        };
        let Some(state) = state.filter(|s| !s.is_empty()) else {
            return refuse_unknown("authorization callback without a state");
        };
        let hash = state_hash(&state);
        let Some((environment, authorization)) = snapshot.authorization(&hash) else {
            // Once completed, an authorization leaves the snapshot; its claim remembers it.
            if let Some((environment_id, connection)) = self.claimed_for(&hash).await {
                self.events.emit(oauth_event(
                    request_id,
                    EventKind::OAuthCallbackRefused,
                    snapshot.environment(&environment_id).map(|e| &**e),
                    Some(&connection),
                    400,
                    "authorization callback replayed (state already used)".to_string(),
                ));
                return refused("This authorization was already used. Start the connection again.");
            }
            return refuse_unknown("authorization callback with an unknown state");
        };
        let connection_name = authorization.connection.as_str();
        let refuse = |status: u16, message: String, text: &str| {
            self.events.emit(oauth_event(
                request_id,
                EventKind::OAuthCallbackRefused,
                Some(environment),
                Some(connection_name),
                status,
                message,
            ));
            page(status, "Authorization refused", text)
        };
        let now = Utc::now();
        if authorization.expires_at <= now {
            return refuse(
                400,
                "authorization callback after the authorization expired".into(),
                "This authorization has expired. Start the connection again.",
            );
        }
        let claimed_for = format!("{}/{connection_name}", environment.environment_id);
        match self
            .claim(&hash, authorization.expires_at, &claimed_for)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return refuse(
                    400,
                    "authorization callback replayed (state already used)".into(),
                    "This authorization was already used. Start the connection again.",
                )
            }
            Err(()) => {
                return refuse(
                    503,
                    "authorization callback not served: the shared store (Redis) is unreachable"
                        .into(),
                    "The gateway cannot complete the authorization right now. Try again.",
                )
            }
        }
        let Ok(target) = Self::target(environment, connection_name) else {
            return refuse(
                400,
                format!("authorization callback for connection `{connection_name}`, which is not usable (missing connection or client)"),
                "This connection no longer exists.",
            );
        };
        if let Some(error) = provider_error {
            let message = match &provider_description {
                Some(d) => format!("the provider returned `{error}`: {d}"),
                None => format!("the provider returned `{error}`"),
            };
            self.report(
                &target,
                target.connection.status,
                None,
                Some(message.clone()),
                Some(authorization.id),
            );
            return refuse(
                400,
                format!("authorization refused by the provider: {message}"),
                "The provider did not grant access.",
            );
        }
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return refuse(
                400,
                "authorization callback without a code".into(),
                "The provider sent no authorization code.",
            );
        };

        let verifier_name = pkce_identity_name(authorization.id);
        let identity = SecretIdentity {
            tenant_id: environment.tenant_id,
            environment_id: environment.environment_id,
            name: &verifier_name,
            version: 1,
        };
        let Ok(verifier) = self.keys.open(identity, &authorization.code_verifier) else {
            return refuse(
                500,
                "the PKCE verifier of the authorization cannot be opened by this data plane".into(),
                "The gateway cannot complete this authorization.",
            );
        };
        let secret = match self.client_secret(&target) {
            Ok(secret) => secret,
            Err(error) => {
                return refuse(
                    500,
                    error.to_string(),
                    "The gateway cannot complete this authorization.",
                )
            }
        };
        let slot = self.slot(target.connection.id);
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        let Ok(_guard) = tokio::time::timeout_at(deadline.into(), slot.refresh.lock()).await else {
            return refuse(
                503,
                "authorization callback timed out waiting for the connection".into(),
                "The gateway is busy. Start the connection again.",
            );
        };
        let grant = Grant::AuthorizationCode {
            code: &code,
            verifier: verifier.expose(),
            redirect_uri: &authorization.redirect_uri,
        };
        let exchanged = tokio::time::timeout_at(
            deadline.into(),
            endpoint::request_tokens(&self.http, target.client, secret, grant),
        )
        .await;
        let tokens = match exchanged {
            Ok(Ok(tokens)) => tokens,
            Ok(Err(error)) => {
                self.report(
                    &target,
                    target.connection.status,
                    None,
                    Some(error.to_string()),
                    Some(authorization.id),
                );
                return refuse(
                    502,
                    format!("the authorization code could not be exchanged: {error}"),
                    "The provider did not accept the authorization. Start the connection again.",
                );
            }
            Err(_) => {
                return refuse(
                    502,
                    "the authorization code exchange timed out".into(),
                    "The provider did not answer. Start the connection again.",
                )
            }
        };

        // The new generation follows everything known: held, snapshot, shared record.
        let held = slot.held.load_full();
        let mut current = held
            .as_ref()
            .map_or(0, |h| h.generation())
            .max(super::snapshot_generation(&target));
        if let Some(store) = &self.store {
            if let Ok(stored) = store.read(target.connection.id).await {
                current = current.max(stored.generation.unwrap_or(0));
            }
        }
        // A new authorization replaces whatever was held, refresh token included.
        let (mut live, mut sealed) = match self.seal_and_open(&target, current + 1, tokens, None) {
            Ok(pair) => pair,
            Err(error) => {
                return refuse(
                    500,
                    error.to_string(),
                    "The gateway cannot complete this authorization.",
                )
            }
        };
        if let Some(store) = &self.store {
            let record = TokenRecord {
                status: ConnectionStatus::Connected,
                tokens: Some(sealed.clone()),
                error: None,
                updated_at: Utc::now(),
            };
            match store
                .monotonic_write(target.connection.id, sealed.generation, &record)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // A refresh on another plane got in between: go one generation further
                    // (the new authorization wins over a refresh of the old one).
                    if let Ok(stored) = store.read(target.connection.id).await {
                        let next = stored.generation.unwrap_or(0).max(current) + 1;
                        let (relive, resealed) = match self.reseal(&target, next, &live) {
                            Ok(pair) => pair,
                            Err(error) => {
                                return refuse(
                                    500,
                                    error.to_string(),
                                    "The gateway cannot complete this authorization.",
                                )
                            }
                        };
                        let record = TokenRecord {
                            tokens: Some(resealed.clone()),
                            ..record
                        };
                        let _ = store
                            .monotonic_write(target.connection.id, next, &record)
                            .await;
                        live = relive;
                        sealed = resealed;
                    }
                }
                Err(error) => {
                    tracing::warn!(connection = %connection_name, %error, "cannot share the new tokens in Redis")
                }
            }
        }
        slot.held.store(Some(std::sync::Arc::new(Held::Live(live))));
        self.report(
            &target,
            ConnectionStatus::Connected,
            Some(sealed),
            None,
            Some(authorization.id),
        );
        self.events.emit(oauth_event(
            request_id,
            EventKind::OAuthConnected,
            Some(environment),
            Some(connection_name),
            200,
            format!("OAuth connection `{connection_name}` connected"),
        ));
        page(
            200,
            "Connected",
            "The connection is authorized; you can close this window.",
        )
    }

    /// Claim a state once across every data plane (`Err` when the store is unreachable:
    /// fail closed).
    async fn claim(
        &self,
        hash: &str,
        expires_at: chrono::DateTime<Utc>,
        claimed_for: &str,
    ) -> Result<bool, ()> {
        let now = Utc::now();
        match &self.store {
            Some(store) => {
                let ttl = (expires_at - now)
                    .to_std()
                    .unwrap_or(std::time::Duration::from_millis(1));
                store
                    .claim_state(hash, ttl, claimed_for)
                    .await
                    .map_err(|error| {
                        tracing::warn!(%error, "cannot claim an authorization state");
                    })
            }
            None => {
                let mut claims = self
                    .local_claims
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                claims.retain(|_, (expiry, _)| *expiry > now);
                if claims.contains_key(hash) {
                    return Ok(false);
                }
                claims.insert(hash.to_string(), (expires_at, claimed_for.to_string()));
                Ok(true)
            }
        }
    }

    /// The environment and connection a state was claimed for, if it was claimed (and the
    /// claim has not expired).
    async fn claimed_for(&self, hash: &str) -> Option<(uuid::Uuid, String)> {
        let claimed_for = match &self.store {
            Some(store) => store.claimed_state(hash).await.ok().flatten()?,
            None => {
                let claims = self
                    .local_claims
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let (expiry, claimed_for) = claims.get(hash)?;
                (*expiry > Utc::now()).then(|| claimed_for.clone())?
            }
        };
        let (environment_id, connection) = claimed_for.split_once('/')?;
        Some((environment_id.parse().ok()?, connection.to_string()))
    }
}

/// A provider-supplied text, bounded and without control characters (it is not a secret, but
/// it comes from a URL anyone can craft).
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}
