//! Authentication of API callers that do not use an admin token: bearer JWT access tokens
//! issued by an external OpenID Connect provider.

pub mod jwt;
