//! Project workspaces are write-once, through real FUSE mounts: every call that would change a
//! committed file fails with EPERM at the call (not at a later close) and changes nothing, and
//! of two mounts writing one empty file exactly one close succeeds.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{Mount, Storage, errno_of, eventually};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

/// Test storage with a project (write-once) workspace named "proj".
fn project_storage() -> anyhow::Result<Storage> {
    let storage = Storage::new()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.url.clone())).await?;
        meta.create_workspace(
            &drive::model::Actor::system("test"),
            &drive::model::WorkspaceSpec::new("proj", drive::model::WorkspaceKind::Project),
        )
        .await?;
        anyhow::Ok(())
    })?;
    Ok(storage)
}

fn mount_project(storage: &Storage) -> anyhow::Result<Mount> {
    Mount::new(storage, &["--workspace", "proj"])
}

/// The errno of a nix call that must fail.
fn nix_errno<T: std::fmt::Debug>(what: &str, r: nix::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what} succeeded ({v:?}); an error was expected"),
        Err(e) => e as i32,
    }
}

/// Content and size of `path`, read through a fresh descriptor.
fn content(path: &Path) -> (Vec<u8>, u64) {
    (fs::read(path).unwrap(), fs::metadata(path).unwrap().len())
}

// Catches: open(O_TRUNC), open for writing, truncate, a size-changing setattr, rename over,
// RENAME_EXCHANGE, unlink or a link-and-rename replacement of a committed project file that
// succeeds at the call (and fails only at close, or not at all), or that changes the file.
#[test]
fn every_change_of_a_committed_project_file_fails_at_the_call() -> anyhow::Result<()> {
    let storage = project_storage()?;
    let m = mount_project(&storage)?;
    let committed = m.path("final.exr");
    let bytes = b"the delivered frame".to_vec();
    fs::write(&committed, &bytes)?;
    fs::write(m.path("other.exr"), b"another file")?;
    File::create(m.path("empty.exr"))?;
    let want = (bytes.clone(), bytes.len() as u64);
    let ino = fs::metadata(&committed)?.ino();

    let opens = [
        ("open O_WRONLY", OpenOptions::new().write(true).clone()),
        ("open O_RDWR", OpenOptions::new().read(true).write(true).clone()),
        ("open O_APPEND", OpenOptions::new().append(true).clone()),
        (
            "open O_WRONLY|O_TRUNC",
            OpenOptions::new().write(true).truncate(true).clone(),
        ),
        (
            "open O_CREAT|O_WRONLY|O_TRUNC",
            OpenOptions::new().write(true).create(true).truncate(true).clone(),
        ),
    ];
    for (what, options) in opens {
        assert_eq!(errno_of(what, options.open(&committed)), libc::EPERM, "{what}");
        assert_eq!(content(&committed), want, "after {what}");
    }
    for len in [0, 3, 100] {
        let what = format!("truncate to {len}");
        let r = nix::unistd::truncate(&committed, len);
        assert_eq!(nix_errno(&what, r), libc::EPERM, "{what}");
        assert_eq!(content(&committed), want, "after {what}");
    }
    let renames = [
        ("rename over it", "other.exr", "final.exr", RenameFlags::empty()),
        (
            "exchange onto it",
            "other.exr",
            "final.exr",
            RenameFlags::RENAME_EXCHANGE,
        ),
        (
            "exchange of it",
            "final.exr",
            "empty.exr",
            RenameFlags::RENAME_EXCHANGE,
        ),
    ];
    for (what, from, to, flags) in renames {
        let r = renameat2(AT_FDCWD, &m.path(from), AT_FDCWD, &m.path(to), flags);
        assert_eq!(nix_errno(what, r), libc::EPERM, "{what}");
        assert_eq!(content(&committed), want, "after {what}");
    }
    assert_eq!(errno_of("unlink", fs::remove_file(&committed)), libc::EPERM);
    // Replacing it by a hard link: `ln -f` unlinks first (refused above); linking at a free
    // name and renaming that over it is refused as a rename over it. A link onto its name is
    // EEXIST, as for any existing name.
    fs::hard_link(m.path("other.exr"), m.path("other-link.exr"))?;
    let r = renameat2(
        AT_FDCWD,
        &m.path("other-link.exr"),
        AT_FDCWD,
        &committed,
        RenameFlags::empty(),
    );
    assert_eq!(nix_errno("link-replace", r), libc::EPERM);
    assert_eq!(
        errno_of(
            "link onto its name",
            fs::hard_link(m.path("other.exr"), &committed)
        ),
        libc::EEXIST
    );

    assert_eq!(content(&committed), want, "same mount");
    assert_eq!(fs::metadata(&committed)?.ino(), ino, "still the same file");
    assert_eq!(fs::read(m.path("other.exr"))?, b"another file");
    let fresh = mount_project(&storage)?;
    assert_eq!(content(&fresh.path("final.exr")), want, "another mount");
    // An empty file still takes its first content (and is then protected in turn).
    fs::write(m.path("empty.exr"), b"first content")?;
    assert_eq!(fs::read(fresh.path("empty.exr"))?, b"first content");
    Ok(())
}

// Catches: two write sessions that began on one empty file both committing (the later close
// silently replacing the first), or the loser's close reporting success for bytes that were
// dropped.
#[test]
fn of_two_mounts_writing_one_empty_file_only_the_first_close_commits() -> anyhow::Result<()> {
    let storage = project_storage()?;
    let (m1, m2) = (mount_project(&storage)?, mount_project(&storage)?);
    File::create(m1.path("shot.exr"))?; // touch
    assert!(
        eventually(Duration::from_secs(10), || m2.path("shot.exr").exists()),
        "the second mount sees the empty file"
    );
    let open = |m: &Mount| OpenOptions::new().write(true).open(m.path("shot.exr"));
    let (mut first, mut second) = (open(&m1)?, open(&m2)?);
    use std::io::Write as _;
    first.write_all(b"first writer's frame")?;
    second.write_all(b"second writer's other frame")?;
    nix::unistd::close(first).expect("the first close commits");
    let lost = nix::unistd::close(second);
    assert_eq!(
        nix_errno("the second close", lost),
        libc::EPERM,
        "the second writer learns at close that its bytes were not stored"
    );
    for (m, which) in [(&m1, "first mount"), (&m2, "second mount")] {
        let path = m.path("shot.exr");
        assert!(
            eventually(Duration::from_secs(10), || {
                fs::read(&path).is_ok_and(|b| b == b"first writer's frame")
            }),
            "{which} reads the winner's bytes: {:?}",
            fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned())
        );
    }
    let fresh = mount_project(&storage)?;
    assert_eq!(fs::read(fresh.path("shot.exr"))?, b"first writer's frame");
    Ok(())
}
