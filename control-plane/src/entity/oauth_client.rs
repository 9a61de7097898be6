//! `oauth_clients`.

use sea_orm::entity::prelude::*;

/// An OAuth client of an environment. Holds no secret: `client_secret_name` names a vault
/// secret of the same environment.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_clients")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub issuer: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub authorize_url: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub token_url: String,
    #[sea_orm(column_type = "Text")]
    pub client_id: String,
    pub client_secret_name: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub auth_method: String,
    /// JSON array of scopes.
    #[sea_orm(column_type = "Text")]
    pub scopes: String,
    /// JSON array of `[name, value]` pairs.
    #[sea_orm(column_type = "Text")]
    pub extra_token_params: String,
    /// JSON array of host patterns.
    #[sea_orm(column_type = "Text")]
    pub allowed_hosts: String,
    pub refresh_skew_seconds: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub redirect_uri: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
