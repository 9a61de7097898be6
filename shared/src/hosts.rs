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

/// One allowed host, validated and lower-cased. Written as its text (without a copy: every
/// secret of a snapshot has its bindings), read back through [`HostPattern::try_from`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPattern(String);

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl HostPattern {
    /// Parse and normalise a pattern.
    pub fn parse(text: &str) -> Result<Self, HostPatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(HostPatternError::Empty);
        }
        Self::checked(text.to_ascii_lowercase())
            .map_err(|_| HostPatternError::Invalid(text.to_string()))
    }

    /// `lower` (trimmed, lower case) as a pattern, or `lower` back if it is not one.
    fn checked(lower: String) -> Result<Self, String> {
        let domain = lower.strip_prefix("*.").unwrap_or(&lower);
        // An IPv4 address starts with a digit, an IPv6 one holds a colon; most names do neither.
        let may_be_ip = domain.starts_with(|c: char| c.is_ascii_digit()) || domain.contains(':');
        let is_ip = may_be_ip && domain.parse::<std::net::IpAddr>().is_ok();
        let valid = if is_ip {
            domain.len() == lower.len() // `*.10.0.0.1` makes no sense
        } else {
            // `*.com`: a whole top-level domain is not a binding
            is_domain(domain) && (domain.len() == lower.len() || domain.contains('.'))
        };
        if valid {
            Ok(Self(lower))
        } else {
            Err(lower)
        }
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
        // Patterns in snapshots are already normalised: keep the string instead of a copy.
        let normalised = !value.is_empty()
            && value.trim().len() == value.len()
            && !value.bytes().any(|b| b.is_ascii_uppercase());
        if normalised {
            Self::checked(value).map_err(HostPatternError::Invalid)
        } else {
            Self::parse(&value)
        }
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

/// Labels of 1 to 63 letters, digits, `-` or `_`, not starting or ending with `-`, joined
/// by single dots; at most [`MAX_HOST_LEN`] in all. One pass over the bytes: every secret
/// binding of a snapshot is checked when it is parsed.
fn is_domain(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_HOST_LEN {
        return false;
    }
    s.as_bytes().split(|&b| b == b'.').all(|label| {
        matches!((label.first(), label.last()), (Some(&first), Some(&last)) if first != b'-' && last != b'-')
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
        assert!(p("2001:DB8::1").matches("2001:db8::1"));
        // Names may start with a digit without being addresses.
        assert!(p("1password.com").matches("1password.com"));
        assert!(p("*.1password.com").matches("my.1password.com"));
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
            "*.::1",
            "1.2.3.4.5:80",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
            // Deserializing (a snapshot) refuses the same, normalised or not.
            let json = serde_json::to_string(bad).unwrap();
            assert!(
                serde_json::from_str::<HostPattern>(&json).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn patterns_are_written_as_their_text() {
        let pattern = HostPattern::parse("*.Example.com").unwrap();
        assert_eq!(
            serde_json::to_string(&pattern).unwrap(),
            "\"*.example.com\""
        );
        let patterns = vec![pattern, HostPattern::parse("10.0.0.1").unwrap()];
        let json = serde_json::to_string(&patterns).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<HostPattern>>(&json).unwrap(),
            patterns
        );
    }

    #[test]
    fn serde_validates() {
        let ok: HostPattern = serde_json::from_str("\"*.Example.com\"").unwrap();
        assert_eq!(ok.as_str(), "*.example.com");
        let ok: HostPattern = serde_json::from_str("\" api.example.com \"").unwrap();
        assert_eq!(ok.as_str(), "api.example.com");
        let ok: HostPattern = serde_json::from_str("\"10.0.0.1\"").unwrap();
        assert_eq!(ok.as_str(), "10.0.0.1");
        assert!(serde_json::from_str::<HostPattern>("\"*\"").is_err());
        match serde_json::from_str::<HostPattern>("\"ex ample.com\"") {
            Err(error) => assert!(error.to_string().contains("ex ample.com"), "{error}"),
            Ok(pattern) => panic!("accepted {pattern}"),
        }
    }
}
