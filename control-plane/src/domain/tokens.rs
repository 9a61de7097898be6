//! The bearer credentials the control plane issues (admin tokens, provisioning links,
//! console sessions): random values of which only a hash is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// 32 random bytes, URL-safe base64 (43 characters). Callers add their marker (`atk_`...).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of `token`. A fast hash is right for high-entropy random tokens.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Hex SHA-256 of `parts`, each followed by a NUL (no part contains one), so that
/// `("ab", "c")` and `("a", "bc")` differ: for values derived under a purpose label.
pub fn sha256_hex_parts(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_separate_their_parts() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(sha256_hex(&a).len(), 64);
        assert_ne!(
            sha256_hex_parts(&["ab", "c"]),
            sha256_hex_parts(&["a", "bc"])
        );
    }
}
