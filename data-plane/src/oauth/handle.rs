//! OAuth handles: opaque, stateless references to a connection that an application passes
//! as an argument (`{"$oauth": HANDLE}`) instead of ever holding a token.
//!
//! A handle is `aoh1.` + base64url(nonce ‖ ChaCha20-Poly1305(payload)), where the payload is
//! the environment id, the connection id, the API key id and the expiry (Unix seconds, big
//! endian). The AEAD key is derived with HKDF-SHA256 from the data plane's opening key
//! (info `airlock/oauth-handle/v1`), so every data plane holding the same key accepts a
//! handle issued by any of them, and nothing has to be stored. Handles are issued with the
//! first key of the ring and verified with every key of it (a sealing-key rotation keeps
//! handles issued before it working until they expire).
//!
//! A handle is accepted only if it decrypts (so it was issued by a data plane and not
//! altered), has not expired, and names the caller's environment and API key: a handle that
//! leaks from one application is useless to another. It carries no token.

use airlock_shared::seal::OpeningKeyring;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, Utc};
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

/// How long a handle is valid.
pub const HANDLE_TTL_SECONDS: i64 = 3600;

const PREFIX: &str = "aoh1.";
const HKDF_INFO: &[u8] = b"airlock/oauth-handle/v1";
const AAD: &[u8] = b"airlock/oauth-handle/v1";
const NONCE_LEN: usize = 12;
const PAYLOAD_LEN: usize = 16 * 3 + 8;
/// Longest text accepted as a handle (checked before decoding).
const MAX_HANDLE_LEN: usize = 256;

/// What a handle says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleClaims {
    pub environment_id: Uuid,
    pub connection_id: Uuid,
    pub api_key_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Issues and verifies handles with keys derived from the opening keys.
pub struct HandleKeys {
    /// One AEAD per opening key, the first one issues.
    ciphers: Vec<ChaCha20Poly1305>,
}

impl std::fmt::Debug for HandleKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleKeys")
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

impl HandleKeys {
    /// Derive the handle keys of `keyring` (the first key issues, all verify).
    pub fn derive(keyring: &OpeningKeyring) -> Self {
        let ciphers = keyring
            .keys()
            .map(|key| {
                let secret =
                    Zeroizing::new(B64.decode(key.to_base64().as_bytes()).unwrap_or_default());
                let hkdf = Hkdf::<Sha256>::new(None, &secret);
                let mut okm = Zeroizing::new([0u8; 32]);
                hkdf.expand(HKDF_INFO, okm.as_mut())
                    .expect("32 bytes is a valid HKDF-SHA256 output length");
                ChaCha20Poly1305::new(Key::from_slice(okm.as_ref()))
            })
            .collect();
        Self { ciphers }
    }

    /// A handle for `claims`.
    pub fn issue(&self, claims: &HandleClaims) -> String {
        let mut payload = Zeroizing::new(Vec::with_capacity(PAYLOAD_LEN));
        payload.extend_from_slice(claims.environment_id.as_bytes());
        payload.extend_from_slice(claims.connection_id.as_bytes());
        payload.extend_from_slice(claims.api_key_id.as_bytes());
        payload.extend_from_slice(&claims.expires_at.timestamp().to_be_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self.ciphers[0]
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &payload,
                    aad: AAD,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a short payload cannot fail");
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", B64URL.encode(bytes))
    }

    /// The claims of `handle` if it was issued with one of these keys, unaltered, and has not
    /// expired at `now`. Environment and key are checked by the caller.
    pub fn verify(&self, handle: &str, now: DateTime<Utc>) -> Option<HandleClaims> {
        if handle.len() > MAX_HANDLE_LEN {
            return None;
        }
        let bytes = B64URL.decode(handle.strip_prefix(PREFIX)?).ok()?;
        if bytes.len() != NONCE_LEN + PAYLOAD_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let payload = self.ciphers.iter().find_map(|cipher| {
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: AAD,
                    },
                )
                .ok()
        })?;
        let payload = Zeroizing::new(payload);
        let uuid_at = |at: usize| Uuid::from_slice(&payload[at..at + 16]).ok();
        let expires = i64::from_be_bytes(payload[48..56].try_into().ok()?);
        let claims = HandleClaims {
            environment_id: uuid_at(0)?,
            connection_id: uuid_at(16)?,
            api_key_id: uuid_at(32)?,
            expires_at: DateTime::from_timestamp(expires, 0)?,
        };
        (now < claims.expires_at).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use airlock_shared::seal::OpeningKey;
    use chrono::Duration;

    use super::*;

    fn claims(now: DateTime<Utc>) -> HandleClaims {
        HandleClaims {
            environment_id: Uuid::from_u128(1),
            connection_id: Uuid::from_u128(2),
            api_key_id: Uuid::from_u128(3),
            expires_at: now + Duration::seconds(HANDLE_TTL_SECONDS),
        }
    }

    #[test]
    fn a_handle_round_trips_and_is_opaque() {
        let keys = HandleKeys::derive(&OpeningKey::generate().into());
        let now = Utc::now();
        let handle = keys.issue(&claims(now));
        assert!(handle.starts_with(PREFIX));
        let verified = keys.verify(&handle, now).unwrap();
        assert_eq!(verified.connection_id, Uuid::from_u128(2));
        assert_eq!(verified.api_key_id, Uuid::from_u128(3));
        assert_eq!(
            verified.expires_at.timestamp(),
            claims(now).expires_at.timestamp()
        );
        // Random nonce: two handles for the same claims differ.
        assert_ne!(keys.issue(&claims(now)), handle);
        assert!(!handle.contains(&Uuid::from_u128(2).simple().to_string()));
    }

    #[test]
    fn tampered_expired_and_foreign_handles_are_refused() {
        let key = OpeningKey::generate();
        let keys = HandleKeys::derive(&key.clone().into());
        let now = Utc::now();
        let handle = keys.issue(&claims(now));

        // Every single-character change is refused.
        let body = handle.strip_prefix(PREFIX).unwrap();
        for i in 0..body.len() {
            let mut chars: Vec<char> = body.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let tampered = format!("{PREFIX}{}", chars.into_iter().collect::<String>());
            if tampered != handle {
                assert_eq!(keys.verify(&tampered, now), None, "position {i}");
            }
        }
        assert_eq!(keys.verify("", now), None);
        assert_eq!(keys.verify(body, now), None);
        assert_eq!(keys.verify(&"a".repeat(1000), now), None);

        // Expired: refused at and after the expiry.
        let expiry = claims(now).expires_at;
        assert!(keys
            .verify(&handle, expiry - Duration::seconds(1))
            .is_some());
        assert_eq!(keys.verify(&handle, expiry + Duration::seconds(1)), None);

        // Another data plane key cannot verify it.
        let other = HandleKeys::derive(&OpeningKey::generate().into());
        assert_eq!(other.verify(&handle, now), None);

        // A ring that still holds the old key (rotation) does.
        let rotated =
            HandleKeys::derive(&OpeningKeyring::new(vec![OpeningKey::generate(), key]).unwrap());
        assert!(rotated.verify(&handle, now).is_some());
    }
}
