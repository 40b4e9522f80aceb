//! Durability tier: PostgreSQL with its production settings (fsync, full-page writes and
//! synchronous commit on; every other tier runs with them off for speed) crashes in the middle
//! of a write load, and so does the mount. Every file whose `close()` returned 0 must come
//! back with its exact bytes; a file whose close failed may be missing or whole, never torn.
//!
//! What this cannot show: a power cut. PostgreSQL's crash is `pg_ctl stop -m immediate` (its
//! processes quit without a checkpoint, so restart replays the WAL), and the kernel's page
//! cache survives it. It does show that the mount acknowledges a close only after the commit
//! has been acknowledged by the server, and that recovery with production settings keeps it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{Mount, Storage, eventually};
use drive_testkit::pg::PgServer;

/// The bytes of file `i`: distinct per file and spanning several 64 KiB blocks, so a torn
/// file (some blocks of the map missing, or another file's) differs from them.
fn content(i: u32) -> Vec<u8> {
    let len = 150_000 + (i as usize * 7919) % 100_000;
    (0..len)
        .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503)) as u8)
        .collect()
}

#[derive(Debug, PartialEq)]
enum Closed {
    Acknowledged,
    Failed(String),
}

// Catches: a close acknowledged before its commit is durable (an asynchronous commit, a
// write-behind of new files without a barrier at close, a block map committed in a second
// transaction after the answer), and a partial file after recovery.
#[test]
fn acknowledged_closes_survive_a_crash_of_postgresql_and_of_the_mount() -> anyhow::Result<()> {
    let pg = PgServer::start_durable()?;
    let storage = Storage::on(&pg)?;
    let mut mount = Mount::new(&storage, &["--block-size", "65536"])?;
    fs::create_dir(mount.path("renders"))?;

    let outcomes: Arc<Mutex<BTreeMap<u32, Closed>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let (dir, outcomes, stop) = (mount.path("renders"), outcomes.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    let result = fs::File::create(dir.join(format!("f{i:05}")))
                        .and_then(|mut f| {
                            f.write_all(&content(i))?;
                            f.sync_all()?;
                            Ok(f)
                        })
                        .map(drop);
                    let closed = match result {
                        Ok(()) => Closed::Acknowledged,
                        Err(e) => Closed::Failed(e.to_string()),
                    };
                    let failed = matches!(closed, Closed::Failed(_));
                    outcomes.lock().unwrap().insert(i, closed);
                    if failed {
                        break; // the store is gone; later files would fail the same way
                    }
                    i += 2;
                }
            })
        })
        .collect();

    // Crash PostgreSQL while both writers are busy.
    let acknowledged = |o: &BTreeMap<u32, Closed>| o.values().filter(|c| **c == Closed::Acknowledged).count();
    assert!(
        eventually(std::time::Duration::from_secs(120), || acknowledged(
            &outcomes.lock().unwrap()
        ) >= 40),
        "the writers did not close 40 files"
    );
    pg.stop()?;
    // Then the mount, without letting it finish anything: the kernel mount is left dead.
    let settle = std::time::Duration::from_secs(60);
    eventually(settle, || {
        outcomes
            .lock()
            .unwrap()
            .values()
            .any(|c| matches!(c, Closed::Failed(_)))
    });
    mount.kill9()?;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer thread");
    }
    drop(mount);

    pg.resume()?;
    let mount = Mount::new(&storage, &["--block-size", "65536"])?;
    let outcomes = outcomes.lock().unwrap();
    let mut lost = Vec::new();
    for (i, closed) in outcomes.iter() {
        let path = mount.path(&format!("renders/f{i:05}"));
        match (closed, fs::read(&path)) {
            (_, Ok(bytes)) if bytes == content(*i) => {}
            (Closed::Failed(_), Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            (closed, got) => lost.push(format!(
                "f{i:05} ({closed:?}): {}",
                match got {
                    Ok(b) => format!(
                        "{} bytes that differ from the {} written",
                        b.len(),
                        content(*i).len()
                    ),
                    Err(e) => e.to_string(),
                }
            )),
        }
    }
    assert!(lost.is_empty(), "after the crash:\n  {}", lost.join("\n  "));
    // The listing holds nothing beyond what was written (no half-created names).
    for e in fs::read_dir(mount.path("renders"))? {
        let name = e?.file_name().into_string().expect("utf-8 name");
        let i: u32 = name.trim_start_matches('f').parse().expect("a writer's name");
        assert!(outcomes.contains_key(&i), "{name} was never written");
    }
    eprintln!(
        "{} files acknowledged before the crash, {} in flight; all intact",
        acknowledged(&outcomes),
        outcomes.len() - acknowledged(&outcomes)
    );
    Ok(())
}
