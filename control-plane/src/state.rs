//! State shared by every request.

use airlock_shared::seal::SealingKey;
use sea_orm::DatabaseConnection;

use crate::auth::oidc::Oidc;
use crate::authz::Authz;
use crate::publish::ConfigPublisher;

/// Cheap to clone: the database pool, the publisher and the key are all shared.
#[derive(Clone)]
pub struct AppState {
    /// Source of truth for all configuration.
    pub db: DatabaseConnection,
    /// Public key secrets are sealed to. The control plane never holds the opening key.
    pub sealing_key: SealingKey,
    /// Publishes changed config to data planes.
    pub publisher: ConfigPublisher,
    /// Base URL for links this control plane hands out (`AIRLOCK_PUBLIC_URL`); `None`: built
    /// from each request's `Host`.
    pub public_url: Option<String>,
    /// Base URL people's browsers reach a data plane at (`AIRLOCK_DATA_PLANE_URL`; in
    /// `airlock dev` the dev data plane's): OAuth redirect URIs default to it +
    /// [`airlock_shared::oauth::CALLBACK_PATH`]. `None`: each OAuth client needs its own.
    pub data_plane_url: Option<String>,
    /// Access-control decisions (role assignments loaded from `db`).
    pub authz: Authz,
    /// OpenID Connect sign-in and bearer JWTs; `None`: admin tokens only.
    pub oidc: Option<Oidc>,
}
