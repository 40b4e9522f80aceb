//! Randomized differential workload: one seeded sequence of operations is applied to a real FUSE
//! mount and to a plain local directory side by side, and after every step the results (return
//! values or errno, bytes read, listings) and then the whole trees (names, kinds, sizes, modes,
//! link counts, owners, hard-link groups, symlink targets, file bytes) must be equal. A remount
//! step stops the mount cleanly, mounts the workspace again and compares the entire tree.
//!
//! Deterministic from the seed. Environment:
//! - `FUSE_DIFF_SEED=N` replaces the seed of every differential test that runs (select one
//!   with `-E 'test(differential_seed_1)'`);
//! - `FUSE_DIFF_STEPS=N` sets the number of steps per seed (default 300).
//!
//! Handles also take locks (fcntl record and OFD locks in even seeds, flock in odd ones): in one
//! process, OFD locks and flocks of two handles of one file exclude each other, and a close
//! releases the process's record locks on the file, on the mount as on the local directory.
//!
//! A failure prints the seed, the step, the operation, the recent history and the command that
//! replays it.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context as _;
use common::{Mount, Storage};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

/// Block size of the mounted workspace: small, so writes and truncates cross block boundaries.
const BS: u64 = 65_536;
/// Names drawn in every directory: few, so operations often hit existing entries.
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
/// Largest number of files held open at once.
const MAX_HANDLES: usize = 3;

/// SplitMix64: tiny, fast and stable across versions of any crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Mostly small lengths, sometimes up to two blocks.
    fn len(&mut self) -> u64 {
        match self.below(10) {
            0..=5 => self.below(4096) + 1,
            6..=8 => self.below(BS) + 1,
            _ => self.below(2 * BS) + 1,
        }
    }
    /// Offsets inside, at and beyond the usual file sizes (past EOF makes holes).
    fn offset(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(4096),
            1 => self.below(BS / 4) * 4 + BS - 2048 * self.below(2),
            _ => self.below(4 * BS),
        }
    }
}

/// Bytes from a seed: never all zeros, so they are told apart from holes.
fn data(seed: u64, len: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    (0..len).map(|_| (r.next() as u8) | 1).collect()
}

#[derive(Debug, Clone)]
enum Op {
    /// open(O_CREAT|O_WRONLY [|O_TRUNC] [|O_EXCL], mode), write `len` bytes, close.
    Create {
        path: String,
        mode: u32,
        trunc: bool,
        excl: bool,
        len: u64,
        seed: u64,
    },
    /// open(O_WRONLY), pwrite, close.
    WriteAt {
        path: String,
        off: u64,
        len: u64,
        seed: u64,
    },
    /// open(O_WRONLY|O_APPEND), write, close.
    Append {
        path: String,
        len: u64,
        seed: u64,
    },
    /// truncate(2) by path.
    Truncate {
        path: String,
        len: u64,
    },
    /// open(O_WRONLY), ftruncate, close.
    Ftruncate {
        path: String,
        len: u64,
    },
    /// open(O_RDONLY), pread, close.
    ReadAt {
        path: String,
        off: u64,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Utimens {
        path: String,
        atime: (i64, i64),
        mtime: (i64, i64),
    },
    Readdir {
        path: String,
    },
    Stat {
        path: String,
        follow: bool,
    },
    /// Opens a handle kept across steps: 0 read, 1 write, 2 read-write, 3 append, 4 rw+trunc.
    HOpen {
        path: String,
        how: u8,
    },
    HWrite {
        h: usize,
        off: u64,
        len: u64,
        seed: u64,
    },
    HRead {
        h: usize,
        off: u64,
        len: u64,
    },
    HTruncate {
        h: usize,
        len: u64,
    },
    HSync {
        h: usize,
    },
    HClose {
        h: usize,
    },
    /// fcntl(F_SETLK), or F_OFD_SETLK when `ofd`: `kind` 0 read, 1 write, 2 unlock, of
    /// `len` bytes at `start` (0 = to the end of the file).
    HLock {
        h: usize,
        ofd: bool,
        kind: u8,
        start: u64,
        len: u64,
    },
    /// fcntl(F_GETLK / F_OFD_GETLK): the lock that would block such a request.
    HTestLock {
        h: usize,
        ofd: bool,
        kind: u8,
        start: u64,
        len: u64,
    },
    /// flock(LOCK_NB | ...): `kind` 0 shared, 1 exclusive, 2 unlock.
    HFlock {
        h: usize,
        kind: u8,
    },
    /// Closes every handle, stops the mount cleanly and mounts again.
    Remount,
}

/// Which locks a run takes. Record locks (process-owned and OFD) and flock do not interact on
/// Linux's local file systems, but do through FUSE (the kernel does not tell the daemon which
/// of the two a request is), so one run uses one kind (README.md, on file locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockStyle {
    Record,
    Flock,
}

/// What an operation returned: a summary of its result, or its errno.
type Outcome = Result<String, i32>;

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn io<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| errno_of(&e))
}

fn nx<T>(r: nix::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e as i32)
}

/// close(2) with its result (dropping a `File` ignores it).
fn close(f: File) -> Result<(), i32> {
    nx(nix::unistd::close(f))
}

fn kind_char(ft: fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else {
        '?'
    }
}

/// One side of the comparison: a root directory and the handles opened under it.
struct Side<'a> {
    root: &'a Path,
    handles: &'a mut Vec<File>,
}

fn apply(op: &Op, side: Side<'_>) -> Outcome {
    let p = |rel: &str| side.root.join(rel);
    match op {
        Op::Create {
            path,
            mode,
            trunc,
            excl,
            len,
            seed,
        } => {
            let mut o = OpenOptions::new();
            o.write(true).mode(*mode);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true).truncate(*trunc);
            }
            let mut f = io(o.open(p(path)))?;
            io(f.write_all(&data(*seed, *len)))?;
            close(f)?;
            Ok(String::new())
        }
        Op::WriteAt { path, off, len, seed } => {
            let f = io(OpenOptions::new().write(true).open(p(path)))?;
            io(f.write_all_at(&data(*seed, *len), *off))?;
            close(f)?;
            Ok(String::new())
        }
        Op::Append { path, len, seed } => {
            let mut f = io(OpenOptions::new().append(true).open(p(path)))?;
            io(f.write_all(&data(*seed, *len)))?;
            close(f)?;
            Ok(String::new())
        }
        Op::Truncate { path, len } => {
            nx(nix::unistd::truncate(&p(path), *len as i64))?;
            Ok(String::new())
        }
        Op::Ftruncate { path, len } => {
            let f = io(OpenOptions::new().write(true).open(p(path)))?;
            io(f.set_len(*len))?;
            close(f)?;
            Ok(String::new())
        }
        Op::ReadAt { path, off, len } => {
            let f = io(File::open(p(path)))?;
            let got = read_at(&f, *off, *len)?;
            close(f)?;
            Ok(got)
        }
        Op::Rename { from, to, flags } => {
            let flags = RenameFlags::from_bits_truncate(*flags);
            nx(renameat2(AT_FDCWD, &p(from), AT_FDCWD, &p(to), flags))?;
            Ok(String::new())
        }
        Op::Mkdir { path, mode } => {
            io(fs::DirBuilder::new().mode(*mode).create(p(path)))?;
            Ok(String::new())
        }
        Op::Rmdir { path } => io(fs::remove_dir(p(path))).map(|()| String::new()),
        Op::Unlink { path } => io(fs::remove_file(p(path))).map(|()| String::new()),
        Op::Link { from, to } => io(fs::hard_link(p(from), p(to))).map(|()| String::new()),
        Op::Symlink { target, path } => {
            io(std::os::unix::fs::symlink(target, p(path))).map(|()| String::new())
        }
        Op::Chmod { path, mode } => {
            io(fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))).map(|()| String::new())
        }
        Op::Utimens { path, atime, mtime } => {
            let a = TimeSpec::new(atime.0, atime.1);
            let m = TimeSpec::new(mtime.0, mtime.1);
            nx(utimensat(
                AT_FDCWD,
                &p(path),
                &a,
                &m,
                UtimensatFlags::FollowSymlink,
            ))?;
            let md = io(fs::metadata(p(path)))?;
            Ok(format!(
                "atime {}.{} mtime {}.{}",
                md.atime(),
                md.atime_nsec(),
                md.mtime(),
                md.mtime_nsec()
            ))
        }
        Op::Readdir { path } => {
            let mut names = Vec::new();
            for e in io(fs::read_dir(p(path)))? {
                let e = io(e)?;
                names.push(format!(
                    "{}:{}",
                    e.file_name().to_string_lossy(),
                    kind_char(io(e.file_type())?)
                ));
            }
            names.sort();
            Ok(names.join(" "))
        }
        Op::Stat { path, follow } => {
            let md = if *follow {
                io(fs::metadata(p(path)))?
            } else {
                io(fs::symlink_metadata(p(path)))?
            };
            let kind = kind_char(md.file_type());
            let size = if kind == 'd' { 0 } else { md.size() };
            Ok(format!("{kind} {:o} nlink {} size {size}", md.mode(), md.nlink()))
        }
        Op::HOpen { path, how } => {
            let mut o = OpenOptions::new();
            match how {
                0 => o.read(true),
                1 => o.write(true),
                2 => o.read(true).write(true),
                3 => o.append(true),
                _ => o.read(true).write(true).truncate(true),
            };
            let f = io(o.open(p(path)))?;
            side.handles.push(f);
            Ok(String::new())
        }
        Op::HWrite { h, off, len, seed } => {
            io(side.handles[*h].write_all_at(&data(*seed, *len), *off)).map(|()| String::new())
        }
        Op::HRead { h, off, len } => read_at(&side.handles[*h], *off, *len),
        Op::HTruncate { h, len } => io(side.handles[*h].set_len(*len)).map(|()| String::new()),
        Op::HSync { h } => io(side.handles[*h].sync_all()).map(|()| String::new()),
        Op::HClose { h } => close(side.handles.remove(*h)).map(|()| String::new()),
        Op::HLock {
            h,
            ofd,
            kind,
            start,
            len,
        } => {
            use nix::fcntl::FcntlArg;
            let fl = lock_request(*kind, *start, *len);
            let arg = if *ofd {
                FcntlArg::F_OFD_SETLK(&fl)
            } else {
                FcntlArg::F_SETLK(&fl)
            };
            nx(nix::fcntl::fcntl(&side.handles[*h], arg)).map(|_| String::new())
        }
        Op::HTestLock {
            h,
            ofd,
            kind,
            start,
            len,
        } => {
            use nix::fcntl::FcntlArg;
            let mut fl = lock_request(*kind, *start, *len);
            let arg = if *ofd {
                FcntlArg::F_OFD_GETLK(&mut fl)
            } else {
                FcntlArg::F_GETLK(&mut fl)
            };
            nx(nix::fcntl::fcntl(&side.handles[*h], arg))?;
            // The pid is left out: it names a process on the local side and a lock row's
            // process (or -1 for OFD locks) on the mount.
            Ok(match i32::from(fl.l_type) {
                libc::F_UNLCK => "unlocked".to_string(),
                t => format!(
                    "blocked by {} {}+{}",
                    if t == libc::F_RDLCK { "read" } else { "write" },
                    fl.l_start,
                    fl.l_len
                ),
            })
        }
        Op::HFlock { h, kind } => {
            use nix::fcntl::FlockArg;
            let how = match kind {
                0 => FlockArg::LockSharedNonblock,
                1 => FlockArg::LockExclusiveNonblock,
                _ => FlockArg::Unlock,
            };
            // `Flock` would take the handle; the handle stays in the side's list here.
            #[allow(deprecated)]
            nx(nix::fcntl::flock(side.handles[*h].as_raw_fd(), how)).map(|()| String::new())
        }
        Op::Remount => unreachable!("remount is handled by the driver"),
    }
}

fn lock_request(kind: u8, start: u64, len: u64) -> libc::flock {
    libc::flock {
        l_type: match kind {
            0 => libc::F_RDLCK,
            1 => libc::F_WRLCK,
            _ => libc::F_UNLCK,
        } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as libc::off_t,
        l_len: len as libc::off_t,
        l_pid: 0,
    }
}

/// pread until `len` bytes or EOF; the result shows the length and the bytes' digest.
fn read_at(f: &File, off: u64, len: u64) -> Outcome {
    let mut buf = vec![0u8; len as usize];
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(errno_of(&e)),
        }
    }
    buf.truncate(n);
    Ok(format!("{n} bytes, digest {:016x}", digest(&buf)))
}

/// FNV-1a: enough to tell two byte strings apart in a message.
fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What the comparison sees of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    /// Files and symlinks (a directory's size is file-system specific).
    size: u64,
    /// The first path (in walk order) with the same inode: hard-link groups must match.
    same_as: String,
    target: Option<String>,
    content: Option<Vec<u8>>,
}

/// Every entry under `root`, by relative path.
fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut first_of_ino: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let mut names = Vec::new();
        for e in fs::read_dir(&abs).with_context(|| format!("read_dir {}", abs.display()))? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            let rel = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).with_context(|| format!("lstat {rel}"))?;
            let kind = kind_char(md.file_type());
            let same_as = first_of_ino
                .entry(md.ino())
                .or_insert_with(|| rel.clone())
                .clone();
            let (target, content, size) = match kind {
                'l' => (
                    Some(fs::read_link(&path)?.to_string_lossy().into_owned()),
                    None,
                    md.size(),
                ),
                'f' => (
                    None,
                    Some(fs::read(&path).with_context(|| format!("read {rel}"))?),
                    md.size(),
                ),
                _ => (None, None, 0),
            };
            if kind == 'd' {
                stack.push(rel.clone());
            }
            // A symlink's own mode bits are meaningless on Linux (always 0777 on ext4).
            let mode = if kind == 'l' { 0 } else { md.mode() & 0o7777 };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode,
                    nlink: md.nlink(),
                    uid: md.uid(),
                    gid: md.gid(),
                    size,
                    same_as,
                    target,
                    content,
                },
            );
        }
    }
    Ok(out)
}

/// Describes the first difference between two trees, if any.
fn tree_diff(local: &BTreeMap<String, Entry>, mount: &BTreeMap<String, Entry>) -> Option<String> {
    let lk: Vec<&String> = local.keys().collect();
    let mk: Vec<&String> = mount.keys().collect();
    if lk != mk {
        return Some(format!("listings differ\n  local: {lk:?}\n  mount: {mk:?}"));
    }
    for (path, l) in local {
        let m = &mount[path];
        if l == m {
            continue;
        }
        if let (Some(lc), Some(mc)) = (&l.content, &m.content)
            && lc != mc
        {
            let at = lc
                .iter()
                .zip(mc.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(lc.len().min(mc.len()));
            return Some(format!(
                "{path}: content differs (local {} bytes, mount {} bytes, first difference at {at}: \
                 local {:?}, mount {:?})",
                lc.len(),
                mc.len(),
                lc.get(at),
                mc.get(at)
            ));
        }
        let strip = |e: &Entry| Entry {
            content: None,
            ..e.clone()
        };
        return Some(format!("{path}: local {:?}\n  mount {:?}", strip(l), strip(m)));
    }
    None
}

/// Paths of the local tree by kind, for drawing operands.
struct Tree {
    dirs: Vec<String>,
    files: Vec<String>,
    all: Vec<String>,
}

impl Tree {
    fn of(snap: &BTreeMap<String, Entry>) -> Tree {
        let mut t = Tree {
            dirs: vec![String::new()],
            files: Vec::new(),
            all: Vec::new(),
        };
        for (p, e) in snap {
            t.all.push(p.clone());
            match e.kind {
                'd' => t.dirs.push(p.clone()),
                'f' => t.files.push(p.clone()),
                _ => {}
            }
        }
        t
    }

    fn join(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    /// A name from the pool in an existing directory (it may or may not exist).
    fn fresh(&self, r: &mut Rng) -> String {
        let dir = r.pick(&self.dirs).clone();
        Tree::join(&dir, NAMES[r.below(NAMES.len() as u64) as usize])
    }

    /// Mostly an existing file; sometimes anything else, so errors get compared too.
    fn file(&self, r: &mut Rng) -> String {
        if !self.files.is_empty() && r.chance(85) {
            r.pick(&self.files).clone()
        } else {
            self.any(r)
        }
    }

    fn dir(&self, r: &mut Rng) -> String {
        if r.chance(85) {
            r.pick(&self.dirs).clone()
        } else {
            self.any(r)
        }
    }

    fn any(&self, r: &mut Rng) -> String {
        if !self.all.is_empty() && r.chance(80) {
            r.pick(&self.all).clone()
        } else {
            self.fresh(r)
        }
    }
}

fn generate(r: &mut Rng, t: &Tree, handles: usize, locks: LockStyle) -> Op {
    const MODES: [u32; 6] = [0o644, 0o600, 0o755, 0o700, 0o444, 0o640];
    loop {
        // 100..=129: more handle traffic (reads and writes through files held open while
        // path operations change them); 130..=141: locks on the open handles.
        let op = match r.below(142) {
            0..=9 => Op::Create {
                path: if r.chance(70) { t.fresh(r) } else { t.any(r) },
                mode: *r.pick(&MODES),
                trunc: r.chance(50),
                excl: r.chance(20),
                len: if r.chance(30) { 0 } else { r.len() },
                seed: r.next(),
            },
            10..=19 => Op::WriteAt {
                path: t.file(r),
                off: r.offset(),
                len: r.len(),
                seed: r.next(),
            },
            20..=24 => Op::Append {
                path: t.file(r),
                len: r.len(),
                seed: r.next(),
            },
            25..=28 => Op::Truncate {
                path: t.file(r),
                len: r.offset(),
            },
            29..=32 => Op::Ftruncate {
                path: t.file(r),
                len: r.offset(),
            },
            33..=40 => Op::ReadAt {
                path: t.file(r),
                off: r.offset(),
                len: r.len(),
            },
            41..=47 => Op::Rename {
                from: t.any(r),
                to: if r.chance(50) { t.any(r) } else { t.fresh(r) },
                flags: match r.below(10) {
                    0 => RenameFlags::RENAME_NOREPLACE.bits(),
                    1 => RenameFlags::RENAME_EXCHANGE.bits(),
                    _ => 0,
                },
            },
            48..=52 => Op::Mkdir {
                path: t.fresh(r),
                mode: *r.pick(&[0o755, 0o700, 0o775, 0o1777]),
            },
            // Never the root: removing the local root would end the comparison, not test it.
            53..=55 => Op::Rmdir {
                path: if t.dirs.len() > 1 && r.chance(85) {
                    r.pick(&t.dirs[1..]).clone()
                } else {
                    t.any(r)
                },
            },
            56..=59 => Op::Unlink { path: t.any(r) },
            60..=63 => Op::Link {
                from: t.any(r),
                to: t.fresh(r),
            },
            64..=66 => {
                let path = t.fresh(r);
                // Relative targets only, so they resolve the same way under both roots.
                let target = match r.below(3) {
                    0 => r.pick(&NAMES[..]).to_string(),
                    1 => format!("{}/{}", r.pick(&NAMES[..]), r.pick(&NAMES[..])),
                    _ => Path::new(&t.any(r))
                        .file_name()
                        .map_or("x".into(), |n| n.to_string_lossy().into()),
                };
                Op::Symlink { target, path }
            }
            67..=70 => Op::Chmod {
                path: t.any(r),
                mode: *r.pick(&[0o644, 0o600, 0o755, 0o700, 0o444, 0o1777]),
            },
            71..=73 => Op::Utimens {
                path: t.any(r),
                atime: (
                    1_000_000_000 + r.below(1 << 30) as i64,
                    r.below(1_000_000_000) as i64,
                ),
                mtime: (
                    1_000_000_000 + r.below(1 << 30) as i64,
                    r.below(1_000_000_000) as i64,
                ),
            },
            74..=76 => Op::Readdir { path: t.dir(r) },
            77..=78 => Op::Stat {
                path: t.any(r),
                follow: r.chance(50),
            },
            79..=82 | 100..=105 if handles < MAX_HANDLES => Op::HOpen {
                path: t.file(r),
                how: r.below(5) as u8,
            },
            83..=87 | 106..=115 if handles > 0 => Op::HWrite {
                h: r.below(handles as u64) as usize,
                off: r.offset(),
                len: r.len(),
                seed: r.next(),
            },
            88..=91 | 116..=129 if handles > 0 => Op::HRead {
                h: r.below(handles as u64) as usize,
                off: r.offset(),
                len: r.len(),
            },
            92..=93 if handles > 0 => Op::HTruncate {
                h: r.below(handles as u64) as usize,
                len: r.offset(),
            },
            94 if handles > 0 => Op::HSync {
                h: r.below(handles as u64) as usize,
            },
            95..=98 if handles > 0 => Op::HClose {
                h: r.below(handles as u64) as usize,
            },
            99 => Op::Remount,
            130..=135 if handles > 0 && locks == LockStyle::Record => Op::HLock {
                h: r.below(handles as u64) as usize,
                ofd: r.chance(50),
                kind: r.below(3) as u8,
                start: r.below(4) * 100,
                len: r.below(3) * 150,
            },
            136..=137 if handles > 0 && locks == LockStyle::Record => Op::HTestLock {
                h: r.below(handles as u64) as usize,
                ofd: r.chance(50),
                kind: r.below(2) as u8,
                start: r.below(4) * 100,
                len: r.below(3) * 150,
            },
            130..=137 if handles > 0 && locks == LockStyle::Flock => Op::HFlock {
                h: r.below(handles as u64) as usize,
                kind: r.below(3) as u8,
            },
            _ => continue,
        };
        return op;
    }
}

fn steps_from_env() -> usize {
    std::env::var("FUSE_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// The seed to run: `FUSE_DIFF_SEED` replaces the test's own (the replay command selects one
/// test, so nothing is skipped; every selected test runs a workload).
fn seed_or(default: u64) -> u64 {
    std::env::var("FUSE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run(seed: u64, steps: usize) -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let mount_args = ["--block-size", "65536"];
    let mut mount = Mount::new(&storage, &mount_args)?;
    let local = tempfile::tempdir()?;
    let mut rng = Rng(seed);
    let locks = if seed.is_multiple_of(2) {
        LockStyle::Record
    } else {
        LockStyle::Flock
    };
    let (mut lh, mut mh): (Vec<File>, Vec<File>) = (Vec::new(), Vec::new());
    let mut history: Vec<String> = Vec::new();
    let mut tree = Tree::of(&snapshot(local.path())?);
    // Per operation kind: (succeeded, failed), to show the workload reaches both paths.
    let mut stats: BTreeMap<String, (u32, u32)> = BTreeMap::new();

    let fail = |history: &[String], what: String| -> anyhow::Error {
        let recent = history
            .iter()
            .rev()
            .take(40)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ");
        anyhow::anyhow!(
            "seed {seed}: {what}\nrecent operations:\n  {recent}\nreplay: FUSE_DIFF_SEED={seed} FUSE_DIFF_STEPS={steps} \
             cargo nextest run -p drive-csi -E 'test(differential_seed_1)'"
        )
    };

    for step in 0..steps {
        let mut op = generate(&mut rng, &tree, lh.len(), locks);
        if step == steps / 2 {
            op = Op::Remount;
        }
        history.push(format!("{step}: {op:?}"));
        if let Op::Remount = op {
            // Closing commits: the close results must agree too.
            while !lh.is_empty() {
                let (a, b) = (close(lh.remove(0)), close(mh.remove(0)));
                if a != b {
                    return Err(fail(
                        &history,
                        format!("close before remount: local {a:?}, mount {b:?}"),
                    ));
                }
            }
            let status = mount.stop()?;
            if !status.success() {
                return Err(fail(&history, format!("mount exited with {status} on SIGTERM")));
            }
            drop(mount);
            mount = Mount::new(&storage, &mount_args)?;
        } else {
            let a = apply(
                &op,
                Side {
                    root: local.path(),
                    handles: &mut lh,
                },
            );
            let b = apply(
                &op,
                Side {
                    root: &mount.dir,
                    handles: &mut mh,
                },
            );
            if a != b {
                return Err(fail(
                    &history,
                    format!("step {step}: results differ\n  local: {a:?}\n  mount: {b:?}"),
                ));
            }
            let kind = format!("{op:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string();
            let count = stats.entry(kind).or_default();
            if a.is_ok() { count.0 += 1 } else { count.1 += 1 }
        }
        let ls = snapshot(local.path())?;
        let ms = snapshot(&mount.dir)
            .map_err(|e| fail(&history, format!("step {step}: walking the mount: {e:#}")))?;
        if let Some(diff) = tree_diff(&ls, &ms) {
            return Err(fail(
                &history,
                format!("step {step}: trees differ after {op:?}\n  {diff}"),
            ));
        }
        tree = Tree::of(&ls);
    }
    // Final: close everything, remount, compare once more.
    while !lh.is_empty() {
        let (a, b) = (close(lh.remove(0)), close(mh.remove(0)));
        if a != b {
            return Err(fail(&history, format!("final close: local {a:?}, mount {b:?}")));
        }
    }
    mount.stop()?;
    drop(mount);
    let mount = Mount::new(&storage, &mount_args)?;
    if let Some(diff) = tree_diff(&snapshot(local.path())?, &snapshot(&mount.dir)?) {
        return Err(fail(&history, format!("after the final remount\n  {diff}")));
    }
    let files = tree.files.len();
    eprintln!(
        "seed {seed}: {steps} steps, final tree {} entries ({files} files), all equal",
        tree.all.len()
    );
    let stats: Vec<String> = stats
        .iter()
        .map(|(k, (ok, err))| format!("{k} {ok}/{err}"))
        .collect();
    eprintln!("  operations ok/failed: {}", stats.join(", "));
    Ok(())
}

#[test]
fn differential_seed_1() -> anyhow::Result<()> {
    run(seed_or(1), steps_from_env())
}

#[test]
fn differential_seed_2() -> anyhow::Result<()> {
    run(seed_or(2), steps_from_env())
}

#[test]
fn differential_seed_3() -> anyhow::Result<()> {
    run(seed_or(3), steps_from_env())
}

// Found by this test (fixed with it): an OFD lock outlived the close of its open file (the
// kernel sends no unlock for it through FUSE), so a later F_GETLK saw it; at step 213.
#[test]
fn differential_seed_8() -> anyhow::Result<()> {
    run(seed_or(8), steps_from_env())
}
