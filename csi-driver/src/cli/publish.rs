//! `publish SRC DEST` and `revert PATH`: putting finished work in place with a snapshot in one
//! transaction, and giving a folder back its tree at a snapshot or an earlier epoch (see
//! `PgMetaStore::publish` and `PgMetaStore::revert` for the semantics).

use anyhow::Context as _;
use drive::meta::{PublishMode, PublishOptions, RevertTarget};
use drive::model::{Actor, Epoch, MergeMode};

use crate::cli::StorageArgs;
use crate::cli::trash::Merge;

/// `publish SRC DEST`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The finished folder.
    pub src: String,
    /// Where it is published (its parent folder must exist).
    pub dest: String,
    /// Copy (sharing blocks) instead of moving; the source stays.
    #[arg(long)]
    pub copy: bool,
    /// Name of the snapshot taken of DEST (default: DEST's name and the time, UTC).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// What to do when DEST exists: fail (default), or merge into it as copy does.
    #[arg(long, value_enum, default_value_t = Merge::Fail)]
    pub merge: Merge,
}

/// `revert PATH --snapshot NAME | --epoch N`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["snapshot", "epoch"])))]
pub struct RevertArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The folder to revert.
    pub path: String,
    /// Revert to this snapshot (it must contain PATH).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Revert to this earlier epoch (history no snapshot retains may have been purged).
    #[arg(long)]
    pub epoch: Option<i64>,
    /// What happens to what was created since: overwrite (default: removed, to the trash),
    /// skip (kept), or fail (refuse if anything would be removed).
    #[arg(long, value_enum, default_value_t = Merge::Overwrite)]
    pub merge: Merge,
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let snapshot = match args.snapshot {
        Some(name) => name,
        None => default_snapshot_name(&args.dest, jiff::Timestamp::now()),
    };
    let meta = args.storage.meta().await?;
    let ws = meta.get_workspace(&args.storage.workspace).await?;
    let options = PublishOptions {
        mode: if args.copy {
            PublishMode::Copy
        } else {
            PublishMode::Move
        },
        snapshot,
        merge: args.merge.into(),
    };
    let report = meta
        .publish(&Actor::system("cli"), ws.id, &args.src, &args.dest, &options)
        .await
        .with_context(|| format!("publish {} to {}", args.src, args.dest))?;
    let how = match (&report.copy, report.renamed) {
        (_, true) => "moved".to_string(),
        (Some(c), false) => format!(
            "{} ({} copied, {} replaced, {} skipped)",
            if args.copy { "copied" } else { "merged and moved" },
            c.copied,
            c.replaced,
            c.skipped
        ),
        (None, false) => "published".to_string(),
    };
    println!(
        "published {} to {}: {how}; snapshot {} at epoch {}",
        args.src, report.snapshot.path, report.snapshot.name, report.snapshot.epoch.0
    );
    Ok(())
}

pub async fn revert(args: RevertArgs) -> anyhow::Result<()> {
    let target = match (&args.snapshot, args.epoch) {
        (Some(name), _) => RevertTarget::Snapshot(name),
        (None, Some(e)) => RevertTarget::Epoch(Epoch(e)),
        (None, None) => anyhow::bail!("give --snapshot NAME or --epoch N"),
    };
    let merge: MergeMode = args.merge.into();
    let meta = args.storage.meta().await?;
    let ws = meta.get_workspace(&args.storage.workspace).await?;
    let r = meta
        .revert(&Actor::system("cli"), ws.id, &args.path, target, merge)
        .await
        .with_context(|| format!("revert {}", args.path))?;
    let to = match &r.snapshot {
        Some(name) => format!("snapshot {name} (epoch {})", r.epoch.0),
        None => format!("epoch {}", r.epoch.0),
    };
    println!(
        "reverted {} to {to}: {} removed, {} moved back, {} names restored, {} copied back, \
         {} nodes updated, {} kept, {} skipped; {} rows written",
        args.path,
        r.removed,
        r.moved_back,
        r.restored,
        r.copied,
        r.updated,
        r.kept,
        r.skipped,
        r.rows_written
    );
    Ok(())
}

/// A snapshot name for a publish to `dest` at `now`: DEST's last name made a DNS label
/// (lower case, other characters as '-') and the UTC time, e.g. `shot-010-20250102-030405`.
pub fn default_snapshot_name(dest: &str, now: jiff::Timestamp) -> String {
    let last = dest.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let mut label: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    label.truncate(200);
    let label = label.trim_matches('-');
    let time = now.strftime("%Y%m%d-%H%M%S");
    if label.is_empty() {
        format!("published-{time}")
    } else {
        format!("{label}-{time}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_snapshot_names_are_valid_and_name_the_destination() {
        let now: jiff::Timestamp = "2025-01-02T03:04:05Z".parse().unwrap();
        for (dest, want) in [
            ("/published/Shot_010", "shot-010-20250102-030405"),
            ("/a/b/", "b-20250102-030405"),
            ("/x/__", "published-20250102-030405"),
            ("/x/été", "t-20250102-030405"),
        ] {
            let name = default_snapshot_name(dest, now);
            assert_eq!(name, want);
            drive::model::validate_workspace_name(&name).unwrap();
        }
    }
}
