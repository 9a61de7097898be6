//! sea-orm entities: the database tables as the code reads and writes them today.
//! The schema itself is owned by `airlock-migrations`.

pub mod admin_token;
pub mod api_key;
pub mod environment;
pub mod function;
pub mod secret;
pub mod secret_version;
pub mod tenant;
