//! Checks on request fields, done before anything is created. Every failure is
//! INVALID_ARGUMENT with a message that names the field but never echoes secret values.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use tonic::Status;

use super::proto::volume_capability::{AccessType, access_mode::Mode};
use super::proto::{VolumeCapability, volume_capability};

pub use drive::meta::MAX_ID_BYTES;
/// Longest target path accepted. Kubelet's paths are far shorter; longer ones are hostile.
pub const MAX_PATH_BYTES: usize = 1024;
/// Volume context without the service-account tokens (the CSI spec's 4 KiB map limit).
pub const MAX_CONTEXT_BYTES: usize = 4096;
/// The service-account tokens entry of a volume context (a few JWTs).
pub const MAX_TOKENS_BYTES: usize = 16 * 1024;
/// The volume context key kubelet puts service-account tokens under.
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

/// A volume or snapshot id: 1..=128 bytes of `[A-Za-z0-9._:@-]`, no "..".
pub fn id<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(format!("{field} is longer than {MAX_ID_BYTES} bytes")));
    }
    if !drive::meta::is_safe_id(value) {
        return Err(invalid(format!(
            "{field} may hold only letters, digits, '.', '_', '-', ':' and '@' (and no \"..\")"
        )));
    }
    Ok(value)
}

/// A target path: absolute, normalised (no "." or ".." parts), no NUL, at most 1 KiB.
pub fn target_path(field: &str, value: &str) -> Result<PathBuf, Status> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if value.len() > MAX_PATH_BYTES {
        return Err(invalid(format!("{field} is longer than {MAX_PATH_BYTES} bytes")));
    }
    if value.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL byte")));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(format!("{field} must be an absolute path")));
    }
    let normal = value
        .split('/')
        .skip(1)
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if !normal
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(format!(
            "{field} must be a normalised path (no empty, \".\" or \"..\" parts)"
        )));
    }
    Ok(path.to_path_buf())
}

/// Size limits of a volume context; the tokens entry is measured on its own.
pub fn context_size(ctx: &HashMap<String, String>) -> Result<(), Status> {
    let mut plain = 0usize;
    for (k, v) in ctx {
        if k == TOKENS_KEY {
            if v.len() > MAX_TOKENS_BYTES {
                return Err(invalid(format!(
                    "volume_context {TOKENS_KEY} is larger than {MAX_TOKENS_BYTES} bytes"
                )));
            }
        } else {
            plain += k.len() + v.len();
        }
    }
    if plain > MAX_CONTEXT_BYTES {
        return Err(invalid(format!(
            "volume_context is larger than {MAX_CONTEXT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// What a capability asks of a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// The access mode allows no writes.
    pub reader_only: bool,
    /// A mount flag asked for read-only.
    pub ro_flag: bool,
}

/// File-system types a capability may name.
const FS_TYPES: &[&str] = &["", "studiodrive", "fuse.studiodrive"];
/// Mount flags accepted (the others have no meaning for a FUSE file system here).
const MOUNT_FLAGS: &[&str] = &["ro", "rw", "noatime", "relatime", "nodev", "nosuid"];

/// Checks one volume capability: a mount (not block) with a known access mode, file-system
/// type and mount flags.
pub fn capability(cap: Option<&VolumeCapability>) -> Result<MountRequest, Status> {
    let cap = cap.ok_or_else(|| invalid("volume_capability is required"))?;
    let mount = match &cap.access_type {
        Some(AccessType::Mount(m)) => m,
        Some(AccessType::Block(_)) => {
            return Err(invalid("block volumes are not supported: use a mount volume"));
        }
        None => return Err(invalid("volume_capability.access_type is required")),
    };
    check_mount(mount)?;
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err(invalid("volume_capability.access_mode is required"));
    }
    Ok(MountRequest {
        reader_only: matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly),
        ro_flag: mount.mount_flags.iter().any(|f| f == "ro"),
    })
}

fn check_mount(mount: &volume_capability::MountVolume) -> Result<(), Status> {
    if !FS_TYPES.contains(&mount.fs_type.as_str()) {
        return Err(invalid(
            "volume_capability.mount.fs_type must be empty or \"studiodrive\"",
        ));
    }
    let total: usize = mount.mount_flags.iter().map(String::len).sum();
    if total > 4096 {
        return Err(invalid(
            "volume_capability.mount.mount_flags are larger than 4 KiB",
        ));
    }
    // Flags may hold secrets: name the allowed set, never the rejected value.
    if mount
        .mount_flags
        .iter()
        .any(|f| !MOUNT_FLAGS.contains(&f.as_str()))
    {
        return Err(invalid(format!(
            "unsupported mount flag; allowed: {}",
            MOUNT_FLAGS.join(", ")
        )));
    }
    Ok(())
}

/// Whether every capability could be served (for ValidateVolumeCapabilities and
/// CreateVolume): `Err` carries the reason.
pub fn capabilities(caps: &[VolumeCapability]) -> Result<(), Status> {
    if caps.is_empty() {
        return Err(invalid("volume_capabilities is required"));
    }
    caps.iter().try_for_each(|c| capability(Some(c)).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("volume_id", "pvc-1234").is_ok());
        assert!(id("volume_id", "shots@snap-1").is_ok());
        for bad in ["", "..", "a/../b", "a/b", "a\0b", &"x".repeat(129), "a b", "a..b"] {
            let e = id("volume_id", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains("volume_id"));
        }
    }

    #[test]
    fn target_paths() {
        assert_eq!(
            target_path("target_path", "/var/lib/kubelet/pods/x/mount").unwrap(),
            PathBuf::from("/var/lib/kubelet/pods/x/mount")
        );
        for bad in [
            "",
            "relative/path",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/b/",
            "/a\0b",
            &format!("/{}", "d".repeat(4096)),
        ] {
            assert_eq!(
                target_path("target_path", bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn context_limits() {
        let mut ctx = HashMap::new();
        ctx.insert("workspace".to_string(), "w".repeat(100));
        ctx.insert(TOKENS_KEY.to_string(), "t".repeat(8000));
        assert!(context_size(&ctx).is_ok());
        ctx.insert("path".to_string(), "p".repeat(5000));
        assert!(context_size(&ctx).is_err());
        ctx.remove("path");
        ctx.insert(TOKENS_KEY.to_string(), "t".repeat(20000));
        assert!(context_size(&ctx).is_err());
    }

    #[test]
    fn capabilities_checked() {
        use super::super::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};
        let mount = |mode: Mode, flags: &[&str]| VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: String::new(),
                mount_flags: flags.iter().map(ToString::to_string).collect(),
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        };
        assert_eq!(
            capability(Some(&mount(Mode::MultiNodeReaderOnly, &[]))).unwrap(),
            MountRequest {
                reader_only: true,
                ro_flag: false
            }
        );
        assert!(
            capability(Some(&mount(Mode::MultiNodeMultiWriter, &["ro"])))
                .unwrap()
                .ro_flag
        );
        assert!(capability(Some(&mount(Mode::Unknown, &[]))).is_err());
        assert!(
            capability(Some(&mount(Mode::SingleNodeWriter, &["password=hunter2"])))
                .is_err_and(|e| !e.message().contains("hunter2"))
        );
        assert!(capability(None).is_err());
        let block = VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        };
        assert!(capability(Some(&block)).is_err());
    }
}
