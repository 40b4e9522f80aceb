//! Files and folders that hold block data (the file:// store, the node cache, the staging of
//! write sessions) are private to the user the mount runs as: files are created 0600 and
//! folders 0700, by the create call itself, so there is no moment in which another local user
//! could open them.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of private folders.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing ancestors as private folders (existing ones are left as
/// they are).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates the one folder `dir`, private; fails if it exists.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)
}

/// Options that create (or truncate) a private file for writing.
fn create_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(FILE_MODE);
    options
}

/// Creates (or truncates) the private file `path` for writing.
pub fn create(path: &Path) -> io::Result<File> {
    create_options().open(path)
}

/// Creates (or truncates) the private file `path` for writing with O_DIRECT: writes bypass
/// the page cache and must be aligned (see `data::local`). File systems without direct I/O
/// (tmpfs) refuse it with EINVAL.
pub fn create_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    create_options().custom_flags(libc::O_DIRECT).open(path)
}

/// Creates the private file `path` for reading and writing; fails if it exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn files_and_folders_are_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let deep = tmp.path().join("a/b");
        super::create_dir_all(&deep).unwrap();
        super::create_dir(&deep.join("c")).unwrap();
        super::create(&deep.join("f")).unwrap();
        super::create_new(&deep.join("g")).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&tmp.path().join(dir)), 0o700, "{dir}");
        }
        for file in ["f", "g"] {
            assert_eq!(mode(&deep.join(file)), 0o600, "{file}");
        }
    }
}
