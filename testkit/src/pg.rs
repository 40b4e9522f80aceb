//! A throwaway PostgreSQL server for tests.
//!
//! `initdb` runs into a fresh temp dir; the server listens on a Unix socket inside that dir and
//! on 127.0.0.1 at a free port. PostgreSQL refuses to run as root, so when the tests run as root
//! the data dir is handed to the `postgres` user and the server runs as that user.
//!
//! Cleanup must also happen when a test panics or the test binary exits without running
//! destructors (a `static` shared server is never dropped). A tiny watchdog shell process holds
//! the read end of a pipe whose write end only this process owns: when the pipe closes, for
//! whatever reason, the watchdog stops the server and removes the directory.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, bail};

/// A running PostgreSQL server owned by the test process.
pub struct PgServer {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    extra_options: String,
    /// Production durability: fsync, full-page writes and synchronous commit on (the default
    /// test server trades them for speed; the durability tier must not).
    durable: bool,
    watchdog: Option<(Child, ChildStdin)>,
}

/// Where the PostgreSQL server binaries live: `PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<v>/bin`, else the directory of `initdb` on PATH.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries not found: install postgresql (apt-get install postgresql) or set PG_BIN_DIR"
    )
}

impl PgServer {
    /// A server shared by all tests of this test binary. Each test should use its own
    /// database ([`PgServer::create_database`]).
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| PgServer::start().expect("start the shared test PostgreSQL"))
    }

    /// Initialises and starts a new server in a fresh temp dir.
    pub fn start() -> anyhow::Result<PgServer> {
        PgServer::start_with_tls(None)
    }

    /// Like [`PgServer::start`], with PostgreSQL's production durability settings (`fsync`,
    /// `full_page_writes`, `synchronous_commit` on, and a synced `initdb`), for tests of what
    /// survives a crash.
    pub fn start_durable() -> anyhow::Result<PgServer> {
        PgServer::start_with(None, true)
    }

    /// Like [`PgServer::start`]; with `Some((cert_pem, key_pem))` the server also accepts TLS
    /// on its TCP port with that certificate.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> anyhow::Result<PgServer> {
        PgServer::start_with(tls, false)
    }

    fn start_with(tls: Option<(&str, &str)>, durable: bool) -> anyhow::Result<PgServer> {
        let bin_dir = find_bin_dir()?;
        let root = tempfile::Builder::new()
            .prefix("studiodrive-pg-")
            .tempdir()?
            .keep();
        let run_as = postgres_user_if_root()?;
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(&root, Some(uid.into()), Some(gid.into()))
                .context("chown the PostgreSQL temp dir to the postgres user")?;
        }
        let port = free_port()?;
        let mut server = PgServer {
            root,
            bin_dir,
            port,
            run_as,
            extra_options: String::new(),
            durable,
            watchdog: None,
        };
        server.spawn_watchdog()?;
        server.initdb()?;
        if let Some((cert, key)) = tls {
            server.install_certificate(cert, key)?;
        }
        server.resume()?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        if !self.durable {
            cmd.arg("--no-sync");
        }
        let out = cmd.output().context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn install_certificate(&mut self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let cert = self.data_dir().join("server.crt");
        let key = self.data_dir().join("server.key");
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = self.run_as {
            for f in [&cert, &key] {
                nix::unistd::chown(f, Some(uid.into()), Some(gid.into()))?;
            }
        }
        self.extra_options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        Ok(())
    }

    /// Starts (or restarts after [`PgServer::stop`]) the server and waits until it accepts
    /// connections.
    pub fn resume(&self) -> anyhow::Result<()> {
        let durability = if self.durable {
            "-c fsync=on -c full_page_writes=on -c synchronous_commit=on"
        } else {
            "-c fsync=off -c full_page_writes=off"
        };
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 {durability} -c max_connections=300 \
             -c shared_buffers=128MB -c max_pred_locks_per_transaction=256",
            self.root.display(),
            self.port
        ) + &self.extra_options;
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .context("run pg_ctl start")?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Freezes the server and every backend (SIGSTOP), as a host that stopped answering
    /// without closing its connections: the kernel still accepts and acknowledges, nothing
    /// replies. The server runs again when the returned guard drops.
    pub fn freeze(&self) -> anyhow::Result<Frozen> {
        let pids = self.processes()?;
        let frozen = Frozen { pids };
        for pid in &frozen.pids {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .with_context(|| format!("SIGSTOP {pid}"))?;
        }
        Ok(frozen)
    }

    /// The postmaster and its children (backends and background workers), postmaster first.
    fn processes(&self) -> anyhow::Result<Vec<i32>> {
        let pid_file =
            std::fs::read_to_string(self.data_dir().join("postmaster.pid")).context("read postmaster.pid")?;
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no pid")?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if proc_stat_fields(&stat).and_then(|f| f.get(1).and_then(|p| p.parse::<i32>().ok()))
                == Some(postmaster)
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// CPU seconds the server has used so far: its live processes' user and system time, and
    /// the time of the backends that have exited (the postmaster's reaped children).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")? as f64;
        let pids = self.processes()?;
        let mut total = 0u64;
        for (i, pid) in pids.iter().enumerate() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue; // exited since it was listed: its time is in the postmaster's children
            };
            let fields = proc_stat_fields(&stat).context("parse /proc/PID/stat")?;
            // After "(comm)": state is field 0, utime 11, stime 12, cutime 13, cstime 14.
            let take = if i == 0 { 11..15 } else { 11..13 };
            for f in &fields[take] {
                total += f.parse::<u64>().context("a /proc/PID/stat time field")?;
            }
        }
        Ok(total as f64 / ticks)
    }

    /// Stops the server at once (as a crash would: `immediate` mode), keeping its data.
    pub fn stop(&self) -> anyhow::Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .context("run pg_ctl stop")?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A libpq-style connection string for `dbname` over the Unix socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.root.display(),
            self.port
        )
    }

    /// A connection string for `dbname` over TCP on 127.0.0.1.
    pub fn tcp_url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Creates a fresh, empty database with a unique name and returns its name.
    pub async fn create_database(&self) -> anyhow::Result<String> {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .context("connect to the test PostgreSQL")?;
        let task = tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        drop(client);
        let _ = task.await;
        Ok(name)
    }

    fn spawn_watchdog(&mut self) -> anyhow::Result<()> {
        // Runs as the test's own user (root may signal the server and remove its files).
        let script = r#"
            read -r _ignored
            pid=$(head -n 1 "$PGROOT/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pid" ]; then
                kill -INT "$pid" 2>/dev/null
                i=0
                while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
                kill -KILL "$pid" 2>/dev/null
            fi
            rm -rf "$PGROOT"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("PGROOT", &self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the PostgreSQL watchdog")?;
        let stdin = child.stdin.take().context("watchdog stdin")?;
        self.watchdog = Some((child, stdin));
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn postgres_user_if_root() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")?
        .context("running as root needs a `postgres` user to own the test database (apt-get install postgresql creates it)")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// A currently free TCP port on 127.0.0.1. Another process could take it before the server
/// binds it; for a test machine that window is acceptable.
/// A frozen server (see [`PgServer::freeze`]); dropping it lets the server run again.
pub struct Frozen {
    pids: Vec<i32>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
}

/// The fields of a /proc/PID/stat line after "(comm)", which may itself hold spaces.
fn proc_stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (fields.len() > 15).then_some(fields)
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
