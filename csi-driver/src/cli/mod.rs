//! Local subcommands: `mount` (one FUSE mount), `snapshot`, `sequences`, `events`, and the
//! storage flags they share (metadata URL, block store, or embedded defaults).

pub mod admin;
pub mod embedded;
pub mod mount;

use std::path::PathBuf;

use anyhow::Context as _;
use drive::{MetaConfig, MetaStore};

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
    /// Block store: file:///dir or s3://bucket/prefix. Default: <state-dir>/blocks.
    #[arg(long, env = "STUDIODRIVE_STORE")]
    pub store: Option<String>,
    /// S3 endpoint URL for s3:// stores (MinIO, Ceph RGW, a local server).
    #[arg(long, env = "STUDIODRIVE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Workspace to use.
    #[arg(long, default_value = "default")]
    pub workspace: String,
}

impl StorageArgs {
    /// The state directory, created if missing.
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
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }

    /// Connects to the metadata store, starting the embedded PostgreSQL when no URL is given.
    pub async fn meta(&self) -> anyhow::Result<MetaStore> {
        let url = match &self.metadata_url {
            Some(url) => url.clone(),
            None => embedded::ensure_running(&self.state_dir()?.join("postgres"))?,
        };
        MetaStore::connect(&MetaConfig::new(url))
            .await
            .context("connect to the metadata store")
    }

    /// The local block directory (`file://` store or the embedded default).
    pub fn block_dir(&self) -> anyhow::Result<PathBuf> {
        match self.store.as_deref() {
            None => Ok(self.state_dir()?.join("blocks")),
            Some(s) if s.starts_with("file://") => Ok(PathBuf::from(&s["file://".len()..])),
            Some(s) if s.starts_with("s3://") => anyhow::bail!(
                "s3:// stores need the block data path (drive::data), which this build does not include yet"
            ),
            Some(s) => anyhow::bail!("unsupported --store {s:?}: use file:///dir or s3://bucket/prefix"),
        }
    }
}
