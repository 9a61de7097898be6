//! The events one finished request produces.
//!
//! Built once, in the `logging` phase, from what the request context recorded: at most a
//! `SecretUsed` (the audit trail: secrets went upstream) and one failure event. Only names,
//! ids, the destination host and statuses go in: never a secret value, an API key, a URL path
//! or query (they may carry secrets), or a request or response body.

use airlock_shared::events::{EventKind, GatewayEvent};
use airlock_shared::template::RenderError;
use uuid::Uuid;

use super::error::GatewayError;

/// Longest function name copied into an event. Names come from the request path, so an
/// unauthenticated caller chooses them; real function names are shorter.
const MAX_FUNCTION_NAME: usize = 128;

/// What a request did, as far as events are concerned.
#[derive(Debug, Default)]
pub struct RequestReport<'a> {
    pub request_id: &'a str,
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    pub function: Option<&'a str>,
    pub api_key_id: Option<Uuid>,
    pub upstream_host: Option<&'a str>,
    /// Secrets injected into a request that was handed to the upstream connection.
    pub secrets_sent: &'a [String],
    /// OAuth connections whose tokens were injected into a request handed upstream.
    pub oauth_sent: &'a [String],
    /// Status the upstream answered with, if it did.
    pub upstream_status: Option<u16>,
    /// The gateway error answered, if any.
    pub error: Option<&'a GatewayError>,
    /// Status returned to the client (0 if nothing could be written).
    pub status: u16,
}

impl RequestReport<'_> {
    /// The events to emit, in order.
    pub fn events(&self) -> Vec<GatewayEvent> {
        let mut events = Vec::new();
        if !self.secrets_sent.is_empty() || !self.oauth_sent.is_empty() {
            events.push(self.event(
                EventKind::SecretUsed,
                self.secrets_sent.to_vec(),
                self.secret_use_message(),
            ));
        }
        if let Some(error) = self.error {
            if let Some((kind, secrets)) = failure_kind(error) {
                events.push(self.event(kind, secrets, error.to_string()));
            } else if let Some((kind, message)) = self.mistake_of_known_key(error) {
                events.push(self.event(kind, Vec::new(), message));
            }
        } else if let Some(status) = self.upstream_status.filter(|status| *status >= 500) {
            events.push(self.event(
                EventKind::UpstreamError,
                Vec::new(),
                format!("the upstream answered with status {status}"),
            ));
        }
        events
    }

    /// "secrets `A`, `B` and OAuth tokens of `C` sent to `host`", built in one string: it is
    /// written for every request that injects a secret.
    fn secret_use_message(&self) -> String {
        fn names(message: &mut String, names: &[String]) {
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    message.push_str(", ");
                }
                message.push('`');
                message.push_str(name);
                message.push('`');
            }
        }
        let host = self.upstream_host.unwrap_or("-");
        let mut message = String::with_capacity(64);
        if !self.secrets_sent.is_empty() {
            message.push_str("secrets ");
            names(&mut message, self.secrets_sent);
        }
        if !self.oauth_sent.is_empty() {
            if !message.is_empty() {
                message.push_str(" and ");
            }
            message.push_str("OAuth tokens of ");
            names(&mut message, self.oauth_sent);
        }
        message.push_str(" sent to `");
        message.push_str(host);
        message.push('`');
        message
    }

    /// A request a known API key got wrong: an integration bug worth an event. Requests without
    /// a key we know (scanners, typos in the URL) are not reported beyond `auth.denied`. The
    /// message names arguments, never their values: a JSON parse error can quote the body, so
    /// it is replaced by a fixed sentence.
    fn mistake_of_known_key(&self, error: &GatewayError) -> Option<(EventKind, String)> {
        self.api_key_id?;
        Some(match error {
            GatewayError::FunctionNotFound(_) => (EventKind::FunctionNotFound, error.to_string()),
            GatewayError::InvalidJson(_) => (
                EventKind::RequestInvalid,
                "request body is not a JSON object of arguments".to_string(),
            ),
            GatewayError::Render(
                RenderError::MissingArgument(_)
                | RenderError::InvalidArgument { .. }
                | RenderError::InvalidOAuthHandle(_),
            )
            | GatewayError::OAuthConnectionNotFound(_)
            | GatewayError::PayloadTooLarge { .. } => {
                (EventKind::RequestInvalid, error.to_string())
            }
            _ => return None,
        })
    }

    fn event(&self, kind: EventKind, secrets: Vec<String>, message: String) -> GatewayEvent {
        let host_of_error = match self.error {
            Some(
                GatewayError::SecretHostDenied { host, .. }
                | GatewayError::OAuthHostDenied { host, .. },
            ) => Some(host.as_str()),
            _ => None,
        };
        let oauth_connection = match self.error {
            Some(GatewayError::OAuthHostDenied { connection, .. }) => Some(connection.as_str()),
            Some(GatewayError::OAuth(error)) => Some(error.connection()),
            Some(GatewayError::Render(RenderError::MissingOAuthToken(connection))) => {
                Some(connection.as_str())
            }
            _ => self.oauth_sent.first().map(String::as_str),
        };
        GatewayEvent {
            id: Uuid::now_v7(),
            at: chrono::Utc::now(),
            kind,
            tenant_id: self.tenant_id,
            environment_id: self.environment_id,
            request_id: self.request_id.to_string(),
            function: self.function.map(truncate_name),
            api_key_id: self.api_key_id,
            secrets,
            upstream_host: host_of_error.or(self.upstream_host).map(str::to_string),
            status: self.status,
            message,
            oauth_connection: oauth_connection.map(str::to_string),
        }
    }
}

/// The event kind of a gateway error, with the secrets it concerns; `None` for errors that
/// are the caller's own mistakes (bad JSON, unknown route...): see `mistake_of_known_key`.
fn failure_kind(error: &GatewayError) -> Option<(EventKind, Vec<String>)> {
    Some(match error {
        GatewayError::Unauthorized => (EventKind::AuthDenied, Vec::new()),
        GatewayError::Forbidden(_) => (EventKind::ScopeDenied, Vec::new()),
        GatewayError::Render(
            RenderError::MissingSecret(name) | RenderError::UnusableSecret(name),
        )
        | GatewayError::SecretNotOpened(name) => (EventKind::SecretUnavailable, vec![name.clone()]),
        GatewayError::SecretHostDenied { secret, .. } => {
            (EventKind::SecretHostDenied, vec![secret.clone()])
        }
        GatewayError::OAuthHostDenied { .. } => (EventKind::SecretHostDenied, Vec::new()),
        GatewayError::OAuth(_) | GatewayError::Render(RenderError::MissingOAuthToken(_)) => {
            (EventKind::SecretUnavailable, Vec::new())
        }
        GatewayError::UpstreamUnreachable(_) => (EventKind::UpstreamUnreachable, Vec::new()),
        GatewayError::UpstreamTimeout { .. } => (EventKind::UpstreamTimeout, Vec::new()),
        GatewayError::UpstreamResponseRejected(_) => (EventKind::UpstreamError, Vec::new()),
        _ => return None,
    })
}

fn truncate_name(name: &str) -> String {
    let mut end = name.len().min(MAX_FUNCTION_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(report: &RequestReport<'_>) -> Vec<EventKind> {
        report.events().iter().map(|e| e.kind).collect()
    }

    #[test]
    fn the_secret_use_message_names_what_went_where() {
        let two = vec!["TOKEN".to_string(), "SIGNING_KEY".to_string()];
        let crm = vec!["crm".to_string()];
        let message = |secrets: &[String], oauth: &[String], host: Option<&'static str>| {
            RequestReport {
                secrets_sent: secrets,
                oauth_sent: oauth,
                upstream_host: host,
                ..RequestReport::default()
            }
            .events()
            .remove(0)
            .message
        };
        let host = Some("api.example.com");
        assert_eq!(
            message(&two, &[], host),
            "secrets `TOKEN`, `SIGNING_KEY` sent to `api.example.com`"
        );
        assert_eq!(
            message(&[], &crm, host),
            "OAuth tokens of `crm` sent to `api.example.com`"
        );
        assert_eq!(
            message(&two[..1], &crm, None),
            "secrets `TOKEN` and OAuth tokens of `crm` sent to `-`"
        );
    }

    #[test]
    fn each_outcome_maps_to_its_events() {
        let secrets = vec!["TOKEN".to_string()];
        let base = RequestReport {
            request_id: "r1",
            function: Some("f"),
            upstream_host: Some("api.example.com"),
            status: 200,
            ..RequestReport::default()
        };
        assert!(base.events().is_empty());

        let used = RequestReport {
            secrets_sent: &secrets,
            upstream_status: Some(200),
            ..base
        };
        let events = used.events();
        assert_eq!(kinds(&used), [EventKind::SecretUsed]);
        assert_eq!(events[0].secrets, ["TOKEN"]);
        assert_eq!(events[0].upstream_host.as_deref(), Some("api.example.com"));
        assert_eq!(events[0].request_id, "r1");

        let failed_upstream = RequestReport {
            secrets_sent: &secrets,
            upstream_status: Some(503),
            status: 503,
            ..base
        };
        assert_eq!(
            kinds(&failed_upstream),
            [EventKind::SecretUsed, EventKind::UpstreamError]
        );

        let cases = [
            (GatewayError::Unauthorized, EventKind::AuthDenied),
            (GatewayError::Forbidden("f".into()), EventKind::ScopeDenied),
            (
                GatewayError::Render(RenderError::MissingSecret("S".into())),
                EventKind::SecretUnavailable,
            ),
            (
                GatewayError::SecretNotOpened("S".into()),
                EventKind::SecretUnavailable,
            ),
            (
                GatewayError::UpstreamUnreachable("x".into()),
                EventKind::UpstreamUnreachable,
            ),
            (
                GatewayError::UpstreamTimeout { timeout_ms: 1 },
                EventKind::UpstreamTimeout,
            ),
            (
                GatewayError::UpstreamResponseRejected("x".into()),
                EventKind::UpstreamError,
            ),
        ];
        for (error, kind) in cases {
            let report = RequestReport {
                error: Some(&error),
                status: error.status(),
                ..base
            };
            let events = report.events();
            assert_eq!(kinds(&report), [kind], "{error:?}");
            assert_eq!(events[0].status, error.status());
            assert_eq!(events[0].message, error.to_string());
        }

        let denied = GatewayError::SecretHostDenied {
            secret: "TOKEN".into(),
            host: "evil.example".into(),
        };
        let report = RequestReport {
            error: Some(&denied),
            status: 403,
            ..base
        };
        let events = report.events();
        assert_eq!(kinds(&report), [EventKind::SecretHostDenied]);
        assert_eq!(events[0].secrets, ["TOKEN"]);
        assert_eq!(events[0].upstream_host.as_deref(), Some("evil.example"));

        // Without a known key, a caller's mistakes are not events.
        let mistakes = [
            GatewayError::InvalidJson("invalid type: string \"quoted-body\"".into()),
            GatewayError::FunctionNotFound("nope".into()),
            GatewayError::Render(RenderError::MissingArgument("id".into())),
            GatewayError::PayloadTooLarge { limit: 1 },
        ];
        for error in mistakes.iter().chain([&GatewayError::NotFound]) {
            let report = RequestReport {
                error: Some(error),
                ..base
            };
            assert!(report.events().is_empty(), "{error:?}");
        }
        // With one, they are, and the message never quotes the body.
        let key = RequestReport {
            api_key_id: Some(Uuid::now_v7()),
            ..base
        };
        let want = [
            EventKind::RequestInvalid,
            EventKind::FunctionNotFound,
            EventKind::RequestInvalid,
            EventKind::RequestInvalid,
        ];
        for (error, kind) in mistakes.iter().zip(want) {
            let report = RequestReport {
                error: Some(error),
                status: error.status(),
                ..key
            };
            let events = report.events();
            assert_eq!(kinds(&report), [kind], "{error:?}");
            assert!(!events[0].message.contains("quoted-body"));
            assert_eq!(events[0].status, error.status());
        }
        let report = RequestReport {
            error: Some(&GatewayError::NotFound),
            ..key
        };
        assert!(report.events().is_empty());
    }

    #[test]
    fn long_function_names_are_cut_at_a_character_boundary() {
        let name = "é".repeat(100);
        let cut = truncate_name(&name);
        assert!(cut.len() <= MAX_FUNCTION_NAME);
        assert!(name.starts_with(&cut));
        assert_eq!(truncate_name("short"), "short");
    }
}
