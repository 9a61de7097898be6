//! Console sessions and pending sign-ins.
//!
//! A session is a random `ses_` token held in the browser's `airlock_session` cookie; the
//! database keeps its SHA-256 only. Its CSRF token is derived from it (SHA-256 with a
//! separate label), so it needs no storage, cannot be computed without the cookie value, and
//! reveals nothing about it.
//!
//! A pending sign-in ([`PendingLogin`]) lives in `login_attempts`, found by the SHA-256 of its
//! `state` and deleted by the callback that uses it, so a state works once. It is bound to the
//! browser that started it by a random value kept in that browser's short-lived login cookie:
//! the PKCE verifier and the nonce are derived from that value, and only a hash of a third
//! derivation is stored. A callback from another browser (login CSRF) or with a replayed or
//! made-up state finds nothing to complete.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    Set,
};
use uuid::Uuid;

use super::now;
use super::tokens::{random_token, sha256_hex_parts};
use crate::entity::{login_attempt, session, user};
use crate::error::AppError;

/// How long a console session lasts.
pub const SESSION_TTL: TimeDelta = TimeDelta::hours(12);
/// How long a user may take at the provider's sign-in page.
pub const LOGIN_TTL: TimeDelta = TimeDelta::minutes(10);
/// Marker every session token starts with.
pub const SESSION_MARKER: &str = "ses_";

/// Equal strings, in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A session just created. `Debug` hides the token.
pub struct NewSession {
    pub id: Uuid,
    /// The cookie value; stored nowhere but in the browser.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The CSRF token of the session whose cookie value is `session_token`.
pub fn csrf_token(session_token: &str) -> String {
    sha256_hex_parts(&["airlock-csrf", session_token])
}

/// Whether `presented` (the `X-CSRF-Token` header) is the CSRF token of `session_token`.
pub fn csrf_matches(session_token: &str, presented: &str) -> bool {
    constant_time_eq(&csrf_token(session_token), presented)
}

fn session_hash(token: &str) -> String {
    sha256_hex_parts(&["airlock-session", token])
}

/// Start a session for `user_id`. Expired sessions of anyone are removed on the way.
pub async fn create(db: &DatabaseConnection, user_id: Uuid) -> Result<NewSession, AppError> {
    let now = now();
    session::Entity::delete_many()
        .filter(session::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    let token = format!("{SESSION_MARKER}{}", random_token());
    let model = session::ActiveModel {
        id: Set(Uuid::new_v4()),
        user_id: Set(user_id),
        token_hash: Set(session_hash(&token)),
        created_at: Set(now),
        expires_at: Set(now + SESSION_TTL),
    }
    .insert(db)
    .await?;
    Ok(NewSession {
        id: model.id,
        token,
        expires_at: model.expires_at,
    })
}

/// The live session whose cookie value is `token`, and its user; `None` for anything else
/// (unknown, ended, expired).
pub async fn authenticate(
    db: &DatabaseConnection,
    token: &str,
) -> Result<Option<(session::Model, user::Model)>, AppError> {
    if !token.starts_with(SESSION_MARKER) || token.len() > 128 {
        return Ok(None);
    }
    let Some(session) = session::Entity::find()
        .filter(session::Column::TokenHash.eq(session_hash(token)))
        .filter(session::Column::ExpiresAt.gt(now()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let Some(user) = user::Entity::find_by_id(session.user_id).one(db).await? else {
        return Ok(None);
    };
    Ok(Some((session, user)))
}

/// End the session whose cookie value is `token`. `false` if there was none.
pub async fn end(db: &DatabaseConnection, token: &str) -> Result<bool, AppError> {
    let deleted = session::Entity::delete_many()
        .filter(session::Column::TokenHash.eq(session_hash(token)))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected > 0)
}

/// A sign-in just started: what goes to the provider and into the browser's login cookie.
/// `Debug` hides every value.
pub struct PendingLogin {
    /// The OAuth `state` parameter.
    pub state: String,
    /// The login cookie's value: the verifier and nonce derive from it.
    pub browser_secret: String,
    pub secrets: LoginSecrets,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin").finish_non_exhaustive()
    }
}

/// The PKCE verifier and the nonce of one sign-in. `Debug` hides them.
pub struct LoginSecrets {
    pub pkce_verifier: String,
    pub nonce: String,
}

impl std::fmt::Debug for LoginSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginSecrets").finish_non_exhaustive()
    }
}

impl LoginSecrets {
    /// Both derived from the login cookie's value. The verifier is 64 hex digits (RFC 7636
    /// allows 43-128 of `[A-Za-z0-9-._~]`).
    fn derive(browser_secret: &str) -> Self {
        Self {
            pkce_verifier: sha256_hex_parts(&["airlock-pkce-verifier", browser_secret]),
            nonce: sha256_hex_parts(&["airlock-nonce", browser_secret]),
        }
    }
}

fn binding_hash(browser_secret: &str) -> String {
    sha256_hex_parts(&["airlock-login-binding", browser_secret])
}

fn state_hash(state: &str) -> String {
    sha256_hex_parts(&["airlock-login-state", state])
}

/// Most sign-ins pending at once. Starting one needs no credential, so this bounds what a
/// flood of `GET /auth/login` can store.
pub const MAX_PENDING_LOGINS: u64 = 10_000;

/// Record a sign-in that will come back to `return_to` (already checked to be a relative
/// path). Expired attempts are removed on the way; `RATE_LIMITED` when
/// [`MAX_PENDING_LOGINS`] are pending.
pub async fn start_login(
    db: &DatabaseConnection,
    return_to: &str,
) -> Result<PendingLogin, AppError> {
    let now = now();
    login_attempt::Entity::delete_many()
        .filter(login_attempt::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    if login_attempt::Entity::find().count(db).await? >= MAX_PENDING_LOGINS {
        return Err(AppError::RateLimited(
            "too many sign-ins are in progress; try again in a few minutes",
        ));
    }
    let state = random_token();
    let browser_secret = random_token();
    login_attempt::ActiveModel {
        id: Set(Uuid::new_v4()),
        state_hash: Set(state_hash(&state)),
        binding_hash: Set(binding_hash(&browser_secret)),
        return_to: Set(return_to.to_string()),
        created_at: Set(now),
        expires_at: Set(now + LOGIN_TTL),
    }
    .insert(db)
    .await?;
    Ok(PendingLogin {
        secrets: LoginSecrets::derive(&browser_secret),
        state,
        browser_secret,
    })
}

/// A pending sign-in, taken by its callback.
#[derive(Debug)]
pub struct CompletedLogin {
    pub return_to: String,
    pub secrets: LoginSecrets,
}

/// Take the sign-in `state` names, if it is live and was started by the browser holding
/// `browser_secret`. The attempt is deleted whatever the outcome: a state works once.
pub async fn take_login(
    db: &DatabaseConnection,
    state: &str,
    browser_secret: Option<&str>,
) -> Result<Option<CompletedLogin>, AppError> {
    let Some(attempt) = login_attempt::Entity::find()
        .filter(login_attempt::Column::StateHash.eq(state_hash(state)))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    // Deleting by id and checking the count makes two concurrent callbacks with one state
    // succeed once at most.
    let deleted = login_attempt::Entity::delete_by_id(attempt.id)
        .exec(db)
        .await?;
    if deleted.rows_affected != 1 || attempt.expires_at <= now() {
        return Ok(None);
    }
    let Some(browser_secret) = browser_secret else {
        return Ok(None);
    };
    if !constant_time_eq(&binding_hash(browser_secret), &attempt.binding_hash) {
        return Ok(None);
    }
    Ok(Some(CompletedLogin {
        return_to: attempt.return_to,
        secrets: LoginSecrets::derive(browser_secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_values_differ_and_hide_their_source() {
        let secret = random_token();
        let derived = LoginSecrets::derive(&secret);
        assert_eq!(derived.pkce_verifier.len(), 64);
        assert_ne!(derived.pkce_verifier, derived.nonce);
        assert_ne!(binding_hash(&secret), derived.nonce);
        assert!(!format!("{derived:?}").contains(&derived.nonce));
        let token = format!("{SESSION_MARKER}{}", random_token());
        assert!(csrf_matches(&token, &csrf_token(&token)));
        assert!(!csrf_matches(&token, ""));
        assert!(!csrf_matches(&token, &csrf_token("ses_other")));
        assert_ne!(csrf_token(&token), session_hash(&token));
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
