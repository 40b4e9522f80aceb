//! The mount records a file's last access (issue 17, expiry and tiering) when it is opened,
//! not when it is only looked at.

mod common;

use std::os::unix::fs::MetadataExt as _;

use common::{Mount, Storage};
use drive::model::NodeId;

#[test]
fn reading_a_file_through_the_mount_records_its_last_access_and_stat_does_not() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let mut m = Mount::new(&storage, &[])?;
    std::fs::write(m.path("read.mov"), b"frames")?;
    std::fs::write(m.path("stat-only.mov"), b"frames")?;
    let read = NodeId(std::fs::metadata(m.path("read.mov"))?.ino());
    let looked_at = NodeId(std::fs::metadata(m.path("stat-only.mov"))?.ino());
    assert_eq!(std::fs::read(m.path("read.mov"))?, b"frames");
    // A clean unmount writes what the mount noted.
    assert!(m.stop()?.success());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.url.clone())).await?;
        assert!(meta.last_access(read).await?.is_some(), "an open is an access");
        assert_eq!(meta.last_access(looked_at).await?, None, "stat is no access");
        anyhow::Ok(())
    })
}
