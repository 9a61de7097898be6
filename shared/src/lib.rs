//! What both Airlock planes must agree on.
//!
//! - [`wire`]: the per-environment config snapshot the control plane publishes and the data
//!   plane serves from, and the error body the data plane returns.
//! - [`template`]: the function template language (`{{args.x}}`, `{{secrets.NAME}}`), parsed
//!   and checked by the control plane, compiled and rendered by the data plane.
//! - [`seal`]: sealing secret values so that only data planes can open them.
//! - [`grants`]: the function patterns of an API key's policy and how they match.
//! - [`api_key`]: generating API keys and the hash that is stored instead of the key.
//! - [`keys`]: Redis key and channel names.
//! - [`oauth`]: OAuth clients, connections and sealed tokens as the planes exchange them.
//!
//! No axum, pingora or sea-orm here.

pub mod api_key;
pub mod events;
pub mod grants;
pub mod hosts;
pub mod keys;
pub mod oauth;
pub mod seal;
pub mod template;
pub mod wire;
