//! Discovery of a provider's endpoints from its issuer: OpenID Connect Discovery 1.0
//! (`{issuer}/.well-known/openid-configuration`), then RFC 8414
//! (`/.well-known/oauth-authorization-server`, inserted before the issuer's path).
//!
//! Bounded in every way a hostile or broken server could stretch: a 5 s timeout, no redirects
//! followed, at most [`MAX_DOCUMENT_BYTES`] read. The document must name the configured issuer
//! exactly (OpenID Connect Discovery 1.0 section 4.3, RFC 8414 section 3.3): a document for
//! another issuer would point tokens at another provider.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::error::AppError;

/// How long one metadata request may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest metadata document read.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The endpoints a provider's metadata names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredEndpoints {
    pub token_endpoint: String,
    pub authorization_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    token_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
}

/// The metadata URLs tried for `issuer`, in order.
pub fn metadata_urls(issuer: &Url) -> Vec<String> {
    let trimmed = issuer.as_str().trim_end_matches('/');
    let openid = format!("{trimmed}/.well-known/openid-configuration");
    let path = issuer.path().trim_end_matches('/');
    let origin = issuer.origin().ascii_serialization();
    let rfc8414 = format!("{origin}/.well-known/oauth-authorization-server{path}");
    vec![openid, rfc8414]
}

/// Fetch the endpoints of `issuer` (already checked to be an absolute http(s) URL). The error
/// (`OAUTH_DISCOVERY_FAILED`) names every URL tried and why each failed.
pub async fn discover(issuer: &str) -> Result<DiscoveredEndpoints, AppError> {
    let parsed = Url::parse(issuer).map_err(|_| AppError::OAuthDiscoveryFailed {
        reason: format!("`{issuer}` is not a URL"),
    })?;
    let http = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(AppError::internal)?;
    let mut failures = Vec::new();
    for url in metadata_urls(&parsed) {
        match fetch(&http, &url).await {
            Ok(metadata) => {
                if metadata.issuer != issuer {
                    // Not a fallback case: the provider answered for another issuer.
                    return Err(AppError::OAuthDiscoveryFailed {
                        reason: format!(
                            "the metadata at {url} is for issuer {:?}, not {issuer:?}",
                            metadata.issuer
                        ),
                    });
                }
                let Some(token_endpoint) = metadata.token_endpoint else {
                    return Err(AppError::OAuthDiscoveryFailed {
                        reason: format!("the metadata at {url} names no token_endpoint"),
                    });
                };
                return Ok(DiscoveredEndpoints {
                    token_endpoint,
                    authorization_endpoint: metadata.authorization_endpoint,
                });
            }
            Err(reason) => failures.push(format!("{url}: {reason}")),
        }
    }
    Err(AppError::OAuthDiscoveryFailed {
        reason: format!(
            "no provider metadata for issuer {issuer:?} ({})",
            failures.join("; ")
        ),
    })
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Metadata, String> {
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| error_chain(&error))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| error_chain(&error))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|error| {
        format!(
            "not provider metadata JSON ({:?} error at line {} column {})",
            error.classify(),
            error.line(),
            error.column()
        )
    })
}

/// `error` and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_oidc_then_rfc8414_path_insertion() {
        let bare = Url::parse("https://idp.example.com").unwrap();
        assert_eq!(
            metadata_urls(&bare),
            [
                "https://idp.example.com/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server",
            ]
        );
        let with_path = Url::parse("https://idp.example.com:8443/realms/acme/").unwrap();
        assert_eq!(
            metadata_urls(&with_path),
            [
                "https://idp.example.com:8443/realms/acme/.well-known/openid-configuration",
                "https://idp.example.com:8443/.well-known/oauth-authorization-server/realms/acme",
            ]
        );
    }
}
