//! Shared set-up for the drive integration tests: a metadata store on a fresh database of the
//! test binary's PostgreSQL server.
#![allow(dead_code)]

use drive::data::BlockStore;
use drive::fs::{DriveFs, OpenFlags};
use drive::model::{Actor, Name, Workspace, WorkspaceKind, WorkspaceSpec};
use drive::{MetaConfig, PgMetaStore};
use drive_testkit::pg::PgServer;

pub async fn store() -> PgMetaStore {
    store_and_url().await.0
}

/// A store on a fresh database, and the URL of that database for raw connections.
pub async fn store_and_url() -> (PgMetaStore, String) {
    drive_testkit::init_tracing();
    let pg = PgServer::shared();
    let db = pg.create_database().await.expect("create test database");
    let url = pg.url(&db);
    let store = PgMetaStore::connect(&MetaConfig::new(url.clone()))
        .await
        .expect("connect metadata store");
    (store, url)
}

/// A connection of the test's own to the database at `url` (to hold transactions open).
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection to the test database");
    tokio::spawn(conn);
    client
}

pub async fn workspace(store: &PgMetaStore, name: &str, kind: WorkspaceKind) -> Workspace {
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

/// `err` and its sources, joined by ": " (what the tests match error causes against).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The whole content of file `ino`, read in 1 MiB requests through an open handle.
pub async fn read_file<M: drive::MetaStore>(
    fs: &DriveFs<BlockStore<M>, M>,
    ino: u64,
) -> Result<Vec<u8>, drive::fs::FsError> {
    let opened = fs
        .open(
            ino,
            OpenFlags {
                read: true,
                ..OpenFlags::default()
            },
            drive::fs::Caller::default(),
        )
        .await?;
    let mut out = Vec::new();
    let result = loop {
        match fs.read(opened.fh, out.len() as u64, 1 << 20).await {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    fs.release(opened.fh, drive::fs::Caller::default()).await?;
    result.map(|()| out)
}

/// A client configuration for `bucket` (created here) of the test S3 server, with the test
/// credentials and the "ws" prefix.
pub fn s3_config(server: &drive_testkit::s3::S3Server, bucket: &str) -> drive::data::S3Config {
    use drive_testkit::s3::{ACCESS_KEY, SECRET_KEY};
    drive_testkit::install_crypto_provider();
    server.create_bucket(bucket).expect("create test bucket");
    let mut cfg = drive::data::S3Config::new(bucket).with_endpoint(server.endpoint());
    cfg.prefix = "ws".into();
    cfg.credentials = Some(drive::data::S3Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    });
    cfg
}
