//! Who may mount what, through every face: a real `studiodrive-csi serve` verifying pod tokens
//! against a Kubernetes API stand-in (TokenReview), Shares and workspaces in the real
//! PostgreSQL store, real FUSE mounts showing the decision (read-write, read-only, refused),
//! and a live mount losing what a deleted Share granted.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use common::{KubeApi, Plugin, Vouched, eventually, mounts_at, publish_req, unpublish_req};
use drive::model::{Actor, Permission, Share, Timestamp, WorkspaceKind, WorkspaceSpec};
use drive::{MetaConfig, PgMetaStore};
use tonic::Code;

const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
const AUDIENCE: &str = "csi.studiodrive.dev";

/// A pod as kubelet describes it, with its token.
#[derive(Clone, Copy)]
struct Pod {
    namespace: &'static str,
    service_account: &'static str,
    name: &'static str,
    token: &'static str,
}

const STUDIO: Pod = Pod {
    namespace: "studio",
    service_account: "artist",
    name: "artist-0",
    token: "tok-studio",
};
const VFX: Pod = Pod {
    namespace: "vfx",
    service_account: "comp",
    name: "comp-0",
    token: "tok-vfx",
};

impl Pod {
    fn vouched(self) -> Vouched {
        Vouched {
            namespace: self.namespace.into(),
            service_account: self.service_account.into(),
            pod_name: self.name.into(),
            pod_uid: format!("uid-{}", self.name),
            audience: AUDIENCE.into(),
        }
    }

    /// The volume context kubelet sends for an inline volume of this pod.
    fn context(self, workspace: &str, path: &str) -> Vec<(String, String)> {
        let token = format!(
            r#"{{"{AUDIENCE}":{{"token":"{}","expirationTimestamp":"2999-01-01T00:00:00Z"}}}}"#,
            self.token
        );
        [
            ("csi.storage.k8s.io/pod.name", self.name.to_string()),
            ("csi.storage.k8s.io/pod.namespace", self.namespace.to_string()),
            ("csi.storage.k8s.io/pod.uid", format!("uid-{}", self.name)),
            (
                "csi.storage.k8s.io/serviceAccount.name",
                self.service_account.to_string(),
            ),
            ("csi.storage.k8s.io/ephemeral", "true".to_string()),
            (TOKENS, token),
            ("workspace", workspace.to_string()),
            ("path", path.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// What a publish must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    ReadWrite,
    ReadOnly,
    Refused(Code),
}

async fn publish(plugin: &Plugin, target: &Path, ctx: &[(String, String)]) -> Result<(), tonic::Status> {
    let pairs: Vec<(&str, &str)> = ctx.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    plugin
        .node()
        .node_publish_volume(publish_req("inline-vol", target, &pairs))
        .await
        .map(|_| ())
}

fn share(
    ws: drive::model::WorkspaceId,
    name: &str,
    path: &str,
    subject: &str,
    permission: Permission,
) -> Share {
    Share {
        workspace: ws,
        name: name.into(),
        path: path.into(),
        subjects: vec![subject.into()],
        permission,
        expires_at: None,
    }
}

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_follow_namespace_shares_and_verified_tokens() -> anyhow::Result<()> {
    common::require_fuse();
    let storage = common::storage_with_default_workspace().await?;
    let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
    let actor = Actor::system("test");
    let ws = meta
        .create_workspace(&actor, &WorkspaceSpec::new("studio.shot010", WorkspaceKind::Team))
        .await?;
    let api = KubeApi::start().await?;
    for pod in [STUDIO, VFX] {
        api.vouch(pod.token, pod.vouched());
    }
    // A token of the vfx pod presented by a pod claiming namespace studio.
    api.vouch("tok-vfx-as-studio", VFX.vouched());
    let kubeconfig = api.kubeconfig.display().to_string();
    let state = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &["--kubeconfig", &kubeconfig]).await?;
    let pods = tempfile::tempdir()?;
    let mut published: Vec<PathBuf> = Vec::new();

    // The studio pod mounts its own namespace's workspace and lays out the folders.
    let home = pods.path().join("home");
    publish(&plugin, &home, &STUDIO.context("studio.shot010", "/")).await?;
    published.push(home.clone());
    for dir in ["a", "ab", "w", "x"] {
        std::fs::create_dir(home.join(dir))?;
        std::fs::write(home.join(dir).join("frame.exr"), format!("pixels of {dir}"))?;
    }
    meta.put_share(
        &actor,
        &share(ws.id, "read-a", "/a", "ServiceAccount:vfx/comp", Permission::Read),
    )
    .await?;
    meta.put_share(
        &actor,
        &share(
            ws.id,
            "write-w",
            "/w",
            "Group:system:serviceaccounts:vfx",
            Permission::Write,
        ),
    )
    .await?;
    let mut expired = share(
        ws.id,
        "expired-x",
        "/x",
        "ServiceAccount:vfx/comp",
        Permission::Write,
    );
    expired.expires_at = Some(Timestamp(1));
    meta.put_share(&actor, &expired).await?;

    let forged = Pod {
        token: "tok-forged",
        ..VFX
    };
    let borrowed = Pod {
        namespace: "studio",
        token: "tok-vfx-as-studio",
        ..VFX
    };
    let cases: &[(&str, Pod, &str, &str, Expect)] = &[
        ("own namespace", STUDIO, "studio.shot010", "/w", Expect::ReadWrite),
        (
            "other namespace, no share",
            VFX,
            "studio.shot010",
            "/",
            Expect::Refused(Code::PermissionDenied),
        ),
        (
            "other namespace, missing workspace",
            VFX,
            "studio.nothing",
            "/",
            Expect::Refused(Code::PermissionDenied),
        ),
        (
            "own namespace, missing workspace",
            STUDIO,
            "studio.nothing",
            "/",
            Expect::Refused(Code::NotFound),
        ),
        ("read share", VFX, "studio.shot010", "/a", Expect::ReadOnly),
        (
            "write share, by group",
            VFX,
            "studio.shot010",
            "/w",
            Expect::ReadWrite,
        ),
        (
            "expired share",
            VFX,
            "studio.shot010",
            "/x",
            Expect::Refused(Code::PermissionDenied),
        ),
        (
            "/a does not open /ab",
            VFX,
            "studio.shot010",
            "/ab",
            Expect::Refused(Code::PermissionDenied),
        ),
        (
            "forged token",
            forged,
            "studio.shot010",
            "/a",
            Expect::Refused(Code::PermissionDenied),
        ),
        (
            "token of another namespace",
            borrowed,
            "studio.shot010",
            "/",
            Expect::Refused(Code::PermissionDenied),
        ),
    ];
    let mut refusals = Vec::new();
    for (i, (what, pod, workspace, path, expect)) in cases.iter().enumerate() {
        let target = pods.path().join(format!("case-{i}"));
        let result = publish(&plugin, &target, &pod.context(workspace, path)).await;
        match (expect, result) {
            (Expect::Refused(want), Err(status)) => {
                assert_eq!(status.code(), *want, "{what}: {}", status.message());
                assert_eq!(mounts_at(&target), 0, "{what}: nothing mounted");
                if *want == Code::PermissionDenied {
                    refusals.push((what, status.message().to_string()));
                }
            }
            (Expect::ReadWrite | Expect::ReadOnly, Ok(())) => {
                published.push(target.clone());
                let dir = path.trim_start_matches('/');
                let frame =
                    std::fs::read(target.join("frame.exr")).with_context(|| format!("{what}: read"))?;
                assert_eq!(frame, format!("pixels of {dir}").into_bytes(), "{what}");
                let write = std::fs::write(target.join(format!("probe-{i}")), b"new");
                if *expect == Expect::ReadWrite {
                    write.map_err(|e| anyhow::anyhow!("{what}: write: {e}"))?;
                    // Another mount's new file shows within the metadata cache's staleness bound.
                    let probe = home.join(dir).join(format!("probe-{i}"));
                    assert!(
                        eventually(Duration::from_secs(5), || std::fs::read(&probe)
                            .is_ok_and(|b| b == b"new")),
                        "{what}: the write is not seen by the owner's mount"
                    );
                } else {
                    assert_eq!(errno(write), libc::EROFS, "{what}: writes fail with EROFS");
                }
            }
            (want, got) => panic!("{what}: expected {want:?}, got {got:?}"),
        }
    }
    // A refusal does not say whether the workspace exists.
    for (what, message) in &refusals {
        assert!(!message.to_lowercase().contains("not found"), "{what}: {message}");
        assert!(!message.contains("tok-"), "{what}: the token leaked: {message}");
    }

    // A live mount loses what a deleted Share granted, within 60 s: the write share on /w
    // was the only grant, so lookups and opens are refused.
    let live = pods.path().join("case-5");
    std::fs::read(live.join("frame.exr"))?;
    assert!(meta.delete_share(&actor, ws.id, "write-w").await?);
    assert!(
        eventually(Duration::from_secs(60), || {
            errno(std::fs::File::open(live.join("frame.exr"))) == libc::EACCES
        }),
        "the mount still opens files after its Share was deleted"
    );
    assert_eq!(errno(std::fs::write(live.join("late"), b"x")), libc::EACCES);
    // The owner's mount is unaffected.
    assert_eq!(std::fs::read(home.join("w").join("frame.exr"))?, b"pixels of w");

    // The changes of a pod are recorded as that pod.
    let events = meta.events_after(Some(ws.id), 0, 1000).await?;
    assert!(
        events
            .iter()
            .any(|e| e.actor.starts_with("pod:vfx/comp-0,sa:comp uid:")),
        "events name the pod: {:?}",
        events.iter().map(|e| &e.actor).collect::<Vec<_>>()
    );

    // With the API server unreachable, a token not verified before cannot be: UNAVAILABLE.
    api.vouch("tok-late", VFX.vouched());
    api.stop();
    let late = Pod {
        token: "tok-late",
        ..VFX
    };
    let target = pods.path().join("late");
    let status = publish(&plugin, &target, &late.context("studio.shot010", "/a"))
        .await
        .expect_err("no verification, no mount");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(mounts_at(&target), 0);

    for target in published {
        plugin
            .node()
            .node_unpublish_volume(unpublish_req("inline-vol", &target))
            .await?;
    }
    Ok(())
}

/// Without a Kubernetes API and without `--authorization none`, nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_kubernetes_api_every_publish_is_refused() -> anyhow::Result<()> {
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let missing = state.path().join("no-kubeconfig");
    let plugin = Plugin::start(
        &storage,
        state.path(),
        &["--kubeconfig", &missing.display().to_string()],
    )
    .await?;
    let pods = tempfile::tempdir()?;
    let target = pods.path().join("t");
    let pairs = STUDIO.context("default", "/");
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let status = plugin
        .node()
        .node_publish_volume(publish_req("inline-vol", &target, &pairs))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("--authorization none"),
        "{}",
        status.message()
    );
    assert_eq!(mounts_at(&target), 0);
    Ok(())
}

/// An admin can refuse inline volumes altogether; claims still mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_volumes_can_be_refused() -> anyhow::Result<()> {
    common::require_fuse();
    let storage = common::storage_with_default_workspace().await?;
    let state = tempfile::tempdir()?;
    let plugin = Plugin::start(
        &storage,
        state.path(),
        &["--authorization", "none", "--refuse-inline-volumes", "true"],
    )
    .await?;
    let pods = tempfile::tempdir()?;
    let inline = STUDIO.context("default", "/");
    let inline: Vec<(&str, &str)> = inline.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let target = pods.path().join("inline");
    let status = plugin
        .node()
        .node_publish_volume(publish_req("inline-vol", &target, &inline))
        .await
        .expect_err("inline refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("inline volumes are refused"),
        "{}",
        status.message()
    );
    assert_eq!(mounts_at(&target), 0);
    // The same pod's claim (no ephemeral key) mounts.
    let claim: Vec<(&str, &str)> = inline
        .iter()
        .copied()
        .filter(|(k, _)| *k != "csi.storage.k8s.io/ephemeral")
        .collect();
    let target = pods.path().join("claim");
    plugin
        .node()
        .node_publish_volume(publish_req("claim-vol", &target, &claim))
        .await?;
    assert_eq!(mounts_at(&target), 1);
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("claim-vol", &target))
        .await?;
    Ok(())
}
