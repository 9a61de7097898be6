//! OAuth clients, connections and authorization-code flows (the control plane's half; see
//! [`airlock_shared::oauth`] for who does what).
//!
//! The control plane never holds a token or a client secret in plaintext: a client names a
//! vault secret (sealed, like every secret), a connection stores the tokens a data plane
//! sealed, and a started flow stores the hash of its `state` and its PKCE verifier sealed to
//! the data planes with the [`SealingKey`]. Nothing here returns a token.

pub mod discovery;
pub mod reports;
pub mod validate;

use std::collections::{BTreeMap, HashMap};

use airlock_shared::hosts::HostPattern;
use airlock_shared::oauth::{
    pkce_identity_name, state_hash, ConnectionStatus, OAuthClientSpec, OAuthConnectionSpec,
    OAuthGrant, PendingAuthorization, SealedTokenSet, TokenAuthMethod, AUTHORIZATION_TTL_SECONDS,
    CALLBACK_PATH,
};
use airlock_shared::seal::{SealedSecret, SealingKey, SecretIdentity};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::Url;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::environments::{self, lock_environment};
use super::{begin_write, insert_error, names, not_found, now, tokens};
use crate::entity::{environment, oauth_authorization, oauth_client, oauth_connection};
use crate::error::AppError;

pub use discovery::DiscoveredEndpoints;

/// An OAuth client's configuration. No secret: `client_secret` is the name of a vault secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    pub issuer: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: String,
    pub client_id: String,
    /// Name of the vault secret holding the client secret.
    pub client_secret: Option<String>,
    pub auth_method: TokenAuthMethod,
    pub scopes: Vec<String>,
    pub extra_token_params: Vec<(String, String)>,
    pub allowed_hosts: Vec<HostPattern>,
    pub refresh_skew_seconds: u32,
    pub redirect_uri: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A connection's state. Never its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConnection {
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    pub client: OAuthClient,
    pub grant: OAuthGrant,
    pub status: ConnectionStatus,
    /// When the access token expires, as the data plane reported it.
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub connected_at: Option<DateTime<Utc>>,
    /// Generation of the stored tokens (0: none).
    pub token_generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An authorization-code flow just started: where to send the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedAuthorization {
    pub id: Uuid,
    /// The provider's authorization URL with every parameter (state, PKCE challenge...).
    pub authorize_url: String,
    pub expires_at: DateTime<Utc>,
    pub connection: OAuthConnection,
}

/// What `createOAuthClient` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub environment_id: Uuid,
    pub name: String,
    pub issuer: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    pub auth_method: Option<TokenAuthMethod>,
    pub extra_token_params: Vec<(String, String)>,
    pub allowed_hosts: Vec<String>,
    pub refresh_skew_seconds: Option<i32>,
    pub redirect_uri: Option<String>,
}

/// What `updateOAuthClient` changes: `None` keeps a field; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct ClientChanges {
    pub name: Option<String>,
    pub issuer: Option<Option<String>>,
    pub authorize_url: Option<Option<String>>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub auth_method: Option<TokenAuthMethod>,
    pub extra_token_params: Option<Vec<(String, String)>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub refresh_skew_seconds: Option<i32>,
    pub redirect_uri: Option<Option<String>>,
}

/// A client's configuration, checked and complete (endpoints discovered), ready to store.
#[derive(Debug, Clone)]
struct CheckedClient {
    name: String,
    issuer: Option<String>,
    authorize_url: Option<String>,
    token_url: String,
    client_id: String,
    client_secret: Option<String>,
    auth_method: TokenAuthMethod,
    scopes: Vec<String>,
    extra_token_params: Vec<(String, String)>,
    allowed_hosts: Vec<HostPattern>,
    refresh_skew_seconds: u32,
    redirect_uri: Option<String>,
}

/// A client's configuration before endpoint discovery.
struct ClientDraft {
    name: String,
    issuer: Option<String>,
    authorize_url: Option<String>,
    token_url: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    auth_method: TokenAuthMethod,
    scopes: Vec<String>,
    extra_token_params: Vec<(String, String)>,
    allowed_hosts: Vec<String>,
    refresh_skew_seconds: i32,
    redirect_uri: Option<String>,
    /// Discover the endpoints that are `None` from the issuer.
    discover: bool,
}

/// Check a draft; discover missing endpoints from the issuer. Nothing is written.
async fn check_draft(draft: ClientDraft) -> Result<CheckedClient, AppError> {
    names::check_secret_name("name", &draft.name)?;
    let issuer = draft
        .issuer
        .as_deref()
        .map(|issuer| validate::check_issuer("issuer", issuer))
        .transpose()?;
    let mut authorize_url = draft
        .authorize_url
        .as_deref()
        .map(|url| validate::check_url("authorizeUrl", url))
        .transpose()?;
    let mut token_url = draft
        .token_url
        .as_deref()
        .map(|url| validate::check_url("tokenUrl", url))
        .transpose()?;
    validate::check_client_id("clientId", &draft.client_id)?;
    if let Some(secret) = &draft.client_secret {
        names::check_secret_name("clientSecret", secret)?;
    }
    match (draft.auth_method, &draft.client_secret) {
        (TokenAuthMethod::None, Some(_)) => {
            return Err(AppError::invalid(
                "clientSecret",
                "a public client (tokenEndpointAuthMethod NONE) has no client secret: leave clientSecret out, or choose CLIENT_SECRET_BASIC or CLIENT_SECRET_POST",
            ))
        }
        (TokenAuthMethod::ClientSecretBasic | TokenAuthMethod::ClientSecretPost, None) => {
            return Err(AppError::invalid(
                "clientSecret",
                "CLIENT_SECRET_BASIC and CLIENT_SECRET_POST need the name of the vault secret that holds the client secret (or choose NONE for a public client)",
            ))
        }
        _ => {}
    }
    let scopes = validate::check_scopes("scopes", &draft.scopes)?;
    validate::check_extra_params("extraTokenParams", &draft.extra_token_params)?;
    let allowed_hosts = validate::check_token_hosts("allowedHosts", &draft.allowed_hosts)?;
    let refresh_skew_seconds =
        validate::check_refresh_skew("refreshSkewSeconds", draft.refresh_skew_seconds)?;
    let redirect_uri = draft
        .redirect_uri
        .as_deref()
        .map(|url| validate::check_url("redirectUri", url))
        .transpose()?;
    if issuer.is_none() && token_url.is_none() {
        return Err(AppError::invalid(
            "tokenUrl",
            "give the token endpoint (tokenUrl), or the provider's issuer to discover it from",
        ));
    }

    // Only once everything else is valid: discovery is a network round trip.
    if let (Some(issuer), true) = (&issuer, draft.discover) {
        if token_url.is_none() || authorize_url.is_none() {
            let found = discovery::discover(issuer).await?;
            let discovered_url = |url: &str, what: &str| {
                validate::check_url("issuer", url).map_err(|_| AppError::OAuthDiscoveryFailed {
                    reason: format!(
                        "the metadata of issuer {issuer:?} names an unusable {what} `{}`",
                        url.chars().take(200).collect::<String>()
                    ),
                })
            };
            if token_url.is_none() {
                token_url = Some(discovered_url(&found.token_endpoint, "token_endpoint")?);
            }
            if authorize_url.is_none() {
                authorize_url = found
                    .authorization_endpoint
                    .as_deref()
                    .map(|url| discovered_url(url, "authorization_endpoint"))
                    .transpose()?;
            }
        }
    }
    let token_url = token_url.ok_or_else(|| {
        AppError::invalid(
            "tokenUrl",
            "give the token endpoint (tokenUrl), or the provider's issuer to discover it from",
        )
    })?;

    Ok(CheckedClient {
        name: draft.name,
        issuer,
        authorize_url,
        token_url,
        client_id: draft.client_id,
        client_secret: draft.client_secret,
        auth_method: draft.auth_method,
        scopes,
        extra_token_params: draft.extra_token_params,
        allowed_hosts,
        refresh_skew_seconds,
        redirect_uri,
    })
}

/// Check, discover and store a new client.
pub async fn create_client(
    db: &DatabaseConnection,
    actor: Actor,
    new: NewClient,
) -> Result<OAuthClient, AppError> {
    environments::get(db, new.environment_id).await?;
    let checked = check_draft(ClientDraft {
        name: new.name,
        issuer: new.issuer,
        authorize_url: new.authorize_url,
        token_url: new.token_url,
        client_id: new.client_id,
        client_secret: new.client_secret,
        auth_method: new
            .auth_method
            .unwrap_or(TokenAuthMethod::ClientSecretBasic),
        scopes: new.scopes,
        extra_token_params: new.extra_token_params,
        allowed_hosts: new.allowed_hosts,
        refresh_skew_seconds: new
            .refresh_skew_seconds
            .unwrap_or(airlock_shared::oauth::DEFAULT_REFRESH_SKEW_SECONDS as i32),
        redirect_uri: new.redirect_uri,
        discover: true,
    })
    .await?;

    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, new.environment_id).await?;
    if client_by_name(&txn, environment.id, &checked.name)
        .await?
        .is_some()
    {
        return Err(AppError::AlreadyExists {
            kind: "OAuth client",
            name: checked.name,
        });
    }
    let at = now();
    let model = oauth_client::ActiveModel {
        id: Set(Uuid::new_v4()),
        environment_id: Set(environment.id),
        created_at: Set(at),
        ..client_columns(&checked, at)?
    }
    .insert(&txn)
    .await
    .map_err(|e| insert_error(e, "OAuth client", &checked.name))?;
    let client = client_from_model(model)?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::OAUTH_CLIENT_CREATE, targets::OAUTH_CLIENT)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(client.id, client.name.clone())
            .detail(client_detail(&client)),
    )
    .await?;
    txn.commit().await?;
    Ok(client)
}

/// Change a client. The whole result is checked again; setting `issuer` without endpoints
/// discovers them again.
pub async fn update_client(
    db: &DatabaseConnection,
    actor: Actor,
    client_id: Uuid,
    changes: ClientChanges,
) -> Result<OAuthClient, AppError> {
    let before = get_client(db, client_id).await?;
    let issuer_set = matches!(changes.issuer, Some(Some(_)));
    let draft = ClientDraft {
        name: changes.name.unwrap_or_else(|| before.name.clone()),
        issuer: changes.issuer.unwrap_or_else(|| before.issuer.clone()),
        // A new issuer discovers the endpoints not given with it.
        authorize_url: match changes.authorize_url {
            Some(url) => url,
            None if issuer_set => None,
            None => before.authorize_url.clone(),
        },
        token_url: match changes.token_url {
            Some(url) => Some(url),
            None if issuer_set => None,
            None => Some(before.token_url.clone()),
        },
        client_id: changes
            .client_id
            .unwrap_or_else(|| before.client_id.clone()),
        client_secret: changes
            .client_secret
            .unwrap_or_else(|| before.client_secret.clone()),
        auth_method: changes.auth_method.unwrap_or(before.auth_method),
        scopes: changes.scopes.unwrap_or_else(|| before.scopes.clone()),
        extra_token_params: changes
            .extra_token_params
            .unwrap_or_else(|| before.extra_token_params.clone()),
        allowed_hosts: changes.allowed_hosts.unwrap_or_else(|| {
            before
                .allowed_hosts
                .iter()
                .map(|h| h.as_str().to_string())
                .collect()
        }),
        refresh_skew_seconds: changes
            .refresh_skew_seconds
            .unwrap_or(before.refresh_skew_seconds as i32),
        redirect_uri: changes
            .redirect_uri
            .unwrap_or_else(|| before.redirect_uri.clone()),
        discover: issuer_set,
    };
    let checked = check_draft(draft).await?;

    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, before.environment_id).await?;
    let current = oauth_client::Entity::find_by_id(client_id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("OAuth client", client_id))?;
    // A rename is safe for connections: snapshots name their client by name, rebuilt on publish.
    if checked.name != current.name
        && client_by_name(&txn, environment.id, &checked.name)
            .await?
            .is_some()
    {
        return Err(AppError::AlreadyExists {
            kind: "OAuth client",
            name: checked.name,
        });
    }
    let at = now();
    let mut active = client_columns(&checked, at)?;
    active.id = Set(current.id);
    let updated = active
        .update(&txn)
        .await
        .map_err(|e| insert_error(e, "OAuth client", &checked.name))?;
    let client = client_from_model(updated)?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::OAUTH_CLIENT_UPDATE, targets::OAUTH_CLIENT)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(client.id, client.name.clone())
            .detail(json!({ "from": client_detail(&before), "to": client_detail(&client) })),
    )
    .await?;
    txn.commit().await?;
    Ok(client)
}

/// Delete a client; `OAUTH_CLIENT_IN_USE` while connections use it. Returns its environment.
pub async fn delete_client(
    db: &DatabaseConnection,
    actor: Actor,
    client_id: Uuid,
) -> Result<Uuid, AppError> {
    let found = get_client(db, client_id).await?;
    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, found.environment_id).await?;
    let current = oauth_client::Entity::find_by_id(client_id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("OAuth client", client_id))?;
    let connections = oauth_connection::Entity::find()
        .filter(oauth_connection::Column::ClientId.eq(client_id))
        .count(&txn)
        .await?;
    if connections > 0 {
        return Err(AppError::OAuthClientInUse {
            name: current.name,
            connections,
        });
    }
    oauth_client::Entity::delete_by_id(client_id)
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::OAUTH_CLIENT_DELETE, targets::OAUTH_CLIENT)
            .tenant(environment.tenant_id)
            .environment(environment.id)
            .target(client_id, current.name),
    )
    .await?;
    txn.commit().await?;
    Ok(environment.id)
}

/// One client; `NOT_FOUND` if unknown.
pub async fn get_client(
    db: &impl ConnectionTrait,
    client_id: Uuid,
) -> Result<OAuthClient, AppError> {
    let model = oauth_client::Entity::find_by_id(client_id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("OAuth client", client_id))?;
    client_from_model(model)
}

/// An environment's clients, by name; `NOT_FOUND` if the environment is unknown.
pub async fn list_clients(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<Vec<OAuthClient>, AppError> {
    environments::get(db, environment_id).await?;
    clients_of_environment(db, environment_id).await
}

async fn clients_of_environment(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
) -> Result<Vec<OAuthClient>, AppError> {
    oauth_client::Entity::find()
        .filter(oauth_client::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(oauth_client::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(client_from_model)
        .collect()
}

/// Create a client-credentials connection (status pending: the data plane obtains its token
/// on first use).
pub async fn create_connection(
    db: &DatabaseConnection,
    actor: Actor,
    client_id: Uuid,
    name: &str,
) -> Result<OAuthConnection, AppError> {
    names::check_secret_name("name", name)?;
    let client = get_client(db, client_id).await?;
    if client.auth_method == TokenAuthMethod::None {
        return Err(AppError::invalid(
            "clientId",
            "a public client (tokenEndpointAuthMethod NONE) cannot use the client-credentials grant; use startOAuthConnection",
        ));
    }
    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, client.environment_id).await?;
    if connection_by_name(&txn, environment.id, name)
        .await?
        .is_some()
    {
        return Err(AppError::AlreadyExists {
            kind: "OAuth connection",
            name: name.to_string(),
        });
    }
    let model = insert_connection(&txn, &client, name, OAuthGrant::ClientCredentials).await?;
    let connection = connection_from_model(model, client)?;
    audit::record(
        &txn,
        connection_created_entry(actor, &environment, &connection),
    )
    .await?;
    txn.commit().await?;
    Ok(connection)
}

/// Start an authorization-code flow for connection `connection_name` (created, with the
/// authorization-code grant, if it does not exist; an existing one keeps its tokens and
/// status until the callback completes). `default_redirect_uri` is used when the client has
/// no redirect URI of its own.
pub async fn start_connection(
    db: &DatabaseConnection,
    sealing_key: &SealingKey,
    actor: Actor,
    environment_id: Uuid,
    client_id: Uuid,
    connection_name: &str,
    default_redirect_uri: Option<&str>,
) -> Result<StartedAuthorization, AppError> {
    names::check_secret_name("connection", connection_name)?;
    let client = get_client(db, client_id).await?;
    if client.environment_id != environment_id {
        // Another environment's client is not one of this environment's.
        return Err(not_found("OAuth client", client_id));
    }
    let authorize_endpoint = client.authorize_url.clone().ok_or_else(|| {
        AppError::OAuthClientIncomplete(format!(
            "OAuth client `{}` has no authorize URL: set authorizeUrl (or an issuer that publishes authorization_endpoint)",
            client.name
        ))
    })?;
    let redirect_uri = match (&client.redirect_uri, default_redirect_uri) {
        (Some(uri), _) => uri.clone(),
        (None, Some(base)) => format!("{}{CALLBACK_PATH}", base.trim_end_matches('/')),
        (None, None) => {
            return Err(AppError::OAuthClientIncomplete(format!(
                "OAuth client `{}` has no redirect URI: set its redirectUri, or start the control plane with --data-plane-url (AIRLOCK_DATA_PLANE_URL)",
                client.name
            )))
        }
    };

    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, environment_id).await?;
    let existing = connection_by_name(&txn, environment.id, connection_name).await?;
    let created = existing.is_none();
    let model = match existing {
        Some(existing) => {
            if existing.client_id != client.id {
                return Err(AppError::invalid(
                    "connection",
                    format!(
                        "connection `{connection_name}` uses another OAuth client; delete it first or pick another name"
                    ),
                ));
            }
            if parse_grant(&existing.grant)? != OAuthGrant::AuthorizationCode {
                return Err(AppError::invalid(
                    "connection",
                    format!(
                        "connection `{connection_name}` uses the client-credentials grant; it needs no authorization"
                    ),
                ));
            }
            existing
        }
        None => {
            insert_connection(
                &txn,
                &client,
                connection_name,
                OAuthGrant::AuthorizationCode,
            )
            .await?
        }
    };
    let connection = connection_from_model(model, client.clone())?;

    let at = now();
    // Forget flows that expired a while ago (a late callback report still finds a recent one).
    oauth_authorization::Entity::delete_many()
        .filter(oauth_authorization::Column::EnvironmentId.eq(environment.id))
        .filter(
            oauth_authorization::Column::ExpiresAt
                .lt(at - chrono::Duration::seconds(AUTHORIZATION_TTL_SECONDS)),
        )
        .exec(&txn)
        .await?;
    let authorization_id = Uuid::new_v4();
    let state = tokens::random_token();
    let verifier = zeroize::Zeroizing::new(tokens::random_token());
    let identity_name = pkce_identity_name(authorization_id);
    let sealed = sealing_key
        .seal(
            SecretIdentity {
                tenant_id: environment.tenant_id,
                environment_id: environment.id,
                name: &identity_name,
                version: 1,
            },
            &verifier,
        )
        .map_err(AppError::internal)?;
    let expires_at = at + chrono::Duration::seconds(AUTHORIZATION_TTL_SECONDS);
    oauth_authorization::ActiveModel {
        id: Set(authorization_id),
        environment_id: Set(environment.id),
        connection_id: Set(connection.id),
        state_hash: Set(state_hash(&state)),
        code_verifier_sealed: Set(serde_json::to_string(&sealed).map_err(AppError::internal)?),
        redirect_uri: Set(redirect_uri.clone()),
        expires_at: Set(expires_at),
        consumed_at: Set(None),
        created_at: Set(at),
    }
    .insert(&txn)
    .await?;
    if created {
        audit::record(
            &txn,
            connection_created_entry(actor, &environment, &connection),
        )
        .await?;
    }
    audit::record(
        &txn,
        AuditEntry::new(
            actor,
            actions::OAUTH_CONNECTION_START,
            targets::OAUTH_CONNECTION,
        )
        .tenant(environment.tenant_id)
        .environment(environment.id)
        .target(connection.id, connection.name.clone())
        .detail(json!({
            "authorizationId": authorization_id,
            "client": client.name,
            "created": created,
            "redirectUri": redirect_uri,
            "expiresAt": expires_at,
        })),
    )
    .await?;
    let authorize_url = authorization_url(
        &authorize_endpoint,
        &client,
        &redirect_uri,
        &state,
        &verifier,
    )?;
    txn.commit().await?;
    Ok(StartedAuthorization {
        id: authorization_id,
        authorize_url,
        expires_at,
        connection,
    })
}

/// The authorization request (RFC 6749 section 4.1.1 with RFC 7636 PKCE, S256): the
/// endpoint's own query is kept and the parameters appended, form-encoded.
fn authorization_url(
    endpoint: &str,
    client: &OAuthClient,
    redirect_uri: &str,
    state: &str,
    verifier: &str,
) -> Result<String, AppError> {
    let mut url = Url::parse(endpoint).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "OAuth client {} has a stored authorize URL that does not parse: {e}",
            client.id
        ))
    })?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !client.scopes.is_empty() {
            query.append_pair("scope", &client.scopes.join(" "));
        }
        query
            .append_pair("state", state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
    }
    Ok(url.into())
}

/// Delete a connection (and its pending flows). Returns its environment.
pub async fn delete_connection(
    db: &DatabaseConnection,
    actor: Actor,
    connection_id: Uuid,
) -> Result<Uuid, AppError> {
    let found = oauth_connection::Entity::find_by_id(connection_id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("OAuth connection", connection_id))?;
    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, found.environment_id).await?;
    let current = oauth_connection::Entity::find_by_id(connection_id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("OAuth connection", connection_id))?;
    oauth_authorization::Entity::delete_many()
        .filter(oauth_authorization::Column::ConnectionId.eq(connection_id))
        .exec(&txn)
        .await?;
    oauth_connection::Entity::delete_by_id(connection_id)
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        AuditEntry::new(
            actor,
            actions::OAUTH_CONNECTION_DELETE,
            targets::OAUTH_CONNECTION,
        )
        .tenant(environment.tenant_id)
        .environment(environment.id)
        .target(connection_id, current.name.clone())
        .detail(json!({ "status": current.status, "grant": current.grant })),
    )
    .await?;
    txn.commit().await?;
    Ok(environment.id)
}

/// Reset a broken client-credentials connection to `PENDING`, once what the provider refused
/// (a client secret, the client's registration) has been fixed: data planes then ask the
/// token endpoint again on the next use. A broken authorization-code connection needs the
/// user again (`startOAuthConnection`), and a connection that is not broken has nothing to
/// reset: both are refused and change nothing.
pub async fn reset_connection(
    db: &DatabaseConnection,
    actor: Actor,
    connection_id: Uuid,
) -> Result<OAuthConnection, AppError> {
    let found = oauth_connection::Entity::find_by_id(connection_id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("OAuth connection", connection_id))?;
    let txn = begin_write(db).await?;
    let environment = lock_environment(&txn, found.environment_id).await?;
    let current = oauth_connection::Entity::find_by_id(connection_id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("OAuth connection", connection_id))?;
    if parse_grant(&current.grant)? != OAuthGrant::ClientCredentials {
        return Err(AppError::invalid(
            "id",
            format!(
                "connection `{}` uses the authorization-code grant: reconnect it with startOAuthConnection",
                current.name
            ),
        ));
    }
    if parse_status(&current.status)? != ConnectionStatus::Broken {
        return Err(AppError::invalid(
            "id",
            format!(
                "connection `{}` is not broken; there is nothing to reset",
                current.name
            ),
        ));
    }
    let previous_error = current.last_error.clone();
    let mut model: oauth_connection::ActiveModel = current.into();
    model.status = Set(status_name(ConnectionStatus::Pending).to_string());
    model.updated_at = Set(now());
    let model = model.update(&txn).await?;
    audit::record(
        &txn,
        AuditEntry::new(
            actor,
            actions::OAUTH_CONNECTION_RESET,
            targets::OAUTH_CONNECTION,
        )
        .tenant(environment.tenant_id)
        .environment(environment.id)
        .target(connection_id, model.name.clone())
        .detail(json!({ "previousError": previous_error })),
    )
    .await?;
    txn.commit().await?;
    let client = get_client(db, model.client_id).await?;
    connection_from_model(model, client)
}

/// An environment's connections, by name; `NOT_FOUND` if the environment is unknown.
pub async fn list_connections(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<Vec<OAuthConnection>, AppError> {
    environments::get(db, environment_id).await?;
    let clients: HashMap<Uuid, OAuthClient> = clients_of_environment(db, environment_id)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    oauth_connection::Entity::find()
        .filter(oauth_connection::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(oauth_connection::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(|model| {
            let client = clients.get(&model.client_id).cloned().ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "OAuth connection {} names a client outside its environment",
                    model.id
                ))
            })?;
            connection_from_model(model, client)
        })
        .collect()
}

/// What an environment's snapshot holds of OAuth.
pub struct SnapshotParts {
    pub clients: BTreeMap<String, OAuthClientSpec>,
    pub connections: BTreeMap<String, OAuthConnectionSpec>,
    pub authorizations: Vec<PendingAuthorization>,
}

/// Clients, connections (with their sealed tokens) and unexpired, unconsumed authorizations
/// of an environment, as data planes receive them.
pub async fn snapshot_parts(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
    at: DateTime<Utc>,
) -> Result<SnapshotParts, AppError> {
    let clients = clients_of_environment(db, environment_id).await?;
    let names_by_id: HashMap<Uuid, String> =
        clients.iter().map(|c| (c.id, c.name.clone())).collect();
    let connections = oauth_connection::Entity::find()
        .filter(oauth_connection::Column::EnvironmentId.eq(environment_id))
        .all(db)
        .await?;
    let connection_names: HashMap<Uuid, String> =
        connections.iter().map(|c| (c.id, c.name.clone())).collect();
    let mut connection_specs = BTreeMap::new();
    for model in connections {
        let Some(client) = names_by_id.get(&model.client_id) else {
            tracing::error!(connection_id = %model.id, "OAuth connection without its client; leaving it out of the snapshot");
            continue;
        };
        connection_specs.insert(
            model.name.clone(),
            OAuthConnectionSpec {
                id: model.id,
                name: model.name.clone(),
                client: client.clone(),
                grant: parse_grant(&model.grant)?,
                status: parse_status(&model.status)?,
                tokens: stored_tokens(&model)?,
            },
        );
    }
    let authorizations = oauth_authorization::Entity::find()
        .filter(oauth_authorization::Column::EnvironmentId.eq(environment_id))
        .filter(oauth_authorization::Column::ConsumedAt.is_null())
        .filter(oauth_authorization::Column::ExpiresAt.gt(at))
        .order_by_asc(oauth_authorization::Column::CreatedAt)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|row| {
            let connection = connection_names.get(&row.connection_id)?.clone();
            Some(
                serde_json::from_str::<SealedSecret>(&row.code_verifier_sealed)
                    .map_err(|e| {
                        AppError::internal(anyhow::anyhow!(
                            "OAuth authorization {} has a malformed sealed verifier: {e}",
                            row.id
                        ))
                    })
                    .map(|code_verifier| PendingAuthorization {
                        id: row.id,
                        connection,
                        state_hash: row.state_hash,
                        code_verifier,
                        redirect_uri: row.redirect_uri,
                        expires_at: row.expires_at,
                    }),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SnapshotParts {
        clients: clients
            .into_iter()
            .map(|c| (c.name.clone(), client_spec(c)))
            .collect(),
        connections: connection_specs,
        authorizations,
    })
}

fn client_spec(client: OAuthClient) -> OAuthClientSpec {
    OAuthClientSpec {
        id: client.id,
        name: client.name,
        issuer: client.issuer,
        token_url: client.token_url,
        authorize_url: client.authorize_url,
        client_id: client.client_id,
        client_secret: client.client_secret,
        auth_method: client.auth_method,
        scopes: client.scopes,
        extra_token_params: client.extra_token_params,
        allowed_hosts: client.allowed_hosts,
        refresh_skew_seconds: client.refresh_skew_seconds,
        redirect_uri: client.redirect_uri,
    }
}

async fn insert_connection(
    txn: &impl ConnectionTrait,
    client: &OAuthClient,
    name: &str,
    grant: OAuthGrant,
) -> Result<oauth_connection::Model, AppError> {
    let at = now();
    oauth_connection::ActiveModel {
        id: Set(Uuid::new_v4()),
        environment_id: Set(client.environment_id),
        client_id: Set(client.id),
        name: Set(name.to_string()),
        grant: Set(grant_name(grant).to_string()),
        status: Set(status_name(ConnectionStatus::Pending).to_string()),
        sealed_tokens: Set(None),
        token_generation: Set(0),
        expires_at: Set(None),
        last_refresh_at: Set(None),
        last_error: Set(None),
        connected_at: Set(None),
        created_at: Set(at),
        updated_at: Set(at),
    }
    .insert(txn)
    .await
    .map_err(|e| insert_error(e, "OAuth connection", name))
}

fn connection_created_entry(
    actor: Actor,
    environment: &environment::Model,
    connection: &OAuthConnection,
) -> AuditEntry {
    AuditEntry::new(
        actor,
        actions::OAUTH_CONNECTION_CREATE,
        targets::OAUTH_CONNECTION,
    )
    .tenant(environment.tenant_id)
    .environment(environment.id)
    .target(connection.id, connection.name.clone())
    .detail(json!({
        "client": connection.client.name,
        "clientId": connection.client.id,
        "grant": grant_name(connection.grant),
    }))
}

async fn client_by_name(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
    name: &str,
) -> Result<Option<oauth_client::Model>, AppError> {
    Ok(oauth_client::Entity::find()
        .filter(oauth_client::Column::EnvironmentId.eq(environment_id))
        .filter(oauth_client::Column::Name.eq(name))
        .one(db)
        .await?)
}

async fn connection_by_name(
    db: &impl ConnectionTrait,
    environment_id: Uuid,
    name: &str,
) -> Result<Option<oauth_connection::Model>, AppError> {
    Ok(oauth_connection::Entity::find()
        .filter(oauth_connection::Column::EnvironmentId.eq(environment_id))
        .filter(oauth_connection::Column::Name.eq(name))
        .one(db)
        .await?)
}

/// Every configurable column of a client, `updated_at` set to `at`.
fn client_columns(
    checked: &CheckedClient,
    at: DateTime<Utc>,
) -> Result<oauth_client::ActiveModel, AppError> {
    Ok(oauth_client::ActiveModel {
        name: Set(checked.name.clone()),
        issuer: Set(checked.issuer.clone()),
        authorize_url: Set(checked.authorize_url.clone()),
        token_url: Set(checked.token_url.clone()),
        client_id: Set(checked.client_id.clone()),
        client_secret_name: Set(checked.client_secret.clone()),
        auth_method: Set(auth_method_name(checked.auth_method).to_string()),
        scopes: Set(serde_json::to_string(&checked.scopes).map_err(AppError::internal)?),
        extra_token_params: Set(
            serde_json::to_string(&checked.extra_token_params).map_err(AppError::internal)?
        ),
        allowed_hosts: Set(
            serde_json::to_string(&checked.allowed_hosts).map_err(AppError::internal)?
        ),
        refresh_skew_seconds: Set(checked.refresh_skew_seconds as i32),
        redirect_uri: Set(checked.redirect_uri.clone()),
        updated_at: Set(at),
        ..Default::default()
    })
}

/// A client's configuration for the audit log (it holds no secret).
fn client_detail(client: &OAuthClient) -> serde_json::Value {
    json!({
        "name": client.name,
        "issuer": client.issuer,
        "authorizeUrl": client.authorize_url,
        "tokenUrl": client.token_url,
        "clientId": client.client_id,
        "clientSecret": client.client_secret,
        "authMethod": auth_method_name(client.auth_method),
        "scopes": client.scopes,
        "extraTokenParams": client.extra_token_params.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "allowedHosts": client.allowed_hosts,
        "refreshSkewSeconds": client.refresh_skew_seconds,
        "redirectUri": client.redirect_uri,
    })
}

fn stored_json<T: serde::de::DeserializeOwned>(
    what: &str,
    id: Uuid,
    json: &str,
) -> Result<T, AppError> {
    serde_json::from_str(json).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "OAuth {id} has a malformed stored {what}: {e}"
        ))
    })
}

fn client_from_model(model: oauth_client::Model) -> Result<OAuthClient, AppError> {
    Ok(OAuthClient {
        scopes: stored_json("scope list", model.id, &model.scopes)?,
        extra_token_params: stored_json("parameter list", model.id, &model.extra_token_params)?,
        allowed_hosts: stored_json("host list", model.id, &model.allowed_hosts)?,
        auth_method: parse_auth_method(&model.auth_method)?,
        refresh_skew_seconds: u32::try_from(model.refresh_skew_seconds).unwrap_or(0),
        id: model.id,
        environment_id: model.environment_id,
        name: model.name,
        issuer: model.issuer,
        authorize_url: model.authorize_url,
        token_url: model.token_url,
        client_id: model.client_id,
        client_secret: model.client_secret_name,
        redirect_uri: model.redirect_uri,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

fn connection_from_model(
    model: oauth_connection::Model,
    client: OAuthClient,
) -> Result<OAuthConnection, AppError> {
    Ok(OAuthConnection {
        grant: parse_grant(&model.grant)?,
        status: parse_status(&model.status)?,
        id: model.id,
        environment_id: model.environment_id,
        name: model.name,
        client,
        expires_at: model.expires_at,
        last_refresh_at: model.last_refresh_at,
        last_error: model.last_error,
        connected_at: model.connected_at,
        token_generation: model.token_generation,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

fn stored_tokens(model: &oauth_connection::Model) -> Result<Option<SealedTokenSet>, AppError> {
    model
        .sealed_tokens
        .as_deref()
        .map(|json| stored_json("token set", model.id, json))
        .transpose()
}

/// Stored name of an auth method (its wire name).
pub fn auth_method_name(method: TokenAuthMethod) -> &'static str {
    match method {
        TokenAuthMethod::ClientSecretBasic => "client_secret_basic",
        TokenAuthMethod::ClientSecretPost => "client_secret_post",
        TokenAuthMethod::None => "none",
    }
}

fn parse_auth_method(name: &str) -> Result<TokenAuthMethod, AppError> {
    [
        TokenAuthMethod::ClientSecretBasic,
        TokenAuthMethod::ClientSecretPost,
        TokenAuthMethod::None,
    ]
    .into_iter()
    .find(|m| auth_method_name(*m) == name)
    .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown stored auth method `{name}`")))
}

/// Stored name of a grant.
pub fn grant_name(grant: OAuthGrant) -> &'static str {
    match grant {
        OAuthGrant::ClientCredentials => "client_credentials",
        OAuthGrant::AuthorizationCode => "authorization_code",
    }
}

fn parse_grant(name: &str) -> Result<OAuthGrant, AppError> {
    [OAuthGrant::ClientCredentials, OAuthGrant::AuthorizationCode]
        .into_iter()
        .find(|g| grant_name(*g) == name)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown stored grant `{name}`")))
}

/// Stored name of a status.
pub fn status_name(status: ConnectionStatus) -> &'static str {
    match status {
        ConnectionStatus::Pending => "pending",
        ConnectionStatus::Connected => "connected",
        ConnectionStatus::Broken => "broken",
    }
}

fn parse_status(name: &str) -> Result<ConnectionStatus, AppError> {
    [
        ConnectionStatus::Pending,
        ConnectionStatus::Connected,
        ConnectionStatus::Broken,
    ]
    .into_iter()
    .find(|s| status_name(*s) == name)
    .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown stored status `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_match_the_wire_names() {
        for method in [
            TokenAuthMethod::ClientSecretBasic,
            TokenAuthMethod::ClientSecretPost,
            TokenAuthMethod::None,
        ] {
            assert_eq!(
                serde_json::to_value(method).unwrap(),
                auth_method_name(method)
            );
            assert_eq!(parse_auth_method(auth_method_name(method)).unwrap(), method);
        }
        for grant in [OAuthGrant::ClientCredentials, OAuthGrant::AuthorizationCode] {
            assert_eq!(serde_json::to_value(grant).unwrap(), grant_name(grant));
        }
        for status in [
            ConnectionStatus::Pending,
            ConnectionStatus::Connected,
            ConnectionStatus::Broken,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status_name(status));
            assert_eq!(parse_status(status_name(status)).unwrap(), status);
        }
    }
}
