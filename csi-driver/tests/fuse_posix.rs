//! POSIX behaviour of a real FUSE mount: errno values, rename rules, O_APPEND, truncate,
//! holes, xattrs, deep trees, readdir while entries are added.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

use common::{Mount, Storage};

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn posix_behaviour() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &["--block-size", "65536"])?;

    // errno values
    assert_eq!(errno(&fs::read(m.path("missing")).unwrap_err()), libc::ENOENT);
    fs::create_dir(m.path("d"))?;
    assert_eq!(errno(&fs::create_dir(m.path("d")).unwrap_err()), libc::EEXIST);
    fs::write(m.path("d/f"), b"x")?;
    assert_eq!(errno(&fs::remove_dir(m.path("d")).unwrap_err()), libc::ENOTEMPTY);
    assert_eq!(errno(&fs::remove_file(m.path("d")).unwrap_err()), libc::EISDIR);
    assert_eq!(errno(&fs::read_dir(m.path("d/f")).unwrap_err()), libc::ENOTDIR);
    let long = "n".repeat(256);
    assert_eq!(
        errno(&fs::write(m.path(&long), b"").unwrap_err()),
        libc::ENAMETOOLONG
    );

    // rename rules: over a file replaces, dir over non-empty dir fails, into own subtree fails
    fs::write(m.path("a"), b"aaa")?;
    fs::write(m.path("b"), b"bbb")?;
    fs::rename(m.path("a"), m.path("b"))?;
    assert_eq!(fs::read(m.path("b"))?, b"aaa");
    assert!(!m.path("a").exists());
    fs::create_dir(m.path("e"))?;
    assert_eq!(
        errno(&fs::rename(m.path("e"), m.path("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(&fs::rename(m.path("d"), m.path("d/sub")).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(&fs::rename(m.path("b"), m.path("d")).unwrap_err()),
        libc::EISDIR
    );

    // permissions and ownership bits round-trip
    fs::set_permissions(m.path("b"), fs::Permissions::from_mode(0o640))?;
    assert_eq!(fs::metadata(m.path("b"))?.mode() & 0o7777, 0o640);

    // timestamps: utimens sets mtime; a write moves it forward
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let f = OpenOptions::new().write(true).open(m.path("b"))?;
    f.set_modified(t)?;
    drop(f);
    assert_eq!(fs::metadata(m.path("b"))?.modified()?, t);
    fs::write(m.path("b"), b"new")?;
    assert!(fs::metadata(m.path("b"))?.modified()? > t);

    // O_APPEND
    let mut f = OpenOptions::new().append(true).open(m.path("b"))?;
    f.write_all(b"+1")?;
    f.write_all(b"+2")?;
    drop(f);
    assert_eq!(fs::read(m.path("b"))?, b"new+1+2");

    // truncate down and up: the cut bytes read back as zeros
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("t"), &data)?;
    let f = OpenOptions::new().write(true).open(m.path("t"))?;
    f.set_len(70_000)?;
    f.set_len(150_000)?;
    drop(f);
    let got = fs::read(m.path("t"))?;
    assert_eq!(got.len(), 150_000);
    assert_eq!(&got[..70_000], &data[..70_000]);
    assert!(got[70_000..].iter().all(|&b| b == 0));

    // holes, and a partial overwrite in the middle of a block (read-modify-write)
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.path("h"))?;
    f.write_all_at(b"end", 5_000_000)?;
    drop(f);
    let got = fs::read(m.path("h"))?;
    assert_eq!(got.len(), 5_000_003);
    assert!(got[..5_000_000].iter().all(|&b| b == 0));
    assert_eq!(&got[5_000_000..], b"end");
    let mut f = OpenOptions::new().read(true).write(true).open(m.path("t"))?;
    f.seek(SeekFrom::Start(1000))?;
    f.write_all(b"MIDDLE")?;
    drop(f);
    let mut got = Vec::new();
    fs::File::open(m.path("t"))?.read_to_end(&mut got)?;
    assert_eq!(&got[1000..1006], b"MIDDLE");
    assert_eq!(&got[..1000], &data[..1000]);
    assert_eq!(&got[1006..70_000], &data[1006..70_000]);

    // hard links and symlinks
    fs::hard_link(m.path("b"), m.path("b2"))?;
    assert_eq!(fs::metadata(m.path("b"))?.nlink(), 2);
    fs::remove_file(m.path("b"))?;
    assert_eq!(fs::read(m.path("b2"))?, b"new+1+2");
    std::os::unix::fs::symlink("b2", m.path("s"))?;
    assert_eq!(fs::read_link(m.path("s"))?.to_str(), Some("b2"));
    assert_eq!(fs::read(m.path("s"))?, b"new+1+2");

    // rm -rf of a deep tree
    let mut p = m.path("deep");
    for i in 0..30 {
        p = p.join(format!("l{i}"));
    }
    fs::create_dir_all(&p)?;
    fs::write(p.join("leaf"), b"leaf")?;
    fs::remove_dir_all(m.path("deep"))?;
    assert_eq!(
        fs::metadata(m.path("deep")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // readdir while entries are added: every pre-existing entry is seen exactly once
    fs::create_dir(m.path("many"))?;
    for i in 0..1500 {
        fs::write(m.path(&format!("many/f{i:05}")), b"")?;
    }
    let mut seen = Vec::new();
    for (n, e) in fs::read_dir(m.path("many"))?.enumerate() {
        seen.push(e?.file_name().into_string().unwrap_or_default());
        if n % 100 == 0 {
            fs::write(m.path(&format!("many/new{n}")), b"")?;
        }
    }
    for i in 0..1500 {
        let name = format!("f{i:05}");
        assert_eq!(seen.iter().filter(|s| **s == name).count(), 1, "{name}");
    }
    Ok(())
}

/// Waits until the mount's kernel readahead (its backing device in sysfs) is `kb` KiB: the
/// mount sets it right after the kernel's INIT, which is when the mount starts answering.
fn assert_read_ahead_kb(m: &Mount, kb: u64) -> anyhow::Result<()> {
    let dev = fs::metadata(&m.dir)?.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now: u64 = fs::read_to_string(&path)?.trim().parse()?;
        if now == kb {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "read_ahead_kb stays {now}, expected {kb}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn sequential_reads_get_the_mounts_readahead_and_the_written_bytes() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    // Default: 4 MiB readahead, 4 MiB blocks (1 MiB reads lie inside one block).
    let m = Mount::new(&storage, &[])?;
    assert_read_ahead_kb(&m, 4096)?;
    // Not a multiple of anything: the last read is short, the file ends inside a block.
    let data: Vec<u8> = (0..(9 << 20) + 4321u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(m.path("seq"), &data)?;
    // Drop the kernel's copy so the reads reach the mount.
    let f = fs::File::open(m.path("seq"))?;
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    let mut read = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut f = f;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
    }
    assert!(read == data, "sequential read differs from what was written");
    drop(f);
    drop(m);

    // Smaller blocks than a request (reads span blocks) and a chosen readahead.
    let m = Mount::new(
        &storage,
        &[
            "--kernel-readahead",
            "1048576",
            "--workspace",
            "small-blocks",
            "--block-size",
            "65536",
        ],
    )?;
    assert_read_ahead_kb(&m, 1024)?;
    fs::write(m.path("seq"), &data)?;
    let f = fs::File::open(m.path("seq"))?;
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    let mut at = vec![0u8; 3 << 20];
    f.read_exact_at(&mut at, (1 << 20) + 7)?;
    assert!(
        at[..] == data[(1 << 20) + 7..(4 << 20) + 7],
        "a read across blocks differs"
    );
    Ok(())
}
