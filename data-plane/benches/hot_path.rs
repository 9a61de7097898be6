//! Micro-benchmarks of the request path's CPU work, each beside a baseline in the same group
//! so results read as ratios (absolute times depend on the machine and its load). Results,
//! machine and command: `docs/BENCHMARKS.md`.
//!
//! ```text
//! cargo bench -p airlock-data-plane --bench hot_path -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `key_lookup`: hashing the presented API key and finding it in a snapshot of 10 000 keys.
//! - `scope_decision`: whether a key may invoke a function (casbin, cached per function; names
//!   not in the snapshot matched directly).
//! - `template_render`: rendering a function's upstream request from arguments and a secret.
//! - `redaction`: scanning a JSON response body for the injected secrets' forms.
//! - `snapshot_apply`: applying an environment of 10 000 keys, 1 000 functions and 10 000
//!   sealed secrets (`support/large_environment.rs`) to an empty store.
//! - `snapshot_parse`, `snapshot_encode`: decoding that environment's snapshot as the data
//!   plane reads it from Redis, and encoding it as the control plane publishes it, in JSON and
//!   in the binary encoding.
//! - `secret_first_use`: the first use of a secret (opening it, its forms and automaton)
//!   against a later use.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Arc;

use airlock_data_plane::hot_path::{render, RequestRedaction, StreamRedactor};
use airlock_data_plane::scope::KeyScope;
use airlock_data_plane::snapshot::{CompiledEnvironment, Snapshot, SnapshotStore};
use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::hosts::HostPattern;
use airlock_shared::seal::{OpeningKey, OpeningKeyring, SecretIdentity};
use airlock_shared::wire::{
    decode_snapshot, ApiKeyGrant, EnvironmentSnapshot, FunctionSpec, HeaderSpec, SecretEntry,
    SnapshotEncoding,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use serde_json::{json, Map, Value};
use uuid::Uuid;

mod support {
    pub mod large_environment;
}

const TENANT: Uuid = Uuid::from_u128(1);
const ENV: Uuid = Uuid::from_u128(2);
const KEYS: usize = 10_000;
const FUNCTIONS: usize = 1_000;
const HOST: &str = "api.example.com";

/// The `i`th API key, shaped like a real one (`ak_` and 43 characters).
fn token(i: usize) -> String {
    format!("ak_{i:0>43}")
}

fn function_name(i: usize) -> String {
    format!("fn_{i:04}")
}

fn grant(i: usize, functions: Vec<String>) -> ApiKeyGrant {
    ApiKeyGrant {
        id: Uuid::from_u128(1_000 + i as u128),
        name: format!("key {i}"),
        hash: ApiKeyHash::of(&token(i)),
        functions,
        expires_at: None,
    }
}

fn get_function(name: &str) -> FunctionSpec {
    FunctionSpec {
        id: Uuid::new_v4(),
        name: name.into(),
        method: "GET".into(),
        url: format!("https://{HOST}/v1/{name}"),
        headers: vec![],
        body: None,
        timeout_ms: 1_000,
    }
}

/// An empty snapshot of the benchmark environment.
fn empty_snapshot() -> EnvironmentSnapshot {
    EnvironmentSnapshot {
        tenant_id: TENANT,
        environment_id: ENV,
        revision: 1,
        functions: BTreeMap::new(),
        secrets: BTreeMap::new(),
        api_keys: vec![],
        oauth_clients: Default::default(),
        oauth_connections: Default::default(),
        oauth_authorizations: Default::default(),
    }
}

/// Seal `value` as secret `name` of the benchmark environment, bound to [`HOST`].
fn sealed(key: &OpeningKey, name: &str, value: &str) -> SecretEntry {
    let identity = SecretIdentity {
        tenant_id: TENANT,
        environment_id: ENV,
        name,
        version: 1,
    };
    SecretEntry {
        sealed: key.sealing_key().seal(identity, value).expect("seals"),
        allowed_hosts: vec![HostPattern::parse(HOST).expect("host pattern")],
    }
}

/// A snapshot of 10 000 keys and 1 000 functions, applied through the real store. Keys
/// 0..=3 have the policies the scope benchmarks use; the others have mostly distinct
/// policies (two exact names and a glob), the worst case for sharing.
fn large_snapshot() -> Arc<Snapshot> {
    let mut snapshot = empty_snapshot();
    for i in 0..FUNCTIONS {
        let name = function_name(i);
        snapshot.functions.insert(name.clone(), get_function(&name));
    }
    let policies: [Vec<String>; 4] = [
        vec!["fn_0234".into()],
        vec!["*".into()],
        vec!["fn_02*".into()],
        // A longer list where only the last pattern matches.
        (0..19)
            .map(|i| format!("other_{i}_*"))
            .chain(["fn_0234".to_string()])
            .collect(),
    ];
    let scoped = policies.len();
    for (i, policy) in policies.into_iter().enumerate() {
        snapshot.api_keys.push(grant(i, policy));
    }
    for i in scoped..KEYS {
        snapshot.api_keys.push(grant(
            i,
            vec![
                function_name(i % FUNCTIONS),
                function_name((i * 7) % FUNCTIONS),
                format!("fn_{}*", i % 10),
            ],
        ));
    }
    let store = SnapshotStore::new(OpeningKey::generate().into());
    store.apply(snapshot);
    store.load()
}

fn key_lookup(c: &mut Criterion) {
    let snapshot = large_snapshot();
    let plain: HashMap<String, usize> = (0..KEYS).map(|i| (token(i), i)).collect();
    let known = token(4_321);
    let unknown = token(KEYS + 1);
    assert!(snapshot.key(&ApiKeyHash::of(&known)).is_some());

    let mut group = c.benchmark_group("key_lookup");
    group.bench_function("baseline_hashmap_of_plain_tokens", |b| {
        b.iter(|| plain.get(black_box(known.as_str())).copied())
    });
    group.bench_function("sha256_only", |b| {
        b.iter(|| ApiKeyHash::of(black_box(&known)))
    });
    // What `authenticate` does: hash, look up, clone the binding (an `Arc`).
    group.bench_function("hash_and_index_known_key", |b| {
        b.iter(|| snapshot.key(&ApiKeyHash::of(black_box(&known))).cloned())
    });
    group.bench_function("hash_and_index_unknown_key", |b| {
        b.iter(|| snapshot.key(&ApiKeyHash::of(black_box(&unknown))).cloned())
    });
    group.finish();
}

fn scope_decision(c: &mut Criterion) {
    let snapshot = large_snapshot();
    let binding = |i: usize| {
        snapshot
            .key(&ApiKeyHash::of(&token(i)))
            .expect("key")
            .clone()
    };
    let (exact, star, glob, long_list) = (binding(0), binding(1), binding(2), binding(3));
    for key in [&exact, &star, &glob, &long_list] {
        // Warm: the enforcer is built and the decision about fn_0234 cached.
        assert!(key.may_invoke("fn_0234"));
    }

    let mut group = c.benchmark_group("scope_decision");
    // The same question answered without casbin or a cache: the grant's patterns matched
    // one by one (`airlock_shared::grants::matches`).
    let any_pattern = |patterns: &[String], name: &str| {
        patterns
            .iter()
            .any(|pattern| airlock_shared::grants::matches(pattern, name))
    };
    let exact_patterns = exact.grant().functions.clone();
    group.bench_function("baseline_grant_patterns_exact", |b| {
        b.iter(|| any_pattern(&exact_patterns, black_box("fn_0234")))
    });
    let long_patterns = long_list.grant().functions.clone();
    group.bench_function("baseline_grant_patterns_20", |b| {
        b.iter(|| any_pattern(&long_patterns, black_box("fn_0234")))
    });
    // Cached: function lookup for its slot, then one atomic load.
    for (label, key) in [
        ("exact", &exact),
        ("star", &star),
        ("glob", &glob),
        ("20_patterns", &long_list),
    ] {
        group.bench_function(format!("cached_{label}"), |b| {
            b.iter(|| key.may_invoke(black_box("fn_0234")))
        });
    }
    // A name not in the snapshot has no slot to cache in: it is decided every time, by
    // matching the patterns directly (the same answer as casbin's, see `scope`). Until
    // casbin decided these, the benches were called `casbin_uncached_*`.
    group.bench_function("uncached_glob_missing_function", |b| {
        b.iter(|| glob.may_invoke(black_box("fn_02_missing")))
    });
    group.bench_function("uncached_20_patterns_missing_function", |b| {
        b.iter(|| long_list.may_invoke(black_box("fn_0234_missing")))
    });
    // The first use of a policy: its enforcer is built, then the decision is evaluated.
    for (label, patterns) in [
        ("exact", exact.grant().functions.clone()),
        ("20_patterns", long_list.grant().functions.clone()),
    ] {
        group.bench_function(format!("first_decision_builds_enforcer_{label}"), |b| {
            // By reference: dropping the enforcer is not part of the decision.
            b.iter_batched_ref(
                || KeyScope::new(patterns.clone(), FUNCTIONS),
                |scope| scope.allows(Some(234), black_box("fn_0234")),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

const API_TOKEN: &str = "sk_live_51HcQv2Kx9aLmN3pQrStUvWxYz0123456789abcdEFGH";

fn template_render(c: &mut Criterion) {
    let key = OpeningKey::generate();
    let mut snapshot = empty_snapshot();
    snapshot
        .secrets
        .insert("API_TOKEN".into(), sealed(&key, "API_TOKEN", API_TOKEN));
    snapshot.functions.insert(
        "create_order".into(),
        FunctionSpec {
            id: Uuid::new_v4(),
            name: "create_order".into(),
            method: "POST".into(),
            url: format!(
                "https://{HOST}/v1/customers/{{{{args.customer_id}}}}/orders\
                 ?status={{{{args.status}}}}&limit={{{{args.limit}}}}"
            ),
            headers: vec![
                HeaderSpec {
                    name: "authorization".into(),
                    value: "Bearer {{secrets.API_TOKEN}}".into(),
                },
                HeaderSpec {
                    name: "accept".into(),
                    value: "application/json".into(),
                },
            ],
            body: Some(
                r#"{"customer": "{{args.customer_id}}", "note": "{{args.note}}", "items": {{args.items}}, "express": {{args.express}}}"#
                    .into(),
            ),
            timeout_ms: 5_000,
        },
    );
    let environment = CompiledEnvironment::compile(snapshot, &key.into());
    let function = environment
        .function("create_order")
        .expect("compiles")
        .clone();
    let args: Map<String, Value> = match json!({
        "customer_id": "cus_9 Zx/ä",
        "status": "open & pending",
        "limit": 25,
        "note": "Leave at the door, \"ring twice\"",
        "items": [{"sku": "A-100", "qty": 2}, {"sku": "B-220", "qty": 1}],
        "express": true,
    }) {
        Value::Object(args) => args,
        _ => unreachable!("an object"),
    };
    let invocation = render(&function, &environment, &args).expect("renders");
    assert_eq!(invocation.secrets, ["API_TOKEN"]);

    let mut group = c.benchmark_group("template_render");
    // The same strings glued together with no encoding, no checks, no HTTP types.
    group.bench_function("baseline_format", |b| {
        b.iter(|| {
            let a = black_box(&args);
            let path = format!(
                "/v1/customers/{}/orders?status={}&limit={}",
                a["customer_id"], a["status"], a["limit"]
            );
            let authorization = format!("Bearer {}", black_box(API_TOKEN));
            let body = format!(
                r#"{{"customer": {}, "note": {}, "items": {}, "express": {}}}"#,
                a["customer_id"], a["note"], a["items"], a["express"]
            );
            (path, authorization, body)
        })
    });
    // Template, secret lookup, host binding check, header and body conversion.
    group.bench_function("render_invocation", |b| {
        b.iter(|| render(&function, &environment, black_box(&args)).map(|i| i.body))
    });
    group.finish();
}

/// A JSON response body of about `size` bytes (an array of customer records); with
/// `secret`, one record in the middle quotes it, as an echoing upstream would.
fn json_body(size: usize, secret: Option<&str>) -> Vec<u8> {
    let mut records = Vec::new();
    let mut i = 0;
    let mut len = 2;
    while len < size {
        let record = json!({
            "id": format!("cus_{i:08}"),
            "name": format!("Customer {i}"),
            "email": format!("customer{i}@example.org"),
            "created_at": "2026-11-30T12:34:56Z",
            "balance": i * 37 % 10_000,
            "tags": ["retail", "eu"],
        });
        len += record.to_string().len() + 1;
        records.push(record);
        i += 1;
    }
    if let Some(secret) = secret {
        let middle = records.len() / 2;
        records[middle]["debug"] = json!({ "authorization": format!("Bearer {secret}") });
    }
    serde_json::to_vec(&Value::Array(records)).expect("serializes")
}

/// An environment holding `count` secrets, and a redaction for a request that injected all
/// of them.
fn redaction_for(count: usize) -> RequestRedaction {
    let key = OpeningKey::generate();
    let mut snapshot = empty_snapshot();
    let names: Vec<String> = (0..count).map(|i| format!("SECRET_{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        snapshot
            .secrets
            .insert(name.clone(), sealed(&key, name, &secret_value(i)));
    }
    let environment = CompiledEnvironment::compile(snapshot, &key.into());
    // Opens the secrets (their first use): not part of what is measured.
    environment.request_redaction(names.iter().map(String::as_str))
}

/// Secret `i`: 48 characters, like an API token.
fn secret_value(i: usize) -> String {
    format!("sk_live_{i:02}HcQv2Kx9aLmN3pQrStUvWxYz0123456789abcd")
}

fn redaction(c: &mut Criterion) {
    let redactions = [(1, redaction_for(1)), (10, redaction_for(10))];
    let needle = secret_value(0);
    let finder = memchr::memmem::Finder::new(needle.as_bytes());
    for (label, size) in [("4KiB", 4 * 1024), ("64KiB", 64 * 1024)] {
        let clean = json_body(size, None);
        let leaking = json_body(size, Some(&needle));
        let mut group = c.benchmark_group(format!("redaction_{label}"));
        group.throughput(Throughput::Bytes(clean.len() as u64));
        // Copying the body once is the least a proxy that buffers it does.
        group.bench_function("baseline_copy", |b| {
            b.iter(|| Bytes::copy_from_slice(black_box(&clean)))
        });
        // One needle, exact case: a lower bound for looking for one form of one secret.
        group.bench_function("baseline_memmem_1_needle", |b| {
            b.iter(|| finder.find(black_box(&clean)))
        });
        for (count, redaction) in &redactions {
            for (state, body) in [("clean", &clean), ("leaking", &leaking)] {
                group.throughput(Throughput::Bytes(body.len() as u64));
                // What the proxy does per response: a redactor per request, the body pushed
                // through it (here in one piece, as the last chunk).
                group.bench_function(format!("stream_{count}_secrets_{state}"), |b| {
                    b.iter(|| {
                        let mut redactor = StreamRedactor::new(redaction.clone());
                        redactor.push(black_box(body), true)
                    })
                });
            }
        }
        // Sanity: the leaking body loses the secret, the clean one is unchanged.
        let mut redactor = StreamRedactor::new(redactions[0].1.clone());
        let out = redactor.push(&leaking, true);
        assert!(memchr::memmem::find(&out, needle.as_bytes()).is_none());
        let mut redactor = StreamRedactor::new(redactions[1].1.clone());
        assert_eq!(&redactor.push(&clean, true)[..], &clean[..]);
        group.finish();
    }
}

/// What the harness's upstream answers (`docs/BENCHMARKS.md`, scenario D) and the longest
/// value among its response headers: most responses and header values are this small.
const SMALL_BODY: &[u8] =
    br#"{"ok":true,"id":"ord_4242","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}]}"#;
const DATE_HEADER: &[u8] = b"Fri, 04 Dec 2026 07:23:09 GMT";

fn redaction_small(c: &mut Criterion) {
    let redaction = redaction_for(1);
    let mut group = c.benchmark_group("redaction_small");
    group.bench_function("baseline_copy_81B", |b| {
        b.iter(|| Bytes::copy_from_slice(black_box(SMALL_BODY)))
    });
    // The 81-byte body, and the same with the secret's form quoted (the text grows to 130).
    let leaking = [
        &SMALL_BODY[..40],
        secret_value(0).as_bytes(),
        &SMALL_BODY[40..],
    ]
    .concat();
    for (state, body) in [("clean", SMALL_BODY), ("leaking", &leaking[..])] {
        group.bench_function(format!("stream_1_secret_{state}"), |b| {
            b.iter(|| {
                let mut redactor = StreamRedactor::new(redaction.clone());
                redactor.push(black_box(body), true)
            })
        });
    }
    group.bench_function("header_value_1_secret", |b| {
        b.iter(|| redaction.redact_header_value(black_box(DATE_HEADER)))
    });
    let long_value = [DATE_HEADER, b"; ", DATE_HEADER].concat();
    group.bench_function("header_value_1_secret_60B", |b| {
        b.iter(|| redaction.redact_header_value(black_box(&long_value)))
    });
    group.finish();
}

fn snapshot_apply(c: &mut Criterion) {
    use support::large_environment::{large_environment, FUNCTIONS, KEYS, SECRETS};
    let key = OpeningKey::generate();
    let snapshot = large_environment(&key);
    let keys: OpeningKeyring = key.into();
    assert_eq!(
        (
            snapshot.api_keys.len(),
            snapshot.functions.len(),
            snapshot.secrets.len()
        ),
        (KEYS, FUNCTIONS, SECRETS)
    );

    let mut group = c.benchmark_group("snapshot_apply");
    // Hundreds of milliseconds per iteration: few samples, one iteration each.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    // What the sync service does with a snapshot read from Redis: compile it and swap it in.
    // A new store each time, so the revision is always new; the store is returned so that
    // dropping it is not timed.
    group.bench_function("apply_10k_keys_1k_functions_10k_secrets", |b| {
        b.iter_batched(
            || (SnapshotStore::new(keys.clone()), snapshot.clone()),
            |(store, snapshot)| {
                store.apply(snapshot);
                store
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// What the sync service does with the bytes it read from Redis before compiling them:
/// decode them (`decode_snapshot`, as `sync.rs`), for the large environment of
/// `snapshot_apply`, in both encodings: JSON (`parse_*`, as before the binary encoding) and
/// binary (`decode_binary_*`).
fn snapshot_parse(c: &mut Criterion) {
    use support::large_environment::large_environment;
    let snapshot = large_environment(&OpeningKey::generate());
    let mut group = c.benchmark_group("snapshot_parse");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for (name, encoding) in [
        (
            "parse_10k_keys_1k_functions_10k_secrets",
            SnapshotEncoding::Json,
        ),
        (
            "decode_binary_10k_keys_1k_functions_10k_secrets",
            SnapshotEncoding::Binary,
        ),
    ] {
        let bytes = encoding.encode(&snapshot).expect("encodes");
        assert_eq!(SnapshotEncoding::of(&bytes), encoding);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        // The decoded snapshot is returned so that dropping it is not timed.
        group.bench_function(name, |b| {
            b.iter(|| decode_snapshot(black_box(&bytes)).expect("decodes"))
        });
    }
    group.finish();
}

/// What the publisher does before its `SET`: encode the large environment, in both encodings.
fn snapshot_encode(c: &mut Criterion) {
    use support::large_environment::large_environment;
    let snapshot = large_environment(&OpeningKey::generate());
    let mut group = c.benchmark_group("snapshot_encode");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for encoding in SnapshotEncoding::ALL {
        group.bench_function(
            format!("{encoding}_10k_keys_1k_functions_10k_secrets"),
            |b| b.iter(|| encoding.encode(black_box(&snapshot)).expect("encodes")),
        );
    }
    group.finish();
}

/// The first use of a secret (open it, compute its forms, build its automaton) against a
/// warm use (the cached automaton), as `request_redaction` does for a request injecting it.
fn secret_first_use(c: &mut Criterion) {
    let key = OpeningKey::generate();
    let mut snapshot = empty_snapshot();
    snapshot
        .secrets
        .insert("API_TOKEN".into(), sealed(&key, "API_TOKEN", API_TOKEN));
    let keys: OpeningKeyring = key.into();
    let warm = CompiledEnvironment::compile(snapshot.clone(), &keys);
    assert!(warm.secret("API_TOKEN").is_some());

    let mut group = c.benchmark_group("secret_first_use");
    // A freshly compiled environment per iteration (outside the timing): its secret is still
    // sealed. The environment is returned so that dropping it is not timed.
    group.bench_function("cold_open_forms_automaton", |b| {
        b.iter_batched(
            || CompiledEnvironment::compile(snapshot.clone(), &keys),
            |environment| {
                let redaction = environment.request_redaction(black_box(["API_TOKEN"]));
                (environment, redaction)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("warm_cached", |b| {
        b.iter(|| warm.request_redaction(black_box(["API_TOKEN"])))
    });
    group.finish();
}

criterion_group!(
    benches,
    key_lookup,
    scope_decision,
    template_render,
    redaction,
    redaction_small,
    snapshot_apply,
    snapshot_parse,
    snapshot_encode,
    secret_first_use
);
criterion_main!(benches);
