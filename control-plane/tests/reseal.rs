//! Sealing-key rotation: `airlock reseal` moves every stored secret version from the old key to
//! the new one with the same identity, on SQLite and PostgreSQL, through the library and
//! through the binary (which republishes to a real Redis and prints no value).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use airlock_control_plane::domain::reseal::{self, ResealOptions, SkipReason};
use airlock_control_plane::entity::{environment, secret, secret_version};
use airlock_control_plane::files;
use airlock_shared::keys::RedisNames;
use airlock_shared::seal::{OpeningKey, OpeningKeyring, SealError, SealedSecret, SecretIdentity};
use airlock_shared::wire::{decode_snapshot, EnvironmentSnapshot};
use common::{TestApp, REDIS_URL};
use redis::AsyncCommands;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

on_both_backends!(
    reseal_moves_every_version_to_the_new_key_once,
    reseal_command_republishes_and_prints_no_value,
);

/// One stored secret version with what its ciphertext is bound to.
#[derive(Debug, Clone)]
struct StoredVersion {
    id: Uuid,
    tenant_id: Uuid,
    environment_id: Uuid,
    name: String,
    version: i32,
    raw: String,
}

impl StoredVersion {
    fn sealed(&self) -> SealedSecret {
        serde_json::from_str(&self.raw).unwrap()
    }

    fn identity(&self) -> SecretIdentity<'_> {
        SecretIdentity {
            tenant_id: self.tenant_id,
            environment_id: self.environment_id,
            name: &self.name,
            version: self.version,
        }
    }
}

/// Every stored version, keyed by (secret name, version).
async fn stored_versions(db: &DatabaseConnection) -> BTreeMap<(String, i32), StoredVersion> {
    let versions: Vec<(Uuid, Uuid, i32, String)> = secret_version::Entity::find()
        .select_only()
        .columns([
            secret_version::Column::Id,
            secret_version::Column::SecretId,
            secret_version::Column::Version,
            secret_version::Column::Sealed,
        ])
        .into_tuple()
        .all(db)
        .await
        .unwrap();
    let secrets: BTreeMap<Uuid, (Uuid, String)> = secret::Entity::find()
        .select_only()
        .columns([
            secret::Column::Id,
            secret::Column::EnvironmentId,
            secret::Column::Name,
        ])
        .into_tuple::<(Uuid, Uuid, String)>()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, environment, name)| (id, (environment, name)))
        .collect();
    let tenants: BTreeMap<Uuid, Uuid> = environment::Entity::find()
        .select_only()
        .columns([environment::Column::Id, environment::Column::TenantId])
        .into_tuple::<(Uuid, Uuid)>()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    versions
        .into_iter()
        .map(|(id, secret_id, version, raw)| {
            let (environment_id, name) = secrets[&secret_id].clone();
            (
                (name.clone(), version),
                StoredVersion {
                    id,
                    tenant_id: tenants[&environment_id],
                    environment_id,
                    name,
                    version,
                    raw,
                },
            )
        })
        .collect()
}

async fn overwrite_sealed(db: &DatabaseConnection, version_id: Uuid, sealed: &SealedSecret) {
    secret_version::Entity::update_many()
        .col_expr(
            secret_version::Column::Sealed,
            Expr::value(serde_json::to_string(sealed).unwrap()),
        )
        .filter(secret_version::Column::Id.eq(version_id))
        .exec(db)
        .await
        .unwrap();
}

/// A distinct value per secret version, so any leak is recognisable.
fn canary(name: &str, version: i32) -> String {
    format!("canary-{name}-v{version}-7f3e")
}

async fn reseal_moves_every_version_to_the_new_key_once(app: TestApp) {
    let db = app.state.db.clone();
    let old = app.opening_key.clone();
    let new = OpeningKey::generate();
    let third = OpeningKey::generate();
    let tenant = app.create_tenant("acme").await;
    let prod = app.create_environment(&tenant, "prod").await;
    let staging = app.create_environment(&tenant, "staging").await;
    for version in 1..=3 {
        app.set_secret(&prod, "API_TOKEN", &canary("API_TOKEN", version))
            .await;
    }
    app.set_secret(&prod, "SIGNING_KEY", &canary("SIGNING_KEY", 1))
        .await;
    app.set_secret(&staging, "WEBHOOK_SECRET", &canary("WEBHOOK_SECRET", 1))
        .await;
    app.set_secret(&staging, "LEGACY", "replaced below").await;
    app.set_secret(&staging, "COPIED", "replaced below").await;

    let before = stored_versions(&db).await;
    // LEGACY is sealed to a key nobody gave the tool; COPIED carries another secret's
    // ciphertext (sealed to the old key, but bound to API_TOKEN v1's identity).
    let legacy = &before[&("LEGACY".to_string(), 1)];
    overwrite_sealed(
        &db,
        legacy.id,
        &third
            .sealing_key()
            .seal(legacy.identity(), "legacy-value")
            .unwrap(),
    )
    .await;
    let copied = &before[&("COPIED".to_string(), 1)];
    overwrite_sealed(
        &db,
        copied.id,
        &before[&("API_TOKEN".to_string(), 1)].sealed(),
    )
    .await;
    let before = stored_versions(&db).await;
    assert!(before
        .values()
        .all(|v| v.sealed().key_id != new.sealing_key().key_id()));

    let from = OpeningKeyring::from(old.clone());
    let to = new.sealing_key();

    // A dry run counts and changes nothing.
    let dry = reseal::reseal(
        &db,
        &from,
        to,
        ResealOptions {
            batch_size: 2,
            dry_run: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.resealed, 5);
    assert_eq!(
        stored_versions(&db)
            .await
            .values()
            .map(|v| &v.raw)
            .collect::<Vec<_>>(),
        before.values().map(|v| &v.raw).collect::<Vec<_>>()
    );

    // Batches of 2: several transactions.
    let report = reseal::reseal(
        &db,
        &from,
        to,
        ResealOptions {
            batch_size: 2,
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.resealed, 5);
    assert_eq!(report.already_sealed_to_new_key, 0);
    assert_eq!(
        report.environments,
        [prod.parse::<Uuid>().unwrap(), staging.parse().unwrap()]
            .into_iter()
            .collect()
    );
    let mut skipped: Vec<(String, SkipReason)> = report
        .skipped
        .iter()
        .map(|s| (s.secret_name.clone().unwrap(), s.reason))
        .collect();
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        skipped,
        vec![
            ("COPIED".to_string(), SkipReason::DoesNotOpen),
            ("LEGACY".to_string(), SkipReason::UnknownKey),
        ]
    );
    let legacy_report = report
        .skipped
        .iter()
        .find(|s| s.reason == SkipReason::UnknownKey)
        .unwrap();
    assert_eq!(
        legacy_report.key_id.as_deref(),
        Some(third.sealing_key().key_id())
    );
    assert_eq!(legacy_report.environment_id, Some(staging.parse().unwrap()));

    let after = stored_versions(&db).await;
    assert_eq!(after.len(), before.len());
    let expected = [
        (("API_TOKEN", 1), canary("API_TOKEN", 1)),
        (("API_TOKEN", 2), canary("API_TOKEN", 2)),
        (("API_TOKEN", 3), canary("API_TOKEN", 3)),
        (("SIGNING_KEY", 1), canary("SIGNING_KEY", 1)),
        (("WEBHOOK_SECRET", 1), canary("WEBHOOK_SECRET", 1)),
    ];
    for ((name, version), value) in expected {
        let stored = &after[&(name.to_string(), version)];
        let sealed = stored.sealed();
        assert_eq!(sealed.key_id, new.sealing_key().key_id());
        assert_eq!(sealed.version, version);
        // Same identity: opens with the new key exactly where it opened before.
        assert_eq!(
            new.open(stored.identity(), &sealed).unwrap().expose(),
            value
        );
        assert!(matches!(
            old.open(stored.identity(), &sealed),
            Err(SealError::UnknownKey(_))
        ));
        assert_eq!(stored.id, before[&(name.to_string(), version)].id);
    }
    let staging_rows: Vec<&StoredVersion> = after
        .values()
        .filter(|v| v.environment_id == staging.parse::<Uuid>().unwrap())
        .collect();
    assert_eq!(staging_rows.len(), 1 + 2, "{staging_rows:?}");
    // Left alone: byte for byte.
    for name in ["LEGACY", "COPIED"] {
        let key = (name.to_string(), 1);
        assert_eq!(after[&key].raw, before[&key].raw, "{name}");
    }
    assert_eq!(
        third
            .open(
                after[&("LEGACY".to_string(), 1)].identity(),
                &after[&("LEGACY".to_string(), 1)].sealed()
            )
            .unwrap()
            .expose(),
        "legacy-value"
    );

    // Second run: nothing to do, nothing changes.
    let again = reseal::reseal(&db, &from, to, ResealOptions::default())
        .await
        .unwrap();
    assert_eq!(again.resealed, 0);
    assert_eq!(again.already_sealed_to_new_key, 5);
    assert_eq!(again.skipped.len(), 2);
    assert!(again.environments.is_empty());
    let unchanged = stored_versions(&db).await;
    for (key, stored) in &after {
        assert_eq!(unchanged[key].raw, stored.raw, "{key:?}");
    }

    // Nothing anywhere in the database holds a value in plaintext.
    let rows = app.db.all_rows_as_text().await.join("\n");
    for value in ["canary-", "legacy-value"] {
        assert!(!rows.contains(value), "{value} stored in plaintext");
    }
}

const BINARY: &str = env!("CARGO_BIN_EXE_airlock");

struct CommandOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn run_reseal(args: &[&str], key_file: &Path, database_url: &str) -> CommandOutput {
    let output = tokio::process::Command::new(BINARY)
        .env_clear()
        .env("RUST_LOG", "warn")
        .arg("reseal")
        .arg("--from-key-file")
        .arg(key_file)
        .args(["--database-url", database_url])
        .args(args)
        .output()
        .await
        .unwrap();
    CommandOutput {
        success: output.status.success(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

async fn reseal_command_republishes_and_prints_no_value(app: TestApp) {
    let db = app.state.db.clone();
    let old = app.opening_key.clone();
    let new = OpeningKey::generate();
    let new_public = new.sealing_key().to_base64();
    let tenant = app.create_tenant("acme").await;
    let prod = app.create_environment(&tenant, "prod").await;
    let staging = app.create_environment(&tenant, "staging").await;
    app.set_secret(&prod, "API_TOKEN", &canary("API_TOKEN", 1))
        .await;
    app.set_secret(&prod, "API_TOKEN", &canary("API_TOKEN", 2))
        .await;
    app.set_secret(&staging, "WEBHOOK_SECRET", &canary("WEBHOOK_SECRET", 1))
        .await;
    let values = [
        canary("API_TOKEN", 1),
        canary("API_TOKEN", 2),
        canary("WEBHOOK_SECRET", 1),
    ];

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("old.key");
    files::write_new_private(&key_file, &format!("{}\n", old.to_base64().as_str())).unwrap();
    let names = RedisNames::new(format!("airlock_reseal_{}", Uuid::new_v4().simple()));
    let url = app.db.url();
    let redis_args = [
        "--to-public-key",
        new_public.as_str(),
        "--redis-url",
        REDIS_URL,
        "--redis-prefix",
        names.prefix(),
    ];
    let assert_no_secrets = |output: &CommandOutput| {
        let all = format!("{}{}", output.stdout, output.stderr);
        for value in &values {
            assert!(!all.contains(value.as_str()), "printed a value: {all}");
        }
        assert!(!all.contains("canary"), "{all}");
        assert!(
            !all.contains(old.to_base64().as_str()),
            "printed the old key"
        );
        assert!(!all.contains(new.to_base64().as_str()));
    };

    let first = run_reseal(&redis_args, &key_file, &url).await;
    assert!(first.success, "{}{}", first.stdout, first.stderr);
    assert_no_secrets(&first);
    assert!(
        first
            .stdout
            .contains("resealed: 3 secret version(s) in 2 environment(s)"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("left as they were: 0"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains(&format!(
            "republished: 2 environment(s) to Redis (prefix {}, binary snapshots)",
            names.prefix()
        )),
        "{}",
        first.stdout
    );

    // Data planes get snapshots whose secrets open with the new key.
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (environment, name, value) in [
        (&prod, "API_TOKEN", canary("API_TOKEN", 2)),
        (&staging, "WEBHOOK_SECRET", canary("WEBHOOK_SECRET", 1)),
    ] {
        let environment_id: Uuid = environment.parse().unwrap();
        let stored: Vec<u8> = redis
            .get(names.environment_snapshot(&environment_id))
            .await
            .unwrap();
        assert!(!stored.windows(6).any(|w| w == b"canary"));
        let snapshot: EnvironmentSnapshot = decode_snapshot(&stored).unwrap();
        let entry = &snapshot.secrets[name];
        assert_eq!(entry.sealed.key_id, new.sealing_key().key_id());
        let identity = SecretIdentity {
            tenant_id: snapshot.tenant_id,
            environment_id,
            name,
            version: entry.sealed.version,
        };
        assert_eq!(new.open(identity, &entry.sealed).unwrap().expose(), value);
    }
    let after_first = stored_versions(&db).await;
    assert!(after_first
        .values()
        .all(|v| v.sealed().key_id == new.sealing_key().key_id()));

    // Idempotent: a second run changes nothing.
    let second = run_reseal(&redis_args, &key_file, &url).await;
    assert!(second.success, "{}{}", second.stdout, second.stderr);
    assert_no_secrets(&second);
    assert!(
        second.stdout.contains("resealed: 0 secret version(s)"),
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains("already sealed to the new key: 3"),
        "{}",
        second.stdout
    );
    let after_second = stored_versions(&db).await;
    for (key, stored) in &after_first {
        assert_eq!(after_second[key].raw, stored.raw);
    }

    // A version sealed to a key nobody holds: reported by name, left alone, non-zero exit.
    // Another one, written by a control plane still sealing to the old key, is re-sealed;
    // without Redis the run says that nothing was republished.
    app.set_secret(&staging, "LEGACY", "placeholder").await;
    app.set_secret(&prod, "LATE", "late-value-b1e2").await;
    let legacy = stored_versions(&db).await[&("LEGACY".to_string(), 1)].clone();
    let stray = OpeningKey::generate();
    let stray_sealed = stray
        .sealing_key()
        .seal(legacy.identity(), "stray-value")
        .unwrap();
    overwrite_sealed(&db, legacy.id, &stray_sealed).await;
    let third = run_reseal(&["--to-public-key", new_public.as_str()], &key_file, &url).await;
    assert!(!third.success);
    assert_no_secrets(&third);
    assert!(!third.stdout.contains("stray-value") && !third.stderr.contains("stray-value"));
    assert!(
        third.stdout.contains(&format!(
            "secret LEGACY version 1 (environment {staging}, secret version {}, key {})",
            legacy.id,
            stray.sealing_key().key_id()
        )),
        "{}",
        third.stdout
    );
    assert!(!third.stdout.contains("late-value") && !third.stderr.contains("late-value"));
    assert!(
        third
            .stdout
            .contains("resealed: 1 secret version(s) in 1 environment(s)"),
        "{}",
        third.stdout
    );
    assert!(third.stdout.contains("not republished"), "{}", third.stdout);
    let late = stored_versions(&db).await[&("LATE".to_string(), 1)].clone();
    assert_eq!(
        new.open(late.identity(), &late.sealed()).unwrap().expose(),
        "late-value-b1e2"
    );
    assert!(
        third.stdout.contains("left as they were: 1"),
        "{}",
        third.stdout
    );
    assert!(
        third.stderr.contains("left as they were"),
        "{}",
        third.stderr
    );
    assert_eq!(
        stored_versions(&db).await[&("LEGACY".to_string(), 1)].raw,
        serde_json::to_string(&stray_sealed).unwrap()
    );

    // Bad invocations are clear errors, not panics.
    let missing = run_reseal(&["--to-public-key", "short"], &key_file, &url).await;
    assert!(!missing.success);
    assert!(
        missing.stderr.contains("--to-public-key"),
        "{}",
        missing.stderr
    );
    let not_a_key = dir.path().join("not.key");
    std::fs::write(&not_a_key, "garbage-key-material").unwrap();
    let bad_key = run_reseal(&["--to-public-key", new_public.as_str()], &not_a_key, &url).await;
    assert!(!bad_key.success);
    assert!(
        bad_key.stderr.contains("does not hold valid opening keys"),
        "{}",
        bad_key.stderr
    );
    assert!(!bad_key.stderr.contains("garbage-key-material"));

    let keys: Vec<String> = redis.keys(format!("{}:*", names.prefix())).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
}
