//! `GET /provision/{token}`: the form of a provisioning link; `POST /provision/{token}`: its
//! submission. No admin token: the link's token is the credential (see
//! [`crate::domain::provisioning`]).
//!
//! Every page is self-contained (inline style, no script, no external asset) and is served
//! with headers that keep it out of frames, caches and `Referer`s, since its URL is a
//! credential. Pages for unusable links say nothing about the link: not the environment, not
//! the secrets, not why.
//!
//! CSRF: the form is authorised by the token in its URL, not by anything ambient (no cookie,
//! no session, no `Authorization`), so a cross-site POST can only do what someone holding the
//! token could do anyway.

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::HttpState;
use crate::domain::provisioning::{self, LinkStatus, ProvisioningLink, RedeemError};

/// Largest form accepted (every value of a link together, URL-encoded).
pub const MAX_FORM_BYTES: usize = 2 * 1024 * 1024;

/// Content-Security-Policy of every page: nothing loads, inline style only, the form posts
/// back here only.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'";

const GONE_TEXT: &str = "This link cannot be used. It may have expired, been revoked or been used already. Ask whoever sent it to you for a new one.";

/// The form.
pub(crate) async fn show(State(http): State<HttpState>, Path(token): Path<String>) -> Response {
    match provisioning::find_by_token(&http.app.db, &token).await {
        Ok(Some(link)) if link.status(chrono::Utc::now()) == LinkStatus::Active => {
            page(StatusCode::OK, "Set secret values", &form_body(&link, None))
        }
        Ok(Some(_)) => gone(),
        Ok(None) => unknown(),
        Err(error) => internal(error.detail()),
    }
}

/// The submission.
pub(crate) async fn submit(
    State(http): State<HttpState>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    // The link first: an unusable link gets the same answer whatever was submitted.
    let link = match provisioning::find_by_token(&http.app.db, &token).await {
        Ok(Some(link)) if link.status(chrono::Utc::now()) == LinkStatus::Active => link,
        Ok(Some(_)) => return gone(),
        Ok(None) => return unknown(),
        Err(error) => return internal(error.detail()),
    };
    let fields = match Form::<Vec<(String, String)>>::from_request(request, &()).await {
        Ok(Form(fields)) => fields,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "The values are too large."
            } else {
                "The form could not be read. Submit it from the page this link opens."
            };
            return page(status, "Not saved", &form_body(&link, Some(message)));
        }
    };

    match provisioning::redeem(&http.app.db, &http.app.sealing_key, &token, &fields).await {
        Ok(redeemed) => {
            http.app
                .publisher
                .publish_environment(redeemed.environment_id)
                .await;
            let count = redeemed.secrets.len();
            let noun = if count == 1 { "secret was" } else { "secrets were" };
            page(
                StatusCode::OK,
                "Saved",
                &format!(
                    "<h1>Saved</h1><p>{count} {noun} stored, encrypted. This link cannot be used again. You can close this page.</p>"
                ),
            )
        }
        Err(RedeemError::UnknownLink) => unknown(),
        Err(RedeemError::Gone) => gone(),
        Err(RedeemError::Incomplete { missing }) => {
            let message = format!(
                "Nothing was saved: every value is required (missing: {}).",
                missing.join(", ")
            );
            page(
                StatusCode::BAD_REQUEST,
                "Not saved",
                &form_body(&link, Some(&message)),
            )
        }
        Err(RedeemError::BadForm(message)) => page(
            StatusCode::BAD_REQUEST,
            "Not saved",
            &form_body(&link, Some(&format!("Nothing was saved: {message}."))),
        ),
        Err(RedeemError::Conflict) => page(
            StatusCode::CONFLICT,
            "Not saved",
            "<h1>Not saved</h1><p>This link no longer matches what it was made for. Nothing was saved. Ask whoever sent it to you for a new one.</p>",
        ),
        Err(RedeemError::Internal(error)) => internal(error.detail()),
    }
}

fn unknown() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        &format!("<h1>Link not valid</h1><p>{GONE_TEXT}</p>"),
    )
}

fn gone() -> Response {
    page(
        StatusCode::GONE,
        "Link not valid",
        &format!("<h1>Link not valid</h1><p>{GONE_TEXT}</p>"),
    )
}

fn internal(detail: String) -> Response {
    tracing::error!(error = detail, "provisioning link request failed");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error",
        "<h1>Something went wrong</h1><p>Nothing was saved. Try again later.</p>",
    )
}

/// The form: one password input per secret. Inputs never carry a value, so a value typed in
/// is never sent back in a page, not even when the form is shown again after an error.
fn form_body(link: &ProvisioningLink, error: Option<&str>) -> String {
    let mut body = String::from("<h1>Set secret values</h1>");
    body.push_str(
        "<p>Values are encrypted as soon as they arrive. Nobody, including whoever sent you this link, can read them back. The link works once.</p>",
    );
    if let Some(error) = error {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(error)
        ));
    }
    body.push_str("<form method=\"post\" autocomplete=\"off\">");
    for (index, secret) in link.secrets.iter().enumerate() {
        let name = escape(&secret.name);
        body.push_str(&format!(
            "<label for=\"s{index}\">{name}</label><input id=\"s{index}\" name=\"{name}\" type=\"password\" required autocomplete=\"off\" spellcheck=\"false\">"
        ));
    }
    body.push_str(&format!(
        "<button type=\"submit\">Save</button></form><p class=\"note\">Expires {}.</p>",
        link.expires_at.format("%Y-%m-%d %H:%M UTC")
    ));
    body
}

/// A complete page with the headers every provisioning response carries.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"referrer\" content=\"no-referrer\"><title>{} · Airlock</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2230;margin:0}main{max-width:32rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.15)}h1{font-size:1.4rem;margin-top:0}label{display:block;font-family:ui-monospace,monospace;margin:1rem 0 .3rem}input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}button{margin-top:1.5rem;padding:.6rem 1.4rem;font-size:1rem}.error{color:#a40000;font-weight:600}.note{color:#5b6170;font-size:.9rem}";

/// HTML-escape text for element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
