//! Per-workspace keys and object stores on the CSI publish path, and mounts that never create
//! workspaces: a real `studiodrive-csi serve`, real FUSE mounts, the shared test PostgreSQL.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use common::{Plugin, eventually};
use drive::model::{Actor, WorkspaceKind, WorkspaceSpec};
use drive_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use drive_csi::csi::proto::{self as csi, VolumeCapability};

fn publish_req(volume: &str, target: &Path, ctx: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }),
        volume_context: ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

fn unpublish_req(volume: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    }
}

/// The pid of the one mount process the plugin recorded.
fn recorded_mount_pid(state: &Path) -> anyhow::Result<i32> {
    let record = std::fs::read_dir(state.join("csi-publications"))?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .context("a publication record")?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(record.path())?)?;
    Ok(json["pid"].as_u64().context("pid")? as i32)
}

// Catches: a mount process restarted by the supervisor re-creating a deleted workspace (as
// an empty, unencrypted user workspace that pods then write into), and a publication whose
// restarts keep failing without saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_workspace_is_not_recreated_when_its_mount_restarts() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.url.clone())).await?;
    let actor = Actor::system("test");
    meta.create_workspace(&actor, &WorkspaceSpec::new("doomed", WorkspaceKind::Team))
        .await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    let target = pods.path().join("d");
    let ctx = [("workspace", "doomed")];
    plugin
        .node()
        .node_publish_volume(publish_req("vol-d", &target, &ctx))
        .await?;
    std::fs::write(target.join("a.txt"), b"before")?;

    meta.delete_workspace(&actor, "doomed").await?;
    let pid = recorded_mount_pid(state.path())?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    // Two failed restarts: the supervisor keeps trying (with backoff) and never creates it.
    let failed_twice = eventually(Duration::from_secs(60), || {
        plugin.log_text().matches("restart failed").count() >= 2
    });
    assert!(failed_twice, "restarts failed: {}", plugin.log_text());
    let log = plugin.log_text();
    assert!(
        log.contains("workspace doomed does not exist or was deleted"),
        "the failure names the workspace: {log}"
    );
    let err = meta.get_workspace("doomed").await.expect_err("still deleted");
    assert_eq!(err.kind(), drive::ErrorKind::NotFound, "{err}");
    assert!(
        meta.list_workspaces().await?.iter().all(|w| w.name != "doomed"),
        "no workspace named doomed was created"
    );

    // The publication reports the failure.
    let stats = plugin
        .node()
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "vol-d".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let condition = stats.volume_condition.context("a volume condition")?;
    assert!(condition.abnormal, "{condition:?}");
    assert!(
        condition
            .message
            .contains("workspace doomed does not exist or was deleted"),
        "{condition:?}"
    );

    // A new publish of it fails the same way, NOT_FOUND, and creates nothing either.
    let other = pods.path().join("d2");
    let status = plugin
        .node()
        .node_publish_volume(publish_req("vol-d2", &other, &ctx))
        .await
        .expect_err("the workspace is gone");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "workspace doomed does not exist or was deleted");

    plugin
        .node()
        .node_unpublish_volume(unpublish_req("vol-d", &target))
        .await?;
    assert_eq!(drive_csi::mount_table::fuse_mounts_at(&target), 0);
    assert!(
        meta.get_workspace("doomed").await.is_err(),
        "still not re-created"
    );
    Ok(())
}
