//! Events reported by data planes: a read-only, paginated query.

use airlock_shared::events::GatewayEvent;
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, InputObject, Object, Result, ID};
use chrono::{DateTime, Utc};

use super::{parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::events::{self, EventCursor, EventFilter as DomainFilter};
use crate::error::{AppError, GraphqlResultExt};

/// Something a data plane reported: a failure, a denied request, or a use of secrets.
/// Carries names and ids only, never a secret value or an API key.
pub struct Event(pub GatewayEvent);

/// Something a data plane reported: a failure, a denied request, or a use of secrets.
/// Carries names and ids only, never a secret value or an API key.
#[Object]
impl Event {
    /// The event's id, unique across data planes.
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }

    /// When the data plane saw it.
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }

    /// Dotted kind: `secret.used`, `auth.denied`, `scope.denied`, `secret.unavailable`,
    /// `secret.host_denied`, `upstream.unreachable`, `upstream.timeout`, `upstream.error`,
    /// `request.invalid`, `function.not_found`, `oauth.refresh_failed`,
    /// `oauth.callback_refused`, `oauth.connected`.
    async fn kind(&self) -> &'static str {
        self.0.kind.as_str()
    }

    /// Unknown (null) when the API key was not recognised.
    async fn tenant_id(&self) -> Option<ID> {
        self.0.tenant_id.map(to_id)
    }

    async fn environment_id(&self) -> Option<ID> {
        self.0.environment_id.map(to_id)
    }

    /// The `x-airlock-request-id` the client got back.
    async fn request_id(&self) -> &str {
        &self.0.request_id
    }

    /// The function invoked, when known.
    async fn function(&self) -> Option<&str> {
        self.0.function.as_deref()
    }

    /// The API key used, when it was recognised.
    async fn api_key_id(&self) -> Option<ID> {
        self.0.api_key_id.map(to_id)
    }

    /// Names of the secrets involved (used, missing or refused). Never values.
    async fn secrets(&self) -> &[String] {
        &self.0.secrets
    }

    /// Host of the upstream request, when known.
    async fn upstream_host(&self) -> Option<&str> {
        self.0.upstream_host.as_deref()
    }

    /// HTTP status returned to the client.
    async fn status(&self) -> i32 {
        i32::from(self.0.status)
    }

    /// What happened, in words.
    async fn message(&self) -> &str {
        &self.0.message
    }

    /// The OAuth connection involved, by name (OAuth events, and requests that used one).
    async fn oauth_connection(&self) -> Option<&str> {
        self.0.oauth_connection.as_deref()
    }
}

/// Narrows `events`; every field set must match.
#[derive(InputObject, Default)]
pub struct EventFilter {
    pub tenant_id: Option<ID>,
    pub environment_id: Option<ID>,
    /// Dotted kind, e.g. `secret.used` or `oauth.refresh_failed`.
    pub kind: Option<String>,
    /// An `x-airlock-request-id`.
    pub request_id: Option<String>,
}

impl EventFilter {
    /// What the guard checks: the filter's environment, else its tenant, else the platform.
    pub fn target(filter: &Option<EventFilter>) -> Target {
        Target::Filter {
            tenant: filter.as_ref().and_then(|f| f.tenant_id.clone()),
            environment: filter.as_ref().and_then(|f| f.environment_id.clone()),
        }
    }

    fn parse(self) -> Result<DomainFilter, AppError> {
        let kind = match self.kind {
            Some(name) => Some(events::kind_from_name(&name).ok_or_else(|| {
                AppError::invalid(
                    "kind",
                    format!(
                        "unknown event kind; expected one of: {}",
                        events::kind_names().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        Ok(DomainFilter {
            tenant_id: self
                .tenant_id
                .map(|id| parse_id("tenantId", &id))
                .transpose()?,
            environment_id: self
                .environment_id
                .map(|id| parse_id("environmentId", &id))
                .transpose()?,
            kind,
            request_id: self.request_id,
        })
    }
}

/// Event queries.
#[derive(Default)]
pub struct EventQuery;

#[Object]
impl EventQuery {
    /// Events reported by data planes, newest first. Page forward with `first` (1 to 500)
    /// and `after` (a cursor from `pageInfo.endCursor` or an edge).
    #[graphql(guard = "Can::new(Permission::EventRead, EventFilter::target(&filter))")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilter>,
        #[graphql(default_with = "Some(events::DEFAULT_PAGE_SIZE as i32)")] first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Event>> {
        let filter = filter.unwrap_or_default().parse().gql()?;
        // An explicit null means the default too.
        let first = u64::try_from(first.unwrap_or(events::DEFAULT_PAGE_SIZE as i32))
            .ok()
            .filter(|n| (1..=events::MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                AppError::invalid(
                    "first",
                    format!("must be between 1 and {}", events::MAX_PAGE_SIZE),
                )
            })
            .gql()?;
        let cursor = after
            .as_deref()
            .map(|text| {
                EventCursor::decode(text)
                    .ok_or_else(|| AppError::invalid("after", "is not a cursor returned by events"))
            })
            .transpose()
            .gql()?;
        let page = events::list(&state(ctx).db, &filter, first, cursor)
            .await
            .gql()?;
        let mut connection = Connection::new(cursor.is_some(), page.has_next_page);
        connection.edges.extend(
            page.events
                .into_iter()
                .map(|event| Edge::new(EventCursor::of(&event).encode(), Event(event))),
        );
        Ok(connection)
    }
}
