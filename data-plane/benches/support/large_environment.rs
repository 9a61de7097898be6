//! The large environment of the snapshot-apply benchmark and of
//! `examples/large_environment_rss.rs`: 10 000 API keys, 1 000 functions and 10 000 secrets of
//! 40 characters, sealed to a real key. (A module of the bench and of the example, not a
//! bench target of its own: Cargo only picks up `benches/*.rs`.)

use std::collections::BTreeMap;

use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::hosts::HostPattern;
use airlock_shared::seal::{OpeningKey, SecretIdentity};
use airlock_shared::wire::{
    ApiKeyGrant, EnvironmentSnapshot, FunctionSpec, HeaderSpec, SecretEntry,
};
use uuid::Uuid;

pub const TENANT: Uuid = Uuid::from_u128(1);
pub const ENVIRONMENT: Uuid = Uuid::from_u128(3);
pub const KEYS: usize = 10_000;
pub const FUNCTIONS: usize = 1_000;
pub const SECRETS: usize = 10_000;
pub const HOST: &str = "api.example.com";

/// Name of secret `i`.
pub fn secret_name(i: usize) -> String {
    format!("SECRET_{i:05}")
}

/// Value of secret `i`: 40 characters, like an API token.
pub fn secret_value(i: usize) -> String {
    format!("sk_live_{i:05}HcQv2Kx9aLmN3pQrStUvWxYz012")
}

/// Function `i` sends secret `10 i` as a bearer token.
fn function(i: usize) -> FunctionSpec {
    let name = format!("fn_{i:04}");
    FunctionSpec {
        id: Uuid::from_u128(100_000 + i as u128),
        url: format!("https://{HOST}/v1/{name}"),
        name,
        method: "GET".into(),
        headers: vec![HeaderSpec {
            name: "authorization".into(),
            value: format!("Bearer {{{{secrets.{}}}}}", secret_name(i * 10)),
        }],
        body: None,
        timeout_ms: 1_000,
    }
}

/// The large environment, its secrets sealed to `key`. Keys have mostly distinct policies
/// (two exact names and a glob), the worst case for sharing scopes.
pub fn large_environment(key: &OpeningKey) -> EnvironmentSnapshot {
    let functions = (0..FUNCTIONS)
        .map(|i| {
            let spec = function(i);
            (spec.name.clone(), spec)
        })
        .collect();
    let secrets = (0..SECRETS)
        .map(|i| {
            let name = secret_name(i);
            let identity = SecretIdentity {
                tenant_id: TENANT,
                environment_id: ENVIRONMENT,
                name: &name,
                version: 1,
            };
            let entry = SecretEntry {
                sealed: key
                    .sealing_key()
                    .seal(identity, &secret_value(i))
                    .expect("seals"),
                allowed_hosts: vec![HostPattern::parse(HOST).expect("host pattern")],
            };
            (name, entry)
        })
        .collect::<BTreeMap<_, _>>();
    let api_keys = (0..KEYS)
        .map(|i| ApiKeyGrant {
            id: Uuid::from_u128(1_000_000 + i as u128),
            name: format!("key {i}"),
            hash: ApiKeyHash::of(&format!("ak_large_{i:0>40}")),
            functions: vec![
                format!("fn_{:04}", i % FUNCTIONS),
                format!("fn_{:04}", (i * 7) % FUNCTIONS),
                format!("fn_{}*", i % 10),
            ],
            expires_at: None,
        })
        .collect();
    EnvironmentSnapshot {
        tenant_id: TENANT,
        environment_id: ENVIRONMENT,
        revision: 1,
        functions,
        secrets,
        api_keys,
        oauth_clients: Default::default(),
        oauth_connections: Default::default(),
        oauth_authorizations: Default::default(),
    }
}
