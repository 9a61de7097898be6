//! Re-sealing stored secret versions to a new sealing key, the database half of a sealing-key
//! rotation (`airlock reseal`; the procedure is in `docs/OPERATIONS.md`).
//!
//! The control plane normally cannot open secrets. Re-sealing needs the old opening key, which
//! the operator hands to `airlock reseal` for the duration of the run: each version sealed to
//! it is opened and sealed again to the new public key with the same identity (tenant,
//! environment, name, version), so it opens exactly where it opened before. Values exist
//! only in memory, zeroized when dropped, and are never logged, printed or returned.

use std::collections::{BTreeSet, HashMap};

use airlock_shared::seal::{OpeningKeyring, SealedSecret, SealingKey, SecretIdentity};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::begin_write;
use crate::entity::{environment, secret, secret_version};
use crate::error::AppError;

/// Default number of secret versions re-sealed per transaction.
pub const DEFAULT_BATCH_SIZE: u64 = 100;

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct ResealOptions {
    /// Secret versions handled per transaction (at least 1).
    pub batch_size: u64,
    /// Open and re-seal in memory, count, and roll every batch back.
    pub dry_run: bool,
}

impl Default for ResealOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            dry_run: false,
        }
    }
}

/// A secret version left as it was, and why. Names and ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedVersion {
    /// `secret_versions.id`.
    pub version_id: Uuid,
    pub environment_id: Option<Uuid>,
    pub secret_name: Option<String>,
    pub version: i32,
    /// The key it is sealed to, when readable.
    pub key_id: Option<String>,
    pub reason: SkipReason,
}

/// Why a version was not re-sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Sealed to a key that is neither an old key given nor the new key.
    UnknownKey,
    /// Sealed to an old key given, but does not open with it (tampered, or not sealed for
    /// its identity).
    DoesNotOpen,
    /// The stored sealed value is not valid JSON of a sealed secret.
    Malformed,
    /// Its secret or environment no longer exists.
    Orphaned,
    /// Changed by someone else between reading and writing (another `airlock reseal`).
    ChangedConcurrently,
}

impl SkipReason {
    /// A sentence for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::UnknownKey => {
                "sealed to a key that is neither in --from-key-file nor --to-public-key"
            }
            Self::DoesNotOpen => {
                "does not open with the old key (tampered, or not sealed for this identity)"
            }
            Self::Malformed => "the stored sealed value is malformed",
            Self::Orphaned => "its secret or environment no longer exists",
            Self::ChangedConcurrently => "changed by another process while re-sealing; run again",
        }
    }
}

/// What a run did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Versions re-sealed to the new key.
    pub resealed: usize,
    /// Versions already sealed to the new key: left alone.
    pub already_sealed_to_new_key: usize,
    /// Versions left alone for another reason.
    pub skipped: Vec<SkippedVersion>,
    /// Environments with at least one re-sealed version: their snapshots must be republished.
    pub environments: BTreeSet<Uuid>,
}

/// Re-seal every secret version sealed to a key in `from` to `to`, in batches, each in its
/// own transaction. Versions already sealed to `to` are left alone, so a second run changes
/// nothing; versions sealed to any other key are reported in [`ResealReport::skipped`].
pub async fn reseal(
    db: &DatabaseConnection,
    from: &OpeningKeyring,
    to: &SealingKey,
    options: ResealOptions,
) -> Result<ResealReport, AppError> {
    let batch_size = options.batch_size.max(1);
    let mut report = ResealReport::default();
    let mut after: Option<Uuid> = None;
    loop {
        let txn = begin_write(db).await?;
        let mut query = secret_version::Entity::find()
            .select_only()
            .columns([
                secret_version::Column::Id,
                secret_version::Column::SecretId,
                secret_version::Column::Version,
                secret_version::Column::Sealed,
            ])
            .order_by_asc(secret_version::Column::Id)
            .limit(batch_size);
        if let Some(after) = after {
            query = query.filter(secret_version::Column::Id.gt(after));
        }
        let rows: Vec<(Uuid, Uuid, i32, String)> = query.into_tuple().all(&txn).await?;
        let Some(last) = rows.last() else {
            txn.commit().await?;
            break;
        };
        after = Some(last.0);
        let owners = owners_of(&txn, &rows).await?;
        for (version_id, secret_id, version, stored) in rows {
            let row = VersionRow {
                version_id,
                version,
                stored: &stored,
                owner: owners.get(&secret_id),
            };
            reseal_one(&txn, from, to, row, &mut report).await?;
        }
        if options.dry_run {
            txn.rollback().await?;
        } else {
            txn.commit().await?;
        }
    }
    Ok(report)
}

/// Where a secret lives: what its ciphertexts are bound to.
struct Owner {
    tenant_id: Uuid,
    environment_id: Uuid,
    name: String,
}

struct VersionRow<'a> {
    version_id: Uuid,
    version: i32,
    stored: &'a str,
    owner: Option<&'a Owner>,
}

/// The owner (secret name, environment, tenant) of each secret the rows belong to.
async fn owners_of(
    db: &impl ConnectionTrait,
    rows: &[(Uuid, Uuid, i32, String)],
) -> Result<HashMap<Uuid, Owner>, AppError> {
    let secret_ids: BTreeSet<Uuid> = rows.iter().map(|row| row.1).collect();
    let secrets: Vec<(Uuid, Uuid, String)> = secret::Entity::find()
        .select_only()
        .columns([
            secret::Column::Id,
            secret::Column::EnvironmentId,
            secret::Column::Name,
        ])
        .filter(secret::Column::Id.is_in(secret_ids))
        .into_tuple()
        .all(db)
        .await?;
    let environment_ids: BTreeSet<Uuid> = secrets.iter().map(|s| s.1).collect();
    let tenants: HashMap<Uuid, Uuid> = environment::Entity::find()
        .select_only()
        .columns([environment::Column::Id, environment::Column::TenantId])
        .filter(environment::Column::Id.is_in(environment_ids))
        .into_tuple::<(Uuid, Uuid)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    Ok(secrets
        .into_iter()
        .filter_map(|(id, environment_id, name)| {
            let tenant_id = *tenants.get(&environment_id)?;
            Some((
                id,
                Owner {
                    tenant_id,
                    environment_id,
                    name,
                },
            ))
        })
        .collect())
}

async fn reseal_one(
    db: &impl ConnectionTrait,
    from: &OpeningKeyring,
    to: &SealingKey,
    row: VersionRow<'_>,
    report: &mut ResealReport,
) -> Result<(), AppError> {
    let skip = |key_id: Option<&str>, reason| SkippedVersion {
        version_id: row.version_id,
        environment_id: row.owner.map(|o| o.environment_id),
        secret_name: row.owner.map(|o| o.name.clone()),
        version: row.version,
        key_id: key_id.map(str::to_string),
        reason,
    };
    let Ok(sealed) = serde_json::from_str::<SealedSecret>(row.stored) else {
        report.skipped.push(skip(None, SkipReason::Malformed));
        return Ok(());
    };
    if sealed.key_id == to.key_id() {
        report.already_sealed_to_new_key += 1;
        return Ok(());
    }
    if !from.key_ids().any(|id| id == sealed.key_id) {
        report
            .skipped
            .push(skip(Some(&sealed.key_id), SkipReason::UnknownKey));
        return Ok(());
    }
    let Some(owner) = row.owner else {
        report
            .skipped
            .push(skip(Some(&sealed.key_id), SkipReason::Orphaned));
        return Ok(());
    };
    let identity = SecretIdentity {
        tenant_id: owner.tenant_id,
        environment_id: owner.environment_id,
        name: &owner.name,
        version: row.version,
    };
    // The value lives in `value` (zeroized on drop) only until it is sealed again.
    let Ok(value) = from.open(identity, &sealed) else {
        report
            .skipped
            .push(skip(Some(&sealed.key_id), SkipReason::DoesNotOpen));
        return Ok(());
    };
    let resealed = to
        .seal(identity, value.expose())
        .map_err(AppError::internal)?;
    drop(value);
    let resealed = serde_json::to_string(&resealed).map_err(AppError::internal)?;
    // Only if nobody changed it meanwhile: the stored text is compared, not just the id.
    let updated = secret_version::Entity::update_many()
        .col_expr(secret_version::Column::Sealed, Expr::value(resealed))
        .filter(secret_version::Column::Id.eq(row.version_id))
        .filter(secret_version::Column::Sealed.eq(row.stored))
        .exec(db)
        .await?;
    if updated.rows_affected == 1 {
        report.resealed += 1;
        report.environments.insert(owner.environment_id);
    } else {
        report
            .skipped
            .push(skip(Some(&sealed.key_id), SkipReason::ChangedConcurrently));
    }
    Ok(())
}
