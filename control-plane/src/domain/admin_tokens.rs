//! Admin tokens: bearer tokens for the GraphQL API.
//!
//! A token is `atk_` followed by 32 random bytes in URL-safe base64. Only its SHA-256 is
//! stored; like API keys, a fast hash is right for a high-entropy random token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    Set,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{begin_write, now};
use crate::entity::admin_token;
use crate::error::AppError;

/// Marker every admin token starts with (helps secret scanners recognise leaked tokens).
pub const TOKEN_MARKER: &str = "atk_";
/// Name of the token created on first start.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// A freshly created token. The plaintext exists only in this value; `Debug` hides it.
pub struct NewAdminToken {
    pub id: Uuid,
    pub plaintext: String,
}

impl std::fmt::Debug for NewAdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAdminToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a presented token: what the database holds.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn generate_plaintext() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_MARKER}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `text` has the shape of an admin token.
pub fn is_well_formed(text: &str) -> bool {
    text.strip_prefix(TOKEN_MARKER).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Create a named admin token.
pub async fn create(db: &DatabaseConnection, name: &str) -> Result<NewAdminToken, AppError> {
    insert(db, name, generate_plaintext()).await
}

async fn insert(
    db: &DatabaseConnection,
    name: &str,
    plaintext: String,
) -> Result<NewAdminToken, AppError> {
    let txn = begin_write(db).await?;
    let model = admin_token::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(name.to_string()),
        token_hash: Set(token_hash(&plaintext)),
        created_at: Set(now()),
    }
    .insert(&txn)
    .await
    .map_err(|e| super::insert_error(e, "admin token", name))?;
    txn.commit().await?;
    Ok(NewAdminToken {
        id: model.id,
        plaintext,
    })
}

/// On first start (no admin token at all), create the bootstrap token and return it; `None`
/// when a token already exists. Two replicas starting together cannot both create one: the
/// name is unique, and the loser gets `None`.
///
/// `adopt` is the token already in the data dir's token file, if any: a fresh database adopts
/// it instead of minting a new one, so that pointing a second database at the same data dir
/// never replaces (and so locks out) the token another database still knows.
pub async fn ensure_bootstrap(
    db: &DatabaseConnection,
    adopt: Option<&str>,
) -> Result<Option<NewAdminToken>, AppError> {
    if admin_token::Entity::find().count(db).await? > 0 {
        return Ok(None);
    }
    let plaintext = match adopt {
        Some(token) if is_well_formed(token) => token.to_string(),
        _ => generate_plaintext(),
    };
    match insert(db, BOOTSTRAP_NAME, plaintext).await {
        Ok(token) => Ok(Some(token)),
        Err(AppError::AlreadyExists { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// The id of the admin token `token`, if it is one.
pub async fn authenticate(db: &DatabaseConnection, token: &str) -> Result<Option<Uuid>, AppError> {
    if !token.starts_with(TOKEN_MARKER) {
        return Ok(None);
    }
    Ok(admin_token::Entity::find()
        .filter(admin_token::Column::TokenHash.eq(token_hash(token)))
        .one(db)
        .await?
        .map(|t| t.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_marked_random_and_hidden_from_debug() {
        let a = generate_plaintext();
        let b = generate_plaintext();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_MARKER));
        assert_eq!(a.len(), TOKEN_MARKER.len() + 43);
        let token = NewAdminToken {
            id: Uuid::nil(),
            plaintext: a.clone(),
        };
        assert!(!format!("{token:?}").contains(&a));
        assert_eq!(token_hash(&a).len(), 64);
        assert!(is_well_formed(&a));
        assert!(!is_well_formed("atk_short"));
        assert!(!is_well_formed(&format!("{a}\n")));
    }
}
