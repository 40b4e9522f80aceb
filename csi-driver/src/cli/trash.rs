//! `trash list|restore`: soft-deleted files and folders of a workspace, restorable until the
//! lifecycle purge removes them (`studiodrive-csi gc --purge-deleted-after`, or a
//! LifecyclePolicy's retention).

use anyhow::Context as _;
use drive::model::{Actor, MergeMode};

use crate::cli::StorageArgs;

/// What a restore does where something exists at the destination now (as copy does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Merge {
    /// Restore nothing if any file conflicts.
    Fail,
    /// Replace the conflicting files (the replaced ones go to the trash).
    Overwrite,
    /// Keep the conflicting files; restore the rest.
    Skip,
}

impl From<Merge> for MergeMode {
    fn from(m: Merge) -> MergeMode {
        match m {
            Merge::Fail => MergeMode::Fail,
            Merge::Overwrite => MergeMode::Overwrite,
            Merge::Skip => MergeMode::Skip,
        }
    }
}

/// `trash list|restore`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TrashCmd {
    /// Lists deleted files and folders, newest first.
    List {
        #[command(flatten)]
        storage: StorageArgs,
        /// Only what was deleted at or below this folder.
        #[arg(long)]
        path: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Restores one item (by the id `trash list` prints) with everything that was below it.
    Restore {
        #[command(flatten)]
        storage: StorageArgs,
        id: i64,
        /// Where to restore it (default: where it was deleted from).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = Merge::Fail)]
        merge: Merge,
    },
    /// Lists deleted workspaces not yet purged, newest first.
    Workspaces {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Brings a deleted workspace back (by the id `trash workspaces` prints).
    RestoreWorkspace {
        #[command(flatten)]
        storage: StorageArgs,
        id: uuid::Uuid,
        /// Restore it under another name (its own may be taken again).
        #[arg(long = "as")]
        rename: Option<String>,
    },
}

pub async fn trash(cmd: TrashCmd) -> anyhow::Result<()> {
    match cmd {
        TrashCmd::List { storage, path, limit } => {
            let meta = storage.meta().await?;
            let ws = meta.get_workspace(&storage.workspace).await?;
            println!("ID\tDELETED\tKIND\tSIZE\tPATH");
            for item in meta.trash_list(ws.id, path.as_deref(), limit).await? {
                let deleted = rfc3339(item.deleted_at);
                let path = item.path.unwrap_or_else(|| "(its folder was purged)".into());
                println!("{}\t{deleted}\t{}\t{}\t{path}", item.id, item.kind, item.size);
            }
        }
        TrashCmd::Restore {
            storage,
            id,
            to,
            merge,
        } => {
            let meta = storage.meta().await?;
            let ws = meta.get_workspace(&storage.workspace).await?;
            let report = meta
                .trash_restore(&Actor::system("cli"), ws.id, id, to.as_deref(), merge.into())
                .await
                .with_context(|| format!("restore trash item {id}"))?;
            println!(
                "restored trash item {id}: {} copied, {} replaced, {} skipped",
                report.copied, report.replaced, report.skipped
            );
        }
        TrashCmd::Workspaces { storage } => {
            let meta = storage.meta().await?;
            println!("ID\tDELETED\tKIND\tNAME");
            for (id, name, kind, deleted_at) in meta.deleted_workspace_list().await? {
                println!("{id}\t{}\t{}\t{name}", rfc3339(deleted_at), kind.as_str());
            }
        }
        TrashCmd::RestoreWorkspace { storage, id, rename } => {
            let meta = storage.meta().await?;
            meta.restore_workspace(
                &Actor::system("cli"),
                drive::model::WorkspaceId(id),
                rename.as_deref(),
            )
            .await
            .with_context(|| format!("restore workspace {id}"))?;
            println!("restored workspace {id}");
        }
    }
    Ok(())
}

fn rfc3339(t: drive::model::Timestamp) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(t.0))
        .map(|t| t.to_string())
        .unwrap_or_default()
}
