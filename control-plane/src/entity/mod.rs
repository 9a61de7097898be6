//! sea-orm entities: the database tables as the code reads and writes them today.
//! The schema itself is owned by `airlock-migrations`.

pub mod admin_token;
pub mod api_key;
pub mod audit_log;
pub mod environment;
pub mod event;
pub mod function;
pub mod login_attempt;
pub mod oauth_authorization;
pub mod oauth_client;
pub mod oauth_connection;
pub mod provisioning_link;
pub mod role_assignment;
pub mod secret;
pub mod secret_version;
pub mod session;
pub mod tenant;
pub mod user;
