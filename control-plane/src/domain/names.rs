//! Validation of the names people give things.

use airlock_shared::template::is_name;

use crate::error::AppError;

/// Longest tenant, environment, function and API key name.
pub const MAX_NAME_LEN: usize = 64;

/// Tenant, environment and function names: 1-64 ASCII letters, digits, `-` and `_`.
/// Function names appear in invoke URLs, so nothing that would need escaping is allowed.
pub fn check_resource_name(field: &'static str, name: &str) -> Result<(), AppError> {
    if name.is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AppError::invalid(
            field,
            "may only contain ASCII letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

/// Secret names: what `{{secrets.NAME}}` accepts ([`is_name`]).
pub fn check_secret_name(field: &'static str, name: &str) -> Result<(), AppError> {
    if name.is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if !is_name(name) {
        return Err(AppError::invalid(
            field,
            "must start with a letter or `_` and contain only ASCII letters, digits, `_` and `-` (at most 128)",
        ));
    }
    Ok(())
}

/// API key names: 1-64 printable characters, not starting or ending with whitespace.
pub fn check_api_key_name(field: &'static str, name: &str) -> Result<(), AppError> {
    if name.trim().is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if name.trim() != name {
        return Err(AppError::invalid(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<(), AppError>) -> Option<&'static str> {
        match result {
            Err(AppError::InvalidInput { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn resource_names() {
        assert!(check_resource_name("name", "prod").is_ok());
        assert!(check_resource_name("name", "get_user-2").is_ok());
        assert!(check_resource_name("name", &"a".repeat(64)).is_ok());
        assert_eq!(field_of(check_resource_name("name", "")), Some("name"));
        assert!(check_resource_name("name", &"a".repeat(65)).is_err());
        for bad in ["a b", "a/b", "a.b", "é", "a%2F", "a\n"] {
            assert!(check_resource_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_names_follow_the_template_language() {
        assert!(check_secret_name("name", "API_TOKEN").is_ok());
        assert!(check_secret_name("name", "_x-1").is_ok());
        for bad in ["", "1abc", "a.b", "a b", "{{x}}"] {
            assert!(check_secret_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_key_names_are_printable() {
        assert!(check_api_key_name("name", "Billing service (prod)").is_ok());
        assert!(check_api_key_name("name", "clé").is_ok());
        assert!(check_api_key_name("name", &"é".repeat(64)).is_ok());
        for bad in ["", "   ", " x", "x ", "a\tb", "a\u{7}", &"x".repeat(65)] {
            assert!(check_api_key_name("name", bad).is_err(), "{bad:?}");
        }
    }
}
