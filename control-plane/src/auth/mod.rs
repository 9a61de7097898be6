//! Authentication of people and API callers that do not use an admin token: console sign-in
//! and bearer JWT access tokens, both from an external OpenID Connect provider.

pub mod jwt;
pub mod oidc;
