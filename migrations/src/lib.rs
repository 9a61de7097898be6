//! Database migrations for the Airlock control plane.
//!
//! One file per migration, applied in order by [`Migrator`]. Migrations name tables and
//! columns by string, never by entity type: an entity describes the schema as the code wants
//! it today, a migration describes it as it was when the migration was written, and the two
//! must be free to drift apart.
//!
//! Every id is a UUID and every timestamp is `timestamp with time zone` (text on SQLite).
//! No table holds a secret value or an API key in plaintext: secrets are stored sealed
//! (`secret_versions.sealed`), keys, admin tokens and session ids as SHA-256 hashes; OAuth tokens and PKCE verifiers
//! sealed by/to the data planes (`oauth_connections.sealed_tokens`,
//! `oauth_authorizations.code_verifier_sealed`), OAuth `state`s as SHA-256 hashes.

pub use sea_orm_migration::prelude::*;

mod m20260401_000001_create_tenants;
mod m20260401_000002_create_environments;
mod m20260401_000003_create_functions;
mod m20260401_000004_create_secrets;
mod m20260401_000005_create_secret_versions;
mod m20260401_000006_create_api_keys;
mod m20260401_000007_create_admin_tokens;
mod m20260410_000001_create_events;
mod m20260411_000001_create_audit_log;
mod m20260411_000002_add_secret_hosts_and_version_actors;
mod m20260411_000003_create_provisioning_links;
mod m20261203_000001_create_users_and_roles;
mod m20261203_000002_api_key_lifecycle;
mod m20261203_000003_create_sessions;
mod m20261204_000001_create_oauth;
mod m20261204_000002_add_event_oauth_connection;

/// Applies the Airlock schema: `Migrator::up(&db, None)`.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260401_000001_create_tenants::Migration),
            Box::new(m20260401_000002_create_environments::Migration),
            Box::new(m20260401_000003_create_functions::Migration),
            Box::new(m20260401_000004_create_secrets::Migration),
            Box::new(m20260401_000005_create_secret_versions::Migration),
            Box::new(m20260401_000006_create_api_keys::Migration),
            Box::new(m20260401_000007_create_admin_tokens::Migration),
            Box::new(m20260410_000001_create_events::Migration),
            Box::new(m20260411_000001_create_audit_log::Migration),
            Box::new(m20260411_000002_add_secret_hosts_and_version_actors::Migration),
            Box::new(m20260411_000003_create_provisioning_links::Migration),
            Box::new(m20261203_000001_create_users_and_roles::Migration),
            Box::new(m20261203_000002_api_key_lifecycle::Migration),
            Box::new(m20261203_000003_create_sessions::Migration),
            Box::new(m20261204_000001_create_oauth::Migration),
            Box::new(m20261204_000002_add_event_oauth_connection::Migration),
        ]
    }
}

/// Foreign key from `table.column` to `parent.id`. Deleting a parent deletes what belongs to
/// it (an environment's secrets go with the environment), so no orphan can keep a sealed
/// secret or a key hash alive.
pub(crate) fn belongs_to(
    table: &'static str,
    column: &'static str,
    parent: &'static str,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{table}_{column}"))
        .from(table, column)
        .to(parent, "id")
        .on_delete(ForeignKeyAction::Cascade)
        .on_update(ForeignKeyAction::Cascade)
        .to_owned()
}
