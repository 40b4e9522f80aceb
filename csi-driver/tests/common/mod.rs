//! Shared test support: a `studiodrive-csi mount` process on a temp dir, over the shared test
//! PostgreSQL and a local block directory, unmounted on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drive_testkit::pg::PgServer;

/// The binary under test: cargo builds it before this package's integration tests, so it is
/// never older than the code the tests were built from.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_studiodrive-csi"))
}

/// Fails the test (never passes it) where a FUSE mount cannot work: every test of this tier
/// mounts. `scripts/test.sh` leaves the tier out, saying why, on machines without FUSE.
pub fn require_fuse() {
    let root = nix::unistd::geteuid().is_root();
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    assert!(
        root && fuse.is_ok(),
        "this test mounts FUSE and needs root and a usable /dev/fuse (root: {root}, /dev/fuse: {:?}); \
         ./scripts/test.sh reports the FUSE tier as skipped where they are missing",
        fuse.err()
    );
}

/// Storage shared by the mounts of one test: a database and a block directory.
pub struct Storage {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Storage {
    pub fn new() -> anyhow::Result<Storage> {
        Storage::on(PgServer::shared())
    }

    /// [`Storage::new`] for async tests.
    pub async fn create() -> anyhow::Result<Storage> {
        Storage::create_on(PgServer::shared()).await
    }

    /// Storage whose database lives on `pg` (a server of the test's own, e.g. a durable one).
    pub fn on(pg: &PgServer) -> anyhow::Result<Storage> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(Storage::create_on(pg))
    }

    async fn create_on(pg: &PgServer) -> anyhow::Result<Storage> {
        require_fuse();
        let db = pg.create_database().await?;
        Ok(Storage {
            url: pg.url(&db),
            dir: tempfile::tempdir()?,
        })
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "--metadata-url".into(),
            self.url.clone(),
            "--store".into(),
            format!("file://{}", self.dir.path().join("blocks").display()),
        ]
    }

    /// Runs an admin subcommand and returns its stdout.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(binary());
        cmd.args(args).args(self.args());
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A live mount.
pub struct Mount {
    pub dir: PathBuf,
    _holder: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub state: tempfile::TempDir,
}

pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && Path::new(f[4]) == dir && l.contains(" - fuse")
    })
}

impl Mount {
    /// Mounts the storage's workspace on a fresh temp dir.
    pub fn new(storage: &Storage, extra: &[&str]) -> anyhow::Result<Mount> {
        let holder = tempfile::tempdir()?;
        let dir = holder.path().join("mnt");
        std::fs::create_dir(&dir)?;
        let mut m = Mount::at(storage, &dir, extra)?;
        m._holder = Some(holder);
        Ok(m)
    }

    /// Mounts on `dir`.
    pub fn at(storage: &Storage, dir: &Path, extra: &[&str]) -> anyhow::Result<Mount> {
        let state = tempfile::tempdir()?;
        let mut cmd = Command::new(binary());
        cmd.arg("mount")
            .args(storage.args())
            .arg("--state-dir")
            .arg(state.path())
            .args(extra)
            .arg("--foreground")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Not canonicalize(dir): a dead mount point fails stat with ENOTCONN until cleaned.
        let parent = dir.parent().context("mount point has a parent")?;
        let dir = std::fs::canonicalize(parent)?.join(dir.file_name().context("mount point name")?);
        let mut child = cmd.spawn().context("start studiodrive-csi mount")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        // A dead mount left on `dir` (kill -9) is still listed, and the kernel may answer stat
        // from cached attributes; listing the root reaches the file system.
        while !(is_mounted(&dir) && std::fs::read_dir(&dir).is_ok()) {
            if let Some(status) = child.try_wait()? {
                bail!("mount exited early: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("mount did not appear");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mount {
            dir,
            _holder: None,
            child: Some(child),
            state,
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// SIGKILL: the kernel mount stays behind, dead.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait: a clean unmount.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("not running")
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(c.wait()?)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if is_mounted(&self.dir) {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Polls `check` until it returns true or `limit` passes (a deadline, not a sleep-as-sync).
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
