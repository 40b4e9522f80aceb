//! The embedded PostgreSQL of a state directory: initialised on first use, started when not
//! running, shared by every mount of the same state directory. It listens on a Unix socket
//! inside the state directory only (no TCP port), with trust authentication.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

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

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses root).
fn run(bin: &Path, tool: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let exe = bin.join(tool);
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args);
    cmd.output().with_context(|| format!("run {}", exe.display()))
}

/// Makes `dir` (and its parents' traversal) usable by the postgres user when running as root.
fn hand_over(dir: &Path) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("chown {} to postgres failed", dir.display());
    }
    // The server must traverse the state dir's parents to reach its socket directory.
    let mut p = dir.parent();
    while let Some(d) = p {
        let _ = Command::new("chmod").arg("o+x").arg(d).status();
        p = d.parent();
    }
    Ok(())
}

/// Ensures the server of `root` runs and returns its connection string.
pub fn ensure_running(root: &Path) -> anyhow::Result<String> {
    let data = root.join("data");
    let sock = root.join("run");
    std::fs::create_dir_all(&sock)?;
    let bin = bin_dir()?;
    let data_s = data.to_string_lossy().to_string();
    if !data.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&data)?;
        hand_over(root)?;
        let out = run(
            &bin,
            "initdb",
            &["-D", &data_s, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        )?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    hand_over(root)?;
    let status = run(&bin, "pg_ctl", &["status", "-D", &data_s])?;
    if !status.status.success() {
        let opts = format!(
            "-k {} -c listen_addresses='' -c max_connections=200",
            sock.display()
        );
        let log = root.join("postgres.log").to_string_lossy().to_string();
        let out = run(
            &bin,
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", &data_s, "-l", &log, "-o", &opts],
        )?;
        // Another mount of the same state dir may have started it meanwhile: check again.
        if !out.status.success() && !run(&bin, "pg_ctl", &["status", "-D", &data_s])?.status.success() {
            bail!(
                "PostgreSQL did not start (see {log}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(format!("host={} user=postgres dbname=postgres", sock.display()))
}
