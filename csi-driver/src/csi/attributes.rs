//! Volume attributes (a PV's `volumeAttributes`, an inline volume's attributes, or what
//! CreateVolume returned) and StorageClass parameters, parsed into typed values.
//!
//! Keys with a "/" belong to Kubernetes components (pod info, provisioner identity) and are
//! read where meaningful, otherwise ignored; any other unknown key is refused so typos do
//! not silently mount the wrong thing.

use std::collections::{BTreeMap, HashMap};

use drive::meta::VolumePlacement;
use drive::model::WorkspaceKind;
use tonic::Status;

/// Volume attribute: workspace name (static and inline volumes).
pub const WORKSPACE: &str = "workspace";
/// Volume attribute: folder inside the workspace mounted as the volume root.
pub const PATH: &str = "path";
/// Volume attribute: snapshot name; the volume is then read-only.
pub const SNAPSHOT: &str = "snapshot";
/// Volume attribute: "true" mounts read-only.
pub const READ_ONLY: &str = "readOnly";
/// Volume attribute: node-local cache bytes for this volume ("0" turns it off).
pub const CACHE_SIZE: &str = "cacheSize";

/// Volume attribute: the name of a preload this node must have finished before the volume is
/// published (`studiodrive-csi preload --report-as NAME`); the pod waits in ContainerCreating.
pub const PRELOAD: &str = "preload";
/// Volume attribute: "true" publishes even when the preload failed (it still waits for it).
pub const PRELOAD_OPTIONAL: &str = "preloadOptional";

/// Where a published volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeAttributes {
    /// `None` for a provisioned volume: the node looks the volume up by id.
    pub workspace: Option<String>,
    pub path: Option<String>,
    pub snapshot: Option<String>,
    pub read_only: bool,
    pub cache_size: Option<u64>,
    /// The preload to wait for on this node.
    pub preload: Option<String>,
    /// A failed preload does not fail the publish.
    pub preload_optional: bool,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

impl VolumeAttributes {
    /// Parses a volume context. Pod information is returned separately by [`PodIdentity`].
    pub fn parse(ctx: &HashMap<String, String>) -> Result<VolumeAttributes, Status> {
        let mut attrs = VolumeAttributes::default();
        for (key, value) in ctx {
            match key.as_str() {
                WORKSPACE => {
                    drive::model::validate_workspace_name(value)
                        .map_err(|e| invalid(format!("volume attribute {WORKSPACE}: {e}")))?;
                    attrs.workspace = Some(value.clone());
                }
                PATH => attrs.path = Some(folder_path(PATH, value)?),
                SNAPSHOT => {
                    drive::model::validate_workspace_name(value)
                        .map_err(|e| invalid(format!("volume attribute {SNAPSHOT}: {e}")))?;
                    attrs.snapshot = Some(value.clone());
                }
                READ_ONLY => attrs.read_only = parse_bool(READ_ONLY, value)?,
                CACHE_SIZE => attrs.cache_size = Some(parse_bytes(CACHE_SIZE, value)?),
                PRELOAD => {
                    drive::preload::validate_name(value)
                        .map_err(|e| invalid(format!("volume attribute {PRELOAD}: {e}")))?;
                    attrs.preload = Some(value.clone());
                }
                PRELOAD_OPTIONAL => attrs.preload_optional = parse_bool(PRELOAD_OPTIONAL, value)?,
                other if other.contains('/') => {}
                _ => return Err(invalid(format!("unknown volume attribute {key:?}"))),
            }
        }
        Ok(attrs)
    }
}

/// The cache bytes of a volume: what its `cacheSize` attribute asks for (or the node's
/// default), at most the admin's maximum (`serve --max-cache-size`). Pure; see
/// [`volume_cache_size`] for the logging form the node service uses.
pub fn clamp_cache_size(requested: u64, max: Option<u64>) -> u64 {
    max.map_or(requested, |max| requested.min(max))
}

/// [`clamp_cache_size`] of the attribute's request (or `default`), logged at info when the
/// maximum cut it.
pub fn volume_cache_size(volume_id: &str, requested: Option<u64>, default: u64, max: Option<u64>) -> u64 {
    let asked = requested.unwrap_or(default);
    let granted = clamp_cache_size(asked, max);
    if granted < asked {
        tracing::info!(
            volume_id,
            asked,
            granted,
            "volume cache size clamped to the node's maximum"
        );
    }
    granted
}

/// A folder path as the workspace sees it, checked by the store's own parser
/// ([`drive::model::WorkspacePath`]): absolute, valid names (no NUL, no "." or ".." parts).
/// Returns the canonical form.
fn folder_path(field: &str, value: &str) -> Result<String, Status> {
    if !value.starts_with('/') {
        return Err(invalid(format!(
            "{field} must be an absolute folder path inside the workspace"
        )));
    }
    drive::model::WorkspacePath::parse(value)
        .map(|p| p.to_string())
        .map_err(|e| invalid(format!("{field}: {e}")))
}

fn parse_bool(field: &str, value: &str) -> Result<bool, Status> {
    match value {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(invalid(format!("{field} must be \"true\" or \"false\""))),
    }
}

/// Bytes as a plain integer or a Kubernetes quantity with a binary suffix ("10Gi").
pub fn parse_bytes(field: &str, value: &str) -> Result<u64, Status> {
    let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => value.split_at(i),
        None => (value, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        _ => {
            return Err(invalid(format!(
                "{field} must be bytes, optionally with Ki, Mi, Gi or Ti"
            )));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| invalid(format!("{field} must be bytes, optionally with Ki, Mi, Gi or Ti")))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| invalid(format!("{field} is too large")))
}

/// StorageClass parameter: "folder" (default) or "workspace".
pub const PARAM_PLACEMENT: &str = "placement";
/// StorageClass parameter: the workspace folder volumes are created in (default "default").
pub const PARAM_WORKSPACE: &str = "workspace";
/// StorageClass parameter: the folder under which folder volumes are created (default "/volumes").
pub const PARAM_BASE_PATH: &str = "basePath";
/// StorageClass parameter: kind of a workspace volume: user, project or team (default team).
pub const PARAM_KIND: &str = "kind";
/// StorageClass parameter: block size of a workspace volume (default 4Mi).
pub const PARAM_BLOCK_SIZE: &str = "blockSize";

/// Parsed StorageClass parameters of CreateVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionParameters {
    pub placement: VolumePlacement,
    /// Our parameters and the claim's namespace (Kubernetes' other "csi.storage.k8s.io/..."
    /// keys are left out), as stored with the volume and compared when a request is repeated.
    pub recorded: BTreeMap<String, String>,
    /// Folder volumes go to the default workspace (no `workspace` parameter): the controller
    /// creates it when missing, so a StorageClass without parameters works on a fresh store.
    pub default_workspace: bool,
}

/// The workspace folder volumes go to when the StorageClass names none.
pub const DEFAULT_VOLUME_WORKSPACE: &str = "default";

impl ProvisionParameters {
    pub fn parse(params: &HashMap<String, String>) -> Result<ProvisionParameters, Status> {
        let mut recorded = BTreeMap::new();
        for (key, value) in params {
            match key.as_str() {
                PARAM_PLACEMENT | PARAM_WORKSPACE | PARAM_BASE_PATH | PARAM_KIND | PARAM_BLOCK_SIZE => {
                    recorded.insert(key.clone(), value.clone());
                }
                // Kept: the claim's namespace is whose pods may mount the volume.
                super::node::PVC_NAMESPACE => {
                    recorded.insert(key.clone(), value.clone());
                }
                other if other.contains('/') => {}
                _ => return Err(invalid(format!("unknown StorageClass parameter {key:?}"))),
            }
        }
        let get = |k: &str| recorded.get(k).map(String::as_str);
        let placement = match get(PARAM_PLACEMENT).unwrap_or("folder") {
            "folder" => {
                let workspace = get(PARAM_WORKSPACE)
                    .unwrap_or(DEFAULT_VOLUME_WORKSPACE)
                    .to_string();
                drive::model::validate_workspace_name(&workspace)
                    .map_err(|e| invalid(format!("parameter {PARAM_WORKSPACE}: {e}")))?;
                let base_path = folder_path(PARAM_BASE_PATH, get(PARAM_BASE_PATH).unwrap_or("/volumes"))?;
                VolumePlacement::Folder { workspace, base_path }
            }
            "workspace" => {
                let kind = match get(PARAM_KIND).unwrap_or("team") {
                    "user" => WorkspaceKind::User,
                    "project" => WorkspaceKind::Project,
                    "team" => WorkspaceKind::Team,
                    _ => {
                        return Err(invalid(format!(
                            "parameter {PARAM_KIND} must be user, project or team"
                        )));
                    }
                };
                let block_size = match get(PARAM_BLOCK_SIZE) {
                    Some(v) => u32::try_from(parse_bytes(PARAM_BLOCK_SIZE, v)?)
                        .map_err(|_| invalid(format!("parameter {PARAM_BLOCK_SIZE} is too large")))?,
                    None => drive::model::DEFAULT_BLOCK_SIZE,
                };
                VolumePlacement::Workspace { kind, block_size }
            }
            _ => {
                return Err(invalid(format!(
                    "parameter {PARAM_PLACEMENT} must be \"folder\" or \"workspace\""
                )));
            }
        };
        let default_workspace =
            matches!(placement, VolumePlacement::Folder { .. }) && get(PARAM_WORKSPACE).is_none();
        Ok(ProvisionParameters {
            placement,
            recorded,
            default_workspace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_size_is_clamped_to_the_admin_maximum() {
        assert_eq!(clamp_cache_size(50 << 30, Some(20 << 30)), 20 << 30);
        assert_eq!(clamp_cache_size(5 << 30, Some(20 << 30)), 5 << 30);
        assert_eq!(
            clamp_cache_size(0, Some(20 << 30)),
            0,
            "0 still turns the cache off"
        );
        assert_eq!(clamp_cache_size(50 << 30, None), 50 << 30);
        // The node's default is clamped like an attribute.
        assert_eq!(volume_cache_size("v", None, 10 << 30, Some(1 << 30)), 1 << 30);
        assert_eq!(volume_cache_size("v", Some(2 << 30), 10 << 30, None), 2 << 30);
    }

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes() {
        let a = VolumeAttributes::parse(&ctx(&[
            ("workspace", "shots"),
            ("path", "/seq/010"),
            ("readOnly", "true"),
            ("cacheSize", "2Gi"),
            ("preload", "vfx/shot010"),
            ("preloadOptional", "true"),
            ("csi.storage.k8s.io/pod.name", "render-0"),
        ]))
        .unwrap();
        assert_eq!(a.preload.as_deref(), Some("vfx/shot010"));
        assert!(a.preload_optional);
        assert_eq!(a.workspace.as_deref(), Some("shots"));
        assert_eq!(a.path.as_deref(), Some("/seq/010"));
        assert!(a.read_only);
        assert_eq!(a.cache_size, Some(2 << 30));
        for bad in [
            ctx(&[("workspace", "Bad/Name")]),
            ctx(&[("path", "../etc")]),
            ctx(&[("path", "/a/../b")]),
            ctx(&[("readOnly", "yes")]),
            ctx(&[("cacheSize", "10GB")]),
            ctx(&[("workspce", "typo")]),
            ctx(&[("preload", "")]),
            ctx(&[("preload", "shot 010")]),
            ctx(&[("preload", "shot\n010")]),
            ctx(&[("preload", "../shot010")]),
            ctx(&[("preload", &"a".repeat(254))]),
            ctx(&[("preloadOptional", "maybe")]),
        ] {
            assert_eq!(
                VolumeAttributes::parse(&bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parameters() {
        let p = ProvisionParameters::parse(&ctx(&[
            ("workspace", "renders"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(
            p.placement,
            VolumePlacement::Folder {
                workspace: "renders".into(),
                base_path: "/volumes".into()
            }
        );
        assert_eq!(p.recorded.len(), 1);
        let w = ProvisionParameters::parse(&ctx(&[
            ("placement", "workspace"),
            ("kind", "project"),
            ("blockSize", "8Mi"),
        ]))
        .unwrap();
        assert_eq!(
            w.placement,
            VolumePlacement::Workspace {
                kind: WorkspaceKind::Project,
                block_size: 8 << 20
            }
        );
        assert!(ProvisionParameters::parse(&ctx(&[("placement", "bucket")])).is_err());
        assert!(ProvisionParameters::parse(&ctx(&[("kind", "user"), ("nope", "x")])).is_err());
    }
}
