//! POSIX behaviour of a real FUSE mount: errno values, rename rules, O_APPEND, truncate,
//! holes, deep trees, extended attributes, permission checks for other users (allow_other,
//! sticky directories), and readdir while entries come and go.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

// ---------------------------------------------------------------------------------------------
// Extended attributes. The contract (drive/src/fs/xattr.rs, the adapter's setxattr/getxattr):
// only `user.*` names are stored; `user.studiodrive.*` are read-only virtual attributes
// (EPERM to set or remove); setting or removing any other namespace is ENOTSUP and getting it
// ENODATA; XATTR_CREATE of a present name is EEXIST, XATTR_REPLACE of a missing one ENODATA;
// a 0-byte buffer asks for the size and a too-small one is ERANGE. Linux itself refuses names
// over 255 bytes (ERANGE) and values over 64 KiB (E2BIG) before the mount sees them; the
// mount's own limits are the same, so everything up to them must be stored.

/// fallocate(2) without glibc's fallback: the default mode extends the file as ftruncate
/// would (the bytes before stay, the rest reads as zeros, and a remount keeps the size),
/// `FALLOC_FL_KEEP_SIZE` changes nothing, and other modes are EOPNOTSUPP.
#[test]
#[allow(unsafe_code)]
fn fallocate_extends_the_file_and_refuses_other_modes() -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;

    let storage = Storage::new()?;
    let mut m = Mount::new(&storage, &["--block-size", "65536"])?;
    let path = m.path("preallocated.bin");
    fs::write(&path, b"head")?;
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let fallocate = |mode: i32, offset: i64, len: i64| {
        // SAFETY: the descriptor is open for the whole call.
        check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } as isize)
    };
    let size = 1i64 << 30;
    fallocate(0, 0, size)?;
    assert_eq!(file.metadata()?.len(), size as u64);
    fallocate(0, 4096, 8192)?; // inside the file: nothing to do
    fallocate(libc::FALLOC_FL_KEEP_SIZE, 0, 2 * size)?;
    assert_eq!(file.metadata()?.len(), size as u64, "KEEP_SIZE keeps the size");
    for mode in [
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
        libc::FALLOC_FL_COLLAPSE_RANGE,
    ] {
        assert_eq!(
            err(fallocate(mode, 0, 65536)),
            Err(libc::EOPNOTSUPP),
            "mode {mode:#x}"
        );
    }
    let mut head = [0u8; 4];
    file.read_exact_at(&mut head, 0)?;
    assert_eq!(&head, b"head");
    let mut tail = vec![1u8; 65536];
    file.read_exact_at(&mut tail, size as u64 - 65536)?;
    assert!(
        tail.iter().all(|&b| b == 0),
        "the preallocated range reads as zeros"
    );
    drop(file);
    assert!(m.stop()?.success());
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    assert_eq!(fs::metadata(m.path("preallocated.bin"))?.len(), size as u64);
    Ok(())
}

fn c_string(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("no NUL inside a path or attribute name")
}

fn c_path(path: &Path) -> CString {
    c_string(path.as_os_str().as_bytes())
}

/// `r` with its error reduced to the errno, for exact comparisons (`Err(libc::ENODATA)`).
fn err<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| errno(&e))
}

/// The result of a libc call that returns -1 and sets errno on failure.
fn check(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `setxattr(2)` with `flags` (0, XATTR_CREATE or XATTR_REPLACE).
#[allow(unsafe_code)]
fn set_xattr(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (c_path(path), c_string(name));
    // SAFETY: `p` and `n` are NUL-terminated and outlive the call; `value` is readable for
    // `value.len()` bytes.
    let ret = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    check(ret as isize).map(drop)
}

/// `getxattr(2)` with a buffer of `size` bytes: the value, or with `size` 0 an empty vector
/// and the value's length.
#[allow(unsafe_code)]
fn getxattr_sized(path: &Path, name: &[u8], size: usize) -> io::Result<(Vec<u8>, usize)> {
    let (p, n) = (c_path(path), c_string(name));
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: `p` and `n` are NUL-terminated and outlive the call; `ptr` is null with size 0
    // (the size query) or valid for writes of `size` bytes.
    let len = check(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), ptr, size) })?;
    buf.truncate(len.min(size));
    Ok((buf, len))
}

/// The length `getxattr(2)` reports for a 0-byte buffer.
fn xattr_len(path: &Path, name: &[u8]) -> io::Result<usize> {
    getxattr_sized(path, name, 0).map(|(_, len)| len)
}

/// The value of `name`, read as tools do it: ask the size, then read with room to spare. The
/// read must return exactly the size that was reported.
fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let len = xattr_len(path, name)?;
    let (value, got) = getxattr_sized(path, name, len + 64)?;
    assert_eq!(
        got, len,
        "getxattr returned {got} bytes, the size query said {len}"
    );
    Ok(value)
}

/// `listxattr(2)` with a buffer of `size` bytes (0: the size query).
#[allow(unsafe_code)]
fn listxattr_sized(path: &Path, size: usize) -> io::Result<(Vec<u8>, usize)> {
    let p = c_path(path);
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: `p` is NUL-terminated and outlives the call; `ptr` is null with size 0 or valid
    // for writes of `size` bytes.
    let len = check(unsafe { libc::listxattr(p.as_ptr(), ptr, size) })?;
    buf.truncate(len.min(size));
    Ok((buf, len))
}

/// The names `listxattr(2)` returns, sorted (Linux promises no order), duplicates kept;
/// text for readable failures (every name in these tests is ASCII).
fn list_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let (_, len) = listxattr_sized(path, 0)?;
    let (raw, got) = listxattr_sized(path, len + 64)?;
    assert_eq!(
        got, len,
        "listxattr returned {got} bytes, the size query said {len}"
    );
    assert!(
        raw.is_empty() || raw.ends_with(&[0]),
        "the name list is not NUL-terminated: {raw:?}"
    );
    let mut names: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.pop(); // after the last NUL
    names.sort();
    Ok(names)
}

#[allow(unsafe_code)]
fn remove_xattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let (p, n) = (c_path(path), c_string(name));
    // SAFETY: `p` and `n` are NUL-terminated and outlive the call.
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } as isize).map(drop)
}

/// `names` sorted, as [`list_xattrs`] returns them.
fn sorted_names(names: &[&[u8]]) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    v.sort();
    v
}

const CHECKSUM: &[u8] = b"user.studiodrive.checksum";
const MD5: &[u8] = b"user.studiodrive.md5";
const SHA1: &[u8] = b"user.studiodrive.sha1";
const XXH64: &[u8] = b"user.studiodrive.xxh64";
const SHA256: &[u8] = b"user.studiodrive.sha256";
const BLOCK_SIZE: &[u8] = b"user.studiodrive.block_size";
const SEQUENCES: &[u8] = b"user.studiodrive.sequences";

/// Catches: values cut at a NUL byte or at a high byte (C-string or UTF-8 handling); an
/// empty value stored as "no attribute"; a replace that keeps the old value's tail; XATTR_CREATE
/// ignored (silent overwrite instead of EEXIST); XATTR_REPLACE of a missing name that creates
/// it or fails with ENOENT instead of ENODATA; a size query that does not report the value's
/// exact length; a short buffer answered with truncated data instead of ERANGE; listxattr
/// missing, duplicating or inventing a name; removexattr that leaves the value behind or
/// answers a second removal with anything but ENODATA; attributes keyed by name alone, so a
/// file and a directory share them.
#[test]
fn user_xattrs_round_trip_exact_bytes_on_files_and_directories() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    fs::write(m.path("f"), b"content")?;
    fs::create_dir(m.path("d"))?;
    // Every byte value, NULs inside and at the end.
    let binary: Vec<u8> = (0..=255u8).rev().chain([0, 0, 0xff, 0]).collect();
    for (target, own, virtual_names) in [
        (m.path("f"), &b"user.only-file"[..], &[BLOCK_SIZE][..]),
        (m.path("d"), &b"user.only-dir"[..], &[BLOCK_SIZE, SEQUENCES][..]),
    ] {
        let t = &target;
        assert_eq!(err(get_xattr(t, b"user.text")), Err(libc::ENODATA));
        assert_eq!(list_xattrs(t)?, sorted_names(virtual_names));

        set_xattr(t, b"user.bin", &binary, 0)?;
        set_xattr(t, b"user.empty", b"", 0)?;
        set_xattr(t, b"user.text", b"first", 0)?;
        set_xattr(t, own, b"mine", 0)?;
        assert_eq!(get_xattr(t, b"user.bin")?, binary);
        assert_eq!(err(xattr_len(t, b"user.empty")), Ok(0), "an empty value");
        assert_eq!(err(get_xattr(t, b"user.empty")), Ok(vec![]), "an empty value");
        assert_eq!(get_xattr(t, b"user.text")?, b"first");

        // Replace with a longer value, then a shorter one.
        set_xattr(t, b"user.text", b"second value", 0)?;
        assert_eq!(get_xattr(t, b"user.text")?, b"second value");
        set_xattr(t, b"user.text", b"3rd", 0)?;
        assert_eq!(get_xattr(t, b"user.text")?, b"3rd");

        // XATTR_CREATE: EEXIST on a present name, which keeps its value; creates a new one.
        let e = set_xattr(t, b"user.text", b"clobbered", libc::XATTR_CREATE);
        assert_eq!(err(e), Err(libc::EEXIST));
        assert_eq!(get_xattr(t, b"user.text")?, b"3rd");
        let e = set_xattr(t, b"user.empty", b"clobbered", libc::XATTR_CREATE);
        assert_eq!(err(e), Err(libc::EEXIST), "an empty value is still present");
        set_xattr(t, b"user.created", b"c", libc::XATTR_CREATE)?;
        assert_eq!(get_xattr(t, b"user.created")?, b"c");

        // XATTR_REPLACE: ENODATA on a missing name, which stays missing; replaces a present one.
        let e = set_xattr(t, b"user.absent", b"r", libc::XATTR_REPLACE);
        assert_eq!(err(e), Err(libc::ENODATA));
        assert_eq!(err(get_xattr(t, b"user.absent")), Err(libc::ENODATA));
        set_xattr(t, b"user.created", b"replaced", libc::XATTR_REPLACE)?;
        assert_eq!(get_xattr(t, b"user.created")?, b"replaced");

        // The size protocol: 0 asks the exact length; exactly that much room is enough; one
        // byte less is ERANGE, never a truncated value.
        assert_eq!(xattr_len(t, b"user.bin")?, binary.len());
        assert_eq!(
            getxattr_sized(t, b"user.bin", binary.len())?,
            (binary.clone(), binary.len())
        );
        let e = getxattr_sized(t, b"user.bin", binary.len() - 1);
        assert_eq!(err(e), Err(libc::ERANGE));

        // The list: exactly the stored names plus the node kind's virtual ones, each once.
        let mut expected = vec![
            &b"user.bin"[..],
            b"user.created",
            b"user.empty",
            b"user.text",
            own,
        ];
        expected.extend(virtual_names.iter().copied());
        assert_eq!(list_xattrs(t)?, sorted_names(&expected));
        let list_len: usize = expected.iter().map(|n| n.len() + 1).sum();
        assert_eq!(listxattr_sized(t, 0)?.1, list_len);
        assert_eq!(listxattr_sized(t, list_len)?.1, list_len);
        assert_eq!(err(listxattr_sized(t, list_len - 1)), Err(libc::ERANGE));

        // Remove: gone from get and list, the others intact; a second removal is ENODATA.
        remove_xattr(t, b"user.text")?;
        assert_eq!(err(get_xattr(t, b"user.text")), Err(libc::ENODATA));
        assert_eq!(err(remove_xattr(t, b"user.text")), Err(libc::ENODATA));
        assert_eq!(err(remove_xattr(t, b"user.never")), Err(libc::ENODATA));
        remove_xattr(t, b"user.empty")?;
        assert_eq!(err(get_xattr(t, b"user.empty")), Err(libc::ENODATA));
        let mut expected = vec![&b"user.bin"[..], b"user.created", own];
        expected.extend(virtual_names.iter().copied());
        assert_eq!(list_xattrs(t)?, sorted_names(&expected));
        assert_eq!(get_xattr(t, b"user.bin")?, binary);
    }
    // Each node kept its own attributes.
    assert_eq!(err(get_xattr(&m.path("f"), b"user.only-dir")), Err(libc::ENODATA));
    assert_eq!(
        err(get_xattr(&m.path("d"), b"user.only-file")),
        Err(libc::ENODATA)
    );
    Ok(())
}

/// Catches: a mount that stores (or pretends to store) `trusted.*`, `security.*`, `system.*`
/// or unknown namespaces instead of refusing them with ENOTSUP (a refused set that still
/// lands in listxattr); a get of such a name answered with anything but ENODATA (the kernel
/// asks for security.capability on every write); writable or removable virtual attributes
/// (EPERM); a checksum that is not SHA-256 of the committed bytes, or is stale after the
/// file changes; a block_size that is not the workspace's.
#[test]
fn xattr_namespaces_beyond_user_are_refused_and_virtual_ones_are_read_only() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    let f = m.path("f");
    fs::write(&f, b"abc")?;
    // (security.capability is left out of the set: the kernel checks its value's format first.)
    assert_eq!(err(get_xattr(&f, b"security.capability")), Err(libc::ENODATA));
    for name in [
        &b"trusted.t"[..],
        b"security.s",
        b"system.studiodrive",
        b"unknown.x",
    ] {
        let label = String::from_utf8_lossy(name);
        let e = set_xattr(&f, name, b"v", 0);
        assert_eq!(err(e), Err(libc::ENOTSUP), "set {label}");
        assert_eq!(err(get_xattr(&f, name)), Err(libc::ENODATA), "get {label}");
        assert_eq!(err(remove_xattr(&f, name)), Err(libc::ENOTSUP), "remove {label}");
    }
    // The hashes are not listed (a copy with attributes must not hash every file).
    assert_eq!(list_xattrs(&f)?, sorted_names(&[BLOCK_SIZE]));

    // Test vectors of "abc" and the empty string: MD5, SHA-1, xxHash64 (seed 0), SHA-256.
    let hashes = |f: &std::path::Path| -> anyhow::Result<Vec<Vec<u8>>> {
        [MD5, SHA1, XXH64, SHA256, CHECKSUM]
            .iter()
            .map(|name| Ok(get_xattr(f, name)?))
            .collect()
    };
    let abc_sha256 = b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let abc: [&[u8]; 5] = [
        b"900150983cd24fb0d6963f7d28e17f72",
        b"a9993e364706816aba3e25717850c26c9cd0d89d",
        b"44bc2cf5ad770999",
        abc_sha256,
        abc_sha256,
    ];
    let empty_sha256 = b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let empty_hashes: [&[u8]; 5] = [
        b"d41d8cd98f00b204e9800998ecf8427e",
        b"da39a3ee5e6b4b0d3255bfef95601890afd80709",
        b"ef46db3751d8e999",
        empty_sha256,
        empty_sha256,
    ];
    assert_eq!(hashes(&f)?, abc);
    assert_eq!(get_xattr(&f, BLOCK_SIZE)?, b"65536");
    OpenOptions::new().write(true).open(&f)?.set_len(0)?;
    assert_eq!(
        hashes(&f)?,
        empty_hashes,
        "hashes after truncation (a new content version)"
    );
    let empty = empty_sha256;
    // Per kind: no checksum of a directory, no sequences of a file, no other virtual names.
    fs::create_dir(m.path("d"))?;
    assert_eq!(err(get_xattr(&m.path("d"), CHECKSUM)), Err(libc::ENODATA));
    assert_eq!(get_xattr(&m.path("d"), BLOCK_SIZE)?, b"65536");
    assert_eq!(err(get_xattr(&f, SEQUENCES)), Err(libc::ENODATA));
    assert_eq!(err(get_xattr(&f, b"user.studiodrive.nope")), Err(libc::ENODATA));
    // Read-only, the whole user.studiodrive. namespace, with any flag.
    for (name, flags) in [
        (CHECKSUM, 0),
        (BLOCK_SIZE, libc::XATTR_REPLACE),
        (b"user.studiodrive.new", libc::XATTR_CREATE),
    ] {
        let e = set_xattr(&f, name, b"0", flags);
        assert_eq!(err(e), Err(libc::EPERM), "set {}", String::from_utf8_lossy(name));
    }
    assert_eq!(err(remove_xattr(&f, CHECKSUM)), Err(libc::EPERM));
    assert_eq!(get_xattr(&f, CHECKSUM)?, empty);
    assert_eq!(list_xattrs(&f)?, sorted_names(&[BLOCK_SIZE]));
    Ok(())
}

/// Block reads the mount served from its caches (disk and memory).
fn cached_block_reads(port: u16) -> anyhow::Result<f64> {
    let text = common::scrape(&format!("127.0.0.1:{port}"))?;
    let get = |name| common::sample(&text, name, &[]).unwrap_or(0.0);
    Ok(get("studiodrive_cache_hits_total") + get("studiodrive_memory_cache_hits_total"))
}

/// Catches: hashes computed while writing that are wrong, missing (computed by a read
/// after all), kept for the wrong content version, or kept for a file not written in order.
#[test]
fn hashes_of_files_written_in_order_are_computed_while_writing() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(&storage, &["--block-size", "1048576", "--metrics-addr", &addr])?;
    let data: Vec<u8> = (0..3 * 1048576 + 1234u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let expect = |algo: drive::mhl::HashAlgo, bytes: &[u8]| algo.hash(bytes).map(String::into_bytes);

    // In order, in 64 KiB writes: xxHash64 is known at close, with no block read. The
    // names are not media names: the technical-metadata extractor reads the header of a
    // closed `.exr` in the background, a block read this test would count.
    let f = m.path("in-order.bin");
    {
        let mut out = fs::File::create(&f)?;
        for chunk in data.chunks(65536) {
            out.write_all(chunk)?;
        }
    }
    let before = cached_block_reads(port)?;
    assert_eq!(get_xattr(&f, XXH64)?, expect(drive::mhl::HashAlgo::Xxh64, &data)?);
    assert_eq!(
        cached_block_reads(port)?,
        before,
        "xxh64 of a file written in order read blocks"
    );
    // MD5 was not computed while writing: one read computes it (and the rest).
    assert_eq!(get_xattr(&f, MD5)?, expect(drive::mhl::HashAlgo::Md5, &data)?);
    let after_md5 = cached_block_reads(port)?;
    assert!(after_md5 > before, "md5 was answered without reading the file");
    assert_eq!(
        get_xattr(&f, SHA256)?,
        expect(drive::mhl::HashAlgo::Sha256, &data)?
    );
    assert_eq!(
        cached_block_reads(port)?,
        after_md5,
        "the read kept all four hashes"
    );

    // Out of order: the hash is computed on demand, by a read, and still right.
    let g = m.path("out-of-order.bin");
    {
        let out = fs::File::create(&g)?;
        out.write_all_at(&data[2 * 1048576..], 2 * 1048576)?;
        out.write_all_at(&data[..2 * 1048576], 0)?;
    }
    let before = cached_block_reads(port)?;
    assert_eq!(get_xattr(&g, XXH64)?, expect(drive::mhl::HashAlgo::Xxh64, &data)?);
    assert!(
        cached_block_reads(port)? > before,
        "a file written out of order had a hash without a read"
    );

    // Appending to a committed file is a new version: its hash is not the old one's.
    OpenOptions::new().append(true).open(&f)?.write_all(b"tail")?;
    let mut longer = data.clone();
    longer.extend_from_slice(b"tail");
    assert_eq!(
        get_xattr(&f, XXH64)?,
        expect(drive::mhl::HashAlgo::Xxh64, &longer)?
    );
    Ok(())
}

/// Catches: a store or reply path that limits names or values below Linux's (a short name
/// column, values kept inline up to a few KiB, a reply buffer smaller than 64 KiB), or that
/// corrupts a value at that size. Linux refuses a 256-byte name with ERANGE and a value over
/// 64 KiB with E2BIG before the request reaches the mount.
#[test]
fn xattr_names_and_values_up_to_the_linux_limits_are_stored() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    let f = m.path("f");
    fs::write(&f, b"")?;
    let longest_name = [&b"user."[..], &[b'n'; 250]].concat();
    let too_long_name = [&b"user."[..], &[b'n'; 251]].concat();
    let largest: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let too_large = vec![7u8; 65_537];

    assert_eq!(
        err(set_xattr(&f, &longest_name, b"long name", 0)),
        Ok(()),
        "a 255-byte name"
    );
    assert_eq!(get_xattr(&f, &longest_name)?, b"long name");
    assert_eq!(err(set_xattr(&f, &too_long_name, b"x", 0)), Err(libc::ERANGE));
    assert_eq!(err(get_xattr(&f, &too_long_name)), Err(libc::ERANGE));

    assert_eq!(
        err(set_xattr(&f, b"user.large", &largest, 0)),
        Ok(()),
        "a 64 KiB value"
    );
    assert_eq!(xattr_len(&f, b"user.large")?, 65_536);
    assert!(
        get_xattr(&f, b"user.large")? == largest,
        "the 64 KiB value differs"
    );
    assert_eq!(err(set_xattr(&f, b"user.huge", &too_large, 0)), Err(libc::E2BIG));
    assert_eq!(err(get_xattr(&f, b"user.huge")), Err(libc::ENODATA));
    // Replacing the largest value with a small one leaves only the small one.
    set_xattr(&f, b"user.large", b"small", libc::XATTR_REPLACE)?;
    assert_eq!(get_xattr(&f, b"user.large")?, b"small");
    assert_eq!(
        list_xattrs(&f)?,
        sorted_names(&[&longest_name, b"user.large", BLOCK_SIZE])
    );
    Ok(())
}

/// Catches: attributes kept in the mount's memory (or a cache never written through) and
/// lost on remount; a removal that is not persisted (the attribute comes back); attributes
/// keyed by path instead of inode: lost on rename, not shared by a hard link, or inherited by
/// a new file that reuses a removed file's name.
#[test]
fn xattrs_persist_across_a_remount_and_belong_to_the_inode() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let mut m = Mount::new(&storage, &["--block-size", "65536"])?;
    let binary: Vec<u8> = (0..=255u8).collect();
    fs::write(m.path("f"), b"data")?;
    fs::create_dir(m.path("d"))?;
    set_xattr(&m.path("f"), b"user.bin", &binary, 0)?;
    set_xattr(&m.path("f"), b"user.gone", b"soon", 0)?;
    set_xattr(&m.path("f"), b"user.empty", b"", 0)?;
    set_xattr(&m.path("d"), b"user.dir", b"on a directory", 0)?;
    remove_xattr(&m.path("f"), b"user.gone")?;

    // A hard link is the same inode: same attributes both ways.
    fs::hard_link(m.path("f"), m.path("link"))?;
    assert_eq!(get_xattr(&m.path("link"), b"user.bin")?, binary);
    set_xattr(&m.path("link"), b"user.via-link", b"shared", 0)?;
    assert_eq!(get_xattr(&m.path("f"), b"user.via-link")?, b"shared");
    // A rename keeps them; a new file on a removed file's name has none.
    fs::rename(m.path("f"), m.path("renamed"))?;
    fs::write(m.path("victim"), b"")?;
    set_xattr(&m.path("victim"), b"user.old", b"old", 0)?;
    fs::remove_file(m.path("victim"))?;
    fs::write(m.path("victim"), b"")?;
    assert_eq!(list_xattrs(&m.path("victim"))?, sorted_names(&[BLOCK_SIZE]));

    let status = m.stop()?;
    assert!(status.success(), "mount exited with {status}");
    drop(m);
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    for path in [m.path("renamed"), m.path("link")] {
        let at = format!("after the remount, {}", path.display());
        assert_eq!(err(get_xattr(&path, b"user.bin")), Ok(binary.clone()), "{at}");
        assert_eq!(err(get_xattr(&path, b"user.empty")), Ok(vec![]), "{at}");
        assert_eq!(
            err(get_xattr(&path, b"user.via-link")),
            Ok(b"shared".to_vec()),
            "{at}"
        );
        assert_eq!(err(get_xattr(&path, b"user.gone")), Err(libc::ENODATA), "{at}");
        assert_eq!(
            list_xattrs(&path)?,
            sorted_names(&[b"user.bin", b"user.empty", b"user.via-link", BLOCK_SIZE]),
            "{at}"
        );
    }
    let dir_value = err(get_xattr(&m.path("d"), b"user.dir"));
    assert_eq!(dir_value, Ok(b"on a directory".to_vec()), "after the remount, d");
    assert_eq!(list_xattrs(&m.path("victim"))?, sorted_names(&[BLOCK_SIZE]));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Permissions for other users. `mount --allow-other` lets users other than the mounting one
// (root) in; the mount passes `default_permissions` unless told `--default-permissions false`,
// so the kernel checks every access against the mode, owner and group the mount reports, and
// enforces the sticky bit. Without default_permissions it enforces neither, and the mount
// checks nothing itself (only access(2)). These tests run as the default, as users get it.

/// uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Runs `op` as uid/gid [`NOBODY`] without supplementary groups, in a child process, and
/// returns its outcome with the exact errno. `op` runs between fork and exec (where std has
/// already dropped to that user), so it may only make system calls: it uses std::fs on short
/// paths (std builds their C strings on the stack) and must not allocate. The child exits 0
/// once `op` succeeds, or with the code `op` passes to `_exit`; the program is never run.
#[allow(unsafe_code)]
fn as_nobody(mut op: impl FnMut() -> io::Result<()> + Send + Sync + 'static) -> io::Result<()> {
    let mut cmd = Command::new("/bin/true");
    cmd.uid(NOBODY).gid(NOBODY);
    // SAFETY: the closure only calls `op` (system calls, no allocation, see above) and
    // `_exit`, which ends the child without running destructors or atexit handlers of the
    // copied parent; an `Err` is sent to the parent by std as the errno of the spawn.
    unsafe {
        cmd.pre_exec(move || {
            op()?;
            libc::_exit(0)
        });
    }
    let status = cmd.status()?;
    assert!(
        status.success(),
        "the child running as nobody exited with {status}"
    );
    Ok(())
}

/// Reads `path` as nobody and checks that it holds exactly `expected` (at most 64 bytes).
#[allow(unsafe_code)]
fn read_as_nobody(path: PathBuf, expected: &'static [u8]) -> io::Result<()> {
    as_nobody(move || {
        let mut buf = [0u8; 64];
        let n = fs::File::open(&path)?.read(&mut buf)?;
        if buf[..n] != *expected {
            // SAFETY: ends the forked child, see `as_nobody`.
            unsafe { libc::_exit(3) }
        }
        Ok(())
    })
}

/// Creates `path` as nobody (O_CREAT|O_EXCL, mode 0644) and writes `data` into it.
fn create_as_nobody(path: PathBuf, data: &'static [u8]) -> io::Result<()> {
    as_nobody(move || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?
            .write_all(data)
    })
}

/// A temp dir every user can search (o+x), for mount points other users must reach: the
/// mount's default temp holder is 0700. Fails where a parent dir (TMPDIR) is not searchable.
fn world_searchable_tempdir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    for a in dir.path().ancestors().skip(1) {
        anyhow::ensure!(
            fs::metadata(a)?.mode() & 0o001 != 0,
            "{} is not searchable by other users; point TMPDIR at a dir that is",
            a.display()
        );
    }
    fs::create_dir(dir.path().join("mnt"))?;
    Ok(dir)
}

/// Catches: a mount that lets other users in without checking permissions (allow_other
/// without default_permissions and no checks of its own): nobody could then search a 0700
/// directory, read a 0600 file, write a 0644 file or create in a root-owned 0755 directory;
/// a mount that reports wrong owners or modes to the kernel (the checks use them); new files
/// and directories owned by the mount's user instead of the caller; chmod or setxattr by a
/// user who does not own the file. The allowed operations show the refusals come from the
/// mode bits, not from a mount that refuses other users altogether (no --allow-other).
#[test]
fn other_users_get_exactly_what_the_mode_bits_allow() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let holder = world_searchable_tempdir()?;
    let m = Mount::at(&storage, &holder.path().join("mnt"), &["--allow-other"])?;
    fs::set_permissions(&m.dir, fs::Permissions::from_mode(0o755))?;
    let chmod = |p: &str, mode: u32| fs::set_permissions(m.path(p), fs::Permissions::from_mode(mode));
    fs::create_dir(m.path("private"))?;
    chmod("private", 0o700)?;
    fs::write(m.path("private/f"), b"inside")?;
    fs::write(m.path("secret"), b"secret")?;
    chmod("secret", 0o600)?;
    fs::write(m.path("public"), b"public")?;
    chmod("public", 0o644)?;
    fs::create_dir(m.path("locked"))?;
    chmod("locked", 0o755)?;
    fs::write(m.path("locked/existing"), b"kept")?;
    fs::create_dir(m.path("open"))?;
    chmod("open", 0o777)?;
    let p = |rel: &str| m.path(rel);
    let eacces = |r: io::Result<()>, what: &str| {
        assert_eq!(err(r), Err(libc::EACCES), "nobody: {what}");
    };

    // Search: the 0700 directory itself is visible, nothing inside it.
    let d = p("private");
    as_nobody(move || fs::metadata(&d).map(drop))?;
    let f = p("private/f");
    eacces(as_nobody(move || fs::metadata(&f).map(drop)), "stat private/f");
    let d = p("private");
    eacces(
        as_nobody(move || fs::File::open(&d).map(drop)),
        "open private (list)",
    );
    let f = p("private/f");
    eacces(as_nobody(move || fs::File::open(&f).map(drop)), "open private/f");

    // Read: 0600 refused, 0644 readable with its bytes; writing either refused.
    let f = p("secret");
    eacces(as_nobody(move || fs::File::open(&f).map(drop)), "read secret");
    read_as_nobody(p("public"), b"public")?;
    let f = p("public");
    eacces(
        as_nobody(move || OpenOptions::new().write(true).open(&f).map(drop)),
        "open public for writing",
    );
    let f = p("public");
    eacces(
        as_nobody(move || OpenOptions::new().append(true).open(&f).map(drop)),
        "open public for appending",
    );
    assert_eq!(fs::read(m.path("public"))?, b"public");

    // Create, remove, rename in a root 0755 directory: refused, nothing changed.
    eacces(create_as_nobody(p("locked/new"), b"x"), "create locked/new");
    let d = p("locked/newdir");
    eacces(as_nobody(move || fs::create_dir(&d)), "mkdir locked/newdir");
    let f = p("locked/existing");
    eacces(as_nobody(move || fs::remove_file(&f)), "unlink locked/existing");
    let (from, to) = (p("locked/existing"), p("locked/moved"));
    eacces(as_nobody(move || fs::rename(&from, &to)), "rename in locked");
    let names: BTreeSet<_> = fs::read_dir(m.path("locked"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, BTreeSet::from(["existing".into()]));
    assert_eq!(fs::read(m.path("locked/existing"))?, b"kept");

    // Only the owner may chmod; writing a user xattr needs write permission.
    let f = p("public");
    let r = as_nobody(move || fs::set_permissions(&f, fs::Permissions::from_mode(0o666)));
    assert_eq!(err(r), Err(libc::EPERM), "nobody: chmod public");
    assert_eq!(fs::metadata(m.path("public"))?.mode() & 0o7777, 0o644);
    let (path, name) = (c_path(&m.path("public")), c_string(b"user.by-nobody"));
    #[allow(unsafe_code)]
    let r = as_nobody(move || {
        // SAFETY: NUL-terminated strings made before the fork; a 1-byte value.
        let ret = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        check(ret as isize).map(drop)
    });
    eacces(r, "setxattr on public");

    // A 0777 directory: nobody creates a file and a directory, owned by nobody.
    create_as_nobody(p("open/mine"), b"by nobody")?;
    let d = p("open/minedir");
    as_nobody(move || fs::create_dir(&d))?;
    for rel in ["open/mine", "open/minedir"] {
        let md = fs::metadata(m.path(rel))?;
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "owner of {rel}");
    }
    assert_eq!(fs::read(m.path("open/mine"))?, b"by nobody");
    // ... and, owning it, may chmod it.
    let f = p("open/mine");
    as_nobody(move || fs::set_permissions(&f, fs::Permissions::from_mode(0o600)))?;
    assert_eq!(fs::metadata(m.path("open/mine"))?.mode() & 0o7777, 0o600);
    Ok(())
}

/// Catches: a mount that loses the sticky bit (S_ISVTX) of a directory's mode, in storage or
/// in the attributes it reports, so the kernel cannot enforce it: in a 1777 directory nobody
/// could then remove, rename away or replace root's file. Linux answers those with EPERM (POSIX
/// allows EPERM or EACCES). Nobody still manages its own files there, and root's file, though
/// 0666, keeps its content. The 0777 directory without the bit shows the refusals are the
/// sticky bit's.
#[test]
fn sticky_directories_protect_other_users_files() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let holder = world_searchable_tempdir()?;
    let m = Mount::at(&storage, &holder.path().join("mnt"), &["--allow-other"])?;
    fs::set_permissions(&m.dir, fs::Permissions::from_mode(0o755))?;
    fs::create_dir(m.path("tmp"))?;
    fs::set_permissions(m.path("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::write(m.path("tmp/roots"), b"root's")?;
    fs::set_permissions(m.path("tmp/roots"), fs::Permissions::from_mode(0o666))?;
    fs::create_dir(m.path("plain"))?;
    fs::set_permissions(m.path("plain"), fs::Permissions::from_mode(0o777))?;
    fs::write(m.path("plain/roots"), b"root's")?;
    let p = |rel: &str| m.path(rel);
    let eperm = |r: io::Result<()>, what: &str| {
        assert_eq!(err(r), Err(libc::EPERM), "nobody: {what}");
    };

    let f = p("tmp/roots");
    eperm(as_nobody(move || fs::remove_file(&f)), "unlink tmp/roots");
    let (from, to) = (p("tmp/roots"), p("tmp/taken"));
    eperm(as_nobody(move || fs::rename(&from, &to)), "rename tmp/roots away");
    create_as_nobody(p("tmp/own"), b"nobody's")?;
    let (from, to) = (p("tmp/own"), p("tmp/roots"));
    eperm(as_nobody(move || fs::rename(&from, &to)), "rename onto tmp/roots");
    assert_eq!(fs::read(m.path("tmp/roots"))?, b"root's");
    assert!(!m.path("tmp/taken").exists());

    // Its own files: rename and remove work.
    let (from, to) = (p("tmp/own"), p("tmp/own2"));
    as_nobody(move || fs::rename(&from, &to))?;
    let f = p("tmp/own2");
    as_nobody(move || fs::remove_file(&f))?;
    // Root removes nobody's file.
    create_as_nobody(p("tmp/left"), b"")?;
    fs::remove_file(m.path("tmp/left"))?;
    let names: BTreeSet<_> = fs::read_dir(m.path("tmp"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, BTreeSet::from(["roots".into()]));

    // Without the sticky bit, write permission on the directory is enough.
    let f = p("plain/roots");
    as_nobody(move || fs::remove_file(&f))?;
    assert!(!m.path("plain/roots").exists());
    assert_eq!(fs::metadata(m.path("tmp"))?.mode() & 0o7777, 0o1777);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// readdir while the directory changes. The mount lists a directory handle in pages of 1000
// entries from the store, each resuming after the last name fetched (keyset pagination),
// and answers the kernel's READDIR offsets (cookies) from that handle's own list, so a cookie
// keeps its meaning whatever happens to the directory. POSIX leaves open whether a name
// added or removed after opendir is returned, never that others are returned once.

/// Entries made before the listing: `{i:05}-xxx…`, about 100 bytes, so each kernel READDIR
/// reply holds a few hundred at most and the listing spans many of them.
fn initial_name(i: usize) -> String {
    format!("{i:05}-{}", "x".repeat(90))
}

/// The `m`th entry inserted during the listing, sorting just before `initial_name(j)` ('+'
/// sorts before '-') and after every other name that starts with a smaller `j`.
fn inserted_name(j: usize, m: usize) -> String {
    format!("{j:05}+{m:04}-{}", "x".repeat(85))
}

/// Catches offset pagination, in the mount's store pages (the next page fetched by count,
/// `OFFSET n`, instead of after the last name) or in its answers to the kernel's cookies (a
/// cookie taken as a position in a fresh listing): an insert before the cursor shifts later
/// entries up, so one is returned twice; a delete before it shifts them down, so one is
/// skipped. The reader inserts names before and after its position and deletes entries both
/// already returned and not yet returned, in phases whose inserts and deletes do not cancel
/// out; every entry never touched must come back exactly once and no name twice. Also catches
/// a listing that returns names that never existed, and a later listing (or the mount's
/// metadata cache) that misses the changes.
#[test]
fn readdir_returns_each_untouched_entry_once_while_the_directory_changes() -> anyhow::Result<()> {
    const N: usize = 1500;
    const EVERY: usize = 20;
    let storage = Storage::new()?;
    // 64 KiB blocks make st_blksize 64 KiB, the size of glibc's readdir buffer (1 MiB with
    // the default blocks, which could take a whole store page in one READDIR).
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    let dir = m.path("many");
    fs::create_dir(&dir)?;
    for i in 0..N {
        fs::write(dir.join(initial_name(i)), b"")?;
    }
    // Deletable entries (a third of them), in name order; the others are never touched.
    let mut deletable: BTreeSet<usize> = (0..N).filter(|i| i % 3 == 1).collect();
    let mut deleted = BTreeSet::new();
    let mut inserted = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let insert = |j: usize, inserted: &mut BTreeSet<String>| -> io::Result<()> {
        let name = inserted_name(j, inserted.len());
        fs::write(dir.join(&name), b"")?;
        inserted.insert(name);
        Ok(())
    };
    let delete = |i: Option<usize>, deletable: &mut BTreeSet<usize>, deleted: &mut BTreeSet<usize>| {
        let Some(i) = i else { return Ok(()) };
        deletable.remove(&i);
        deleted.insert(i);
        fs::remove_file(dir.join(initial_name(i)))
    };
    for (n, entry) in fs::read_dir(&dir)?.enumerate() {
        let name = entry?.file_name().into_string().expect("names are ASCII");
        // The cursor: the initial entry at or just after the name returned last.
        let at: usize = name[..5].parse()?;
        *seen.entry(name).or_default() += 1;
        let n = n + 1;
        if n % EVERY != 0 {
            continue;
        }
        let behind = deletable.range(..at).next_back().copied();
        let ahead = deletable.range(at + 1 + n % 29..).next().copied();
        if n <= 500 {
            // Two inserts behind the cursor, one ahead.
            insert(at - 1, &mut inserted)?;
            insert(at - 1 - n % 13, &mut inserted)?;
            insert((at + 5 + n % 41).min(N - 1), &mut inserted)?;
        } else if n <= 1000 {
            // One delete behind the cursor (returned), one ahead (not yet).
            delete(behind, &mut deletable, &mut deleted)?;
            delete(ahead, &mut deletable, &mut deleted)?;
        } else {
            insert(at - 1, &mut inserted)?;
            delete(behind, &mut deletable, &mut deleted)?;
            delete(ahead, &mut deletable, &mut deleted)?;
        }
    }
    assert!(
        inserted.len() > 50 && deleted.len() > 50,
        "{inserted:?} {deleted:?}"
    );

    let untouched: Vec<String> = (0..N)
        .filter(|i| !deleted.contains(i))
        .map(initial_name)
        .collect();
    let missing: Vec<&String> = untouched.iter().filter(|n| !seen.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} untouched entries not returned: {missing:?}",
        missing.len()
    );
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "{} names returned more than once: {twice:?}",
        twice.len()
    );
    let deleted_names: BTreeSet<String> = deleted.iter().map(|&i| initial_name(i)).collect();
    let unknown: Vec<&String> = seen
        .keys()
        .filter(|n| !untouched.contains(n) && !inserted.contains(*n) && !deleted_names.contains(*n))
        .collect();
    assert!(unknown.is_empty(), "names that never existed: {unknown:?}");

    // A new listing shows exactly the directory as it is now.
    let now: BTreeSet<String> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().into_string().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    let expected: BTreeSet<String> = untouched
        .iter()
        .cloned()
        .chain(inserted.iter().cloned())
        .collect();
    let extra: Vec<_> = now.difference(&expected).collect();
    let lost: Vec<_> = expected.difference(&now).collect();
    assert!(
        extra.is_empty() && lost.is_empty(),
        "relisting: extra {extra:?}, missing {lost:?}"
    );
    Ok(())
}

/// Catches (found by this test, fixed with it): READDIRPLUS replies carrying the attributes
/// the directory handle fetched with its store page (up to 1000 entries at the first READDIR),
/// which the kernel takes as current. A file written and closed after opendir, but returned by
/// a later READDIRPLUS of that handle, then stated with its old size, and reading it returned
/// its old length of bytes (here none), until the attribute TTL passed. Listings with small
/// getdents buffers (Go's os.ReadDir, glibc on 64 KiB-block mounts) cross many READDIRs per
/// page.
#[test]
fn readdirplus_never_reports_attributes_older_than_a_completed_write() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    let dir = m.path("d");
    fs::create_dir(&dir)?;
    for i in 0..600 {
        fs::write(dir.join(format!("f{i:04}")), b"")?;
    }
    // The first READDIRPLUS (a 64 KiB reply: about 400 entries) fetched the store page of all
    // 600; f0500 comes in a later reply.
    let mut listing = fs::read_dir(&dir)?;
    assert_eq!(
        listing.next().transpose()?.map(|e| e.file_name()),
        Some("f0000".into())
    );
    fs::write(dir.join("f0500"), b"0123456789")?;
    assert_eq!(fs::metadata(dir.join("f0500"))?.len(), 10);
    // A stat of an entry the first reply brought, as `ls -l` makes of every entry, has the
    // kernel ask READDIRPLUS (with attributes) for the next reply too.
    assert_eq!(fs::metadata(dir.join("f0001"))?.len(), 0);
    assert_eq!(listing.count(), 599);
    assert_eq!(
        fs::metadata(dir.join("f0500"))?.len(),
        10,
        "stat after the listing"
    );
    assert_eq!(
        fs::read(dir.join("f0500"))?,
        b"0123456789",
        "read after the listing"
    );
    Ok(())
}
