//! The CSI driver driven over its Unix socket as kubelet and the CSI sidecars would: a real
//! `studiodrive-csi serve` process, real FUSE mounts, the shared test PostgreSQL.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use common::{Plugin, code, eventually, mount_cap, mounts_at, publish_req, unpublish_req};
use drive::model::{Actor, WorkspaceKind, WorkspaceSpec};
use drive_csi::csi::proto::identity_client::IdentityClient;
use drive_csi::csi::proto::volume_capability::access_mode::Mode;
use drive_csi::csi::proto::{self as csi, VolumeCapability};
use tonic::Code;

const SENTINEL: &str = "SENTINEL-TOKEN-7f3a9c";

async fn create_volume(plugin: &Plugin, name: &str) -> anyhow::Result<csi::Volume> {
    let resp = plugin
        .controller()
        .create_volume(csi::CreateVolumeRequest {
            name: name.into(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await?;
    resp.into_inner().volume.context("no volume in the response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_and_capabilities() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    let mut identity = IdentityClient::new(plugin.channel.clone());
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.name, "csi.studiodrive.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await?
        .into_inner();
    assert_eq!(
        caps.capabilities.len(),
        2,
        "the controller service and online volume expansion are offered"
    );
    let node = plugin
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(node.node_id, "node-1");
    let node_caps = plugin
        .node()
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await?
        .into_inner();
    let types: Vec<i32> = node_caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    assert!(types.contains(&(csi::node_service_capability::rpc::Type::GetVolumeStats as i32)));
    let ctl = plugin
        .controller()
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await?;
    assert_eq!(ctl.into_inner().capabilities.len(), 6);

    // A node-only plugin offers no controller.
    let state2 = tempfile::tempdir()?;
    let node_only = Plugin::start(&storage, state2.path(), &["--mode", "node"]).await?;
    let caps = IdentityClient::new(node_only.channel.clone())
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await?
        .into_inner();
    assert!(caps.capabilities.is_empty());
    assert_eq!(
        code(
            node_only
                .controller()
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
                .await
        ),
        Code::Unimplemented
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_twice_share_files_then_unpublish() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    let volume = create_volume(&plugin, "pvc-shared").await?;
    assert_eq!(volume.volume_id, "pvc-shared");
    assert_eq!(volume.volume_context["path"], "/volumes/pvc-shared");
    // CreateVolume again with the same request: the same volume.
    assert_eq!(create_volume(&plugin, "pvc-shared").await?, volume);

    let a = pods.path().join("pod-a/mount");
    let b = pods.path().join("pod-b/mount");
    let ctx: Vec<(&str, &str)> = volume
        .volume_context
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for target in [&a, &b] {
        plugin
            .node()
            .node_publish_volume(publish_req("pvc-shared", target, &ctx))
            .await?;
        assert_eq!(mounts_at(target), 1);
    }
    // Repeated publish: idempotent, no second mount.
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-shared", &a, &ctx))
        .await?;
    assert_eq!(mounts_at(&a), 1);
    // Another volume at a published target: ALREADY_EXISTS.
    create_volume(&plugin, "pvc-other").await?;
    assert_eq!(
        code(
            plugin
                .node()
                .node_publish_volume(publish_req("pvc-other", &a, &[]))
                .await
        ),
        Code::AlreadyExists
    );

    std::fs::write(a.join("frame.0001.exr"), b"pixels from pod a")?;
    let seen = eventually(Duration::from_secs(5), || {
        std::fs::read(b.join("frame.0001.exr")).is_ok_and(|d| d == b"pixels from pod a")
    });
    assert!(
        seen,
        "a file written through one publish is visible through the other"
    );

    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-shared", &a))
        .await?;
    assert_eq!(mounts_at(&a), 0);
    assert!(
        !a.exists() || std::fs::read_dir(&a)?.next().is_none(),
        "target path is empty"
    );
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-shared", &a))
        .await?;
    // The other publish still works and still holds the file.
    assert_eq!(std::fs::read(b.join("frame.0001.exr"))?, b"pixels from pod a");
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-shared", &b))
        .await?;
    assert_eq!(mounts_at(&b), 0);

    // DeleteVolume is idempotent, and the folder is gone for the next CreateVolume.
    plugin
        .controller()
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "pvc-shared".into(),
            ..Default::default()
        })
        .await?;
    plugin
        .controller()
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "pvc-shared".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        code(
            plugin
                .node()
                .node_publish_volume(publish_req("pvc-shared", &a, &[]))
                .await
        ),
        Code::NotFound
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_arguments_and_unknown_ids() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    let target = pods.path().join("t");
    let mut node = plugin.node();
    let mut ctl = plugin.controller();

    let full = publish_req("pvc-x", &target, &[]);
    let mut no_id = full.clone();
    no_id.volume_id.clear();
    let mut no_target = full.clone();
    no_target.target_path.clear();
    let mut no_cap = full.clone();
    no_cap.volume_capability = None;
    let mut no_mode = full.clone();
    no_mode.volume_capability = Some(mount_cap(Mode::Unknown));
    for req in [no_id, no_target, no_cap, no_mode] {
        assert_eq!(code(node.node_publish_volume(req).await), Code::InvalidArgument);
    }
    assert_eq!(
        code(node.node_publish_volume(full).await),
        Code::NotFound,
        "unknown volume"
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req("static", &target, &[("workspace", "nope")]))
                .await
        ),
        Code::NotFound,
        "unknown workspace"
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req(
                "static",
                &target,
                &[("workspace", "default"), ("snapshot", "nope")]
            ))
            .await
        ),
        Code::NotFound,
        "unknown snapshot"
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req(
                "static",
                &target,
                &[("workspace", "default"), ("path", "/missing")]
            ))
            .await
        ),
        Code::NotFound,
        "unknown path"
    );
    assert_eq!(
        code(node.node_unpublish_volume(unpublish_req("", &target)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_unpublish_volume(unpublish_req("v", Path::new("")))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_unpublish_volume(unpublish_req("v", &target)).await),
        Code::Ok,
        "not published: ok"
    );
    let stats = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    assert_eq!(
        code(node.node_get_volume_stats(stats("", "/x")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_get_volume_stats(stats("v", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_get_volume_stats(stats("v", &target.display().to_string()))
                .await
        ),
        Code::NotFound
    );
    // A path no volume can be published at (csi-sanity sends "some/path") holds none.
    assert_eq!(
        code(node.node_get_volume_stats(stats("v", "some/path")).await),
        Code::NotFound
    );

    let cap = vec![mount_cap(Mode::SingleNodeWriter)];
    let cv = |name: &str, caps: Vec<VolumeCapability>| csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    assert_eq!(
        code(ctl.create_volume(cv("", cap.clone())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_volume(cv("pvc-a", vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_volume(cv(&"n".repeat(254), cap.clone())).await),
        Code::InvalidArgument,
        "a name longer than 253 bytes"
    );
    // Any other UTF-8 is a CSI name: stored under a safe folder name of its own, found again by
    // its CSI name.
    let mut folders = std::collections::BTreeSet::new();
    let mut ids = Vec::new();
    for name in ["Mixed Name", "mixed-name", "Ünïcode/../x", "Mixed-Name"] {
        let made = ctl
            .create_volume(cv(name, cap.clone()))
            .await?
            .into_inner()
            .volume
            .expect("volume");
        // The id the CO calls it by afterwards is a safe id: the name itself when it is one.
        assert!(
            drive::meta::is_safe_id(&made.volume_id),
            "{name}: id {}",
            made.volume_id
        );
        assert_eq!(made.volume_id == name, drive::meta::is_safe_id(name), "{name}");
        ids.push(made.volume_id.clone());
        let path = made.volume_context.get("path").cloned().unwrap_or_default();
        assert!(
            path.strip_prefix("/volumes/")
                .is_some_and(|f| !f.contains('/') && !f.contains(' ') && f.is_ascii()),
            "{name} is the folder {path}"
        );
        folders.insert(path);
        let again = ctl
            .create_volume(cv(name, cap.clone()))
            .await?
            .into_inner()
            .volume
            .expect("volume");
        assert_eq!(
            again.volume_context, made.volume_context,
            "idempotent by the CSI name"
        );
    }
    assert_eq!(folders.len(), 4, "one folder per CSI name: {folders:?}");
    // Later calls name the volume by its id.
    for id in &ids {
        let known = ctl
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: id.clone(),
                volume_capabilities: cap.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(known.confirmed.is_some(), "{id}");
        ctl.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await?;
        assert_eq!(
            code(
                ctl.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: id.clone(),
                    volume_capabilities: cap.clone(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound,
            "{id} is gone"
        );
    }
    let mut other_params = cv("pvc-a", cap.clone());
    ctl.create_volume(other_params.clone()).await?;
    other_params
        .parameters
        .insert("basePath".into(), "/elsewhere".into());
    assert_eq!(
        code(ctl.create_volume(other_params).await),
        Code::AlreadyExists,
        "same name, other parameters"
    );
    assert_eq!(
        code(ctl.delete_volume(csi::DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: "never-was".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Ok
    );
    let snap = |src: &str, name: &str| csi::CreateSnapshotRequest {
        source_volume_id: src.into(),
        name: name.into(),
        ..Default::default()
    };
    assert_eq!(
        code(ctl.create_snapshot(snap("", "s1")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_snapshot(snap("pvc-a", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_snapshot(snap("pvc-unknown", "s1")).await),
        Code::NotFound
    );
    assert_eq!(
        code(ctl.delete_snapshot(csi::DeleteSnapshotRequest::default()).await),
        Code::InvalidArgument
    );
    let vvc = |id: &str, caps: Vec<VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    assert_eq!(
        code(ctl.validate_volume_capabilities(vvc("", cap.clone())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.validate_volume_capabilities(vvc("pvc-a", vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(vvc("pvc-unknown", cap.clone()))
                .await
        ),
        Code::NotFound
    );
    let ok = ctl
        .validate_volume_capabilities(vvc("pvc-a", cap))
        .await?
        .into_inner();
    assert!(ok.confirmed.is_some());
    assert!(!target.exists(), "nothing was created by failed calls");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_is_refused_and_tokens_never_leak() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let port = drive_testkit::pg::free_port()?;
    let metrics_addr = format!("127.0.0.1:{port}");
    let api = common::KubeApi::start().await?;
    api.vouch(
        SENTINEL,
        common::Vouched {
            namespace: "vfx".into(),
            service_account: "render".into(),
            pod_name: "render-0".into(),
            pod_uid: "uid-0".into(),
            audience: "studiodrive".into(),
        },
    );
    let kubeconfig = api.kubeconfig.display().to_string();
    let plugin = Plugin::start(
        &storage,
        state.path(),
        &[
            "--metrics-addr",
            &metrics_addr,
            "--kubeconfig",
            &kubeconfig,
            "--token-audience",
            "studiodrive",
        ],
    )
    .await?;
    // Provisioned for a claim of namespace vfx, whose pods may then mount it.
    plugin
        .controller()
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-h".into(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            parameters: [("csi.storage.k8s.io/pvc/namespace".to_string(), "vfx".to_string())].into(),
            ..Default::default()
        })
        .await?;
    let mut node = plugin.node();
    let good = pods.path().join("good");
    let long_id = "v".repeat(4096);
    let long_path = format!("{}/{}", pods.path().display(), "p".repeat(4096));
    let bad_ids = ["..", "a/../b", "pvc\0x", long_id.as_str(), "../../etc"];
    for id in bad_ids {
        assert_eq!(
            code(node.node_publish_volume(publish_req(id, &good, &[])).await),
            Code::InvalidArgument,
            "{id:?}"
        );
        assert_eq!(
            code(node.node_unpublish_volume(unpublish_req(id, &good)).await),
            Code::InvalidArgument
        );
    }
    let dot_dot = format!("{}/x/../y", pods.path().display());
    let nul = format!("{}/a\0b", pods.path().display());
    for target in [
        "relative/target",
        dot_dot.as_str(),
        nul.as_str(),
        long_path.as_str(),
    ] {
        let mut req = publish_req("pvc-h", &good, &[]);
        req.target_path = target.to_string();
        assert_eq!(
            code(node.node_publish_volume(req).await),
            Code::InvalidArgument,
            "{target:?}"
        );
    }
    let big = "x".repeat(8192);
    assert_eq!(
        code(
            node.node_publish_volume(publish_req(
                "pvc-h",
                &good,
                &[("csi.storage.k8s.io/pod.name", &big)]
            ))
            .await
        ),
        Code::InvalidArgument,
        "oversized volume context"
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req(
                "pvc-h",
                &good,
                &[("workspace", "default"), ("path", "/../etc")]
            ))
            .await
        ),
        Code::InvalidArgument
    );

    // The sentinel token: malformed JSON, then no token for our audience, then a good one.
    let tokens_key = "csi.storage.k8s.io/serviceAccount.tokens";
    let malformed = format!("{{\"studiodrive\": {SENTINEL}");
    let st = node
        .node_publish_volume(publish_req("pvc-h", &good, &[(tokens_key, &malformed)]))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(!st.message().contains(SENTINEL));
    let other_audience =
        format!(r#"{{"vault":{{"token":"{SENTINEL}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#);
    let pod = [
        ("csi.storage.k8s.io/pod.name", "render-0"),
        ("csi.storage.k8s.io/pod.namespace", "vfx"),
        ("csi.storage.k8s.io/pod.uid", "uid-0"),
        ("csi.storage.k8s.io/serviceAccount.name", "render"),
    ];
    let mut ctx = pod.to_vec();
    ctx.push((tokens_key, &other_audience));
    let st = node
        .node_publish_volume(publish_req("pvc-h", &good, &ctx))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert!(st.message().contains("vfx/render-0"), "{}", st.message());
    assert!(!st.message().contains(SENTINEL));
    assert_eq!(mounts_at(&good), 0);

    let right =
        format!(r#"{{"studiodrive":{{"token":"{SENTINEL}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#);
    let mut ctx = pod.to_vec();
    ctx.push((tokens_key, &right));
    node.node_publish_volume(publish_req("pvc-h", &good, &ctx))
        .await?;
    assert_eq!(mounts_at(&good), 1);
    node.node_unpublish_volume(unpublish_req("pvc-h", &good)).await?;

    // Nothing created by the refused calls: only the good target's record came and went.
    let entries: Vec<_> = std::fs::read_dir(pods.path())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(entries.is_empty(), "refused calls created {entries:?}");
    let records = std::fs::read_dir(state.path().join("csi-publications"))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(records, 0);

    let metrics = scrape(&metrics_addr)?;
    assert!(
        metrics
            .contains(r#"studiodrive_csi_calls_total{code="PermissionDenied",method="NodePublishVolume"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"studiodrive_csi_calls_total{code="Ok",method="NodePublishVolume"} 1"#));
    let mut everything = plugin.log_text() + &metrics;
    for e in std::fs::read_dir(state.path().join("csi-publications"))?.flatten() {
        everything += &std::fs::read_to_string(e.path()).unwrap_or_default();
    }
    assert!(everything.contains("NodePublishVolume"), "the log records calls");
    assert!(
        !everything.contains(SENTINEL),
        "the token leaked into logs or metrics"
    );
    Ok(())
}

fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_mount_once() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    create_volume(&plugin, "pvc-c").await?;
    let target = pods.path().join("busy");
    let calls = (0..8).map(|_| {
        let mut node = plugin.node();
        let req = publish_req("pvc-c", &target, &[]);
        tokio::spawn(async move { node.node_publish_volume(req).await.map(|_| ()) })
    });
    for r in futures_join(calls).await {
        r?;
    }
    assert_eq!(mounts_at(&target), 1, "eight concurrent publishes, one mount");
    let calls = (0..4).map(|_| {
        let mut node = plugin.node();
        let req = unpublish_req("pvc-c", &target);
        tokio::spawn(async move { node.node_unpublish_volume(req).await.map(|_| ()) })
    });
    for r in futures_join(calls).await {
        r?;
    }
    assert_eq!(mounts_at(&target), 0);
    Ok(())
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<T, tonic::Status>>>,
) -> Vec<Result<T, tonic::Status>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_list_page_and_mount_read_only() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    let mut ctl = plugin.controller();
    create_volume(&plugin, "pvc-s").await?;
    create_volume(&plugin, "pvc-t").await?;
    let live = pods.path().join("live");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-s", &live, &[]))
        .await?;
    std::fs::write(live.join("comp.nk"), vec![7u8; 10_000])?;

    let snap = |src: &str, name: &str| csi::CreateSnapshotRequest {
        source_volume_id: src.into(),
        name: name.into(),
        ..Default::default()
    };
    // A snapshot sees committed files: unpublish first commits everything.
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-s", &live))
        .await?;
    let s1 = ctl
        .create_snapshot(snap("pvc-s", "snap-1"))
        .await?
        .into_inner()
        .snapshot
        .unwrap();
    assert!(s1.ready_to_use);
    assert_eq!(s1.size_bytes, 10_000);
    assert_eq!(s1.source_volume_id, "pvc-s");
    assert_eq!(s1.snapshot_id, "default@snap-1");
    let again = ctl
        .create_snapshot(snap("pvc-s", "snap-1"))
        .await?
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, s1.snapshot_id, "CreateSnapshot is idempotent");
    assert_eq!(
        code(ctl.create_snapshot(snap("pvc-t", "snap-1")).await),
        Code::AlreadyExists
    );
    ctl.create_snapshot(snap("pvc-s", "snap-2")).await?;
    ctl.create_snapshot(snap("pvc-t", "snap-3")).await?;

    // Pagination: three snapshots, one per page.
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctl
            .list_snapshots(csi::ListSnapshotsRequest {
                max_entries: 1,
                starting_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.entries.len() <= 1);
        ids.extend(page.entries.into_iter().map(|e| e.snapshot.unwrap().snapshot_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(ids, ["default@snap-1", "default@snap-2", "default@snap-3"]);
    let of_t = ctl
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: "pvc-t".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(of_t.entries.len(), 1);
    let by_id = ctl
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: "default@snap-2".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        by_id.entries[0].snapshot.as_ref().unwrap().source_volume_id,
        "pvc-s"
    );
    assert_eq!(
        code(
            ctl.list_snapshots(csi::ListSnapshotsRequest {
                starting_token: "bogus".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Aborted
    );

    // Change the live volume after the snapshot, then mount the snapshot: read-only, old view.
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-s", &live, &[]))
        .await?;
    std::fs::write(live.join("comp.nk"), b"changed")?;
    let frozen = pods.path().join("frozen");
    let ctx = [
        ("workspace", "default"),
        ("path", "/volumes/pvc-s"),
        ("snapshot", "snap-1"),
    ];
    plugin
        .node()
        .node_publish_volume(publish_req("snap-1-vol", &frozen, &ctx))
        .await?;
    assert_eq!(std::fs::read(frozen.join("comp.nk"))?, vec![7u8; 10_000]);
    let err = std::fs::write(frozen.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("snap-1-vol", &frozen))
        .await?;
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-s", &live))
        .await?;

    // A volume restored from snap-1: the old content, writable, without copying data.
    let from = |id: &str| csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    };
    let restore = |name: &str, id: &str| csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        volume_content_source: Some(from(id)),
        ..Default::default()
    };
    let restored = ctl
        .create_volume(restore("pvc-restored", "default@snap-1"))
        .await?
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.content_source, Some(from("default@snap-1")));
    let again = ctl
        .create_volume(restore("pvc-restored", "default@snap-1"))
        .await?
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again, restored, "a repeated restore is the same volume");
    assert_eq!(
        code(ctl.create_volume(restore("pvc-restored", "default@snap-2")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(ctl.create_volume(restore("pvc-r2", "default@nope")).await),
        Code::NotFound
    );
    let back = pods.path().join("restored");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-restored", &back, &[]))
        .await?;
    assert_eq!(std::fs::read(back.join("comp.nk"))?, vec![7u8; 10_000]);
    assert_eq!(
        std::fs::read_dir(&back)?.count(),
        1,
        "only what the snapshot held"
    );
    std::fs::write(back.join("comp.nk"), b"a new take")?;
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-restored", &back))
        .await?;

    ctl.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: "default@snap-1".into(),
        ..Default::default()
    })
    .await?;
    ctl.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: "default@snap-1".into(),
        ..Default::default()
    })
    .await?;
    let left = ctl
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await?
        .into_inner();
    assert_eq!(left.entries.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_stats_follow_the_files() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    create_volume(&plugin, "pvc-stats").await?;
    let target = pods.path().join("t");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-stats", &target, &[]))
        .await?;
    let stats = |plugin: &Plugin| {
        let mut node = plugin.node();
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: "pvc-stats".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        };
        async move {
            let r = node.node_get_volume_stats(req).await?.into_inner();
            let find =
                |unit: csi::volume_usage::Unit| r.usage.iter().find(|u| u.unit == unit as i32).unwrap().used;
            anyhow::Ok((
                find(csi::volume_usage::Unit::Bytes),
                find(csi::volume_usage::Unit::Inodes),
                r.volume_condition.unwrap().abnormal,
            ))
        }
    };
    let (bytes0, inodes0, abnormal) = stats(&plugin).await?;
    assert!(!abnormal);
    std::fs::create_dir(target.join("plates"))?;
    for i in 0..3 {
        std::fs::write(target.join(format!("plates/p{i}.dpx")), vec![1u8; 1000 * (i + 1)])?;
    }
    let (bytes1, inodes1, _) = stats(&plugin).await?;
    assert_eq!(bytes1 - bytes0, 6000);
    assert_eq!(inodes1 - inodes0, 4);
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-stats", &target))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_plugin_leaves_reads_running_and_restart_adopts() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let mut plugin = Plugin::start(&storage, state.path(), &[]).await?;
    create_volume(&plugin, "pvc-k").await?;
    let target = pods.path().join("k");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-k", &target, &[]))
        .await?;
    let data: Vec<u8> = (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(target.join("plate.exr"), &data)?;
    let expected = digest(&data);

    // A reader that has started before the plugin dies and finishes after.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let path = target.join("plate.exr");
    let reader = std::thread::spawn(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&path)?;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let n = f.read(&mut buf)?;
        all.extend_from_slice(&buf[..n]);
        let _ = started_tx.send(());
        let _ = go_rx.recv();
        f.read_to_end(&mut all)?;
        Ok(digest(&all))
    });
    started_rx.recv()?;
    plugin.kill9();
    go_tx.send(())?;
    assert_eq!(
        reader.join().unwrap()?,
        expected,
        "the read completes with the right bytes"
    );
    assert_eq!(mounts_at(&target), 1, "the mount outlived the plugin");

    let restarted = plugin.restart().await?;
    // The adopted publication is still known: publishing again is a no-op.
    restarted
        .node()
        .node_publish_volume(publish_req("pvc-k", &target, &[]))
        .await?;
    assert_eq!(mounts_at(&target), 1);
    restarted
        .node()
        .node_unpublish_volume(unpublish_req("pvc-k", &target))
        .await?;
    assert_eq!(mounts_at(&target), 0);
    assert!(!target.exists());
    Ok(())
}

fn digest(data: &[u8]) -> String {
    // FNV-1a and the length: enough to tell contents apart in a test.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}-{}", data.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_mount_process_is_restarted_and_unpublish_cleans_up() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    create_volume(&plugin, "pvc-m").await?;
    let target = pods.path().join("m");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-m", &target, &[]))
        .await?;
    std::fs::write(target.join("shot.txt"), b"take 3")?;
    let record = std::fs::read_dir(state.path().join("csi-publications"))?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .context("a publication record")?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(record.path())?)?;
    let pid = json["pid"].as_u64().context("pid")? as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    let revived = eventually(Duration::from_secs(30), || {
        std::fs::read(target.join("shot.txt")).is_ok_and(|d| d == b"take 3")
    });
    assert!(
        revived,
        "the supervisor remounted the volume: {}",
        plugin.log_text()
    );
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-m", &target))
        .await?;
    assert_eq!(mounts_at(&target), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probe_is_not_ready_while_the_metadata_store_is_down() -> anyhow::Result<()> {
    drive_testkit::install_crypto_provider();
    let pg = drive_testkit::pg::PgServer::start()?;
    let db = pg.create_database().await?;
    let url = pg.url(&db);
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(url.clone())).await?;
    meta.create_workspace(
        &Actor::system("test"),
        &WorkspaceSpec::new("default", WorkspaceKind::User),
    )
    .await?;
    drop(meta);
    let blocks = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let store = format!("file://{}", blocks.path().display());
    let args = vec![
        "--metadata-url".to_string(),
        url,
        "--store".into(),
        store,
        "--state-dir".into(),
        state.path().display().to_string(),
        "--node-id".into(),
        "node-1".into(),
    ];
    let plugin = Plugin::launch(state.path(), args).await?;
    let mut identity = IdentityClient::new(plugin.channel.clone());
    pg.stop()?;
    let not_ready = async {
        for _ in 0..200 {
            if identity
                .probe(csi::ProbeRequest {})
                .await
                .ok()?
                .into_inner()
                .ready
                == Some(false)
            {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    };
    assert!(
        not_ready.await.is_some(),
        "Probe reports not ready while PostgreSQL is down"
    );
    let st = plugin
        .controller()
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-down".into(),
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    pg.resume()?;
    let mut ready = false;
    for _ in 0..200 {
        if identity.probe(csi::ProbeRequest {}).await?.into_inner().ready == Some(true) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again once PostgreSQL is back");
    create_volume(&plugin, "pvc-down").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_come_from_a_toml_file_and_flags_win() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let config = state.path().join("csi.toml");
    let mut f = std::fs::File::create(&config)?;
    writeln!(f, "node-id = \"from-file\"")?;
    writeln!(f, "mode = \"node\"")?;
    writeln!(f, "metadata-url = {:?}", storage.url)?;
    writeln!(
        f,
        "store = \"file://{}\"",
        storage.dir.path().join("blocks").display()
    )?;
    writeln!(f, "state-dir = {:?}", state.path().display().to_string())?;
    drop(f);
    let plugin = Plugin::launch(
        state.path(),
        vec!["--config".into(), config.display().to_string()],
    )
    .await?;
    let info = plugin
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.node_id, "from-file");
    assert_eq!(
        code(
            plugin
                .controller()
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
                .await
        ),
        Code::Unimplemented
    );
    drop(plugin);
    let state2 = tempfile::tempdir()?;
    let plugin = Plugin::launch(
        state2.path(),
        vec![
            "--config".into(),
            config.display().to_string(),
            "--node-id".into(),
            "from-flag".into(),
            "--state-dir".into(),
            state2.path().display().to_string(),
        ],
    )
    .await?;
    let info = plugin
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.node_id, "from-flag");

    // Unknown keys are refused with a clear error.
    std::fs::write(&config, "node-idd = \"typo\"\n")?;
    let out = common::studiodrive()
        .args(["serve", "--endpoint", "unix:///tmp/never.sock", "--config"])
        .arg(&config)
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// Catches: volume_condition reported normal while the volume's mount process is dead (pods
// would keep using a mount that answers ENOTCONN) or while every restart of it fails, an
// abnormal condition without a message, and a condition stuck abnormal after the supervisor
// has brought the mount back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_condition_is_abnormal_while_the_mount_process_is_down() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    create_volume(&plugin, "pvc-c").await?;
    let target = pods.path().join("c");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-c", &target, &[]))
        .await?;
    std::fs::write(target.join("shot.txt"), b"take 5")?;
    let condition = || {
        let mut node = plugin.node();
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: "pvc-c".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        };
        async move {
            let resp = node.node_get_volume_stats(req).await?.into_inner();
            resp.volume_condition.context("no volume_condition")
        }
    };
    /// Polls `condition` until its `abnormal` is `abnormal`, for up to a minute; returns the
    /// last condition seen.
    async fn until<F, Fut>(condition: F, abnormal: bool) -> anyhow::Result<csi::VolumeCondition>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<csi::VolumeCondition>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let c = condition().await?;
            if c.abnormal == abnormal || std::time::Instant::now() > deadline {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let up = condition().await?;
    assert!(!up.abnormal, "published and mounted: {up:?}");

    // Keep the volume down for as long as the test wants: with its cache directory replaced
    // by a file, every new mount process of it fails to start.
    let caches: Vec<PathBuf> = std::fs::read_dir(state.path().join("csi-cache"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let [cache] = caches.as_slice() else {
        anyhow::bail!("one volume cache: {caches:?}")
    };
    let aside = cache.with_extension("aside");
    std::fs::rename(cache, &aside)?;
    std::fs::write(cache, b"not a directory")?;
    let record = std::fs::read_dir(state.path().join("csi-publications"))?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .context("a publication record")?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(record.path())?)?;
    let pid = json["pid"].as_u64().context("pid")? as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    // Dead (a zombie until the plugin reaps it): its dead FUSE mount is still listed at the
    // target until the supervisor detaches it, which must not pass for a live mount.
    let gone = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    });
    assert!(gone, "the mount process {pid} died");
    // The supervisor restarts it at once, and a restart that has mounted but not yet failed on
    // its cache is briefly a live mount: wait for the abnormal answer rather than race it.
    let down = until(&condition, true).await?;
    assert!(down.abnormal, "after the mount process died: {down:?}");
    assert!(!down.message.is_empty(), "an abnormal condition says why");
    // Still abnormal once the supervisor has tried to restart it and failed.
    let log_deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !plugin.log_text().contains("restart failed") {
        anyhow::ensure!(
            std::time::Instant::now() < log_deadline,
            "no failed restart: {}",
            plugin.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still = condition().await?;
    assert!(still.abnormal, "after a failed restart: {still:?}");
    assert!(!still.message.is_empty());

    // The volume can mount again: the supervisor's next attempt brings it back.
    std::fs::remove_file(cache)?;
    std::fs::rename(&aside, cache)?;
    let back = until(&condition, false).await?;
    assert!(!back.abnormal, "the supervisor restarted the mount: {back:?}");
    assert_eq!(std::fs::read(target.join("shot.txt"))?, b"take 5");
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-c", &target))
        .await?;
    assert_eq!(mounts_at(&target), 0);
    Ok(())
}

/// A whole-workspace volume: NodeGetVolumeStats reports its quota (the requested capacity) as
/// the total and the workspace's usage counters as used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workspace_volume_stats_are_its_quota_and_counters() -> anyhow::Result<()> {
    let storage = common::Storage::create().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    plugin
        .controller()
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-ws".into(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            parameters: [("placement".to_string(), "workspace".to_string())].into(),
            ..Default::default()
        })
        .await?;
    let target = pods.path().join("w");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-ws", &target, &[]))
        .await?;
    std::fs::create_dir(target.join("plates"))?;
    for i in 0..3 {
        std::fs::write(target.join(format!("plates/p{i}.dpx")), vec![1u8; 1000 * (i + 1)])?;
    }
    std::fs::hard_link(target.join("plates/p0.dpx"), target.join("p0-again.dpx"))?;
    let r = plugin
        .node()
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "pvc-ws".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let find = |unit: csi::volume_usage::Unit| {
        let u = r.usage.iter().find(|u| u.unit == unit as i32).unwrap();
        (u.total, u.used, u.available)
    };
    // A hard link is one inode: its bytes count once.
    assert_eq!(
        find(csi::volume_usage::Unit::Bytes),
        (64 << 20, 6000, (64 << 20) - 6000)
    );
    assert_eq!(find(csi::volume_usage::Unit::Inodes).1, 4);

    // Expansion raises the quota while mounted; a smaller request shrinks nothing.
    let expand = |bytes: i64| csi::ControllerExpandVolumeRequest {
        volume_id: "pvc-ws".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let grown = plugin
        .controller()
        .controller_expand_volume(expand(128 << 20))
        .await?
        .into_inner();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (128 << 20, false)
    );
    let kept = plugin
        .controller()
        .controller_expand_volume(expand(1 << 20))
        .await?
        .into_inner();
    assert_eq!(kept.capacity_bytes, 128 << 20, "volumes never shrink");
    let r = plugin
        .node()
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "pvc-ws".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let total = r
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .map(|u| u.total);
    assert_eq!(total, Some(128 << 20), "the mounted volume's quota grew");
    assert_eq!(
        code(
            plugin
                .controller()
                .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                    volume_id: "pvc-never".into(),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: 1,
                        limit_bytes: 0
                    }),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-ws", &target))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_starts_with_its_source_content_then_goes_its_own_way() -> anyhow::Result<()> {
    // A fresh store: volumes without parameters go to the default workspace, made on demand.
    let storage = common::Storage::create().await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    create_volume(&plugin, "pvc-src").await?;
    let src = pods.path().join("src");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-src", &src, &[]))
        .await?;
    let plate: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("plate.dpx"), &plate)?;
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-src", &src))
        .await?;

    let clone = csi::CreateVolumeRequest {
        name: "pvc-clone".into(),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Volume(
                csi::volume_content_source::VolumeSource {
                    volume_id: "pvc-src".into(),
                },
            )),
        }),
        ..Default::default()
    };
    let made = plugin
        .controller()
        .create_volume(clone.clone())
        .await?
        .into_inner()
        .volume
        .expect("volume");
    assert!(matches!(
        made.content_source.and_then(|s| s.r#type),
        Some(csi::volume_content_source::Type::Volume(v)) if v.volume_id == "pvc-src"
    ));
    let again = plugin
        .controller()
        .create_volume(clone.clone())
        .await?
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(
        again.volume_context, made.volume_context,
        "a repeated clone request is the same volume"
    );
    let mut other = clone.clone();
    other.volume_content_source = None;
    assert_eq!(
        code(plugin.controller().create_volume(other).await),
        Code::AlreadyExists,
        "the same name without the source is another request"
    );
    let mut missing = clone.clone();
    missing.name = "pvc-clone-2".into();
    missing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "pvc-gone".into(),
            },
        )),
    });
    assert_eq!(
        code(plugin.controller().create_volume(missing).await),
        Code::NotFound
    );

    let cloned = pods.path().join("clone");
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-clone", &cloned, &[]))
        .await?;
    assert_eq!(
        std::fs::read(cloned.join("plate.dpx"))?,
        plate,
        "the clone reads the source's bytes"
    );
    std::fs::write(cloned.join("plate.dpx"), b"regraded")?;
    std::fs::write(cloned.join("new.exr"), b"new")?;
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-clone", &cloned))
        .await?;
    plugin
        .node()
        .node_publish_volume(publish_req("pvc-src", &src, &[]))
        .await?;
    assert_eq!(
        std::fs::read(src.join("plate.dpx"))?,
        plate,
        "the source is untouched"
    );
    assert!(!src.join("new.exr").exists());
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("pvc-src", &src))
        .await?;
    Ok(())
}
