//! Local admin subcommands over the same storage flags as `mount`: snapshots, frame
//! sequences of a folder, and the change feed.

use std::time::Duration;

use anyhow::Context as _;
use drive::meta::WorkspaceFeed;
use drive::model::Actor;

use crate::cli::StorageArgs;

/// `snapshot create|list|delete`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SnapshotCmd {
    /// Takes a snapshot of a folder (constant time).
    Create {
        #[command(flatten)]
        storage: StorageArgs,
        /// Folder to snapshot.
        #[arg(long, default_value = "/")]
        path: String,
        name: String,
    },
    /// Lists the workspace's snapshots.
    List {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Deletes a snapshot.
    Delete {
        #[command(flatten)]
        storage: StorageArgs,
        name: String,
    },
}

pub async fn snapshot(cmd: SnapshotCmd) -> anyhow::Result<()> {
    let actor = Actor::system("cli");
    match cmd {
        SnapshotCmd::Create { storage, path, name } => {
            let meta = storage.meta().await?;
            let ws = meta.get_workspace(&storage.workspace).await?;
            let s = meta.create_snapshot(&actor, ws.id, &name, &path).await?;
            println!("created snapshot {} of {} at epoch {}", s.name, s.path, s.epoch.0);
        }
        SnapshotCmd::List { storage } => {
            let meta = storage.meta().await?;
            let ws = meta.get_workspace(&storage.workspace).await?;
            for s in meta.list_snapshots(ws.id).await? {
                println!("{}\t{}\tepoch={}", s.name, s.path, s.epoch.0);
            }
        }
        SnapshotCmd::Delete { storage, name } => {
            let meta = storage.meta().await?;
            let ws = meta.get_workspace(&storage.workspace).await?;
            meta.delete_snapshot(&actor, ws.id, &name).await?;
            println!("deleted snapshot {name}");
        }
    }
    Ok(())
}

/// `sequences PATH`: frame sequences of a folder.
pub async fn sequences(storage: StorageArgs, path: String) -> anyhow::Result<()> {
    let meta = storage.meta().await?;
    let ws = meta.get_workspace(&storage.workspace).await?;
    let dir = meta
        .resolve(ws.id, &path)
        .await
        .with_context(|| format!("resolve {path}"))?;
    for seq in meta.sequences(dir.ino).await? {
        println!("{seq}");
    }
    Ok(())
}

/// `events [--follow]`: the workspace's change feed.
pub async fn events(storage: StorageArgs, follow: bool) -> anyhow::Result<()> {
    let meta = storage.meta().await?;
    let ws = meta.get_workspace(&storage.workspace).await?;
    let mut feed = WorkspaceFeed::new(ws.id, 0);
    loop {
        for e in feed.poll(&meta).await? {
            let name = e
                .name
                .as_ref()
                .map(drive::model::Name::to_string_lossy)
                .unwrap_or_default();
            let ino = e.ino.map(|i| i.0.to_string()).unwrap_or_default();
            let parent = e.parent.map(|i| i.0.to_string()).unwrap_or_default();
            println!(
                "{}\t{}\t{}\t{}\tino={}\tparent={}\t{}",
                e.id, e.at.0, e.actor, e.op, ino, parent, name
            );
        }
        if !follow {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
