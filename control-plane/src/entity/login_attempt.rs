//! `login_attempts`: a console sign-in waiting for the OpenID provider's callback.

use sea_orm::entity::prelude::*;

/// One pending sign-in; deleted when its callback arrives (so a `state` works once).
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "login_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Hex SHA-256 of the `state` sent to the provider.
    #[sea_orm(unique)]
    pub state_hash: String,
    /// Hex SHA-256 of a value derived from the browser's login cookie: the callback must come
    /// from the browser that started the sign-in.
    pub binding_hash: String,
    /// Where to send the browser after signing in: a same-origin relative path.
    pub return_to: String,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
