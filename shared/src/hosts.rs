//! Host binding: the hosts a secret may be sent to.
//!
//! A pattern is either an exact host (`api.stripe.com`, `127.0.0.1`, `::1`) or a wildcard
//! for exactly one more label (`*.example.com` matches `api.example.com`, but neither
//! `example.com` nor `a.b.example.com`, as in TLS certificates). Matching ignores case and
//! port. There is no pattern that matches every host: a secret is bound to hosts someone
//! named.

use serde::{Deserialize, Serialize};

/// Longest accepted host name (RFC 1035).
const MAX_HOST_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("host pattern is empty")]
    Empty,
    #[error("host pattern `{0}` is not a host name, an IP address or `*.` followed by a domain")]
    Invalid(String),
}

/// One allowed host, validated and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern(String);

impl HostPattern {
    /// Parse and normalise a pattern.
    pub fn parse(text: &str) -> Result<Self, HostPatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(HostPatternError::Empty);
        }
        let lower = text.to_ascii_lowercase();
        let invalid = || HostPatternError::Invalid(text.to_string());
        let domain = lower.strip_prefix("*.").unwrap_or(&lower);
        let is_ip = domain.parse::<std::net::IpAddr>().is_ok();
        if is_ip && domain.len() != lower.len() {
            return Err(invalid()); // `*.10.0.0.1` makes no sense
        }
        if !is_ip && !is_domain(domain) {
            return Err(invalid());
        }
        if !is_ip && domain.len() != lower.len() && !domain.contains('.') {
            return Err(invalid()); // `*.com`: a whole top-level domain is not a binding
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a request to `host` (no port, no brackets) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match self.0.strip_prefix("*.") {
            Some(domain) => host
                .len()
                .checked_sub(domain.len() + 1)
                .filter(|&label_len| label_len > 0)
                .is_some_and(|label_len| {
                    host.as_bytes()[label_len] == b'.'
                        && host[label_len + 1..].eq_ignore_ascii_case(domain)
                        && !host[..label_len].contains('.')
                }),
            None => host.eq_ignore_ascii_case(&self.0),
        }
    }
}

impl TryFrom<String> for HostPattern {
    type Error = HostPatternError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HostPattern> for String {
    fn from(value: HostPattern) -> Self {
        value.0
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `host` matches any of `patterns`.
pub fn is_allowed(patterns: &[HostPattern], host: &str) -> bool {
    patterns.iter().any(|p| p.matches(host))
}

fn is_domain(s: &str) -> bool {
    s.len() <= MAX_HOST_LEN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_hosts_match_ignoring_case() {
        assert!(p("API.Example.com").matches("api.example.com"));
        assert!(p("api.example.com").matches("API.EXAMPLE.COM"));
        assert!(p("api.example.com").matches("api.example.com."));
        assert!(!p("api.example.com").matches("example.com"));
        assert!(!p("api.example.com").matches("api.example.com.evil.com"));
        assert!(!p("api.example.com").matches("evilapi.example.com"));
        assert!(p("127.0.0.1").matches("127.0.0.1"));
        assert!(p("::1").matches("::1"));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let w = p("*.example.com");
        assert!(w.matches("api.example.com"));
        assert!(w.matches("API.example.COM"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches(".example.com"));
        assert!(!w.matches("api.example.com.evil.com"));
        assert!(!w.matches("apiexample.com"));
        assert!(!w.matches("evil-example.com"));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "",
            " ",
            "*",
            "*.",
            "*.com",
            "a*.example.com",
            "*.*.example.com",
            "ex ample.com",
            "http://example.com",
            "example.com/path",
            "example.com:443",
            "-a.com",
            "a..com",
            "*.10.0.0.1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: HostPattern = serde_json::from_str("\"*.Example.com\"").unwrap();
        assert_eq!(ok.as_str(), "*.example.com");
        assert!(serde_json::from_str::<HostPattern>("\"*\"").is_err());
    }
}
