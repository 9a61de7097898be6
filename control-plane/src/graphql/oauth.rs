//! OAuth clients and connections. No type here has a field that could return a token or a
//! client secret: `clientSecret` is the *name* of a vault secret.

use airlock_shared::oauth::{ConnectionStatus, OAuthGrant as SharedGrant, TokenAuthMethod};
use async_graphql::{Context, Enum, InputObject, MaybeUndefined, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::oauth::{self, ClientChanges, NewClient};
use crate::error::GraphqlResultExt;

/// How the client authenticates at the token endpoint.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "OAuthTokenAuthMethod")]
pub enum OAuthTokenAuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749's default).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client: no secret (authorization code with PKCE only).
    None,
}

impl From<OAuthTokenAuthMethod> for TokenAuthMethod {
    fn from(method: OAuthTokenAuthMethod) -> Self {
        match method {
            OAuthTokenAuthMethod::ClientSecretBasic => TokenAuthMethod::ClientSecretBasic,
            OAuthTokenAuthMethod::ClientSecretPost => TokenAuthMethod::ClientSecretPost,
            OAuthTokenAuthMethod::None => TokenAuthMethod::None,
        }
    }
}

impl From<TokenAuthMethod> for OAuthTokenAuthMethod {
    fn from(method: TokenAuthMethod) -> Self {
        match method {
            TokenAuthMethod::ClientSecretBasic => OAuthTokenAuthMethod::ClientSecretBasic,
            TokenAuthMethod::ClientSecretPost => OAuthTokenAuthMethod::ClientSecretPost,
            TokenAuthMethod::None => OAuthTokenAuthMethod::None,
        }
    }
}

/// How a connection gets its tokens.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "OAuthGrant")]
pub enum OAuthGrant {
    /// The client's own credentials; the data plane obtains tokens on first use.
    ClientCredentials,
    /// A user's delegated access (authorization code with PKCE, then refresh tokens).
    AuthorizationCode,
}

impl From<SharedGrant> for OAuthGrant {
    fn from(grant: SharedGrant) -> Self {
        match grant {
            SharedGrant::ClientCredentials => OAuthGrant::ClientCredentials,
            SharedGrant::AuthorizationCode => OAuthGrant::AuthorizationCode,
        }
    }
}

/// Where a connection stands.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "OAuthConnectionStatus")]
pub enum OAuthConnectionStatus {
    /// No token yet (client credentials before first use; authorization code before its
    /// callback).
    Pending,
    /// Tokens are held and refreshed as needed.
    Connected,
    /// The provider refused the grant: nothing is sent with it until it is connected again.
    Broken,
}

impl From<ConnectionStatus> for OAuthConnectionStatus {
    fn from(status: ConnectionStatus) -> Self {
        match status {
            ConnectionStatus::Pending => OAuthConnectionStatus::Pending,
            ConnectionStatus::Connected => OAuthConnectionStatus::Connected,
            ConnectionStatus::Broken => OAuthConnectionStatus::Broken,
        }
    }
}

/// An extra token request parameter (`audience`, `resource`...).
#[derive(SimpleObject, InputObject, Debug, Clone)]
#[graphql(name = "OAuthTokenParam", input_name = "OAuthTokenParamInput")]
pub struct OAuthTokenParam {
    pub name: String,
    pub value: String,
}

/// An OAuth client: a provider's endpoints and this environment's registration there.
pub struct OAuthClient(pub oauth::OAuthClient);

/// An OAuth client: a provider's endpoints and this environment's registration there.
#[Object(name = "OAuthClient")]
impl OAuthClient {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn environment_id(&self) -> ID {
        to_id(self.0.environment_id)
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    /// The provider's issuer, when its endpoints were discovered.
    async fn issuer(&self) -> Option<&str> {
        self.0.issuer.as_deref()
    }

    /// Authorization endpoint (needed by `startOAuthConnection`).
    async fn authorize_url(&self) -> Option<&str> {
        self.0.authorize_url.as_deref()
    }

    /// Token endpoint.
    async fn token_url(&self) -> &str {
        &self.0.token_url
    }

    async fn client_id(&self) -> &str {
        &self.0.client_id
    }

    /// Name of the vault secret of this environment holding the client secret (never the
    /// secret itself); null for a public client.
    async fn client_secret(&self) -> Option<&str> {
        self.0.client_secret.as_deref()
    }

    async fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    async fn token_endpoint_auth_method(&self) -> OAuthTokenAuthMethod {
        self.0.auth_method.into()
    }

    /// Extra parameters sent with every token request, in order.
    async fn extra_token_params(&self) -> Vec<OAuthTokenParam> {
        self.0
            .extra_token_params
            .iter()
            .map(|(name, value)| OAuthTokenParam {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Hosts the access tokens may be sent to.
    async fn allowed_hosts(&self) -> Vec<String> {
        self.0
            .allowed_hosts
            .iter()
            .map(|h| h.as_str().to_string())
            .collect()
    }

    /// Tokens are refreshed this many seconds before they expire.
    async fn refresh_skew_seconds(&self) -> i32 {
        self.0.refresh_skew_seconds as i32
    }

    /// Redirect URI registered at the provider; null: the data plane URL's
    /// `/v1/oauth/callback`.
    async fn redirect_uri(&self) -> Option<&str> {
        self.0.redirect_uri.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// An OAuth connection: tokens obtained with a client, held by the data planes (sealed).
/// Referenced in templates as `{{oauth.NAME}}`. Never shows a token.
pub struct OAuthConnection(pub oauth::OAuthConnection);

/// An OAuth connection: tokens obtained with a client, held by the data planes (sealed).
/// Referenced in templates as `{{oauth.NAME}}`. Never shows a token.
#[Object(name = "OAuthConnection")]
impl OAuthConnection {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    async fn environment_id(&self) -> ID {
        to_id(self.0.environment_id)
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn client(&self) -> OAuthClient {
        OAuthClient(self.0.client.clone())
    }

    async fn grant(&self) -> OAuthGrant {
        self.0.grant.into()
    }

    async fn status(&self) -> OAuthConnectionStatus {
        self.0.status.into()
    }

    /// When the current access token expires (null: unknown or no token).
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }

    /// When a data plane last talked to the token endpoint for it.
    async fn last_refresh_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_refresh_at
    }

    /// What went wrong last (the provider's error code and description).
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }

    /// When it was last connected (an authorization completed, or first tokens obtained).
    async fn connected_at(&self) -> Option<DateTime<Utc>> {
        self.0.connected_at
    }

    /// Generation of the stored tokens: 0 before the first; it only grows (+1 on every
    /// refresh; a refusal that breaks the connection uses one up too).
    async fn token_generation(&self) -> i64 {
        self.0.token_generation
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// An authorization-code flow just started: send the user to `authorizeUrl`.
pub struct OAuthAuthorization(pub oauth::StartedAuthorization);

/// An authorization-code flow just started: send the user to `authorizeUrl`.
#[Object(name = "OAuthAuthorization")]
impl OAuthAuthorization {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    /// The provider's authorization URL with state and PKCE challenge. Single use; the
    /// callback goes to a data plane, which completes the connection.
    async fn authorize_url(&self) -> &str {
        &self.0.authorize_url
    }

    /// The flow must complete before this.
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }

    async fn connection(&self) -> OAuthConnection {
        OAuthConnection(self.0.connection.clone())
    }
}

fn params(list: Vec<OAuthTokenParam>) -> Vec<(String, String)> {
    list.into_iter().map(|p| (p.name, p.value)).collect()
}

/// Input of `createOAuthClient`.
#[derive(InputObject, Debug)]
pub struct CreateOAuthClientInput {
    pub environment_id: ID,
    /// A letter or `_`, then letters, digits, `_` or `-`.
    pub name: String,
    /// The provider's issuer: token and authorize endpoints not given are discovered from
    /// its metadata (`/.well-known/openid-configuration`, then RFC 8414).
    pub issuer: Option<String>,
    pub authorize_url: Option<String>,
    /// Required unless `issuer` is given.
    pub token_url: Option<String>,
    pub client_id: String,
    /// Name of a vault secret of this environment that holds the client secret (it need not
    /// be set yet). Required unless the auth method is `NONE`.
    pub client_secret: Option<String>,
    #[graphql(default)]
    pub scopes: Vec<String>,
    #[graphql(default_with = "OAuthTokenAuthMethod::ClientSecretBasic")]
    pub token_endpoint_auth_method: OAuthTokenAuthMethod,
    /// Sent with every token request; may not override the parameters Airlock sets.
    #[graphql(default)]
    pub extra_token_params: Vec<OAuthTokenParam>,
    /// Hosts the access tokens may be sent to (1-64: `api.example.com`, `*.example.com`).
    pub allowed_hosts: Vec<String>,
    /// 0 to 3600.
    #[graphql(default = 60)]
    pub refresh_skew_seconds: i32,
    /// The redirect URI registered at the provider; default: the data plane URL's
    /// `/v1/oauth/callback`.
    pub redirect_uri: Option<String>,
}

/// Input of `updateOAuthClient`: fields left out keep their value; `null` clears a nullable
/// one.
#[derive(InputObject, Debug)]
pub struct UpdateOAuthClientInput {
    pub id: ID,
    pub name: Option<String>,
    /// Setting it discovers the endpoints not given in the same update.
    pub issuer: MaybeUndefined<String>,
    pub authorize_url: MaybeUndefined<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: MaybeUndefined<String>,
    pub scopes: Option<Vec<String>>,
    pub token_endpoint_auth_method: Option<OAuthTokenAuthMethod>,
    pub extra_token_params: Option<Vec<OAuthTokenParam>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub refresh_skew_seconds: Option<i32>,
    pub redirect_uri: MaybeUndefined<String>,
}

fn change<T>(value: MaybeUndefined<T>) -> Option<Option<T>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(value) => Some(Some(value)),
    }
}

/// Input of `deleteOAuthClient`.
#[derive(InputObject, Debug)]
pub struct DeleteOAuthClientInput {
    pub id: ID,
}

/// Input of `deleteOAuthConnection`.
#[derive(InputObject, Debug)]
pub struct DeleteOAuthConnectionInput {
    pub id: ID,
}

/// Input of `resetOAuthConnection`.
#[derive(InputObject, Debug)]
pub struct ResetOAuthConnectionInput {
    pub id: ID,
}

/// Input of `createOAuthConnection`.
#[derive(InputObject, Debug)]
pub struct CreateOAuthConnectionInput {
    pub client_id: ID,
    /// Referenced in templates as `{{oauth.NAME}}`.
    pub name: String,
}

/// Input of `startOAuthConnection`.
#[derive(InputObject, Debug)]
pub struct StartOAuthConnectionInput {
    pub environment_id: ID,
    pub client_id: ID,
    /// Name of the connection to fill (created if it does not exist).
    pub connection: String,
}

/// OAuth queries.
#[derive(Default)]
pub struct OAuthQuery;

#[Object]
impl OAuthQuery {
    /// An environment's OAuth clients, by name.
    #[graphql(
        name = "oauthClients",
        guard = "Can::new(Permission::OAuthRead, Target::environment(&environment_id))"
    )]
    async fn oauth_clients(
        &self,
        ctx: &Context<'_>,
        environment_id: ID,
    ) -> Result<Vec<OAuthClient>> {
        let environment_id = parse_id("environmentId", &environment_id).gql()?;
        let clients = oauth::list_clients(&state(ctx).db, environment_id)
            .await
            .gql()?;
        Ok(clients.into_iter().map(OAuthClient).collect())
    }

    /// An environment's OAuth connections, by name. Never a token.
    #[graphql(
        name = "oauthConnections",
        guard = "Can::new(Permission::OAuthRead, Target::environment(&environment_id))"
    )]
    async fn oauth_connections(
        &self,
        ctx: &Context<'_>,
        environment_id: ID,
    ) -> Result<Vec<OAuthConnection>> {
        let environment_id = parse_id("environmentId", &environment_id).gql()?;
        let connections = oauth::list_connections(&state(ctx).db, environment_id)
            .await
            .gql()?;
        Ok(connections.into_iter().map(OAuthConnection).collect())
    }
}

/// OAuth mutations.
#[derive(Default)]
pub struct OAuthMutation;

#[Object]
impl OAuthMutation {
    /// Create an OAuth client. With `issuer` and without `tokenUrl`/`authorizeUrl`, the
    /// endpoints are discovered (`OAUTH_DISCOVERY_FAILED` if that fails). Live in the data
    /// planes when this returns.
    #[graphql(
        name = "createOAuthClient",
        guard = "Can::new(Permission::OAuthWrite, Target::environment(&input.environment_id))"
    )]
    async fn create_oauth_client(
        &self,
        ctx: &Context<'_>,
        input: CreateOAuthClientInput,
    ) -> Result<OAuthClient> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let environment_id = parse_id("environmentId", &input.environment_id).gql()?;
        let client = oauth::create_client(
            &state.db,
            actor,
            NewClient {
                environment_id,
                name: input.name,
                issuer: input.issuer,
                authorize_url: input.authorize_url,
                token_url: input.token_url,
                client_id: input.client_id,
                client_secret: input.client_secret,
                scopes: input.scopes,
                auth_method: Some(input.token_endpoint_auth_method.into()),
                extra_token_params: params(input.extra_token_params),
                allowed_hosts: input.allowed_hosts,
                refresh_skew_seconds: Some(input.refresh_skew_seconds),
                redirect_uri: input.redirect_uri,
            },
        )
        .await
        .gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(OAuthClient(client))
    }

    /// Change an OAuth client; the result is checked as a whole.
    #[graphql(
        name = "updateOAuthClient",
        guard = "Can::new(Permission::OAuthWrite, Target::oauth_client(\"id\", &input.id))"
    )]
    async fn update_oauth_client(
        &self,
        ctx: &Context<'_>,
        input: UpdateOAuthClientInput,
    ) -> Result<OAuthClient> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &input.id).gql()?;
        let changes = ClientChanges {
            name: input.name,
            issuer: change(input.issuer),
            authorize_url: change(input.authorize_url),
            token_url: input.token_url,
            client_id: input.client_id,
            client_secret: change(input.client_secret),
            scopes: input.scopes,
            auth_method: input.token_endpoint_auth_method.map(Into::into),
            extra_token_params: input.extra_token_params.map(params),
            allowed_hosts: input.allowed_hosts,
            refresh_skew_seconds: input.refresh_skew_seconds,
            redirect_uri: change(input.redirect_uri),
        };
        let client = oauth::update_client(&state.db, actor, id, changes)
            .await
            .gql()?;
        state
            .publisher
            .publish_environment(client.environment_id)
            .await;
        Ok(OAuthClient(client))
    }

    /// Delete an OAuth client; returns its id. `OAUTH_CLIENT_IN_USE` while connections use it.
    #[graphql(
        name = "deleteOAuthClient",
        guard = "Can::new(Permission::OAuthWrite, Target::oauth_client(\"id\", &input.id))"
    )]
    async fn delete_oauth_client(
        &self,
        ctx: &Context<'_>,
        input: DeleteOAuthClientInput,
    ) -> Result<ID> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &input.id).gql()?;
        let environment_id = oauth::delete_client(&state.db, actor, id).await.gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(to_id(id))
    }

    /// Create a client-credentials connection. It is `PENDING` until a data plane obtains its
    /// first token (on first use).
    #[graphql(
        name = "createOAuthConnection",
        guard = "Can::new(Permission::OAuthConnect, Target::oauth_client(\"clientId\", &input.client_id))"
    )]
    async fn create_oauth_connection(
        &self,
        ctx: &Context<'_>,
        input: CreateOAuthConnectionInput,
    ) -> Result<OAuthConnection> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let client_id = parse_id("clientId", &input.client_id).gql()?;
        let connection = oauth::create_connection(&state.db, actor, client_id, &input.name)
            .await
            .gql()?;
        state
            .publisher
            .publish_environment(connection.environment_id)
            .await;
        Ok(OAuthConnection(connection))
    }

    /// Start an authorization-code flow (PKCE, S256) for a connection, created if missing.
    /// Send the user to `authorizeUrl`; the provider redirects to a data plane, which
    /// completes the connection. An existing connection keeps its tokens until then.
    #[graphql(
        name = "startOAuthConnection",
        guard = "Can::new(Permission::OAuthConnect, Target::environment(&input.environment_id))"
    )]
    async fn start_oauth_connection(
        &self,
        ctx: &Context<'_>,
        input: StartOAuthConnectionInput,
    ) -> Result<OAuthAuthorization> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let environment_id = parse_id("environmentId", &input.environment_id).gql()?;
        let client_id = parse_id("clientId", &input.client_id).gql()?;
        let started = oauth::start_connection(
            &state.db,
            &state.sealing_key,
            actor,
            environment_id,
            client_id,
            &input.connection,
            state.data_plane_url.as_deref(),
        )
        .await
        .gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(OAuthAuthorization(started))
    }

    /// Reset a BROKEN client-credentials connection to PENDING once what the provider refused
    /// (the client secret, the client's registration) is fixed: data planes ask for a token
    /// again on the next use. Authorization-code connections reconnect with
    /// `startOAuthConnection` instead.
    #[graphql(
        name = "resetOAuthConnection",
        guard = "Can::new(Permission::OAuthConnect, Target::oauth_connection(\"id\", &input.id))"
    )]
    async fn reset_oauth_connection(
        &self,
        ctx: &Context<'_>,
        input: ResetOAuthConnectionInput,
    ) -> Result<OAuthConnection> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &input.id).gql()?;
        let connection = oauth::reset_connection(&state.db, actor, id).await.gql()?;
        state
            .publisher
            .publish_environment(connection.environment_id)
            .await;
        Ok(OAuthConnection(connection))
    }

    /// Delete a connection (and its pending authorizations); returns its id. Functions that
    /// use it fail closed from when this returns.
    #[graphql(
        name = "deleteOAuthConnection",
        guard = "Can::new(Permission::OAuthWrite, Target::oauth_connection(\"id\", &input.id))"
    )]
    async fn delete_oauth_connection(
        &self,
        ctx: &Context<'_>,
        input: DeleteOAuthConnectionInput,
    ) -> Result<ID> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let id = parse_id("id", &input.id).gql()?;
        let environment_id = oauth::delete_connection(&state.db, actor, id).await.gql()?;
        state.publisher.publish_environment(environment_id).await;
        Ok(to_id(id))
    }
}
