//! How a snapshot travels through Redis: JSON, or a compact binary encoding.
//!
//! Control planes before the binary encoding wrote JSON, and every data plane reads JSON, so
//! JSON stays the compatibility encoding. The binary encoding is [postcard] (variable-length
//! integers, length-prefixed strings, UUIDs and key hashes as raw bytes) after
//! [`BINARY_MARKER`] and a layout version byte: for the environments of
//! `docs/BENCHMARKS.md` it is about half the bytes and decodes several times faster, which is
//! most of a large snapshot's time to go live. A data plane tells the two apart by the first
//! byte (a JSON text never starts with a NUL byte), so it reads whatever a control plane of
//! either version publishes.
//!
//! The binary layout has no field names: every field of every type in an
//! [`EnvironmentSnapshot`] is written in declaration order, and `#[serde(default)]` has no
//! effect there. Adding, removing, reordering or retyping a field changes the layout, and then
//! [`BINARY_VERSION`] must change (the test `the_binary_layout_is_pinned` fails until it
//! does); a data plane refuses a layout version it does not know, with a log line that says so,
//! and keeps serving what it has. `docs/OPERATIONS.md` says how to upgrade across such a change
//! (the control planes publish JSON meanwhile).
//!
//! [postcard]: https://docs.rs/postcard

use std::fmt;
use std::str::FromStr;

use super::EnvironmentSnapshot;

/// First bytes of a binary snapshot; the layout version byte follows.
pub const BINARY_MARKER: &[u8] = b"\0airlock-snapshot";

/// Version of the binary layout this build writes and reads (module docs).
pub const BINARY_VERSION: u8 = 1;

/// How a control plane encodes the snapshots it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SnapshotEncoding {
    /// JSON: read by every data plane, of every version.
    Json,
    /// postcard after [`BINARY_MARKER`] and [`BINARY_VERSION`]: read by data planes since
    /// this encoding exists.
    #[default]
    Binary,
}

impl SnapshotEncoding {
    /// Every encoding, with its name (as `--snapshot-encoding` takes it).
    pub const ALL: [SnapshotEncoding; 2] = [Self::Json, Self::Binary];

    /// Its name: `json` or `binary`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }

    /// The encoding `bytes` are in: binary if they start with a NUL byte (where a JSON text
    /// cannot start), JSON otherwise. Says nothing about whether they decode.
    pub fn of(bytes: &[u8]) -> Self {
        if bytes.first() == Some(&0) {
            Self::Binary
        } else {
            Self::Json
        }
    }

    /// `snapshot` in this encoding.
    pub fn encode(self, snapshot: &EnvironmentSnapshot) -> Result<Vec<u8>, SnapshotEncodeError> {
        match self {
            Self::Json => serde_json::to_vec(snapshot).map_err(SnapshotEncodeError::Json),
            Self::Binary => {
                let mut bytes = Vec::with_capacity(BINARY_MARKER.len() + 1 + 64 * 1024);
                bytes.extend_from_slice(BINARY_MARKER);
                bytes.push(BINARY_VERSION);
                postcard::to_extend(snapshot, bytes).map_err(SnapshotEncodeError::Binary)
            }
        }
    }
}

impl fmt::Display for SnapshotEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an encoding's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown snapshot encoding `{0}` (expected json or binary)")]
pub struct UnknownSnapshotEncoding(pub String);

impl FromStr for SnapshotEncoding {
    type Err = UnknownSnapshotEncoding;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|encoding| encoding.name() == name)
            .ok_or_else(|| UnknownSnapshotEncoding(name.to_string()))
    }
}

/// Why a snapshot could not be encoded (a bug: every snapshot type encodes).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotEncodeError {
    #[error("JSON: {0}")]
    Json(serde_json::Error),
    #[error("binary: {0}")]
    Binary(postcard::Error),
}

/// Why bytes read from Redis are not a snapshot. The messages name positions and versions,
/// never content.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    #[error("invalid JSON snapshot: {0}")]
    Json(#[from] serde_json::Error),
    /// Starts with a NUL byte but not with [`BINARY_MARKER`] and a version.
    #[error("neither JSON nor a binary snapshot (starts with a NUL byte but not the binary snapshot marker)")]
    NoMarker,
    #[error("binary snapshot of layout version {found}; this data plane reads version {BINARY_VERSION} (and JSON){}", if *.found > BINARY_VERSION { ": it was published by a newer control plane (upgrade the data planes first, or have the control planes publish JSON)" } else { "" })]
    UnknownVersion { found: u8 },
    #[error("invalid binary snapshot (layout version {BINARY_VERSION}): {}", describe(.0))]
    Binary(postcard::Error),
    #[error("invalid binary snapshot (layout version {BINARY_VERSION}): {0} bytes after its end")]
    TrailingBytes(usize),
}

/// postcard's own text, except for the errors of our `Deserialize` impls, which it does not
/// keep (it has no room for a message): say which values those can be.
fn describe(error: &postcard::Error) -> String {
    match error {
        postcard::Error::SerdeDeCustom => {
            "a value is not valid for its field (a host pattern, an API key hash or a time)".into()
        }
        other => other.to_string(),
    }
}

/// Decode a snapshot in either encoding ([`SnapshotEncoding::of`]).
pub fn decode_snapshot(bytes: &[u8]) -> Result<EnvironmentSnapshot, SnapshotDecodeError> {
    match SnapshotEncoding::of(bytes) {
        SnapshotEncoding::Json => Ok(serde_json::from_slice(bytes)?),
        SnapshotEncoding::Binary => {
            let versioned = bytes
                .strip_prefix(BINARY_MARKER)
                .ok_or(SnapshotDecodeError::NoMarker)?;
            let (&version, body) = versioned
                .split_first()
                .ok_or(SnapshotDecodeError::NoMarker)?;
            if version != BINARY_VERSION {
                return Err(SnapshotDecodeError::UnknownVersion { found: version });
            }
            let (snapshot, rest) =
                postcard::take_from_bytes(body).map_err(SnapshotDecodeError::Binary)?;
            if !rest.is_empty() {
                return Err(SnapshotDecodeError::TrailingBytes(rest.len()));
            }
            Ok(snapshot)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use serde::Serialize;
    use sha2::{Digest, Sha256};
    use uuid::Uuid;

    use super::*;
    use crate::api_key::ApiKeyHash;
    use crate::hosts::HostPattern;
    use crate::oauth::{
        ConnectionStatus, OAuthClientSpec, OAuthConnectionSpec, OAuthGrant, PendingAuthorization,
        SealedTokenSet, TokenAuthMethod,
    };
    use crate::seal::{OpeningKey, SealedSecret, SecretIdentity};
    use crate::wire::{ApiKeyGrant, FunctionSpec, HeaderSpec, SecretEntry};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 123_456_789).unwrap()
    }

    fn sealed(n: u8) -> SealedSecret {
        SealedSecret {
            version: i32::from(n),
            key_id: format!("key{n}"),
            enc: format!("enc{n}"),
            ciphertext: format!("ciphertext{n}"),
        }
    }

    fn hosts(patterns: &[&str]) -> Vec<HostPattern> {
        patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect()
    }

    /// A snapshot that sets every field of every type, each optional or defaulted one both
    /// ways somewhere, with fixed values (the pinned layout depends on them).
    fn every_field() -> EnvironmentSnapshot {
        let function =
            |n: u128, name: &str, body: Option<&str>, headers: Vec<HeaderSpec>| FunctionSpec {
                id: Uuid::from_u128(100 + n),
                name: name.into(),
                method: "POST".into(),
                url: format!("https://api.example.com/{name}?q={{{{args.q}}}}"),
                headers,
                body: body.map(str::to_string),
                timeout_ms: 30_000 + n as u64,
            };
        let client = |n: u128, name: &str, full: bool| OAuthClientSpec {
            id: Uuid::from_u128(300 + n),
            name: name.into(),
            issuer: full.then(|| "https://idp.example.com/".into()),
            token_url: "https://idp.example.com/token".into(),
            authorize_url: full.then(|| "https://idp.example.com/authorize".into()),
            client_id: format!("client-{name}"),
            client_secret: full.then(|| "OAUTH_SECRET".into()),
            auth_method: if full {
                TokenAuthMethod::ClientSecretPost
            } else {
                TokenAuthMethod::None
            },
            scopes: if full {
                vec!["read".into(), "write".into()]
            } else {
                Vec::new()
            },
            extra_token_params: if full {
                vec![("audience".into(), "https://api.example.com".into())]
            } else {
                Vec::new()
            },
            allowed_hosts: if full {
                hosts(&["api.example.com", "*.example.org"])
            } else {
                Vec::new()
            },
            refresh_skew_seconds: if full { 120 } else { 60 },
            redirect_uri: full.then(|| "https://dp.example.com/v1/oauth/callback".into()),
        };
        EnvironmentSnapshot {
            tenant_id: Uuid::from_u128(1),
            environment_id: Uuid::from_u128(2),
            revision: 1_733_300_000_123_456,
            functions: BTreeMap::from([
                (
                    "create".to_string(),
                    function(
                        1,
                        "create",
                        Some(r#"{"name":"{{args.name}}","quote":"\"é\""}"#),
                        vec![
                            HeaderSpec {
                                name: "authorization".into(),
                                value: "Bearer {{secrets.API_TOKEN}}".into(),
                            },
                            HeaderSpec {
                                name: "x-trace".into(),
                                value: "{{args.trace}}".into(),
                            },
                        ],
                    ),
                ),
                ("list".to_string(), function(2, "list", None, Vec::new())),
            ]),
            secrets: BTreeMap::from([
                (
                    "API_TOKEN".to_string(),
                    SecretEntry {
                        sealed: sealed(1),
                        allowed_hosts: hosts(&["api.example.com", "10.0.0.1", "::1"]),
                    },
                ),
                (
                    "UNBOUND".to_string(),
                    SecretEntry {
                        sealed: sealed(2),
                        allowed_hosts: Vec::new(),
                    },
                ),
            ]),
            api_keys: vec![
                ApiKeyGrant {
                    id: Uuid::from_u128(200),
                    name: "ci".into(),
                    hash: ApiKeyHash::of("ak_one"),
                    functions: vec!["create".into(), "list_*".into()],
                    expires_at: Some(at(1_900_000_000)),
                },
                ApiKeyGrant {
                    id: Uuid::from_u128(201),
                    name: String::new(),
                    hash: ApiKeyHash::of("ak_two"),
                    functions: Vec::new(),
                    expires_at: None,
                },
            ],
            oauth_clients: BTreeMap::from([
                ("full".to_string(), client(1, "full", true)),
                ("public".to_string(), client(2, "public", false)),
            ]),
            oauth_connections: BTreeMap::from([
                (
                    "github".to_string(),
                    OAuthConnectionSpec {
                        id: Uuid::from_u128(400),
                        name: "github".into(),
                        client: "full".into(),
                        grant: OAuthGrant::AuthorizationCode,
                        status: ConnectionStatus::Connected,
                        tokens: Some(SealedTokenSet {
                            generation: 3,
                            access_token: sealed(3),
                            refresh_token: Some(sealed(4)),
                            expires_at: Some(at(1_800_000_000)),
                            obtained_at: at(1_700_000_000),
                        }),
                    },
                ),
                (
                    "machine".to_string(),
                    OAuthConnectionSpec {
                        id: Uuid::from_u128(401),
                        name: "machine".into(),
                        client: "public".into(),
                        grant: OAuthGrant::ClientCredentials,
                        status: ConnectionStatus::Broken,
                        tokens: Some(SealedTokenSet {
                            generation: 1,
                            access_token: sealed(5),
                            refresh_token: None,
                            expires_at: None,
                            obtained_at: at(1_700_000_001),
                        }),
                    },
                ),
                (
                    "pending".to_string(),
                    OAuthConnectionSpec {
                        id: Uuid::from_u128(402),
                        name: "pending".into(),
                        client: "full".into(),
                        grant: OAuthGrant::AuthorizationCode,
                        status: ConnectionStatus::Pending,
                        tokens: None,
                    },
                ),
            ]),
            oauth_authorizations: vec![PendingAuthorization {
                id: Uuid::from_u128(500),
                connection: "pending".into(),
                state_hash: crate::oauth::state_hash("state"),
                code_verifier: sealed(6),
                redirect_uri: "https://dp.example.com/v1/oauth/callback".into(),
                expires_at: at(1_733_300_600),
            }],
        }
    }

    fn empty() -> EnvironmentSnapshot {
        EnvironmentSnapshot {
            tenant_id: Uuid::from_u128(1),
            environment_id: Uuid::from_u128(2),
            revision: 1,
            functions: BTreeMap::new(),
            secrets: BTreeMap::new(),
            api_keys: Vec::new(),
            oauth_clients: BTreeMap::new(),
            oauth_connections: BTreeMap::new(),
            oauth_authorizations: Vec::new(),
        }
    }

    fn binary(snapshot: &EnvironmentSnapshot) -> Vec<u8> {
        SnapshotEncoding::Binary.encode(snapshot).unwrap()
    }

    #[test]
    fn every_field_round_trips_in_both_encodings() {
        for snapshot in [every_field(), empty()] {
            for encoding in SnapshotEncoding::ALL {
                let bytes = encoding.encode(&snapshot).unwrap();
                assert_eq!(SnapshotEncoding::of(&bytes), encoding);
                assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot, "{encoding}");
            }
        }
        // The binary form is the smaller one (UUIDs and key hashes as bytes, no names).
        let full = every_field();
        let json = SnapshotEncoding::Json.encode(&full).unwrap();
        assert!(json.starts_with(b"{"));
        assert!(binary(&full).len() * 2 < json.len());
    }

    #[test]
    fn json_stays_the_json_control_planes_always_wrote() {
        let snapshot = every_field();
        let json = SnapshotEncoding::Json.encode(&snapshot).unwrap();
        assert_eq!(json, serde_json::to_vec(&snapshot).unwrap());
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value["api_keys"][0]["hash"],
            ApiKeyHash::of("ak_one").to_hex()
        );
        assert_eq!(value["tenant_id"], Uuid::from_u128(1).to_string());
    }

    #[test]
    fn json_of_an_older_control_plane_still_decodes() {
        // Written before the OAuth fields and key expiry existed: their defaults apply.
        let json = format!(
            r#"{{"tenant_id":"{t}","environment_id":"{e}","revision":7,"functions":{{}},
            "secrets":{{}},"api_keys":[{{"id":"{t}","name":"k","hash":"{h}","functions":["*"]}}]}}"#,
            t = Uuid::from_u128(1),
            e = Uuid::from_u128(2),
            h = ApiKeyHash::of("k").to_hex(),
        );
        assert_eq!(
            SnapshotEncoding::of(json.as_bytes()),
            SnapshotEncoding::Json
        );
        let snapshot = decode_snapshot(json.as_bytes()).unwrap();
        assert_eq!(snapshot.revision, 7);
        assert_eq!(snapshot.api_keys[0].expires_at, None);
        assert!(snapshot.oauth_clients.is_empty() && snapshot.oauth_authorizations.is_empty());
        // Leading whitespace is still JSON.
        let spaced = format!("\n {json}");
        assert_eq!(decode_snapshot(spaced.as_bytes()).unwrap(), snapshot);
    }

    /// The binary layout of `every_field()`, pinned. If this fails, a type of the snapshot
    /// changed its binary layout: data planes of the previous version cannot read it, nor can
    /// this one read theirs. Bump `BINARY_VERSION`, update the digest, and read the upgrade
    /// note of `docs/OPERATIONS.md` ("Snapshot encoding").
    #[test]
    fn the_binary_layout_is_pinned() {
        let bytes = binary(&every_field());
        assert_eq!(&bytes[..BINARY_MARKER.len()], BINARY_MARKER);
        assert_eq!(bytes[BINARY_MARKER.len()], BINARY_VERSION);
        let digest = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            (BINARY_VERSION, bytes.len(), digest.as_str()),
            (
                1,
                1411,
                "706f6df30778e572ca995b9329b0d532dada44f9a97c2e52b9674f0a24fc8288"
            ),
            "the binary snapshot layout changed (see this test's docs)"
        );
    }

    #[test]
    fn key_hashes_and_ids_are_raw_bytes_in_the_binary_encoding() {
        let mut snapshot = empty();
        let hash = ApiKeyHash::of("ak_bytes");
        snapshot.api_keys.push(ApiKeyGrant {
            id: Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            name: "k".into(),
            hash,
            functions: Vec::new(),
            expires_at: None,
        });
        let bytes = binary(&snapshot);
        let hex_hash = hash.to_hex();
        assert!(!contains(&bytes, hex_hash.as_bytes()));
        let raw = postcard::to_allocvec(&hash).unwrap();
        assert_eq!(raw.len(), 33, "a length byte and the 32 bytes");
        assert!(contains(&bytes, &raw));
        assert!(contains(
            &bytes,
            Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10).as_bytes()
        ));
        // A hash of another length is refused.
        assert!(postcard::from_bytes::<ApiKeyHash>(
            &postcard::to_allocvec(&[1u8; 31].as_slice()).unwrap()
        )
        .is_err());
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[test]
    fn no_secret_value_is_in_either_encoding() {
        const CANARY: &str = "canary-encoding-5e1f";
        let key = OpeningKey::generate();
        let mut snapshot = empty();
        let identity = SecretIdentity {
            tenant_id: snapshot.tenant_id,
            environment_id: snapshot.environment_id,
            name: "TOKEN",
            version: 1,
        };
        let sealed = key.sealing_key().seal(identity, CANARY).unwrap();
        snapshot.secrets.insert(
            "TOKEN".into(),
            SecretEntry {
                sealed,
                allowed_hosts: hosts(&["api.example.com"]),
            },
        );
        for encoding in SnapshotEncoding::ALL {
            let bytes = encoding.encode(&snapshot).unwrap();
            assert!(!contains(&bytes, CANARY.as_bytes()), "{encoding}");
            let decoded = decode_snapshot(&bytes).unwrap();
            let opened = key
                .open(identity, &decoded.secrets["TOKEN"].sealed)
                .unwrap();
            assert_eq!(opened.expose(), CANARY);
        }
    }

    #[test]
    fn a_truncated_or_extended_binary_snapshot_is_refused() {
        let bytes = binary(&every_field());
        let header = BINARY_MARKER.len() + 1;
        // Every cut: inside the marker, right after it, and anywhere in the body.
        for cut in 1..bytes.len() {
            let error = decode_snapshot(&bytes[..cut]).unwrap_err();
            let expected = if cut < header {
                matches!(error, SnapshotDecodeError::NoMarker)
            } else {
                matches!(error, SnapshotDecodeError::Binary(_))
            };
            assert!(expected, "cut at {cut}: {error}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"\x01\x02");
        let error = decode_snapshot(&longer).unwrap_err();
        assert!(
            matches!(error, SnapshotDecodeError::TrailingBytes(2)),
            "{error}"
        );
        assert!(
            error.to_string().contains("2 bytes after its end"),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_layout_version_is_refused_and_says_what_to_do() {
        let mut bytes = binary(&every_field());
        bytes[BINARY_MARKER.len()] = BINARY_VERSION + 1;
        let error = decode_snapshot(&bytes).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, SnapshotDecodeError::UnknownVersion { found } if found == BINARY_VERSION + 1)
        );
        assert!(message.contains("newer control plane"), "{message}");
        assert!(
            message.contains("upgrade the data planes first"),
            "{message}"
        );
        bytes[BINARY_MARKER.len()] = 0;
        let message = decode_snapshot(&bytes).unwrap_err().to_string();
        assert!(message.contains("layout version 0"), "{message}");
        assert!(!message.contains("newer"), "{message}");
    }

    #[test]
    fn garbage_is_refused_with_a_message_that_names_the_encoding() {
        for (bytes, says) in [
            (&b""[..], "invalid JSON snapshot"),
            (b"not a snapshot", "invalid JSON snapshot"),
            (b"{\"tenant_id\":", "invalid JSON snapshot"),
            (b"\0AIRLOCK", "neither JSON nor a binary snapshot"),
            (b"\0\xff\xfe", "neither JSON nor a binary snapshot"),
        ] {
            let message = decode_snapshot(bytes).unwrap_err().to_string();
            assert!(message.contains(says), "{bytes:?}: {message}");
        }
        // Flipped bytes in the body: refused, or (when they land inside a string or a number)
        // a different snapshot, never a panic.
        let original = binary(&every_field());
        for position in (BINARY_MARKER.len() + 1..original.len()).step_by(7) {
            let mut flipped = original.clone();
            flipped[position] ^= 0xff;
            let _ = decode_snapshot(&flipped);
        }
    }

    #[test]
    fn values_are_validated_in_the_binary_encoding_too() {
        // A secret entry whose host pattern is not one, written as the binary layout would
        // write it: same fields, the pattern as a plain string.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct UncheckedEntry {
            sealed: SealedSecret,
            allowed_hosts: Vec<String>,
        }
        let bytes = postcard::to_allocvec(&UncheckedEntry {
            sealed: sealed(1),
            allowed_hosts: vec!["*".into()],
        })
        .unwrap();
        assert!(postcard::from_bytes::<SecretEntry>(&bytes).is_err());
        // Inside a snapshot, the log line says what kind of value it was.
        let mut snapshot = binary(&empty());
        snapshot.truncate(snapshot.len() - 3); // after the (empty) secrets' map length: 3 empties
        assert_eq!(snapshot.pop(), Some(0), "the api_keys length");
        let secrets_length = snapshot.len() - 1;
        assert_eq!(snapshot[secrets_length], 0);
        snapshot[secrets_length] = 1;
        snapshot.extend(postcard::to_allocvec("NAME").unwrap());
        snapshot.extend(&bytes);
        snapshot.extend([0, 0, 0, 0]);
        let error = decode_snapshot(&snapshot).unwrap_err();
        assert!(error.to_string().contains("a host pattern"), "{error}");
        let checked = postcard::to_allocvec(&UncheckedEntry {
            sealed: sealed(1),
            allowed_hosts: vec!["api.example.com".into()],
        })
        .unwrap();
        assert_eq!(
            postcard::from_bytes::<SecretEntry>(&checked)
                .unwrap()
                .allowed_hosts,
            hosts(&["api.example.com"])
        );
    }

    #[test]
    fn encodings_have_names() {
        for encoding in SnapshotEncoding::ALL {
            assert_eq!(encoding.name().parse::<SnapshotEncoding>(), Ok(encoding));
            assert_eq!(encoding.to_string(), encoding.name());
        }
        assert_eq!(SnapshotEncoding::default(), SnapshotEncoding::Binary);
        let error = "yaml".parse::<SnapshotEncoding>().unwrap_err();
        assert!(error.to_string().contains("json or binary"), "{error}");
    }
}
