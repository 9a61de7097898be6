//! `oauth_authorizations`.

use sea_orm::entity::prelude::*;

/// An authorization-code flow waiting for its callback. Holds the state's hash and the PKCE
/// verifier sealed to the data planes, never either in plaintext.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_authorizations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub connection_id: Uuid,
    /// [`airlock_shared::oauth::state_hash`] of the `state` parameter.
    #[sea_orm(unique)]
    pub state_hash: String,
    /// JSON of the sealed PKCE verifier ([`airlock_shared::seal::SealedSecret`]).
    #[sea_orm(column_type = "Text")]
    pub code_verifier_sealed: String,
    #[sea_orm(column_type = "Text")]
    pub redirect_uri: String,
    pub expires_at: DateTimeUtc,
    pub consumed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
