//! Bearer JWT access tokens for API callers, validated against the issuer's JWKS.
//!
//! [`JwtValidator`] checks a token's signature with a key from the issuer's JSON Web Key Set,
//! then its `iss`, `aud`, `exp`, `nbf` and `iat` claims. Only asymmetric algorithms are
//! accepted, and only with a key of the matching type (and the JWK's own `alg`, when it
//! declares one): `alg: none`, and HMAC tokens "signed" with an issuer's public key (key
//! confusion), are rejected before any signature check.
//!
//! Keys live in memory, so validating a token whose key is known does no I/O. A token naming an
//! unknown `kid` makes the validator fetch the JWKS again (the issuer may have rotated its
//! keys), at most once per [`JwtValidatorConfig::min_jwks_refresh_interval`], and callers that
//! miss at the same moment share that one fetch: tokens with made-up key ids cannot become a
//! flood of requests to the issuer.
//!
//! No error and no log line carries the token's text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

/// Default for [`JwtValidatorConfig::leeway`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Default for [`JwtValidatorConfig::min_jwks_refresh_interval`].
pub const DEFAULT_MIN_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Every algorithm we accept. All are asymmetric: with HMAC, anyone who can read the issuer's
/// (public) key set could mint tokens.
const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Claims a token must carry. `aud` may be a string or an array.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "iss", "sub", "aud"];

/// Bound on one discovery or JWKS request: a refetch holds the refresh lock, and every caller
/// that missed waits on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Real discovery documents and key sets are a few KiB; the cap keeps a misbehaving issuer
/// from filling memory.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Access tokens are well under this; refusing longer ones early bounds the work an
/// unauthenticated caller can cause.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where a [`JwtValidator`] gets its keys, and what it requires of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtValidatorConfig {
    /// The issuer identifier. A token's `iss` must equal it exactly.
    pub issuer: String,
    /// This API's audience. A token's `aud` (a string or an array) must contain it.
    pub audience: String,
    /// The issuer's JWKS URL. `None`: read `jwks_uri` from OpenID Connect discovery at
    /// `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// Clock skew allowed when checking `exp`, `nbf` and `iat` (whole seconds; a fraction is
    /// ignored).
    pub leeway: Duration,
    /// Least time between two fetches of the JWKS; an unknown `kid` within it is rejected
    /// without asking the issuer.
    pub min_jwks_refresh_interval: Duration,
}

impl JwtValidatorConfig {
    /// Tokens from `issuer` for `audience`, keys found by discovery, default leeway and
    /// refresh interval.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_uri: None,
            leeway: DEFAULT_LEEWAY,
            min_jwks_refresh_interval: DEFAULT_MIN_JWKS_REFRESH_INTERVAL,
        }
    }
}

/// What a valid access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The `iss` claim (always the configured issuer).
    pub issuer: String,
    /// The `sub` claim: the caller's id at the issuer.
    pub subject: String,
    /// The `email` claim, when the issuer includes one.
    pub email: Option<String>,
    /// The `email_verified` claim is `true` (absent: `false`).
    pub email_verified: bool,
    /// The `exp` claim.
    pub expires_at: DateTime<Utc>,
    /// The `scope` claim split on spaces (an array of strings is accepted too); empty without
    /// one.
    pub scopes: Vec<String>,
}

/// Why a token was refused, or why the issuer's keys could not be loaded.
///
/// Messages never contain the token. Every variant but [`JwtError::Jwks`] and
/// [`JwtError::InvalidConfig`] is the caller's fault (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a part that is not the JSON it should be.
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    /// `alg` is `none`, HMAC, unknown, or not one the token's key may be used with.
    #[error("the access token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// No key in the issuer's key set fits the token's `kid` (checked again after a refetch,
    /// unless a refetch was made too recently).
    #[error("the access token's signing key is not in the issuer's key set")]
    UnknownKey,
    /// The signature does not verify with the issuer's key.
    #[error("the access token's signature is invalid")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("the access token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("the access token is meant for another audience")]
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    #[error("the access token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// A required claim is absent.
    #[error("the access token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// An OpenID Connect ID token (it carries `nonce` or `at_hash`): it proves a sign-in to
    /// its client, it does not authorize API calls. Refused even when its audience matches.
    #[error("an ID token is not an access token")]
    IdToken,
    /// The discovery document or the JWKS could not be fetched or parsed, or holds no usable
    /// key. Detail for operators; it names URLs, never tokens.
    #[error("cannot load the issuer's signing keys: {0}")]
    Jwks(String),
    /// The [`JwtValidatorConfig`] cannot work.
    #[error("invalid JWT validator configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Validates bearer JWT access tokens from one issuer for one audience.
///
/// Cheap to clone: clones share the keys and the refetch rate limit.
#[derive(Clone)]
pub struct JwtValidator {
    inner: Arc<Inner>,
}

struct Inner {
    jwks_uri: String,
    leeway_secs: i64,
    min_refresh_interval: Duration,
    http: reqwest::Client,
    /// One `Validation` per accepted algorithm, built once so validation allocates no sets.
    validations: Vec<(Algorithm, Validation)>,
    /// Swapped whole on a refetch; readers never wait for it.
    keys: ArcSwap<KeySet>,
    /// When the JWKS was last fetched (or a fetch was tried). Held during a refetch, so that
    /// callers who missed at the same moment wait for it instead of fetching again.
    last_fetch: Mutex<Instant>,
}

/// The usable keys of one fetched JWKS.
struct KeySet {
    /// Bumped on each refetch: a caller that waited for the refresh lock sees whether someone
    /// else refetched meanwhile.
    generation: u64,
    keys: Vec<VerificationKey>,
}

/// One signing key from the JWKS, with what it may verify.
struct VerificationKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it declares one: then only tokens with that `alg` are checked with it.
    declared_alg: Option<Algorithm>,
    kind: KeyKind,
    decoding_key: DecodingKey,
}

/// The key types we verify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

/// The part of the JOSE header read before choosing a key. Parsed here rather than by
/// `jsonwebtoken`, which cannot represent `alg: none` and would report it as malformed.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The claims we read. Required ones are optional here so that their absence is reported as
/// [`JwtError::MissingClaim`] by the validation that follows, not as a parse failure.
#[derive(Deserialize)]
struct AccessTokenClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    email: Option<String>,
    /// A boolean; some issuers send the string `"true"`.
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    /// Only in ID tokens (OpenID Connect Core 2 and 3.1.3.6).
    #[serde(default)]
    nonce: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    at_hash: Option<serde::de::IgnoredAny>,
}

/// `scope` is a space-separated string (RFC 8693, RFC 9068); some issuers send an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Spaced(String),
    List(Vec<String>),
}

impl JwtValidator {
    /// Load the issuer's keys: discovery first when `config.jwks_uri` is `None`, then the JWKS.
    /// Fails when either cannot be fetched, or the JWKS has no usable signing key.
    ///
    /// `http` is used for every fetch; each request is also bounded by a 10 s timeout.
    pub async fn new(config: JwtValidatorConfig, http: reqwest::Client) -> Result<Self, JwtError> {
        if config.issuer.is_empty() {
            return Err(JwtError::InvalidConfig("the issuer is empty"));
        }
        if config.audience.is_empty() {
            return Err(JwtError::InvalidConfig("the audience is empty"));
        }
        let leeway_secs = i64::try_from(config.leeway.as_secs())
            .map_err(|_| JwtError::InvalidConfig("the leeway is too large"))?;
        ensure_crypto_provider();

        let jwks_uri = match config.jwks_uri.clone() {
            Some(uri) => uri,
            None => discover_jwks_uri(&http, &config.issuer).await?,
        };
        let keys = fetch_key_set(&http, &jwks_uri).await?;
        tracing::info!(
            issuer = %config.issuer,
            %jwks_uri,
            keys = keys.len(),
            "loaded the JWT issuer's signing keys"
        );
        let validations = ACCEPTED_ALGORITHMS
            .iter()
            .map(|&alg| (alg, validation_for(alg, &config)))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                jwks_uri,
                leeway_secs,
                min_refresh_interval: config.min_jwks_refresh_interval,
                http,
                validations,
                keys: ArcSwap::from_pointee(KeySet {
                    generation: 0,
                    keys,
                }),
                // The startup fetch counts: a key missing from a set fetched a moment ago is
                // not worth asking for again before the interval is up.
                last_fetch: Mutex::new(Instant::now()),
            }),
        })
    }

    /// Check `token` (the text after `Bearer `) and return what it says about its bearer.
    ///
    /// Does no I/O unless the token names a key this validator does not know; see the module
    /// documentation for the refetch rule.
    pub async fn validate(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        let header = TokenHeader::parse(token)?;
        let alg = accepted_algorithm(&header.alg)?;
        let kid = header.kid.as_deref();

        let seen_generation = {
            let keys = self.inner.keys.load();
            match keys.select(kid, alg)? {
                Some(key) => return self.inner.verify(token, alg, key),
                None => keys.generation,
            }
        };
        let keys = self.inner.refetch_after_miss(seen_generation).await?;
        match keys.select(kid, alg)? {
            Some(key) => self.inner.verify(token, alg, key),
            None => Err(JwtError::UnknownKey),
        }
    }
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("jwks_uri", &self.inner.jwks_uri)
            .field("keys", &self.inner.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn validation(&self, alg: Algorithm) -> Result<&Validation, JwtError> {
        self.validations
            .iter()
            .find(|(candidate, _)| *candidate == alg)
            .map(|(_, validation)| validation)
            .ok_or(JwtError::UnsupportedAlgorithm)
    }

    /// Signature and claims, once a key that fits the token's `alg` is chosen.
    fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        key: &VerificationKey,
    ) -> Result<VerifiedToken, JwtError> {
        let claims = jsonwebtoken::decode::<AccessTokenClaims>(
            token,
            &key.decoding_key,
            self.validation(alg)?,
        )
        .map_err(decode_error)?
        .claims;

        // `jsonwebtoken` does not check `iat`; a token issued in the future is as suspect as
        // one whose `nbf` is.
        if let Some(iat) = claims.iat {
            let latest = Utc::now().timestamp().saturating_add(self.leeway_secs);
            if iat > latest as f64 {
                return Err(JwtError::NotYetValid);
            }
        }
        // The console's own ID tokens have our audience too (the client id, by default): they
        // must not double as bearer tokens.
        if claims.nonce.is_some() || claims.at_hash.is_some() {
            return Err(JwtError::IdToken);
        }
        // Required and checked by `decode`; matched again rather than unwrapped.
        let issuer = claims.iss.ok_or(JwtError::MissingClaim("iss"))?;
        let subject = claims.sub.ok_or(JwtError::MissingClaim("sub"))?;
        let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))?;
        let expires_at =
            DateTime::from_timestamp(exp.floor() as i64, 0).ok_or(JwtError::Malformed)?;
        let scopes = match claims.scope {
            Some(ScopeClaim::Spaced(scope)) => scope.split_whitespace().map(String::from).collect(),
            Some(ScopeClaim::List(scopes)) => scopes,
            None => Vec::new(),
        };
        Ok(VerifiedToken {
            issuer,
            subject,
            email: claims.email,
            email_verified: matches!(&claims.email_verified, Some(serde_json::Value::Bool(true)))
                || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s == "true"),
            expires_at,
            scopes,
        })
    }

    /// After a key miss against generation `seen_generation`: the newer key set if another
    /// caller refetched meanwhile, else a fresh fetch if the rate limit allows one.
    async fn refetch_after_miss(&self, seen_generation: u64) -> Result<Arc<KeySet>, JwtError> {
        let mut last_fetch = self.last_fetch.lock().await;
        let current = self.keys.load_full();
        if current.generation != seen_generation {
            return Ok(current);
        }
        if last_fetch.elapsed() < self.min_refresh_interval {
            tracing::debug!("JWT names an unknown key; JWKS refetch skipped (rate limit)");
            return Err(JwtError::UnknownKey);
        }
        // Set before fetching: a failing issuer is not asked again before the interval is up.
        *last_fetch = Instant::now();
        match fetch_key_set(&self.http, &self.jwks_uri).await {
            Ok(keys) => {
                let next = Arc::new(KeySet {
                    generation: current.generation + 1,
                    keys,
                });
                self.keys.store(Arc::clone(&next));
                tracing::info!(
                    jwks_uri = %self.jwks_uri,
                    keys = next.keys.len(),
                    "refetched the JWT issuer's signing keys after an unknown key id"
                );
                Ok(next)
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS refetch failed; keeping the known keys");
                Err(error)
            }
        }
    }
}

impl KeySet {
    /// The key to check a token with. `Ok(None)`: no key here for it (a refetch may find one);
    /// an error: the token names a key that must not be used with its `alg`.
    fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<&VerificationKey>, JwtError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|key| key.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Ok(None);
                }
                // The key-confusion defence: a known key, but not one for this `alg`.
                named
                    .find(|key| key.accepts(alg))
                    .map(Some)
                    .ok_or(JwtError::UnsupportedAlgorithm)
            }
            // Without a `kid`, only an unambiguous key will do.
            None => {
                let mut fitting = self.keys.iter().filter(|key| key.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(Some(key)),
                    _ => Ok(None),
                }
            }
        }
    }
}

impl VerificationKey {
    /// `None` for anything but a public signing key of a type we verify with: symmetric keys,
    /// encryption keys, other curves, and keys whose declared `alg` does not fit their type.
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            return None;
        }
        if let Some(operations) = &jwk.common.key_operations {
            if !operations.contains(&KeyOperations::Verify) {
                return None;
            }
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(params) => match params.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(params) => match params.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => return None,
            },
            _ => return None,
        };
        let declared_alg = match jwk.common.key_algorithm {
            None => None,
            Some(declared) => match Algorithm::try_from(declared) {
                Ok(alg) if kind.fits(alg) => Some(alg),
                _ => return None,
            },
        };
        let decoding_key = DecodingKey::from_jwk(jwk).ok()?;
        Some(Self {
            kid: jwk.common.key_id.clone(),
            declared_alg,
            kind,
            decoding_key,
        })
    }

    fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.declared_alg.is_none_or(|declared| declared == alg)
    }
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::EcP384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

impl TokenHeader {
    fn parse(token: &str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)
    }
}

/// The header's `alg`, if it is one we accept at all.
fn accepted_algorithm(name: &str) -> Result<Algorithm, JwtError> {
    name.parse::<Algorithm>()
        .ok()
        .filter(|alg| ACCEPTED_ALGORITHMS.contains(alg))
        .ok_or(JwtError::UnsupportedAlgorithm)
}

fn validation_for(alg: Algorithm, config: &JwtValidatorConfig) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&[config.audience.as_str()]);
    validation.set_required_spec_claims(&REQUIRED_CLAIMS);
    validation
}

fn decode_error(error: jsonwebtoken::errors::Error) -> JwtError {
    match error.into_kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => REQUIRED_CLAIMS
            .into_iter()
            .find(|required| *required == claim)
            .map_or(JwtError::Malformed, JwtError::MissingClaim),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => JwtError::UnsupportedAlgorithm,
        // The JWK parsed but is not a valid key of its type.
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => {
            JwtError::Jwks("the issuer's key for this token is not a valid key".to_string())
        }
        _ => JwtError::Malformed,
    }
}

/// `jsonwebtoken` picks its crypto backend from crate features, and finds none when another
/// crate in the build enables a second backend; then install ours rather than panic on the
/// first token.
fn ensure_crypto_provider() {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    if CryptoProvider::try_get_default().is_none() {
        // An error means another thread installed one meanwhile, which serves as well.
        let _ = rust_crypto::DEFAULT_PROVIDER.install_default();
    }
}

/// `jwks_uri` from the issuer's OpenID Connect discovery document.
async fn discover_jwks_uri(http: &reqwest::Client, issuer: &str) -> Result<String, JwtError> {
    #[derive(Deserialize)]
    struct DiscoveryDocument {
        issuer: String,
        jwks_uri: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let document: DiscoveryDocument = fetch_json(http, &url, "discovery document").await?;
    // OpenID Connect Discovery 1.0 §4.3: a document naming another issuer must not be used,
    // or we would trust another provider's keys.
    if document.issuer != issuer {
        return Err(JwtError::Jwks(format!(
            "the discovery document at {url} is for issuer {:?}, not {issuer:?}",
            document.issuer
        )));
    }
    Ok(document.jwks_uri)
}

/// The usable signing keys at `jwks_uri`; an error if there are none.
async fn fetch_key_set(
    http: &reqwest::Client,
    jwks_uri: &str,
) -> Result<Vec<VerificationKey>, JwtError> {
    #[derive(Deserialize)]
    struct JwksDocument {
        keys: Vec<serde_json::Value>,
    }
    let document: JwksDocument = fetch_json(http, jwks_uri, "JWKS").await?;
    let listed = document.keys.len();
    // One entry at a time: a key type we cannot parse must not hide the keys we can use.
    let keys: Vec<VerificationKey> = document
        .keys
        .into_iter()
        .filter_map(|entry| serde_json::from_value::<Jwk>(entry).ok())
        .filter_map(|jwk| VerificationKey::from_jwk(&jwk))
        .collect();
    if keys.is_empty() {
        return Err(JwtError::Jwks(format!(
            "the JWKS at {jwks_uri} lists {listed} keys, none an RSA, P-256, P-384 or Ed25519 \
             signing key"
        )));
    }
    if keys.len() < listed {
        tracing::debug!(
            %jwks_uri,
            ignored = listed - keys.len(),
            "ignored JWKS entries that are not signing keys we verify with"
        );
    }
    Ok(keys)
}

/// GET `url` and parse its JSON body, bounded in time and size. `what` names the document in
/// errors.
async fn fetch_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<T, JwtError> {
    let failed = |detail: String| JwtError::Jwks(format!("{what} at {url}: {detail}"));
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|error| failed(error_chain(&error)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("HTTP status {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| failed(error_chain(&error)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(failed(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|error| failed(format!("not the expected JSON: {error}")))
}

/// `error` and its sources on one line: reqwest's own message rarely says what failed.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::LazyLock;

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{EncodingKey, Header};
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
    use rsa::pkcs8::EncodePublicKey as _;
    use serde_json::{json, Value};

    use super::*;

    const AUDIENCE: &str = "airlock-api";

    /// An RSA key pair made for this test run; nothing private is stored in the repository.
    struct TestKey {
        kid: &'static str,
        private: EncodingKey,
        jwk: Jwk,
        public_pkcs1_der: Vec<u8>,
        public_spki_der: Vec<u8>,
        public_pem: String,
    }

    impl TestKey {
        fn generate(kid: &'static str) -> Self {
            let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA keygen");
            let private_der = private.to_pkcs1_der().expect("PKCS#1 private key");
            let encoding = EncodingKey::from_rsa_der(private_der.as_bytes());
            let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("JWK");
            jwk.common.key_id = Some(kid.to_string());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);

            let public = private.to_public_key();
            let public_pkcs1_der = public.to_pkcs1_der().expect("PKCS#1").as_bytes().to_vec();
            let public_spki_der = public
                .to_public_key_der()
                .expect("SPKI")
                .as_bytes()
                .to_vec();
            let base64 = STANDARD.encode(&public_spki_der);
            let lines: Vec<&str> = base64
                .as_bytes()
                .chunks(64)
                .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
                .collect();
            let public_pem = format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            );
            Self {
                kid,
                private: encoding,
                jwk,
                public_pkcs1_der,
                public_spki_der,
                public_pem,
            }
        }

        fn sign(&self, claims: &Value) -> String {
            self.sign_as(Algorithm::RS256, Some(self.kid), claims)
        }

        fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = kid.map(String::from);
            jsonwebtoken::encode(&header, claims, &self.private).expect("sign")
        }
    }

    /// Key generation is slow in debug builds: two keys, shared by every test.
    static KEYS: LazyLock<[TestKey; 2]> =
        LazyLock::new(|| [TestKey::generate("key-a"), TestKey::generate("key-b")]);

    fn key_a() -> &'static TestKey {
        &KEYS[0]
    }

    fn key_b() -> &'static TestKey {
        &KEYS[1]
    }

    /// An issuer on 127.0.0.1 serving discovery and a JWKS that tests can rotate or break.
    #[derive(Clone)]
    struct FakeIssuer {
        issuer: String,
        jwks: Arc<std::sync::Mutex<Value>>,
        jwks_fetches: Arc<AtomicUsize>,
        discovery_fetches: Arc<AtomicUsize>,
        jwks_fails: Arc<AtomicBool>,
    }

    impl FakeIssuer {
        async fn start(keys: &[&TestKey]) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let issuer = format!("http://{}", listener.local_addr().expect("address"));
            let fake = Self {
                issuer,
                jwks: Arc::default(),
                jwks_fetches: Arc::default(),
                discovery_fetches: Arc::default(),
                jwks_fails: Arc::default(),
            };
            fake.serve_keys(keys);
            let app = Router::new()
                .route("/.well-known/openid-configuration", get(serve_discovery))
                .route("/jwks", get(serve_jwks))
                .with_state(fake.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            fake
        }

        fn serve_keys(&self, keys: &[&TestKey]) {
            let set = JwkSet {
                keys: keys.iter().map(|key| key.jwk.clone()).collect(),
            };
            *self.jwks.lock().expect("lock") = serde_json::to_value(set).expect("JWKS JSON");
        }

        fn jwks_fetches(&self) -> usize {
            self.jwks_fetches.load(Ordering::SeqCst)
        }

        fn jwks_uri(&self) -> String {
            format!("{}/jwks", self.issuer)
        }

        async fn validator(&self) -> JwtValidator {
            JwtValidator::new(
                JwtValidatorConfig::new(&self.issuer, AUDIENCE),
                reqwest::Client::new(),
            )
            .await
            .expect("validator")
        }

        /// Claims of a token that is valid now.
        fn claims(&self) -> Value {
            let now = Utc::now().timestamp();
            json!({
                "iss": self.issuer,
                "sub": "user-1",
                "aud": AUDIENCE,
                "exp": now + 600,
                "iat": now,
                "email": "ada@example.com",
                "scope": "config:read config:write",
            })
        }
    }

    async fn serve_discovery(State(fake): State<FakeIssuer>) -> Json<Value> {
        fake.discovery_fetches.fetch_add(1, Ordering::SeqCst);
        Json(json!({ "issuer": fake.issuer, "jwks_uri": fake.jwks_uri() }))
    }

    async fn serve_jwks(State(fake): State<FakeIssuer>) -> Result<Json<Value>, StatusCode> {
        fake.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        if fake.jwks_fails.load(Ordering::SeqCst) {
            return Err(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Ok(Json(fake.jwks.lock().expect("lock").clone()))
    }

    /// As if `min_jwks_refresh_interval` had passed since the last fetch, without sleeping.
    async fn let_refresh_interval_pass(validator: &JwtValidator) {
        let inner = &validator.inner;
        *inner.last_fetch.lock().await = Instant::now()
            .checked_sub(inner.min_refresh_interval)
            .expect("monotonic clock is past the interval");
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().expect("object").remove(name);
        claims
    }

    fn b64_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON"))
    }

    #[tokio::test]
    async fn accepts_a_valid_token_and_returns_its_claims() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        let token = key_a().sign(&fake.claims());
        let verified = validator.validate(&token).await.expect("valid token");

        assert_eq!(verified.issuer, fake.issuer);
        assert_eq!(verified.subject, "user-1");
        assert_eq!(verified.email.as_deref(), Some("ada@example.com"));
        assert_eq!(verified.scopes, ["config:read", "config:write"]);
        let exp = fake.claims()["exp"].as_i64().expect("exp");
        assert!((verified.expires_at.timestamp() - exp).abs() <= 1);
        // Keys came from discovery, once; a known key needs no further fetch.
        assert_eq!(fake.discovery_fetches.load(Ordering::SeqCst), 1);
        assert_eq!(fake.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn accepts_an_audience_array_that_contains_ours_and_a_scope_array() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        let claims = with(fake.claims(), "aud", json!(["other-api", AUDIENCE]));
        let claims = with(claims, "scope", json!(["config:read"]));
        let claims = without(claims, "email");
        let verified = validator
            .validate(&key_a().sign(&claims))
            .await
            .expect("valid token");
        assert_eq!(verified.scopes, ["config:read"]);
        assert_eq!(verified.email, None);
    }

    #[tokio::test]
    async fn explicit_jwks_uri_skips_discovery() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let config = JwtValidatorConfig {
            jwks_uri: Some(fake.jwks_uri()),
            ..JwtValidatorConfig::new(&fake.issuer, AUDIENCE)
        };
        let validator = JwtValidator::new(config, reqwest::Client::new())
            .await
            .expect("validator");

        validator
            .validate(&key_a().sign(&fake.claims()))
            .await
            .expect("valid token");
        assert_eq!(fake.discovery_fetches.load(Ordering::SeqCst), 0);
        assert_eq!(fake.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn accepts_a_token_without_kid_when_one_key_fits() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        let token = key_a().sign_as(Algorithm::RS256, None, &fake.claims());
        validator.validate(&token).await.expect("valid token");
        assert_eq!(fake.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn rejects_a_tampered_payload() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        let token = key_a().sign(&fake.claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64_json(&with(fake.claims(), "sub", json!("admin")));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);

        assert_eq!(
            validator.validate(&tampered).await,
            Err(JwtError::BadSignature)
        );
    }

    #[tokio::test]
    async fn rejects_an_expired_token_but_allows_the_leeway() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        let now = Utc::now().timestamp();

        let expired = with(fake.claims(), "exp", json!(now - 120));
        assert_eq!(
            validator.validate(&key_a().sign(&expired)).await,
            Err(JwtError::Expired)
        );
        let just_expired = with(fake.claims(), "exp", json!(now - 5));
        validator
            .validate(&key_a().sign(&just_expired))
            .await
            .expect("within the 30 s leeway");
    }

    #[tokio::test]
    async fn rejects_a_token_not_valid_yet() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        let now = Utc::now().timestamp();

        let not_before = with(fake.claims(), "nbf", json!(now + 120));
        assert_eq!(
            validator.validate(&key_a().sign(&not_before)).await,
            Err(JwtError::NotYetValid)
        );
        let issued_later = with(fake.claims(), "iat", json!(now + 120));
        assert_eq!(
            validator.validate(&key_a().sign(&issued_later)).await,
            Err(JwtError::NotYetValid)
        );
        let slight_skew = with(fake.claims(), "nbf", json!(now + 5));
        let slight_skew = with(slight_skew, "iat", json!(now + 5));
        validator
            .validate(&key_a().sign(&slight_skew))
            .await
            .expect("within the 30 s leeway");
    }

    #[tokio::test]
    async fn rejects_a_token_from_another_issuer() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        let claims = with(fake.claims(), "iss", json!("https://evil.example"));
        assert_eq!(
            validator.validate(&key_a().sign(&claims)).await,
            Err(JwtError::WrongIssuer)
        );
    }

    #[tokio::test]
    async fn rejects_a_token_for_another_audience() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        for aud in [
            json!("other-api"),
            json!(["other-api", "third-api"]),
            json!([]),
        ] {
            let claims = with(fake.claims(), "aud", aud);
            assert_eq!(
                validator.validate(&key_a().sign(&claims)).await,
                Err(JwtError::WrongAudience)
            );
        }
    }

    #[tokio::test]
    async fn rejects_an_id_token_for_our_audience() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        assert!(validator
            .validate(&key_a().sign(&fake.claims()))
            .await
            .is_ok());
        for (claim, value) in [("nonce", json!("n-1")), ("at_hash", json!("abc"))] {
            let claims = with(fake.claims(), claim, value);
            assert_eq!(
                validator.validate(&key_a().sign(&claims)).await,
                Err(JwtError::IdToken),
                "{claim}"
            );
        }
    }

    #[tokio::test]
    async fn rejects_a_token_missing_a_required_claim() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        for claim in REQUIRED_CLAIMS {
            let claims = without(fake.claims(), claim);
            assert_eq!(
                validator.validate(&key_a().sign(&claims)).await,
                Err(JwtError::MissingClaim(claim)),
                "without {claim}"
            );
        }
    }

    #[tokio::test]
    async fn rejects_malformed_tokens() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        let valid = key_a().sign(&fake.claims());
        let not_json = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json"));
        let too_long = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES));

        for token in [
            "",
            "not-a-jwt",
            "a.b",
            "a.b.c.d",
            "!!!.e30.c2ln",
            &not_json,
            &format!("{valid}.extra"),
            &too_long,
        ] {
            assert_eq!(
                validator.validate(token).await,
                Err(JwtError::Malformed),
                "{token:.20}"
            );
        }
    }

    #[tokio::test]
    async fn rejects_alg_none() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        let payload = b64_json(&fake.claims());

        for header in [
            json!({ "alg": "none", "typ": "JWT" }),
            json!({ "alg": "none", "typ": "JWT", "kid": key_a().kid }),
            json!({ "alg": "None", "kid": key_a().kid }),
            json!({ "alg": "NONE" }),
        ] {
            let token = format!("{}.{payload}.", b64_json(&header));
            assert_eq!(
                validator.validate(&token).await,
                Err(JwtError::UnsupportedAlgorithm),
                "{header}"
            );
        }
        assert_eq!(fake.jwks_fetches(), 1, "no refetch for a refused alg");
    }

    #[tokio::test]
    async fn rejects_hs256_signed_with_the_rsa_public_key() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        let key = key_a();

        for secret in [
            key.public_pem.as_bytes(),
            &key.public_pkcs1_der[..],
            &key.public_spki_der[..],
        ] {
            let hmac = EncodingKey::from_secret(secret).expect("HMAC key");
            for kid in [Some(key.kid), None] {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = kid.map(String::from);
                let token = jsonwebtoken::encode(&header, &fake.claims(), &hmac).expect("sign");
                assert_eq!(
                    validator.validate(&token).await,
                    Err(JwtError::UnsupportedAlgorithm)
                );
            }
        }
        assert_eq!(fake.jwks_fetches(), 1, "no refetch for a refused alg");
    }

    #[tokio::test]
    async fn rejects_an_alg_other_than_the_one_the_jwk_declares() {
        // key-a's JWK says `"alg": "RS256"`; the same RSA key signing PS256 must not pass.
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;

        let token = key_a().sign_as(Algorithm::PS256, Some(key_a().kid), &fake.claims());
        assert_eq!(
            validator.validate(&token).await,
            Err(JwtError::UnsupportedAlgorithm)
        );
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_and_accepts_the_rotated_key() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        assert_eq!(fake.jwks_fetches(), 1);
        fake.serve_keys(&[key_b()]);
        let rotated = key_b().sign(&fake.claims());

        // Right after the startup fetch the rate limit holds.
        assert_eq!(
            validator.validate(&rotated).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(fake.jwks_fetches(), 1);

        let_refresh_interval_pass(&validator).await;
        let verified = validator.validate(&rotated).await.expect("rotated key");
        assert_eq!(verified.subject, "user-1");
        assert_eq!(fake.jwks_fetches(), 2, "exactly one refetch");

        validator.validate(&rotated).await.expect("rotated key");
        assert_eq!(fake.jwks_fetches(), 2, "a known key needs no fetch");
        // The refetched set replaced the old one: key-a is gone.
        assert_eq!(
            validator.validate(&key_a().sign(&fake.claims())).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(fake.jwks_fetches(), 2);
    }

    #[tokio::test]
    async fn unknown_kid_within_the_refresh_interval_does_not_refetch() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        fake.serve_keys(&[key_a(), key_b()]);
        let_refresh_interval_pass(&validator).await;

        validator
            .validate(&key_b().sign(&fake.claims()))
            .await
            .expect("rotated key");
        assert_eq!(fake.jwks_fetches(), 2);

        let unknown = key_a().sign_as(Algorithm::RS256, Some("key-c"), &fake.claims());
        assert_eq!(
            validator.validate(&unknown).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(
            fake.jwks_fetches(),
            2,
            "no second refetch within the interval"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_unknown_kid_validations_share_one_refetch() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        fake.serve_keys(&[key_b()]);
        let_refresh_interval_pass(&validator).await;
        let token = Arc::new(key_b().sign(&fake.claims()));

        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let validator = validator.clone();
            let token = Arc::clone(&token);
            burst.spawn(async move { validator.validate(&token).await });
        }
        let results = burst.join_all().await;

        assert_eq!(results.len(), 50);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(fake.jwks_fetches(), 2, "one refetch for the whole burst");
    }

    #[tokio::test]
    async fn failed_refetch_keeps_the_known_keys() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        let validator = fake.validator().await;
        fake.jwks_fails.store(true, Ordering::SeqCst);
        let_refresh_interval_pass(&validator).await;

        let result = validator.validate(&key_b().sign(&fake.claims())).await;
        assert!(matches!(result, Err(JwtError::Jwks(_))), "{result:?}");
        assert_eq!(fake.jwks_fetches(), 2);
        validator
            .validate(&key_a().sign(&fake.claims()))
            .await
            .expect("known key still accepted");
        // The failed attempt counts for the rate limit.
        assert_eq!(
            validator.validate(&key_b().sign(&fake.claims())).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(fake.jwks_fetches(), 2);
    }

    #[tokio::test]
    async fn discovery_must_name_the_configured_issuer() {
        let fake = FakeIssuer::start(&[key_a()]).await;
        // Discovery is at the same URL, but the document names the issuer without the slash.
        let config = JwtValidatorConfig::new(format!("{}/", fake.issuer), AUDIENCE);

        let result = JwtValidator::new(config, reqwest::Client::new()).await;
        assert!(matches!(result, Err(JwtError::Jwks(_))), "{result:?}");
        assert_eq!(fake.jwks_fetches(), 0);
    }

    #[tokio::test]
    async fn startup_fails_without_usable_keys() {
        let fake = FakeIssuer::start(&[]).await;
        let result = JwtValidator::new(
            JwtValidatorConfig::new(&fake.issuer, AUDIENCE),
            reqwest::Client::new(),
        )
        .await;
        assert!(matches!(result, Err(JwtError::Jwks(_))), "{result:?}");
    }

    fn jwk(value: Value) -> Jwk {
        serde_json::from_value(value).expect("JWK JSON")
    }

    fn coordinate() -> String {
        URL_SAFE_NO_PAD.encode([7u8; 32])
    }

    #[test]
    fn each_key_type_verifies_only_its_own_algorithms() {
        let rsa = VerificationKey::from_jwk(&key_a().jwk).expect("RSA key");
        let mut undeclared = key_a().jwk.clone();
        undeclared.common.key_algorithm = None;
        let rsa_any = VerificationKey::from_jwk(&undeclared).expect("RSA key");
        let p256 = VerificationKey::from_jwk(&jwk(json!({
            "kty": "EC", "crv": "P-256", "x": coordinate(), "y": coordinate(),
        })))
        .expect("P-256 key");
        let ed25519 = VerificationKey::from_jwk(&jwk(json!({
            "kty": "OKP", "crv": "Ed25519", "x": coordinate(),
        })))
        .expect("Ed25519 key");

        for alg in ACCEPTED_ALGORITHMS {
            let name = format!("{alg:?}");
            assert_eq!(rsa.accepts(alg), alg == Algorithm::RS256, "{name}");
            assert_eq!(
                rsa_any.accepts(alg),
                name.starts_with("RS") || name.starts_with("PS"),
                "{name}"
            );
            assert_eq!(p256.accepts(alg), alg == Algorithm::ES256, "{name}");
            assert_eq!(ed25519.accepts(alg), alg == Algorithm::EdDSA, "{name}");
        }
        for name in ["none", "HS256", "HS384", "HS512", "ES512", "RS1"] {
            assert_eq!(
                accepted_algorithm(name),
                Err(JwtError::UnsupportedAlgorithm)
            );
        }
    }

    #[test]
    fn jwks_entries_that_are_not_signing_keys_are_ignored() {
        let rsa = serde_json::to_value(&key_a().jwk).expect("JWK JSON");
        for entry in [
            json!({ "kty": "oct", "k": coordinate(), "alg": "HS256" }),
            with(rsa.clone(), "use", json!("enc")),
            with(rsa.clone(), "alg", json!("RSA-OAEP")),
            with(rsa.clone(), "alg", json!("ES256")),
            with(rsa.clone(), "key_ops", json!(["encrypt"])),
            json!({ "kty": "EC", "crv": "P-521", "x": coordinate(), "y": coordinate() }),
            json!({ "kty": "EC", "crv": "P-256", "x": coordinate(), "y": coordinate(), "alg": "ES384" }),
        ] {
            assert!(
                VerificationKey::from_jwk(&jwk(entry.clone())).is_none(),
                "{entry}"
            );
        }
    }
}
