//! Technical metadata across the faces: OpenEXR frames written onto a real mount by oiiotool
//! (Debian openimageio-tools) and an MP4 written by ffmpeg get documents in the built-in
//! `studiodrive/technical` DataStore, from the mount's background extractor, whose
//! resolution, channels and frame rate match what `oiiotool --info` and `ffprobe` report of
//! the same files; documents follow a rename; other files get none. A sequence of frames gets
//! a summary document on its folder, which a frame written later updates.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use common::{Mount, Storage};
use serde_json::{Value, json};

fn tool(name: &str, package: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()?
            .status
            .success(),
        "{name} is missing: install the Debian package {package} (scripts/test.sh does as root)"
    );
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A document `meta query` found.
#[derive(Debug)]
struct Hit {
    id: String,
    media_id: Value,
    path: Option<String>,
}

/// `meta query` over the technical DataStore.
fn technical_hits(storage: &Storage, filter: &Value) -> anyhow::Result<Vec<Hit>> {
    let out = run(common::studiodrive()
        .args([
            "meta",
            "query",
            "--datastore",
            "studiodrive/technical",
            "--filter",
            &filter.to_string(),
        ])
        .args(storage.args())
        .env("RUST_LOG", "warn"))?;
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok(Hit {
                id: v["id"].as_str().context("id")?.to_string(),
                media_id: v["mediaId"].clone(),
                path: v["path"].as_str().map(str::to_string),
            })
        })
        .collect()
}

fn document(storage: &Storage, id: &str) -> anyhow::Result<Value> {
    let out = run(common::studiodrive()
        .args(["meta", "get", "--id", id])
        .args(storage.args())
        .env("RUST_LOG", "warn"))?;
    Ok(serde_json::from_str::<Value>(out.trim())?["document"].clone())
}

/// The documents of `media_id` (id, document): the latest, or every version oldest first.
fn versions(storage: &Storage, media_id: &Value, all: bool) -> anyhow::Result<Vec<(String, Value)>> {
    let media_id = media_id.to_string();
    let mut args = vec![
        "meta",
        "get",
        "--datastore",
        "studiodrive/technical",
        "--media-id",
        &media_id,
    ];
    if all {
        args.push("--all");
    }
    let out = run(common::studiodrive()
        .args(args)
        .args(storage.args())
        .env("RUST_LOG", "warn"))?;
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((v["id"].as_str().context("id")?.to_string(), v["document"].clone()))
        })
        .collect()
}

/// Only files' documents whose format is `format`.
fn files_of_format(format: &str) -> Value {
    json!({"and": [
        {"field": "kind", "op": "=", "value": "file"},
        {"field": "format", "op": "=", "value": format}
    ]})
}

/// The document of the file at `path` (mount-relative, with a leading '/'), once the
/// extractor filed it.
fn document_at(storage: &Storage, format: &str, path: &str) -> anyhow::Result<Value> {
    let filter = files_of_format(format);
    let mut found = None;
    let seen = common::eventually(Duration::from_secs(60), || {
        found = technical_hits(storage, &filter)
            .ok()
            .and_then(|hits| hits.into_iter().find(|h| h.path.as_deref() == Some(path)));
        found.is_some()
    });
    anyhow::ensure!(seen, "no {format} document for {path}");
    document(storage, &found.context("a hit")?.id)
}

/// `oiiotool --info -v`: (width, height, channel count) of an image.
fn oiio_info(file: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let info = run(Command::new("oiiotool").arg("--info").arg("-v").arg(file))?;
    // "Reading <file>", then "<file>   :   1920 x 1080, 4 channel, half openexr"
    let line = info
        .lines()
        .find(|l| l.contains(" channel") && l.contains(':'))
        .context("oiiotool's image line")?;
    let dims = line.rsplit(':').next().context("dimensions")?;
    let mut words = dims
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty());
    let mut next = || -> anyhow::Result<u64> { Ok(words.next().context("a number")?.parse()?) };
    Ok((next()?, next()?, next()?))
}

// Catches: no document for a written file (the commit observer not wired, the extractor
// failing on real files), values that disagree with the reference tools, documents that do
// not follow a rename, documents for files of other formats.
#[test]
fn frames_and_movies_written_on_a_mount_get_documents_matching_the_tools() -> anyhow::Result<()> {
    tool("oiiotool", "openimageio-tools")?;
    tool("ffmpeg", "ffmpeg")?;
    tool("ffprobe", "ffmpeg")?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    std::fs::create_dir_all(m.path("plates"))?;
    let exr = m.path("plates/sh010.1001.exr");
    run(Command::new("oiiotool")
        .args([
            "--pattern",
            "fill:top=0.1,0.2,0.3,1:bottom=0.9,0.8,0.7,1",
            "1920x1080",
            "4",
        ])
        .args(["-d", "half", "--compression", "zip", "-o"])
        .arg(&exr))?;
    let exr_rgb = m.path("plates/sh010.1002.exr");
    run(Command::new("oiiotool")
        .args([
            "--pattern",
            "constant:color=0.5,0.5,0.5",
            "2048x858",
            "3",
            "-d",
            "float",
        ])
        .args(["--compression", "piz", "-o"])
        .arg(&exr_rgb))?;
    let movie = m.path("review.mp4");
    run(Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x360:rate=24000/1001",
            "-t",
            "1",
        ])
        .args(["-pix_fmt", "yuv420p", "-y"])
        .arg(&movie))?;
    std::fs::write(
        m.path("notes.txt"),
        "not media at all, but long enough to be looked at",
    )?;

    for (file, path) in [
        (&exr, "/plates/sh010.1001.exr"),
        (&exr_rgb, "/plates/sh010.1002.exr"),
    ] {
        let doc = document_at(&storage, "openexr", path)?;
        let (w, h, c) = oiio_info(file)?;
        assert_eq!(
            (doc["width"].as_u64(), doc["height"].as_u64()),
            (Some(w), Some(h)),
            "{path}: {doc}"
        );
        assert_eq!(doc["channels"].as_u64(), Some(c), "{path}: {doc}");
    }

    let doc = document_at(&storage, "quicktime", "/review.mp4")?;
    let probe: Value = serde_json::from_str(&run(Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams"])
        .arg(&movie))?)?;
    let video = probe["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == "video"))
        .context("a video stream")?;
    assert_eq!(doc["width"], video["width"], "{doc}");
    assert_eq!(doc["height"], video["height"], "{doc}");
    let rate = video["avg_frame_rate"].as_str().context("a frame rate")?;
    let (n, d) = rate.split_once('/').context("n/d")?;
    let rate = n.parse::<f64>()? / d.parse::<f64>()?;
    let got = doc["frameRate"].as_f64().context("frameRate")?;
    assert!(
        (got - rate).abs() < 1e-3,
        "frame rate {got} against ffprobe's {rate}"
    );

    // The document follows its file.
    std::fs::create_dir(m.path("final"))?;
    std::fs::rename(&exr, m.path("final/sh010.1001.exr"))?;
    let hits = technical_hits(&storage, &files_of_format("openexr"))?;
    let mut paths: Vec<String> = hits.into_iter().filter_map(|h| h.path).collect();
    paths.sort();
    assert_eq!(paths, ["/final/sh010.1001.exr", "/plates/sh010.1002.exr"]);
    // Nothing for the text file: every file document is one of the three media files (the
    // two frames also make a sequence, whose summary is a `kind: sequence` document).
    let files = technical_hits(&storage, &json!({"field": "kind", "op": "=", "value": "file"}))?;
    assert_eq!(files.len(), 3, "{files:?}");
    drop(m);
    Ok(())
}

/// Writes frame `frame` of `sh020.%04d.exr` in `dir` with oiiotool: 320x180, RGB, half.
fn write_frame(dir: &Path, frame: u32) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("sh020.{frame:04}.exr"));
    run(Command::new("oiiotool")
        .args(["--pattern", "constant:color=0.2,0.4,0.6", "320x180", "3"])
        .args(["-d", "half", "-o"])
        .arg(&path))?;
    Ok(path)
}

/// The latest summary of `media_id` once `ready` holds for it (polled with a deadline).
fn summary_when(
    storage: &Storage,
    media_id: &Value,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<(String, Value)> {
    let mut last = None;
    let seen = common::eventually(Duration::from_secs(60), || {
        last = versions(storage, media_id, false).ok().and_then(|mut v| v.pop());
        last.as_ref().is_some_and(|(_, doc)| ready(doc))
    });
    anyhow::ensure!(
        seen,
        "the summary of {media_id} never got there; last seen: {last:?}"
    );
    last.context("a summary")
}

// Catches: no summary filed for a sequence (the extractor not scheduling it, the DataStore
// refusing its media id), a summary that miscounts frames or gaps, a resolution other than
// the frames', a summary not attached to its folder, and one that a later frame does not
// update (or that replaces its history instead of adding a version).
#[test]
fn a_sequence_written_on_a_mount_gets_a_summary_that_a_new_frame_updates() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;

    tool("oiiotool", "openimageio-tools")?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    let shot = m.path("shots/sh020");
    std::fs::create_dir_all(&shot)?;
    let mut frames = Vec::new();
    for frame in [1001, 1002, 1003, 1004, 1005, 1007] {
        frames.push(write_frame(&shot, frame)?);
    }
    let folder = std::fs::metadata(&shot)?.ino();
    let media_id = json!({"workspace": "default", "folder": folder, "sequence": "sh020.%04d.exr"});

    // Frames land one by one: wait for the summary that has seen all six.
    let (first_id, summary) = summary_when(&storage, &media_id, |doc| doc["frameCount"] == 6)?;
    assert_eq!(summary["kind"], "sequence", "{summary}");
    assert_eq!(summary["firstFrame"], 1001, "{summary}");
    assert_eq!(summary["lastFrame"], 1007, "{summary}");
    assert_eq!(summary["missingFrames"], json!([[1006, 1006]]), "{summary}");
    assert_eq!(summary["missingFrameCount"], 1, "{summary}");
    let (w, h, c) = oiio_info(&frames[0])?;
    assert_eq!(
        (
            summary["width"].as_u64(),
            summary["height"].as_u64(),
            summary["channels"].as_u64()
        ),
        (Some(w), Some(h), Some(c)),
        "{summary}"
    );
    assert_eq!(summary["format"], "openexr", "{summary}");
    assert!(summary.get("mixed").is_none(), "{summary}");
    // Attached to the folder: a query finds it there.
    let hits = technical_hits(
        &storage,
        &json!({"field": "kind", "op": "=", "value": "sequence"}),
    )?;
    let on_folder: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.path.as_deref() == Some("/shots/sh020"))
        .collect();
    assert_eq!(on_folder.len(), 1, "{hits:?}");
    assert_eq!(on_folder[0].media_id, media_id);

    write_frame(&shot, 1006)?;
    let (latest_id, summary) = summary_when(&storage, &media_id, |doc| doc["missingFrameCount"] == 0)?;
    assert_eq!(summary["frameCount"], 7, "{summary}");
    assert_eq!(
        (&summary["firstFrame"], &summary["lastFrame"]),
        (&json!(1001), &json!(1007))
    );
    assert_eq!(summary["missingFrames"], json!([]), "{summary}");
    assert_eq!(summary["width"].as_u64(), Some(w), "{summary}");
    let all = versions(&storage, &media_id, true)?;
    assert!(all.len() >= 2, "{all:?}");
    assert_eq!(
        all.last().map(|(id, _)| id),
        Some(&latest_id),
        "the newest is the latest"
    );
    assert!(
        all.iter()
            .any(|(id, doc)| *id == first_id && doc["missingFrames"] == json!([[1006, 1006]])),
        "the summary with the gap is kept as an older version: {all:?}"
    );
    assert_ne!(first_id, latest_id);
    drop(m);
    Ok(())
}
