//! Signing in with OpenID Connect, end to end: the real `airlock` binary against a real
//! OpenID provider (oidc-provider under Node.js), driven like a browser.
//!
//! - Console sign-in: `/auth/login` → the provider's login and consent pages → `/auth/callback`
//!   → a session cookie; an email invitation becomes the user's role; cookie-authenticated
//!   GraphQL needs the CSRF header; a replayed or forged callback, or a refusal at the provider,
//!   signs nobody in; a personal admin token acts for the user until revoked; logout ends the
//!   session.
//! - Bearer JWTs: access tokens from the issuer authenticate; tampered, expired, wrong-issuer,
//!   wrong-audience, `alg: none` and garbage tokens get 401.
//! - Neither the logs nor the database hold a session id, CSRF token, code, token or the
//!   client secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_e2e::oidc::{
    decode_jwt_unverified, ClientAuth, OidcClient, OidcConfig, OidcProvider, Pkce, Ttl,
};
use airlock_e2e::{free_port, Airlock, AirlockOptions, PostgresDb};
use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::cookie::CookieStore;
use reqwest::{header, StatusCode, Url};
use serde_json::{json, Value};

const CONSOLE_CLIENT: &str = "airlock-console";
const CONSOLE_SECRET: &str = "console-secret-6f1d2c9a8b7e";
/// A command-line client of the same provider, for access tokens of a person.
const CLI_CLIENT: &str = "cli";
const CLI_SECRET: &str = "cli-secret-0a9b8c7d";
const CLI_REDIRECT: &str = "http://127.0.0.1:9/cli-callback";
const SERVICE_CLIENT: &str = "svc";
const SERVICE_SECRET: &str = "svc-secret-5e4d3c2b";

const CREATE_TENANT: &str = "mutation($n: String!) { createTenant(input: {name: $n}) { id } }";
const CREATE_ENVIRONMENT: &str =
    "mutation($t: ID!, $n: String!) { createEnvironment(input: {tenantId: $t, name: $n}) { id } }";
const CREATE_FUNCTION: &str = "mutation($t: ID!, $n: String!) { createFunction(input: {tenantId: $t, name: $n, method: \"GET\", url: \"https://api.example.com/x\", headers: []}) { id name } }";
const GRANT: &str = "mutation($p: String!, $r: Role!, $t: ID) { grantRole(input: {principal: $p, role: $r, tenantId: $t}) { id } }";
const ME: &str = "{ me { kind id principal email roles { role tenantId } } }";

/// A provider, an Airlock configured to use it, and a tenant where alice is invited as a
/// developer.
struct World {
    _dir: tempfile::TempDir,
    idp: OidcProvider,
    airlock: Airlock,
    tenant: String,
}

fn provider_config(callback: &str, ttl: Ttl) -> OidcConfig {
    OidcConfig {
        clients: vec![
            OidcClient::web(CONSOLE_CLIENT, CONSOLE_SECRET, callback),
            OidcClient::web(CLI_CLIENT, CLI_SECRET, CLI_REDIRECT),
            OidcClient::service(SERVICE_CLIENT, SERVICE_SECRET),
        ],
        ttl,
        ..OidcConfig::default()
    }
}

/// The OIDC settings for Airlock: the client secret comes from a file.
fn oidc_options(dir: &std::path::Path, idp: &OidcProvider, port: u16) -> Result<AirlockOptions> {
    let secret_file = dir.join("oidc-client-secret");
    std::fs::write(&secret_file, format!("{CONSOLE_SECRET}\n"))?;
    Ok(AirlockOptions {
        control_port: Some(port),
        ..AirlockOptions::default()
    }
    .env("AIRLOCK_OIDC_ISSUER", idp.issuer())
    .env("AIRLOCK_OIDC_CLIENT_ID", CONSOLE_CLIENT)
    .env(
        "AIRLOCK_OIDC_CLIENT_SECRET_FILE",
        secret_file.display().to_string(),
    )
    .env("AIRLOCK_OIDC_AUDIENCE", idp.audience()))
}

async fn world(database: Option<(&str, &str)>) -> Result<World> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/auth/callback");
    let idp = OidcProvider::start(dir.path(), provider_config(&callback, Ttl::default())).await?;
    let options = oidc_options(dir.path(), &idp, port)?;
    let airlock = match database {
        None => Airlock::dev_with(options).await?,
        Some((url, prefix)) => Airlock::split_with(url, prefix, options).await?,
    };
    let tenant = airlock
        .graphql_ok(CREATE_TENANT, json!({ "n": "acme" }))
        .await?["createTenant"]["id"]
        .as_str()
        .context("tenant id")?
        .to_string();
    airlock
        .graphql_ok(
            GRANT,
            json!({ "p": "email:alice@example.test", "r": "DEVELOPER", "t": tenant }),
        )
        .await?;
    Ok(World {
        _dir: dir,
        idp,
        airlock,
        tenant,
    })
}

/// A browser: a cookie jar, redirects not followed.
struct Browser {
    jar: Arc<reqwest::cookie::Jar>,
    client: reqwest::Client,
    base: Url,
}

impl Browser {
    fn new(airlock: &Airlock) -> Result<Self> {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            jar,
            client,
            base: Url::parse(&airlock.control_url)?,
        })
    }

    /// The value of cookie `name` the jar would send to `path`.
    fn cookie(&self, name: &str, path: &str) -> Option<String> {
        let header = self.jar.cookies(&self.base.join(path).ok()?)?;
        header
            .to_str()
            .ok()?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response> {
        Ok(self.client.get(self.base.join(url)?).send().await?)
    }

    /// `GET /auth/login`: the provider URL Airlock redirects to.
    async fn start_sign_in(&self, return_to: &str) -> Result<String> {
        let resp = self
            .get(&format!("/auth/login?return_to={return_to}"))
            .await?;
        ensure!(resp.status() == StatusCode::FOUND, "{}", resp.status());
        let login_cookie = set_cookie(&resp, "airlock_login").context("no login cookie")?;
        assert!(
            login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Lax"),
            "{login_cookie}"
        );
        Ok(resp
            .headers()
            .get(header::LOCATION)
            .context("no Location")?
            .to_str()?
            .to_string())
    }

    /// Sign in as `login` all the way; returns the callback URL (with the code) used.
    async fn sign_in(&self, idp: &OidcProvider, login: &str) -> Result<Url> {
        let authorize = self.start_sign_in("/tenants?tab=mine").await?;
        let parsed = Url::parse(&authorize)?;
        let params: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(params["code_challenge_method"], "S256");
        assert!(params.contains_key("nonce") && params.contains_key("state"));
        assert!(params["scope"].split(' ').any(|s| s == "openid"));
        let callback = idp.login(&authorize, login).await?;
        let resp = self.client.get(callback.clone()).send().await?;
        ensure!(
            resp.status() == StatusCode::FOUND,
            "callback answered {}: {}",
            resp.status(),
            resp.text().await?
        );
        assert_eq!(resp.headers()[header::LOCATION], "/tenants?tab=mine");
        let session = set_cookie(&resp, "airlock_session").context("no session cookie")?;
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(session.contains(attribute), "{attribute}: {session}");
        }
        assert!(
            !session.contains("Secure"),
            "plain http: no Secure ({session})"
        );
        Ok(callback)
    }

    /// `GET /auth/session`.
    async fn session(&self) -> Result<(StatusCode, Value)> {
        let resp = self.get("/auth/session").await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// POST a GraphQL operation with the cookies and, if given, an `X-CSRF-Token`.
    async fn graphql(
        &self,
        csrf: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self
            .client
            .post(self.base.join("/graphql")?)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        let resp = request.send().await?;
        Ok((resp.status(), resp.json().await?))
    }
}

/// The `Set-Cookie` header setting `name`, if any.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// POST GraphQL with `Authorization: Bearer <token>`.
async fn bearer_graphql(
    airlock: &Airlock,
    token: &str,
    query: &str,
) -> Result<(StatusCode, Value)> {
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", airlock.control_url))
        .bearer_auth(token)
        .json(&json!({ "query": query }))
        .send()
        .await?;
    Ok((resp.status(), resp.json().await?))
}

fn error_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// An access token (and ID token) for `login` through the CLI client's code flow.
async fn person_tokens(idp: &OidcProvider, login: &str) -> Result<(String, String)> {
    let pkce = Pkce::new();
    let url = idp.authorize_url(
        CLI_CLIENT,
        CLI_REDIRECT,
        "openid email api:read",
        "cli-state",
        Some(&pkce),
    );
    let callback = idp.login(url.as_str(), login).await?;
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .context("no code")?;
    let body = idp
        .exchange_code(
            &ClientAuth::basic(CLI_CLIENT, CLI_SECRET),
            &code,
            CLI_REDIRECT,
            Some(&pkce.verifier),
        )
        .await?
        .ok()?;
    Ok((
        body["access_token"]
            .as_str()
            .context("access_token")?
            .to_string(),
        body["id_token"].as_str().context("id_token")?.to_string(),
    ))
}

/// `needles` appear nowhere in `haystack`.
fn assert_absent(haystack: &[u8], needles: &[(&str, &str)], place: &str) {
    for (what, needle) in needles {
        assert!(
            !needle.is_empty()
                && !haystack
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
            "{what} appears in {place}"
        );
    }
}

/// Every file in the dev data dir (SQLite and its WAL), concatenated.
fn data_dir_bytes(airlock: &Airlock) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(airlock.data_dir.path().join("state"))? {
        let path = entry?.path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path)?);
        }
    }
    Ok(bytes)
}

/// The secrets a console sign-in handled, by name, for the leak scans.
struct SignInSecrets {
    session: String,
    csrf: String,
    code: String,
    state: String,
    personal_token: String,
}

impl SignInSecrets {
    fn needles(&self) -> Vec<(&str, &str)> {
        vec![
            ("the session id", self.session.as_str()),
            ("the CSRF token", self.csrf.as_str()),
            ("the authorization code", self.code.as_str()),
            ("the state", self.state.as_str()),
            ("the personal admin token", self.personal_token.as_str()),
            ("the client secret", CONSOLE_SECRET),
        ]
    }
}

/// The whole console story, on a world where alice is invited as a developer of the tenant.
async fn console_story(world: &World) -> Result<SignInSecrets> {
    let airlock = &world.airlock;
    let browser = Browser::new(airlock)?;
    let (status, _) = browser.session().await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no session yet");

    let callback = browser.sign_in(&world.idp, "alice").await?;
    let session_id = browser
        .cookie("airlock_session", "/")
        .context("session cookie in the jar")?;
    let (status, session) = browser.session().await?;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["user"]["email"], "alice@example.test");
    assert_eq!(session["user"]["issuer"], world.idp.issuer());
    assert_eq!(session["user"]["subject"], "alice");
    assert_eq!(
        session["roles"],
        json!([{ "role": "developer", "tenantId": world.tenant, "environmentId": null }]),
        "the invitation became alice's role"
    );
    let csrf = session["csrfToken"]
        .as_str()
        .context("csrfToken")?
        .to_string();

    // With the cookie and the CSRF header: alice sees the tenant and does developer things.
    let (status, body) = browser
        .graphql(
            Some(&csrf),
            "{ tenants { id name } me { kind principal email roles { role } } }",
            json!({}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["tenants"],
        json!([{ "id": world.tenant, "name": "acme" }])
    );
    assert_eq!(body["data"]["me"]["kind"], "USER");
    assert_eq!(body["data"]["me"]["email"], "alice@example.test");
    let user_principal = body["data"]["me"]["principal"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(body["data"]["me"]["roles"][0]["role"], "DEVELOPER");
    let (_, body) = browser
        .graphql(
            Some(&csrf),
            CREATE_FUNCTION,
            json!({ "t": world.tenant, "n": "get_user" }),
        )
        .await?;
    assert_eq!(body["data"]["createFunction"]["name"], "get_user", "{body}");
    // ... but not admin things.
    let (_, body) = browser
        .graphql(
            Some(&csrf),
            CREATE_ENVIRONMENT,
            json!({ "t": world.tenant, "n": "prod" }),
        )
        .await?;
    assert_eq!(error_code(&body), Some("FORBIDDEN"), "{body}");

    // Without the CSRF header (or with a wrong one) nothing runs.
    for header in [None, Some("wrong"), Some("")] {
        let (status, body) = browser
            .graphql(
                header,
                CREATE_FUNCTION,
                json!({ "t": world.tenant, "n": "csrf_victim" }),
            )
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{header:?}: {body}");
        assert_eq!(error_code(&body), Some("CSRF_TOKEN_INVALID"));
    }
    let functions = airlock
        .graphql_ok(
            "query($t: ID!) { functions(tenantId: $t) { name } }",
            json!({ "t": world.tenant }),
        )
        .await?;
    assert_eq!(functions["functions"], json!([{ "name": "get_user" }]));
    // GraphQL over GET never runs, with or without the header.
    let resp = browser
        .client
        .get(browser.base.join("/graphql?query=%7Btenants%7Bid%7D%7D")?)
        .header("x-csrf-token", &csrf)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    // The callback URL replayed (same browser, same cookies) signs nobody in.
    let resp = browser.client.get(callback.clone()).send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(set_cookie(&resp, "airlock_session").is_none());
    // A forged state, and a callback without a started sign-in, neither.
    let forged = format!(
        "{}/auth/callback?code=forged-code&state=forged-state",
        airlock.control_url
    );
    let resp = browser.client.get(&forged).send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let page = resp.text().await?;
    assert!(
        !page.contains("forged-code") && !page.contains("forged-state"),
        "{page}"
    );

    // A user who cancels at the provider gets a clear 400 and no session.
    let other = Browser::new(airlock)?;
    let authorize = other.start_sign_in("/").await?;
    let denied = world.idp.login_and_deny(&authorize, "bob").await?;
    assert!(
        denied
            .query()
            .unwrap_or_default()
            .contains("error=access_denied"),
        "{denied}"
    );
    let resp = other.client.get(denied).send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await?.contains("access_denied"));
    assert!(other.cookie("airlock_session", "/").is_none());
    // A callback someone else started (login CSRF: mallory sends her callback URL to a
    // victim) signs the victim's browser into nothing, and is used up.
    let mallory = Browser::new(airlock)?;
    let authorize = mallory.start_sign_in("/").await?;
    let planted = world.idp.login(&authorize, "mallory").await?;
    let victim = Browser::new(airlock)?;
    let resp = victim.client.get(planted.clone()).send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(victim.cookie("airlock_session", "/").is_none());
    let resp = mallory.client.get(planted).send().await?;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "the state works once"
    );

    let (code, state) = {
        let pairs: std::collections::HashMap<_, _> = callback.query_pairs().into_owned().collect();
        (pairs["code"].clone(), pairs["state"].clone())
    };

    // A personal admin token acts for alice, until revoked.
    let (_, body) = browser
        .graphql(
            Some(&csrf),
            "mutation { createAdminToken(input: {name: \"alice-cli\"}) { token adminToken { id actsFor } } }",
            json!({}),
        )
        .await?;
    let created = &body["data"]["createAdminToken"];
    assert_eq!(
        created["adminToken"]["actsFor"],
        user_principal.as_str(),
        "{body}"
    );
    let personal_token = created["token"].as_str().context("token")?.to_string();
    let token_id = created["adminToken"]["id"].as_str().unwrap().to_string();
    let (status, body) = bearer_graphql(
        airlock,
        &personal_token,
        "{ me { principal } tenants { id } }",
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["me"]["principal"], user_principal.as_str());
    assert_eq!(body["data"]["tenants"][0]["id"], world.tenant.as_str());
    let (_, body) = browser
        .graphql(
            Some(&csrf),
            "mutation($id: ID!) { revokeAdminToken(id: $id) { revokedAt } }",
            json!({ "id": token_id }),
        )
        .await?;
    assert!(
        body["data"]["revokeAdminToken"]["revokedAt"].is_string(),
        "{body}"
    );
    let (status, body) = bearer_graphql(airlock, &personal_token, ME).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.to_string().contains(&personal_token));

    // Logout needs the CSRF header too, then ends the session for good.
    let logout = browser.base.join("/auth/logout")?;
    let resp = browser.client.post(logout.clone()).send().await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = browser
        .client
        .post(logout)
        .header("x-csrf-token", &csrf)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(set_cookie(&resp, "airlock_session").is_some_and(|c| c.contains("Max-Age=0")));
    let (status, _) = browser.session().await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The old cookie, presented again by hand, is dead.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", airlock.control_url))
        .header(header::COOKIE, format!("airlock_session={session_id}"))
        .header("x-csrf-token", &csrf)
        .json(&json!({ "query": ME }))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    Ok(SignInSecrets {
        session: session_id,
        csrf,
        code,
        state,
        personal_token,
    })
}

/// [`console_story`], with the output of both peers shown if it fails; the logs are scanned.
async fn checked_console_story(world: &mut World) -> Result<SignInSecrets> {
    let result = console_story(world).await;
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", world.airlock.logs());
        eprintln!("--- provider output ---\n{}", world.idp.output());
    }
    let secrets = result?;
    world.airlock.check_running()?;
    assert_absent(
        world.airlock.logs().as_bytes(),
        &secrets.needles(),
        "the Airlock logs",
    );
    Ok(secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_in_dev_mode() -> Result<()> {
    let mut world = world(None).await?;
    let secrets = checked_console_story(&mut world).await?;
    world.airlock.processes[0].terminate()?;
    assert_absent(
        &data_dir_bytes(&world.airlock)?,
        &secrets.needles(),
        "the data dir",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_in_split_mode_over_postgres() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple());
    let mut world = world(Some((&db.url, &prefix))).await?;
    let secrets = checked_console_story(&mut world).await?;
    let dump = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &db.name])
        .output()?;
    assert!(dump.status.success(), "pg_dump failed");
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains("alice@example.test"),
        "the dump has the user"
    );
    assert_absent(&dump.stdout, &secrets.needles(), "PostgreSQL");
    let _ = airlock_e2e::take_redis_contents(&prefix).await;
    Ok(())
}

/// `token` with one payload byte changed (the signature no longer matches).
fn tampered(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut claims = URL_SAFE_NO_PAD
        .decode(&parts[1])
        .expect("base64url payload");
    // Change the subject's first letter: still valid JSON, a different bearer.
    let at = claims
        .windows(7)
        .position(|w| w == b"\"sub\":\"")
        .map(|i| i + 7)
        .unwrap_or(claims.len() / 2);
    claims[at] ^= 0x01;
    parts[1] = URL_SAFE_NO_PAD.encode(claims);
    parts.join(".")
}

/// `token`'s claims under `alg: none`, without a signature.
fn unsigned(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("payload");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{payload}.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_jwts_authenticate_and_bad_ones_get_401() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/auth/callback");
    // Client-credentials tokens live 1 s here: the expired token.
    let ttl = Ttl {
        client_credentials: 1,
        ..Ttl::default()
    };
    let idp = OidcProvider::start(dir.path(), provider_config(&callback, ttl)).await?;
    let stranger =
        OidcProvider::start(dir.path(), provider_config(&callback, Ttl::default())).await?;
    let mut airlock = Airlock::dev_with(oidc_options(dir.path(), &idp, port)?).await?;
    let result = bearer_story(&airlock, &idp, &stranger).await;
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", airlock.logs());
    }
    let tokens = result?;
    airlock.check_running()?;
    let needles: Vec<(&str, &str)> = tokens
        .iter()
        .map(|t| ("a bearer token", t.as_str()))
        .collect();
    assert_absent(airlock.logs().as_bytes(), &needles, "the Airlock logs");
    airlock.processes[0].terminate()?;
    assert_absent(&data_dir_bytes(&airlock)?, &needles, "the data dir");
    Ok(())
}

/// Returns every token presented, for the leak scans.
async fn bearer_story(
    airlock: &Airlock,
    idp: &OidcProvider,
    stranger: &OidcProvider,
) -> Result<Vec<String>> {
    let expiring = idp
        .client_credentials_token(SERVICE_CLIENT, SERVICE_SECRET, None)
        .await?;
    let expiring_since = Instant::now();

    // A person's access token: the user is created on first use, identified by iss + sub.
    let (access, id_token) = person_tokens(idp, "carol").await?;
    let (_, claims) = decode_jwt_unverified(&access)?;
    assert_eq!(claims["aud"], idp.audience());
    let (status, body) = bearer_graphql(airlock, &access, ME).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["me"]["kind"], "USER");
    assert_eq!(body["data"]["me"]["email"], "carol@example.test");
    let carol = body["data"]["me"]["principal"]
        .as_str()
        .unwrap()
        .to_string();
    // The same person again is the same user.
    let (again, _) = person_tokens(idp, "carol").await?;
    let (_, body) = bearer_graphql(airlock, &again, ME).await?;
    assert_eq!(body["data"]["me"]["principal"], carol.as_str());
    // Guarded like everything else: no role, no tenant.
    let (_, body) = bearer_graphql(airlock, &access, "{ tenants { id } }").await?;
    assert_eq!(body["data"]["tenants"], json!([]), "{body}");
    // A role granted to the user applies to its bearer tokens at once.
    let tenant = airlock
        .graphql_ok(CREATE_TENANT, json!({ "n": "initech" }))
        .await?["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    airlock
        .graphql_ok(GRANT, json!({ "p": carol, "r": "VIEWER", "t": tenant }))
        .await?;
    let (_, body) = bearer_graphql(airlock, &access, "{ tenants { id } }").await?;
    assert_eq!(body["data"]["tenants"], json!([{ "id": tenant }]), "{body}");
    // A machine's client-credentials token works too (a user for the client's subject).
    let (status, body) = bearer_graphql(airlock, &expiring, ME).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["me"]["email"], Value::Null);

    let wrong_issuer = stranger
        .client_credentials_token(SERVICE_CLIENT, SERVICE_SECRET, None)
        .await?;
    let mut refused = vec![
        ("tampered", tampered(&access)),
        ("alg none", unsigned(&access)),
        ("wrong issuer", wrong_issuer),
        // The ID token: right issuer and key, but its audience is the client, not the API.
        ("wrong audience", id_token),
        ("garbage", "not-a-jwt".to_string()),
        ("atk garbage", "atk_not-a-real-token".to_string()),
    ];
    // Past exp plus the validator's 30 s leeway.
    let wait = Duration::from_secs(33).saturating_sub(expiring_since.elapsed());
    tokio::time::sleep(wait).await;
    refused.push(("expired", expiring.clone()));
    for (what, token) in &refused {
        let (status, body) = bearer_graphql(airlock, token, ME).await?;
        if status != StatusCode::UNAUTHORIZED {
            bail!("{what} token: {status} {body}");
        }
        assert_eq!(error_code(&body), Some("UNAUTHENTICATED"), "{what}");
        assert!(!body.to_string().contains(token.as_str()), "{what}: echoed");
    }
    // The good token still works after all that (nothing was cached wrongly).
    let (status, _) = bearer_graphql(airlock, &access, ME).await?;
    assert_eq!(status, StatusCode::OK);

    let mut tokens = vec![access, again, expiring];
    tokens.extend(refused.into_iter().map(|(_, t)| t).filter(|t| t.len() > 20));
    Ok(tokens)
}

/// The provider restarts with a new signing key: the next console sign-in still works, as
/// the ID-token keys are refetched. (Bearer JWTs refetch on an unknown `kid` too, rate-limited:
/// the unit tests in control-plane/src/auth/jwt.rs cover that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_survives_a_provider_key_rotation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (port, idp_port) = (free_port(), free_port());
    let callback = format!("http://127.0.0.1:{port}/auth/callback");
    let config = || provider_config(&callback, Ttl::default());
    let idp = OidcProvider::start_on(dir.path(), config(), idp_port).await?;
    let old_key = idp.jwks().await?["keys"][0]["kid"].clone();
    let airlock = Airlock::dev_with(oidc_options(dir.path(), &idp, port)?).await?;
    Browser::new(&airlock)?.sign_in(&idp, "alice").await?;

    drop(idp);
    let idp = OidcProvider::start_on(dir.path(), config(), idp_port).await?;
    assert_ne!(
        idp.jwks().await?["keys"][0]["kid"],
        old_key,
        "a new signing key"
    );
    let result = Browser::new(&airlock)?.sign_in(&idp, "alice").await;
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", airlock.logs());
    }
    result?;
    Ok(())
}
