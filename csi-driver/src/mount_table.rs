//! The FUSE mounts of this host, as /proc/self/mountinfo lists them: what the CSI node
//! service and the `mount` command both ask before mounting, publishing or unmounting.

use std::path::Path;

use anyhow::Context as _;

/// Lazily unmounts a FUSE mount point whose server died. Asks with `statfs`, which always
/// reaches the server: `stat` may be answered from the dead mount's cached attributes.
pub fn clean_stale(mountpoint: &Path) -> anyhow::Result<()> {
    match nix::sys::statfs::statfs(mountpoint) {
        Err(nix::errno::Errno::ENOTCONN) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "cleaning a dead FUSE mount");
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("lazy unmount of {}", mountpoint.display()))?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether `mountpoint` is a FUSE mount right now.
pub fn is_mounted(mountpoint: &Path) -> bool {
    std::fs::canonicalize(mountpoint).is_ok_and(|target| fuse_mounts_at(&target) > 0)
}

/// How many FUSE mounts sit exactly at the absolute path `path` (stacked mounts count each),
/// read from /proc/self/mountinfo. No `stat` of the path: a dead mount would fail it.
pub fn fuse_mounts_at(path: &Path) -> usize {
    fuse_mount_devices_at(path).len()
}

/// The devices (`major:minor`) of the FUSE mounts at the absolute path `path`, the topmost
/// last.
pub fn fuse_mount_devices_at(path: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter(|l| l.contains(" - fuse"))
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let dev = fields.nth(2)?;
            let mount_point = unescape_mountinfo(fields.nth(1)?);
            (Path::new(&mount_point) == path).then(|| dev.to_string())
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
