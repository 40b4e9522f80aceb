//! A `Preload` through every face (issue 19 item 2): the operator reconciles it over kube's
//! mock API server and the real store, and creates a Job per selected node; each Job is run
//! as kubelet would run it (its command, arguments and environment, its Secrets and host
//! volumes resolved, nothing else given) against the test S3 server and PostgreSQL; the
//! operator reports each node's run; a render pod's volume on a node waits for the preload
//! there and then reads the frames from the node cache without a GET; deleting the Preload
//! deletes its Jobs and forgets its runs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use common::{Mount, Plugin, S3Storage, publish_req};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::ObjectMeta;
use operator::crd::{Preload, PreloadPhase, PreloadSpec, PreloadStatus};
use operator::gc_job::GcJobSettings;
use operator::preload_job::PreloadJobSettings;
use operator::store::drive_adapter::MetaStoreAdapter;
use tonic::Code;

const NAMESPACE: &str = "render";
const NAME: &str = "sh010";
const UID: &str = "6a1c2f0e-0000-4000-8000-000000000010";
const WORKSPACE: &str = "render.show";
const FRAMES: std::ops::RangeInclusive<u32> = 1001..=1060;

fn frame_bytes(frame: u32) -> Vec<u8> {
    let len = 30_000 + (frame as usize % 5) * 17_000;
    (0..len)
        .map(|i| (i as u32 ^ frame).rotate_left(3) as u8)
        .collect()
}

fn frame_path(frame: u32) -> String {
    format!("sh010/comp/sh010_comp.{frame:04}.exr")
}

/// The cluster kube's mock service stands for: nodes with labels, the Jobs created, the
/// statuses written, the calls made.
#[derive(Default)]
struct Cluster {
    nodes: Vec<(String, BTreeMap<String, String>)>,
    jobs: Vec<Job>,
    statuses: Vec<PreloadStatus>,
    calls: Vec<String>,
}

fn query_param(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `labels` satisfy a `k=v,k2=v2` selector (what matchLabels becomes).
fn matches(selector: Option<&str>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| {
            term.split_once('=')
                .is_some_and(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
        })
}

impl Cluster {
    /// Answers one request of the operator.
    fn answer(&mut self, method: &str, uri: &http::Uri, body: &[u8], preload: &Preload) -> serde_json::Value {
        let path = uri.path();
        let selector = query_param(uri, "labelSelector");
        self.calls.push(format!(
            "{method} {path} {}",
            selector.clone().unwrap_or_default()
        ));
        let jobs = "/apis/batch/v1/namespaces/studiodrive-system/jobs";
        let object = format!("/apis/studiodrive.dev/v1alpha1/namespaces/{NAMESPACE}/preloads/{NAME}");
        match (method, path) {
            ("GET", "/api/v1/nodes") => {
                let items: Vec<_> = self
                    .nodes
                    .iter()
                    .filter(|(_, labels)| matches(selector.as_deref(), labels))
                    .map(|(name, labels)| {
                        serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                            "metadata": {"name": name, "labels": labels}})
                    })
                    .collect();
                serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {}, "items": items})
            }
            ("GET", p) if p == jobs => {
                let items: Vec<&Job> = self
                    .jobs
                    .iter()
                    .filter(|j| matches(selector.as_deref(), j.metadata.labels.as_ref().unwrap()))
                    .collect();
                serde_json::json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items})
            }
            ("POST", p) if p == jobs => {
                let job: Job = serde_json::from_slice(body).expect("a Job");
                self.jobs.push(job.clone());
                serde_json::to_value(job).unwrap()
            }
            ("DELETE", p) if p == jobs => {
                let (gone, kept): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
                    .into_iter()
                    .partition(|j| matches(selector.as_deref(), j.metadata.labels.as_ref().unwrap()));
                self.jobs = kept;
                serde_json::json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": gone})
            }
            ("PATCH", p) if p == format!("{object}/status") => {
                let patch: serde_json::Value = serde_json::from_slice(body).expect("JSON");
                let status: PreloadStatus =
                    serde_json::from_value(patch["status"].clone()).expect("a status");
                self.statuses.push(status.clone());
                let mut echo = preload.clone();
                echo.status = Some(status);
                serde_json::to_value(echo).unwrap()
            }
            // The finalizer's removal at cleanup.
            ("PATCH", p) if p == object => serde_json::to_value(preload).unwrap(),
            ("POST", p) if p.contains("/events") => serde_json::json!({}),
            _ => panic!("unexpected request {method} {uri}"),
        }
    }
}

/// One reconcile of `preload` by the operator: real store, mock API answered by `cluster`.
async fn reconcile(
    preload: &Preload,
    store: &MetaStoreAdapter,
    cluster: &Arc<Mutex<Cluster>>,
    setup: &common::OperatorSetup,
) -> anyhow::Result<()> {
    common::reconcile_over_mock_api::<operator::reconcile::Preloads, _>(
        preload.clone(),
        store.clone(),
        setup,
        |method, uri, body| cluster.lock().unwrap().answer(method, uri, body, preload),
    )
    .await
}

/// Runs `job` on `node` as kubelet would: its command and arguments with `$(VAR)` expanded
/// from its environment, its environment alone (Secret keys from `secrets`, the node name
/// from the downward API), its host-path volume at `host_cache`, its Secret volumes written
/// out. Returns (exit code, output).
fn run_like_kubelet(
    job: &Job,
    node: &str,
    host_cache: &Path,
    secrets: &HashMap<(String, String), String>,
) -> anyhow::Result<(i32, String)> {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.node_name.as_deref(),
        Some(node),
        "the Job is pinned to its node"
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["studiodrive-csi".to_string()][..])
    );
    let scratch = tempfile::tempdir()?;
    // Volumes: where each mount path of the container is on this "host".
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for vm in container.volume_mounts.as_deref().unwrap_or_default() {
        let volume = pod
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == vm.name)
            .context("a mounted volume is declared")?;
        let dir = if volume.host_path.is_some() {
            host_cache.to_path_buf()
        } else if let Some(secret) = &volume.secret {
            let dir = scratch.path().join(&vm.name);
            std::fs::create_dir_all(&dir)?;
            for item in secret.items.as_deref().unwrap_or_default() {
                let key = (secret.secret_name.clone().unwrap(), item.key.clone());
                let value = secrets.get(&key).with_context(|| format!("Secret {key:?}"))?;
                std::fs::write(dir.join(&item.path), value)?;
            }
            dir
        } else {
            let dir = scratch.path().join(&vm.name);
            std::fs::create_dir_all(&dir)?;
            dir
        };
        mounts.push((vm.mount_path.clone(), dir));
    }
    // A path inside the container (a value that is one, or starts with one) on the host.
    let on_host = |s: &str| {
        mounts
            .iter()
            .find_map(|(inside, outside)| {
                let rest = s.strip_prefix(inside.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", outside.display()))
            })
            .unwrap_or_else(|| s.to_string())
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in container.env.as_deref().unwrap_or_default() {
        // The Job's own values see the container's file system; Secret values are data.
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => on_host(v),
            (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                (Some(f), _) if f.field_path == "spec.nodeName" => node.to_string(),
                (_, Some(s)) => secrets
                    .get(&(s.name.clone(), s.key.clone()))
                    .with_context(|| format!("Secret {}/{}", s.name, s.key))?
                    .clone(),
                other => bail!("unsupported env source {other:?}"),
            },
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    let expand = |arg: &str| {
        let mut out = on_host(arg).replace("$$(", "\u{0}");
        for (k, v) in &env {
            out = out.replace(&format!("$({k})"), v);
        }
        out.replace('\u{0}', "$(")
    };
    let mut cmd = common::studiodrive();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(&env)
        .args(
            container
                .args
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|a| expand(a)),
        );
    let out = cmd.output().context("run the Job's command")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

fn status_of(cluster: &Arc<Mutex<Cluster>>) -> PreloadStatus {
    cluster
        .lock()
        .unwrap()
        .statuses
        .last()
        .cloned()
        .expect("a status was written")
}

fn condition(status: &PreloadStatus, type_: &str) -> (String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("the condition");
    (c.status.clone(), c.reason.clone())
}

// Catches: Jobs that cannot run as built (a missing environment variable or Secret, a
// manifest kubelet would mangle, a cache path the node's volumes do not use), a Job for a node
// the selector leaves out, a status that does not follow the runs (or counts wrong), a failed
// node that leaves the preload Ready, a pod that does not wait or reads through the object
// store, and a deletion that leaves the Jobs or the runs behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preload_resource_fills_the_selected_nodes_and_the_render_pod_reads_without_gets()
-> anyhow::Result<()> {
    drive_testkit::install_crypto_provider();
    let storage = S3Storage::create(5).await?;
    {
        let writer = Mount::new(&storage, &["--workspace", WORKSPACE])?;
        std::fs::create_dir_all(writer.path("sh010/comp"))?;
        for frame in FRAMES {
            std::fs::write(writer.path(&frame_path(frame)), frame_bytes(frame))?;
        }
    }
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.meta.url.clone())).await?;
    let store = MetaStoreAdapter(meta.clone());

    // The cluster: two render nodes and one the selector leaves out.
    let render = BTreeMap::from([("studiodrive.dev/render".to_string(), "true".to_string())]);
    let cluster = Arc::new(Mutex::new(Cluster {
        nodes: vec![
            ("node-1".into(), render.clone()),
            ("node-2".into(), render.clone()),
            ("office-1".into(), BTreeMap::new()),
        ],
        ..Cluster::default()
    }));
    let endpoint = storage.s3.endpoint();
    let gc = GcJobSettings {
        metadata_url_secret: Some(("studiodrive-metadata".into(), "url".into())),
        s3_credentials_secret: Some(("studiodrive-s3".into(), "credentials".into())),
        store_env: vec![
            (
                "STUDIODRIVE_STORE".into(),
                format!("s3://{}/{}", S3Storage::BUCKET, S3Storage::PREFIX),
            ),
            ("STUDIODRIVE_S3_ENDPOINT".into(), endpoint),
            ("STUDIODRIVE_S3_REGION".into(), drive_testkit::s3::REGION.into()),
        ],
        ..GcJobSettings::default()
    };
    let secrets = HashMap::from([
        (
            ("studiodrive-metadata".to_string(), "url".to_string()),
            storage.meta.url.clone(),
        ),
        (
            ("studiodrive-s3".to_string(), "credentials".to_string()),
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                drive_testkit::s3::ACCESS_KEY,
                drive_testkit::s3::SECRET_KEY
            ),
        ),
    ]);
    let hosts = tempfile::tempdir()?;
    let host_cache = |node: &str| hosts.path().join(node).join("cache");
    let settings = PreloadJobSettings {
        host_cache_dir: "/var/cache/studiodrive".into(),
        // As the plugin here: a test machine's disk may sit below the default floor.
        cache_min_free: 0.0,
        ..PreloadJobSettings::default()
    };
    let setup = common::OperatorSetup {
        gc,
        preload: settings,
        ..common::OperatorSetup::default()
    };
    let manifest = format!(
        "# the comp plates\nsh010/comp/sh010_comp.%04d.exr [{}-{}]\n",
        FRAMES.start(),
        FRAMES.end()
    );
    let preload = Preload {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            uid: Some(UID.into()),
            generation: Some(1),
            finalizers: Some(vec![operator::crd::FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        spec: PreloadSpec {
            workspace: "show".into(),
            manifest,
            node_selector: Some(LabelSelector {
                match_labels: Some(render.clone()),
                ..LabelSelector::default()
            }),
            deadline: Some(Time(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1))),
        },
        status: None,
    };

    // A render pod on node-1 whose volume waits for the preload: not started yet.
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let cache_arg = host_cache("node-1").display().to_string();
    let plugin = Plugin::start_on(
        &storage,
        state.path(),
        &["--cache-dir", &cache_arg, "--cache-min-free", "0"],
    )
    .await?;
    let ctx = [("workspace", WORKSPACE), ("preload", "render/sh010")];
    let target = pods.path().join("comp");
    let err = plugin
        .node()
        .node_publish_volume(publish_req("vol-comp", &target, &ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // First reconcile: a Job per selected node, none for the office node.
    reconcile(&preload, &store, &cluster, &setup).await?;
    let jobs = cluster.lock().unwrap().jobs.clone();
    let nodes: Vec<String> = jobs
        .iter()
        .map(|j| j.metadata.annotations.as_ref().unwrap()["studiodrive.dev/node"].clone())
        .collect();
    assert_eq!(nodes, ["node-1", "node-2"]);
    let status = status_of(&cluster);
    assert_eq!(condition(&status, "Ready"), ("False".into(), "Preloading".into()));
    assert_eq!((status.nodes_selected, status.nodes_done), (2, 0));
    assert!(
        status.nodes.iter().all(|n| n.phase == PreloadPhase::Pending),
        "{status:?}"
    );

    // A second reconcile before anything ran starts nothing more.
    reconcile(&preload, &store, &cluster, &setup).await?;
    assert_eq!(cluster.lock().unwrap().jobs.len(), 2);

    // Kubelet runs node-1's Job; node-2's pod never gets to run and its Job fails.
    let (code, out) = run_like_kubelet(&jobs[0], "node-1", &host_cache("node-1"), &secrets)?;
    assert_eq!(code, 0, "the Job failed: {out}");
    {
        let mut c = cluster.lock().unwrap();
        c.jobs[1].status = Some(JobStatus {
            failed: Some(3),
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("BackoffLimitExceeded".into()),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
    }
    reconcile(&preload, &store, &cluster, &setup).await?;
    let status = status_of(&cluster);
    let n1 = &status.nodes[0];
    let bytes: u64 = FRAMES.map(|f| frame_bytes(f).len() as u64).sum();
    let frames = FRAMES.count() as u64;
    assert_eq!(
        (
            n1.node.as_str(),
            n1.phase,
            n1.files,
            n1.done_files,
            n1.bytes,
            n1.done_bytes,
            n1.failed_files
        ),
        ("node-1", PreloadPhase::Done, frames, frames, bytes, bytes, 0)
    );
    assert_eq!(status.nodes[1].phase, PreloadPhase::Failed);
    assert!(
        status.nodes[1].errors[0].contains("Job failed"),
        "{:?}",
        status.nodes[1]
    );
    assert_eq!((status.nodes_done, status.nodes_failed), (1, 1));
    assert_eq!(
        condition(&status, "Degraded"),
        ("True".into(), "PreloadFailed".into())
    );
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "PreloadFailed".into())
    );
    // The failure is recorded for node-2's plugin: its pods stop waiting.
    let n2 = meta
        .preload_run("render/sh010", "node-2")
        .await?
        .context("node-2's run")?;
    assert_eq!(n2.state, drive::meta::PreloadState::Failed);
    assert!(n2.first_errors[0].contains("Job failed"), "{:?}", n2.first_errors);
    let gate = drive_csi::csi::node::preload_gate("render/sh010", "node-2", Some(&n2), false).unwrap_err();
    assert_eq!(gate.code(), Code::FailedPrecondition, "{gate:?}");

    // The pod on node-1 goes on and reads every frame from the node cache.
    plugin
        .node()
        .node_publish_volume(publish_req("vol-comp", &target, &ctx))
        .await?;
    let gets = storage.s3.requests().gets();
    for frame in FRAMES {
        let got = std::fs::read(target.join(frame_path(frame)))?;
        common::assert_bytes(&format!("frame {frame}"), &got, &frame_bytes(frame));
    }
    assert_eq!(
        storage.s3.requests().gets() - gets,
        0,
        "preloaded frames were fetched again"
    );

    plugin
        .node()
        .node_unpublish_volume(common::unpublish_req("vol-comp", &target))
        .await?;

    // Deleting the Preload deletes its Jobs and forgets its runs.
    let mut deleted = preload.clone();
    deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    reconcile(&deleted, &store, &cluster, &setup).await?;
    assert!(cluster.lock().unwrap().jobs.is_empty(), "Jobs left behind");
    assert!(
        meta.preload_runs("render/sh010").await?.is_empty(),
        "runs left behind"
    );
    let calls = cluster.lock().unwrap().calls.join("\n");
    assert!(
        calls.contains(&format!(
            "DELETE /apis/batch/v1/namespaces/studiodrive-system/jobs studiodrive.dev/preload-uid={UID}"
        )),
        "{calls}"
    );
    Ok(())
}
