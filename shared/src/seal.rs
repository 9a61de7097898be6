//! Sealing secret values so that only data planes can open them.
//!
//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256) + HKDF-SHA256 + ChaCha20-Poly1305.
//! The control plane holds only the [`SealingKey`] (a public key): it can seal and re-seal
//! but never open. Data planes hold the [`OpeningKey`].
//!
//! Each ciphertext is bound to its identity (tenant, environment, secret name, version) as
//! AEAD associated data, so a ciphertext copied onto another secret fails to open.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;

const INFO: &[u8] = b"airlock/secret/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("invalid seal key: {0}")]
    InvalidKey(&'static str),
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed secret was sealed to key {0}, which this data plane does not hold")]
    UnknownKey(String),
    #[error("sealed secret failed to open (tampered, or not sealed for this identity)")]
    OpenFailed,
    #[error("sealing failed")]
    SealFailed,
}

/// Where a secret lives; bound into its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretIdentity<'a> {
    pub tenant_id: Uuid,
    pub environment_id: Uuid,
    pub name: &'a str,
    pub version: i32,
}

impl SecretIdentity<'_> {
    fn aad(&self) -> Vec<u8> {
        format!(
            "tenant={}\nenvironment={}\nname={}\nversion={}",
            self.tenant_id, self.environment_id, self.name, self.version
        )
        .into_bytes()
    }
}

/// A sealed secret value as stored in the database, Redis and snapshots.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedSecret {
    /// Version of the secret (1, 2, ...); part of the bound identity.
    pub version: i32,
    /// Id of the public key it was sealed to ([`SealingKey::key_id`]).
    pub key_id: String,
    /// HPKE encapsulated key, base64.
    pub enc: String,
    /// Ciphertext with tag, base64.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A plaintext secret value, only ever held by a data plane. Zeroized on drop; its `Debug`
/// never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value, for rendering into an outbound request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

fn key_id_of(public: &<Kem as hpke::Kem>::PublicKey) -> String {
    hex::encode(&Sha256::digest(public.to_bytes())[..8])
}

/// Public key: seals secret values. Held by the control plane.
#[derive(Clone)]
pub struct SealingKey {
    public: <Kem as hpke::Kem>::PublicKey,
    key_id: String,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl SealingKey {
    /// Parse a base64 X25519 public key.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| SealError::InvalidKey("public key is not base64"))?;
        let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&bytes)
            .map_err(|_| SealError::InvalidKey("public key must be 32 bytes"))?;
        Ok(Self {
            key_id: key_id_of(&public),
            public,
        })
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.public.to_bytes())
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Seal `value` for `identity`.
    pub fn seal(
        &self,
        identity: SecretIdentity<'_>,
        value: &str,
    ) -> Result<SealedSecret, SealError> {
        let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &self.public,
            INFO,
            value.as_bytes(),
            &identity.aad(),
            &mut rand::rng(),
        )
        .map_err(|_| SealError::SealFailed)?;
        Ok(SealedSecret {
            version: identity.version,
            key_id: self.key_id.clone(),
            enc: B64.encode(enc.to_bytes()),
            ciphertext: B64.encode(ciphertext),
        })
    }
}

/// Private key: opens sealed secrets. Held only by data planes.
#[derive(Clone)]
pub struct OpeningKey {
    private: <Kem as hpke::Kem>::PrivateKey,
    sealing: SealingKey,
}

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpeningKey")
            .field("key_id", &self.sealing.key_id)
            .finish_non_exhaustive()
    }
}

impl OpeningKey {
    /// A new random key pair.
    pub fn generate() -> Self {
        let (private, public) = Kem::gen_keypair(&mut rand::rng());
        Self {
            private,
            sealing: SealingKey {
                key_id: key_id_of(&public),
                public,
            },
        }
    }

    /// Parse a base64 X25519 private key (the format of `AIRLOCK_SEAL_KEY` and key files).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| SealError::InvalidKey("private key is not base64"))?,
        );
        let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(&bytes)
            .map_err(|_| SealError::InvalidKey("private key must be 32 bytes"))?;
        let public = Kem::sk_to_pk(&private);
        Ok(Self {
            private,
            sealing: SealingKey {
                key_id: key_id_of(&public),
                public,
            },
        })
    }

    /// Base64 of the private key, for writing a key file. Handle with care.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.private.to_bytes()))
    }

    /// The matching public key, for the control plane.
    pub fn sealing_key(&self) -> &SealingKey {
        &self.sealing
    }

    /// Open `sealed`, checking it was sealed for `identity`.
    pub fn open(
        &self,
        identity: SecretIdentity<'_>,
        sealed: &SealedSecret,
    ) -> Result<SecretValue, SealError> {
        if sealed.key_id != self.sealing.key_id {
            return Err(SealError::UnknownKey(sealed.key_id.clone()));
        }
        if sealed.version != identity.version {
            return Err(SealError::OpenFailed);
        }
        let enc_bytes = B64.decode(&sealed.enc).map_err(|_| SealError::Malformed)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc_bytes)
            .map_err(|_| SealError::Malformed)?;
        let ciphertext = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| SealError::Malformed)?;
        let plaintext = Zeroizing::new(
            hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
                &OpModeR::Base,
                &self.private,
                &enc,
                INFO,
                &ciphertext,
                &identity.aad(),
            )
            .map_err(|_| SealError::OpenFailed)?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| SealError::Malformed)?;
        Ok(SecretValue::new(text.to_string()))
    }
}

/// The opening keys a data plane holds: normally one, two while the sealing key is rotated
/// (secrets sealed to the old key and to the new one both open). Picks the key by the id a
/// sealed secret names.
#[derive(Clone, Debug)]
pub struct OpeningKeyring {
    keys: Vec<OpeningKey>,
}

impl OpeningKeyring {
    /// A keyring of at least one key. Duplicate keys are kept once.
    pub fn new(keys: Vec<OpeningKey>) -> Result<Self, SealError> {
        let mut unique: Vec<OpeningKey> = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique
                .iter()
                .any(|k| k.sealing.key_id == key.sealing.key_id)
            {
                unique.push(key);
            }
        }
        if unique.is_empty() {
            return Err(SealError::InvalidKey("at least one opening key is needed"));
        }
        Ok(Self { keys: unique })
    }

    /// Parse keys separated by commas or newlines (the format of `AIRLOCK_SEAL_KEY` and of
    /// key files holding several keys).
    pub fn from_base64_list(text: &str) -> Result<Self, SealError> {
        let keys = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(OpeningKey::from_base64)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(keys)
    }

    /// The key that values sealed by a data plane (OAuth tokens it obtains) are sealed to:
    /// the first of the ring. During a sealing-key rotation, list the new key first.
    pub fn sealing_key(&self) -> &SealingKey {
        &self.keys[0].sealing
    }

    /// The keys held, in order (the first one seals). Data planes derive other keys from
    /// them (OAuth handles).
    pub fn keys(&self) -> impl Iterator<Item = &OpeningKey> {
        self.keys.iter()
    }

    /// Ids of the keys held, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.sealing.key_id())
    }

    /// Open `sealed` with the key it was sealed to.
    pub fn open(
        &self,
        identity: SecretIdentity<'_>,
        sealed: &SealedSecret,
    ) -> Result<SecretValue, SealError> {
        self.keys
            .iter()
            .find(|k| k.sealing.key_id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?
            .open(identity, sealed)
    }
}

impl From<OpeningKey> for OpeningKeyring {
    fn from(key: OpeningKey) -> Self {
        Self { keys: vec![key] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, version: i32) -> SecretIdentity<'_> {
        SecretIdentity {
            tenant_id: Uuid::from_u128(1),
            environment_id: Uuid::from_u128(2),
            name,
            version,
        }
    }

    #[test]
    fn round_trip() {
        let key = OpeningKey::generate();
        let sealed = key
            .sealing_key()
            .seal(identity("TOKEN", 1), "canary-value")
            .unwrap();
        assert!(!sealed.ciphertext.contains("canary"));
        assert_eq!(
            key.open(identity("TOKEN", 1), &sealed).unwrap().expose(),
            "canary-value"
        );
    }

    #[test]
    fn ciphertext_is_bound_to_identity() {
        let key = OpeningKey::generate();
        let sealed = key.sealing_key().seal(identity("A", 1), "v").unwrap();
        assert_eq!(
            key.open(identity("B", 1), &sealed),
            Err(SealError::OpenFailed)
        );
        assert_eq!(
            key.open(identity("A", 2), &sealed),
            Err(SealError::OpenFailed)
        );
        let other_env = SecretIdentity {
            environment_id: Uuid::from_u128(3),
            ..identity("A", 1)
        };
        assert_eq!(key.open(other_env, &sealed), Err(SealError::OpenFailed));
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let key = OpeningKey::generate();
        let mut sealed = key.sealing_key().seal(identity("A", 1), "value").unwrap();
        let mut bytes = B64.decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 1;
        sealed.ciphertext = B64.encode(bytes);
        assert_eq!(
            key.open(identity("A", 1), &sealed),
            Err(SealError::OpenFailed)
        );
    }

    #[test]
    fn other_key_cannot_open() {
        let key = OpeningKey::generate();
        let other = OpeningKey::generate();
        let sealed = key.sealing_key().seal(identity("A", 1), "value").unwrap();
        assert!(matches!(
            other.open(identity("A", 1), &sealed),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_base64() {
        let key = OpeningKey::generate();
        let again = OpeningKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.sealing_key().key_id(), key.sealing_key().key_id());
        let public = SealingKey::from_base64(&key.sealing_key().to_base64()).unwrap();
        let sealed = public.seal(identity("A", 1), "value").unwrap();
        assert_eq!(
            again.open(identity("A", 1), &sealed).unwrap().expose(),
            "value"
        );
        assert!(OpeningKey::from_base64("not base64!").is_err());
        assert!(SealingKey::from_base64("AAAA").is_err());
        assert!(!format!("{key:?}").contains(key.to_base64().as_str()));
    }

    #[test]
    fn keyring_opens_with_the_key_each_secret_names() {
        let old = OpeningKey::generate();
        let new = OpeningKey::generate();
        let a = old
            .sealing_key()
            .seal(identity("A", 1), "old-sealed")
            .unwrap();
        let b = new
            .sealing_key()
            .seal(identity("B", 1), "new-sealed")
            .unwrap();
        let list = format!(
            "{}, {}\n",
            old.to_base64().as_str(),
            new.to_base64().as_str()
        );
        let ring = OpeningKeyring::from_base64_list(&list).unwrap();
        assert_eq!(ring.key_ids().count(), 2);
        assert_eq!(
            ring.open(identity("A", 1), &a).unwrap().expose(),
            "old-sealed"
        );
        assert_eq!(
            ring.open(identity("B", 1), &b).unwrap().expose(),
            "new-sealed"
        );
        let only_new = OpeningKeyring::from(new.clone());
        assert!(matches!(
            only_new.open(identity("A", 1), &a),
            Err(SealError::UnknownKey(_))
        ));
        assert!(OpeningKeyring::from_base64_list(" , ").is_err());
        assert!(
            OpeningKeyring::new(vec![new.clone(), new])
                .unwrap()
                .key_ids()
                .count()
                == 1
        );
    }
}
