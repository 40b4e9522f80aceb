//! Shared set-up for the drive integration tests: a metadata store on a fresh database of the
//! test binary's PostgreSQL server.
#![allow(dead_code)]

use drive::model::{Actor, Name, Workspace, WorkspaceKind, WorkspaceSpec};
use drive::{MetaConfig, MetaStore};
use drive_testkit::pg::PgServer;

pub async fn store() -> MetaStore {
    drive_testkit::init_tracing();
    let pg = PgServer::shared();
    let db = pg.create_database().await.expect("create test database");
    MetaStore::connect(&MetaConfig::new(pg.url(&db)))
        .await
        .expect("connect metadata store")
}

pub async fn workspace(store: &MetaStore, name: &str, kind: WorkspaceKind) -> Workspace {
    store
        .create_workspace(&actor(), &WorkspaceSpec::new(name, kind))
        .await
        .expect("create workspace")
}

pub fn actor() -> Actor {
    Actor::system("test")
}

pub fn name(s: &str) -> Name {
    Name::parse(s).expect("valid test name")
}
