//! The kubernetes-csi conformance suite (csi-sanity v5.2.0, prebuilt in ../shared/tools) run
//! against a real `studiodrive-csi serve` with real FUSE mounts.
//!
//! Every spec must pass; the pass and skip counts are printed.
//!
//! `CSI_SANITY` names the binary (default `../shared/tools/csi-sanity` beside the
//! repository); `./scripts/test.sh` leaves this tier out, saying so, where it is missing.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::Plugin;

fn csi_sanity() -> PathBuf {
    std::env::var_os("CSI_SANITY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/tools/csi-sanity"
            ))
        })
}

/// The names of failed specs in csi-sanity's summary (`  [FAIL] <spec> [It] <case>` lines
/// after "Summarizing"), without the source location ginkgo appends.
fn failed_specs(output: &str) -> BTreeSet<String> {
    let summary = output.rsplit("Summarizing").next().unwrap_or_default();
    summary
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("[FAIL] "))
        .map(|l| l.split("  /").next().unwrap_or(l).trim().to_string())
        .collect()
}

// Catches: any CSI behaviour the conformance suite checks regressing (idempotency, error codes,
// arbitrary CSI names, provisioning on a fresh store, publish/unpublish of real mounts,
// snapshot listing, cloning, expansion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_every_spec() -> anyhow::Result<()> {
    let sanity = csi_sanity();
    assert!(
        sanity.exists(),
        "{} not found (set CSI_SANITY); ./scripts/test.sh reports this tier as skipped without it",
        sanity.display()
    );
    // A fresh store: a StorageClass without parameters must provision with no workspace made
    // beforehand.
    drive_testkit::install_crypto_provider();
    let storage = common::Storage::create().await?;
    let state = tempfile::tempdir()?;
    let plugin = Plugin::start(&storage, state.path(), &[]).await?;
    let work = tempfile::tempdir()?;
    let output = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", plugin.socket().display()))
        .arg(format!("--csi.mountdir={}", work.path().join("target").display()))
        .arg(format!(
            "--csi.stagingdir={}",
            work.path().join("staging").display()
        ))
        .arg("--ginkgo.no-color")
        .output()?;
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let ran = text
        .lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or_else(|| panic!("csi-sanity printed no result line:\n{text}"));
    eprintln!("csi-sanity: {ran}");
    if std::env::var_os("CSI_SANITY_VERBOSE").is_some() {
        eprintln!("{text}\nplugin log:\n{}", plugin.log_text());
    }

    let counts = text
        .lines()
        .find(|l| l.contains(" Passed | ") && l.contains(" Failed | "))
        .unwrap_or_else(|| panic!("csi-sanity printed no counts:\n{text}"));
    eprintln!("csi-sanity: {}", counts.trim());
    let failed = failed_specs(&text);
    assert!(
        failed.is_empty() && output.status.success(),
        "csi-sanity ({ran}; {counts}) failed:\n  {}\nplugin log:\n{}",
        failed.iter().map(String::as_str).collect::<Vec<_>>().join("\n  "),
        plugin.log_text()
    );
    drop(storage);
    Ok(())
}

#[test]
fn the_summary_parser_reads_ginkgo_fail_lines() {
    let out = "noise [FAIL] not in the summary\nSummarizing 2 Failures:\n  [FAIL] Node Service [It] should work  /tmp/x/node.go:12\n  [FAIL] A [It] b\n\nRan 52 of 84 Specs";
    let got = failed_specs(out);
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec![
            "A [It] b".to_string(),
            "Node Service [It] should work".to_string()
        ]
    );
}
