//! The compiled, immutable config snapshot the request path reads, and the store that swaps it.
//!
//! Each [`EnvironmentSnapshot`] is compiled once, off the request path: function templates are
//! compiled, every API key hash goes into one global index, and keys are grouped by policy
//! into [`KeyScope`]s (casbin, decided lazily and cached per function: see [`crate::scope`]).
//! The request path only does hash-map lookups on an [`Arc`] it loads from an [`ArcSwap`], so
//! it never waits for a writer and never sees a half-applied update.
//!
//! ## Secrets are opened on first use
//!
//! Compiling does not open the secrets: it keeps each one sealed, with its allowed hosts.
//! Opening one (HPKE, with whichever key of the [`OpeningKeyring`] it was sealed to),
//! computing its forms and building its redaction automaton ([`RedactionIndex`]) costs about
//! 0.2 ms and 16 KiB per secret (the `secret_first_use` bench, and
//! `examples/large_environment_rss.rs`); doing it for every secret of a large environment on
//! every apply would take seconds and tens of megabytes for secrets most requests never use.
//! So the first request that injects a secret does it, and the result is cached with the
//! secret for the life of this compiled environment (a [`OnceLock`]: concurrent first uses
//! wait for one opening). A secret that does not open (another data plane's key, a ciphertext
//! moved onto another name, a damaged snapshot) is remembered as such, logged once by name,
//! and fails closed for every request, exactly as if it were missing. A new snapshot (after a
//! rotation, say) is a new compiled environment whose secrets start sealed again; the old
//! values are zeroized when the replaced environment is dropped, on the reclaimer's thread
//! once no request holds it any more ([`crate::memory`]).
//!
//! Key use (for `lastUsedAt`) is recorded on the request path in one atomic per key of the
//! compiled environment; [`SnapshotStore::take_uses`] collects it (also from environments
//! replaced since the last collection) for the usage reporter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::events::KeyUse;
use airlock_shared::hosts::HostPattern;
use airlock_shared::oauth::PendingAuthorization;
use airlock_shared::seal::{OpeningKeyring, SealedSecret, SecretIdentity, SecretValue};
use airlock_shared::template::FunctionTemplate;
use airlock_shared::wire::{ApiKeyGrant, EnvironmentSnapshot};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::memory::Reclaimer;
use crate::oauth::CompiledOAuth;
use crate::proxy::redact::{RedactionIndex, RequestRedaction};
use crate::scope::KeyScope;

/// The maps an environment compiles into (functions, secrets, the key index). Hashed with
/// foldhash, seeded at random per process like std's SipHash but several times faster on
/// the short keys here: a snapshot of 10 000 keys and 10 000 secrets spent most of its
/// compile time in SipHash (`docs/BENCHMARKS.md`), and every request looks up its key and
/// function in these maps. What goes into them comes from the control plane; what a caller
/// sends only looks things up.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A function ready to render.
#[derive(Debug)]
pub struct CompiledFunction {
    /// Id of the function definition (for logs and events).
    pub id: Uuid,
    /// Name it is invoked by.
    pub name: String,
    /// The compiled request template.
    pub template: FunctionTemplate,
    /// Position in the environment: where scopes cache their decision about it.
    pub slot: usize,
    /// The OAuth connections its templates inject (`{{oauth.NAME}}`), once each; empty for
    /// most functions, which then do no OAuth work at all.
    pub oauth_connections: Vec<String>,
}

/// One environment, compiled.
pub struct CompiledEnvironment {
    /// Tenant owning the environment.
    pub tenant_id: Uuid,
    /// The environment.
    pub environment_id: Uuid,
    /// Revision of the snapshot this was compiled from.
    pub revision: i64,
    functions: FastMap<String, Arc<CompiledFunction>>,
    /// Every secret of the snapshot, sealed until first used.
    secrets: FastMap<String, LazySecret>,
    /// Opens the secrets on first use.
    opening_keys: OpeningKeyring,
    api_keys: Vec<ApiKeyGrant>,
    /// The scope of each key, by grant index; keys with the same patterns share one.
    scopes: Vec<Arc<KeyScope>>,
    /// Latest use of each key, by grant index: Unix milliseconds, 0 when not used since the
    /// last collection.
    last_used: Box<[AtomicI64]>,
    /// OAuth clients, connections and pending authorizations (tokens live in the
    /// [`crate::oauth::TokenManager`], by connection id).
    pub oauth: CompiledOAuth,
}

/// A secret of this environment: sealed, and opened the first time a request needs it.
struct LazySecret {
    sealed: SealedSecret,
    /// The hosts it may be sent to; empty means none.
    allowed_hosts: Vec<HostPattern>,
    /// Set on first use: `None` when the secret does not open (or its forms cannot be
    /// compiled), which fails closed like a missing secret.
    opened: OnceLock<Option<OpenedSecret>>,
}

/// A secret opened for this environment.
struct OpenedSecret {
    /// The plaintext, zeroized on drop.
    value: SecretValue,
    /// Its forms, for redacting the responses of requests that inject it.
    redaction: Arc<RedactionIndex>,
}

impl std::fmt::Debug for CompiledEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret names only; SecretValue's Debug is redacted anyway.
        f.debug_struct("CompiledEnvironment")
            .field("environment_id", &self.environment_id)
            .field("revision", &self.revision)
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field(
                "opened",
                &self
                    .secrets
                    .values()
                    .filter(|s| matches!(s.opened.get(), Some(Some(_))))
                    .count(),
            )
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

impl CompiledEnvironment {
    /// Compile `snapshot`. A function that does not compile is left out and logged (by name
    /// only); the rest of the environment still works, and an invoke that needs it fails
    /// closed. Secrets are kept sealed; `opening_keys` (a copy is kept) opens each on its
    /// first use, and one that does not open then fails closed the same way (module docs).
    pub fn compile(snapshot: EnvironmentSnapshot, opening_keys: &OpeningKeyring) -> Self {
        let EnvironmentSnapshot {
            tenant_id,
            environment_id,
            revision,
            functions: function_specs,
            secrets: sealed_secrets,
            api_keys,
            oauth_clients,
            oauth_connections,
            oauth_authorizations,
        } = snapshot;

        let mut functions =
            FastMap::with_capacity_and_hasher(function_specs.len(), Default::default());
        for (name, spec) in function_specs {
            match FunctionTemplate::compile(&spec) {
                Ok(template) => {
                    let oauth_connections = template
                        .oauth_connections()
                        .into_iter()
                        .map(str::to_string)
                        .collect();
                    let function = CompiledFunction {
                        id: spec.id,
                        name: name.clone(),
                        template,
                        slot: functions.len(),
                        oauth_connections,
                    };
                    functions.insert(name, Arc::new(function));
                }
                Err(error) => tracing::error!(
                    %environment_id,
                    revision,
                    function = %name,
                    error = %error,
                    "function does not compile; it is left out of this environment"
                ),
            }
        }

        // Kept sealed: opened on first use (module docs).
        let secrets = sealed_secrets
            .into_iter()
            .map(|(name, entry)| {
                let secret = LazySecret {
                    sealed: entry.sealed,
                    allowed_hosts: entry.allowed_hosts,
                    opened: OnceLock::new(),
                };
                (name, secret)
            })
            .collect();

        let mut by_patterns: FastMap<&[String], Arc<KeyScope>> = FastMap::default();
        let scopes = api_keys
            .iter()
            .map(|grant| {
                by_patterns
                    .entry(grant.functions.as_slice())
                    .or_insert_with(|| {
                        Arc::new(KeyScope::new(grant.functions.clone(), functions.len()))
                    })
                    .clone()
            })
            .collect();
        let last_used = api_keys.iter().map(|_| AtomicI64::new(0)).collect();

        Self {
            tenant_id,
            environment_id,
            revision,
            functions,
            secrets,
            opening_keys: opening_keys.clone(),
            api_keys,
            scopes,
            last_used,
            oauth: CompiledOAuth::compile(oauth_clients, oauth_connections, oauth_authorizations),
        }
    }

    /// Take the uses recorded since the last call, leaving none.
    fn take_uses(&self, into: &mut HashMap<Uuid, i64>) {
        for (grant, last_used) in self.api_keys.iter().zip(self.last_used.iter()) {
            // A plain read first: most keys were not used, and a swap would write every one.
            if last_used.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let at = last_used.swap(0, Ordering::AcqRel);
            if at > 0 {
                let latest = into.entry(grant.id).or_insert(at);
                *latest = (*latest).max(at);
            }
        }
    }

    /// The function named `name`, if it compiled.
    pub fn function(&self, name: &str) -> Option<&Arc<CompiledFunction>> {
        self.functions.get(name)
    }

    /// Secret `name` opened, opening it if this is its first use; `None` when the snapshot
    /// has no such secret or it does not open.
    fn opened(&self, name: &str) -> Option<(&LazySecret, &OpenedSecret)> {
        let secret = self.secrets.get(name)?;
        let opened = secret
            .opened
            .get_or_init(|| self.open(name, &secret.sealed))
            .as_ref()?;
        Some((secret, opened))
    }

    /// Open secret `name` and compile its forms (once per secret: see [`Self::opened`]).
    fn open(&self, name: &str, sealed: &SealedSecret) -> Option<OpenedSecret> {
        let (environment_id, revision) = (self.environment_id, self.revision);
        let identity = SecretIdentity {
            tenant_id: self.tenant_id,
            environment_id,
            name,
            version: sealed.version,
        };
        let value = match self.opening_keys.open(identity, sealed) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(
                    %environment_id,
                    revision,
                    secret = %name,
                    version = sealed.version,
                    key_id = %sealed.key_id,
                    error = %error,
                    "secret cannot be opened; invocations that need it will fail"
                );
                return None;
            }
        };
        match RedactionIndex::build(value.expose()) {
            Ok(redaction) => Some(OpenedSecret {
                value,
                redaction: Arc::new(redaction),
            }),
            Err(error) => {
                // Without redaction the secret may not be used: fail closed.
                tracing::error!(
                    %environment_id,
                    revision,
                    secret = %name,
                    %error,
                    "secret is unusable; invocations that need it will fail"
                );
                None
            }
        }
    }

    /// The plaintext of secret `name`, for rendering only (opened on first use).
    pub fn secret(&self, name: &str) -> Option<&str> {
        self.opened(name).map(|(_, opened)| opened.value.expose())
    }

    /// The hosts secret `name` may be sent to (empty: none), if the secret opens.
    pub fn secret_allowed_hosts(&self, name: &str) -> Option<&[HostPattern]> {
        self.opened(name)
            .map(|(secret, _)| secret.allowed_hosts.as_slice())
    }

    /// Whether secret `name` is in the snapshot but could not be opened by this data plane.
    pub fn is_unopened(&self, name: &str) -> bool {
        self.secrets.contains_key(name) && self.opened(name).is_none()
    }

    /// What a request that injected the named secrets redacts: the forms of each of them
    /// (names that are not open secrets are skipped: such a request was never sent).
    pub fn request_redaction<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> RequestRedaction {
        RequestRedaction::new(self.secret_redactions(names))
    }

    /// The redaction indexes of the named secrets (see [`Self::request_redaction`]), for a
    /// request that also injected other values (OAuth tokens).
    pub fn secret_redactions<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Vec<Arc<RedactionIndex>> {
        names
            .into_iter()
            .filter_map(|name| {
                self.opened(name)
                    .map(|(_, opened)| opened.redaction.clone())
            })
            .collect()
    }

    /// The API keys of this environment.
    pub fn api_keys(&self) -> &[ApiKeyGrant] {
        &self.api_keys
    }
}

/// An API key found in the index: its environment and its grant.
#[derive(Debug, Clone)]
pub struct KeyBinding {
    /// The environment the key belongs to (and the only one it can reach).
    pub environment: Arc<CompiledEnvironment>,
    grant_index: usize,
}

impl KeyBinding {
    /// The key's grant: its id, name and the functions it may invoke.
    pub fn grant(&self) -> &ApiKeyGrant {
        &self.environment.api_keys[self.grant_index]
    }

    /// Whether the key's policy lets it invoke `function` (which need not exist).
    pub fn may_invoke(&self, function: &str) -> bool {
        self.may_invoke_found(function, self.environment.function(function).map(|f| &**f))
    }

    /// [`Self::may_invoke`] for a caller that has already looked `function` up in the key's
    /// environment (`found`), so the request path does one lookup, not two.
    pub fn may_invoke_found(&self, function: &str, found: Option<&CompiledFunction>) -> bool {
        self.environment.scopes[self.grant_index].allows(found.map(|f| f.slot), function)
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.grant().is_expired_at(now)
    }

    /// Record a use at `now` (one atomic store: no lock, no I/O).
    pub fn record_use(&self, now: DateTime<Utc>) {
        let at = now.timestamp_millis().max(1);
        self.environment.last_used[self.grant_index].fetch_max(at, Ordering::AcqRel);
    }
}

/// Everything the request path needs, for every environment this data plane serves.
#[derive(Debug, Default)]
pub struct Snapshot {
    environments: FastMap<Uuid, Arc<CompiledEnvironment>>,
    keys: FastMap<ApiKeyHash, KeyBinding>,
    /// Pending authorizations of every environment, by state hash: where a callback goes.
    authorizations: FastMap<String, (Arc<CompiledEnvironment>, usize)>,
}

impl Snapshot {
    /// The key with this hash, if any environment has it.
    pub fn key(&self, hash: &ApiKeyHash) -> Option<&KeyBinding> {
        self.keys.get(hash)
    }

    /// The compiled environment with this id, if held.
    pub fn environment(&self, id: &Uuid) -> Option<&Arc<CompiledEnvironment>> {
        self.environments.get(id)
    }

    /// The pending authorization started with the state whose hash is `state_hash`, and its
    /// environment.
    pub fn authorization(
        &self,
        state_hash: &str,
    ) -> Option<(&Arc<CompiledEnvironment>, &PendingAuthorization)> {
        let (environment, index) = self.authorizations.get(state_hash)?;
        Some((environment, environment.oauth.authorizations.get(*index)?))
    }

    /// A new snapshot with `environment` replacing its previous version; every other
    /// environment is shared, not copied.
    fn with_environment(&self, environment: CompiledEnvironment) -> Self {
        let mut environments = self.environments.clone();
        environments.insert(environment.environment_id, Arc::new(environment));
        Self {
            keys: index_keys(&environments),
            authorizations: index_authorizations(&environments),
            environments,
        }
    }
}

/// Build the global key index. A hash present in two environments cannot tell which one a
/// caller meant, so it is left out (fail closed) rather than resolved arbitrarily.
fn index_keys(
    environments: &FastMap<Uuid, Arc<CompiledEnvironment>>,
) -> FastMap<ApiKeyHash, KeyBinding> {
    let total = environments.values().map(|e| e.api_keys.len()).sum();
    let mut keys: FastMap<ApiKeyHash, KeyBinding> =
        FastMap::with_capacity_and_hasher(total, Default::default());
    let mut ambiguous = Vec::new();
    for environment in environments.values() {
        for (grant_index, grant) in environment.api_keys.iter().enumerate() {
            let binding = KeyBinding {
                environment: environment.clone(),
                grant_index,
            };
            if let Some(previous) = keys.insert(grant.hash, binding) {
                if !Arc::ptr_eq(&previous.environment, environment)
                    || previous.grant_index != grant_index
                {
                    ambiguous.push((grant.hash, grant.id, previous.grant().id));
                }
            }
        }
    }
    for (hash, key_id, other_key_id) in ambiguous {
        tracing::error!(
            %key_id,
            %other_key_id,
            "two API keys share one hash; both are refused"
        );
        keys.remove(&hash);
    }
    keys
}

/// Index the pending authorizations of every environment by state hash. A hash found in two
/// places cannot tell which flow a callback completes: both are left out (refused).
fn index_authorizations(
    environments: &FastMap<Uuid, Arc<CompiledEnvironment>>,
) -> FastMap<String, (Arc<CompiledEnvironment>, usize)> {
    let mut index: FastMap<String, (Arc<CompiledEnvironment>, usize)> = FastMap::default();
    let mut ambiguous = Vec::new();
    for environment in environments.values() {
        for (i, authorization) in environment.oauth.authorizations.iter().enumerate() {
            if index
                .insert(authorization.state_hash.clone(), (environment.clone(), i))
                .is_some()
            {
                ambiguous.push(authorization.state_hash.clone());
            }
        }
    }
    for hash in ambiguous {
        index.remove(&hash);
    }
    index
}

/// What [`SnapshotStore::apply`] did with a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The snapshot is now live.
    Applied,
    /// The data plane already holds this revision or a newer one; nothing changed.
    Stale { held: i64 },
}

/// Holds the live [`Snapshot`] and applies new environment snapshots to it.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    opening_keys: OpeningKeyring,
    /// Serializes writers so two concurrent applies cannot lose each other's environment.
    writer: Mutex<()>,
    synced: AtomicBool,
    /// Uses collected from environments replaced since the last [`SnapshotStore::take_uses`].
    replaced_uses: Mutex<HashMap<Uuid, i64>>,
    /// Drops replaced snapshots off the request path and the sync task ([`crate::memory`]).
    reclaimer: Reclaimer,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("environments", &self.current.load().environments.len())
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

impl SnapshotStore {
    /// An empty store; `opening_keys` open the sealed secrets of every applied snapshot.
    pub fn new(opening_keys: OpeningKeyring) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            opening_keys,
            writer: Mutex::new(()),
            synced: AtomicBool::new(false),
            replaced_uses: Mutex::new(HashMap::new()),
            reclaimer: Reclaimer::start(),
        }
    }

    /// The thread that frees replaced snapshots and returns freed memory to the system.
    pub(crate) fn reclaimer(&self) -> &Reclaimer {
        &self.reclaimer
    }

    /// The live snapshot (lock-free).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Revision currently held for `environment_id`.
    pub fn revision_of(&self, environment_id: &Uuid) -> Option<i64> {
        self.current
            .load()
            .environments
            .get(environment_id)
            .map(|env| env.revision)
    }

    /// Compile `snapshot` and make it live, unless a newer or equal revision is already held
    /// (notifications can arrive out of order).
    pub fn apply(&self, snapshot: EnvironmentSnapshot) -> ApplyOutcome {
        let environment_id = snapshot.environment_id;
        if let Some(held) = self.revision_of(&environment_id) {
            if snapshot.revision <= held {
                return ApplyOutcome::Stale { held };
            }
        }
        let revision = snapshot.revision;
        // What an earlier apply replaced and the reclaimer has not freed yet (its thread
        // waits while the CPU is busy) is freed before another environment is built.
        self.reclaimer.free_now();
        let started = std::time::Instant::now();
        // Compile before taking the writer lock: it is the expensive part.
        let compiled = CompiledEnvironment::compile(snapshot, &self.opening_keys);
        let compile_us = started.elapsed().as_micros();
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current.load();
        if let Some(held) = current
            .environments
            .get(&environment_id)
            .map(|e| e.revision)
        {
            if revision <= held {
                return ApplyOutcome::Stale { held };
            }
        }
        let next = current.with_environment(compiled);
        drop(current);
        let previous = self.current.swap(Arc::new(next));
        // Keep what was recorded on the replaced environment for the next report. (A request
        // that still holds it and records a use after this line is not reported; the key's
        // next use is.)
        let replaced = previous.environments.get(&environment_id).cloned();
        if let Some(replaced) = &replaced {
            let mut uses = self
                .replaced_uses
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            replaced.take_uses(&mut uses);
        }
        // Freed elsewhere, the snapshot before the environment it held.
        self.reclaimer.retire(previous);
        if let Some(replaced) = replaced {
            self.reclaimer.retire(replaced);
        }
        tracing::info!(
            %environment_id,
            revision,
            compile_us,
            swap_us = started.elapsed().as_micros() - compile_us,
            "environment snapshot applied"
        );
        ApplyOutcome::Applied
    }

    /// The latest use of every key used since the last call (millisecond precision), and
    /// forget them. Reads atomics only; the request path is never blocked.
    pub fn take_uses(&self) -> Vec<KeyUse> {
        let mut uses = std::mem::take(
            &mut *self
                .replaced_uses
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for environment in self.current.load().environments.values() {
            environment.take_uses(&mut uses);
        }
        uses.into_iter()
            .filter_map(|(api_key_id, at)| {
                DateTime::from_timestamp_millis(at).map(|last_used_at| KeyUse {
                    api_key_id,
                    last_used_at,
                })
            })
            .collect()
    }

    /// Record that a full sync from the config source has completed.
    pub fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::AcqRel) {
            tracing::info!("initial config sync complete");
        }
    }

    /// Whether at least one full sync has completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use airlock_shared::seal::OpeningKey;
    use airlock_shared::wire::FunctionSpec;

    use super::*;

    const TENANT: Uuid = Uuid::from_u128(1);
    const ENV_A: Uuid = Uuid::from_u128(10);
    const ENV_B: Uuid = Uuid::from_u128(11);

    /// Version 1 of secret `name` in environment A.
    fn identity(name: &str) -> SecretIdentity<'_> {
        SecretIdentity {
            tenant_id: TENANT,
            environment_id: ENV_A,
            name,
            version: 1,
        }
    }

    fn function(name: &str, url: &str) -> FunctionSpec {
        FunctionSpec {
            id: Uuid::new_v4(),
            name: name.into(),
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: None,
            timeout_ms: 1000,
        }
    }

    fn grant(key: &str, functions: &[&str]) -> ApiKeyGrant {
        ApiKeyGrant {
            id: Uuid::new_v4(),
            name: key.into(),
            hash: ApiKeyHash::of(key),
            functions: functions.iter().map(|f| f.to_string()).collect(),
            expires_at: None,
        }
    }

    /// A secret entry bound to every host the tests use.
    fn entry(sealed: airlock_shared::seal::SealedSecret) -> airlock_shared::wire::SecretEntry {
        airlock_shared::wire::SecretEntry {
            sealed,
            allowed_hosts: vec![airlock_shared::hosts::HostPattern::parse("127.0.0.1").unwrap()],
        }
    }

    fn snapshot(environment_id: Uuid, revision: i64) -> EnvironmentSnapshot {
        EnvironmentSnapshot {
            tenant_id: TENANT,
            environment_id,
            revision,
            functions: BTreeMap::new(),
            secrets: BTreeMap::new(),
            api_keys: vec![],
            oauth_clients: Default::default(),
            oauth_connections: Default::default(),
            oauth_authorizations: Default::default(),
        }
    }

    #[test]
    fn a_function_that_does_not_compile_is_left_out_alone() {
        let key = OpeningKey::generate();
        let mut s = snapshot(ENV_A, 1);
        s.functions
            .insert("good".into(), function("good", "https://api.example.com/x"));
        s.functions
            .insert("bad".into(), function("bad", "ftp://api.example.com/x"));
        let env = CompiledEnvironment::compile(s, &key.clone().into());
        assert!(env.function("good").is_some());
        assert!(env.function("bad").is_none());
        assert_eq!(env.function("good").unwrap().name, "good");
    }

    #[test]
    fn a_secret_that_does_not_open_is_left_out_alone() {
        let key = OpeningKey::generate();
        let sealing = key.sealing_key();
        let mut s = snapshot(ENV_A, 1);
        s.secrets.insert(
            "GOOD".into(),
            entry(sealing.seal(identity("GOOD"), "good-value").unwrap()),
        );
        // Sealed for another name: the identity binding must refuse it.
        s.secrets.insert(
            "MOVED".into(),
            entry(sealing.seal(identity("OTHER"), "moved").unwrap()),
        );
        // Sealed to another data plane's key.
        let foreign = OpeningKey::generate();
        s.secrets.insert(
            "FOREIGN".into(),
            entry(
                foreign
                    .sealing_key()
                    .seal(identity("FOREIGN"), "x")
                    .unwrap(),
            ),
        );
        let env = CompiledEnvironment::compile(s, &key.clone().into());
        assert_eq!(env.secret("GOOD"), Some("good-value"));
        assert_eq!(env.secret("MOVED"), None);
        assert_eq!(env.secret("FOREIGN"), None);
        let debug = format!("{env:?}");
        assert!(!debug.contains("good-value"), "{debug}");
    }

    #[test]
    fn secrets_sealed_to_any_key_of_the_ring_open_and_keep_their_binding() {
        let (old, new) = (OpeningKey::generate(), OpeningKey::generate());
        let mut s = snapshot(ENV_A, 1);
        s.secrets.insert(
            "OLD".into(),
            entry(
                old.sealing_key()
                    .seal(identity("OLD"), "old-value")
                    .unwrap(),
            ),
        );
        let mut bound = entry(
            new.sealing_key()
                .seal(identity("NEW"), "new-value")
                .unwrap(),
        );
        bound.allowed_hosts =
            vec![airlock_shared::hosts::HostPattern::parse("*.example.com").unwrap()];
        s.secrets.insert("NEW".into(), bound);
        let ring = OpeningKeyring::new(vec![old, new.clone()]).unwrap();
        let env = CompiledEnvironment::compile(s.clone(), &ring);
        assert_eq!(env.secret("OLD"), Some("old-value"));
        assert_eq!(env.secret("NEW"), Some("new-value"));
        assert_eq!(
            env.secret_allowed_hosts("NEW").unwrap()[0].as_str(),
            "*.example.com"
        );
        assert!(!env.is_unopened("OLD"));
        // The same snapshot without the old key: that secret fails closed, by name.
        let env = CompiledEnvironment::compile(s, &new.into());
        assert_eq!(env.secret("OLD"), None);
        assert!(env.is_unopened("OLD"));
        assert!(!env.is_unopened("NOT_IN_SNAPSHOT"));
        assert_eq!(env.secret("NEW"), Some("new-value"));
        // Redaction covers the opened secret.
        let redaction = env.request_redaction(["NEW", "OLD", "NOT_IN_SNAPSHOT"]);
        assert_eq!(
            redaction.redact(b"x new-value y"),
            Some(b"x ********* y".to_vec())
        );
    }

    #[test]
    fn secrets_stay_sealed_until_first_used_and_open_once() {
        let key = OpeningKey::generate();
        let mut s = snapshot(ENV_A, 1);
        for (name, value) in [("A", "value-of-a"), ("B", "value-of-b")] {
            let sealed = key.sealing_key().seal(identity(name), value).unwrap();
            s.secrets.insert(name.into(), entry(sealed));
        }
        let foreign = OpeningKey::generate().sealing_key().clone();
        let sealed = foreign.seal(identity("FOREIGN"), "foreign-value").unwrap();
        s.secrets.insert("FOREIGN".into(), entry(sealed));
        let env = CompiledEnvironment::compile(s, &key.into());
        // `None`: still sealed; `Some(true)`: opened; `Some(false)`: does not open.
        let state = |name: &str| env.secrets[name].opened.get().map(Option::is_some);
        assert_eq!(
            [state("A"), state("B"), state("FOREIGN")],
            [None, None, None]
        );

        // Racing first uses all get the value of one opening.
        let values: Vec<&str> = std::thread::scope(|threads| {
            let handles: Vec<_> = (0..8).map(|_| threads.spawn(|| env.secret("A"))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(values.iter().all(|v| std::ptr::eq(*v, values[0])));
        assert_eq!(values[0], "value-of-a");
        assert_eq!([state("A"), state("B")], [Some(true), None]);

        // Redacting for a request that injected B opens B, and only B is redacted.
        let redaction = env.request_redaction(["B"]);
        assert_eq!(state("B"), Some(true));
        // Body masks keep the length: a 10-byte value becomes exactly `[REDACTED]`.
        assert_eq!(
            redaction.redact(b"<value-of-b> VALUE-OF-B value-of-a"),
            Some(b"<[REDACTED]> [REDACTED] value-of-a".to_vec())
        );

        // A secret that does not open fails closed everywhere, and stays failed (no retry,
        // so it is logged once).
        assert_eq!(env.secret("FOREIGN"), None);
        assert_eq!(state("FOREIGN"), Some(false));
        assert!(env.is_unopened("FOREIGN"));
        assert!(env.secret_allowed_hosts("FOREIGN").is_none());
        assert_eq!(
            env.request_redaction(["FOREIGN"]).redact(b"foreign-value"),
            None
        );
        assert!(!env.is_unopened("A") && !env.is_unopened("NOT_THERE"));
        let debug = format!("{env:?}");
        assert!(!debug.contains("value-of"), "{debug}");
    }

    #[test]
    fn a_new_snapshot_starts_with_cold_secrets() {
        let key = OpeningKey::generate();
        let store = SnapshotStore::new(key.clone().into());
        let with_token = |revision: i64, version: i32, value: &str| {
            let identity = SecretIdentity {
                tenant_id: TENANT,
                environment_id: ENV_A,
                name: "TOKEN",
                version,
            };
            let mut s = snapshot(ENV_A, revision);
            let sealed = key.sealing_key().seal(identity, value).unwrap();
            s.secrets.insert("TOKEN".into(), entry(sealed));
            s
        };
        store.apply(with_token(1, 1, "first-value"));
        let first = store.load().environment(&ENV_A).unwrap().clone();
        assert_eq!(first.secret("TOKEN"), Some("first-value"));

        // Rotated: the new environment's secret is sealed until used, then the new value.
        store.apply(with_token(2, 2, "second-value"));
        let second = store.load().environment(&ENV_A).unwrap().clone();
        assert!(second.secrets["TOKEN"].opened.get().is_none());
        assert_eq!(second.secret("TOKEN"), Some("second-value"));
        assert_eq!(
            second
                .request_redaction(["TOKEN"])
                .redact(b"first-value second-value"),
            Some(b"first-value [REDACTED**]".to_vec())
        );
        // A request still holding the old environment keeps what it had.
        assert_eq!(first.secret("TOKEN"), Some("first-value"));
    }

    #[test]
    fn a_replaced_environment_is_freed_once_the_requests_holding_it_end() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        assert_eq!(store.apply(snapshot(ENV_A, 1)), ApplyOutcome::Applied);
        // A request under way holds the live environment.
        let held = store.load().environment(&ENV_A).unwrap().clone();
        let freed = Arc::downgrade(&held);
        assert_eq!(store.apply(snapshot(ENV_A, 2)), ApplyOutcome::Applied);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(held.revision, 1, "still usable by the request");
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while freed.upgrade().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(freed.upgrade().is_none(), "revision 1 was never freed");
        assert_eq!(store.revision_of(&ENV_A), Some(2));
    }

    #[test]
    fn newer_revision_wins_and_older_ones_are_ignored() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let mut v2 = snapshot(ENV_A, 2);
        v2.functions
            .insert("f".into(), function("f", "https://v2.example.com/"));
        assert_eq!(store.apply(v2), ApplyOutcome::Applied);

        let mut v1 = snapshot(ENV_A, 1);
        v1.functions
            .insert("f".into(), function("f", "https://v1.example.com/"));
        assert_eq!(store.apply(v1), ApplyOutcome::Stale { held: 2 });
        assert_eq!(
            store.apply(snapshot(ENV_A, 2)),
            ApplyOutcome::Stale { held: 2 }
        );
        let host = |store: &SnapshotStore| {
            store
                .load()
                .environment(&ENV_A)
                .and_then(|e| e.function("f").map(|f| f.template.host.clone()))
        };
        assert_eq!(host(&store).as_deref(), Some("v2.example.com"));

        let mut v3 = snapshot(ENV_A, 3);
        v3.functions
            .insert("f".into(), function("f", "https://v3.example.com/"));
        assert_eq!(store.apply(v3), ApplyOutcome::Applied);
        assert_eq!(host(&store).as_deref(), Some("v3.example.com"));
        assert_eq!(store.revision_of(&ENV_A), Some(3));
    }

    fn pending(state: &str, key: &OpeningKey) -> PendingAuthorization {
        let id = Uuid::new_v4();
        let name = airlock_shared::oauth::pkce_identity_name(id);
        PendingAuthorization {
            id,
            connection: "crm".into(),
            state_hash: airlock_shared::oauth::state_hash(state),
            code_verifier: key.sealing_key().seal(identity(&name), "v").unwrap(),
            redirect_uri: "http://127.0.0.1/v1/oauth/callback".into(),
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn pending_authorizations_are_indexed_by_state_hash_across_environments() {
        let key = OpeningKey::generate();
        let store = SnapshotStore::new(key.clone().into());
        let mut a = snapshot(ENV_A, 1);
        a.oauth_authorizations = vec![pending("state-a", &key), pending("shared", &key)];
        let mut b = snapshot(ENV_B, 1);
        b.oauth_authorizations = vec![pending("state-b", &key), pending("shared", &key)];
        store.apply(a);
        store.apply(b);
        let snap = store.load();
        let hash = airlock_shared::oauth::state_hash;
        let (env, found) = snap.authorization(&hash("state-a")).unwrap();
        assert_eq!(env.environment_id, ENV_A);
        assert_eq!(found.state_hash, hash("state-a"));
        assert_eq!(
            snap.authorization(&hash("state-b"))
                .unwrap()
                .0
                .environment_id,
            ENV_B
        );
        // Unknown, or ambiguous (which flow would it complete?): none.
        assert!(snap.authorization(&hash("forged")).is_none());
        assert!(snap.authorization(&hash("shared")).is_none());
        // A new revision without it: gone.
        store.apply(snapshot(ENV_A, 2));
        assert!(store.load().authorization(&hash("state-a")).is_none());
    }

    #[test]
    fn key_index_spans_environments_and_follows_replacements() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let mut a = snapshot(ENV_A, 1);
        a.api_keys.push(grant("key-a", &["*"]));
        let mut b = snapshot(ENV_B, 1);
        b.api_keys.push(grant("key-b", &["only"]));
        store.apply(a);
        let env_a_before = store.load().environment(&ENV_A).unwrap().clone();
        store.apply(b);

        let snap = store.load();
        let a_binding = snap.key(&ApiKeyHash::of("key-a")).unwrap();
        assert_eq!(a_binding.environment.environment_id, ENV_A);
        assert!(a_binding.may_invoke("anything"));
        let b_binding = snap.key(&ApiKeyHash::of("key-b")).unwrap();
        assert_eq!(b_binding.environment.environment_id, ENV_B);
        assert!(!b_binding.may_invoke("other"));
        assert!(snap.key(&ApiKeyHash::of("nope")).is_none());
        // Applying B shared A instead of copying it.
        assert!(Arc::ptr_eq(
            snap.environment(&ENV_A).unwrap(),
            &env_a_before
        ));

        // A new revision of A without key-a revokes it; B is untouched.
        let mut a2 = snapshot(ENV_A, 2);
        a2.api_keys.push(grant("key-a2", &["*"]));
        store.apply(a2);
        let snap = store.load();
        assert!(snap.key(&ApiKeyHash::of("key-a")).is_none());
        assert!(snap.key(&ApiKeyHash::of("key-a2")).is_some());
        assert!(snap.key(&ApiKeyHash::of("key-b")).is_some());
    }

    #[test]
    fn a_hash_in_two_environments_is_refused() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let mut a = snapshot(ENV_A, 1);
        a.api_keys.push(grant("shared", &["*"]));
        a.api_keys.push(grant("only-a", &["*"]));
        let mut b = snapshot(ENV_B, 1);
        b.api_keys.push(grant("shared", &["*"]));
        store.apply(a);
        store.apply(b);
        let snap = store.load();
        assert!(snap.key(&ApiKeyHash::of("shared")).is_none());
        assert!(snap.key(&ApiKeyHash::of("only-a")).is_some());
    }

    #[test]
    fn key_scopes_decide_per_function_and_tell_missing_from_forbidden() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let mut a = snapshot(ENV_A, 1);
        for name in ["billing_refund", "billing_list", "crm_read", "fn_read"] {
            a.functions
                .insert(name.into(), function(name, "https://api.example.com/x"));
        }
        a.api_keys.push(grant("billing", &["billing_*"]));
        a.api_keys.push(grant("billing-too", &["billing_*"]));
        a.api_keys.push(grant("exact", &["fn_read"]));
        a.api_keys.push(grant("all", &["*"]));
        store.apply(a);
        let snap = store.load();
        let key = |k: &str| snap.key(&ApiKeyHash::of(k)).unwrap().clone();

        let billing = key("billing");
        assert!(billing.may_invoke("billing_refund"));
        assert!(billing.may_invoke("billing_list"));
        assert!(!billing.may_invoke("crm_read"));
        // Not in the snapshot but matched: the caller is told it does not exist.
        assert!(billing.may_invoke("billing_gone"));
        assert!(!billing.may_invoke("x_billing_refund"));
        // Keys with the same patterns share one scope (one casbin enforcer).
        assert!(Arc::ptr_eq(
            &billing.environment.scopes[billing.grant_index],
            &key("billing-too").environment.scopes[key("billing-too").grant_index]
        ));
        let exact = key("exact");
        assert!(exact.may_invoke("fn_read"));
        assert!(!exact.may_invoke("x_fn_read_all"));
        assert!(!exact.may_invoke("billing_list"));
        let all = key("all");
        assert!(all.may_invoke("crm_read") && all.may_invoke("not_there"));
    }

    #[test]
    fn expiry_is_compared_with_the_clock() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let now = Utc::now();
        let mut a = snapshot(ENV_A, 1);
        let mut expiring = grant("expiring", &["*"]);
        expiring.expires_at = Some(now + chrono::Duration::seconds(2));
        a.api_keys.push(expiring);
        a.api_keys.push(grant("forever", &["*"]));
        store.apply(a);
        let snap = store.load();
        let expiring = snap.key(&ApiKeyHash::of("expiring")).unwrap();
        assert!(!expiring.is_expired_at(now));
        assert!(!expiring.is_expired_at(now + chrono::Duration::milliseconds(1999)));
        assert!(expiring.is_expired_at(now + chrono::Duration::seconds(2)));
        let forever = snap.key(&ApiKeyHash::of("forever")).unwrap();
        assert!(!forever.is_expired_at(now + chrono::Duration::days(10_000)));
    }

    #[test]
    fn uses_are_collected_once_including_from_replaced_environments() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let mut a = snapshot(ENV_A, 1);
        a.api_keys.push(grant("k1", &["*"]));
        a.api_keys.push(grant("k2", &["*"]));
        let k1_id = a.api_keys[0].id;
        store.apply(a.clone());
        assert!(store.take_uses().is_empty());

        let at = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
        let snap = store.load();
        let k1 = snap.key(&ApiKeyHash::of("k1")).unwrap();
        k1.record_use(at - chrono::Duration::seconds(1));
        k1.record_use(at);
        // Out of order: the latest use wins.
        k1.record_use(at - chrono::Duration::seconds(5));
        assert_eq!(
            store.take_uses(),
            vec![KeyUse {
                api_key_id: k1_id,
                last_used_at: at
            }]
        );
        assert!(store.take_uses().is_empty(), "collected once");

        // A use on an environment that is replaced before the next collection is kept.
        k1.record_use(at);
        a.revision = 2;
        store.apply(a);
        assert_eq!(store.take_uses().len(), 1);
    }

    /// Applying a snapshot of 10 000 keys and 1 000 functions stays cheap: keys are grouped
    /// by policy, and casbin is only consulted (and cached) when a key is used.
    #[test]
    fn a_large_snapshot_applies_quickly() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        let mut big = snapshot(ENV_A, 1);
        for i in 0..1_000 {
            let name = format!("fn_{i:04}");
            big.functions
                .insert(name.clone(), function(&name, "https://api.example.com/x"));
        }
        for i in 0..10_000 {
            // Mostly distinct policies (the worst case for sharing): two exact names and a
            // glob per key.
            let first = format!("fn_{:04}", i % 1_000);
            let second = format!("fn_{:04}", (i * 7) % 1_000);
            let glob = format!("fn_{}*", i % 10);
            big.api_keys.push(grant(
                &format!("key-{i}"),
                &[first.as_str(), second.as_str(), glob.as_str()],
            ));
        }
        let started = std::time::Instant::now();
        assert_eq!(store.apply(big), ApplyOutcome::Applied);
        let applied = started.elapsed();

        let snap = store.load();
        let key = snap.key(&ApiKeyHash::of("key-1234")).unwrap();
        let started = std::time::Instant::now();
        assert!(key.may_invoke("fn_0234"));
        let first_decision = started.elapsed();
        // Another policy: its enforcer is built on its first use too.
        let other = snap.key(&ApiKeyHash::of("key-4321")).unwrap();
        let started = std::time::Instant::now();
        assert!(other.may_invoke("fn_0321"));
        let other_first_decision = started.elapsed();
        let started = std::time::Instant::now();
        for _ in 0..1_000 {
            assert!(key.may_invoke("fn_0234"));
        }
        let cached_decision = started.elapsed() / 1_000;
        assert!(key.may_invoke("fn_4999") && !key.may_invoke("fn_0999"));
        println!(
            "applied 10000 keys x 1000 functions in {} ms; first decision of a policy {} us \
             (another policy {} us), cached decision {} ns",
            applied.as_millis(),
            first_decision.as_micros(),
            other_first_decision.as_micros(),
            cached_decision.as_nanos()
        );
        // Generous bound for a debug build on a shared machine.
        assert!(applied < std::time::Duration::from_secs(5), "{applied:?}");
    }

    #[test]
    fn synced_flag() {
        let store = SnapshotStore::new(OpeningKey::generate().into());
        assert!(!store.is_synced());
        store.mark_synced();
        assert!(store.is_synced());
    }
}
