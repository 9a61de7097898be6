//! What data planes report about connections ([`OAuthConnectionReport`]), applied to the
//! connection rows.
//!
//! Idempotent, so a report delivered twice (a stream entry claimed again) changes nothing the
//! second time, and order-tolerant:
//! - tokens are stored only when their generation is above the stored one (the generation is
//!   the fencing number of the data planes that refresh);
//! - status, error and `last_refresh_at` come from the newest report only (by its `at`), so
//!   a late re-delivery of an old "connected" cannot undo a newer "broken";
//! - a completed authorization is marked consumed once.
//!
//! Reports hold sealed tokens only; still, nothing here logs a report's token fields.

use airlock_shared::oauth::{ConnectionStatus, OAuthConnectionReport};
use chrono::SubsecRound;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter,
    Set,
};
use serde_json::json;
use uuid::Uuid;

use super::{parse_status, status_name};
use crate::domain::audit::{self, actions, targets, Actor, AuditEntry};
use crate::domain::environments::lock_environment;
use crate::domain::{begin_write, now};
use crate::entity::{oauth_authorization, oauth_connection};
use crate::error::AppError;

/// Longest error text kept from a report.
const MAX_ERROR_LEN: usize = 1024;

/// What applying a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOutcome {
    pub environment_id: Uuid,
    /// The snapshot must be published again: the status changed or an authorization was
    /// consumed (a refresh alone does not: data planes share new tokens through Redis).
    pub republish: bool,
    /// New tokens were stored.
    pub tokens_stored: bool,
}

/// Apply one report. `Ok(None)`: no such connection in that environment (deleted since, or a
/// forged report); logged and dropped.
pub async fn apply(
    db: &DatabaseConnection,
    report: &OAuthConnectionReport,
) -> Result<Option<ReportOutcome>, AppError> {
    let txn = begin_write(db).await?;
    let Some(found) = oauth_connection::Entity::find_by_id(report.connection_id)
        .filter(oauth_connection::Column::EnvironmentId.eq(report.environment_id))
        .one(&txn)
        .await?
    else {
        tracing::warn!(
            connection_id = %report.connection_id,
            environment_id = %report.environment_id,
            "OAuth report for an unknown connection; dropped"
        );
        return Ok(None);
    };
    let environment = lock_environment(&txn, found.environment_id).await?;
    if environment.tenant_id != report.tenant_id {
        tracing::warn!(
            connection_id = %report.connection_id,
            "OAuth report names another tenant than its connection's; dropped"
        );
        return Ok(None);
    }
    let Some(current) = oauth_connection::Entity::find_by_id(report.connection_id)
        .one(&txn)
        .await?
    else {
        return Ok(None);
    };

    let at = report.at.trunc_subsecs(6);
    let before_status = parse_status(&current.status)?;
    let newest = current.last_refresh_at.is_none_or(|last| at >= last);
    let mut active = current.clone().into_active_model();
    let mut changed = false;

    let mut tokens_stored = false;
    if let Some(tokens) = &report.tokens {
        if tokens.generation > current.token_generation {
            active.sealed_tokens = Set(Some(
                serde_json::to_string(tokens).map_err(AppError::internal)?,
            ));
            active.token_generation = Set(tokens.generation);
            active.expires_at = Set(tokens.expires_at.map(|t| t.trunc_subsecs(6)));
            tokens_stored = true;
            changed = true;
        }
    }

    let mut status = before_status;
    if newest {
        status = report.status;
        let error = if report.tokens.is_some() && report.status == ConnectionStatus::Connected {
            None
        } else {
            report.error.as_deref().map(clean_error)
        };
        if current.status != status_name(status)
            || current.last_error != error
            || current.last_refresh_at != Some(at)
        {
            active.status = Set(status_name(status).to_string());
            active.last_error = Set(error);
            active.last_refresh_at = Set(Some(at));
            changed = true;
        }
        if status == ConnectionStatus::Connected
            && (before_status != ConnectionStatus::Connected || current.connected_at.is_none())
        {
            active.connected_at = Set(Some(at));
        }
    }

    let mut consumed = false;
    if let Some(authorization_id) = report.authorization_id {
        let authorization = oauth_authorization::Entity::find_by_id(authorization_id)
            .filter(oauth_authorization::Column::ConnectionId.eq(current.id))
            .one(&txn)
            .await?;
        match authorization {
            Some(row) if row.consumed_at.is_none() => {
                let mut row = row.into_active_model();
                row.consumed_at = Set(Some(at));
                row.update(&txn).await?;
                active.connected_at = Set(Some(at));
                consumed = true;
                changed = true;
            }
            Some(_) => {}
            None => tracing::warn!(
                %authorization_id,
                connection_id = %current.id,
                "OAuth report completes an unknown authorization"
            ),
        }
    }

    if changed {
        active.updated_at = Set(now());
        active.update(&txn).await?;
    }
    let status_changed = status != before_status;
    if status_changed {
        let action = match status {
            ConnectionStatus::Connected => Some(actions::OAUTH_CONNECTION_CONNECTED),
            ConnectionStatus::Broken => Some(actions::OAUTH_CONNECTION_BROKEN),
            ConnectionStatus::Pending => None,
        };
        if let Some(action) = action {
            audit::record(
                &txn,
                AuditEntry::new(Actor::DataPlane, action, targets::OAUTH_CONNECTION)
                    .at(at)
                    .tenant(environment.tenant_id)
                    .environment(environment.id)
                    .target(current.id, current.name.clone())
                    .detail(json!({
                        "from": status_name(before_status),
                        "to": status_name(status),
                        "authorizationId": report.authorization_id,
                        "tokenGeneration": report.tokens.as_ref().map(|t| t.generation),
                        "error": report.error.as_deref().map(clean_error),
                    })),
            )
            .await?;
        }
    }
    txn.commit().await?;
    Ok(Some(ReportOutcome {
        environment_id: environment.id,
        republish: status_changed || consumed,
        tokens_stored,
    }))
}

/// The error text without control characters, cut to [`MAX_ERROR_LEN`] bytes.
fn clean_error(error: &str) -> String {
    let mut cleaned: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !cleaned.is_char_boundary(end) {
            end -= 1;
        }
        cleaned.truncate(end);
    }
    cleaned
}
