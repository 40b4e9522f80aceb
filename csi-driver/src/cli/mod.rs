//! Local subcommands: `mount` (one FUSE mount), `snapshot`, `publish`, `revert`, `sequences`,
//! `events`, `sink`, `relay`, `preload`, and the storage flags they share (metadata URL,
//! block store, or embedded defaults).

pub mod admin;
pub mod api;
pub mod embedded;
pub mod events;
pub mod meta;
pub mod mhl;
pub mod mount;
pub mod preload;
pub mod publish;
pub mod serve;
pub mod trash;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use drive::data::{ChunkStore, StoreLocation};
use drive::{MetaConfig, PgMetaStore};

/// Where metadata and blocks live. With no flags, everything sits under the state dir.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// State directory for embedded defaults (PostgreSQL data, blocks, cache, staging).
    /// Default: $XDG_DATA_HOME/studiodrive or ~/.local/share/studiodrive.
    #[arg(long, env = "STUDIODRIVE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// PostgreSQL URL of the metadata store; without it an embedded PostgreSQL is started.
    #[arg(long, env = "STUDIODRIVE_METADATA_URL")]
    pub metadata_url: Option<String>,
    /// Milliseconds a metadata statement may go unanswered before the operation fails (EIO
    /// through a mount); also the server's statement_timeout.
    #[arg(long, env = "STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub metadata_statement_timeout_ms: u64,
    /// Block store: file:///dir or s3://bucket/prefix. Default: <state-dir>/blocks.
    #[arg(long, env = "STUDIODRIVE_STORE")]
    pub store: Option<String>,
    /// S3 endpoint URL for s3:// stores (MinIO, Ceph RGW, a local server). With an endpoint,
    /// requests use path-style addressing and no upload checksums.
    #[arg(long, env = "STUDIODRIVE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: from the AWS environment, else us-east-1).
    #[arg(long, env = "STUDIODRIVE_S3_REGION")]
    pub s3_region: Option<String>,
    /// A shared-credentials file to use instead of the standard AWS credential chain.
    #[arg(long, env = "STUDIODRIVE_S3_CREDENTIALS_FILE")]
    pub s3_credentials_file: Option<PathBuf>,
    /// Attempts per S3 request before an operation fails (retries back off with jitter).
    #[arg(long, env = "STUDIODRIVE_S3_MAX_ATTEMPTS", default_value_t = 5)]
    pub s3_max_attempts: u32,
    /// Workspace to use.
    #[arg(long, default_value = "default")]
    pub workspace: String,
}

impl StorageArgs {
    /// The state directory, created 0700 if missing (made 0700 if it exists).
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => match std::env::var_os("XDG_DATA_HOME") {
                Some(x) if !x.is_empty() => PathBuf::from(x).join("studiodrive"),
                _ => {
                    let home = std::env::var_os("HOME").context("HOME is not set; pass --state-dir")?;
                    PathBuf::from(home).join(".local/share/studiodrive")
                }
            },
        };
        // Private to its user (blocks, cache, staging and the embedded PostgreSQL live here);
        // its parents are left as they are.
        drive::private_files::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        embedded::restrict(&dir)?;
        Ok(dir)
    }

    /// Connects to the metadata store, starting the embedded PostgreSQL when no URL is given.
    pub async fn meta(&self) -> anyhow::Result<PgMetaStore> {
        let url = match &self.metadata_url {
            Some(url) => url.clone(),
            None => embedded::ensure_running(&self.state_dir()?.join("postgres"))?,
        };
        let mut config = MetaConfig::new(url);
        config.statement_timeout = std::time::Duration::from_millis(self.metadata_statement_timeout_ms);
        PgMetaStore::connect(&config)
            .await
            .context("connect to the metadata store")
    }

    /// The block store URL: `--store`, or `file://<state-dir>/blocks`.
    pub fn store_location(&self) -> anyhow::Result<StoreLocation> {
        match &self.store {
            Some(url) => Ok(url.parse()?),
            None => Ok(StoreLocation::Local(self.state_dir()?.join("blocks"))),
        }
    }

    /// These settings as the environment variables the flags read, for child processes.
    pub fn child_env(&self) -> anyhow::Result<Vec<(&'static str, Option<std::ffi::OsString>)>> {
        let os = |v: &Option<String>| v.as_ref().map(std::ffi::OsString::from);
        Ok(vec![
            ("STUDIODRIVE_STATE_DIR", Some(self.state_dir()?.into_os_string())),
            ("STUDIODRIVE_METADATA_URL", os(&self.metadata_url)),
            (
                "STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS",
                Some(self.metadata_statement_timeout_ms.to_string().into()),
            ),
            ("STUDIODRIVE_STORE", os(&self.store)),
            ("STUDIODRIVE_S3_ENDPOINT", os(&self.s3_endpoint)),
            ("STUDIODRIVE_S3_REGION", os(&self.s3_region)),
            (
                "STUDIODRIVE_S3_CREDENTIALS_FILE",
                self.s3_credentials_file.clone().map(PathBuf::into_os_string),
            ),
            (
                "STUDIODRIVE_S3_MAX_ATTEMPTS",
                Some(self.s3_max_attempts.to_string().into()),
            ),
        ])
    }

    /// Media documents, with the object store for texts over 1 MiB when one is named: an
    /// explicit `--store`, or the embedded defaults' (then everything is local). A process
    /// given only a remote metadata URL keeps no text in a local directory that a restart
    /// of its pod would lose: it refuses such documents instead.
    pub async fn document_store(
        &self,
        meta: &PgMetaStore,
    ) -> anyhow::Result<drive::media::documents::DocumentStore> {
        let store = match (&self.store, &self.metadata_url) {
            (None, Some(_)) => None,
            _ => Some(self.open_store().await?),
        };
        Ok(drive::media::documents::DocumentStore::new(meta.clone(), store))
    }

    /// Opens the block store.
    pub async fn open_store(&self) -> anyhow::Result<Arc<dyn ChunkStore>> {
        let location = self.store_location()?;
        let s3 = location
            .s3_config(self.s3_endpoint.as_deref(), self.s3_region.as_deref())
            .map(|mut cfg| {
                cfg.credentials_file.clone_from(&self.s3_credentials_file);
                cfg.max_attempts = self.s3_max_attempts;
                cfg
            });
        location
            .open(s3)
            .await
            .with_context(|| format!("open the block store {location:?}"))
    }
}
