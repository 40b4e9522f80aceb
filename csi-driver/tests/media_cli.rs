//! `studiodrive-csi meta ...` against a real mount: a document attached to a file follows it
//! through a rename (queries print the path as it is now), an invalid document is refused
//! with its JSON path and stores nothing, and timeline queries answer from the command line.

mod common;

use std::io::Write as _;
use std::process::Stdio;

use anyhow::Context as _;
use common::{Mount, Storage};
use serde_json::{Value, json};

/// Runs `studiodrive-csi meta ARGS` with `stdin` as standard input; (success, stdout, stderr).
fn meta(storage: &Storage, args: &[&str], stdin: &str) -> anyhow::Result<(bool, String, String)> {
    let mut child = common::studiodrive()
        .arg("meta")
        .args(args)
        .args(storage.args())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `meta ARGS` that must succeed; its output lines as JSON.
fn meta_ok(storage: &Storage, args: &[&str], stdin: &str) -> anyhow::Result<Vec<Value>> {
    let (ok, out, err) = meta(storage, args, stdin)?;
    anyhow::ensure!(ok, "meta {args:?} failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

// Catches: a query printing the path a document was written at rather than its file's path
// now, documents lost on rename, an invalid document stored or refused without its path, a
// CLI that ignores the filter or the timeline range.
#[test]
fn documents_follow_their_file_and_invalid_ones_are_refused_with_their_path() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    std::fs::create_dir_all(m.path("shot010/comp"))?;
    std::fs::write(m.path("shot010/comp/take1.mov"), b"frames")?;
    std::fs::write(m.path("shot010/comp/take2.mov"), b"frames")?;

    let spec = json!({
        "name": "review",
        "analysisType": "shot-boundaries",
        "version": 1,
        "schema": {
            "type": "object",
            "required": ["fps", "shots"],
            "properties": {
                "fps": {"type": "number", "minimum": 1},
                "shots": {"type": "array", "items": {
                    "type": "object", "required": ["start", "end"],
                    "properties": {"start": {"type": "number"}, "end": {"type": "number"}}}}
            }
        },
        "mediaIdSchema": {"type": "string", "pattern": "^take[0-9]+$"},
        "queryable": ["fps"],
        "timeline": [{"path": "shots", "start": "start", "end": "end"}]
    });
    meta_ok(&storage, &["datastore", "put", "-"], &spec.to_string())?;
    // The mount made the built-in technical DataStore; ours is beside it.
    let listed = meta_ok(&storage, &["datastore", "list"], "")?;
    let names: Vec<&str> = listed.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["review", "studiodrive/technical"], "{listed:?}");
    assert_eq!(listed[0]["queryable"], json!(["fps"]));

    let doc1 = json!({"fps": 24, "shots": [{"start": 0, "end": 10}, {"start": 10, "end": 30}]});
    let put1 = meta_ok(
        &storage,
        &[
            "put",
            "--datastore",
            "review",
            "--media-id",
            "\"take1\"",
            "--path",
            "/shot010/comp/take1.mov",
            "-",
        ],
        &doc1.to_string(),
    )?;
    let id1 = put1[0]["id"].as_str().context("an id")?.to_owned();
    let doc2 = json!({"fps": 48, "shots": []});
    meta_ok(
        &storage,
        &[
            "put",
            "--datastore",
            "review",
            "--media-id",
            "\"take2\"",
            "--path",
            "/shot010/comp/take2.mov",
            "-",
        ],
        &doc2.to_string(),
    )?;

    // The file moves; the query names it where it is now.
    std::fs::create_dir(m.path("published"))?;
    std::fs::rename(m.path("shot010/comp/take1.mov"), m.path("published/final.mov"))?;
    let hits = meta_ok(
        &storage,
        &[
            "query",
            "--datastore",
            "review",
            "--filter",
            r#"{"field":"fps","op":"<","value":30}"#,
        ],
        "",
    )?;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["id"], json!(id1));
    assert_eq!(hits[0]["mediaId"], json!("take1"));
    assert_eq!(hits[0]["path"], json!("/published/final.mov"));
    assert_eq!(hits[0]["workspace"], json!("default"));

    // Invalid documents: each refused with the JSON path of the error, nothing stored.
    for (media_id, body, path) in [
        ("\"take1\"", json!({"fps": 0, "shots": []}), "/fps"),
        (
            "\"take1\"",
            json!({"fps": 24, "shots": [{"start": "x", "end": 1}]}),
            "/shots/0/start",
        ),
        ("\"take1\"", json!({"shots": []}), "fps"),
        ("\"reel 1\"", json!({"fps": 24, "shots": []}), "reel 1"),
    ] {
        let (ok, _, err) = meta(
            &storage,
            &["put", "--datastore", "review", "--media-id", media_id, "-"],
            &body.to_string(),
        )?;
        assert!(!ok, "{body} under {media_id} was accepted");
        assert!(err.contains(path), "the error does not name {path}: {err}");
    }
    let versions = meta_ok(
        &storage,
        &["get", "--datastore", "review", "--media-id", "\"take1\"", "--all"],
        "",
    )?;
    assert_eq!(versions.len(), 1, "a refused document was stored: {versions:?}");
    assert_eq!(versions[0]["document"], doc1);

    // A new version: the latest answers `get`, both answer `--all`.
    let doc1b = json!({"fps": 25, "shots": [{"start": 5, "end": 6}]});
    meta_ok(
        &storage,
        &["put", "--datastore", "review", "--media-id", "\"take1\"", "-"],
        &doc1b.to_string(),
    )?;
    let latest = meta_ok(
        &storage,
        &["get", "--datastore", "review", "--media-id", "\"take1\""],
        "",
    )?;
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["document"], doc1b);
    let all = meta_ok(
        &storage,
        &["get", "--datastore", "review", "--media-id", "\"take1\"", "--all"],
        "",
    )?;
    assert_eq!(all.len(), 2, "{all:?}");

    // Timeline inside the first document: only the shot overlapping [12, 20].
    let shots = meta_ok(&storage, &["timeline", &id1, "--from", "12", "--to", "20"], "")?;
    assert_eq!(shots.len(), 1, "{shots:?}");
    assert_eq!(shots[0]["item"], json!({"start": 10, "end": 30}));

    // A filter over a field that is not queryable is refused, naming the queryable ones.
    let (ok, _, err) = meta(
        &storage,
        &[
            "query",
            "--datastore",
            "review",
            "--filter",
            r#"{"field":"shots","op":"exists"}"#,
        ],
        "",
    )?;
    assert!(!ok && err.contains("fps"), "{err}");
    drop(m);
    Ok(())
}
