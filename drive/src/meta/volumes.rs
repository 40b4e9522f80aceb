//! Provisioned volumes: a named folder in a workspace, or a whole workspace, created on
//! request (the CSI controller's CreateVolume). Every step is idempotent, so a request
//! repeated after a crash or a timeout finishes the same volume instead of making another.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio_postgres::Row;

use crate::error::{ErrorKind, MetaError};
use crate::meta::PgMetaStore;
use crate::meta::rows::{execute, from_system_time, query, query_opt};
use crate::model::{
    Actor, NewNode, NodeKind, Timestamp, View, WorkspaceId, WorkspaceKind, WorkspaceSpec,
    validate_workspace_name,
};

/// Where a volume lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlacement {
    /// A folder `<base_path>/<volume name>` in an existing workspace.
    Folder { workspace: String, base_path: String },
    /// A workspace of its own, named like the volume.
    Workspace { kind: WorkspaceKind, block_size: u32 },
}

/// A request to provision a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    pub name: String,
    pub placement: VolumePlacement,
    pub capacity_bytes: u64,
    /// The caller's parameters, compared on repeated requests.
    pub parameters: BTreeMap<String, String>,
}

/// A provisioned volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// What the CO calls it by after creation ([`volume_id_for`] of its name).
    pub id: String,
    /// The name it was created with, which makes creation idempotent.
    pub name: String,
    pub workspace: WorkspaceId,
    pub workspace_name: String,
    /// Path of the volume's root inside its workspace ("/" for a whole workspace).
    pub path: String,
    pub whole_workspace: bool,
    pub capacity_bytes: u64,
    pub parameters: BTreeMap<String, String>,
    pub created_at: Timestamp,
}

const VOLUME_COLUMNS: &str = "v.name, v.workspace_id, w.name, v.path, v.whole_workspace, v.capacity_bytes, \
     v.parameters, v.created_at, v.volume_id";

fn volume_from_row(row: &Row) -> Volume {
    Volume {
        name: row.get(0),
        workspace: WorkspaceId(row.get(1)),
        workspace_name: row.get(2),
        path: row.get(3),
        whole_workspace: row.get(4),
        capacity_bytes: row.get::<_, i64>(5) as u64,
        parameters: serde_json::from_value(row.get(6)).unwrap_or_default(),
        created_at: from_system_time(row.get::<_, SystemTime>(7)),
        id: row.get(8),
    }
}

/// The most bytes of a CSI volume or snapshot name (the CSI spec asks plugins to take 128).
pub const MAX_CSI_NAME_BYTES: usize = 253;

/// Refuses a CSI name that is empty, too long or holds a NUL; any other UTF-8 is a name.
pub fn validate_csi_name(name: &str) -> Result<(), MetaError> {
    if name.is_empty() {
        return Err(MetaError::InvalidArgument("the name is empty".into()));
    }
    if name.len() > MAX_CSI_NAME_BYTES {
        return Err(MetaError::InvalidArgument(format!(
            "the name has {} bytes, more than {MAX_CSI_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(MetaError::InvalidArgument("the name holds a NUL byte".into()));
    }
    Ok(())
}

/// The most bytes of a volume or snapshot id (the CSI spec's limit for string fields).
pub const MAX_ID_BYTES: usize = 128;

/// Whether `id` is a safe volume or snapshot id: 1..=128 bytes of `[A-Za-z0-9._:@-]`, no "..".
pub fn is_safe_id(id: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@');
    !id.is_empty() && id.len() <= MAX_ID_BYTES && id.chars().all(allowed) && !id.contains("..")
}

/// The id of the volume created with CSI name `name`: the name itself when it is a safe id,
/// else the safe name it is stored under.
pub fn volume_id_for(name: &str) -> String {
    if is_safe_id(name) {
        name.to_string()
    } else {
        storage_name(name)
    }
}

/// The folder, workspace or snapshot name a CSI name is stored under: the name itself when it
/// is already a valid workspace name (`pvc-<uid>`, as Kubernetes makes them), else a readable
/// lowercase stem and a hash of the whole name, so two CSI names never share one (`Vol 1`
/// and `vol-1` differ) and the result is always a valid workspace and folder name.
pub fn storage_name(csi_name: &str) -> String {
    if validate_workspace_name(csi_name).is_ok() && csi_name.len() <= 63 {
        return csi_name.to_string();
    }
    let stem: String = csi_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let stem = stem.trim_matches('-');
    let hash = blake3::hash(csi_name.as_bytes()).to_hex();
    let hash = &hash.as_str()[..16];
    if stem.is_empty() {
        format!("csi-{hash}")
    } else {
        format!("{stem}-{hash}")
    }
}

impl PgMetaStore {
    /// Provisions a volume, or returns the existing one when the same request was already
    /// served. A live volume of that name with other parameters or capacity is `Exists`.
    pub async fn create_volume(&self, actor: &Actor, req: &VolumeRequest) -> Result<Volume, MetaError> {
        validate_csi_name(&req.name)?;
        let stored = storage_name(&req.name);
        if let Some(existing) = self
            .volume_named(&req.name)
            .await
            .map(Some)
            .or_else(none_if_not_found)?
        {
            return same_request(existing, req);
        }
        let (ws, path, whole) = match &req.placement {
            VolumePlacement::Folder { workspace, base_path } => {
                let ws = self.get_workspace(workspace).await?;
                let mut dir = ws.root;
                let names = super::tree::parse_path(base_path)?;
                for name in names
                    .iter()
                    .chain(std::iter::once(&crate::model::Name::parse(&stored)?))
                {
                    dir = self.ensure_dir(actor, ws.id, dir, name).await?;
                }
                let base: Vec<String> = names.iter().map(crate::model::Name::to_string_lossy).collect();
                let path = if base.is_empty() {
                    format!("/{stored}")
                } else {
                    format!("/{}/{stored}", base.join("/"))
                };
                (ws, path, false)
            }
            VolumePlacement::Workspace { kind, block_size } => {
                let mut spec = WorkspaceSpec::new(stored.clone(), *kind);
                spec.block_size = *block_size;
                spec.quota_bytes = Some(req.capacity_bytes).filter(|c| *c > 0);
                let ws = match self.create_workspace(actor, &spec).await {
                    Ok(ws) => ws,
                    // A previous attempt created it and stopped before recording the volume.
                    Err(e) if e.kind() == ErrorKind::Exists => self.get_workspace(&stored).await?,
                    Err(e) => return Err(e),
                };
                (ws, "/".to_string(), true)
            }
        };
        let params = serde_json::to_value(&req.parameters).map_err(|e| MetaError::Internal(e.to_string()))?;
        let client = self.client().await?;
        let inserted = execute(
            &client,
            "INSERT INTO volumes (name, workspace_id, path, whole_workspace, capacity_bytes, parameters, volume_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &req.name,
                &ws.id.0,
                &path,
                &whole,
                &(req.capacity_bytes as i64),
                &params,
                &volume_id_for(&req.name),
            ],
        )
        .await;
        match inserted {
            Ok(_) => self.volume_named(&req.name).await,
            // A concurrent identical request won the race: answer as it did.
            Err(e) if e.kind() == ErrorKind::Exists => match self.volume_named(&req.name).await {
                Ok(existing) => same_request(existing, req),
                // Another name maps to the same id (a name crafted to equal a hashed one).
                Err(e) if e.kind() == ErrorKind::NotFound => Err(MetaError::Exists(format!(
                    "volume id {} is taken by a volume of another name",
                    volume_id_for(&req.name)
                ))),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Grows a volume to `capacity_bytes` (a smaller capacity leaves it as it is: volumes are
    /// never shrunk). A whole-workspace volume's capacity is its workspace's quota, raised with
    /// it. Returns the volume as it is now.
    pub async fn expand_volume(
        &self,
        actor: &Actor,
        id: &str,
        capacity_bytes: u64,
    ) -> Result<Volume, MetaError> {
        let volume = self.get_volume(id).await?;
        if capacity_bytes <= volume.capacity_bytes {
            return Ok(volume);
        }
        if volume.whole_workspace {
            let update = super::WorkspaceUpdate {
                quota_bytes: Some(Some(capacity_bytes)),
                owners: None,
            };
            self.update_workspace(actor, &volume.workspace_name, &update)
                .await?;
        }
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE volumes SET capacity_bytes = GREATEST(capacity_bytes, $2) WHERE volume_id = $1 AND deleted_at IS NULL",
            &[&id, &(capacity_bytes as i64)],
        )
        .await?;
        self.get_volume(id).await
    }

    /// The live volume whose id is `id`.
    pub async fn get_volume(&self, id: &str) -> Result<Volume, MetaError> {
        self.live_volume("v.volume_id", id).await
    }

    /// The live volume created with the name `name`.
    async fn volume_named(&self, name: &str) -> Result<Volume, MetaError> {
        self.live_volume("v.name", name).await
    }

    async fn live_volume(&self, column: &str, value: &str) -> Result<Volume, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes v JOIN workspaces w ON w.id = v.workspace_id \
                 WHERE {column} = $1 AND v.deleted_at IS NULL"
            ),
            &[&value],
        )
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("volume {value}")))?;
        Ok(volume_from_row(&row))
    }

    /// All live volumes, by name.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes v JOIN workspaces w ON w.id = v.workspace_id \
                 WHERE v.deleted_at IS NULL ORDER BY v.name"
            ),
            &[],
        )
        .await?;
        Ok(rows.iter().map(volume_from_row).collect())
    }

    /// Deletes a volume: its folder (or workspace) is soft-deleted. Returns `false` when no
    /// such volume exists (deleting twice succeeds).
    pub async fn delete_volume(&self, actor: &Actor, id: &str) -> Result<bool, MetaError> {
        let Some(volume) = self.get_volume(id).await.map(Some).or_else(none_if_not_found)? else {
            return Ok(false);
        };
        let removed = if volume.whole_workspace {
            self.delete_workspace(actor, &volume.workspace_name).await
        } else {
            self.delete_path(actor, volume.workspace, &volume.path).await
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE volumes SET deleted_at = now() WHERE volume_id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
        Ok(true)
    }

    /// The folder `parent/name`, created when missing.
    async fn ensure_dir(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: crate::model::NodeId,
        name: &crate::model::Name,
    ) -> Result<crate::model::NodeId, MetaError> {
        match self
            .create(actor, ws, parent, name, &NewNode::new(NodeKind::Directory, 0o777))
            .await
        {
            Ok(attr) => Ok(attr.ino),
            Err(e) if e.kind() == ErrorKind::Exists => {
                let attr = self.lookup(View::Live, parent, name).await?;
                if attr.kind != NodeKind::Directory {
                    return Err(MetaError::NotADirectory(name.to_string_lossy()));
                }
                Ok(attr.ino)
            }
            Err(e) => Err(e),
        }
    }
}

fn none_if_not_found<T>(e: MetaError) -> Result<Option<T>, MetaError> {
    if e.kind() == ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// The existing volume if `req` asks for the same thing, else `Exists`.
fn same_request(existing: Volume, req: &VolumeRequest) -> Result<Volume, MetaError> {
    let same_place = match &req.placement {
        VolumePlacement::Folder { workspace, .. } => {
            !existing.whole_workspace && existing.workspace_name == *workspace
        }
        VolumePlacement::Workspace { .. } => existing.whole_workspace,
    };
    if same_place && existing.capacity_bytes == req.capacity_bytes && existing.parameters == req.parameters {
        Ok(existing)
    } else {
        Err(MetaError::Exists(format!(
            "volume {} exists with different parameters",
            req.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csi_names_map_to_distinct_valid_storage_names() {
        assert_eq!(
            storage_name("pvc-0a1b2c3d"),
            "pvc-0a1b2c3d",
            "Kubernetes' names stay as they are"
        );
        let names = [
            "Vol 1",
            "vol-1",
            "VOL_1",
            "ünïcode",
            "...",
            &"x".repeat(128),
            &"A".repeat(253),
        ];
        let stored: std::collections::BTreeSet<String> = names.iter().map(|n| storage_name(n)).collect();
        assert_eq!(stored.len(), names.len(), "{stored:?}");
        for s in &stored {
            assert!(validate_workspace_name(s).is_ok() && s.len() <= 63, "{s}");
        }
        assert_eq!(storage_name("Vol 1"), storage_name("Vol 1"), "stable");
        assert!(validate_csi_name("").is_err());
        assert!(validate_csi_name("a\0b").is_err());
        assert!(validate_csi_name(&"a".repeat(254)).is_err());
        assert!(validate_csi_name("Any UTF-8 name: ✓").is_ok());
    }
}
