//! The kubernetes-csi conformance suite (csi-sanity v5.2.0, prebuilt in ../shared/tools) run
//! against a real `studiodrive-csi serve` with real FUSE mounts.
//!
//! The specs the driver fails today are listed, one per line, in
//! `csi-sanity-known-failures.txt` (issue 18 is to empty it). The list must stay exact: a spec
//! failing that is not listed is a regression, and a listed spec that passes must be removed
//! from the list, so the file always says where the driver stands.
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
// publish/unpublish of real mounts, snapshot listing), and a stale known-failures list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_every_spec_but_the_known_failures() -> anyhow::Result<()> {
    let sanity = csi_sanity();
    assert!(
        sanity.exists(),
        "{} not found (set CSI_SANITY); ./scripts/test.sh reports this tier as skipped without it",
        sanity.display()
    );
    let storage = common::storage_with_default_workspace().await?;
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

    let failed = failed_specs(&text);
    let known: BTreeSet<String> = include_str!("csi-sanity-known-failures.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(ToString::to_string)
        .collect();
    let regressions: Vec<&String> = failed.difference(&known).collect();
    let fixed: Vec<&String> = known.difference(&failed).collect();
    assert!(
        regressions.is_empty() && fixed.is_empty(),
        "csi-sanity ({ran}) differs from csi-sanity-known-failures.txt\n\
         failing but not listed (regressions):\n  {}\n\
         listed but passing (remove them from the list):\n  {}\n\
         plugin log:\n{}",
        regressions
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        fixed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        plugin.log_text()
    );
    assert_eq!(
        output.status.success(),
        known.is_empty(),
        "csi-sanity's exit status disagrees with its summary:\n{text}"
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
