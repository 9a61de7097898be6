//! Users: people who sign in with OpenID Connect, identified by issuer + subject (never by
//! email alone). A verified email address takes the roles it was invited to (`email:<address>`
//! role assignments) when its user is first seen.

use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::{begin_write, now, roles};
use crate::entity::user;
use crate::error::AppError;

/// Who the OpenID provider says someone is (from a verified ID token or access token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    /// Lower-cased.
    pub email: Option<String>,
    /// Whether the issuer vouches for `email` (`email_verified: true`).
    pub email_verified: bool,
}

impl Identity {
    /// `email` lower-cased; invitations are stored lower-cased.
    pub fn new(
        issuer: impl Into<String>,
        subject: impl Into<String>,
        email: Option<&str>,
        email_verified: bool,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
            email: email.map(|e| e.trim().to_ascii_lowercase()),
            email_verified,
        }
    }

    /// The email address, only when verified: the one invitations may be matched against.
    fn verified_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|_| self.email_verified)
    }
}

/// What [`sign_in`] and [`find_or_create`] did.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: user::Model,
    /// Invitations just moved to the user: reload `Authz` before deciding anything for them.
    pub claimed_invitations: usize,
}

/// Console sign-in: find or create the user, record the sign-in (and the email the provider
/// now reports), and take the invitations of a verified email address.
pub async fn sign_in(db: &DatabaseConnection, identity: &Identity) -> Result<SignedIn, AppError> {
    upsert(db, identity, true).await
}

/// Bearer JWT: the user the token's issuer and subject name, created on first use. Writes
/// nothing when the user exists and no invitation is waiting for its verified email, so that
/// API calls stay reads.
pub async fn find_or_create(
    db: &DatabaseConnection,
    identity: &Identity,
) -> Result<SignedIn, AppError> {
    if let Some(user) = find(db, identity).await? {
        let waiting = match identity.verified_email() {
            Some(email) => roles::has_invitations(db, email).await?,
            None => false,
        };
        if !waiting {
            return Ok(SignedIn {
                user,
                claimed_invitations: 0,
            });
        }
    }
    upsert(db, identity, false).await
}

async fn find(
    db: &impl sea_orm::ConnectionTrait,
    identity: &Identity,
) -> Result<Option<user::Model>, AppError> {
    Ok(user::Entity::find()
        .filter(user::Column::Issuer.eq(&identity.issuer))
        .filter(user::Column::Subject.eq(&identity.subject))
        .one(db)
        .await?)
}

async fn upsert(
    db: &DatabaseConnection,
    identity: &Identity,
    record_sign_in: bool,
) -> Result<SignedIn, AppError> {
    if identity.issuer.is_empty() || identity.subject.is_empty() {
        return Err(AppError::Unauthenticated);
    }
    let txn = begin_write(db).await?;
    let now = now();
    let user = match find(&txn, identity).await? {
        Some(existing) => {
            if record_sign_in {
                let mut active: user::ActiveModel = existing.into();
                active.last_sign_in_at = Set(Some(now));
                if identity.email.is_some() {
                    active.email = Set(identity.email.clone());
                }
                active.update(&txn).await?
            } else {
                existing
            }
        }
        None => {
            let model = user::ActiveModel {
                id: Set(Uuid::new_v4()),
                issuer: Set(identity.issuer.clone()),
                subject: Set(identity.subject.clone()),
                email: Set(identity.email.clone()),
                created_at: Set(now),
                last_sign_in_at: Set(record_sign_in.then_some(now)),
            };
            match model.insert(&txn).await {
                Ok(model) => {
                    audit::record(
                        &txn,
                        AuditEntry::new(Actor::User(model.id), actions::USER_CREATE, targets::USER)
                            .target(model.id, display_name(&model))
                            .detail(json!({ "issuer": model.issuer })),
                    )
                    .await?;
                    model
                }
                // Another request created the same user meanwhile: use that one.
                Err(error) if error.sql_err().is_some() => {
                    txn.rollback().await?;
                    let user = find(db, identity)
                        .await?
                        .ok_or_else(|| AppError::internal(error))?;
                    return Ok(SignedIn {
                        user,
                        claimed_invitations: 0,
                    });
                }
                Err(error) => return Err(error.into()),
            }
        }
    };
    if record_sign_in {
        audit::record(
            &txn,
            AuditEntry::new(Actor::User(user.id), actions::USER_SIGN_IN, targets::USER)
                .target(user.id, display_name(&user)),
        )
        .await?;
    }
    let claimed_invitations = match identity.verified_email() {
        Some(email) => roles::claim_invitations_in(&txn, email, user.id).await?,
        None => 0,
    };
    txn.commit().await?;
    Ok(SignedIn {
        user,
        claimed_invitations,
    })
}

/// One user; `NOT_FOUND` for an unknown id.
pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<user::Model, AppError> {
    user::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| super::not_found("user", id))
}

/// How a user is named in the audit log: the email, else the subject.
fn display_name(user: &user::Model) -> String {
    user.email.clone().unwrap_or_else(|| user.subject.clone())
}
