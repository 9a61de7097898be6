//! Checks of OAuth client input. Each error is `INVALID_INPUT` naming the GraphQL field.

use airlock_shared::hosts::HostPattern;
use reqwest::Url;

use crate::domain::secrets::parse_allowed_hosts;
use crate::error::AppError;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Longest client id accepted.
pub const MAX_CLIENT_ID_LEN: usize = 512;
/// Most scopes per client.
pub const MAX_SCOPES: usize = 64;
/// Longest scope.
pub const MAX_SCOPE_LEN: usize = 256;
/// Most extra token parameters per client.
pub const MAX_EXTRA_PARAMS: usize = 32;
/// Longest extra token parameter name or value.
pub const MAX_PARAM_LEN: usize = 1024;
/// Largest refresh skew.
pub const MAX_REFRESH_SKEW_SECONDS: i32 = 3600;

/// Token request parameters Airlock sets itself; an extra parameter may not override one.
pub const RESERVED_TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "code",
    "refresh_token",
    "client_id",
    "client_secret",
    "redirect_uri",
    "code_verifier",
    "scope",
];

/// An absolute `http(s)` URL with a host, without credentials or fragment; returned as given
/// (trimmed). A query is allowed (an authorize URL may carry one).
pub fn check_url(field: &'static str, url: &str) -> Result<String, AppError> {
    let url = url.trim();
    let bad = |why: &str| {
        AppError::invalid(
            field,
            format!("{why} (like https://idp.example.com/oauth/token)"),
        )
    };
    if url.is_empty() {
        return Err(bad("must not be empty"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let parsed = Url::parse(url).map_err(|_| bad("is not an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not contain credentials"));
    }
    if parsed.fragment().is_some() || url.contains('#') {
        return Err(bad("must not contain a fragment"));
    }
    Ok(url.to_string())
}

/// An issuer: a URL as [`check_url`] without a query either (RFC 8414 section 2).
pub fn check_issuer(field: &'static str, issuer: &str) -> Result<String, AppError> {
    let issuer = check_url(field, issuer)?;
    if issuer.contains('?') {
        return Err(AppError::invalid(field, "must not contain a query"));
    }
    Ok(issuer)
}

/// A client id: 1 to [`MAX_CLIENT_ID_LEN`] characters, no control characters.
pub fn check_client_id(field: &'static str, client_id: &str) -> Result<(), AppError> {
    if client_id.is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if client_id.len() > MAX_CLIENT_ID_LEN {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_CLIENT_ID_LEN} bytes"),
        ));
    }
    if client_id.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Scopes: each a non-empty RFC 6749 scope token (printable ASCII without space, `"` and
/// `\`); repeats dropped, order kept.
pub fn check_scopes(field: &'static str, scopes: &[String]) -> Result<Vec<String>, AppError> {
    if scopes.len() > MAX_SCOPES {
        return Err(AppError::invalid(
            field,
            format!("at most {MAX_SCOPES} scopes"),
        ));
    }
    let mut checked: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if scope.is_empty() {
            return Err(AppError::invalid(field, "a scope must not be empty"));
        }
        if scope.len() > MAX_SCOPE_LEN
            || !scope
                .bytes()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        {
            return Err(AppError::invalid(
                field,
                format!(
                    "`{}` is not a scope: printable ASCII without whitespace, `\"` or `\\` (at most {MAX_SCOPE_LEN})",
                    scope.chars().take(100).collect::<String>().escape_default()
                ),
            ));
        }
        if !checked.contains(scope) {
            checked.push(scope.clone());
        }
    }
    Ok(checked)
}

/// Extra token parameters: names 1-[`MAX_PARAM_LEN`] bytes of `A-Za-z0-9._-`, none reserved
/// ([`RESERVED_TOKEN_PARAMS`]) or repeated; values without control characters.
pub fn check_extra_params(
    field: &'static str,
    params: &[(String, String)],
) -> Result<(), AppError> {
    if params.len() > MAX_EXTRA_PARAMS {
        return Err(AppError::invalid(
            field,
            format!("at most {MAX_EXTRA_PARAMS} parameters"),
        ));
    }
    for (i, (name, value)) in params.iter().enumerate() {
        if name.is_empty()
            || name.len() > MAX_PARAM_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(AppError::invalid(
                field,
                format!(
                    "`{}` is not a parameter name (ASCII letters, digits, `.`, `_`, `-`)",
                    name.chars().take(100).collect::<String>().escape_default()
                ),
            ));
        }
        if RESERVED_TOKEN_PARAMS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            return Err(AppError::invalid(
                field,
                format!(
                    "`{name}` is set by Airlock itself; reserved: {}",
                    RESERVED_TOKEN_PARAMS.join(", ")
                ),
            ));
        }
        if params[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(AppError::invalid(field, format!("`{name}` is given twice")));
        }
        if value.len() > MAX_PARAM_LEN || value.chars().any(char::is_control) {
            return Err(AppError::invalid(
                field,
                format!(
                    "the value of `{name}` must be at most {MAX_PARAM_LEN} bytes without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// Hosts the access tokens may be sent to: at least one valid pattern.
pub fn check_token_hosts(
    field: &'static str,
    hosts: &[String],
) -> Result<Vec<HostPattern>, AppError> {
    if hosts.is_empty() {
        return Err(AppError::invalid(
            field,
            "must name at least one host the access tokens may be sent to (`api.example.com`, `*.example.com`); there is no allow-all",
        ));
    }
    parse_allowed_hosts(field, hosts)
}

/// 0 to [`MAX_REFRESH_SKEW_SECONDS`].
pub fn check_refresh_skew(field: &'static str, seconds: i32) -> Result<u32, AppError> {
    u32::try_from(seconds)
        .ok()
        .filter(|s| *s <= MAX_REFRESH_SKEW_SECONDS as u32)
        .ok_or_else(|| {
            AppError::invalid(
                field,
                format!("must be between 0 and {MAX_REFRESH_SKEW_SECONDS}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: std::fmt::Debug>(result: Result<T, AppError>) -> &'static str {
        match result {
            Err(AppError::InvalidInput { field, .. }) => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn urls_must_be_absolute_http_without_credentials_or_fragment() {
        assert_eq!(
            check_url("u", " https://idp.example.com/token?x=1 ").unwrap(),
            "https://idp.example.com/token?x=1"
        );
        assert!(check_url("u", "http://127.0.0.1:8080/t").is_ok());
        for bad in [
            "",
            "/token",
            "idp.example.com/token",
            "ftp://idp.example.com/",
            "https://user:pw@idp.example.com/",
            "https://idp.example.com/t#frag",
            "javascript:alert(1)",
        ] {
            assert_eq!(field_of(check_url("u", bad)), "u", "{bad}");
        }
        assert!(check_issuer("issuer", "https://idp.example.com/?a=b").is_err());
    }

    #[test]
    fn scopes_are_scope_tokens() {
        assert_eq!(
            check_scopes(
                "scopes",
                &["read".into(), "repo:status".into(), "read".into()]
            )
            .unwrap(),
            ["read", "repo:status"]
        );
        for bad in ["", "a b", "tab\t", "quote\"", "é"] {
            assert!(check_scopes("scopes", &[bad.into()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extra_params_may_not_override_what_airlock_sets() {
        assert!(check_extra_params("p", &[("audience".into(), "https://api".into())]).is_ok());
        for reserved in RESERVED_TOKEN_PARAMS {
            assert!(check_extra_params("p", &[(reserved.to_string(), "x".into())]).is_err());
        }
        assert!(check_extra_params("p", &[("Client_Secret".into(), "x".into())]).is_err());
        assert!(check_extra_params("p", &[("a b".into(), "x".into())]).is_err());
        assert!(
            check_extra_params("p", &[("a".into(), "x".into()), ("a".into(), "y".into())]).is_err()
        );
        assert!(check_extra_params("p", &[("a".into(), "x\ny".into())]).is_err());
    }

    #[test]
    fn refresh_skew_is_bounded() {
        assert_eq!(check_refresh_skew("s", 0).unwrap(), 0);
        assert_eq!(check_refresh_skew("s", 3600).unwrap(), 3600);
        assert!(check_refresh_skew("s", -1).is_err());
        assert!(check_refresh_skew("s", 3601).is_err());
    }
}
