//! The Node service: publish a volume at a pod's target path (a supervised FUSE mount
//! process), unpublish it, report its usage.

use std::sync::Arc;

use drive::data::Kek;
use drive::meta::{PreloadRun, PreloadState};
use drive::model::Permission;
use drive::mount::{MountPath, MountTarget, Resolved};
use drive::ports::{Clock as _, SystemClock};
use drive::rules::access::{AccessCheck, MountAccess, holds_any, may_learn_absence};
use tonic::{Request, Response, Status};

use super::attributes::{VolumeAttributes, volume_cache_size};
use super::auth::{Authenticator, PodIdentity};
use super::proto::node_server::Node;
use super::proto::node_service_capability::{Rpc, rpc::Type as RpcType};
use super::proto::{self as csi, volume_usage::Unit};
use super::publish::{MountSpec, PublishError, Publisher};
use super::secrets::PublishSecrets;
use super::{MetaSlot, meta_status, mount_status, observed, validate};
use crate::metrics::CsiMetrics;

/// Capacity reported for volumes without a quota: object storage has no fixed size (the same
/// figure `statfs` gives on the mount).
const UNBOUNDED_BYTES: u64 = 1 << 50;
const UNBOUNDED_INODES: u64 = 1 << 40;
/// The CreateVolume parameter csi-provisioner's `--extra-create-metadata` fills with the
/// claim's namespace; recorded with the volume, it lets that namespace's pods mount it.
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";

pub struct NodeService {
    pub node_id: String,
    pub meta: Arc<MetaSlot>,
    pub publisher: Arc<Publisher>,
    pub authenticator: Arc<dyn Authenticator>,
    /// Refuse inline (ephemeral) volumes.
    pub refuse_inline: bool,
    pub metrics: Arc<CsiMetrics>,
    /// Cache bytes per volume unless its attributes say otherwise.
    pub default_cache_size: u64,
    /// The most cache bytes a volume gets, whatever its attributes ask for.
    pub max_cache_size: Option<u64>,
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Status {
        match e {
            PublishError::Conflict { .. } => Status::already_exists(e.to_string()),
            PublishError::OtherVolume { .. } => Status::not_found(e.to_string()),
            PublishError::MountFailed { .. } | PublishError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

impl NodeService {
    async fn publish(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> Result<csi::NodePublishVolumeResponse, Status> {
        let volume_id = validate::id("volume_id", &req.volume_id)?;
        let target = validate::target_path("target_path", &req.target_path)?;
        let mount = validate::capability(req.volume_capability.as_ref())?;
        validate::context_size(&req.volume_context)?;
        let attrs = VolumeAttributes::parse(&req.volume_context)?;
        let pod = PodIdentity::from_context(&req.volume_context)?;
        let secrets =
            PublishSecrets::parse(&req.secrets).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if pod.ephemeral && self.refuse_inline {
            return Err(Status::permission_denied(format!(
                "{}: inline volumes are refused on this node; use a PersistentVolumeClaim",
                pod.describe()
            )));
        }
        // Who the pod is, verified, before anything is looked up for it.
        let principal = self.authenticator.authenticate(&pod).await?;
        let meta = self.meta.get()?;

        // Where the volume lives: its attributes, else the provisioned volume of that id.
        let (workspace, base_path, provisioned) = match &attrs.workspace {
            Some(ws) => (ws.clone(), "/".to_string(), None),
            None => {
                let vol = meta.get_volume(volume_id).await.map_err(|e| meta_status(&e))?;
                let provisioned = vol
                    .parameters
                    .get(PVC_NAMESPACE)
                    .map(|ns| (ns.clone(), vol.path.clone()));
                (vol.workspace_name, vol.path, provisioned)
            }
        };
        let path = match &attrs.path {
            Some(p) => join_paths(&base_path, p),
            None => base_path,
        };
        let requested_read_only =
            req.readonly || mount.reader_only || mount.ro_flag || attrs.read_only || attrs.snapshot.is_some();
        // The decision for a live folder is taken on the path asked for, before anything
        // says whether the workspace or folder exists: a refusal reads the same either way.
        let now = SystemClock.now();
        let (mut check, facts) = match principal {
            None => (None, None),
            Some(principal) => {
                let check = AccessCheck {
                    principal,
                    path: path.clone(),
                    provisioned,
                    read_only: requested_read_only,
                };
                let facts = meta.access_facts(&workspace).await.map_err(|e| meta_status(&e))?;
                let allowed = if attrs.snapshot.is_some() {
                    holds_any(&check.principal, facts.as_ref(), now)
                } else {
                    check.decide(facts.clone(), now) != MountAccess::Denied
                };
                if !allowed {
                    if facts.is_none() && may_learn_absence(&check.principal, &workspace) {
                        return Err(Status::not_found(format!("workspace {workspace} does not exist")));
                    }
                    return Err(refusal(&pod, &workspace, &path));
                }
                (Some(check), facts)
            }
        };
        // The folder (or the snapshot's view of it) must exist before a process mounts it.
        // The process takes the path below the snapshot's folder (the front door's rule).
        let folder = MountTarget {
            workspace: workspace.clone(),
            path: MountPath::Workspace(path.clone()),
            snapshot: attrs.snapshot.clone(),
        };
        let resolved = drive::mount::resolve(meta, &folder)
            .await
            .map_err(|e| mount_status(&e))?;
        let access = match &mut check {
            None => MountAccess::of(Some(Permission::Admin), requested_read_only),
            Some(check) => {
                // A snapshot shows a folder known only now: decide on its live path.
                if let Some(snapshot) = &resolved.snapshot {
                    check.path = join_paths(&snapshot.path, &resolved.path);
                }
                check.decide(facts, now)
            }
        };
        if access == MountAccess::Denied {
            return Err(refusal(&pod, &workspace, &path));
        }
        let read_only = access == MountAccess::ReadOnly;
        // An encrypted workspace needs its key: refused here, with the front door's code for a
        // missing or wrong key, rather than as a mount process that fails to start. A key
        // from the node's environment (one key for the node) still counts.
        let node_kek = Kek::from_env().ok().flatten();
        drive::mount::unlock(&resolved.workspace, secrets.kek().or(node_kek.as_ref()))
            .map_err(|e| mount_status(&e))?;
        // A pod that needs its data preloaded waits (kubelet retries) until this node's run of
        // the preload is done. Checked after authorization: what a preload did is not told to
        // a pod that may not mount the volume.
        if let Some(preload) = &attrs.preload {
            let run = meta
                .preload_run(preload, &self.node_id)
                .await
                .map_err(|e| meta_status(&e))?;
            preload_gate(preload, &self.node_id, run.as_ref(), attrs.preload_optional)?;
        }

        let spec = MountSpec {
            volume_id: volume_id.to_string(),
            workspace,
            path: resolved.path,
            snapshot: attrs.snapshot,
            read_only,
            cache_size: volume_cache_size(
                volume_id,
                attrs.cache_size,
                self.default_cache_size,
                self.max_cache_size,
            ),
            access: check,
            actor: pod.actor(),
            workspace_id: Some(resolved.workspace.id),
        };
        self.publisher.publish(&target, spec, &secrets).await?;
        self.metrics.mounts.set(self.publisher.count() as i64);
        Ok(csi::NodePublishVolumeResponse {})
    }

    async fn unpublish(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> Result<csi::NodeUnpublishVolumeResponse, Status> {
        let volume_id = validate::id("volume_id", &req.volume_id)?;
        let target = validate::target_path("target_path", &req.target_path)?;
        self.publisher.unpublish(&target, volume_id).await?;
        self.metrics.mounts.set(self.publisher.count() as i64);
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse, Status> {
        let volume_id = validate::id("volume_id", &req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        // A path this plugin could not have published at (relative, not normal) holds no
        // volume of it: NOT_FOUND, as for any other path without the volume.
        let not_here = || {
            Status::not_found(format!(
                "volume {volume_id} is not published at {}",
                req.volume_path
            ))
        };
        let target = validate::target_path("volume_path", &req.volume_path).map_err(|_| not_here())?;
        let spec = self
            .publisher
            .publication(&target)
            .filter(|s| s.volume_id == volume_id)
            .ok_or_else(not_here)?;
        let meta = self.meta.get()?;
        let folder = MountTarget {
            workspace: spec.workspace,
            path: MountPath::FromRoot(spec.path),
            snapshot: spec.snapshot,
        };
        let resolved = match drive::mount::resolve(meta, &folder).await {
            Ok(resolved) => resolved,
            // Published, but what it shows is gone (the workspace was deleted): no usage to
            // report, and the condition says why the mount cannot come back.
            Err(e) if e.kind() == drive::ErrorKind::NotFound => {
                return Ok(csi::NodeGetVolumeStatsResponse {
                    usage: Vec::new(),
                    volume_condition: Some(csi::VolumeCondition {
                        abnormal: true,
                        message: self.publisher.failure(&target).unwrap_or_else(|| e.to_string()),
                    }),
                });
            }
            Err(e) => return Err(mount_status(&e)),
        };
        let Resolved {
            workspace: ws,
            view,
            root,
            ..
        } = resolved;
        let (used_bytes, inodes, quota) = if view == drive::model::View::Live && root.ino == ws.root {
            // The whole workspace: its usage counters, no walk of the tree.
            let u = meta.workspace_usage(ws.id).await.map_err(|e| meta_status(&e))?;
            (u.bytes, u.nodes, u.quota_bytes)
        } else {
            let u = meta.usage(view, root.ino).await.map_err(|e| meta_status(&e))?;
            (u.bytes, u.files + u.directories, ws.quota_bytes)
        };
        let total_bytes = quota.unwrap_or(UNBOUNDED_BYTES).max(used_bytes);
        let healthy = self.publisher.healthy(&target);
        Ok(csi::NodeGetVolumeStatsResponse {
            usage: vec![
                csi::VolumeUsage {
                    available: (total_bytes - used_bytes) as i64,
                    total: total_bytes as i64,
                    used: used_bytes as i64,
                    unit: Unit::Bytes as i32,
                },
                csi::VolumeUsage {
                    available: (UNBOUNDED_INODES - inodes) as i64,
                    total: UNBOUNDED_INODES as i64,
                    used: inodes as i64,
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(csi::VolumeCondition {
                abnormal: !healthy,
                message: match (healthy, self.publisher.failure(&target)) {
                    (true, _) => "mounted".into(),
                    (false, None) => "the mount process is not running; the node plugin restarts it".into(),
                    (false, Some(failure)) => format!("the mount process is not running: {failure}"),
                },
            }),
        })
    }
}

/// The one refusal of a publish, whether or not the workspace or folder exists.
fn refusal(pod: &PodIdentity, workspace: &str, path: &str) -> Status {
    Status::permission_denied(format!(
        "{} may not mount {path} of workspace {workspace}: no namespace, owner or Share grants it",
        pod.describe()
    ))
}

/// Whether a publish waiting for preload `name` on `node` may go on, given the node's latest
/// run of it: yes when it is done (or failed, if `optional`); UNAVAILABLE while it has not
/// started or is running (kubelet retries NodePublishVolume with backoff, the pod stays in
/// ContainerCreating and its events show the message); FAILED_PRECONDITION naming the first
/// error when it failed. Pure.
pub fn preload_gate(name: &str, node: &str, run: Option<&PreloadRun>, optional: bool) -> Result<(), Status> {
    let Some(run) = run else {
        return Err(Status::unavailable(format!(
            "waiting for preload {name} on node {node}: not started"
        )));
    };
    match run.state {
        PreloadState::Done => Ok(()),
        PreloadState::Running => Err(Status::unavailable(format!(
            "waiting for preload {name} on node {node}: {} of {} files",
            run.done_files, run.files
        ))),
        PreloadState::Failed if optional => {
            tracing::warn!(
                preload = name,
                node,
                failed = run.failed_files,
                "preload failed; publishing anyway (preloadOptional)"
            );
            Ok(())
        }
        PreloadState::Failed => Err(Status::failed_precondition(format!(
            "preload {name} on node {node} failed: {} files missing or not fetched ({} of {} done); first: {}",
            run.failed_files,
            run.done_files,
            run.files,
            run.first_errors
                .first()
                .map_or("(no error recorded)", String::as_str)
        ))),
    }
}

/// `base` + `rel`, both absolute folder paths ("/volumes/pvc-1" + "/renders").
fn join_paths(base: &str, rel: &str) -> String {
    let joined = format!("{}/{}", base.trim_end_matches('/'), rel.trim_start_matches('/'));
    let trimmed = joined.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

fn capability(t: RpcType) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("Studio Drive volumes need no staging"))
    }

    async fn node_unstage_volume(
        &self,
        _req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("Studio Drive volumes need no staging"))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        observed(&self.metrics, "NodePublishVolume", self.publish(req.into_inner())).await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        observed(
            &self.metrics,
            "NodeUnpublishVolume",
            self.unpublish(req.into_inner()),
        )
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        observed(&self.metrics, "NodeGetVolumeStats", self.stats(req.into_inner())).await
    }

    async fn node_expand_volume(
        &self,
        _req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "Studio Drive volumes have no file system to grow",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let caps = [
            RpcType::GetVolumeStats,
            RpcType::VolumeCondition,
            RpcType::SingleNodeMultiWriter,
        ];
        observed(&self.metrics, "NodeGetCapabilities", async {
            Ok(csi::NodeGetCapabilitiesResponse {
                capabilities: caps.into_iter().map(capability).collect(),
            })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _req: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        observed(&self.metrics, "NodeGetInfo", async {
            Ok(csi::NodeGetInfoResponse {
                node_id: self.node_id.clone(),
                max_volumes_per_node: 0,
                accessible_topology: None,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{join_paths, preload_gate};
    use drive::meta::{PreloadRun, PreloadState};
    use tonic::Code;

    #[test]
    fn publish_waits_for_a_running_preload_and_fails_on_a_failed_one() {
        let code = |run: Option<&PreloadRun>, optional| {
            preload_gate("shot010", "node-1", run, optional).map_err(|s| (s.code(), s.message().to_string()))
        };
        let (c, m) = code(None, true).unwrap_err();
        assert_eq!(c, Code::Unavailable);
        assert!(m.contains("waiting for preload shot010 on node node-1"), "{m}");
        let mut run = PreloadRun::start("shot010", "node-1", "show");
        run.files = 200;
        run.done_files = 120;
        let (c, m) = code(Some(&run), false).unwrap_err();
        assert_eq!(c, Code::Unavailable);
        assert!(m.ends_with("120 of 200 files"), "{m}");
        run.state = PreloadState::Failed;
        run.failed_files = 1;
        run.first_errors = vec!["missing: line 1: f.0042.exr".into()];
        let (c, m) = code(Some(&run), false).unwrap_err();
        assert_eq!(c, Code::FailedPrecondition);
        assert!(m.contains("f.0042.exr"), "{m}");
        assert_eq!(code(Some(&run), true), Ok(()));
        run.state = PreloadState::Done;
        assert_eq!(code(Some(&run), false), Ok(()));
    }

    #[test]
    fn paths_join() {
        assert_eq!(join_paths("/", "/"), "/");
        assert_eq!(join_paths("/", "/shots"), "/shots");
        assert_eq!(
            join_paths("/volumes/pvc-1", "/renders/"),
            "/volumes/pvc-1/renders"
        );
    }
}
