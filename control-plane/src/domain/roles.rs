//! Role assignments: granting and revoking roles. The decisions themselves are made by
//! [`crate::authz`], which loads these rows; callers reload it after a change.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, ModelTrait,
    PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::{begin_write, insert_error, not_found, now};
use crate::authz::{Principal, Role, Scope};
use crate::entity::{admin_token, role_assignment, user};
use crate::error::AppError;

/// Grant `role` to `principal` in `scope`. `superadmin` only on the platform; the other roles
/// in a tenant or an environment (`owner` in a tenant only). The principal must exist (a
/// user or a token), unless it is an email invitation. Granting a role twice is
/// `ALREADY_EXISTS`.
pub async fn grant(
    db: &DatabaseConnection,
    actor: Actor,
    granted_by: &Principal,
    principal: &Principal,
    role: Role,
    scope: Scope,
) -> Result<role_assignment::Model, AppError> {
    match (role, scope.tenant, scope.environment) {
        (Role::Superadmin, None, None) => {}
        (Role::Superadmin, _, _) => {
            return Err(AppError::invalid(
                "role",
                "superadmin is granted on the platform (no tenantId or environmentId)",
            ))
        }
        (_, None, _) => {
            return Err(AppError::invalid(
                "tenantId",
                "is required for every role but superadmin",
            ))
        }
        (Role::Owner, Some(_), Some(_)) => {
            return Err(AppError::invalid(
                "environmentId",
                "owner is granted on a whole tenant",
            ))
        }
        _ => {}
    }
    let txn = begin_write(db).await?;
    match principal {
        Principal::User(id) => {
            user::Entity::find_by_id(*id)
                .one(&txn)
                .await?
                .ok_or_else(|| not_found("user", *id))?;
        }
        Principal::Token(id) => {
            let token = admin_token::Entity::find_by_id(*id)
                .one(&txn)
                .await?
                .ok_or_else(|| not_found("admin token", *id))?;
            if token.principal.is_some() {
                return Err(AppError::invalid(
                    "principal",
                    "this token acts for a user: grant the role to the user",
                ));
            }
        }
        Principal::Email(_) => {}
    }
    let domain = scope.domain();
    let taken = role_assignment::Entity::find()
        .filter(role_assignment::Column::Principal.eq(principal.to_string()))
        .filter(role_assignment::Column::Role.eq(role.as_str()))
        .filter(role_assignment::Column::Domain.eq(&domain))
        .one(&txn)
        .await?;
    let name = format!("{} {principal} {domain}", role.as_str());
    if taken.is_some() {
        return Err(AppError::AlreadyExists {
            kind: "role assignment",
            name,
        });
    }
    let model = role_assignment::ActiveModel {
        id: Set(Uuid::new_v4()),
        principal: Set(principal.to_string()),
        role: Set(role.as_str().to_string()),
        domain: Set(domain),
        tenant_id: Set(scope.tenant),
        environment_id: Set(scope.environment),
        created_by: Set(granted_by.to_string()),
        created_at: Set(now()),
    }
    .insert(&txn)
    .await
    .map_err(|e| insert_error(e, "role assignment", &name))?;
    audit::record(&txn, entry(actor, actions::ROLE_GRANT, &model)).await?;
    txn.commit().await?;
    Ok(model)
}

/// One assignment; `NOT_FOUND` if the id is unknown.
pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<role_assignment::Model, AppError> {
    role_assignment::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| not_found("role assignment", id))
}

/// Revoke an assignment; returns it as it was. The last `superadmin` cannot be revoked:
/// nobody could create tenants or grant platform roles after it.
pub async fn revoke(
    db: &DatabaseConnection,
    actor: Actor,
    id: Uuid,
) -> Result<role_assignment::Model, AppError> {
    let txn = begin_write(db).await?;
    let model = role_assignment::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| not_found("role assignment", id))?;
    if model.role == Role::Superadmin.as_str() {
        let superadmins = role_assignment::Entity::find()
            .filter(role_assignment::Column::Role.eq(Role::Superadmin.as_str()))
            .count(&txn)
            .await?;
        if superadmins <= 1 {
            return Err(AppError::invalid(
                "id",
                "this is the last superadmin; grant superadmin to someone else first",
            ));
        }
    }
    model.clone().delete(&txn).await?;
    audit::record(&txn, entry(actor, actions::ROLE_REVOKE, &model)).await?;
    txn.commit().await?;
    Ok(model)
}

fn entry(actor: Actor, action: &str, model: &role_assignment::Model) -> AuditEntry {
    let mut entry = AuditEntry::new(actor, action, targets::ROLE_ASSIGNMENT)
        .target(model.id, format!("{} {}", model.role, model.principal))
        .detail(
            json!({ "principal": model.principal, "role": model.role, "domain": model.domain }),
        );
    if let Some(tenant) = model.tenant_id {
        entry = entry.tenant(tenant);
    }
    if let Some(environment) = model.environment_id {
        entry = entry.environment(environment);
    }
    entry
}

/// Assignments in `scope`: a tenant's lists the tenant's and its environments'; an
/// environment's only that environment's; the platform's only platform roles.
pub async fn list(
    db: &DatabaseConnection,
    scope: Scope,
) -> Result<Vec<role_assignment::Model>, AppError> {
    let condition = match (scope.tenant, scope.environment) {
        (_, Some(environment)) => {
            Condition::all().add(role_assignment::Column::EnvironmentId.eq(environment))
        }
        (Some(tenant), None) => Condition::all().add(role_assignment::Column::TenantId.eq(tenant)),
        (None, None) => Condition::all().add(role_assignment::Column::TenantId.is_null()),
    };
    Ok(role_assignment::Entity::find()
        .filter(condition)
        .order_by_asc(role_assignment::Column::CreatedAt)
        .order_by_asc(role_assignment::Column::Id)
        .all(db)
        .await?)
}

/// Grant `superadmin` to a token inside `txn` (the bootstrap token, at first start).
pub(crate) async fn grant_superadmin_in(
    txn: &impl sea_orm::ConnectionTrait,
    token_id: Uuid,
) -> Result<(), AppError> {
    role_assignment::ActiveModel {
        id: Set(Uuid::new_v4()),
        principal: Set(Principal::Token(token_id).to_string()),
        role: Set(Role::Superadmin.as_str().to_string()),
        domain: Set(Scope::PLATFORM.domain()),
        tenant_id: Set(None),
        environment_id: Set(None),
        created_by: Set("bootstrap".to_string()),
        created_at: Set(now()),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// Move every role granted to the invitation `email:<email>` to `user` (inside `txn`, with
/// an audit entry each). A role the user already holds in the same place just loses its
/// invitation. Returns how many invitations were taken: when any were, reload
/// [`crate::authz::Authz`]. Call only with an email address the issuer has verified.
pub(crate) async fn claim_invitations_in(
    txn: &impl sea_orm::ConnectionTrait,
    email: &str,
    user: Uuid,
) -> Result<usize, AppError> {
    let Ok(invitation @ Principal::Email(_)) = Principal::parse(&format!("email:{email}")) else {
        return Ok(0);
    };
    let user_principal = Principal::User(user).to_string();
    let invitations = role_assignment::Entity::find()
        .filter(role_assignment::Column::Principal.eq(invitation.to_string()))
        .all(txn)
        .await?;
    for model in &invitations {
        let held = role_assignment::Entity::find()
            .filter(role_assignment::Column::Principal.eq(&user_principal))
            .filter(role_assignment::Column::Role.eq(&model.role))
            .filter(role_assignment::Column::Domain.eq(&model.domain))
            .one(txn)
            .await?;
        let claimed = if held.is_some() {
            model.clone().delete(txn).await?;
            model.clone()
        } else {
            let mut active: role_assignment::ActiveModel = model.clone().into();
            active.principal = Set(user_principal.clone());
            active.update(txn).await?
        };
        let mut audit_entry = entry(Actor::User(user), actions::ROLE_CLAIM, &claimed);
        audit_entry.detail = json!({
            "invitation": model.principal,
            "principal": user_principal,
            "role": model.role,
            "domain": model.domain,
        });
        audit::record(txn, audit_entry).await?;
    }
    Ok(invitations.len())
}

/// Whether any role is waiting for the user who signs in with `email`.
pub(crate) async fn has_invitations(
    db: &impl sea_orm::ConnectionTrait,
    email: &str,
) -> Result<bool, AppError> {
    let Ok(invitation @ Principal::Email(_)) = Principal::parse(&format!("email:{email}")) else {
        return Ok(false);
    };
    Ok(role_assignment::Entity::find()
        .filter(role_assignment::Column::Principal.eq(invitation.to_string()))
        .count(db)
        .await?
        > 0)
}

/// The roles `principal` holds, and where (oldest first).
pub async fn held_by(
    db: &DatabaseConnection,
    principal: &Principal,
) -> Result<Vec<role_assignment::Model>, AppError> {
    Ok(role_assignment::Entity::find()
        .filter(role_assignment::Column::Principal.eq(principal.to_string()))
        .order_by_asc(role_assignment::Column::CreatedAt)
        .order_by_asc(role_assignment::Column::Id)
        .all(db)
        .await?)
}
