//! Function patterns: what an API key's policy lists, and how a pattern matches a function.
//!
//! A pattern is an exact function name (`get_user`), `*` (every function of the tenant), or
//! a glob over the function-name alphabet: ASCII letters, digits, `-` and `_`, plus the
//! wildcards `*` (any run of characters, also none) and `?` (exactly one character), e.g.
//! `billing_*`, `crm-?-read`. Function names cannot contain `.`, `/`, `,`, quotes or spaces,
//! so neither can a pattern; nothing else (regex syntax, classes, braces, escapes) exists.
//!
//! Matching is anchored at both ends: `fn_read` matches only `fn_read`, never `x_fn_read_all`,
//! and `billing_*` matches `billing_` and `billing_refund` but not `x_billing_refund`. The
//! control plane validates every pattern with [`check_pattern`] when a key is saved; the data
//! plane checks again when it compiles a snapshot and refuses (fails closed for) a key with a
//! pattern that does not pass, so a bad pattern never reaches the policy engine.

/// The pattern that grants every function of the tenant.
pub const ALL_FUNCTIONS: &str = "*";
/// Longest pattern (as long as the longest function name).
pub const MAX_PATTERN_LEN: usize = 64;

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_PATTERN_LEN} characters")]
    TooLong,
    #[error(
        "may only contain ASCII letters, digits, `-`, `_` and the wildcards `*` and `?` (found {0:?})"
    )]
    BadCharacter(char),
}

/// Check that `pattern` is a valid function pattern (see the module docs).
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong);
    }
    match pattern.chars().find(|&c| !is_pattern_char(c)) {
        Some(bad) => Err(PatternError::BadCharacter(bad)),
        None => Ok(()),
    }
}

fn is_pattern_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '?')
}

/// Whether `pattern` contains a wildcard (otherwise it is an exact function name).
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Whether `name` matches `pattern`, anchored at both ends. A pattern that fails
/// [`check_pattern`] matches nothing (fail closed). `name` is taken literally: a `*` in it is
/// just a character.
pub fn matches(pattern: &str, name: &str) -> bool {
    if check_pattern(pattern).is_err() {
        return false;
    }
    glob_match(pattern.as_bytes(), name.as_bytes())
}

/// Anchored glob match with `*` and `?`; linear backtracking over the last `*`, so the cost
/// is at most `pattern.len() * name.len()` steps (both are short).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Position of the last `*` seen and of the name when it was seen.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry.
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_only_themselves() {
        assert!(matches("fn_read", "fn_read"));
        assert!(!matches("fn_read", "x_fn_read_all"));
        assert!(!matches("fn_read", "fn_read_all"));
        assert!(!matches("fn_read", "x_fn_read"));
        assert!(!matches("fn_read", "fn_rea"));
        assert!(!matches("fn_read", ""));
    }

    #[test]
    fn star_and_globs_are_anchored() {
        assert!(matches("*", "anything"));
        assert!(matches("*", ""));
        assert!(matches("billing_*", "billing_refund"));
        assert!(matches("billing_*", "billing_"));
        assert!(!matches("billing_*", "x_billing_refund"));
        assert!(!matches("billing_*", "billing"));
        assert!(matches("*_read", "user_read"));
        assert!(!matches("*_read", "user_read_all"));
        assert!(matches("crm-*-read", "crm-contacts-read"));
        assert!(matches("crm-*-read", "crm--read"));
        assert!(!matches("crm-*-read", "crm-contacts-write"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(matches("a*b*c", "abbc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("get_?", "get_1"));
        assert!(!matches("get_?", "get_12"));
        assert!(!matches("get_?", "get_"));
    }

    #[test]
    fn names_are_literal_and_bad_patterns_match_nothing() {
        // A `*` in the invoked name is not a wildcard.
        assert!(!matches("a", "*"));
        assert!(matches("*", "a*b"));
        for bad in [
            "", ".*", "crm.*", "a,b", "a\"", "a'", "(a|b)", "[ab]", "a b", "a/b", "{a,b}", "\\w",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?} must be refused");
            assert!(!matches(bad, "crm.x"), "{bad:?} must match nothing");
            assert!(!matches(bad, "a"), "{bad:?} must match nothing");
        }
        assert_eq!(
            check_pattern(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(PatternError::TooLong)
        );
        assert_eq!(check_pattern("crm.*"), Err(PatternError::BadCharacter('.')));
        assert!(check_pattern("billing_*").is_ok());
        assert!(check_pattern("Get-User_2?").is_ok());
        assert!(is_wildcard("a*") && is_wildcard("a?") && !is_wildcard("a"));
    }

    #[test]
    fn pathological_patterns_stay_cheap() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let name = "a".repeat(64);
        let started = std::time::Instant::now();
        assert!(!matches(pattern, &name));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }
}
