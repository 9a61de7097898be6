//! Console sign-in with OpenID Connect: `GET /auth/login`, `GET /auth/callback`,
//! `POST /auth/logout`, `GET /auth/session`; and [`authenticate`], which turns a request's
//! credential (bearer admin token, bearer JWT, or session cookie + CSRF header) into a
//! [`Caller`].
//!
//! Cookies: `airlock_login` (the pending sign-in's browser binding; `Path=/auth`, 10 minutes)
//! and `airlock_session` (the session; `Path=/`, 12 hours). Both `HttpOnly`, `SameSite=Lax`
//! (the provider's redirect back is a top-level GET, which Lax lets through), and `Secure`
//! when the public URL is https.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use crate::auth::oidc::Oidc;
use crate::authz::{Caller, Principal};
use crate::domain::audit::Actor;
use crate::domain::sessions::{self, LOGIN_TTL, SESSION_TTL};
use crate::domain::{admin_tokens, roles, users};
use crate::error::AppError;

/// The session cookie.
pub const SESSION_COOKIE: &str = "airlock_session";
/// The pending sign-in's cookie.
pub const LOGIN_COOKIE: &str = "airlock_login";
/// The header cookie-authenticated GraphQL requests carry the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Longest `return_to` accepted.
const MAX_RETURN_TO: usize = 1024;

/// The value of cookie `name` in the request, if any.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, `Secure` when `secure`. `max_age` 0 deletes.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    secure: bool,
) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

/// `return_to` if it is a same-origin relative path (`/…`, not `//…` nor `/\…`, printable
/// ASCII, no backslash), else `None`. Absent: `/`.
pub fn checked_return_to(return_to: Option<&str>) -> Option<String> {
    let Some(path) = return_to.filter(|p| !p.is_empty()) else {
        return Some("/".to_string());
    };
    let safe = path.len() <= MAX_RETURN_TO
        && path.starts_with('/')
        && !path.starts_with("//")
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && path.parse::<axum::http::uri::PathAndQuery>().is_ok();
    safe.then(|| path.to_string())
}

/// A plain page for a sign-in that cannot go on. `message` is fixed text, never input.
fn sign_in_failed(status: StatusCode, message: &str, secure: bool) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign-in failed</title></head>\
         <body><h1>Sign-in failed</h1><p>{message}</p><p><a href=\"/auth/login\">Sign in again</a></p></body></html>\n"
    );
    let mut response = (status, Html(body)).into_response();
    no_store(&mut response);
    clear_cookie(&mut response, LOGIN_COOKIE, "/auth", secure);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn add_cookie(response: &mut Response, cookie: String) {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn clear_cookie(response: &mut Response, name: &str, path: &str, secure: bool) {
    add_cookie(response, set_cookie(name, "", path, 0, secure));
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    no_store(&mut response);
    response
}

fn not_configured() -> Response {
    sign_in_failed(
        StatusCode::NOT_FOUND,
        "Sign-in with OpenID Connect is not configured on this installation (AIRLOCK_OIDC_ISSUER).",
        false,
    )
}

/// Query of `GET /auth/login`.
#[derive(Deserialize)]
pub(crate) struct LoginParams {
    return_to: Option<String>,
}

/// Start a sign-in: remember it, and send the browser to the provider.
pub(crate) async fn login(
    State(http): State<HttpState>,
    Query(params): Query<LoginParams>,
) -> Response {
    let Some(oidc) = &http.app.oidc else {
        return not_configured();
    };
    let secure = oidc.secure_cookies();
    let Some(return_to) = checked_return_to(params.return_to.as_deref()) else {
        return sign_in_failed(
            StatusCode::BAD_REQUEST,
            "return_to must be a path on this site, like /tenants.",
            secure,
        );
    };
    let pending = match sessions::start_login(&http.app.db, &return_to).await {
        Ok(pending) => pending,
        Err(error) => return error.into_response(),
    };
    let mut response = redirect(&oidc.authorize_url(&pending));
    add_cookie(
        &mut response,
        set_cookie(
            LOGIN_COOKIE,
            &pending.browser_secret,
            "/auth",
            LOGIN_TTL.num_seconds(),
            secure,
        ),
    );
    response
}

/// Query of `GET /auth/callback`: a code and state, or an error and state.
#[derive(Deserialize)]
pub(crate) struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider's redirect back: check the state, exchange the code, verify the ID token,
/// sign the user in.
pub(crate) async fn callback(
    State(http): State<HttpState>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Response {
    let Some(oidc) = &http.app.oidc else {
        return not_configured();
    };
    let secure = oidc.secure_cookies();
    let failed = |message: &str| sign_in_failed(StatusCode::BAD_REQUEST, message, secure);
    let db = &http.app.db;
    let Some(state) = params.state.as_deref().filter(|s| s.len() <= 256) else {
        return failed("The sign-in response has no state. Start again.");
    };
    // Taken before anything else, so an error answer or a bad code uses it up as well.
    let login = match sessions::take_login(db, state, cookie(&headers, LOGIN_COOKIE)).await {
        Ok(login) => login,
        Err(error) => return error.into_response(),
    };
    if let Some(error) = params.error.as_deref() {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        tracing::info!(error = %code, "the identity provider refused a sign-in");
        return failed(&format!(
            "The identity provider did not sign you in ({code})."
        ));
    }
    let Some(login) = login else {
        return failed(
            "This sign-in is unknown, expired, already used, or was started in another browser. Start again.",
        );
    };
    let Some(code) = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return failed("The sign-in response has no code. Start again.");
    };
    let identity = match oidc.complete(code, &login.secrets).await {
        Ok(identity) => identity,
        Err(error) => {
            tracing::warn!(%error, "console sign-in failed");
            return failed("The identity provider's answer could not be verified. Start again.");
        }
    };
    let signed_in = match users::sign_in(db, &identity).await {
        Ok(signed_in) => signed_in,
        Err(error) => return error.into_response(),
    };
    if signed_in.claimed_invitations > 0 {
        if let Err(error) = http.app.authz.reload().await {
            return error.into_response();
        }
    }
    let session = match sessions::create(db, signed_in.user.id).await {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    tracing::info!(user = %signed_in.user.id, session = %session.id, "signed in");
    let mut response = redirect(&login.return_to);
    clear_cookie(&mut response, LOGIN_COOKIE, "/auth", secure);
    add_cookie(
        &mut response,
        set_cookie(
            SESSION_COOKIE,
            &session.token,
            "/",
            SESSION_TTL.num_seconds(),
            secure,
        ),
    );
    response
}

/// End the session (the CSRF header is required, as for every cookie-authenticated change).
/// Without a live session there is nothing to end: 204 all the same.
pub(crate) async fn logout(State(http): State<HttpState>, headers: HeaderMap) -> Response {
    let secure = http.app.oidc.as_ref().is_some_and(Oidc::secure_cookies);
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        match sessions::authenticate(&http.app.db, token).await {
            Ok(Some(_)) => {
                if !csrf_header_matches(&headers, token) {
                    return AppError::CsrfTokenInvalid.into_response();
                }
                if let Err(error) = sessions::end(&http.app.db, token).await {
                    return error.into_response();
                }
            }
            Ok(None) => {}
            Err(error) => return error.into_response(),
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_cookie(&mut response, SESSION_COOKIE, "/", secure);
    response
}

/// The signed-in user, their roles and the session's CSRF token; 401 without a live session.
pub(crate) async fn session(State(http): State<HttpState>, headers: HeaderMap) -> Response {
    let Some(token) = cookie(&headers, SESSION_COOKIE) else {
        return AppError::Unauthenticated.into_response();
    };
    let (session, user) = match sessions::authenticate(&http.app.db, token).await {
        Ok(Some(found)) => found,
        Ok(None) => return AppError::Unauthenticated.into_response(),
        Err(error) => return error.into_response(),
    };
    let held = match roles::held_by(&http.app.db, &Principal::User(user.id)).await {
        Ok(held) => held,
        Err(error) => return error.into_response(),
    };
    let roles: Vec<_> = held
        .iter()
        .map(|r| json!({ "role": r.role, "tenantId": r.tenant_id, "environmentId": r.environment_id }))
        .collect();
    let mut response = Json(json!({
        "user": {
            "id": user.id,
            "principal": Principal::User(user.id).to_string(),
            "issuer": user.issuer,
            "subject": user.subject,
            "email": user.email,
        },
        "roles": roles,
        "csrfToken": sessions::csrf_token(token),
        "expiresAt": session.expires_at,
    }))
    .into_response();
    no_store(&mut response);
    response
}

fn csrf_header_matches(headers: &HeaderMap, session_token: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|presented| sessions::csrf_matches(session_token, presented.trim()))
}

/// The caller of an API request:
///
/// - `Authorization: Bearer atk_…`: an admin token;
/// - `Authorization: Bearer <JWT>` (with OpenID Connect configured): an access token from the
///   issuer, for the configured audience; its user is created on first use;
/// - else the `airlock_session` cookie, which must come with the session's CSRF token in
///   `X-CSRF-Token` (`CSRF_TOKEN_INVALID`, 403, without it).
///
/// Anything invalid is `UNAUTHENTICATED`, whose message never echoes the credential.
pub(crate) async fn authenticate(
    http: &HttpState,
    headers: &HeaderMap,
) -> Result<Caller, AppError> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let token = authorization
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(AppError::Unauthenticated)?;
        return authenticate_bearer(http, token).await;
    }
    let token = cookie(headers, SESSION_COOKIE).ok_or(AppError::Unauthenticated)?;
    let (_, user) = sessions::authenticate(&http.app.db, token)
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if !csrf_header_matches(headers, token) {
        return Err(AppError::CsrfTokenInvalid);
    }
    Ok(user_caller(user.id))
}

async fn authenticate_bearer(http: &HttpState, token: &str) -> Result<Caller, AppError> {
    if token.starts_with(admin_tokens::TOKEN_MARKER) {
        return admin_tokens::authenticate(&http.app.db, token)
            .await?
            .ok_or(AppError::Unauthenticated);
    }
    let Some(oidc) = &http.app.oidc else {
        return Err(AppError::Unauthenticated);
    };
    let identity = match oidc.validate_bearer(token).await {
        Ok(identity) => identity,
        Err(error @ crate::auth::jwt::JwtError::Jwks(_)) => {
            tracing::warn!(%error, "cannot check a bearer JWT; refusing it");
            return Err(AppError::Unauthenticated);
        }
        Err(error) => {
            tracing::debug!(%error, "bearer JWT refused");
            return Err(AppError::Unauthenticated);
        }
    };
    let signed_in = users::find_or_create(&http.app.db, &identity).await?;
    if signed_in.claimed_invitations > 0 {
        http.app.authz.reload().await?;
    }
    Ok(user_caller(signed_in.user.id))
}

fn user_caller(id: uuid::Uuid) -> Caller {
    Caller {
        actor: Actor::User(id),
        principal: Principal::User(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_must_be_a_relative_path_on_this_site() {
        assert_eq!(checked_return_to(None).as_deref(), Some("/"));
        assert_eq!(checked_return_to(Some("")).as_deref(), Some("/"));
        for good in ["/", "/tenants", "/tenants/1?tab=keys", "/a/b#frag"] {
            assert_eq!(checked_return_to(Some(good)).as_deref(), Some(good));
        }
        for bad in [
            "https://evil.example",
            "//evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "tenants",
            "javascript:alert(1)",
            "/a b",
            "/a\r\nSet-Cookie: x=y",
            &format!("/{}", "a".repeat(MAX_RETURN_TO)),
        ] {
            assert_eq!(checked_return_to(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_over_tls() {
        let plain = set_cookie(SESSION_COOKIE, "v", "/", 60, false);
        assert_eq!(
            plain,
            "airlock_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        let tls = set_cookie(SESSION_COOKIE, "v", "/", 60, true);
        assert!(tls.ends_with("; Secure"), "{tls}");
    }

    #[test]
    fn cookie_finds_the_named_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; airlock_session=ses_x; b=2"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("airlock_login=l"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("ses_x"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("l"));
        assert_eq!(cookie(&headers, "airlock"), None);
    }
}
