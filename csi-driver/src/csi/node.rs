//! The Node service: publish a volume at a pod's target path (a supervised FUSE mount
//! process), unpublish it, report its usage.

use std::sync::Arc;

use drive::mount::{MountPath, MountTarget, Resolved};
use tonic::{Request, Response, Status};

use super::attributes::{VolumeAttributes, volume_cache_size};
use super::auth::{AccessRequest, Authorizer, PodIdentity};
use super::proto::node_server::Node;
use super::proto::node_service_capability::{Rpc, rpc::Type as RpcType};
use super::proto::{self as csi, volume_usage::Unit};
use super::publish::{MountSpec, PublishError, Publisher};
use super::{MetaSlot, meta_status, mount_status, observed, validate};
use crate::metrics::CsiMetrics;

/// Capacity reported for volumes without a quota: object storage has no fixed size (the same
/// figure `statfs` gives on the mount).
const UNBOUNDED_BYTES: u64 = 1 << 50;
const UNBOUNDED_INODES: u64 = 1 << 40;

pub struct NodeService {
    pub node_id: String,
    pub meta: Arc<MetaSlot>,
    pub publisher: Arc<Publisher>,
    pub authorizer: Arc<dyn Authorizer>,
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
        let meta = self.meta.get()?;

        // Where the volume lives: its attributes, else the provisioned volume of that id.
        let (workspace, base_path) = match &attrs.workspace {
            Some(ws) => (ws.clone(), "/".to_string()),
            None => {
                let vol = meta.get_volume(volume_id).await.map_err(|e| meta_status(&e))?;
                (vol.workspace_name, vol.path)
            }
        };
        let path = match &attrs.path {
            Some(p) => join_paths(&base_path, p),
            None => base_path,
        };
        // The folder (or the snapshot's view of it) must exist before a process mounts it.
        // The process takes the path below the snapshot's folder (the front door's rule).
        let folder = MountTarget {
            workspace: workspace.clone(),
            path: MountPath::Workspace(path),
            snapshot: attrs.snapshot.clone(),
        };
        let path = drive::mount::resolve(meta, &folder)
            .await
            .map_err(|e| mount_status(&e))?
            .path;
        let read_only =
            req.readonly || mount.reader_only || mount.ro_flag || attrs.read_only || attrs.snapshot.is_some();
        self.authorizer
            .authorize(&AccessRequest {
                volume_id,
                workspace: &workspace,
                path: &path,
                read_only,
                pod: &pod,
            })
            .await?;
        let spec = MountSpec {
            volume_id: volume_id.to_string(),
            workspace,
            path,
            snapshot: attrs.snapshot,
            read_only,
            cache_size: volume_cache_size(
                volume_id,
                attrs.cache_size,
                self.default_cache_size,
                self.max_cache_size,
            ),
        };
        self.publisher.publish(&target, spec).await?;
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
        let target = validate::target_path("volume_path", &req.volume_path)?;
        let spec = self
            .publisher
            .publication(&target)
            .filter(|s| s.volume_id == volume_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {volume_id} is not published at {}",
                    target.display()
                ))
            })?;
        let meta = self.meta.get()?;
        let folder = MountTarget {
            workspace: spec.workspace,
            path: MountPath::FromRoot(spec.path),
            snapshot: spec.snapshot,
        };
        let Resolved {
            workspace: ws,
            view,
            root,
            ..
        } = drive::mount::resolve(meta, &folder)
            .await
            .map_err(|e| mount_status(&e))?;
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
                message: if healthy {
                    "mounted".into()
                } else {
                    "the mount process is not running; the node plugin restarts it".into()
                },
            }),
        })
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
    use super::join_paths;

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
