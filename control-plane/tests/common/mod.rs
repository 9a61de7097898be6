//! Test harness: a migrated database (SQLite in a temporary directory, or a fresh PostgreSQL
//! database dropped afterwards), the schema over it with an in-process publisher, and helpers
//! to run operations and inspect every row.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use airlock_control_plane::authz::{Authz, Caller, Principal};
use airlock_control_plane::domain::admin_tokens;
use airlock_control_plane::domain::audit::Actor;
use airlock_control_plane::graphql::{build_schema, AppSchema, RequestOrigin};
use airlock_control_plane::publish::{ConfigPublisher, InProcessTransport};
use airlock_control_plane::state::AppState;
use airlock_data_plane::SnapshotDelivery;
use airlock_shared::seal::OpeningKey;
use airlock_shared::wire::EnvironmentSnapshot;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// The `test` database the PostgreSQL tests create their own databases from.
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Every table the migrations create.
pub const TABLES: &[&str] = &[
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
    "users",
    "role_assignments",
    "sessions",
    "login_attempts",
    "oauth_clients",
    "oauth_connections",
    "oauth_authorizations",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A migrated database that disappears when dropped.
pub struct TestDb {
    pub db: DatabaseConnection,
    pub backend: Backend,
    /// SQLite: the database file (and its directory, removed on drop).
    pub sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = airlock_control_plane::db::sqlite_url(dir.path());
                let db = airlock_control_plane::db::connect(&url).await.unwrap();
                Self {
                    db,
                    backend,
                    sqlite_path: Some(dir.path().join("airlock.db")),
                    _dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("airlock_t_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(POSTGRES_ADMIN_URL).await.unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
                let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
                let db = airlock_control_plane::db::connect(&url).await.unwrap();
                Self {
                    db,
                    backend,
                    sqlite_path: None,
                    _dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }

    /// URL of this database, for running the `airlock` binary against it.
    pub fn url(&self) -> String {
        match (&self.sqlite_path, &self.postgres_name) {
            (Some(path), _) => format!("sqlite://{}", path.display()),
            (None, Some(name)) => format!("postgres://postgres@127.0.0.1:5432/{name}"),
            (None, None) => unreachable!("a test database is SQLite or PostgreSQL"),
        }
    }

    /// Rows per table.
    pub async fn row_counts(&self) -> BTreeMap<&'static str, i64> {
        let mut counts = BTreeMap::new();
        for table in TABLES {
            let row = self
                .db
                .query_one_raw(Statement::from_string(
                    self.db.get_database_backend(),
                    format!("SELECT COUNT(*) AS n FROM {table}"),
                ))
                .await
                .unwrap()
                .unwrap();
            counts.insert(*table, row.try_get::<i64>("", "n").unwrap());
        }
        counts
    }

    /// Every row of every table (including the migrations table), rendered as text.
    pub async fn all_rows_as_text(&self) -> Vec<String> {
        let backend = self.db.get_database_backend();
        let tables: Vec<String> = match backend {
            DbBackend::Postgres => self
                .db
                .query_all_raw(Statement::from_string(
                    backend,
                    "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = 'public'",
                ))
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.try_get::<String>("", "name").unwrap())
                .collect(),
            _ => self
                .db
                .query_all_raw(Statement::from_string(
                    backend,
                    "SELECT name FROM sqlite_master WHERE type = 'table'",
                ))
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.try_get::<String>("", "name").unwrap())
                .collect(),
        };
        assert!(tables.len() >= TABLES.len(), "tables found: {tables:?}");
        let mut rows = Vec::new();
        for table in tables {
            match backend {
                DbBackend::Postgres => {
                    let sql = format!("SELECT row_to_json(t)::text AS row FROM \"{table}\" t");
                    for row in self
                        .db
                        .query_all_raw(Statement::from_string(backend, sql))
                        .await
                        .unwrap()
                    {
                        rows.push(row.try_get::<String>("", "row").unwrap());
                    }
                }
                _ => {
                    let columns: Vec<String> = self
                        .db
                        .query_all_raw(Statement::from_string(
                            backend,
                            format!("SELECT name FROM pragma_table_info('{table}')"),
                        ))
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|r| r.try_get::<String>("", "name").unwrap())
                        .collect();
                    // quote() renders any value (text, blob, number) as SQL text.
                    let select = columns
                        .iter()
                        .map(|c| format!("quote(\"{c}\")"))
                        .collect::<Vec<_>>()
                        .join(" || ',' || ");
                    let sql = format!("SELECT {select} AS row FROM \"{table}\"");
                    for row in self
                        .db
                        .query_all_raw(Statement::from_string(backend, sql))
                        .await
                        .unwrap()
                    {
                        rows.push(row.try_get::<String>("", "row").unwrap());
                    }
                }
            }
        }
        rows
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread with
        // its own. FORCE ends the pool's connections.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let admin = Database::connect(POSTGRES_ADMIN_URL).await.unwrap();
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
            });
        })
        .join();
    }
}

/// Create the bootstrap token (a superadmin) in `db`; returns the caller it authenticates as.
/// Load [`Authz`] after this.
pub async fn bootstrap_superadmin(db: &TestDb) -> Caller {
    let token = admin_tokens::ensure_bootstrap(&db.db, None)
        .await
        .unwrap()
        .unwrap();
    Caller {
        actor: Actor::AdminToken(token.id),
        principal: Principal::Token(token.id),
    }
}

/// A schema over a test database, publishing in-process to `snapshots`.
pub struct TestApp {
    pub db: TestDb,
    pub state: AppState,
    pub schema: AppSchema,
    pub snapshots: UnboundedReceiver<EnvironmentSnapshot>,
    /// The data planes' key: tests may open what the control plane sealed.
    pub opening_key: OpeningKey,
    /// The bootstrap admin token (a superadmin) every operation runs as, unless a test
    /// picks another caller.
    pub admin_token_id: uuid::Uuid,
    pub admin_token: String,
}

/// Base URL `TestApp` operations appear to arrive at (their `Host`).
pub const TEST_ORIGIN: &str = "http://airlock.test:8080";

/// The host every secret set through [`TestApp::set_secret`] is bound to.
pub const TEST_HOST: &str = "api.example.com";

impl TestApp {
    pub async fn new(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let opening_key = OpeningKey::generate();
        let (sender, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<SnapshotDelivery>();
        let (forward, snapshots) = tokio::sync::mpsc::unbounded_channel();
        // Stands in for the in-process data plane: takes each snapshot and acknowledges it, so
        // publishes return at once. Closing `snapshots` stops it, like a stopped data plane.
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.recv().await {
                if forward.send(delivery.snapshot).is_err() {
                    break;
                }
                if let Some(applied) = delivery.applied {
                    let _ = applied.send(());
                }
            }
        });
        // The bootstrap token, a superadmin, as on first start.
        let bootstrap = admin_tokens::ensure_bootstrap(&db.db, None)
            .await
            .unwrap()
            .unwrap();
        // Tests count audit entries from an empty log; the bootstrap's own entry is checked
        // by `admin_token_is_bootstrapped_once`.
        db.db
            .execute_unprepared("DELETE FROM audit_log")
            .await
            .unwrap();
        let state = AppState {
            db: db.db.clone(),
            sealing_key: opening_key.sealing_key().clone(),
            publisher: ConfigPublisher::new(db.db.clone(), InProcessTransport::new(sender)),
            public_url: None,
            data_plane_url: None,
            authz: Authz::load(db.db.clone()).await.unwrap(),
            oidc: None,
        };
        Self {
            schema: build_schema(state.clone()),
            state,
            db,
            snapshots,
            opening_key,
            admin_token_id: bootstrap.id,
            admin_token: bootstrap.plaintext.clone(),
        }
    }

    /// Execute an operation as the bootstrap token, arriving at [`TEST_ORIGIN`].
    pub async fn exec(&self, query: &str, variables: Value) -> async_graphql::Response {
        self.exec_as(&self.superadmin(), query, variables).await
    }

    /// The caller the bootstrap token authenticates as.
    pub fn superadmin(&self) -> Caller {
        Caller {
            actor: Actor::AdminToken(self.admin_token_id),
            principal: Principal::Token(self.admin_token_id),
        }
    }

    /// Execute an operation as `caller`, arriving at [`TEST_ORIGIN`].
    pub async fn exec_as(
        &self,
        caller: &Caller,
        query: &str,
        variables: Value,
    ) -> async_graphql::Response {
        let request = async_graphql::Request::new(query)
            .variables(async_graphql::Variables::from_json(variables))
            .data(caller.clone())
            .data(RequestOrigin(TEST_ORIGIN.to_string()));
        self.schema.execute(request).await
    }

    /// Execute an operation without an authenticated actor (what the HTTP layer never does).
    pub async fn exec_anonymous(&self, query: &str, variables: Value) -> async_graphql::Response {
        let request = async_graphql::Request::new(query)
            .variables(async_graphql::Variables::from_json(variables));
        self.schema.execute(request).await
    }

    /// Execute an operation that must succeed; returns `data` as JSON.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        let response = self.exec(query, variables).await;
        assert!(
            response.errors.is_empty(),
            "unexpected errors: {:?}",
            response.errors
        );
        response.data.into_json().unwrap()
    }

    /// Execute an operation that must fail; returns the first error as JSON.
    pub async fn error(&self, query: &str, variables: Value) -> Value {
        let response = self.exec(query, variables).await;
        assert!(!response.errors.is_empty(), "expected an error");
        serde_json::to_value(&response.errors[0]).unwrap()
    }

    /// Snapshots published so far and not yet taken.
    pub fn take_snapshots(&mut self) -> Vec<EnvironmentSnapshot> {
        let mut taken = Vec::new();
        while let Ok(snapshot) = self.snapshots.try_recv() {
            taken.push(snapshot);
        }
        taken
    }

    pub async fn create_tenant(&self, name: &str) -> String {
        let data = self
            .ok(
                "mutation($name: String!) { createTenant(input: {name: $name}) { id } }",
                json!({ "name": name }),
            )
            .await;
        data["createTenant"]["id"].as_str().unwrap().to_string()
    }

    pub async fn create_environment(&self, tenant_id: &str, name: &str) -> String {
        let data = self
            .ok(
                "mutation($t: ID!, $name: String!) { createEnvironment(input: {tenantId: $t, name: $name}) { id } }",
                json!({ "t": tenant_id, "name": name }),
            )
            .await;
        data["createEnvironment"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn create_function(&self, tenant_id: &str, name: &str) -> String {
        let data = self
            .ok(
                "mutation($t: ID!, $name: String!) { createFunction(input: {tenantId: $t, name: $name, method: \"GET\", url: \"https://api.example.com/users/{{args.id}}\", headers: [{name: \"Authorization\", value: \"Bearer {{secrets.API_TOKEN}}\"}]}) { id } }",
                json!({ "t": tenant_id, "name": name }),
            )
            .await;
        data["createFunction"]["id"].as_str().unwrap().to_string()
    }

    /// Set a secret bound to [`TEST_HOST`].
    pub async fn set_secret(&self, environment_id: &str, name: &str, value: &str) -> Value {
        let data = self
            .ok(
                "mutation($e: ID!, $name: String!, $value: String!, $hosts: [String!]) { setSecret(input: {environmentId: $e, name: $name, value: $value, allowedHosts: $hosts}) { id environmentId name version allowedHosts createdAt updatedAt } }",
                json!({ "e": environment_id, "name": name, "value": value, "hosts": [TEST_HOST] }),
            )
            .await;
        data["setSecret"].clone()
    }

    /// Every audit entry, oldest first, as rows of JSON-able fields.
    pub async fn audit_rows(&self) -> Vec<Value> {
        use sea_orm::{EntityTrait, QueryOrder};
        airlock_control_plane::entity::audit_log::Entity::find()
            .order_by_asc(airlock_control_plane::entity::audit_log::Column::At)
            .order_by_asc(airlock_control_plane::entity::audit_log::Column::Id)
            .all(&self.db.db)
            .await
            .unwrap()
            .into_iter()
            .map(|row| {
                json!({
                    "actorType": row.actor_type,
                    "actorId": row.actor_id.map(|id| id.to_string()),
                    "action": row.action,
                    "tenantId": row.tenant_id.map(|id| id.to_string()),
                    "environmentId": row.environment_id.map(|id| id.to_string()),
                    "targetType": row.target_type,
                    "targetId": row.target_id.map(|id| id.to_string()),
                    "targetName": row.target_name,
                    "detail": serde_json::from_str::<Value>(&row.detail).unwrap(),
                })
            })
            .collect()
    }
}

/// Define `sqlite` and `postgres` tests running `async fn NAME(app: TestApp)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::common::TestApp::new(super::common::Backend::Sqlite).await).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(super::common::TestApp::new(super::common::Backend::Postgres).await).await
                }
            }
        )*
    };
}

/// Send `request` through the whole router (`app(state)`), as a client would.
pub async fn send(
    app: &TestApp,
    request: axum::http::Request<axum::body::Body>,
) -> axum::response::Response {
    use tower::ServiceExt as _;
    airlock_control_plane::app(app.state.clone())
        .oneshot(request)
        .await
        .unwrap()
}

/// A response's body as JSON.
pub async fn json_body(response: axum::response::Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
