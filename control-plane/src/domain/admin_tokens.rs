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

/// Create a named admin token.
pub async fn create(db: &DatabaseConnection, name: &str) -> Result<NewAdminToken, AppError> {
    let plaintext = generate_plaintext();
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
pub async fn ensure_bootstrap(db: &DatabaseConnection) -> Result<Option<NewAdminToken>, AppError> {
    if admin_token::Entity::find().count(db).await? > 0 {
        return Ok(None);
    }
    match create(db, BOOTSTRAP_NAME).await {
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
    }
}
