//! `airlock reseal`: read the old opening key from its file, re-seal every secret version
//! sealed to it to the new public key ([`crate::domain::reseal`]), republish the affected
//! environments, and print what was done. Counts, names and ids only: never a value, never
//! a key.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Context;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::config::ResealConfig;
use crate::domain::reseal::{self, ResealOptions, ResealReport};
use crate::domain::snapshot;
use crate::publish::{RedisTransport, RevisionClock, SnapshotTransport};
use crate::{db, files};

/// Run the command. Fails (non-zero exit) when a version could not be re-sealed or an
/// environment could not be republished, after printing the full report.
pub async fn run(config: ResealConfig) -> anyhow::Result<()> {
    let from = files::read_opening_keys(&config.from_key_file)?;
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| db::sqlite_url(&config.data_dir));
    let database = db::connect_migrated(&url)
        .await
        .context("cannot open the database (DATABASE_URL or --data-dir)")?;

    let from_ids = from.key_ids().collect::<Vec<_>>().join(", ");
    println!(
        "re-sealing secret versions sealed to key {from_ids} to key {}{}",
        config.to_key.key_id(),
        if config.dry_run {
            " (dry run: nothing is written)"
        } else {
            ""
        }
    );
    let options = ResealOptions {
        batch_size: config.batch_size,
        dry_run: config.dry_run,
    };
    let result = reseal::reseal(&database, &from, &config.to_key, options).await;
    // The old private key is not needed any more: zeroized as it drops.
    drop(from);
    let report = result.map_err(|e| anyhow::anyhow!("re-sealing failed: {}", e.detail()))?;
    let mut stdout = std::io::stdout().lock();
    write_report(&mut stdout, &report, config.dry_run)?;
    drop(stdout);

    let republished = if config.dry_run || report.environments.is_empty() {
        Ok(())
    } else {
        match &config.redis {
            Some((url, names)) => {
                // A failure here still closes the database below.
                async {
                    let transport = RedisTransport::connect(url, names.clone())
                        .await
                        .context("cannot connect to Redis (REDIS_URL) to republish")?
                        .with_encoding(config.snapshot_encoding);
                    republish(&database, &transport, &report.environments).await
                }
                .await
            }
            None => {
                println!(
                    "not republished: no --redis-url. Data planes keep the old ciphertexts of {} environment(s) until each is published again: restart the control planes (they publish every environment at start) before removing the old key from the data planes",
                    report.environments.len()
                );
                Ok(())
            }
        }
    };
    database.close().await.context("closing the database")?;
    republished?;
    if !report.skipped.is_empty() {
        anyhow::bail!(
            "{} secret version(s) were left as they were (listed above)",
            report.skipped.len()
        );
    }
    Ok(())
}

/// The report, one fact per line.
pub fn write_report(
    out: &mut impl Write,
    report: &ResealReport,
    dry_run: bool,
) -> std::io::Result<()> {
    let verb = if dry_run { "would re-seal" } else { "resealed" };
    writeln!(
        out,
        "{verb}: {} secret version(s) in {} environment(s)",
        report.resealed,
        report.environments.len()
    )?;
    writeln!(
        out,
        "already sealed to the new key: {}",
        report.already_sealed_to_new_key
    )?;
    writeln!(out, "left as they were: {}", report.skipped.len())?;
    for skipped in &report.skipped {
        writeln!(
            out,
            "  secret {} version {} (environment {}, secret version {}, key {}): {}",
            skipped.secret_name.as_deref().unwrap_or("?"),
            skipped.version,
            skipped
                .environment_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "?".into()),
            skipped.version_id,
            skipped.key_id.as_deref().unwrap_or("?"),
            skipped.reason.describe()
        )?;
    }
    Ok(())
}

/// Publish the snapshot of each environment through Redis, so data planes switch to the
/// re-sealed ciphertexts now. Reports every failure, then fails if there was one.
async fn republish(
    db: &DatabaseConnection,
    transport: &RedisTransport,
    environments: &BTreeSet<Uuid>,
) -> anyhow::Result<()> {
    // Time-based revisions, like the control plane's: higher than anything it published
    // before the re-sealed versions were read.
    let clock = RevisionClock::default();
    let mut published = 0;
    let mut failed = 0;
    for &environment_id in environments {
        let outcome = match snapshot::build(db, environment_id, clock.next()).await {
            Ok(Some(snapshot)) => transport
                .send(&snapshot)
                .await
                .map(|()| true)
                .map_err(|e| e.to_string()),
            // Deleted meanwhile: nothing to publish.
            Ok(None) => Ok(false),
            Err(error) => Err(error.detail()),
        };
        match outcome {
            Ok(true) => published += 1,
            Ok(false) => {}
            Err(error) => {
                failed += 1;
                println!("could not republish environment {environment_id}: {error}");
            }
        }
    }
    println!(
        "republished: {published} environment(s) to Redis (prefix {}, {} snapshots)",
        transport.names().prefix(),
        transport.encoding()
    );
    if failed > 0 {
        anyhow::bail!(
            "{failed} environment(s) could not be republished; restart the control planes (they publish every environment at start) before removing the old key"
        );
    }
    Ok(())
}
