//! Functions: queries, mutations and the `Function` type.

use airlock_shared::wire::HeaderSpec;
use async_graphql::{Context, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::{actor, parse_id, state, to_id};
use crate::authz::guard::{Can, Target};
use crate::authz::Permission;
use crate::domain::functions::{self, NewFunction};
use crate::error::{AppError, GraphqlResultExt};

/// A trained request to a third-party API, defined once per tenant and run in any of its
/// environments. URL, header values and body are templates with `{{args.NAME}}` and
/// `{{secrets.NAME}}` placeholders.
pub struct Function(pub functions::Function);

/// A header a function sends: name and value template.
#[derive(SimpleObject)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A trained request to a third-party API, defined once per tenant and run in any of its
/// environments. URL, header values and body are templates with `{{args.NAME}}` and
/// `{{secrets.NAME}}` placeholders.
#[Object]
impl Function {
    async fn id(&self) -> ID {
        to_id(self.0.spec.id)
    }

    async fn tenant_id(&self) -> ID {
        to_id(self.0.tenant_id)
    }

    /// Unique within the tenant; used in invoke URLs.
    async fn name(&self) -> &str {
        &self.0.spec.name
    }

    /// HTTP method, upper case.
    async fn method(&self) -> &str {
        &self.0.spec.method
    }

    /// Absolute URL template; scheme and host are literal.
    async fn url(&self) -> &str {
        &self.0.spec.url
    }

    /// Headers, in order.
    async fn headers(&self) -> Vec<Header> {
        self.0
            .spec
            .headers
            .iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    }

    /// JSON body template, if the function sends a body.
    async fn body(&self) -> Option<&str> {
        self.0.spec.body.as_deref()
    }

    /// Upstream timeout in milliseconds.
    async fn timeout_ms(&self) -> Result<i32> {
        i32::try_from(self.0.spec.timeout_ms)
            .map_err(|_| AppError::internal(anyhow::anyhow!("timeout out of range")))
            .gql()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A header a function sends: name and value template.
#[derive(InputObject)]
pub struct HeaderInput {
    pub name: String,
    /// Value template.
    pub value: String,
}

/// Input of `createFunction`.
#[derive(InputObject)]
pub struct CreateFunctionInput {
    pub tenant_id: ID,
    /// 1-64 ASCII letters, digits, `-` and `_`; unique within the tenant.
    pub name: String,
    /// GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS.
    pub method: String,
    /// Absolute `http(s)` URL template; scheme and host must be literal.
    pub url: String,
    pub headers: Option<Vec<HeaderInput>>,
    /// JSON body template.
    pub body: Option<String>,
    /// Upstream timeout, 1-300000 ms (default 30000).
    pub timeout_ms: Option<i32>,
}

/// Function queries.
#[derive(Default)]
pub struct FunctionQuery;

#[Object]
impl FunctionQuery {
    /// Functions of a tenant, by name. `NOT_FOUND` if the tenant is unknown.
    #[graphql(guard = "Can::new(Permission::FunctionRead, Target::tenant(&tenant_id))")]
    async fn functions(&self, ctx: &Context<'_>, tenant_id: ID) -> Result<Vec<Function>> {
        let tenant_id = parse_id("tenantId", &tenant_id).gql()?;
        let functions = functions::list(&state(ctx).db, tenant_id).await.gql()?;
        Ok(functions.into_iter().map(Function).collect())
    }
}

/// Function mutations.
#[derive(Default)]
pub struct FunctionMutation;

#[Object]
impl FunctionMutation {
    /// Define a function. Its templates are checked exactly as the data plane compiles them;
    /// template errors carry their own codes (`TEMPLATE_MALFORMED`, `INVALID_URL`...). The
    /// function is live in every environment of the tenant when this returns.
    #[graphql(guard = "Can::new(Permission::FunctionWrite, Target::tenant(&input.tenant_id))")]
    async fn create_function(
        &self,
        ctx: &Context<'_>,
        input: CreateFunctionInput,
    ) -> Result<Function> {
        let state = state(ctx);
        let actor = actor(ctx).gql()?;
        let tenant_id = parse_id("tenantId", &input.tenant_id).gql()?;
        let new = NewFunction {
            tenant_id,
            name: input.name,
            method: input.method,
            url: input.url,
            headers: input
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|h| HeaderSpec {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            body: input.body,
            timeout_ms: input.timeout_ms.map(i64::from),
        };
        let function = functions::create(&state.db, actor, new).await.gql()?;
        state.publisher.publish_tenant(tenant_id).await;
        Ok(Function(function))
    }
}
