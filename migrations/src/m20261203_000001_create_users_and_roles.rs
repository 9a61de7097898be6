//! Access control: `users` (people who sign in with OpenID Connect), `role_assignments` (who
//! holds which role where: the casbin grouping policies), and the owner of each admin token.
//!
//! Tokens that existed before access control had full power; each becomes a `superadmin`,
//! so upgrading locks nobody out.

use sea_orm::prelude::Uuid;
use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::belongs_to;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("users")
                    .col(pk_uuid("id"))
                    // Identified by issuer + subject (`sub`), never by email alone.
                    .col(text("issuer"))
                    .col(text("subject"))
                    .col(text_null("email"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("last_sign_in_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_users_issuer_subject")
                    .table("users")
                    .col("issuer")
                    .col("subject")
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("role_assignments")
                    .col(pk_uuid("id"))
                    // `user:<id>`, `token:<id>` or `email:<address>` (an invitation, moved to
                    // the user at first sign-in).
                    .col(text("principal"))
                    .col(text("role"))
                    // The casbin domain: `platform`, `tenant:<id>` or `env:<id>`.
                    .col(text("domain"))
                    .col(uuid_null("tenant_id"))
                    .col(uuid_null("environment_id"))
                    .col(text("created_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(&mut belongs_to("role_assignments", "tenant_id", "tenants"))
                    .foreign_key(&mut belongs_to(
                        "role_assignments",
                        "environment_id",
                        "environments",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_role_assignments_principal_role_domain")
                    .table("role_assignments")
                    .col("principal")
                    .col("role")
                    .col("domain")
                    .unique()
                    .to_owned(),
            )
            .await?;

        // Who a token acts for: NULL means the token itself (`token:<id>`), otherwise
        // `user:<id>`. Revoked tokens stay listed but no longer authenticate.
        for column in [
            ColumnDef::new("principal").text().null().to_owned(),
            ColumnDef::new("revoked_at")
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new("last_used_at")
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("admin_tokens")
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }

        let db = manager.get_connection();
        let backend = db.get_database_backend();
        let tokens = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT id FROM admin_tokens",
            ))
            .await?;
        for token in tokens {
            let id: Uuid = token.try_get("", "id")?;
            let insert = Query::insert()
                .into_table("role_assignments")
                .columns([
                    "id",
                    "principal",
                    "role",
                    "domain",
                    "created_by",
                    "created_at",
                ])
                .values_panic([
                    Uuid::new_v4().into(),
                    format!("token:{id}").into(),
                    "superadmin".into(),
                    "platform".into(),
                    "migration".into(),
                    chrono::Utc::now().into(),
                ])
                .to_owned();
            db.execute(&insert).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["principal", "revoked_at", "last_used_at"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("admin_tokens")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table("role_assignments").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("users").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
