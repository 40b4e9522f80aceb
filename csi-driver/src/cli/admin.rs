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
    // From the oldest event retention kept.
    let mut feed = WorkspaceFeed::new(ws.id, meta.feed_purged_through().await?);
    loop {
        for e in feed.poll(&meta).await? {
            let name = e
                .name
                .as_ref()
                .map(drive::model::Name::to_string_lossy)
                .unwrap_or_default();
            let ino = e.ino.map(|i| i.0.to_string()).unwrap_or_default();
            let parent = e.parent.map(|i| i.0.to_string()).unwrap_or_default();
            // What a `published` / `reverted` event names besides its node.
            let snapshot = match (&e.snapshot, e.epoch) {
                (Some(s), Some(ep)) => format!("\tsnapshot={s}\tepoch={}", ep.0),
                (None, Some(ep)) => format!("\tepoch={}", ep.0),
                _ => String::new(),
            };
            println!(
                "{}\t{}\t{}\t{}\tino={}\tparent={}\t{}{snapshot}",
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

/// `gc`: one lifecycle pass on the storage the flags name: snapshot retention and the purge of
/// deleted data (of the flags' workspace, or of every one with `--all-workspaces`), then the
/// sweep of the node's store (workspaces with an object store of their own are not swept yet).
/// Safe while the workspace is mounted.
#[derive(Debug, Clone, clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Re-running a pass id resumes that pass (default: a new id).
    #[arg(long)]
    pub pass_id: Option<String>,
    /// Leave blocks touched more recently than this (`0s`, `90m`, `1h`, `7d`; default 1h,
    /// longer than any upload or write session).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
    /// Report what the pass would delete and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Object deletions per second at most, for all shards of the pass together (each of N
    /// shards deletes at most a Nth).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub deletes_per_second: u32,
    /// Purge deleted files, folders and workspaces this long after their deletion (and
    /// history no kept snapshot shows); without it nothing deleted is purged.
    #[arg(long, value_parser = parse_duration)]
    pub purge_deleted_after: Option<Duration>,
    /// Keep the newest N snapshots of each workspace; release older ones (with
    /// `--snapshot-max-age`, a snapshot either keeps is kept).
    #[arg(long)]
    pub keep_snapshots: Option<u32>,
    /// Release snapshots older than this (beyond `--keep-snapshots`).
    #[arg(long, value_parser = parse_duration)]
    pub snapshot_max_age: Option<Duration>,
    /// Purge and release in every workspace, not only the one the flags name.
    #[arg(long)]
    pub all_workspaces: bool,
    /// Pause while a metadata transaction of the pass takes longer than this (0: never).
    #[arg(long, default_value_t = 250)]
    pub backoff_latency_ms: u64,
    /// Run shard I (from 0) of N: the pass's blocks split by hash range, one process per
    /// shard, all with the same pass id (`0/4` .. `3/4`).
    #[arg(long, value_parser = drive::gc::parse_shard)]
    pub shard: Option<(u32, u32)>,
    /// Also write the pass's metrics (`studiodrive_gc_*`) to this file in the Prometheus text
    /// format (for node_exporter's textfile collector).
    #[arg(long)]
    pub metrics_file: Option<std::path::PathBuf>,
}

/// `90s`, `90m`, `12h`, `7d` (a number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 90m, 12h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Runs one lifecycle pass and prints its report.
pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let meta = args.storage.meta().await?;
    let store = args.storage.open_store().await?;
    let pass_id = args
        .pass_id
        .clone()
        .unwrap_or_else(|| format!("gc-{}", uuid::Uuid::new_v4().simple()));
    let mut opts = drive::gc::BlockPassOptions::new(pass_id);
    opts.grace = args.grace;
    opts.dry_run = args.dry_run;
    opts.deletes_per_second = args.deletes_per_second;
    opts.backoff_latency = Duration::from_millis(args.backoff_latency_ms);
    opts.shard = args.shard;
    let pass_id = opts.pass_id.clone();
    let mut lifecycle = drive::lifecycle::LifecycleOptions::blocks_only(opts);
    lifecycle.scope.names = (!args.all_workspaces).then(|| vec![args.storage.workspace.clone()]);
    lifecycle.retention = args
        .purge_deleted_after
        .map(|keep| drive::rules::gc::RetentionClass {
            kinds: Vec::new(),
            path_prefix: None,
            keep,
        })
        .into_iter()
        .collect();
    lifecycle.snapshots = drive::rules::gc::SnapshotRetention {
        keep_last: args.keep_snapshots,
        max_age: args.snapshot_max_age,
    };
    let report = drive::lifecycle::run_pass(&meta, store.as_ref(), &lifecycle)
        .await
        .with_context(|| format!("GC pass {pass_id} on {}", store.describe()))?;
    if let Some(path) = &args.metrics_file {
        let metrics = crate::metrics::GcMetrics::new()?;
        metrics.record(&report.blocks);
        std::fs::write(path, crate::metrics::Exporter::render(&metrics))
            .with_context(|| format!("write {}", path.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_a_unit() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "7", "7w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
