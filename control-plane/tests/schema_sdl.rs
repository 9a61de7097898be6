//! The GraphQL schema is a public contract: it must match the committed
//! `control-plane/schema.graphql`. After an intended change, regenerate it with
//! `UPDATE_SCHEMA=1 cargo test -p airlock-control-plane --test schema_sdl` and commit it.

mod common;

use std::path::Path;

use common::{Backend, TestApp};

#[tokio::test]
async fn schema_matches_the_committed_sdl() {
    let app = TestApp::new(Backend::Sqlite).await;
    let sdl = app.schema.sdl();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &sdl).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == sdl,
        "the GraphQL schema changed but control-plane/schema.graphql did not; review the change, \
         then run `UPDATE_SCHEMA=1 cargo test -p airlock-control-plane --test schema_sdl`\n\
         --- current schema ---\n{sdl}"
    );
}
