//! API keys: what an application presents to the data plane.
//!
//! A key is `ak_` followed by 43 characters of URL-safe base64 (32 random bytes). Only its
//! SHA-256 hash is stored; a fast hash is right here because the key is high-entropy random,
//! not a password. The first [`PREFIX_LEN`] characters are kept in clear so people can tell
//! keys apart.

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Marker every Airlock API key starts with (helps secret scanners recognise leaked keys).
pub const KEY_MARKER: &str = "ak_";
/// How many leading characters of a key are stored and shown as its prefix.
pub const PREFIX_LEN: usize = 11;

/// Hex SHA-256 of an API key: what the database and the snapshot hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKeyHash(String);

impl ApiKeyHash {
    /// Hash a presented key.
    pub fn of(key: &str) -> Self {
        Self(hex::encode(Sha256::digest(key.as_bytes())))
    }

    pub fn from_hex(hex: impl Into<String>) -> Self {
        Self(hex.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A freshly generated key. The plaintext is only ever handed to the caller once.
pub struct NewApiKey {
    pub plaintext: String,
    pub prefix: String,
    pub hash: ApiKeyHash,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Generate a new random API key.
pub fn generate() -> NewApiKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let plaintext = format!(
        "{KEY_MARKER}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    NewApiKey {
        prefix: plaintext[..PREFIX_LEN].to_string(),
        hash: ApiKeyHash::of(&plaintext),
        plaintext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_and_hash_consistently() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(KEY_MARKER));
        assert_eq!(a.plaintext.len(), KEY_MARKER.len() + 43);
        assert_eq!(a.hash, ApiKeyHash::of(&a.plaintext));
        assert_ne!(a.hash, b.hash);
        assert!(a.plaintext.starts_with(&a.prefix));
        assert!(!format!("{a:?}").contains(&a.plaintext));
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            ApiKeyHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
