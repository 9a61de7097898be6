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

/// SHA-256 of an API key: what the database (as hex) and the snapshot (as hex in JSON, as
/// bytes in the binary encoding) hold.
/// Kept as its 32 bytes, so hashing a presented key and looking it up allocate nothing, and a
/// snapshot of 10 000 keys parses without 10 000 strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

/// A stored key hash that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an API key hash is 64 hex digits (SHA-256)")]
pub struct InvalidKeyHash;

impl ApiKeyHash {
    /// Hash a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// The hash written as 64 hex digits (upper or lower case), as [`Self::to_hex`] writes it.
    pub fn from_hex(hex: &str) -> Result<Self, InvalidKeyHash> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| InvalidKeyHash)?;
        Ok(Self(bytes))
    }

    /// 64 lower-case hex digits: the form stored in the database and in snapshots.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeyHash({})", self.to_hex())
    }
}

/// In human-readable formats (JSON) 64 hex digits; in binary ones (the binary snapshot
/// encoding, [`crate::wire::encoding`]) the 32 bytes themselves.
impl Serialize for ApiKeyHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_bytes(&self.0);
        }
        let mut text = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the length of the bytes.
        hex::encode_to_slice(self.0, &mut text).map_err(serde::ser::Error::custom)?;
        // Hex digits are ASCII.
        serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for ApiKeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HashVisitor;
        impl serde::de::Visitor<'_> for HashVisitor {
            type Value = ApiKeyHash;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 hex digits or 32 bytes (a SHA-256 hash)")
            }
            // Borrowed or not, the text is only decoded: no copy of it is made.
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ApiKeyHash, E> {
                ApiKeyHash::from_hex(text).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ApiKeyHash, E> {
                <[u8; 32]>::try_from(bytes)
                    .map(ApiKeyHash)
                    .map_err(|_| E::invalid_length(bytes.len(), &self))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(HashVisitor)
        } else {
            deserializer.deserialize_bytes(HashVisitor)
        }
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
            ApiKeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hashes_travel_as_hex_and_bad_hex_is_refused() {
        let hash = ApiKeyHash::of("abc");
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", hash.to_hex()));
        assert_eq!(serde_json::from_str::<ApiKeyHash>(&json).unwrap(), hash);
        // Upper case is the same hash; stored hashes are written lower case.
        let upper = hash.to_hex().to_ascii_uppercase();
        assert_eq!(ApiKeyHash::from_hex(&upper), Ok(hash));
        for bad in [
            "",
            "abc",
            &hash.to_hex()[..63],
            &format!("{}0", hash.to_hex()),
            &"zz".repeat(32),
        ] {
            assert_eq!(ApiKeyHash::from_hex(bad), Err(InvalidKeyHash), "{bad:?}");
            let error = serde_json::from_str::<ApiKeyHash>(&format!("\"{bad}\"")).unwrap_err();
            assert!(error.to_string().contains("64 hex digits"), "{error}");
        }
        assert!(serde_json::from_str::<ApiKeyHash>("42").is_err());
    }
}
