//! Redis key and channel names, all under one configurable prefix so that several Airlock
//! installations (or parallel tests) can share one Redis.

/// Default prefix for every Redis key Airlock writes.
pub const DEFAULT_PREFIX: &str = "airlock";

/// Consumer group of the control planes on [`RedisNames::events_stream`].
pub const EVENTS_GROUP: &str = "control-plane";

/// Names of the Redis keys and channels used to distribute config snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNames {
    prefix: String,
}

impl RedisNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// String key holding one environment's [`crate::wire::EnvironmentSnapshot`] as JSON.
    pub fn environment_snapshot(&self, environment_id: &uuid::Uuid) -> String {
        format!("{}:snapshot:env:{}", self.prefix, environment_id)
    }

    /// Hash: environment id -> revision of its published snapshot. Lets a data plane load
    /// every snapshot at start and detect missed notifications without `KEYS`.
    pub fn snapshot_index(&self) -> String {
        format!("{}:snapshot:index", self.prefix)
    }

    /// Stream of [`crate::events::GatewayEvent`]s from data planes (field `event`, JSON),
    /// consumed by control planes in the consumer group [`EVENTS_GROUP`].
    pub fn events_stream(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Pub/sub channel; each message is the id of an environment whose snapshot changed.
    pub fn config_channel(&self) -> String {
        format!("{}:config:changed", self.prefix)
    }

    /// Hash holding an OAuth connection's current tokens as the data planes share them:
    /// fields `generation` (the fencing number) and `record` (JSON, tokens sealed). Keyed by
    /// connection id, so a connection deleted and created again under the same name never
    /// inherits the old tokens.
    pub fn oauth_tokens(&self, connection_id: &uuid::Uuid) -> String {
        format!("{}:oauth:{}:tokens", self.prefix, connection_id)
    }

    /// Lock taken (`SET NX PX`) by the one data plane that talks to the token endpoint for a
    /// connection; its value is the holder's random token, checked before the holder writes.
    pub fn oauth_refresh_lock(&self, connection_id: &uuid::Uuid) -> String {
        format!("{}:oauth:{}:lock", self.prefix, connection_id)
    }

    /// Marker set (`SET NX`, expiring with the authorization) by the data plane that claims
    /// an authorization callback, so a replayed callback is refused by every data plane.
    pub fn oauth_state_claim(&self, state_hash: &str) -> String {
        format!("{}:oauth:state:{}", self.prefix, state_hash)
    }
}

impl Default for RedisNames {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let names = RedisNames::new("t1");
        let id = uuid::Uuid::nil();
        assert_eq!(
            names.environment_snapshot(&id),
            "t1:snapshot:env:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(names.snapshot_index(), "t1:snapshot:index");
        assert_eq!(names.config_channel(), "t1:config:changed");
        assert_eq!(names.events_stream(), "t1:events");
        assert_eq!(
            names.oauth_tokens(&id),
            "t1:oauth:00000000-0000-0000-0000-000000000000:tokens"
        );
        assert!(names.oauth_refresh_lock(&id).starts_with("t1:oauth:"));
        assert_eq!(names.oauth_state_claim("ab"), "t1:oauth:state:ab");
    }
}
