//! Embedded mode (`mount` without --metadata-url) is private to the user who runs it: another
//! local user can neither connect to its PostgreSQL nor read its blocks, cache or staging.

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Backend, Mount};

/// No storage flags: the metadata, blocks, cache and staging all live in the state dir.
struct Embedded;

impl Backend for Embedded {
    fn storage_args(&self) -> Vec<String> {
        Vec::new()
    }
}

fn pg_bin(tool: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("{tool} not found"))
}

/// Stops the embedded server when the test ends (it outlives its mounts by design).
struct StopServer(PathBuf);

impl Drop for StopServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.0)
            .output();
    }
}

/// Runs `args` as uid/gid 65534 with no supplementary groups.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .args(args)
        .env_remove("PGPASSWORD")
        .current_dir("/")
        .output()
        .expect("run setpriv")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every regular file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode(&path), 0o700, "folder {}", path.display());
            out.extend(files(&path));
        } else if entry.file_type().unwrap().is_file() {
            out.push(path);
        }
    }
    out
}

/// `SELECT 41 + 1` through the socket of the embedded server under `state`, as this user,
/// with `password` if given.
fn owner_select(state: &Path, password: Option<&str>) -> Output {
    let sock = state.join("postgres/run");
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args(["-X", "-w", "-h"])
        .arg(&sock)
        .args(["-U", "postgres", "-d", "postgres", "-tAc", "SELECT 41 + 1"])
        .env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().expect("run psql")
}

/// The password the embedded server under `state` was given.
fn password_of(state: &Path) -> String {
    fs::read_to_string(state.join("postgres/password"))
        .expect("the password file")
        .trim()
        .to_string()
}

#[track_caller]
fn assert_refused(what: &str, out: &Output, because: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: another user succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        because.iter().any(|b| stderr.contains(b)),
        "{what}: failed for another reason than {because:?}: {stderr}"
    );
}

// Catches: trust authentication or a socket others can reach (any local user becomes
// PostgreSQL superuser), and block, cache or staging files (or their folders) others can
// read. Needs root beyond FUSE: it drops to uid 65534 to play the other user.
#[test]
fn as_root_embedded_mode_is_private_to_its_user() -> anyhow::Result<()> {
    common::require_fuse();
    let m = Mount::new(&Embedded, &[])?;
    let state = m.state.path().to_path_buf();
    let _stop = StopServer(state.join("postgres/data"));
    let secret = b"frames nobody else may read".repeat(1000);
    fs::write(m.path("secret.exr"), &secret)?;
    // An open file with written bytes: its write session holds a staging file.
    let mut open = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("staged.exr"))?;
    open.write_all(b"staged, not yet committed")?;
    open.flush()?;

    // The owner works.
    assert_eq!(fs::read(m.path("secret.exr"))?, secret, "the owner reads back");
    let owner = owner_select(&state, Some(&password_of(&state)));
    assert!(
        owner.status.success(),
        "the owner connects with the password: {owner:?}"
    );
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "42");
    let no_password = owner_select(&state, None);
    assert_refused("a connection without the password", &no_password, &["password"]);
    let sock = state.join("postgres/run");
    let sock_s = sock.to_string_lossy().to_string();
    let psql_s = pg_bin("psql").to_string_lossy().to_string();

    // Modes: the state dir keeps others out (its group search bit, if any, is the mask of
    // the ACL entry that lets the postgres user alone through), files 0600.
    assert_eq!(mode(&state) & 0o067, 0, "state dir {:o}", mode(&state));
    assert_eq!(mode(&sock), 0o700, "socket folder");
    assert_eq!(mode(&state.join("postgres/password")), 0o600, "password file");
    // The node cache holds no copies of a local store's written blocks (it would only
    // duplicate them); whatever it holds is checked with the blocks.
    let blocks: Vec<PathBuf> = files(&state.join("blocks"));
    let cached: Vec<PathBuf> = files(&state.join("cache"));
    assert!(!blocks.is_empty(), "blocks {blocks:?}, cache {cached:?}");
    for f in blocks.iter().chain(&cached) {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&state.join("staging")), 0o700, "staging folder");
    // The staging file is unlinked at creation: reach it through the mount's descriptors.
    let pid = m.pid().expect("the mount runs");
    let staged: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .map(|e| e.path())
        .filter(|fd| fs::read_link(fd).is_ok_and(|t| t.starts_with(state.join("staging"))))
        .collect();
    assert!(!staged.is_empty(), "the mount holds a staging file");
    for fd in &staged {
        assert_eq!(mode(fd), 0o600, "staging file {}", fd.display());
    }

    // Another user gets nowhere.
    let denied = ["Permission denied"];
    let out = as_nobody(&[
        &psql_s, "-X", "-w", "-h", &sock_s, "-U", "postgres", "-d", "postgres", "-c", "SELECT 1",
    ]);
    assert_refused(
        "psql on the socket",
        &out,
        &["Permission denied", "No such file", "password"],
    );
    let cache_file = cached.first().map(|f| ("a cache file", f));
    for (what, f) in [("a block file", &blocks[0]), ("the staging file", &staged[0])]
        .into_iter()
        .chain(cache_file)
    {
        let out = as_nobody(&["cat", &f.to_string_lossy()]);
        assert_refused(what, &out, &denied);
    }
    let out = as_nobody(&["ls", &state.to_string_lossy()]);
    assert_refused("listing the state dir", &out, &denied);

    drop(open);
    assert_eq!(fs::read(m.path("staged.exr"))?, b"staged, not yet committed");
    Ok(())
}

// Catches: a state dir made by an older version (trust authentication, no password) left
// open after an upgrade. Needs root beyond FUSE: the server runs as the postgres user.
#[test]
fn as_root_an_embedded_cluster_that_trusted_everyone_is_migrated_to_a_password() -> anyhow::Result<()> {
    common::require_fuse();
    let m = Mount::new(&Embedded, &[])?;
    let state = m.state.path().to_path_buf();
    let data = state.join("postgres/data");
    let _stop = StopServer(data.clone());
    // Make it what an older version left: trust authentication and no password file.
    let stopped = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("pg_ctl"))
        .args(["stop", "-m", "fast", "-D"])
        .arg(&data)
        .output()?;
    assert!(stopped.status.success(), "{stopped:?}");
    fs::write(data.join("pg_hba.conf"), "local all all trust\n")?;
    fs::remove_file(state.join("postgres/password"))?;

    // Any command on the state dir starts the server, migrating it first; the workspace the
    // mount created is still there (the listing needs it).
    let listed = common::studiodrive()
        .args(["snapshot", "list", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .output()?;
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(mode(&state.join("postgres/password")), 0o600);
    assert_refused(
        "a connection without the password",
        &owner_select(&state, None),
        &["password"],
    );
    let owner = owner_select(&state, Some(&password_of(&state)));
    assert!(
        owner.status.success(),
        "the owner connects with the new password: {owner:?}"
    );
    let hba = fs::read_to_string(data.join("pg_hba.conf"))?;
    assert!(!hba.contains("trust"), "{hba}");
    Ok(())
}
