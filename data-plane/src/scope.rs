//! Function scope: which functions an API key may invoke, decided by casbin.
//!
//! A key's policy is its list of function patterns ([`airlock_shared::grants`]: exact names,
//! `*`, anchored globs). Each distinct pattern list of an environment becomes one [`KeyScope`],
//! shared by every key with that list, holding a casbin [`Enforcer`] with the model
//! [`MODEL`]: one policy line per pattern and the matcher `fnMatch(r.name, p.pat)`, where
//! `fnMatch` is [`airlock_shared::grants::matches`] (anchored; an invalid pattern matches
//! nothing). casbin's own `globMatch` is not used: it needs the `glob` feature, compiles a
//! glob on every call and panics on an invalid one; `regexMatch` is unanchored and
//! `keyMatch*` treat `.` and `/` specially.
//!
//! ## Cost
//!
//! A snapshot can hold 10 000 keys and 1 000 functions: 10 million decisions, far too many
//! to evaluate with casbin (microseconds each) every time an environment is applied. So
//! applying a snapshot only groups keys by pattern list (cheap), and each scope decides
//! lazily, off the I/O path: its enforcer is built the first time one of its keys is used,
//! and each decision about a function of the snapshot is evaluated once and cached in a table
//! indexed by the function's slot. After that the request path reads one atomic byte.
//!
//! Names not in the snapshot (asked about to tell `function_not_found` from `forbidden`)
//! have no slot to cache in, and any key holder can send as many of them as it likes, so
//! they are not given to casbin (about 0.4 µs per policy line): they are decided by matching
//! the patterns directly, `patterns.iter().any(|p| grants::matches(p, name))` (tens of
//! nanoseconds per pattern). That is the same decision casbin makes, not a second policy:
//! with [`MODEL`], casbin evaluates the matcher `fnMatch(r.name, p.pat)`, i.e.
//! `grants::matches(pattern, name)`, once per policy line, and the effect
//! `some(where (p.eft == allow))` allows when at least one line matches (every line is an
//! allow: none sets `eft`). The policy lines are exactly the (deduplicated) patterns, so
//! "some line matches" is "some pattern matches"; with no pattern, nothing matches and both
//! deny. Both paths run only once the scope is built, so an invalid pattern makes both deny.
//! The test `the_direct_match_decides_as_casbin_does` checks the two agree on a grid of
//! patterns and names.
//!
//! A pattern that does not pass [`airlock_shared::grants::check_pattern`] (the control plane
//! refuses those, so this means a damaged snapshot) makes the whole scope deny everything:
//! fail closed, and nothing unchecked reaches casbin.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use airlock_shared::grants;
use casbin::function_map::OperatorFunction;
use casbin::rhai::Dynamic;
use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};

/// The casbin model of a key's policy: a request is a function name, a policy line a pattern.
pub const MODEL: &str = r#"
[request_definition]
r = name

[policy_definition]
p = pat

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = fnMatch(r.name, p.pat)
"#;

const UNDECIDED: u8 = 0;
const DENIED: u8 = 1;
const ALLOWED: u8 = 2;

/// The scope shared by the keys of one environment with the same pattern list.
pub struct KeyScope {
    patterns: Vec<String>,
    /// Functions in the environment's snapshot (slots `0..functions`).
    functions: usize,
    /// Built on first use; `None` when the policy is unusable (deny everything).
    engine: OnceLock<Option<ScopeEngine>>,
}

struct ScopeEngine {
    enforcer: Enforcer,
    /// One decision per function slot, evaluated on first use.
    decisions: Box<[AtomicU8]>,
}

impl std::fmt::Debug for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyScope")
            .field("patterns", &self.patterns)
            .field("built", &self.engine.get().is_some())
            .finish()
    }
}

impl KeyScope {
    /// The scope of `patterns` in an environment whose snapshot holds `functions` functions.
    /// Nothing is evaluated yet.
    pub fn new(patterns: Vec<String>, functions: usize) -> Self {
        Self {
            patterns,
            functions,
            engine: OnceLock::new(),
        }
    }

    /// Whether the key may invoke `name`. `slot` is the function's slot when the snapshot
    /// holds a function of that name (its decision is cached), `None` otherwise.
    pub fn allows(&self, slot: Option<usize>, name: &str) -> bool {
        let Some(engine) = self.engine.get_or_init(|| self.build()) else {
            return false;
        };
        let Some(cached) = slot.and_then(|slot| engine.decisions.get(slot)) else {
            // Nothing to cache in: decided without casbin, with the same answer (module docs).
            return self.matches_directly(name);
        };
        match cached.load(Ordering::Acquire) {
            ALLOWED => true,
            DENIED => false,
            _ => {
                let allowed = engine.enforce(name);
                // Racing evaluations store the same answer.
                cached.store(if allowed { ALLOWED } else { DENIED }, Ordering::Release);
                allowed
            }
        }
    }

    /// What casbin decides for `name` with this scope's policy, computed without casbin
    /// (see the module docs). Only called once the scope is built, i.e. every pattern is valid.
    fn matches_directly(&self, name: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| grants::matches(pattern, name))
    }

    fn build(&self) -> Option<ScopeEngine> {
        if let Some(bad) = self
            .patterns
            .iter()
            .find(|p| grants::check_pattern(p).is_err())
        {
            tracing::error!(
                pattern = %bad.escape_debug(),
                "an API key policy holds an invalid function pattern; its keys may invoke nothing"
            );
            return None;
        }
        match futures::executor::block_on(build_enforcer(&self.patterns)) {
            Ok(enforcer) => Some(ScopeEngine {
                enforcer,
                decisions: (0..self.functions)
                    .map(|_| AtomicU8::new(UNDECIDED))
                    .collect(),
            }),
            Err(error) => {
                tracing::error!(%error, "cannot build the casbin policy of an API key; its keys may invoke nothing");
                None
            }
        }
    }
}

impl ScopeEngine {
    fn enforce(&self, name: &str) -> bool {
        match self.enforcer.enforce(vec![name.to_string()]) {
            Ok(allowed) => allowed,
            Err(error) => {
                tracing::error!(%error, "casbin could not decide; denying");
                false
            }
        }
    }
}

/// `fnMatch(name, pattern)` for the casbin matcher.
fn fn_match(name: Dynamic, pattern: Dynamic) -> Dynamic {
    let (Some(name), Some(pattern)) = (
        name.read_lock::<casbin::rhai::ImmutableString>(),
        pattern.read_lock::<casbin::rhai::ImmutableString>(),
    ) else {
        return false.into();
    };
    grants::matches(pattern.as_str(), name.as_str()).into()
}

/// [`MODEL`], parsed once per process (each enforcer gets a copy).
async fn parsed_model() -> casbin::Result<DefaultModel> {
    static PARSED: OnceLock<DefaultModel> = OnceLock::new();
    if let Some(model) = PARSED.get() {
        return Ok(model.clone());
    }
    let model = DefaultModel::from_str(MODEL).await?;
    Ok(PARSED.get_or_init(|| model).clone())
}

/// An enforcer holding one policy line per pattern. Every step is in memory: the model is
/// parsed from [`MODEL`] and the adapter is a [`MemoryAdapter`], so nothing here does I/O
/// even though casbin's API is async.
async fn build_enforcer(patterns: &[String]) -> casbin::Result<Enforcer> {
    let model = parsed_model().await?;
    let mut enforcer = Enforcer::new(model, MemoryAdapter::default()).await?;
    enforcer.add_function("fnMatch", OperatorFunction::Arg2(fn_match));
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let line = vec![pattern.clone()];
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    if !lines.is_empty() {
        enforcer.add_policies(lines).await?;
    }
    Ok(enforcer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(patterns: &[&str]) -> KeyScope {
        scope_of(patterns, 4)
    }

    #[test]
    fn exact_names_are_anchored() {
        let s = scope(&["fn_read"]);
        assert!(s.allows(None, "fn_read"));
        assert!(!s.allows(None, "x_fn_read_all"));
        assert!(!s.allows(None, "fn_read_all"));
        assert!(!s.allows(None, "fn_rea"));
        assert!(!s.allows(None, ""));
    }

    #[test]
    fn star_allows_every_name() {
        let s = scope(&["*"]);
        assert!(s.allows(None, "anything"));
        assert!(s.allows(Some(0), "get_user"));
    }

    #[test]
    fn globs_match_whole_names_only() {
        let s = scope(&["billing_*", "crm-?-read"]);
        assert!(s.allows(None, "billing_refund"));
        assert!(s.allows(None, "billing_"));
        assert!(!s.allows(None, "x_billing_refund"));
        assert!(!s.allows(None, "billing"));
        assert!(s.allows(None, "crm-a-read"));
        assert!(!s.allows(None, "crm-ab-read"));
        assert!(!s.allows(None, "get_user"));
    }

    #[test]
    fn dots_and_regex_syntax_are_not_patterns() {
        // `crm.*` would be a regex matching `crmXanything`; here it is no pattern at all, and
        // the whole scope fails closed, including its valid entries.
        let s = scope(&["crm.*", "get_user"]);
        assert!(!s.allows(None, "crm.contacts"));
        assert!(!s.allows(None, "crmXcontacts"));
        assert!(!s.allows(None, "get_user"));
        for bad in ["(a|b)", "[ab]", "a,b", "a\"b", ".*"] {
            let s = scope(&[bad]);
            assert!(!s.allows(None, "a"), "{bad}");
            assert!(!s.allows(None, "a,b"), "{bad}");
        }
    }

    #[test]
    fn no_matching_pattern_denies() {
        let s = scope(&["get_user", "list_*"]);
        assert!(!s.allows(None, "delete_user"));
        assert!(!s.allows(Some(3), "delete_user"));
    }

    /// Names not in the snapshot are decided without casbin; the answer must be casbin's.
    #[test]
    fn the_direct_match_decides_as_casbin_does() {
        let too_long = "a".repeat(grants::MAX_PATTERN_LEN + 1);
        let valid: &[&[&str]] = &[
            &[],
            &["get_user"],
            &["*"],
            &["get_*"],
            &["*_read"],
            &["crm-?-read"],
            &["a*b*c"],
            &["?"],
            &["??*"],
            &["get_user", "list_*"],
            &["billing_*", "billing_*"],
            &["Get_User"],
            &["x", "y", "*"],
        ];
        let invalid: &[&[&str]] = &[
            &["crm.*"],
            &["get_user", "(a|b)"],
            &[""],
            &["a b"],
            &["a,b"],
            &["[ab]", "*"],
            &["get_user", too_long.as_str()],
        ];
        let names = [
            "get_user",
            "GET_USER",
            "Get_User",
            "get_",
            "get_*",
            "*",
            "?",
            "",
            "x_get_user",
            "get_user_x",
            "user_read",
            "user_read_all",
            "crm-a-read",
            "crm-ab-read",
            "crm--read",
            "abc",
            "axxbyyc",
            "axxbyy",
            "a",
            "ab",
            "list_all",
            "billing_",
            "crm.x",
            "a,b",
            "a b",
            "x",
        ];
        let (mut allowed, mut denied) = (0, 0);
        for patterns in valid {
            let scope = scope_of(patterns, names.len());
            for (slot, name) in names.iter().enumerate() {
                // With a slot, casbin decides (and caches); without one, the direct match.
                let by_casbin = scope.allows(Some(slot), name);
                let direct = scope.allows(None, name);
                assert_eq!(by_casbin, direct, "{patterns:?} / {name:?}");
                let engine = scope.engine.get().unwrap().as_ref().unwrap();
                assert_eq!(engine.enforce(name), direct, "{patterns:?} / {name:?}");
                if direct {
                    allowed += 1;
                } else {
                    denied += 1;
                }
            }
        }
        // The grid exercises both answers, not only one.
        assert!(
            allowed > 20 && denied > 100,
            "{allowed} allowed, {denied} denied"
        );

        for patterns in invalid {
            // The whole scope fails closed, cached or not.
            let scope = scope_of(patterns, names.len());
            for (slot, name) in names.iter().enumerate() {
                assert!(!scope.allows(Some(slot), name), "{patterns:?} / {name:?}");
                assert!(!scope.allows(None, name), "{patterns:?} / {name:?}");
            }
            // Even an enforcer holding the invalid lines (which the scope never builds) agrees
            // with the direct match: an invalid pattern matches nothing in both.
            let lines: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            let enforcer = futures::executor::block_on(build_enforcer(&lines)).unwrap();
            for name in names {
                assert_eq!(
                    enforcer.enforce(vec![name.to_string()]).unwrap(),
                    lines.iter().any(|p| grants::matches(p, name)),
                    "{patterns:?} / {name:?}"
                );
            }
        }
    }

    fn scope_of(patterns: &[&str], functions: usize) -> KeyScope {
        KeyScope::new(patterns.iter().map(|p| p.to_string()).collect(), functions)
    }

    #[test]
    fn cached_decisions_follow_the_slot_and_names_are_literal() {
        let s = scope(&["get_*"]);
        assert!(s.allows(Some(1), "get_user"));
        // Cached by slot: asking again answers the same without casbin.
        assert!(s.allows(Some(1), "get_user"));
        assert!(!s.allows(Some(2), "put_user"));
        assert!(!s.allows(Some(2), "put_user"));
        // A slot out of range (never produced by the snapshot) is decided like a missing name.
        assert!(s.allows(Some(99), "get_x"));
        // A wildcard in the invoked name is only a character.
        let exact = scope(&["get_user"]);
        assert!(!exact.allows(None, "get_*"));
        assert!(!exact.allows(None, "*"));
    }
}
