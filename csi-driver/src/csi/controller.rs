//! The Controller service: provisioned volumes (a folder or a workspace each) and snapshots,
//! all idempotent by name as the CSI spec requires.

use std::collections::HashMap;
use std::sync::Arc;

use drive::meta::{Volume, VolumePlacement, VolumeRequest, storage_name, validate_csi_name};
use drive::model::{Actor, MergeMode, Name, Snapshot, Timestamp, View, validate_workspace_name};
use drive::{ErrorKind, PgMetaStore};
use tonic::{Request, Response, Status};

use super::attributes::{self, ProvisionParameters};
use super::proto::controller_server::Controller;
use super::proto::controller_service_capability::{Rpc, rpc::Type as RpcType};
use super::proto::{self as csi};
use super::{MetaSlot, meta_status, observed, validate};
use crate::metrics::CsiMetrics;

pub struct ControllerService {
    pub meta: Arc<MetaSlot>,
    pub metrics: Arc<CsiMetrics>,
}

fn actor() -> Actor {
    Actor::system("csi-controller")
}

/// A snapshot's CSI id: "<workspace>@<snapshot>" (both DNS names, so "@" cannot occur in them).
fn snapshot_id(workspace: &str, snapshot: &str) -> String {
    format!("{workspace}@{snapshot}")
}

fn parse_snapshot_id(id: &str) -> Option<(&str, &str)> {
    let (ws, name) = id.split_once('@')?;
    (validate_workspace_name(ws).is_ok() && validate_workspace_name(name).is_ok()).then_some((ws, name))
}

fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1_000_000_000),
        nanos: t.0.rem_euclid(1_000_000_000) as i32,
    }
}

fn csi_volume(v: &Volume) -> csi::Volume {
    csi::Volume {
        capacity_bytes: v.capacity_bytes as i64,
        volume_id: v.id.clone(),
        volume_context: HashMap::from([
            (attributes::WORKSPACE.to_string(), v.workspace_name.clone()),
            (attributes::PATH.to_string(), v.path.clone()),
        ]),
        content_source: None,
        accessible_topology: Vec::new(),
    }
}

/// The recorded parameter naming the snapshot a volume was restored from.
const RESTORED_FROM: &str = "restoredFrom";

/// The recorded parameter naming the volume a volume was cloned from.
const CLONED_FROM: &str = "clonedFrom";

/// Where a new volume's content comes from: a folder of its workspace as a view shows it.
struct Source {
    view: View,
    root: drive::model::NodeId,
}

/// Merges the source's tree into the volume's (new) folder, sharing blocks (no data is
/// copied). Files already there are kept, so a CreateVolume repeated after a crash finishes
/// the restore or clone without duplicating anything.
async fn fill_from(meta: &PgMetaStore, volume: &Volume, source: &Source) -> Result<(), Status> {
    let (parent, name) = match volume.path.rsplit_once('/') {
        Some((p, n)) if !n.is_empty() => (if p.is_empty() { "/" } else { p }, n),
        _ => {
            return Err(Status::internal(format!(
                "volume {} has no folder to restore into",
                volume.name
            )));
        }
    };
    let parent = meta
        .resolve(volume.workspace, parent)
        .await
        .map_err(|e| meta_status(&e))?;
    let name = Name::parse(name).map_err(|e| Status::internal(e.to_string()))?;
    meta.copy(
        &actor(),
        volume.workspace,
        source.view,
        source.root,
        parent.ino,
        &name,
        MergeMode::Skip,
    )
    .await
    .map_err(|e| meta_status(&e))?;
    Ok(())
}

/// Creates the workspace folder volumes go to when a StorageClass names none (a team
/// workspace), unless it exists.
async fn ensure_default_workspace(meta: &PgMetaStore) -> Result<(), Status> {
    let spec = drive::model::WorkspaceSpec::new(
        attributes::DEFAULT_VOLUME_WORKSPACE,
        drive::model::WorkspaceKind::Team,
    );
    match meta.create_workspace(&actor(), &spec).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Exists => Ok(()),
        Err(e) => Err(meta_status(&e)),
    }
}

/// Position tokens for paginated listings: the last id returned.
fn page<T>(mut items: Vec<(String, T)>, max_entries: i32, token: &str) -> Result<(Vec<T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let start = if token.is_empty() {
        0
    } else {
        let after = token
            .strip_prefix("after:")
            .ok_or_else(|| Status::aborted("starting_token is not one this plugin returned"))?;
        items.partition_point(|(id, _)| id.as_str() <= after)
    };
    let limit = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let rest = items.len() - start;
    let taken: Vec<(String, T)> = items.into_iter().skip(start).take(limit).collect();
    let next = if rest > taken.len() {
        taken
            .last()
            .map(|(id, _)| format!("after:{id}"))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((taken.into_iter().map(|(_, t)| t).collect(), next))
}

impl ControllerService {
    async fn create_volume(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        validate_csi_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        validate::capabilities(&req.volume_capabilities)?;
        let capacity = match &req.capacity_range {
            None => 0,
            Some(r) if r.required_bytes < 0 || r.limit_bytes < 0 => {
                return Err(Status::invalid_argument("capacity_range must not be negative"));
            }
            Some(r) if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes => {
                return Err(Status::out_of_range(
                    "capacity_range.required_bytes exceeds limit_bytes",
                ));
            }
            Some(r) => {
                (if r.required_bytes > 0 {
                    r.required_bytes
                } else {
                    r.limit_bytes
                }) as u64
            }
        };
        let mut params = ProvisionParameters::parse(&req.parameters)?;
        let meta = self.meta.get()?;
        let restore = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(csi::volume_content_source::Type::Snapshot(source)) => {
                let snapshot = self.restore_source(meta, &params, &source.snapshot_id).await?;
                // Recorded, so a repeated request must name the same snapshot.
                params
                    .recorded
                    .insert(RESTORED_FROM.into(), source.snapshot_id.clone());
                let from = Source {
                    view: View::At(snapshot.epoch),
                    root: snapshot.root,
                };
                Some((csi::volume_content_source::Type::Snapshot(source.clone()), from))
            }
            Some(csi::volume_content_source::Type::Volume(source)) => {
                let from = self.clone_source(meta, &params, &source.volume_id).await?;
                params
                    .recorded
                    .insert(CLONED_FROM.into(), source.volume_id.clone());
                Some((csi::volume_content_source::Type::Volume(source.clone()), from))
            }
        };
        if params.default_workspace {
            ensure_default_workspace(meta).await?;
        }
        let request = VolumeRequest {
            name: req.name.clone(),
            placement: params.placement,
            capacity_bytes: capacity,
            parameters: params.recorded,
        };
        let volume = meta
            .create_volume(&actor(), &request)
            .await
            .map_err(|e| meta_status(&e))?;
        let mut answer = csi_volume(&volume);
        if let Some((source, from)) = restore {
            fill_from(meta, &volume, &from).await?;
            answer.content_source = Some(csi::VolumeContentSource { r#type: Some(source) });
        }
        Ok(csi::CreateVolumeResponse { volume: Some(answer) })
    }

    /// The snapshot a new volume restores, which must live in the workspace its folder goes to
    /// (a restore shares blocks with the snapshot instead of copying data).
    async fn restore_source(
        &self,
        meta: &PgMetaStore,
        params: &ProvisionParameters,
        snapshot_id: &str,
    ) -> Result<Snapshot, Status> {
        let id = validate::id("volume_content_source.snapshot.snapshot_id", snapshot_id)?;
        let (ws_name, name) =
            parse_snapshot_id(id).ok_or_else(|| Status::not_found(format!("snapshot {id}")))?;
        match &params.placement {
            VolumePlacement::Folder { workspace, .. } if workspace == ws_name => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "a volume restored from {id} must be a folder volume in workspace {ws_name} \
                     (StorageClass parameters placement: folder, workspace: {ws_name})"
                )));
            }
        }
        let ws = meta.get_workspace(ws_name).await.map_err(|e| meta_status(&e))?;
        meta.get_snapshot(ws.id, name).await.map_err(|e| meta_status(&e))
    }

    /// The volume a new volume clones, which must live in the workspace its folder goes to (a
    /// clone shares blocks with its source instead of copying data).
    async fn clone_source(
        &self,
        meta: &PgMetaStore,
        params: &ProvisionParameters,
        volume_id: &str,
    ) -> Result<Source, Status> {
        let id = validate::id("volume_content_source.volume.volume_id", volume_id)?;
        let source = meta.get_volume(id).await.map_err(|e| meta_status(&e))?;
        match &params.placement {
            VolumePlacement::Folder { workspace, .. } if *workspace == source.workspace_name => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "a clone of volume {id} must be a folder volume in its workspace {} \
                     (StorageClass parameters placement: folder, workspace: {})",
                    source.workspace_name, source.workspace_name
                )));
            }
        }
        let root = meta
            .resolve(source.workspace, &source.path)
            .await
            .map_err(|e| meta_status(&e))?;
        Ok(Source {
            view: View::Live,
            root: root.ino,
        })
    }

    async fn expand_volume(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse, Status> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let range = req
            .capacity_range
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(Status::invalid_argument("capacity_range must not be negative"));
        }
        if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
            return Err(Status::out_of_range(
                "capacity_range.required_bytes exceeds limit_bytes",
            ));
        }
        let wanted = if range.required_bytes > 0 {
            range.required_bytes
        } else {
            range.limit_bytes
        } as u64;
        let meta = self.meta.get()?;
        let volume = meta
            .expand_volume(&actor(), id, wanted)
            .await
            .map_err(|e| meta_status(&e))?;
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: volume.capacity_bytes as i64,
            // Nothing on the node grows: a mount reads its quota from the store.
            node_expansion_required: false,
        })
    }

    async fn delete_volume(
        &self,
        req: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse, Status> {
        let id = validate::id("volume_id", &req.volume_id)?;
        let meta = self.meta.get()?;
        // A volume that does not exist (any more) is deleted: the call succeeds.
        meta.delete_volume(&actor(), id)
            .await
            .map_err(|e| meta_status(&e))?;
        Ok(csi::DeleteVolumeResponse {})
    }

    async fn validate_capabilities(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Status> {
        let id = validate::id("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        validate::context_size(&req.volume_context)?;
        let meta = self.meta.get()?;
        match meta.get_volume(id).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A static volume names its workspace in its attributes.
                let attrs = attributes::VolumeAttributes::parse(&req.volume_context)?;
                let ws = attrs
                    .workspace
                    .ok_or_else(|| Status::not_found(format!("volume {id}")))?;
                meta.get_workspace(&ws).await.map_err(|e| meta_status(&e))?;
            }
            Err(e) => return Err(meta_status(&e)),
        }
        Ok(match validate::capabilities(&req.volume_capabilities) {
            Ok(()) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            },
            Err(why) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why.message().to_string(),
            },
        })
    }

    async fn list_volumes(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse, Status> {
        let meta = self.meta.get()?;
        let volumes = meta.list_volumes().await.map_err(|e| meta_status(&e))?;
        let keyed = volumes.iter().map(|v| (v.id.clone(), csi_volume(v))).collect();
        let (page, next_token) = page(keyed, req.max_entries, &req.starting_token)?;
        Ok(csi::ListVolumesResponse {
            entries: page
                .into_iter()
                .map(|v| csi::list_volumes_response::Entry {
                    volume: Some(v),
                    status: None,
                })
                .collect(),
            next_token,
        })
    }

    async fn csi_snapshot(
        meta: &PgMetaStore,
        ws_name: &str,
        s: &Snapshot,
        source: &str,
    ) -> Result<csi::Snapshot, Status> {
        let usage = meta.snapshot_usage(s).await.map_err(|e| meta_status(&e))?;
        Ok(csi::Snapshot {
            size_bytes: usage.bytes as i64,
            snapshot_id: snapshot_id(ws_name, &s.name),
            source_volume_id: source.to_string(),
            creation_time: Some(timestamp(s.created_at)),
            ready_to_use: true,
            group_snapshot_id: String::new(),
        })
    }

    async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse, Status> {
        let source = validate::id("source_volume_id", &req.source_volume_id)?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        validate_csi_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        // Stored under a workspace-safe name; the snapshot id is built from it.
        let name = storage_name(&req.name);
        let meta = self.meta.get()?;
        let volume = meta.get_volume(source).await.map_err(|e| meta_status(&e))?;
        // Snapshot names are unique per plugin: the same name on another source is a conflict.
        let same_name = |all: Vec<Snapshot>| all.into_iter().filter(|s| s.name == name).collect::<Vec<_>>();
        let existing = same_name(meta.list_all_snapshots().await.map_err(|e| meta_status(&e))?);
        let snapshot = match existing.as_slice() {
            [s] if s.workspace == volume.workspace && s.path == volume.path => s.clone(),
            [] => match meta
                .create_snapshot(&actor(), volume.workspace, &name, &volume.path)
                .await
            {
                Ok(s) => s,
                // A concurrent identical request won: answer as it did.
                Err(e) if e.kind() == ErrorKind::Exists => {
                    let s = meta
                        .get_snapshot(volume.workspace, &name)
                        .await
                        .map_err(|e| meta_status(&e))?;
                    if s.path != volume.path {
                        return Err(Status::already_exists(format!(
                            "snapshot {} exists for another volume",
                            req.name
                        )));
                    }
                    s
                }
                Err(e) => return Err(meta_status(&e)),
            },
            _ => {
                return Err(Status::already_exists(format!(
                    "snapshot {} exists for another volume",
                    req.name
                )));
            }
        };
        let snapshot = Self::csi_snapshot(meta, &volume.workspace_name, &snapshot, source).await?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot),
        })
    }

    async fn delete_snapshot(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse, Status> {
        let id = validate::id("snapshot_id", &req.snapshot_id)?;
        let meta = self.meta.get()?;
        // An id this plugin never issued names no snapshot: deleting it succeeds.
        let Some((ws_name, name)) = parse_snapshot_id(id) else {
            return Ok(csi::DeleteSnapshotResponse {});
        };
        let ws = match meta.get_workspace(ws_name).await {
            Ok(ws) => ws,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(csi::DeleteSnapshotResponse {}),
            Err(e) => return Err(meta_status(&e)),
        };
        match meta.delete_snapshot(&actor(), ws.id, name).await {
            Ok(()) => Ok(csi::DeleteSnapshotResponse {}),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(csi::DeleteSnapshotResponse {}),
            Err(e) => Err(meta_status(&e)),
        }
    }

    async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Status> {
        let meta = self.meta.get()?;
        let workspaces: HashMap<_, _> = meta
            .list_workspaces()
            .await
            .map_err(|e| meta_status(&e))?
            .into_iter()
            .map(|w| (w.id, w.name))
            .collect();
        let volumes = meta.list_volumes().await.map_err(|e| meta_status(&e))?;
        let source_of = |s: &Snapshot| {
            volumes
                .iter()
                .find(|v| v.workspace == s.workspace && v.path == s.path)
                .map(|v| v.id.clone())
                .unwrap_or_default()
        };
        let mut chosen = Vec::new();
        for s in meta.list_all_snapshots().await.map_err(|e| meta_status(&e))? {
            let Some(ws_name) = workspaces.get(&s.workspace) else {
                continue;
            };
            let id = snapshot_id(ws_name, &s.name);
            let source = source_of(&s);
            if !req.snapshot_id.is_empty() && req.snapshot_id != id {
                continue;
            }
            if !req.source_volume_id.is_empty() && req.source_volume_id != source {
                continue;
            }
            chosen.push((id, (ws_name.clone(), s, source)));
        }
        let (page, next_token) = page(chosen, req.max_entries, &req.starting_token)?;
        let mut entries = Vec::with_capacity(page.len());
        for (ws_name, s, source) in page {
            let snapshot = Self::csi_snapshot(meta, &ws_name, &s, &source).await?;
            entries.push(csi::list_snapshots_response::Entry {
                snapshot: Some(snapshot),
            });
        }
        Ok(csi::ListSnapshotsResponse { entries, next_token })
    }
}

fn capability(t: RpcType) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(Rpc {
            r#type: t as i32,
        })),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        observed(
            &self.metrics,
            "CreateVolume",
            self.create_volume(req.into_inner()),
        )
        .await
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        observed(
            &self.metrics,
            "DeleteVolume",
            self.delete_volume(req.into_inner()),
        )
        .await
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "Studio Drive volumes need no controller attach",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "Studio Drive volumes need no controller attach",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        observed(
            &self.metrics,
            "ValidateVolumeCapabilities",
            self.validate_capabilities(req.into_inner()),
        )
        .await
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        observed(&self.metrics, "ListVolumes", self.list_volumes(req.into_inner())).await
    }

    async fn get_capacity(
        &self,
        _req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Err(Status::unimplemented("object storage has no fixed capacity"))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let caps = [
            RpcType::CreateDeleteVolume,
            RpcType::CreateDeleteSnapshot,
            RpcType::ListSnapshots,
            RpcType::ListVolumes,
            RpcType::CloneVolume,
            RpcType::ExpandVolume,
        ];
        observed(&self.metrics, "ControllerGetCapabilities", async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: caps.into_iter().map(capability).collect(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        observed(
            &self.metrics,
            "CreateSnapshot",
            self.create_snapshot(req.into_inner()),
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        observed(
            &self.metrics,
            "DeleteSnapshot",
            self.delete_snapshot(req.into_inner()),
        )
        .await
    }

    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        observed(
            &self.metrics,
            "ListSnapshots",
            self.list_snapshots(req.into_inner()),
        )
        .await
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        observed(
            &self.metrics,
            "ControllerExpandVolume",
            self.expand_volume(req.into_inner()),
        )
        .await
    }

    async fn controller_get_volume(
        &self,
        _req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("GET_VOLUME is not offered"))
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("MODIFY_VOLUME is not offered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_by_token() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("s{i}"), i)).collect();
        let (first, token) = page(items.clone(), 2, "").unwrap();
        assert_eq!(first, vec![0, 1]);
        assert_eq!(token, "after:s1");
        let (second, token) = page(items.clone(), 2, &token).unwrap();
        assert_eq!(second, vec![2, 3]);
        let (last, token) = page(items.clone(), 2, &token).unwrap();
        assert_eq!((last, token.as_str()), (vec![4], ""));
        assert_eq!(page(items.clone(), 0, "").unwrap().0.len(), 5);
        assert_eq!(
            page(items.clone(), 1, "garbage").unwrap_err().code(),
            tonic::Code::Aborted
        );
        assert_eq!(
            page(items, -1, "").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn snapshot_ids_round_trip() {
        assert_eq!(
            parse_snapshot_id(&snapshot_id("shots", "snap-1")),
            Some(("shots", "snap-1"))
        );
        assert_eq!(parse_snapshot_id("no-at-sign"), None);
        assert_eq!(parse_snapshot_id("a@b@c"), None);
    }
}
