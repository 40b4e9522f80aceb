//! The embedded PostgreSQL of a state directory: initialised on first use, started when not
//! running, shared by every mount of the same state directory.
//!
//! It is private to the user who runs it. It listens on a Unix socket only (no TCP port), in
//! a 0700 directory, and every connection authenticates with scram-sha-256 using a random
//! password generated at initdb into a 0600 file (`<root>/password`). As root the server
//! runs as `postgres` (it refuses root): the cluster directory is handed to that user, and
//! the 0700 state directory, and any ancestor that user could not traverse, get a POSIX ACL
//! entry granting that one user traversal (`setfacl`, Debian package `acl`); nothing is
//! opened to other users. A cluster made by an older version (trust authentication) is
//! migrated at its next start: password set, `pg_hba.conf` rewritten, configuration
//! reloaded.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The only way in: the socket, by password. Written over what initdb or an older version
/// wrote.
const PG_HBA: &str = "# Written by studiodrive: local socket connections only, by password.\n\
                      local all all scram-sha-256\n";

/// The newest PostgreSQL server binaries installed (Debian layout, then $PATH).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v initdb"]).output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(dir) = p.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    bail!("PostgreSQL server binaries not found: install them with `apt-get install postgresql`")
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses root),
/// with `input` on its standard input (secrets go there, never into argv).
fn run(bin: &Path, tool: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<std::process::Output> {
    let exe = bin.join(tool);
    let mut cmd = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("run {}", exe.display()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("run {}", exe.display()))
}

/// Creates `dir` 0700 if missing and takes any access away from others if it exists.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    drive::private_files::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    restrict(dir)
}

/// Takes group and other access away from the directory `dir` (0700), keeping a group
/// search bit: that is the mask of an ACL entry that lets only the postgres user traverse it.
pub(crate) fn restrict(dir: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o067 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    }
    Ok(())
}

/// The password of the cluster under `root`, generated into a new 0600 file when missing.
fn password(root: &Path) -> anyhow::Result<String> {
    let file = root.join("password");
    if let Ok(existing) = std::fs::read_to_string(&file) {
        return Ok(existing.trim().to_string());
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut out =
        drive::private_files::create_new(&file).with_context(|| format!("create {}", file.display()))?;
    out.write_all(secret.as_bytes())?;
    out.write_all(b"\n")?;
    out.sync_all()?;
    Ok(secret)
}

/// As root: gives the cluster directory `root` to the postgres user, and lets that user alone
/// traverse the directories above it it could not (the state dir is 0700).
fn hand_over(root: &Path) -> anyhow::Result<()> {
    if !as_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(root)
        .status()?;
    if !status.success() {
        bail!("chown {} to postgres failed", root.display());
    }
    let postgres = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
    let mut dir = root.parent();
    while let Some(d) = dir {
        let meta = std::fs::metadata(d)?;
        let others_search = meta.mode() & 0o001 != 0;
        if !others_search && meta.uid() != postgres.uid.as_raw() {
            grant_traversal(d)?;
        }
        dir = d.parent();
    }
    Ok(())
}

/// An ACL entry letting the postgres user, and no one else, traverse `dir`.
fn grant_traversal(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("setfacl")
        .args(["-m", "u:postgres:x"])
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("setfacl -m u:postgres:x {} failed: {s}", dir.display()),
        Err(e) => bail!(
            "the embedded PostgreSQL runs as user postgres, which must traverse {} (0700): \
             install setfacl (`apt-get install acl`), or pass --metadata-url: {e}",
            dir.display()
        ),
    }
}

/// Ensures the server of `root` runs and returns its connection string (with its password:
/// keep it out of logs and argv).
pub fn ensure_running(root: &Path) -> anyhow::Result<String> {
    let data = root.join("data");
    let sock = root.join("run");
    private_dir(root)?;
    private_dir(&sock)?;
    let secret = password(root)?;
    let bin = bin_dir()?;
    let data_s = data.to_string_lossy().to_string();
    let hba = data.join("pg_hba.conf");
    let fresh = !data.join("PG_VERSION").exists();
    if fresh {
        private_dir(&data)?;
        hand_over(root)?;
        let pwfile = root.join("password").to_string_lossy().to_string();
        let out = run(
            &bin,
            "initdb",
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                &pwfile,
                "-E",
                "UTF8",
            ],
            None,
        )?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&hba, PG_HBA)?;
    }
    let hba_now = std::fs::read_to_string(&hba).with_context(|| format!("read {}", hba.display()))?;
    hand_over(root)?;
    let status = run(&bin, "pg_ctl", &["status", "-D", &data_s], None)?;
    if !status.status.success() {
        let opts = format!(
            "-k {} -c listen_addresses='' -c unix_socket_permissions=0700 -c max_connections=200",
            sock.display()
        );
        let log = root.join("postgres.log").to_string_lossy().to_string();
        let out = run(
            &bin,
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", &data_s, "-l", &log, "-o", &opts],
            None,
        )?;
        // Another mount of the same state dir may have started it meanwhile: check again.
        if !out.status.success()
            && !run(&bin, "pg_ctl", &["status", "-D", &data_s], None)?
                .status
                .success()
        {
            bail!(
                "PostgreSQL did not start (see {log}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if hba_now != PG_HBA {
        // A cluster of an older version trusted every local connection: give it a password
        // while it still lets us in. (Any other content: initdb's, left by an interrupted
        // first start, when the password is set already.)
        if hba_now.contains("trust") {
            set_password(&bin, &sock, &secret)?;
        }
        std::fs::write(&hba, PG_HBA).with_context(|| format!("write {}", hba.display()))?;
        let out = run(&bin, "pg_ctl", &["reload", "-D", &data_s], None)?;
        if !out.status.success() {
            bail!("pg_ctl reload failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(format!(
        "host={} user=postgres password={secret} dbname=postgres",
        sock.display()
    ))
}

/// Sets the password of a running cluster that trusts local connections (the password goes
/// to psql on its standard input, never into argv).
fn set_password(bin: &Path, sock: &Path, secret: &str) -> anyhow::Result<()> {
    tracing::info!("securing an embedded PostgreSQL made by an older version: password authentication");
    let sock_s = sock.to_string_lossy().to_string();
    let sql =
        format!("SET password_encryption = 'scram-sha-256';\nALTER ROLE postgres PASSWORD '{secret}';\n");
    let out = run(
        bin,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &sock_s,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-f",
            "-",
        ],
        Some(&sql),
    )?;
    if !out.status.success() {
        bail!(
            "could not set a password on the embedded PostgreSQL under {} (made by an older version, \
             with trust authentication); stop its mounts and retry, or remove the state dir's \
             postgres folder to start afresh: {}",
            sock.parent().unwrap_or(sock).display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
