//! API key authentication and function scope.

use airlock_shared::api_key::ApiKeyHash;
use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::error::GatewayError;
use crate::snapshot::{CompiledFunction, KeyBinding, Snapshot};

/// The API key presented as `Authorization: Bearer <key>`. Anything else (no header, several
/// headers, another scheme, an empty or oddly shaped token) is `None`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_graphic());
    well_formed.then_some(token)
}

/// Find the key presented in `headers`.
pub fn authenticate(snapshot: &Snapshot, headers: &HeaderMap) -> Result<KeyBinding, GatewayError> {
    let token = bearer_token(headers).ok_or(GatewayError::Unauthorized)?;
    snapshot
        .key(&ApiKeyHash::of(token))
        .cloned()
        .ok_or(GatewayError::Unauthorized)
}

/// Refuse a key past its expiry, like an unknown key (`unauthorized`: the same answer
/// whether the snapshot still lists the key or has already dropped it). Only the clock is
/// read: the planes' clocks are assumed synchronised (NTP); a data plane whose clock runs
/// behind accepts an expiring key for as much longer.
pub fn ensure_unexpired(binding: &KeyBinding, now: DateTime<Utc>) -> Result<(), GatewayError> {
    if binding.is_expired_at(now) {
        Err(GatewayError::Unauthorized)
    } else {
        Ok(())
    }
}

/// Check the key may invoke `function` (its casbin policy, see [`crate::scope`]).
///
/// Checked before the function is looked up, so a key learns nothing about functions it may
/// not call: a name its patterns match gets `function_not_found` when it does not exist, any
/// other name gets `forbidden`.
pub fn ensure_granted(
    binding: &KeyBinding,
    function: &str,
    found: Option<&CompiledFunction>,
) -> Result<(), GatewayError> {
    if binding.may_invoke_found(function, found) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden(function.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers(&["Bearer ak_abc"])), Some("ak_abc"));
        assert_eq!(bearer_token(&headers(&["bearer ak_abc"])), Some("ak_abc"));
        assert_eq!(bearer_token(&headers(&[])), None);
        assert_eq!(bearer_token(&headers(&["Basic abc"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer "])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer b"])), None);
    }
}
