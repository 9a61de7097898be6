//! The OpenID Connect test peer (`airlock_e2e::oidc`, a real oidc-provider under Node.js)
//! does what the sign-in, bearer-token and OAuth client tests rely on: discovery, JWT access
//! tokens verifiable from its JWKS, authorization code + PKCE with an automated login,
//! rotating refresh tokens, token request counts and revocation.

use std::collections::HashMap;
use std::time::Duration;

use airlock_e2e::oidc::{
    decode_jwt_unverified, ClientAuth, OidcClient, OidcConfig, OidcProvider, Pkce, TokenAuthMethod,
    Ttl,
};
use anyhow::{Context, Result};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use reqwest::{StatusCode, Url};
use serde_json::Value;

/// The clients' redirect_uri: never fetched, the harness stops at the redirect to it.
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const SCOPE: &str = "openid email offline_access api:read";

fn config() -> OidcConfig {
    OidcConfig {
        clients: vec![
            OidcClient::service("svc", "svc-secret"),
            OidcClient::service("svc-post", "post-secret")
                .auth_method(TokenAuthMethod::ClientSecretPost),
            OidcClient::web("console", "console-secret", REDIRECT),
            OidcClient::public("spa", REDIRECT),
        ],
        ..OidcConfig::default()
    }
}

async fn start(config: OidcConfig) -> Result<(tempfile::TempDir, OidcProvider)> {
    let dir = tempfile::tempdir()?;
    let idp = OidcProvider::start(dir.path(), config).await?;
    Ok((dir, idp))
}

/// Verify `token` (RS256) with the provider's JWKS, for `audience`; returns its claims.
async fn verify(idp: &OidcProvider, token: &str, audience: &str) -> Result<Value> {
    let jwks: JwkSet = serde_json::from_value(idp.jwks().await?)?;
    let header = decode_header(token)?;
    let kid = header.kid.context("no kid in the JWT header")?;
    let jwk = jwks.find(&kid).context("kid not in the JWKS")?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[idp.issuer()]);
    Ok(decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)?.claims)
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Sign in through `client_id`'s authorization request and return the callback's code.
async fn code_for(idp: &OidcProvider, client_id: &str, pkce: Option<&Pkce>) -> Result<String> {
    let url = idp.authorize_url(client_id, REDIRECT, SCOPE, "state-1", pkce);
    let callback = idp.login(url.as_str(), "alice").await?;
    let params = query(&callback);
    assert_eq!(params.get("state").map(String::as_str), Some("state-1"));
    params
        .get("code")
        .cloned()
        .context("no code in the callback")
}

#[tokio::test]
async fn discovery_document_describes_the_provider() -> Result<()> {
    let (_dir, idp) = start(config()).await?;
    let discovery = idp.discovery().await?;
    assert_eq!(discovery["issuer"], idp.issuer());
    assert_eq!(
        discovery["authorization_endpoint"],
        idp.authorization_endpoint()
    );
    assert_eq!(discovery["token_endpoint"], idp.token_endpoint());
    assert_eq!(discovery["jwks_uri"], idp.jwks_uri());
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let list = |key: &str| -> Vec<String> {
        serde_json::from_value(discovery[key].clone()).unwrap_or_default()
    };
    for grant in ["authorization_code", "refresh_token", "client_credentials"] {
        assert!(
            list("grant_types_supported").contains(&grant.to_string()),
            "{grant}"
        );
    }
    for scope in ["openid", "email", "profile", "offline_access", "api:read"] {
        assert!(
            list("scopes_supported").contains(&scope.to_string()),
            "{scope}"
        );
    }
    let jwks = idp.jwks().await?;
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "JWKS leaks the private key"
    );
    Ok(())
}

#[tokio::test]
async fn client_credentials_tokens_are_jwts_verifiable_from_the_jwks() -> Result<()> {
    let (_dir, idp) = start(config()).await?;

    let token = idp
        .client_credentials_token("svc", "svc-secret", None)
        .await?;
    let (header, unverified) = decode_jwt_unverified(&token)?;
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    let claims = verify(&idp, &token, idp.audience()).await?;
    assert_eq!(claims, unverified);
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], "https://api.airlock.test");
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    // The wrong audience does not verify.
    assert!(verify(&idp, &token, "https://other.test").await.is_err());

    // client_secret_post, with a scope of the resource.
    let reply = idp
        .token_request(
            &ClientAuth::post("svc-post", "post-secret"),
            &[("grant_type", "client_credentials"), ("scope", "api:read")],
        )
        .await?
        .ok()?;
    let claims = verify(
        &idp,
        reply["access_token"].as_str().unwrap(),
        idp.audience(),
    )
    .await?;
    assert_eq!(claims["scope"], "api:read");
    assert_eq!(claims["client_id"], "svc-post");

    // A wrong secret is refused.
    let reply = idp
        .token_request(
            &ClientAuth::basic("svc", "wrong"),
            &[("grant_type", "client_credentials")],
        )
        .await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error(), Some("invalid_client"));

    let stats = idp.token_requests().await?;
    assert_eq!(stats.total, 3);
    let cc = stats.grant("client_credentials");
    assert_eq!((cc.requests, cc.succeeded, cc.failed), (3, 2, 1));
    assert_eq!(stats.errors("invalid_client"), 1);
    idp.reset_token_requests().await?;
    assert_eq!(idp.token_requests().await?.total, 0);
    Ok(())
}

#[tokio::test]
async fn authorization_code_with_pkce_and_rotating_refresh_tokens() -> Result<()> {
    let (_dir, idp) = start(config()).await?;
    let spa = ClientAuth::public("spa");
    let pkce = Pkce::new();
    assert_eq!(pkce.challenge, Pkce::challenge_for(&pkce.verifier));

    let url = idp.authorize_url("spa", REDIRECT, SCOPE, "state-1", Some(&pkce));
    let callback = idp.login(url.as_str(), "alice").await?;
    assert!(
        callback.as_str().starts_with(&format!("{REDIRECT}?")),
        "{callback}"
    );
    let params = query(&callback);
    assert_eq!(params["state"], "state-1");
    assert_eq!(params["iss"], idp.issuer());
    let code = &params["code"];

    // A wrong verifier fails (and does not use up the code).
    let reply = idp
        .exchange_code(&spa, code, REDIRECT, Some(&Pkce::new().verifier))
        .await?;
    assert_eq!(reply.error(), Some("invalid_grant"), "{:?}", reply.body);
    let tokens = idp
        .exchange_code(&spa, code, REDIRECT, Some(&pkce.verifier))
        .await?
        .ok()?;

    let access = verify(
        &idp,
        tokens["access_token"].as_str().unwrap(),
        idp.audience(),
    )
    .await?;
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["email"], "alice@example.test");
    assert_eq!(access["client_id"], "spa");
    assert_eq!(access["scope"], "api:read");
    let id_token = verify(&idp, tokens["id_token"].as_str().unwrap(), "spa").await?;
    assert_eq!(id_token["sub"], "alice");
    assert_eq!(id_token["email"], "alice@example.test");

    // Refresh: a new refresh token each time; the old one is then refused, and presenting
    // it revokes the whole grant (reuse detection), so the new one dies too.
    let rt1 = tokens["refresh_token"]
        .as_str()
        .context("no refresh token")?;
    let refreshed = idp.refresh(&spa, rt1).await?.ok()?;
    let rt2 = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2);
    let access2 = verify(
        &idp,
        refreshed["access_token"].as_str().unwrap(),
        idp.audience(),
    )
    .await?;
    assert_eq!(access2["sub"], "alice");
    assert_ne!(access2["jti"], access["jti"]);
    assert_eq!(idp.refresh(&spa, rt1).await?.error(), Some("invalid_grant"));
    assert_eq!(idp.refresh(&spa, rt2).await?.error(), Some("invalid_grant"));

    let stats = idp.token_requests().await?;
    let code_stats = stats.grant("authorization_code");
    assert_eq!(
        (code_stats.requests, code_stats.succeeded, code_stats.failed),
        (2, 1, 1)
    );
    let refresh_stats = stats.grant("refresh_token");
    assert_eq!(
        (
            refresh_stats.requests,
            refresh_stats.succeeded,
            refresh_stats.failed
        ),
        (3, 1, 2)
    );
    assert_eq!(stats.errors("invalid_grant"), 3);
    assert_eq!(stats.total, 5);
    Ok(())
}

#[tokio::test]
async fn public_clients_must_use_pkce_confidential_ones_need_not() -> Result<()> {
    let (_dir, idp) = start(config()).await?;

    let url = idp.authorize_url("spa", REDIRECT, SCOPE, "s", None);
    let callback = idp.login(url.as_str(), "alice").await?;
    let params = query(&callback);
    assert_eq!(params["error"], "invalid_request", "{callback}");
    assert!(params["error_description"].contains("PKCE"), "{callback}");

    let code = code_for(&idp, "console", None).await?;
    let tokens = idp
        .exchange_code(
            &ClientAuth::basic("console", "console-secret"),
            &code,
            REDIRECT,
            None,
        )
        .await?
        .ok()?;
    assert!(tokens["refresh_token"].is_string());
    Ok(())
}

#[tokio::test]
async fn revoked_grants_make_refresh_tokens_invalid() -> Result<()> {
    let (_dir, idp) = start(config()).await?;
    let console = ClientAuth::basic("console", "console-secret");
    let pkce = Pkce::new();
    let code = code_for(&idp, "console", Some(&pkce)).await?;
    let tokens = idp
        .exchange_code(&console, &code, REDIRECT, Some(&pkce.verifier))
        .await?
        .ok()?;
    let rt = tokens["refresh_token"].as_str().unwrap();

    // Replaying an authorization code fails and revokes its grant (oidc-provider's code
    // reuse detection): the refresh token from the first exchange dies.
    let reply = idp
        .exchange_code(&console, &code, REDIRECT, Some(&pkce.verifier))
        .await?;
    assert_eq!(reply.error(), Some("invalid_grant"));
    assert_eq!(
        idp.refresh(&console, rt).await?.error(),
        Some("invalid_grant")
    );
    assert_eq!(idp.revoke_grants(None, None).await?, 0);

    // The test endpoint revokes grants by client and account.
    let code = code_for(&idp, "console", None).await?;
    let tokens = idp
        .exchange_code(&console, &code, REDIRECT, None)
        .await?
        .ok()?;
    let rt = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(idp.revoke_grants(Some("other"), None).await?, 0);
    assert_eq!(idp.revoke_grants(Some("console"), Some("alice")).await?, 1);
    let reply = idp.refresh(&console, rt).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error(), Some("invalid_grant"));
    assert_eq!(idp.token_requests().await?.errors("invalid_grant"), 3);

    // A user cancelling at the consent prompt: access_denied to the client.
    let url = idp.authorize_url("console", REDIRECT, SCOPE, "s2", None);
    let callback = idp.login_and_deny(url.as_str(), "bob").await?;
    let params = query(&callback);
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "s2");
    Ok(())
}

#[tokio::test]
async fn token_lifetimes_follow_the_configuration() -> Result<()> {
    let (_dir, idp) = start(OidcConfig {
        ttl: Ttl {
            access_token: 2,
            client_credentials: 3,
            refresh_token: 2,
            id_token: 4,
            ..Ttl::default()
        },
        ..config()
    })
    .await?;
    let lifetime =
        |claims: &Value| claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();

    let token = idp
        .client_credentials_token("svc", "svc-secret", None)
        .await?;
    assert_eq!(lifetime(&decode_jwt_unverified(&token)?.1), 3);

    let console = ClientAuth::basic("console", "console-secret");
    let code = code_for(&idp, "console", None).await?;
    let tokens = idp
        .exchange_code(&console, &code, REDIRECT, None)
        .await?
        .ok()?;
    assert_eq!(tokens["expires_in"], 2);
    let access = decode_jwt_unverified(tokens["access_token"].as_str().unwrap())?.1;
    assert_eq!(lifetime(&access), 2);
    let id_token = decode_jwt_unverified(tokens["id_token"].as_str().unwrap())?.1;
    assert_eq!(lifetime(&id_token), 4);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = idp
        .refresh(&console, tokens["refresh_token"].as_str().unwrap())
        .await?;
    assert_eq!(reply.error(), Some("invalid_grant"), "{:?}", reply.body);
    Ok(())
}
