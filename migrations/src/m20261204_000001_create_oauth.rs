//! OAuth (issue 6): clients, connections and pending authorizations of an environment.
//!
//! - `oauth_clients`: a provider's endpoints and the client's registration. The client secret
//!   is not here: `client_secret_name` names a vault secret of the same environment.
//! - `oauth_connections`: one set of tokens obtained with a client. The tokens are only ever
//!   stored sealed by a data plane (`sealed_tokens`, JSON of a `SealedTokenSet`);
//!   `token_generation` is that set's generation (0: none yet), the fencing number of reports.
//! - `oauth_authorizations`: authorization-code flows waiting for their callback. Only the
//!   SHA-256 of the `state` is stored, and the PKCE verifier sealed to the data planes.

use sea_orm_migration::{prelude::*, schema::*};

use crate::belongs_to;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("oauth_clients")
                    .col(pk_uuid("id"))
                    .col(uuid("environment_id"))
                    .col(string("name"))
                    .col(text_null("issuer"))
                    .col(text_null("authorize_url"))
                    .col(text("token_url"))
                    .col(text("client_id"))
                    .col(string_null("client_secret_name"))
                    .col(string("auth_method"))
                    // JSON array of scope strings.
                    .col(text("scopes"))
                    // JSON array of `[name, value]` pairs.
                    .col(text("extra_token_params"))
                    // JSON array of host patterns.
                    .col(text("allowed_hosts"))
                    .col(integer("refresh_skew_seconds"))
                    .col(text_null("redirect_uri"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .foreign_key(&mut belongs_to(
                        "oauth_clients",
                        "environment_id",
                        "environments",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_oauth_clients_environment_name")
                    .table("oauth_clients")
                    .col("environment_id")
                    .col("name")
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("oauth_connections")
                    .col(pk_uuid("id"))
                    .col(uuid("environment_id"))
                    .col(uuid("client_id"))
                    .col(string("name"))
                    .col(string("grant"))
                    .col(string("status"))
                    .col(text_null("sealed_tokens"))
                    .col(big_integer("token_generation").default(0))
                    .col(timestamp_with_time_zone_null("expires_at"))
                    .col(timestamp_with_time_zone_null("last_refresh_at"))
                    .col(text_null("last_error"))
                    .col(timestamp_with_time_zone_null("connected_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .foreign_key(&mut belongs_to(
                        "oauth_connections",
                        "environment_id",
                        "environments",
                    ))
                    .foreign_key(&mut belongs_to(
                        "oauth_connections",
                        "client_id",
                        "oauth_clients",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_oauth_connections_environment_name")
                    .table("oauth_connections")
                    .col("environment_id")
                    .col("name")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_oauth_connections_client")
                    .table("oauth_connections")
                    .col("client_id")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("oauth_authorizations")
                    .col(pk_uuid("id"))
                    .col(uuid("environment_id"))
                    .col(uuid("connection_id"))
                    .col(string_uniq("state_hash"))
                    // JSON of a `SealedSecret`.
                    .col(text("code_verifier_sealed"))
                    .col(text("redirect_uri"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(timestamp_with_time_zone_null("consumed_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(&mut belongs_to(
                        "oauth_authorizations",
                        "environment_id",
                        "environments",
                    ))
                    .foreign_key(&mut belongs_to(
                        "oauth_authorizations",
                        "connection_id",
                        "oauth_connections",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_oauth_authorizations_environment_expires")
                    .table("oauth_authorizations")
                    .col("environment_id")
                    .col("expires_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["oauth_authorizations", "oauth_connections", "oauth_clients"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
