//! `oauth_connections`.

use sea_orm::entity::prelude::*;

/// An OAuth connection: tokens obtained with a client, sealed by a data plane.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub client_id: Uuid,
    pub name: String,
    /// `client_credentials` or `authorization_code`.
    pub grant: String,
    /// `pending`, `connected` or `broken`.
    pub status: String,
    /// JSON of an [`airlock_shared::oauth::SealedTokenSet`]; `None` before the first tokens.
    #[sea_orm(column_type = "Text", nullable)]
    pub sealed_tokens: Option<String>,
    /// Generation of `sealed_tokens` (0: none).
    pub token_generation: i64,
    pub expires_at: Option<DateTimeUtc>,
    pub last_refresh_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub connected_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
