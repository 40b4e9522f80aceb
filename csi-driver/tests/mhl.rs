//! `studiodrive-csi mhl create|verify` on a real mount, checked by the ASC's reference
//! implementation (PyPI `ascmhl`, installed by the test into a virtualenv under the target
//! directory): the history it writes verifies, a flipped byte is reported by both tools, and
//! a generation `ascmhl` adds is read back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context as _;
use common::{Mount, Storage};

/// The `ascmhl` command, installed (pinned) into a virtualenv on first use.
fn ascmhl() -> anyhow::Result<PathBuf> {
    Ok(common::pypi_venv("ascmhl-venv", "ascmhl==1.2")?.join("bin/ascmhl"))
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("run {cmd:?}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn studiodrive_mhl(args: &[&str], folder: &Path) -> anyhow::Result<Output> {
    run(common::studiodrive().arg("mhl").args(args).arg(folder))
}

// Catches: an MHL the reference implementation cannot read (format, chain C4 ids, escaping),
// hashes that are not the files' (from the mount's attributes or read), a verify that misses
// a changed byte or a missing file, a history another tool extended that no longer reads.
#[test]
fn an_mhl_written_on_a_mount_verifies_with_ascmhl_and_a_flipped_byte_fails_both() -> anyhow::Result<()> {
    let ascmhl = ascmhl()?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    let shot = m.path("shot010 & plates");
    std::fs::create_dir_all(shot.join("comp"))?;
    for frame in 1001..1013u32 {
        let bytes: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(frame) >> 7) as u8)
            .collect();
        std::fs::write(shot.join(format!("comp/sh010_comp.{frame:04}.exr")), bytes)?;
    }
    std::fs::write(shot.join("notes <v1>.txt"), b"slate")?;
    std::fs::write(shot.join("empty.txt"), b"")?;

    let made = studiodrive_mhl(&["create"], &shot)?;
    assert!(made.status.success(), "{}", text(&made));
    assert!(text(&made).contains("0 verified, 14 new"), "{}", text(&made));
    let mhl_file = std::fs::read_dir(shot.join("ascmhl"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".mhl"))
        .context("a generation file")?;
    assert!(mhl_file.starts_with("0001_"), "{mhl_file}");
    let mhl = std::fs::read_to_string(shot.join("ascmhl").join(&mhl_file))?;
    assert!(
        mhl.contains("notes &lt;v1&gt;.txt") && mhl.contains(">ef46db3751d8e999</xxh64>"),
        "{mhl}"
    );

    // The reference implementation checks every file against our history, then adds its own
    // generation (exit 0 only when all match).
    let checked = run(Command::new(&ascmhl).args(["create", "-h", "xxh64"]).arg(&shot))?;
    assert!(
        checked.status.success(),
        "ascmhl rejected the history:\n{}",
        text(&checked)
    );
    // Ours reads the history ascmhl extended.
    let ours = studiodrive_mhl(&["verify"], &shot)?;
    assert!(ours.status.success(), "{}", text(&ours));
    assert!(text(&ours).contains("14 verified, 0 new"), "{}", text(&ours));

    // A flipped byte in one frame: both tools name it and fail.
    let frame = shot.join("comp/sh010_comp.1005.exr");
    let mut bytes = std::fs::read(&frame)?;
    bytes[40_000] ^= 0x01;
    std::fs::write(&frame, &bytes)?;
    let ours = studiodrive_mhl(&["verify"], &shot)?;
    assert!(!ours.status.success(), "{}", text(&ours));
    assert!(
        text(&ours).contains("hash mismatch for comp/sh010_comp.1005.exr"),
        "{}",
        text(&ours)
    );
    let generations = std::fs::read_dir(shot.join("ascmhl"))?.count();
    let refused = studiodrive_mhl(&["create"], &shot)?;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert_eq!(
        std::fs::read_dir(shot.join("ascmhl"))?.count(),
        generations,
        "no generation is written over a mismatch"
    );
    let reference = run(Command::new(&ascmhl).args(["create", "-h", "xxh64"]).arg(&shot))?;
    assert!(!reference.status.success(), "{}", text(&reference));
    assert!(
        text(&reference).contains("hash mismatch") && text(&reference).contains("sh010_comp.1005.exr"),
        "{}",
        text(&reference)
    );

    // A missing file fails ours too (after the frame is put back).
    bytes[40_000] ^= 0x01;
    std::fs::write(&frame, &bytes)?;
    std::fs::remove_file(shot.join("empty.txt"))?;
    let ours = studiodrive_mhl(&["verify"], &shot)?;
    assert!(
        !ours.status.success() && text(&ours).contains("empty.txt is in the history but missing"),
        "{}",
        text(&ours)
    );
    Ok(())
}
