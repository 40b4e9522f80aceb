//! File locks across mounts: two mounts of one workspace (two pods, two nodes) exclude each
//! other with fcntl record locks and flock as processes on one local file system do, a
//! holder's close frees its locks, and the locks of a mount that died are free once its lease
//! runs out. The lockers are Python processes (fcntl module), as an application would be.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Mount, Storage, eventually};

const LEASE_MS: &str = "1500";
/// Bounds a wait that must end (a lock that must be granted) so a broken build fails the
/// test instead of hanging it: not a speed goal.
const MUST_END: Duration = Duration::from_secs(30);

const LOCKER: &str = r#"
import fcntl, os, struct, sys
path, api, mode, start, length, wait = sys.argv[1:7]
f = open(path, 'r+b')
if api == 'getlk':
    want = fcntl.F_WRLCK if mode == 'ex' else fcntl.F_RDLCK
    got = fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi4x', want, 0, int(start), int(length), 0))
    t, _, s, l, pid = struct.unpack('hhqqi4x', got)
    kind = {fcntl.F_UNLCK: 'free', fcntl.F_WRLCK: 'ex', fcntl.F_RDLCK: 'sh'}[t]
    print(kind, s, l, pid, flush=True)
    sys.exit(0)
op = {'ex': fcntl.LOCK_EX, 'sh': fcntl.LOCK_SH}[mode]
if wait == 'nb':
    op |= fcntl.LOCK_NB
try:
    if api == 'flock':
        fcntl.flock(f, op)
    else:
        fcntl.lockf(f, op, int(length), int(start))
except (BlockingIOError, PermissionError):
    print('busy', flush=True)
    sys.exit(0)
print('locked', os.getpid(), flush=True)
sys.stdin.read()
"#;

/// A locker process: its first line of output, and its stdin (dropping it ends the process
/// and so its locks).
struct Locker {
    child: Child,
    stdin: Option<ChildStdin>,
    line: mpsc::Receiver<String>,
}

impl Locker {
    fn start(path: &std::path::Path, api: &str, mode: &str, range: (u64, u64), wait: bool) -> Locker {
        let mut child = Command::new("python3")
            .args(["-c", LOCKER])
            .arg(path)
            .args([
                api,
                mode,
                &range.0.to_string(),
                &range.1.to_string(),
                if wait { "wait" } else { "nb" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stdout).read_line(&mut s);
            let _ = tx.send(s.trim().to_string());
        });
        Locker {
            stdin: child.stdin.take(),
            child,
            line,
        }
    }

    /// The locker's answer ("locked <pid>", "busy", or a getlk report).
    fn answer(&self) -> String {
        self.line
            .recv_timeout(MUST_END)
            .unwrap_or_else(|_| panic!("no answer from the locker within {MUST_END:?}"))
    }

    /// Ends the process (closing its file: its locks go) and waits for it.
    fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// One non-blocking attempt; true when it got the lock (and the attempt is over).
fn try_lock(path: &std::path::Path, api: &str, mode: &str, range: (u64, u64)) -> bool {
    let probe = Locker::start(path, api, mode, range, false);
    let answer = probe.answer();
    probe.finish();
    assert!(answer == "busy" || answer.starts_with("locked"), "{answer}");
    answer.starts_with("locked")
}

fn mounts() -> anyhow::Result<(Storage, Mount, Mount)> {
    let storage = Storage::new()?;
    let a = Mount::new(&storage, &["--lock-lease-ms", LEASE_MS])?;
    let b = Mount::new(&storage, &["--lock-lease-ms", LEASE_MS])?;
    std::fs::write(a.path("scene.usd"), b"scene")?;
    assert!(
        eventually(Duration::from_secs(10), || b.path("scene.usd").exists()),
        "the other mount sees the file"
    );
    Ok((storage, a, b))
}

// Catches: locks kept by each mount's kernel only (two mounts both get the exclusive lock:
// what FUSE does when the file system does not implement them), a lock not freed by its
// holder's close, shared locks that exclude each other, a range check that treats any two
// ranges of a file as overlapping (or none), and F_GETLK answering "free" or the wrong holder.
#[test]
fn locks_exclude_each_other_across_mounts() -> anyhow::Result<()> {
    let (_storage, a, b) = mounts()?;
    let (on_a, on_b) = (a.path("scene.usd"), b.path("scene.usd"));
    let whole = (0, 0);
    for api in ["fcntl", "flock"] {
        let holder = Locker::start(&on_a, api, "ex", whole, false);
        let answer = holder.answer();
        assert!(
            answer.starts_with("locked"),
            "{api}: the first lock is granted: {answer}"
        );
        assert!(
            !try_lock(&on_b, api, "ex", whole),
            "{api}: exclusive on the other mount"
        );
        assert!(
            !try_lock(&on_b, api, "sh", whole),
            "{api}: shared on the other mount"
        );
        assert!(
            !try_lock(&on_a, api, "ex", whole),
            "{api}: another process on the same mount"
        );
        holder.finish();
        assert!(
            try_lock(&on_b, api, "ex", whole),
            "{api}: free once the holder closed the file"
        );

        let reader = Locker::start(&on_a, api, "sh", whole, false);
        assert!(reader.answer().starts_with("locked"));
        assert!(try_lock(&on_b, api, "sh", whole), "{api}: shared locks share");
        assert!(
            !try_lock(&on_b, api, "ex", whole),
            "{api}: exclusive waits for readers"
        );
        reader.finish();
    }

    // Byte ranges (fcntl): bytes 0..100 held; 100..200 is free, 50..150 is not.
    let holder = Locker::start(&on_a, "fcntl", "ex", (0, 100), false);
    let pid: u32 = holder.answer().trim_start_matches("locked ").parse()?;
    assert!(
        try_lock(&on_b, "fcntl", "ex", (100, 100)),
        "a range after the held one"
    );
    assert!(
        !try_lock(&on_b, "fcntl", "ex", (50, 100)),
        "a range overlapping the held one"
    );
    let report = Locker::start(&on_b, "getlk", "ex", (10, 5), false);
    assert_eq!(
        report.answer(),
        format!("ex 0 100 {pid}"),
        "F_GETLK names the holder and its range"
    );
    report.finish();
    let report = Locker::start(&on_b, "getlk", "ex", (200, 10), false);
    assert!(report.answer().starts_with("free"), "F_GETLK past the held range");
    report.finish();
    holder.finish();
    Ok(())
}

// Catches: a blocking lock (F_SETLKW, flock without LOCK_NB) that fails instead of waiting,
// or waits forever after the holder let go; and the locks of a killed mount held forever
// (no lease), so that every other mount waits for a dead holder.
#[test]
fn a_waiter_gets_the_lock_when_it_is_freed_and_a_dead_mount_loses_its_locks() -> anyhow::Result<()> {
    let (_storage, mut a, b) = mounts()?;
    let (on_a, on_b) = (a.path("scene.usd"), b.path("scene.usd"));
    let whole = (0, 0);

    let holder = Locker::start(&on_a, "fcntl", "ex", whole, false);
    assert!(holder.answer().starts_with("locked"));
    let waiter = Locker::start(&on_b, "fcntl", "ex", whole, true);
    assert!(
        !try_lock(&on_b, "fcntl", "ex", whole),
        "still held while the waiter waits"
    );
    assert!(
        waiter.line.try_recv().is_err(),
        "the waiter answered while the holder still held the lock"
    );
    holder.finish();
    assert!(waiter.answer().starts_with("locked"), "the waiter got the lock");
    waiter.finish();

    // A holder whose mount is killed: its process keeps the (dead) file open, so nothing
    // releases the lock but the lease.
    let holder = Locker::start(&on_a, "flock", "ex", whole, false);
    assert!(holder.answer().starts_with("locked"));
    assert!(!try_lock(&on_b, "flock", "ex", whole), "held by the live mount");
    a.kill9()?;
    let waiter = Locker::start(&on_b, "flock", "ex", whole, true);
    assert!(
        waiter.answer().starts_with("locked"),
        "the dead mount's lock is free once its lease ran out"
    );
    waiter.finish();
    holder.finish();
    Ok(())
}
