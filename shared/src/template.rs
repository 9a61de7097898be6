//! The function template language.
//!
//! A function's URL, header values and body are templates: literal text with placeholders
//! `{{args.NAME}}` (an invoke argument), `{{secrets.NAME}}` (a vault secret of the
//! environment the function runs in) and `{{oauth.NAME}}` (the current access token of an
//! OAuth connection of that environment, see [`crate::oauth`]). An argument may itself be a
//! reference: `{"$secret": "NAME"}` or `{"$oauth": "HANDLE"}`. Templates are parsed and checked when a function is
//! created (control plane) and compiled once per snapshot (data plane); rendering a compiled
//! template does no parsing.
//!
//! Every value is encoded for where it lands, so an argument can never change the shape of
//! the request:
//! - URL path: percent-encoded as one path segment (`/`, `?`, `#`, `&`, space... all escaped);
//! - URL query: percent-encoded as one query component (`&`, `=`, `+` escaped);
//! - header value: inserted as is, but a value with a control character (CR, LF, NUL...) is
//!   refused rather than allowed to split the header;
//! - JSON body: inside a JSON string literal the value is JSON-escaped; standing alone it is
//!   inserted as a JSON value (`"{{args.name}}"` is always a string, `{{args.count}}` keeps
//!   the argument's JSON type).
//!
//! The scheme and authority of a URL must be literal: an argument can never choose the host a
//! request (and the secrets in it) goes to.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use crate::wire::FunctionSpec;

/// Everything except RFC 3986 unreserved characters is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Longest accepted placeholder name.
const MAX_NAME_LEN: usize = 128;

/// Methods a function may use.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Headers a function may not set: the data plane owns framing and routing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// Why a template or function definition was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{field}: unclosed placeholder starting at byte {at} (missing `}}}}`)")]
    Unclosed { field: String, at: usize },
    #[error("{field}: placeholder `{{{{{text}}}}}` must look like `{{{{args.NAME}}}}`, `{{{{secrets.NAME}}}}` or `{{{{oauth.NAME}}}}`")]
    BadPlaceholder { field: String, text: String },
    #[error("{field}: unknown namespace `{namespace}` (allowed: args, secrets, oauth)")]
    UnknownNamespace { field: String, namespace: String },
    #[error("url: {0}")]
    BadUrl(String),
    #[error(
        "method `{0}` is not supported (allowed: GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS)"
    )]
    BadMethod(String),
    #[error("header name `{0}` is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("header `{0}` is managed by the gateway and cannot be set by a function")]
    ReservedHeader(String),
    #[error("header `{0}`: value contains a control character")]
    BadHeaderValue(String),
    #[error("body: not valid JSON once placeholders are filled in: {0}")]
    BadJsonBody(String),
}

impl TemplateError {
    /// Stable machine-readable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unclosed { .. } | Self::BadPlaceholder { .. } => "TEMPLATE_MALFORMED",
            Self::UnknownNamespace { .. } => "TEMPLATE_UNKNOWN_NAMESPACE",
            Self::BadUrl(_) => "INVALID_URL",
            Self::BadMethod(_) => "INVALID_METHOD",
            Self::BadHeaderName(_) | Self::ReservedHeader(_) | Self::BadHeaderValue(_) => {
                "INVALID_HEADER"
            }
            Self::BadJsonBody(_) => "INVALID_BODY",
        }
    }
}

/// Why rendering a request failed. Messages name arguments and secrets, never their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("missing argument `{0}`")]
    MissingArgument(String),
    #[error("argument `{name}` {reason}")]
    InvalidArgument { name: String, reason: &'static str },
    #[error("secret `{0}` is not set in this environment")]
    MissingSecret(String),
    #[error("secret `{0}` cannot be used in a header (it contains a control character)")]
    UnusableSecret(String),
    #[error("OAuth connection `{0}` has no usable access token")]
    MissingOAuthToken(String),
    #[error("argument `{0}`: the OAuth handle is invalid or has expired")]
    InvalidOAuthHandle(String),
}

/// What a placeholder refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    Args,
    Secrets,
    OAuth,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placeholder {
    pub namespace: Namespace,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(Placeholder),
}

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parse `source`. `field` names the template in error messages (`url`, `body`...).
    pub fn parse(field: &str, source: &str) -> Result<Self, TemplateError> {
        Self::parse_at(field, source, 0)
    }

    /// Parse `source`, a part of a larger field starting at byte `base` of it (so error
    /// positions point into the whole field).
    fn parse_at(field: &str, source: &str, base: usize) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = base;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed {
                field: field.to_string(),
                at: offset + start,
            })?;
            parts.push(Part::Placeholder(parse_placeholder(field, &after[..end])?));
            let consumed = start + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// Every placeholder, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(ph) => Some(ph),
            Part::Literal(_) => None,
        })
    }

    fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(l) => Some(l.as_str()),
            Part::Placeholder(_) => None,
        })
    }
}

fn parse_placeholder(field: &str, inner: &str) -> Result<Placeholder, TemplateError> {
    let text = inner.trim();
    let bad = || TemplateError::BadPlaceholder {
        field: field.to_string(),
        text: inner.to_string(),
    };
    let (namespace, name) = text.split_once('.').ok_or_else(bad)?;
    let namespace = match namespace {
        "args" => Namespace::Args,
        "secrets" => Namespace::Secrets,
        "oauth" => Namespace::OAuth,
        other if is_name(other) => {
            return Err(TemplateError::UnknownNamespace {
                field: field.to_string(),
                namespace: other.to_string(),
            })
        }
        _ => return Err(bad()),
    };
    if !is_name(name) {
        return Err(bad());
    }
    Ok(Placeholder {
        namespace,
        name: name.to_string(),
    })
}

/// Names of arguments and secrets: a letter or `_`, then letters, digits, `_` or `-`.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && s.len() <= MAX_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// URL scheme of a function's upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where a placeholder in a JSON body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonSlot {
    /// Inside a string literal: insert JSON-escaped text.
    InString,
    /// In value position: insert a whole JSON value.
    Value,
}

/// A function compiled for rendering: checked once, rendered per request.
#[derive(Debug, Clone)]
pub struct FunctionTemplate {
    pub method: String,
    pub scheme: Scheme,
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    path: Template,
    query: Option<Template>,
    headers: Vec<(String, Template)>,
    body: Option<(Template, Vec<JsonSlot>)>,
    has_content_type: bool,
    pub timeout_ms: u64,
}

/// A request ready to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRequest {
    pub method: String,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Value for the `Host` header (`host` or `host:port` when the port is not the default).
    pub authority: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Names of the secrets injected (from templates and `{"$secret": ...}` arguments), once
    /// each: for host binding checks, redaction and the audit log.
    pub secrets_used: Vec<String>,
    /// Names of the OAuth connections whose access tokens were injected (from templates and
    /// `{"$oauth": ...}` handles), once each: for host binding checks and redaction.
    pub oauth_used: Vec<String>,
}

/// Where rendering takes the values that are not arguments from. Implemented by the data
/// plane over its compiled environment and the tokens it fetched for this request.
pub trait RenderValues<'s> {
    /// The plaintext of secret `name`, if the environment has it.
    fn secret(&self, name: &str) -> Option<&'s str>;
    /// The current access token of connection `name`, if one was obtained for this request.
    fn oauth_token(&self, connection: &str) -> Option<&'s str> {
        let _ = connection;
        None
    }
    /// The connection an OAuth handle refers to and its access token, if the handle is
    /// valid for this request.
    fn oauth_handle(&self, handle: &str) -> Option<(&'s str, &'s str)> {
        let _ = handle;
        None
    }
}

/// Secrets only, from a lookup function.
struct SecretsOnly<F>(F);

impl<'s, F: Fn(&str) -> Option<&'s str>> RenderValues<'s> for SecretsOnly<F> {
    fn secret(&self, name: &str) -> Option<&'s str> {
        (self.0)(name)
    }
}

impl FunctionTemplate {
    /// Check and compile a stored function definition.
    pub fn compile(spec: &FunctionSpec) -> Result<Self, TemplateError> {
        let method = spec.method.trim().to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(TemplateError::BadMethod(spec.method.clone()));
        }
        let url = parse_url(&spec.url)?;

        let mut headers = Vec::with_capacity(spec.headers.len());
        let mut has_content_type = false;
        for header in &spec.headers {
            let name = header.name.trim().to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(TemplateError::BadHeaderName(header.name.clone()));
            }
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(TemplateError::ReservedHeader(name));
            }
            let value = Template::parse(&format!("header {name}"), &header.value)?;
            if value
                .literals()
                .any(|l| l.bytes().any(is_forbidden_header_byte))
            {
                return Err(TemplateError::BadHeaderValue(name));
            }
            has_content_type |= name == "content-type";
            headers.push((name, value));
        }

        let body = match &spec.body {
            Some(source) => Some(compile_json_body(source)?),
            None => None,
        };

        Ok(Self {
            method,
            scheme: url.scheme,
            host: url.host,
            port: url.port,
            path: url.path,
            query: url.query,
            headers,
            body,
            has_content_type,
            timeout_ms: spec.timeout_ms,
        })
    }

    /// Every placeholder of the function (URL, headers, body).
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.path
            .placeholders()
            .chain(self.query.iter().flat_map(|q| q.placeholders()))
            .chain(self.headers.iter().flat_map(|(_, v)| v.placeholders()))
            .chain(self.body.iter().flat_map(|(b, _)| b.placeholders()))
    }

    /// Names of the OAuth connections the templates inject (`{{oauth.NAME}}`), once each.
    pub fn oauth_connections(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for ph in self.placeholders() {
            if ph.namespace == Namespace::OAuth && !names.contains(&ph.name.as_str()) {
                names.push(&ph.name);
            }
        }
        names
    }

    /// The OAuth handles among `args` that a placeholder of this function uses, once each
    /// (the data plane resolves them before rendering).
    pub fn oauth_handles<'a>(&self, args: &'a Map<String, Value>) -> Vec<&'a str> {
        let mut handles: Vec<&str> = Vec::new();
        for ph in self.placeholders() {
            if ph.namespace != Namespace::Args {
                continue;
            }
            if let Some(handle) = args.get(&ph.name).and_then(oauth_reference) {
                if !handles.contains(&handle) {
                    handles.push(handle);
                }
            }
        }
        handles
    }

    /// Render the request for `args`, taking secret values from `secret` (no OAuth).
    pub fn render<'s>(
        &self,
        args: &Map<String, Value>,
        secret: impl Fn(&str) -> Option<&'s str>,
    ) -> Result<RenderedRequest, RenderError> {
        self.render_with(args, &SecretsOnly(secret))
    }

    /// Render the request for `args`, taking secrets and OAuth tokens from `values`.
    pub fn render_with<'s>(
        &self,
        args: &Map<String, Value>,
        values: &impl RenderValues<'s>,
    ) -> Result<RenderedRequest, RenderError> {
        let lookup = |ph: &Placeholder| -> Result<Resolved<'_, 's>, RenderError> {
            match ph.namespace {
                Namespace::Args => {
                    let value = args
                        .get(&ph.name)
                        .ok_or_else(|| RenderError::MissingArgument(ph.name.clone()))?;
                    if let Some(name) = secret_reference(value) {
                        // The client names a secret; its value is looked up here and never
                        // passes through the client.
                        return values
                            .secret(name)
                            .map(Resolved::Secret)
                            .ok_or_else(|| RenderError::MissingSecret(name.to_string()));
                    }
                    if let Some(handle) = oauth_reference(value) {
                        return values
                            .oauth_handle(handle)
                            .map(|(_, token)| Resolved::Secret(token))
                            .ok_or_else(|| RenderError::InvalidOAuthHandle(ph.name.clone()));
                    }
                    Ok(Resolved::Arg(value))
                }
                Namespace::Secrets => values
                    .secret(&ph.name)
                    .map(Resolved::Secret)
                    .ok_or_else(|| RenderError::MissingSecret(ph.name.clone())),
                Namespace::OAuth => values
                    .oauth_token(&ph.name)
                    .map(Resolved::Secret)
                    .ok_or_else(|| RenderError::MissingOAuthToken(ph.name.clone())),
            }
        };

        // Path segments and query components take the same (strict) encoding.
        let url_component = |ph: &Placeholder, out: &mut String| {
            let resolved = lookup(ph)?;
            out.extend(utf8_percent_encode(&resolved.as_text(&ph.name)?, COMPONENT));
            Ok(())
        };
        let mut path_and_query = String::new();
        render_text(&self.path, &mut path_and_query, url_component)?;
        if let Some(query) = &self.query {
            path_and_query.push('?');
            render_text(query, &mut path_and_query, url_component)?;
        }

        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, template) in &self.headers {
            let mut value = String::new();
            render_text(template, &mut value, |ph, out| {
                let resolved = lookup(ph)?;
                let text = resolved.as_text(&ph.name)?;
                if text.bytes().any(is_forbidden_header_byte) {
                    return Err(match resolved {
                        Resolved::Secret(_) if ph.namespace == Namespace::OAuth => {
                            RenderError::MissingOAuthToken(ph.name.clone())
                        }
                        Resolved::Secret(_) => RenderError::UnusableSecret(ph.name.clone()),
                        Resolved::Arg(_) => RenderError::InvalidArgument {
                            name: ph.name.clone(),
                            reason: "contains a control character and cannot go into a header",
                        },
                    });
                }
                out.push_str(&text);
                Ok(())
            })?;
            headers.push((name.clone(), value));
        }

        let body = match &self.body {
            None => None,
            Some((template, slots)) => {
                let mut out = String::new();
                let mut slots = slots.iter();
                render_text(template, &mut out, |ph, out| {
                    let resolved = lookup(ph)?;
                    match slots.next() {
                        Some(JsonSlot::InString) => {
                            let text = resolved.as_text(&ph.name)?;
                            let quoted = serde_json::to_string(text.as_ref())
                                .expect("strings always serialize");
                            out.push_str(&quoted[1..quoted.len() - 1]);
                        }
                        _ => match resolved {
                            Resolved::Arg(v) => out.push_str(&v.to_string()),
                            Resolved::Secret(s) => out.push_str(
                                &serde_json::to_string(s).expect("strings always serialize"),
                            ),
                        },
                    }
                    Ok(())
                })?;
                if !self.has_content_type {
                    headers.push(("content-type".to_string(), "application/json".to_string()));
                }
                Some(out.into_bytes())
            }
        };

        let default_port = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let host_text = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let authority = if self.port == default_port {
            host_text
        } else {
            format!("{host_text}:{}", self.port)
        };

        let mut secrets_used: Vec<String> = Vec::new();
        let mut oauth_used: Vec<String> = Vec::new();
        let push = |list: &mut Vec<String>, name: &str| {
            if !list.iter().any(|used| used == name) {
                list.push(name.to_string());
            }
        };
        for ph in self.placeholders() {
            match ph.namespace {
                Namespace::Secrets => push(&mut secrets_used, &ph.name),
                Namespace::OAuth => push(&mut oauth_used, &ph.name),
                Namespace::Args => {
                    let Some(value) = args.get(&ph.name) else {
                        continue;
                    };
                    if let Some(name) = secret_reference(value) {
                        push(&mut secrets_used, name);
                    } else if let Some((connection, _)) =
                        oauth_reference(value).and_then(|h| values.oauth_handle(h))
                    {
                        push(&mut oauth_used, connection);
                    }
                }
            }
        }

        Ok(RenderedRequest {
            method: self.method.clone(),
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.port,
            authority,
            path_and_query,
            headers,
            body,
            secrets_used,
            oauth_used,
        })
    }
}

/// The secret an argument refers to, when it is a reference: `{"$secret": "NAME"}`.
pub fn secret_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(SECRET_REFERENCE_KEY)?.as_str(),
        _ => None,
    }
}

/// Key of a secret reference argument, `{"$secret": "NAME"}`.
pub const SECRET_REFERENCE_KEY: &str = "$secret";

/// The OAuth handle an argument refers to, when it is one: `{"$oauth": "HANDLE"}`.
pub fn oauth_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => {
            map.get(crate::oauth::OAUTH_REFERENCE_KEY)?.as_str()
        }
        _ => None,
    }
}

enum Resolved<'a, 's> {
    Arg(&'a Value),
    Secret(&'s str),
}

impl Resolved<'_, '_> {
    /// The value as text, for URLs, headers and JSON strings.
    fn as_text(&self, name: &str) -> Result<std::borrow::Cow<'_, str>, RenderError> {
        match self {
            Resolved::Secret(s) => Ok((*s).into()),
            Resolved::Arg(Value::String(s)) => Ok(s.as_str().into()),
            Resolved::Arg(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string().into()),
            Resolved::Arg(_) => Err(RenderError::InvalidArgument {
                name: name.to_string(),
                reason: "must be a string, number or boolean here",
            }),
        }
    }
}

fn render_text(
    template: &Template,
    out: &mut String,
    mut fill: impl FnMut(&Placeholder, &mut String) -> Result<(), RenderError>,
) -> Result<(), RenderError> {
    for part in &template.parts {
        match part {
            Part::Literal(l) => out.push_str(l),
            Part::Placeholder(ph) => fill(ph, out)?,
        }
    }
    Ok(())
}

struct ParsedUrl {
    scheme: Scheme,
    host: String,
    port: u16,
    path: Template,
    query: Option<Template>,
}

fn parse_url(source: &str) -> Result<ParsedUrl, TemplateError> {
    let source = source.trim();
    // Byte offset of a sub-slice of `source`, for error positions.
    let offset_of = |part: &str| part.as_ptr() as usize - source.as_ptr() as usize;
    let (scheme, rest) = if let Some(rest) = source.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = source.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(TemplateError::BadUrl(
            "must be an absolute http:// or https:// URL".into(),
        ));
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    if authority.contains("{{") || authority.contains("}}") {
        return Err(TemplateError::BadUrl(
            "the scheme, host and port must be literal, not templated".into(),
        ));
    }
    if authority.contains('@') {
        return Err(TemplateError::BadUrl(
            "credentials in the URL are not allowed; use a secret in a header".into(),
        ));
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let (host, port) = split_host_port(authority, default_port)?;
    if path_and_query.contains('#') {
        return Err(TemplateError::BadUrl(
            "fragments (#) are not allowed".into(),
        ));
    }
    if path_and_query
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(TemplateError::BadUrl(
            "must not contain spaces or control characters".into(),
        ));
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let path = if path.is_empty() {
        Template::parse("url", "/")?
    } else {
        Template::parse_at("url", path, offset_of(path))?
    };
    Ok(ParsedUrl {
        scheme,
        host,
        port,
        path,
        query: query
            .map(|q| Template::parse_at("url", q, offset_of(q)))
            .transpose()?,
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), TemplateError> {
    let bad = |why: &str| TemplateError::BadUrl(why.to_string());
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed `[` in host"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
    {
        return Err(bad("host contains characters that are not allowed"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Compile a JSON body template: find out, for every placeholder, whether it stands inside a
/// string literal, and check that the body is valid JSON once filled in.
fn compile_json_body(source: &str) -> Result<(Template, Vec<JsonSlot>), TemplateError> {
    let template = Template::parse("body", source)?;
    let mut slots = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut sample = String::with_capacity(source.len());
    for part in &template.parts {
        match part {
            Part::Literal(text) => {
                for c in text.chars() {
                    if in_string {
                        if escaped {
                            escaped = false;
                        } else if c == '\\' {
                            escaped = true;
                        } else if c == '"' {
                            in_string = false;
                        }
                    } else if c == '"' {
                        in_string = true;
                    }
                }
                sample.push_str(text);
            }
            Part::Placeholder(_) => {
                if in_string {
                    if escaped {
                        return Err(TemplateError::BadJsonBody(
                            "a placeholder cannot follow a backslash".into(),
                        ));
                    }
                    slots.push(JsonSlot::InString);
                    sample.push('x');
                } else {
                    slots.push(JsonSlot::Value);
                    sample.push_str("null");
                }
            }
        }
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&sample)
        .map_err(|e| TemplateError::BadJsonBody(e.to_string()))?;
    Ok((template, slots))
}

/// RFC 9110 token characters (header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes that may not appear in a header value (controls other than tab, and DEL).
fn is_forbidden_header_byte(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HeaderSpec;
    use serde_json::json;

    fn spec(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> FunctionSpec {
        FunctionSpec {
            id: uuid::Uuid::nil(),
            name: "f".into(),
            method: method.into(),
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| HeaderSpec {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            body: body.map(str::to_string),
            timeout_ms: 1000,
        }
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn no_secrets(_: &str) -> Option<&'static str> {
        None
    }

    #[test]
    fn parses_placeholders_and_literals() {
        let t = Template::parse("f", "a{{ args.x }}b{{secrets.TOKEN}}").unwrap();
        let names: Vec<_> = t
            .placeholders()
            .map(|p| (p.namespace, p.name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![(Namespace::Args, "x"), (Namespace::Secrets, "TOKEN")]
        );
    }

    #[test]
    fn rejects_malformed_templates() {
        assert!(matches!(
            Template::parse("f", "a{{args.x"),
            Err(TemplateError::Unclosed { at: 1, .. })
        ));
        assert!(matches!(
            Template::parse("f", "{{env.HOME}}"),
            Err(TemplateError::UnknownNamespace { namespace, .. }) if namespace == "env"
        ));
        for bad in [
            "{{}}",
            "{{args}}",
            "{{args.}}",
            "{{args.a b}}",
            "{{args.1x}}",
            "{{ .x }}",
        ] {
            assert!(
                matches!(
                    Template::parse("f", bad),
                    Err(TemplateError::BadPlaceholder { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn encodes_path_and_query_components() {
        let f = FunctionTemplate::compile(&spec(
            "get",
            "http://127.0.0.1:8080/anything/{{args.x}}?q={{args.x}}&n={{args.n}}",
            &[],
            None,
        ))
        .unwrap();
        let r = f
            .render(&args(json!({"x": "a b/c?d&e=f\"g#ü", "n": 5})), no_secrets)
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.authority, "127.0.0.1:8080");
        assert_eq!(
            r.path_and_query,
            "/anything/a%20b%2Fc%3Fd%26e%3Df%22g%23%C3%BC?q=a%20b%2Fc%3Fd%26e%3Df%22g%23%C3%BC&n=5"
        );
    }

    #[test]
    fn url_errors_point_into_the_whole_url() {
        assert_eq!(
            FunctionTemplate::compile(&spec("GET", "http://127.0.0.1:8002/{{args.x", &[], None))
                .unwrap_err(),
            TemplateError::Unclosed {
                field: "url".into(),
                at: 22
            }
        );
        assert!(matches!(
            FunctionTemplate::compile(&spec("GET", "http://h/p?a={{args.x", &[], None)),
            Err(TemplateError::Unclosed { at: 13, .. })
        ));
    }

    #[test]
    fn host_must_be_literal() {
        for url in [
            "http://{{args.host}}/x",
            "https://api.{{args.x}}.com/",
            "http://example.com:{{args.port}}/",
        ] {
            assert!(matches!(
                FunctionTemplate::compile(&spec("GET", url, &[], None)),
                Err(TemplateError::BadUrl(_))
            ));
        }
        for url in [
            "ftp://x/",
            "example.com/x",
            "http:///x",
            "http://a@b/",
            "http://h:0/",
            "http://h/#f",
        ] {
            assert!(
                FunctionTemplate::compile(&spec("GET", url, &[], None)).is_err(),
                "{url}"
            );
        }
    }

    #[test]
    fn headers_inject_secrets_and_refuse_control_characters() {
        let f = FunctionTemplate::compile(&spec(
            "GET",
            "https://api.example.com/bearer",
            &[
                ("Authorization", "Bearer {{secrets.TOKEN}}"),
                ("X-Tag", "{{args.tag}}"),
            ],
            None,
        ))
        .unwrap();
        assert_eq!(f.port, 443);
        let r = f
            .render(&args(json!({"tag": "t 1"})), |n| {
                (n == "TOKEN").then_some("s3cr3t")
            })
            .unwrap();
        assert_eq!(r.authority, "api.example.com");
        assert_eq!(
            r.headers,
            vec![
                ("authorization".to_string(), "Bearer s3cr3t".to_string()),
                ("x-tag".to_string(), "t 1".to_string())
            ]
        );
        assert_eq!(
            f.render(&args(json!({"tag": "a\r\nX-Evil: 1"})), |_| Some("s")),
            Err(RenderError::InvalidArgument {
                name: "tag".into(),
                reason: "contains a control character and cannot go into a header"
            })
        );
        assert_eq!(
            f.render(&args(json!({"tag": "a"})), |_| Some("s\n")),
            Err(RenderError::UnusableSecret("TOKEN".into()))
        );
    }

    /// Secrets `S`, connection `crm` with token `crm-token`, handle `h1` for connection
    /// `crm`; nothing else.
    struct Values;

    impl<'s> RenderValues<'s> for Values {
        fn secret(&self, name: &str) -> Option<&'s str> {
            (name == "S").then_some("secret-value")
        }
        fn oauth_token(&self, connection: &str) -> Option<&'s str> {
            (connection == "crm").then_some("crm-token")
        }
        fn oauth_handle(&self, handle: &str) -> Option<(&'s str, &'s str)> {
            (handle == "h1").then_some(("crm", "crm-token"))
        }
    }

    #[test]
    fn oauth_tokens_and_handles_are_injected_and_reported() {
        let f = FunctionTemplate::compile(&spec(
            "POST",
            "https://api.example.com/{{args.id}}",
            &[
                ("authorization", "Bearer {{oauth.crm}}"),
                ("x-secret", "{{secrets.S}}"),
            ],
            Some(r#"{"other": "{{args.other}}", "again": "{{oauth.crm}}"}"#),
        ))
        .unwrap();
        assert_eq!(f.oauth_connections(), vec!["crm"]);
        let a = args(json!({"id": "7", "other": {"$oauth": "h1"}}));
        assert_eq!(f.oauth_handles(&a), vec!["h1"]);
        let r = f.render_with(&a, &Values).unwrap();
        assert_eq!(r.headers[0].1, "Bearer crm-token");
        assert_eq!(
            String::from_utf8(r.body.unwrap()).unwrap(),
            r#"{"other": "crm-token", "again": "crm-token"}"#
        );
        assert_eq!(r.oauth_used, vec!["crm".to_string()]);
        assert_eq!(r.secrets_used, vec!["S".to_string()]);

        // A forged or expired handle, or a connection without a token, fails closed.
        let forged = args(json!({"id": "7", "other": {"$oauth": "forged"}}));
        assert_eq!(
            f.render_with(&forged, &Values),
            Err(RenderError::InvalidOAuthHandle("other".into()))
        );
        let g = FunctionTemplate::compile(&spec(
            "GET",
            "https://api.example.com/",
            &[("authorization", "Bearer {{oauth.nope}}")],
            None,
        ))
        .unwrap();
        assert_eq!(
            g.render_with(&args(json!({})), &Values),
            Err(RenderError::MissingOAuthToken("nope".into()))
        );
        // Secrets-only rendering has no tokens at all.
        assert_eq!(
            f.render(&a, |_| Some("s")),
            Err(RenderError::MissingOAuthToken("crm".into()))
        );
        // Handles are only `{"$oauth": "..."}` objects with nothing else.
        assert!(oauth_reference(&json!({"$oauth": "h", "x": 1})).is_none());
        assert!(oauth_reference(&json!({"$oauth": 1})).is_none());
        assert!(f.oauth_handles(&args(json!({"other": "h1"}))).is_empty());
    }

    #[test]
    fn missing_secret_or_argument_fails_closed() {
        let f = FunctionTemplate::compile(&spec(
            "GET",
            "http://h/{{args.id}}",
            &[("authorization", "Bearer {{secrets.TOKEN}}")],
            None,
        ))
        .unwrap();
        assert_eq!(
            f.render(&args(json!({})), |_| Some("s")),
            Err(RenderError::MissingArgument("id".into()))
        );
        assert_eq!(
            f.render(&args(json!({"id": "1"})), no_secrets),
            Err(RenderError::MissingSecret("TOKEN".into()))
        );
        assert!(matches!(
            f.render(&args(json!({"id": {"a": 1}})), |_| Some("s")),
            Err(RenderError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn rejects_reserved_and_invalid_headers() {
        let compile = |name: &str, value: &str| {
            FunctionTemplate::compile(&spec("GET", "http://h/", &[(name, value)], None))
        };
        assert!(matches!(
            compile("Host", "x"),
            Err(TemplateError::ReservedHeader(_))
        ));
        assert!(matches!(
            compile("Content-Length", "1"),
            Err(TemplateError::ReservedHeader(_))
        ));
        assert!(matches!(
            compile("bad name", "x"),
            Err(TemplateError::BadHeaderName(_))
        ));
        assert!(matches!(
            compile("x", "a\nb"),
            Err(TemplateError::BadHeaderValue(_))
        ));
        assert!(matches!(
            FunctionTemplate::compile(&spec("TRACE", "http://h/", &[], None)),
            Err(TemplateError::BadMethod(_))
        ));
    }

    #[test]
    fn json_body_escapes_in_strings_and_keeps_types_in_value_position() {
        let f = FunctionTemplate::compile(&spec(
            "POST",
            "http://h/anything",
            &[],
            Some(r#"{"text": "say: {{args.x}}", "raw": {{args.x}}, "n": {{args.n}}, "obj": {{args.o}}, "tok": {{secrets.T}}}"#),
        ))
        .unwrap();
        let x = "quote \" backslash \\ newline \n ü {{args.n}}";
        let r = f
            .render(
                &args(json!({"x": x, "n": 3.5, "o": {"k": [1, null]}})),
                |_| Some("s\"t"),
            )
            .unwrap();
        let body: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["text"], json!(format!("say: {x}")));
        assert_eq!(body["raw"], json!(x));
        assert_eq!(body["n"], json!(3.5));
        assert_eq!(body["obj"], json!({"k": [1, null]}));
        assert_eq!(body["tok"], json!("s\"t"));
        assert!(r
            .headers
            .contains(&("content-type".into(), "application/json".into())));
    }

    #[test]
    fn json_body_must_be_valid_json() {
        for body in [
            r#"{"a": }"#,
            r#"{"a": {{args.x}}"#,
            r#"{"a": "\{{args.x}}"}"#,
            "not json",
        ] {
            assert!(
                FunctionTemplate::compile(&spec("POST", "http://h/", &[], Some(body))).is_err(),
                "{body}"
            );
        }
        assert!(FunctionTemplate::compile(&spec(
            "POST",
            "http://h/",
            &[],
            Some(r#"{"a": "{{args.x}}"}"#)
        ))
        .is_ok());
    }

    #[test]
    fn secret_references_in_arguments_are_resolved_and_reported() {
        let f = FunctionTemplate::compile(&spec(
            "POST",
            "http://h/{{args.a}}",
            &[
                ("x-key", "{{args.k}}"),
                ("authorization", "Bearer {{secrets.TOKEN}}"),
            ],
            Some(r#"{"v": {{args.k}}, "s": "{{args.k}}"}"#),
        ))
        .unwrap();
        let secrets = |n: &str| match n {
            "TOKEN" => Some("tok"),
            "OTHER" => Some("o\"v"),
            _ => None,
        };
        let r = f
            .render(
                &args(json!({"a": "plain", "k": {"$secret": "OTHER"}})),
                secrets,
            )
            .unwrap();
        assert_eq!(r.headers[0], ("x-key".to_string(), "o\"v".to_string()));
        let body: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(body, json!({"v": "o\"v", "s": "o\"v"}));
        assert_eq!(
            r.secrets_used,
            vec!["OTHER".to_string(), "TOKEN".to_string()]
        );
        assert_eq!(
            f.render(&args(json!({"a": "p", "k": {"$secret": "NOPE"}})), secrets),
            Err(RenderError::MissingSecret("NOPE".into()))
        );
        // Objects that merely contain the key are ordinary arguments.
        assert!(secret_reference(&json!({"$secret": "X", "y": 1})).is_none());
        assert!(secret_reference(&json!({"$secret": 1})).is_none());
    }

    #[test]
    fn ipv6_and_default_ports() {
        let f = FunctionTemplate::compile(&spec("GET", "http://[::1]:9000/x", &[], None)).unwrap();
        assert_eq!((f.host.as_str(), f.port), ("::1", 9000));
        let r = f.render(&Map::new(), no_secrets).unwrap();
        assert_eq!(r.authority, "[::1]:9000");
        assert_eq!(r.path_and_query, "/x");
        let f = FunctionTemplate::compile(&spec("GET", "http://Example.COM", &[], None)).unwrap();
        let r = f.render(&Map::new(), no_secrets).unwrap();
        assert_eq!(
            (r.authority.as_str(), r.path_and_query.as_str(), r.port),
            ("example.com", "/", 80)
        );
    }
}
