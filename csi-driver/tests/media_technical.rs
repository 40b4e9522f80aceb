//! Technical metadata across the faces: OpenEXR frames written onto a real mount by oiiotool
//! (Debian openimageio-tools) and an MP4 written by ffmpeg get documents in the built-in
//! `studiodrive/technical` DataStore, from the mount's background extractor, whose
//! resolution, channels and frame rate match what `oiiotool --info` and `ffprobe` report of
//! the same files; documents follow a rename; other files get none.

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

/// `meta query` over the technical DataStore: (document id, path) of each hit.
fn technical_hits(storage: &Storage, filter: &Value) -> anyhow::Result<Vec<(String, Option<String>)>> {
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
            Ok((
                v["id"].as_str().context("id")?.to_string(),
                v["path"].as_str().map(str::to_string),
            ))
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

/// The document of the file at `path` (mount-relative, with a leading '/'), once the
/// extractor filed it.
fn document_at(storage: &Storage, format: &str, path: &str) -> anyhow::Result<Value> {
    let filter = json!({"field": "format", "op": "=", "value": format});
    let mut found = None;
    let seen = common::eventually(Duration::from_secs(60), || {
        found = technical_hits(storage, &filter)
            .ok()
            .and_then(|hits| hits.into_iter().find(|(_, p)| p.as_deref() == Some(path)));
        found.is_some()
    });
    anyhow::ensure!(seen, "no {format} document for {path}");
    document(storage, &found.context("a hit")?.0)
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
    let hits = technical_hits(
        &storage,
        &json!({"field": "format", "op": "=", "value": "openexr"}),
    )?;
    let mut paths: Vec<String> = hits.into_iter().filter_map(|(_, p)| p).collect();
    paths.sort();
    assert_eq!(paths, ["/final/sh010.1001.exr", "/plates/sh010.1002.exr"]);
    // Nothing for the text file: every document is one of the three media files.
    let all = technical_hits(&storage, &json!({"field": "kind", "op": "exists"}))?;
    assert_eq!(all.len(), 3, "{all:?}");
    drop(m);
    Ok(())
}
