//! The node's published volumes: one `studiodrive-csi mount --foreground` process per target
//! path, supervised by the node plugin.
//!
//! Mount processes run in their own process group, so the plugin can be killed or restarted
//! (a DaemonSet upgrade) without taking live mounts down. Each publication is recorded as a
//! JSON file under the state directory; a restarted plugin reads them back and adopts the
//! processes still serving (found by pid and command line), so unpublish keeps working. The
//! supervisor restarts a mount whose process died while the volume is still published.
//!
//! A publication's secrets (its workspace's key-encryption key, its object store's
//! credentials) reach the mount process through a file, `<state_dir>/csi-secrets/<key>.json`:
//! the directory is 0700, the file is created 0600 with O_CREAT|O_EXCL (never widened and then
//! narrowed), and only its path is in the command line; nothing secret is in argv or the
//! environment, both of which other local users can read. A file rather than a pipe on
//! stdin: the supervisor must be able to restart a mount after the plugin itself restarted
//! (a DaemonSet upgrade, a crash), when no process holds the secrets in memory any more and
//! kubelet does not send them again. The file lives while the volume is published and is
//! removed at unpublish (or when the publish fails).
//!
//! Block caches are per workspace and shared: every publication of a workspace on the node,
//! and `studiodrive-csi preload --node-cache`, use `<cache_dir>/workspaces/<workspace id>`
//! ([`node_cache_dir`]). Cache entries are content-addressed, immutable and CRC-checked, so
//! processes can share them; each mount process budgets its volume's `cacheSize` against its
//! own view of the directory (see `drive::cache`), so several mounts of one workspace may
//! together hold up to that many times `cacheSize`, within the node's free-space floor.
//! Unpublish never removes the shared cache (other publications and preloads use it); it
//! removes the per-publication cache `<cache_dir>/<key>` of publications recorded before
//! caches were shared.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use drive::model::WorkspaceId;
use drive::rules::access::AccessCheck;

use super::secrets::PublishSecrets;
use crate::mount_table::fuse_mounts_at;

/// What one publication mounts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    pub volume_id: String,
    pub workspace: String,
    pub path: String,
    pub snapshot: Option<String>,
    pub read_only: bool,
    /// Cache bytes for this mount (0: no cache).
    pub cache_size: u64,
    /// What the mount re-decides while it runs (`None`: authorization is off).
    #[serde(default)]
    pub access: Option<AccessCheck>,
    /// Who the mount's changes are recorded as (the pod), beside the local uid.
    #[serde(default)]
    pub actor: Option<String>,
    /// The workspace's id: the mount uses the node-shared cache of that workspace
    /// ([`node_cache_dir`]). `None` in records of plugins that predate shared caches: those
    /// mounts keep their per-publication cache.
    #[serde(default)]
    pub workspace_id: Option<WorkspaceId>,
}

impl MountSpec {
    /// Whether a publish of `other` repeats this publication. A record written before shared
    /// caches has no workspace id; it still matches the same publish made now.
    fn is_same(&self, other: &MountSpec) -> bool {
        let mut a = self.clone();
        if a.workspace_id.is_none() || other.workspace_id.is_none() {
            a.workspace_id = other.workspace_id;
        }
        a == *other
    }
}

/// The node plugin's cache directory when none is configured: `<state_dir>/csi-cache`.
pub fn default_cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("csi-cache")
}

/// The node-shared block cache of `workspace` under the node plugin's cache directory
/// `cache_dir`: what its publications mount with and what `preload --node-cache` fills. The
/// id, not the name: a workspace deleted and created again under its name starts cold, and
/// the path is a UUID, never anything a pod spec chose.
pub fn node_cache_dir(cache_dir: &Path, workspace: WorkspaceId) -> PathBuf {
    cache_dir.join("workspaces").join(workspace.0.to_string())
}

/// A publication as recorded on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    target: PathBuf,
    spec: MountSpec,
    /// The mount process, 0 while it is being started.
    pid: u32,
}

struct Entry {
    record: Record,
    /// Our own child; `None` for a process adopted from an earlier plugin.
    child: Option<Child>,
    /// When the supervisor may try again after a failed restart.
    retry_at: Instant,
    backoff: Duration,
    /// Why the last restart failed; cleared when a restart succeeds.
    failure: Option<String>,
}

/// How the node runs mounts.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The `studiodrive-csi` binary.
    pub exe: PathBuf,
    /// Storage settings every mount process gets, as STUDIODRIVE_* environment variables
    /// (not flags: a metadata URL may hold a password, and command lines are public).
    /// `None` removes the variable.
    pub storage_env: Vec<(&'static str, Option<OsString>)>,
    /// Records and mount logs live in `<state_dir>/csi-publications`, publish secrets in
    /// `<state_dir>/csi-secrets`.
    pub state_dir: PathBuf,
    /// Workspace caches live in `<cache_dir>/workspaces/<id>` ([`node_cache_dir`]); older
    /// per-publication caches in `<cache_dir>/<key>`.
    pub cache_dir: PathBuf,
    /// Free-space floor of each publication's cache (`mount --cache-min-free`).
    pub cache_min_free: f64,
    /// How long a mount may take to appear.
    pub mount_timeout: Duration,
    /// How long a mount process may take to commit and exit on unpublish.
    pub stop_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{target} is already published with another volume or other options")]
    Conflict { target: String },
    #[error("{target} is published for another volume")]
    OtherVolume { target: String },
    #[error("mount at {target} failed: {reason}")]
    MountFailed { target: String, reason: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PublishError {
    let context = context.into();
    move |source| PublishError::Io { context, source }
}

/// The node's publications.
pub struct Publisher {
    cfg: PublisherConfig,
    records_dir: PathBuf,
    secrets_dir: PathBuf,
    mounts: Mutex<HashMap<PathBuf, Entry>>,
    /// One lock per target path: publish, unpublish and supervision of a target never overlap.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Publisher {
    /// Reads the publications an earlier plugin recorded and adopts their processes.
    pub fn open(cfg: PublisherConfig) -> Result<Publisher, PublishError> {
        let records_dir = cfg.state_dir.join("csi-publications");
        std::fs::create_dir_all(&records_dir).map_err(io_err(format!("create {}", records_dir.display())))?;
        let secrets_dir = cfg.state_dir.join("csi-secrets");
        private_dir(&secrets_dir).map_err(io_err(format!("create {}", secrets_dir.display())))?;
        let mut mounts = HashMap::new();
        for entry in std::fs::read_dir(&records_dir).map_err(io_err("read the publication records"))? {
            let path = entry.map_err(io_err("read the publication records"))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record: Record = match std::fs::read(&path).map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(r)) => r,
                _ => {
                    tracing::warn!(record = %path.display(), "unreadable publication record; removed");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let mut record = record;
            if !serves(record.pid, &record.target) {
                record.pid = find_mount_process(&record.target).unwrap_or(0);
            }
            tracing::info!(
                target = %record.target.display(),
                volume = %record.spec.volume_id,
                pid = record.pid,
                alive = record.pid != 0,
                "adopting publication"
            );
            mounts.insert(
                record.target.clone(),
                Entry {
                    record,
                    child: None,
                    retry_at: Instant::now(),
                    backoff: Duration::from_millis(500),
                    failure: None,
                },
            );
        }
        Ok(Publisher {
            cfg,
            records_dir,
            secrets_dir,
            mounts: Mutex::new(mounts),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock_for(&self, target: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(target.to_path_buf())
            .or_default()
            .clone()
    }

    fn key(target: &Path) -> String {
        blake3::hash(target.as_os_str().as_encoded_bytes()).to_hex()[..20].to_string()
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        self.records_dir.join(format!("{}.json", Self::key(target)))
    }

    fn log_path(&self, target: &Path) -> PathBuf {
        self.records_dir.join(format!("{}.log", Self::key(target)))
    }

    fn secrets_path(&self, target: &Path) -> PathBuf {
        self.secrets_dir.join(format!("{}.json", Self::key(target)))
    }

    /// Writes the secrets file of `target` (replacing an older one), or removes it when there
    /// are no secrets. Written under a temporary name created 0600 with O_EXCL, then renamed
    /// into place, so the mount never reads half a file.
    fn save_secrets(&self, target: &Path, secrets: &PublishSecrets) -> Result<(), PublishError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.secrets_path(target);
        if secrets.is_empty() {
            return self.remove_secrets(target);
        }
        let tmp = path.with_extension("tmp");
        let context = format!("write {}", tmp.display());
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(context)(e)),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(context.clone()))?;
        f.write_all(&secrets.to_file_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err(context))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))
    }

    fn remove_secrets(&self, target: &Path) -> Result<(), PublishError> {
        let path = self.secrets_path(target);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }

    /// The per-publication cache of records that predate shared caches.
    fn legacy_cache_path(&self, target: &Path) -> PathBuf {
        self.cfg.cache_dir.join(Self::key(target))
    }

    /// The cache a publication's mount process uses.
    fn cache_path(&self, record: &Record) -> PathBuf {
        match record.spec.workspace_id {
            Some(id) => node_cache_dir(&self.cfg.cache_dir, id),
            None => self.legacy_cache_path(&record.target),
        }
    }

    fn save(&self, record: &Record) -> Result<(), PublishError> {
        let path = self.record_path(&record.target);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| PublishError::Io {
            context: "encode a publication record".into(),
            source: std::io::Error::other(e),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io_err(format!("write {}", tmp.display())))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))
    }

    /// The publication at `target`, if any.
    pub fn publication(&self, target: &Path) -> Option<MountSpec> {
        self.mounts
            .lock()
            .unwrap()
            .get(target)
            .map(|e| e.record.spec.clone())
    }

    /// Why the supervisor's last restart of `target`'s mount failed, while it keeps failing.
    pub fn failure(&self, target: &Path) -> Option<String> {
        self.mounts
            .lock()
            .unwrap()
            .get(target)
            .and_then(|e| e.failure.clone())
    }

    /// Whether the mount process of `target` is running and its file system answers.
    pub fn healthy(&self, target: &Path) -> bool {
        let alive = self
            .mounts
            .lock()
            .unwrap()
            .get_mut(target)
            .is_some_and(entry_alive);
        alive && fuse_mounts_at(target) > 0 && std::fs::metadata(target).is_ok()
    }

    /// Number of publications.
    pub fn count(&self) -> usize {
        self.mounts.lock().unwrap().len()
    }

    /// Mounts `spec` at `target`, handing `secrets` to the mount process. Repeating a publish
    /// of the same spec is a no-op (and revives a dead mount, with the secrets given now);
    /// another spec at the same target is a conflict.
    pub async fn publish(
        &self,
        target: &Path,
        spec: MountSpec,
        secrets: &PublishSecrets,
    ) -> Result<(), PublishError> {
        let lock = self.lock_for(target);
        let _held = lock.lock().await;
        let existing = {
            let mut mounts = self.mounts.lock().unwrap();
            match mounts.get_mut(target) {
                Some(e) if !e.record.spec.is_same(&spec) => {
                    return Err(PublishError::Conflict {
                        target: target.display().to_string(),
                    });
                }
                Some(e) => Some(entry_alive(e)),
                None => None,
            }
        };
        match existing {
            Some(true) if fuse_mounts_at(target) > 0 => return Ok(()),
            Some(_) => {
                self.save_secrets(target, secrets)?;
                return self.restart(target).await;
            }
            None => {}
        }
        if fuse_mounts_at(target) > 0 {
            // A mount no record knows of (a plugin crash before its record was written).
            if std::fs::metadata(target).is_ok() {
                return Err(PublishError::Conflict {
                    target: target.display().to_string(),
                });
            }
            detach(target);
        }
        let created = !target.exists();
        std::fs::create_dir_all(target).map_err(io_err(format!("create {}", target.display())))?;
        let mut record = Record {
            target: target.to_path_buf(),
            spec,
            pid: 0,
        };
        self.save(&record)?;
        let started = match self.save_secrets(target, secrets) {
            Ok(()) => self.start(&record).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(child) => {
                record.pid = child.id();
                self.save(&record)?;
                self.mounts.lock().unwrap().insert(
                    target.to_path_buf(),
                    Entry {
                        record,
                        child: Some(child),
                        retry_at: Instant::now(),
                        backoff: Duration::from_millis(500),
                        failure: None,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let _ = self.remove_secrets(target);
                let _ = std::fs::remove_file(self.record_path(target));
                if created {
                    let _ = std::fs::remove_dir(target);
                }
                Err(e)
            }
        }
    }

    /// Starts the mount process of `record` and waits until its file system answers.
    async fn start(&self, record: &Record) -> Result<Child, PublishError> {
        let target = &record.target;
        let spec = &record.spec;
        let log_path = self.log_path(target);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("open {}", log_path.display())))?;
        let mut cmd = Command::new(&self.cfg.exe);
        for (name, value) in &self.cfg.storage_env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        cmd.arg("mount")
            .arg("--workspace")
            .arg(&spec.workspace)
            .arg("--path")
            .arg(&spec.path);
        if let Some(s) = &spec.snapshot {
            cmd.arg("--snapshot").arg(s);
        }
        if spec.read_only {
            cmd.arg("--read-only");
        }
        if let Some(check) = &spec.access {
            // The principal is not a secret: names of a namespace, service account, groups.
            let json = serde_json::to_string(check).map_err(|e| PublishError::Io {
                context: "encode the access check".into(),
                source: std::io::Error::other(e),
            })?;
            cmd.arg("--access-check").arg(json);
        }
        if let Some(actor) = &spec.actor {
            cmd.arg("--actor").arg(actor);
        }
        let secrets = self.secrets_path(target);
        if secrets.exists() {
            cmd.arg("--secrets-file").arg(secrets);
        }
        cmd.arg("--cache-dir")
            .arg(self.cache_path(record))
            .arg("--cache-size")
            .arg(spec.cache_size.to_string())
            .arg("--cache-min-free")
            .arg(self.cfg.cache_min_free.to_string())
            // Pods run as any uid; permissions are then checked from the mode bits.
            .arg("--allow-other")
            // Workspaces are created by the operator or the controller, never by a mount: a
            // restart after the workspace was deleted must fail, not re-create it.
            .arg("--existing-workspace-only")
            .arg("--foreground")
            .arg(target);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("clone the mount log"))?)
            .stderr(log)
            // Its own process group: signals meant for the plugin do not reach live mounts.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("start {}", self.cfg.exe.display())))?;
        let deadline = Instant::now() + self.cfg.mount_timeout;
        loop {
            if fuse_mounts_at(target) > 0 && std::fs::metadata(target).is_ok() {
                tracing::info!(target = %target.display(), volume = %spec.volume_id, pid = child.id(), "mounted");
                return Ok(child);
            }
            let failure = match child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "the mount process exited ({status}): {}",
                    log_tail(&log_path)
                )),
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Some(format!(
                        "no mount after {:?}: {}",
                        self.cfg.mount_timeout,
                        log_tail(&log_path)
                    ))
                }
                Ok(None) => None,
                Err(e) => Some(format!("wait for the mount process: {e}")),
            };
            if let Some(reason) = failure {
                detach(target);
                return Err(PublishError::MountFailed {
                    target: target.display().to_string(),
                    reason,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces a dead mount process of `target` (the caller holds the target's lock).
    async fn restart(&self, target: &Path) -> Result<(), PublishError> {
        let record = {
            let mut mounts = self.mounts.lock().unwrap();
            let Some(e) = mounts.get_mut(target) else {
                return Ok(());
            };
            if let Some(mut c) = e.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            e.record.clone()
        };
        stop_process(record.pid, target, self.cfg.stop_timeout).await;
        detach(target);
        tracing::warn!(target = %target.display(), volume = %record.spec.volume_id, "restarting a dead mount");
        let child = self.start(&record).await?;
        let mut record = record;
        record.pid = child.id();
        self.save(&record)?;
        if let Some(e) = self.mounts.lock().unwrap().get_mut(target) {
            e.record = record;
            e.child = Some(child);
            e.backoff = Duration::from_millis(500);
            e.failure = None;
        }
        Ok(())
    }

    /// Unmounts `target` and removes it. Unknown targets succeed (a repeated unpublish); a
    /// dead or unrecorded Studio Drive mount there is cleaned up as well.
    pub async fn unpublish(&self, target: &Path, volume_id: &str) -> Result<(), PublishError> {
        let lock = self.lock_for(target);
        let _held = lock.lock().await;
        let (pid, child) = {
            let mut mounts = self.mounts.lock().unwrap();
            match mounts.get_mut(target) {
                Some(e) if e.record.spec.volume_id != volume_id => {
                    return Err(PublishError::OtherVolume {
                        target: target.display().to_string(),
                    });
                }
                Some(e) => (e.record.pid, e.child.take()),
                None => (find_mount_process(target).unwrap_or(0), None),
            }
        };
        match child {
            Some(mut c) => {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + self.cfg.stop_timeout;
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if matches!(c.try_wait(), Ok(None)) {
                    tracing::warn!(target = %target.display(), "mount process did not stop; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            None => stop_process(pid, target, self.cfg.stop_timeout).await,
        }
        // Stacked mounts (a dead one under a live one) come off one per detach.
        for _ in 0..16 {
            if fuse_mounts_at(target) == 0 {
                break;
            }
            detach(target);
        }
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(target = %target.display(), error = %e, "target path left in place"),
        }
        // Only a per-publication cache; the workspace's shared one stays for the others.
        let _ = std::fs::remove_dir_all(self.legacy_cache_path(target));
        self.remove_secrets(target)?;
        match std::fs::remove_file(self.record_path(target)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove the publication record")(e)),
        }
        self.mounts.lock().unwrap().remove(target);
        tracing::info!(target = %target.display(), volume = volume_id, "unpublished");
        Ok(())
    }

    /// Restarts mounts whose process died, until `cancel` fires.
    pub async fn supervise(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            self.revive_dead().await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One supervision pass: every publication whose process is gone is started again.
    pub async fn revive_dead(&self) {
        let dead: Vec<PathBuf> = {
            let mut mounts = self.mounts.lock().unwrap();
            let now = Instant::now();
            mounts
                .iter_mut()
                .filter(|(_, e)| e.retry_at <= now)
                .filter_map(|(t, e)| (!entry_alive(e)).then(|| t.clone()))
                .collect()
        };
        for target in dead {
            let lock = self.lock_for(&target);
            let Ok(_held) = lock.try_lock() else { continue };
            // Unpublished meanwhile?
            if !self.mounts.lock().unwrap().contains_key(&target) {
                continue;
            }
            if let Err(e) = self.restart(&target).await {
                tracing::error!(target = %target.display(), error = %e, "restart failed");
                if let Some(entry) = self.mounts.lock().unwrap().get_mut(&target) {
                    entry.failure = Some(e.to_string());
                    entry.retry_at = Instant::now() + entry.backoff;
                    entry.backoff = (entry.backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

/// Whether an entry's process still runs (reaping our own children).
fn entry_alive(e: &mut Entry) -> bool {
    match &mut e.child {
        Some(c) => matches!(c.try_wait(), Ok(None)),
        None => serves(e.record.pid, &e.record.target),
    }
}

/// Whether `pid` is a live (not zombie) `studiodrive-csi mount` process for `target`.
fn serves(pid: u32, target: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    if matches!(state, None | Some('Z' | 'X')) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    args.iter().any(|a| *a == b"mount") && args.last() == Some(&target.as_os_str().as_encoded_bytes())
}

/// The mount process serving `target`, found by its command line.
fn find_mount_process(target: &Path) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| serves(*pid, target))
}

/// Asks the process serving `target` to commit and unmount, then waits for it to exit;
/// kills it after `timeout`.
async fn stop_process(pid: u32, target: &Path, timeout: Duration) {
    if !serves(pid, target) {
        return;
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while serves(pid, target) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if serves(pid, target) {
        tracing::warn!(pid, target = %target.display(), "mount process did not stop; killing it");
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// Creates `dir` readable by its owner only (0700); an existing one is narrowed to 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Lazily unmounts whatever is mounted at `target`.
fn detach(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::debug!(target = %target.display(), error = %e, "lazy unmount");
    }
}

/// What a mount log says about a failure, for error messages: the error a mount process
/// exited with (the last "Error: " report, its causes, without a backtrace), else its last
/// lines.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let report = match lines.iter().rposition(|l| l.starts_with("Error: ")) {
        Some(at) => lines[at..]
            .iter()
            .take_while(|l| !l.starts_with("Stack backtrace:"))
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect(),
        None => lines[lines.len().saturating_sub(3)..].to_vec(),
    };
    report.join(" | ")
}
