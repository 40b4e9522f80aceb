//! Every metric the documentation names, scraped from a running mount (README.md) and a
//! running CSI plugin (docs/csi.md) after a workload that moves each one. The names are read
//! from the documents, so a renamed metric, a label renamed or dropped, a metric no longer
//! updated, or a stale document fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use common::{Mount, Plugin, S3Storage, Storage, errno_of, eventually, samples, scrape};
use drive::model::{Actor, WorkspaceKind, WorkspaceSpec};
use drive_csi::csi::proto::node_client::NodeClient;
use drive_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use drive_csi::csi::proto::{self as csi, VolumeCapability};
use drive_testkit::s3::Fault;

/// Metrics the mount exports that no document names yet (README.md only says "the FUSE
/// operation counters and latency histograms"). A name here must be exported and must stay
/// undocumented: document it, and it must leave this list; any other undocumented metric fails.
const UNDOCUMENTED_MOUNT_METRICS: &[&str] = &[
    "studiodrive_fuse_operations_total",
    "studiodrive_fuse_operation_seconds",
    "studiodrive_fuse_read_bytes_total",
    "studiodrive_fuse_write_bytes_total",
    "studiodrive_metadata_commits",
    "studiodrive_metadata_retries",
];

/// A metric as a document names it: `name{label,...}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Documented {
    name: String,
    labels: BTreeSet<String>,
}

/// Expands the `{a,b}` groups of a name written with them (`cache_{hits,misses}_total`).
fn expand(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_string()];
    };
    let close = open + pattern[open..].find('}').expect("a closed brace group");
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    pattern[open + 1..close]
        .split(',')
        .flat_map(|alt| expand(&format!("{head}{alt}{tail}")))
        .collect()
}

/// Every `studiodrive_...` metric named in `text`. A brace group followed by more of the
/// name is a set of alternatives; one at the end is the label set.
fn documented_in(text: &str) -> BTreeSet<Documented> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("studiodrive_") {
        let token: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_{},".contains(*c))
            .collect();
        rest = &rest[at + token.len()..];
        let token = token.trim_end_matches(',');
        let (pattern, labels) = match token.strip_suffix('}').and_then(|t| t.rsplit_once('{')) {
            Some((name, labels)) if !name.ends_with('_') => (
                name,
                labels.split(',').map(str::to_string).collect::<BTreeSet<_>>(),
            ),
            _ => (token, BTreeSet::new()),
        };
        for name in expand(pattern) {
            out.insert(Documented {
                name,
                labels: labels.clone(),
            });
        }
    }
    out
}

fn doc(rel: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The section of a Markdown document under heading `heading` (to the next heading of the
/// same or a higher level).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &text[start + heading.len() + 2..];
    let end = body
        .match_indices("\n#")
        .find(|(i, _)| body[i + 1..].chars().take_while(|c| *c == '#').count() <= level)
        .map_or(body.len(), |(i, _)| i);
    &body[..end]
}

/// The series of one metric family: labels and value.
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// A scrape by metric family: its type and its series (histograms by their `_count`).
struct Families {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, Series>,
}

fn families(text: &str) -> anyhow::Result<Families> {
    let types: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    for s in samples(text)? {
        let family = match s.name.strip_suffix("_count") {
            Some(f) if types.get(f).is_some_and(|t| t == "histogram") => f.to_string(),
            _ if types.contains_key(&s.name) => s.name.clone(),
            _ => continue, // a histogram's _bucket and _sum lines
        };
        series
            .entry(family)
            .or_default()
            .push((s.labels.into_iter().collect(), s.value));
    }
    Ok(Families { types, series })
}

/// What is wrong with documented metric `m` in a scrape: missing, other labels, or no series
/// the workload moved (a counter or gauge at 0, a histogram without observations).
fn problems(f: &Families, m: &Documented) -> Vec<String> {
    let Some(series) = f.series.get(&m.name).filter(|s| !s.is_empty()) else {
        return vec![format!("{}: not exported", m.name)];
    };
    let mut out = Vec::new();
    for (labels, value) in series {
        let names: BTreeSet<String> = labels.keys().cloned().collect();
        if names != m.labels {
            out.push(format!(
                "{}: labels {names:?}, the documents say {:?}",
                m.name, m.labels
            ));
        }
        if *value <= 0.0 {
            out.push(format!("{}{labels:?} is {value} after the workload", m.name));
        }
    }
    out
}

fn close(f: std::fs::File) -> std::io::Result<()> {
    nix::unistd::close(f).map_err(std::io::Error::from)
}

fn put(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    close(f)
}

const BS: usize = 65536;

// Catches: a documented mount metric renamed, dropped, given other labels or left at 0 by the
// path that should move it (object-store requests, bytes and errors; disk and memory cache
// hits, misses, evictions, hit bytes and sizes; deduplicated blocks; metadata cache hits and
// misses), a document naming a metric that does not exist, and a new metric nobody documented.
#[test]
fn every_documented_mount_metric_is_exported_and_moves() -> anyhow::Result<()> {
    let readme = doc("README.md")?;
    let documented = documented_in(section(&readme, "## Block data path"));
    assert!(
        documented.len() >= 14,
        "the README's block data path section names the mount's metrics: {documented:?}"
    );
    for m in &documented {
        assert!(
            !UNDOCUMENTED_MOUNT_METRICS.contains(&m.name.as_str()),
            "{} is documented now: remove it from UNDOCUMENTED_MOUNT_METRICS",
            m.name
        );
    }

    let storage = S3Storage::new(2)?;
    let addr = format!("127.0.0.1:{}", drive_testkit::pg::free_port()?);
    // Caches of two blocks (memory) and three stored blocks (disk), so a few reads hit, miss
    // and evict in both.
    let m = Mount::new(
        &storage,
        &[
            "--block-size",
            "65536",
            "--memory-cache-size",
            "131072",
            "--cache-size",
            "200000",
            "--cache-min-free",
            "0",
            "--metrics-addr",
            &addr,
        ],
    )?;
    let data: Vec<u8> = (0..8 * BS as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    put(&m.path("a.raw"), &data)?;
    put(&m.path("b.raw"), &data)?; // every block deduplicated
    // An upload that fails after its retries.
    storage.s3.faults().always(Some("PUT"), Fault::Status(503));
    let mut f = std::fs::File::create(m.path("c.raw"))?;
    f.write_all(&[9u8; BS])?;
    assert_eq!(errno_of("close while S3 is down", close(f)), libc::EIO);
    storage.s3.faults().clear();

    // Reads of single blocks, past the kernel's page cache and readahead: misses fetch from
    // S3, a block read twice hits memory, one read again after others pushed it out of memory
    // hits the disk cache. Repeated until every family moved (the exact sequence of hits
    // depends on the caches' byte accounting).
    let file = std::fs::File::open(m.path("a.raw"))?;
    nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM)?;
    let read_block = |k: usize| -> anyhow::Result<()> {
        nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
        let mut buf = vec![0u8; 4096];
        file.read_exact_at(&mut buf, (k * BS) as u64)?;
        anyhow::ensure!(buf == data[k * BS..k * BS + 4096], "block {k} read back wrong");
        Ok(())
    };
    let mut last = Vec::new();
    let moved = eventually(Duration::from_secs(60), || {
        for k in [0, 0, 2, 3, 0, 5, 6, 0, 7] {
            if let Err(e) = read_block(k) {
                last = vec![e.to_string()];
                return false;
            }
        }
        let _ = std::fs::metadata(m.path("b.raw"));
        last = match scrape(&addr).and_then(|t| families(&t)) {
            Ok(f) => documented.iter().flat_map(|d| problems(&f, d)).collect(),
            Err(e) => vec![e.to_string()],
        };
        last.is_empty()
    });
    assert!(moved, "after the workload:\n  {}", last.join("\n  "));

    // Nothing exported goes unmentioned, and the known gaps are still exported.
    let scraped = families(&scrape(&addr)?)?;
    let names: BTreeSet<&str> = documented.iter().map(|d| d.name.as_str()).collect();
    let undocumented: Vec<&String> = scraped
        .types
        .keys()
        .filter(|n| !names.contains(n.as_str()) && !UNDOCUMENTED_MOUNT_METRICS.contains(&n.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not documented: {undocumented:?}"
    );
    for n in UNDOCUMENTED_MOUNT_METRICS {
        assert!(scraped.types.contains_key(*n), "{n} is no longer exported");
    }
    Ok(())
}

// Catches: a documented plugin metric renamed, dropped or given other labels, calls not
// counted (or only the successful ones), latencies not observed, and `studiodrive_csi_mounts`
// not following publish and unpublish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_plugin_metric_is_exported_and_moves() -> anyhow::Result<()> {
    let csi_doc = doc("docs/csi.md")?;
    let documented = documented_in(section(&csi_doc, "## Metrics"));
    assert!(
        documented.len() >= 3,
        "docs/csi.md's Metrics section names the plugin's metrics: {documented:?}"
    );

    drive_testkit::install_crypto_provider();
    let storage = Storage::create().await?;
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.url.clone())).await?;
    meta.create_workspace(
        &Actor::system("test"),
        &WorkspaceSpec::new("default", WorkspaceKind::User),
    )
    .await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", drive_testkit::pg::free_port()?);
    let plugin = Plugin::start(&storage, state.path(), &["--metrics-addr", &addr]).await?;
    let channel = plugin.channel.clone();
    let mut node = NodeClient::new(channel.clone());
    let target = pods.path().join("t");
    let publish = |id: &str| csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }),
        volume_context: [("workspace".to_string(), "default".to_string())].into(),
        ..Default::default()
    };
    let mounts = |addr: &str| -> anyhow::Result<f64> {
        common::sample(&scrape(addr)?, "studiodrive_csi_mounts", &[]).context("studiodrive_csi_mounts")
    };
    assert_eq!(mounts(&addr)?, 0.0, "nothing published yet");
    node.node_publish_volume(publish("static-1")).await?;
    // A refused call is counted too, under its own code.
    let refused = node.node_publish_volume(publish("")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
        volume_id: "static-1".into(),
        volume_path: target.display().to_string(),
        ..Default::default()
    })
    .await?;

    let scraped = families(&scrape(&addr)?)?;
    let wrong: Vec<String> = documented.iter().flat_map(|d| problems(&scraped, d)).collect();
    // The gauge is 1 now; `problems` only checked that it moved.
    assert!(wrong.is_empty(), "while published:\n  {}", wrong.join("\n  "));
    assert_eq!(mounts(&addr)?, 1.0, "one volume published");
    let publish_codes: BTreeSet<&String> = scraped.series["studiodrive_csi_calls_total"]
        .iter()
        .filter(|(l, _)| l.get("method").is_some_and(|m| m == "NodePublishVolume"))
        .filter_map(|(l, _)| l.get("code"))
        .collect();
    assert_eq!(publish_codes.len(), 2, "success and refusal: {publish_codes:?}");
    let undocumented: Vec<&String> = scraped
        .types
        .keys()
        .filter(|n| !documented.iter().any(|d| &d.name == *n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not documented: {undocumented:?}"
    );

    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: "static-1".into(),
        target_path: target.display().to_string(),
    })
    .await?;
    assert_eq!(mounts(&addr)?, 0.0, "unpublished");
    Ok(())
}

#[test]
fn the_document_parser_reads_names_labels_and_brace_groups() {
    let found = documented_in(
        "`studiodrive_a_total{op}`, `studiodrive_c_{x,y}_total`, `studiodrive_g`, \
         studiodrive_h_{p,q}_total{l1,l2}. Not: STUDIODRIVE_X, ~/.local/share/studiodrive",
    );
    let d = |n: &str, l: &[&str]| Documented {
        name: n.into(),
        labels: l.iter().map(ToString::to_string).collect(),
    };
    let want: BTreeSet<Documented> = [
        d("studiodrive_a_total", &["op"]),
        d("studiodrive_c_x_total", &[]),
        d("studiodrive_c_y_total", &[]),
        d("studiodrive_g", &[]),
        d("studiodrive_h_p_total", &["l1", "l2"]),
        d("studiodrive_h_q_total", &["l1", "l2"]),
    ]
    .into();
    assert_eq!(found, want);
}
