//! The migrations apply and roll back on SQLite and PostgreSQL, and the constraints they
//! declare (foreign keys, per-parent unique names, unique hashes) are enforced.

use airlock_migrations::sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr, SqlErr};
use airlock_migrations::{Expr, Migrator, MigratorTrait, Query, SchemaManager};
use uuid::Uuid;

const TABLES: &[&str] = &[
    "tenants",
    "environments",
    "functions",
    "secrets",
    "secret_versions",
    "api_keys",
    "admin_tokens",
    "events",
    "audit_log",
    "provisioning_links",
    "oauth_clients",
    "oauth_connections",
    "oauth_authorizations",
];

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn insert_tenant(db: &DatabaseConnection, id: Uuid, name: &str) -> Result<(), DbErr> {
    let stmt = Query::insert()
        .into_table("tenants")
        .columns(["id", "name", "created_at"])
        .values_panic([id.into(), name.into(), Expr::current_timestamp()])
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

async fn insert_environment(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    name: &str,
) -> Result<(), DbErr> {
    let stmt = Query::insert()
        .into_table("environments")
        .columns(["id", "tenant_id", "name", "created_at"])
        .values_panic([
            Uuid::new_v4().into(),
            tenant_id.into(),
            name.into(),
            Expr::current_timestamp(),
        ])
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

/// An event row as the events consumer writes it (no foreign keys: `tenant` may be unknown).
async fn insert_event(db: &DatabaseConnection, id: Uuid, tenant: Uuid) -> Result<(), DbErr> {
    let stmt = Query::insert()
        .into_table("events")
        .columns([
            "id",
            "at",
            "kind",
            "tenant_id",
            "request_id",
            "secrets",
            "status",
            "message",
        ])
        .values_panic([
            id.into(),
            Expr::current_timestamp(),
            "upstream.error".into(),
            tenant.into(),
            "req-1".into(),
            "[]".into(),
            502.into(),
            "bad gateway".into(),
        ])
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

/// An OAuth client row of `environment`.
async fn insert_oauth_client(
    db: &DatabaseConnection,
    id: Uuid,
    environment: Uuid,
    name: &str,
) -> Result<(), DbErr> {
    let stmt = Query::insert()
        .into_table("oauth_clients")
        .columns([
            "id",
            "environment_id",
            "name",
            "token_url",
            "client_id",
            "auth_method",
            "scopes",
            "extra_token_params",
            "allowed_hosts",
            "refresh_skew_seconds",
            "created_at",
            "updated_at",
        ])
        .values_panic([
            id.into(),
            environment.into(),
            name.into(),
            "https://idp.example.com/token".into(),
            "c".into(),
            "none".into(),
            "[]".into(),
            "[]".into(),
            "[]".into(),
            60.into(),
            Expr::current_timestamp(),
            Expr::current_timestamp(),
        ])
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

async fn insert_oauth_connection(
    db: &DatabaseConnection,
    id: Uuid,
    environment: Uuid,
    client: Uuid,
) -> Result<(), DbErr> {
    let stmt = Query::insert()
        .into_table("oauth_connections")
        .columns([
            "id",
            "environment_id",
            "client_id",
            "name",
            "grant",
            "status",
            "created_at",
            "updated_at",
        ])
        .values_panic([
            id.into(),
            environment.into(),
            client.into(),
            format!("conn_{}", id.simple()).into(),
            "authorization_code".into(),
            "pending".into(),
            Expr::current_timestamp(),
            Expr::current_timestamp(),
        ])
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

async fn insert_oauth_authorization(
    db: &DatabaseConnection,
    environment: Uuid,
    connection: Uuid,
    state_hash: &str,
) -> Result<(), DbErr> {
    let stmt = Query::insert()
        .into_table("oauth_authorizations")
        .columns([
            "id",
            "environment_id",
            "connection_id",
            "state_hash",
            "code_verifier_sealed",
            "redirect_uri",
            "expires_at",
            "created_at",
        ])
        .values_panic([
            Uuid::new_v4().into(),
            environment.into(),
            connection.into(),
            state_hash.into(),
            "{}".into(),
            "https://gw.example.com/v1/oauth/callback".into(),
            Expr::current_timestamp(),
            Expr::current_timestamp(),
        ])
        .to_owned();
    db.execute(&stmt).await.map(|_| ())
}

/// OAuth: names unique per environment, connections need their client, state hashes unique.
async fn check_oauth_constraints(db: &DatabaseConnection, tenant: Uuid) {
    let environment = Uuid::new_v4();
    let stmt = Query::insert()
        .into_table("environments")
        .columns(["id", "tenant_id", "name", "created_at"])
        .values_panic([
            environment.into(),
            tenant.into(),
            "oauth".into(),
            Expr::current_timestamp(),
        ])
        .to_owned();
    db.execute(&stmt).await.unwrap();
    let client = Uuid::new_v4();
    insert_oauth_client(db, client, environment, "github")
        .await
        .unwrap();
    let duplicate = insert_oauth_client(db, Uuid::new_v4(), environment, "github")
        .await
        .unwrap_err();
    assert!(matches!(
        duplicate.sql_err(),
        Some(SqlErr::UniqueConstraintViolation(_))
    ));
    let connection = Uuid::new_v4();
    insert_oauth_connection(db, connection, environment, client)
        .await
        .unwrap();
    let orphan = insert_oauth_connection(db, Uuid::new_v4(), environment, Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(
        orphan.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    ));
    insert_oauth_authorization(db, environment, connection, "ab")
        .await
        .unwrap();
    let replay = insert_oauth_authorization(db, environment, connection, "ab")
        .await
        .unwrap_err();
    assert!(matches!(
        replay.sql_err(),
        Some(SqlErr::UniqueConstraintViolation(_))
    ));
}

async fn check_schema(db: &DatabaseConnection) {
    Migrator::up(db, None).await.expect("migrations apply");
    let manager = SchemaManager::new(db);
    for table in TABLES {
        assert!(manager.has_table(*table).await.unwrap(), "{table} exists");
    }
    // Applying again is a no-op.
    Migrator::up(db, None)
        .await
        .expect("migrations are idempotent");
    assert!(Migrator::get_pending_migrations(db)
        .await
        .unwrap()
        .is_empty());

    let tenant = Uuid::new_v4();
    insert_tenant(db, tenant, "acme").await.unwrap();
    let duplicate = insert_tenant(db, Uuid::new_v4(), "acme").await.unwrap_err();
    assert!(matches!(
        duplicate.sql_err(),
        Some(SqlErr::UniqueConstraintViolation(_))
    ));

    insert_environment(db, tenant, "prod").await.unwrap();
    let duplicate = insert_environment(db, tenant, "prod").await.unwrap_err();
    assert!(matches!(
        duplicate.sql_err(),
        Some(SqlErr::UniqueConstraintViolation(_))
    ));
    // Same name under another tenant is fine.
    let other = Uuid::new_v4();
    insert_tenant(db, other, "globex").await.unwrap();
    insert_environment(db, other, "prod").await.unwrap();

    let orphan = insert_environment(db, Uuid::new_v4(), "dev")
        .await
        .unwrap_err();
    assert!(matches!(
        orphan.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    ));

    // Events outlive what they name (no foreign key), and an id is stored once.
    let event = Uuid::now_v7();
    insert_event(db, event, Uuid::new_v4()).await.unwrap();
    let again = insert_event(db, event, tenant).await.unwrap_err();
    assert!(matches!(
        again.sql_err(),
        Some(SqlErr::UniqueConstraintViolation(_))
    ));

    check_oauth_constraints(db, tenant).await;

    Migrator::down(db, None)
        .await
        .expect("migrations roll back");
    for table in TABLES {
        assert!(!manager.has_table(*table).await.unwrap(), "{table} dropped");
    }
}

#[tokio::test]
async fn sqlite_schema_applies_enforces_constraints_and_rolls_back() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    check_schema(&db).await;
}

#[tokio::test]
async fn postgres_schema_applies_enforces_constraints_and_rolls_back() {
    let admin = Database::connect(POSTGRES_ADMIN_URL).await.unwrap();
    let name = format!("airlock_m_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = Database::connect(format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .unwrap();
    // Run the checks in a task so the database is dropped even if they fail.
    let result = tokio::spawn(async move {
        check_schema(&db).await;
        db.close().await.unwrap();
    })
    .await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}
