//! Functions: trained requests, defined once per tenant and run in any of its environments.

use airlock_shared::template::FunctionTemplate;
use airlock_shared::wire::{FunctionSpec, HeaderSpec, DEFAULT_TIMEOUT_MS};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set,
};
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::environments::lock_tenant;
use super::{begin_write, insert_error, names, now, tenants};
use crate::entity::function;
use crate::error::AppError;

/// Longest URL template, in bytes.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// Most headers a function may set.
pub const MAX_HEADERS: usize = 64;
/// Longest header value template, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;
/// Longest body template, in bytes.
pub const MAX_BODY_LEN: usize = 256 * 1024;
/// Longest upstream timeout a function may ask for.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// What a caller provides to define a function.
#[derive(Debug, Clone)]
pub struct NewFunction {
    pub tenant_id: Uuid,
    pub name: String,
    pub method: String,
    pub url: String,
    pub headers: Vec<HeaderSpec>,
    pub body: Option<String>,
    /// `None` means [`DEFAULT_TIMEOUT_MS`].
    pub timeout_ms: Option<i64>,
}

/// A stored function: its definition as the data plane receives it, plus ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub tenant_id: Uuid,
    pub spec: FunctionSpec,
    pub created_at: DateTime<Utc>,
}

/// Check, then store a function. Nothing is written unless the whole definition compiles.
pub async fn create(
    db: &DatabaseConnection,
    actor: Actor,
    new: NewFunction,
) -> Result<Function, AppError> {
    names::check_resource_name("name", &new.name)?;
    let spec = checked_spec(&new)?;

    let txn = begin_write(db).await?;
    lock_tenant(&txn, new.tenant_id).await?;
    let taken = function::Entity::find()
        .filter(function::Column::TenantId.eq(new.tenant_id))
        .filter(function::Column::Name.eq(&spec.name))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "function",
            name: spec.name,
        });
    }
    let headers = serde_json::to_string(&spec.headers).map_err(AppError::internal)?;
    let timeout_ms = i64::try_from(spec.timeout_ms).map_err(AppError::internal)?;
    let model = function::ActiveModel {
        id: Set(spec.id),
        tenant_id: Set(new.tenant_id),
        name: Set(spec.name.clone()),
        method: Set(spec.method.clone()),
        url: Set(spec.url.clone()),
        headers: Set(headers),
        body: Set(spec.body.clone()),
        timeout_ms: Set(timeout_ms),
        created_at: Set(now()),
    }
    .insert(&txn)
    .await
    .map_err(|e| insert_error(e, "function", &spec.name))?;
    audit::record(
        &txn,
        AuditEntry::new(actor, actions::FUNCTION_CREATE, targets::FUNCTION)
            .tenant(new.tenant_id)
            .target(model.id, model.name.clone())
            .detail(serde_json::json!({ "method": model.method })),
    )
    .await?;
    txn.commit().await?;
    from_model(model)
}

/// Validate sizes and the timeout, then compile the templates exactly as the data plane will.
fn checked_spec(new: &NewFunction) -> Result<FunctionSpec, AppError> {
    if new.url.len() > MAX_URL_LEN {
        return Err(AppError::invalid(
            "url",
            format!("must be at most {MAX_URL_LEN} bytes"),
        ));
    }
    if new.headers.len() > MAX_HEADERS {
        return Err(AppError::invalid(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    if let Some(header) = new
        .headers
        .iter()
        .find(|h| h.name.len() > 256 || h.value.len() > MAX_HEADER_VALUE_LEN)
    {
        return Err(AppError::invalid(
            "headers",
            format!(
                "header `{}`: names are at most 256 bytes, values at most {MAX_HEADER_VALUE_LEN} bytes",
                header.name.chars().take(64).collect::<String>()
            ),
        ));
    }
    if new.body.as_ref().is_some_and(|b| b.len() > MAX_BODY_LEN) {
        return Err(AppError::invalid(
            "body",
            format!("must be at most {MAX_BODY_LEN} bytes"),
        ));
    }
    let timeout_ms = match new.timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(ms) => match u64::try_from(ms) {
            Ok(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => ms,
            _ => {
                return Err(AppError::invalid(
                    "timeoutMs",
                    format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                ))
            }
        },
    };
    let spec = FunctionSpec {
        id: Uuid::new_v4(),
        name: new.name.clone(),
        // Stored upper case, as `FunctionSpec` documents; the compile below accepts any case.
        method: new.method.trim().to_ascii_uppercase(),
        url: new.url.clone(),
        headers: new.headers.clone(),
        body: new.body.clone(),
        timeout_ms,
    };
    FunctionTemplate::compile(&FunctionSpec {
        method: new.method.clone(),
        ..spec.clone()
    })?;
    Ok(spec)
}

/// Functions of a tenant, by name; `NOT_FOUND` if the tenant is unknown.
pub async fn list(db: &DatabaseConnection, tenant_id: Uuid) -> Result<Vec<Function>, AppError> {
    tenants::get(db, tenant_id).await?;
    list_of_tenant(db, tenant_id).await
}

/// Functions of a tenant, by name, without checking the tenant exists.
pub async fn list_of_tenant(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> Result<Vec<Function>, AppError> {
    function::Entity::find()
        .filter(function::Column::TenantId.eq(tenant_id))
        .order_by_asc(function::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(from_model)
        .collect()
}

/// Names of a tenant's functions (for checking API key grants).
pub async fn names_of_tenant(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> Result<Vec<String>, AppError> {
    Ok(function::Entity::find()
        .filter(function::Column::TenantId.eq(tenant_id))
        .all(db)
        .await?
        .into_iter()
        .map(|f| f.name)
        .collect())
}

fn from_model(model: function::Model) -> Result<Function, AppError> {
    let headers: Vec<HeaderSpec> = serde_json::from_str(&model.headers).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "function {} has malformed stored headers: {e}",
            model.id
        ))
    })?;
    let timeout_ms = u64::try_from(model.timeout_ms).map_err(|_| {
        AppError::internal(anyhow::anyhow!(
            "function {} has a negative stored timeout",
            model.id
        ))
    })?;
    Ok(Function {
        tenant_id: model.tenant_id,
        created_at: model.created_at,
        spec: FunctionSpec {
            id: model.id,
            name: model.name,
            method: model.method,
            url: model.url,
            headers,
            body: model.body,
            timeout_ms,
        },
    })
}
