//! Per-workspace keys and object stores on the CSI publish path, and mounts that never create
//! workspaces: a real `studiodrive-csi serve`, real FUSE mounts, the shared test PostgreSQL.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use common::{Plugin, S3Storage, eventually, publish_req, unpublish_req};
use drive::data::Kek;
use drive::model::{Actor, WorkspaceKind, WorkspaceSpec};
use drive_csi::csi::proto as csi;

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

/// Answers the operator's Kubernetes API calls from kube's mock service: the key Secret, the
/// status patch, events. Returns the calls made once the reconcile returns.
async fn reconcile_with_mock_api(
    ws: operator::crd::Workspace,
    store: operator::store::drive_adapter::MetaStoreAdapter,
    secret: serde_json::Value,
) -> anyhow::Result<Vec<String>> {
    let echo = serde_json::to_value(&ws)?;
    let mut seen = Vec::new();
    let setup = common::OperatorSetup {
        clock: || jiff::Timestamp::from_second(1_000).expect("a time"),
        ..common::OperatorSetup::default()
    };
    common::reconcile_over_mock_api::<operator::reconcile::Workspaces, _>(
        ws,
        store,
        &setup,
        |method, uri, _| {
            let path = uri.path();
            let reply = match (method, path) {
                ("GET", p) if p.ends_with("/secrets/shot010-kek") => secret.clone(),
                ("PATCH", p) if p.ends_with("/status") => echo.clone(),
                ("POST", p) if p.contains("/events") => serde_json::json!({}),
                _ => panic!("unexpected request {method} {path}"),
            };
            seen.push(format!("{method} {path}"));
            reply
        },
    )
    .await?;
    Ok(seen)
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn secrets(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// Catches: a KEK that only a flag or the environment can give (an operator-created encrypted
// workspace could not be mounted through CSI), a workspace's objectStore ignored (its blocks
// in the node's store), plaintext reaching an object, secrets in argv, the environment or a
// file others can read, a secrets file left after unpublish, a wrong or missing key reported
// as INTERNAL or naming the key, and unknown secret keys accepted or echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_created_encrypted_workspace_mounts_with_its_publish_secrets() -> anyhow::Result<()> {
    drive_testkit::install_crypto_provider();
    let storage = S3Storage::create(3).await?;
    storage.s3.create_bucket("tenant-a")?;
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.meta.url.clone())).await?;

    // The Workspace as the operator reconciles it, its KEK in its own Secret.
    let kek = Kek::generate();
    let mut spec = operator::crd::WorkspaceSpec {
        kind: operator::crd::WorkspaceKind::Team,
        owners: vec!["User:alice".into()],
        block_size_bytes: 1 << 20,
        encryption: Some(operator::crd::Encryption {
            enabled: true,
            key_secret_ref: Some(operator::crd::SecretKeyRef {
                name: "shot010-kek".into(),
                key: "kek".into(),
            }),
        }),
        object_store: None,
        quota_bytes: None,
        deletion_policy: operator::crd::DeletionPolicy::Retain,
    };
    spec.object_store = Some(operator::crd::ObjectStoreRef {
        bucket: "tenant-a".into(),
        prefix: "studio/shot010".into(),
        endpoint: Some(storage.s3.endpoint()),
        region: Some(drive_testkit::s3::REGION.into()),
        credentials_secret_ref: Some(operator::crd::SecretRef {
            name: "tenant-a-s3".into(),
        }),
    });
    let ws = operator::crd::Workspace {
        metadata: kube::api::ObjectMeta {
            name: Some("shot010".into()),
            namespace: Some("studio".into()),
            generation: Some(1),
            uid: Some("uid-shot010".into()),
            finalizers: Some(vec!["studiodrive.dev/cleanup".into()]),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("shot010-kek".into()),
            namespace: Some("studio".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kek".to_string(),
            k8s_openapi::ByteString(kek.to_hex().into_bytes()),
        )])),
        ..Default::default()
    };
    let adapter = operator::store::drive_adapter::MetaStoreAdapter(meta.clone());
    let calls = reconcile_with_mock_api(ws, adapter, serde_json::to_value(secret)?).await?;
    assert!(
        calls
            .iter()
            .any(|c| c == "GET /api/v1/namespaces/studio/secrets/shot010-kek"),
        "the operator read the key Secret: {calls:?}"
    );
    let stored = meta.get_workspace("studio.shot010").await?;
    assert!(stored.encrypted, "created encrypted");
    let location = stored
        .object_store
        .clone()
        .context("the object store is recorded")?;
    assert_eq!(
        (location.bucket.as_str(), location.prefix.as_str()),
        ("tenant-a", "studio/shot010")
    );

    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let plugin = Plugin::start_on(&storage, state.path(), &[]).await?;
    let ctx = [("workspace", "studio.shot010")];
    let good = secrets(&[
        ("encryptionKey", &kek.to_hex()),
        ("accessKeyId", drive_testkit::s3::ACCESS_KEY),
        ("secretAccessKey", drive_testkit::s3::SECRET_KEY),
    ]);
    let publish = |target: &Path, given: &HashMap<String, String>| {
        let mut req = publish_req("vol-k", target, &ctx);
        req.secrets = given.clone();
        let mut node = plugin.node();
        async move { node.node_publish_volume(req).await }
    };

    let a = pods.path().join("a");
    publish(&a, &good).await?;
    // The secrets reach the mount through a 0600 file in a 0700 directory, named in argv
    // by path only; neither argv nor the environment holds a value.
    let secrets_dir = state.path().join("csi-secrets");
    assert_eq!(
        std::fs::metadata(&secrets_dir)?.permissions().mode() & 0o777,
        0o700
    );
    let files = files_under(&secrets_dir);
    let [file] = files.as_slice() else {
        anyhow::bail!("one secrets file: {files:?}")
    };
    assert_eq!(std::fs::metadata(file)?.permissions().mode() & 0o777, 0o600);
    let pid = recorded_mount_pid(state.path())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    assert!(
        contains(&cmdline, b"--secrets-file"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    for leak in [kek.to_hex().as_bytes(), drive_testkit::s3::SECRET_KEY.as_bytes()] {
        assert!(!contains(&cmdline, leak), "a secret in argv");
        assert!(!contains(&environ, leak), "a secret in the environment");
    }

    // Bytes written through the mount read back, through a new mount process.
    let pattern = b"PLAINTEXT-FRAME-PATTERN-7a41c0 ";
    let data: Vec<u8> = pattern
        .iter()
        .copied()
        .cycle()
        .take(3 * (1 << 20) + 12_345)
        .collect();
    std::fs::write(a.join("frame.0001.exr"), &data)?;
    std::fs::write(a.join("notes.txt"), pattern)?;
    common::assert_bytes(
        "read back on the same mount",
        &std::fs::read(a.join("frame.0001.exr"))?,
        &data,
    );
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("vol-k", &a))
        .await?;
    assert!(
        files_under(&secrets_dir).is_empty(),
        "the secrets file is removed at unpublish"
    );
    let b = pods.path().join("b");
    publish(&b, &good).await?;
    common::assert_bytes(
        "read back through a new mount",
        &std::fs::read(b.join("frame.0001.exr"))?,
        &data,
    );
    assert_eq!(std::fs::read(b.join("notes.txt"))?, pattern);

    // Blocks went to the workspace's bucket and prefix, none to the node's store, and no
    // stored object (nor the node's disk cache) holds the plaintext.
    let tenant = storage.s3.objects("tenant-a", "studio/shot010")?;
    assert!(
        tenant.len() >= 4,
        "the file's 4 blocks and the note in tenant-a: {tenant:?}"
    );
    assert_eq!(
        storage.objects()?,
        Vec::<PathBuf>::new(),
        "nothing in the node's store"
    );
    let mut scanned = 0;
    for path in files_under(storage.s3.root())
        .into_iter()
        .chain(files_under(&state.path().join("csi-cache")))
    {
        let bytes = std::fs::read(&path)?;
        assert!(
            !contains(&bytes, &pattern[..24]),
            "plaintext in {}",
            path.display()
        );
        scanned += 1;
    }
    assert!(scanned >= tenant.len(), "scanned {scanned} files");

    // A wrong key, or none, fails the publish: PERMISSION_DENIED naming the workspace, not the
    // key; nothing is mounted.
    let wrong = Kek::generate();
    let c = pods.path().join("c");
    for given in [secrets(&[("encryptionKey", &wrong.to_hex())]), HashMap::new()] {
        let status = publish(&c, &given).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("studio.shot010"), "{status:?}");
        assert!(status.message().contains("key-encryption key"), "{status:?}");
        assert!(!status.message().contains(&wrong.to_hex()) && !status.message().contains(&kek.to_hex()));
        assert_eq!(drive_csi::mount_table::fuse_mounts_at(&c), 0);
    }
    // Unknown keys are refused by name, their values never echoed.
    let mut extra = good.clone();
    extra.insert("password".into(), "hunter2-secret".into());
    let status = publish(&c, &extra).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("\"password\""), "{status:?}");
    assert!(!status.message().contains("hunter2"), "{status:?}");
    let log = plugin.log_text();
    assert!(
        !log.contains(&kek.to_hex()) && !log.contains("hunter2"),
        "a secret in the plugin's log"
    );

    plugin
        .node()
        .node_unpublish_volume(unpublish_req("vol-k", &b))
        .await?;
    assert!(files_under(&secrets_dir).is_empty());
    Ok(())
}
