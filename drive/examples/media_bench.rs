//! Media metadata benchmark (issue 20): document writes, DataStore queries over a large store,
//! timeline queries inside one large document, and what each costs the database. Starts its
//! own PostgreSQL (testkit) with pg_stat_statements and auto_explain loaded.
//!
//!     scripts/bench-media.sh --release        # cargo run --release -p drive --example media_bench
//!
//! Phases, in order:
//! 1. load: MEDIA_BENCH_DOCS documents of about 10 KB into DataStore `bench/technical` with
//!    `PgMetaStore::bulk_load_media_documents` (COPY of validated rows, MEDIA_BENCH_LOADERS
//!    loaders of MEDIA_BENCH_BATCH documents), stopped after MEDIA_BENCH_LOAD_SECS (the figures
//!    are then for the documents loaded); VACUUM ANALYZE; the database's size.
//! 2. writes: `put_media_document` of the same kind of documents with 1, 4 and 16 writers
//!    (MEDIA_BENCH_WRITE_SECS each) into DataStore `bench/writes` (same schema, same tables as
//!    the loaded store), against plain INSERTs of the same JSON into a table with one JSONB
//!    column through a pool configured as the store's: put, plain, put, plain.
//! 3. queries: filter shapes over the loaded store, MEDIA_BENCH_QUERIES runs each per round,
//!    latest versions, limit 1000 (the API's defaults); hit counts checked against the filter
//!    evaluated in memory; then the plan of one run of each (auto_explain, ANALYZE + BUFFERS).
//! 4. timeline: one document of MEDIA_BENCH_TIMELINE_BYTES (200 MB) written through
//!    `DocumentStore` (its text as blocks in a file store), then time-range and area queries
//!    inside it against reading the whole document; MEDIA_BENCH_TIMELINE_ONLY=1 runs only this
//!    phase.
//!    queried by time range and area MEDIA_BENCH_TIMELINE_QUERIES times per shape per round.
//!
//! Every measurement runs MEDIA_BENCH_ROUNDS (2) rounds. Database load is PostgreSQL's CPU
//! (all server processes, /proc/PID/stat) per operation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drive::media::documents::{BODY_BLOCK_SIZE, DocumentStore};
use drive::media::{
    CompiledDataStore, DataStoreSpec, Filter, MAX_INLINE_DOCUMENT_BYTES, MAX_TIMELINE_ENTITIES, RegionSpec,
    TimelineQuery, TimelineSpec,
};
use drive::meta::Versions;
use drive::{MetaConfig, PgMetaStore};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The API's default query limit (csi-driver/src/api, `DEFAULT_LIMIT`).
const LIMIT: usize = 1000;
const STORE: &str = "bench/technical";
const WRITES: &str = "bench/writes";
const TIMELINE: &str = "bench/timeline";

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Knobs {
    docs: u64,
    load_secs: u64,
    loaders: usize,
    batch: u64,
    write_secs: u64,
    queries: usize,
    timeline_queries: usize,
    shape_secs: u64,
    rounds: usize,
    timeline_bytes: usize,
}

/// Baseline runs (whole-document reads) per round of the timeline phase.
const BASELINE_RUNS: usize = 3;

// ---- documents ---------------------------------------------------------------------------

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic stream of numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// One of `table`'s values, by weights (percent, adding up to 100).
    fn weighted<T: Copy>(&mut self, table: &[(T, u64)]) -> T {
        let mut r = self.below(100);
        for (v, w) in table {
            if r < *w {
                return *v;
            }
            r -= w;
        }
        table[table.len() - 1].0
    }
}

const CODECS: &[(&str, u64)] = &[
    ("prores_4444", 30),
    ("prores_422hq", 25),
    ("dnxhr_hqx", 15),
    ("exr_piz", 12),
    ("exr_dwaa", 8),
    ("h264", 6),
    ("av1", 3),
    ("jpeg2000", 1),
];
const SIZES: &[((u64, u64), u64)] = &[
    ((1920, 1080), 40),
    ((2048, 1080), 15),
    ((3840, 2160), 30),
    ((4096, 2160), 15),
];
const FPS: &[(f64, u64)] = &[
    (23.976, 35),
    (24.0, 30),
    (25.0, 15),
    (29.97, 10),
    (48.0, 5),
    (60.0, 5),
];
const STATUS: &[(&str, u64)] = &[
    ("approved", 45),
    ("pending", 30),
    ("needs-changes", 20),
    ("rejected", 5),
];
const WORDS: &[&str] = &[
    "grade",
    "matte",
    "edge",
    "fringing",
    "comp",
    "plate",
    "roto",
    "track",
    "lens",
    "flare",
    "grain",
    "denoise",
    "sky",
    "replacement",
    "hold",
    "out",
    "frames",
    "left",
    "right",
    "background",
    "CG",
    "element",
    "shadow",
    "too",
    "dark",
    "warm",
    "up",
    "skin",
    "tones",
    "key",
    "spill",
    "on",
    "hair",
    "motion",
    "blur",
    "mismatch",
    "retime",
    "clean",
    "wire",
    "removal",
    "rig",
    "paint",
    "fix",
    "the",
    "in",
    "at",
    "after",
    "before",
    "cut",
    "approved",
    "pending",
    "client",
    "notes",
    "v003",
];

/// The queryable fields of document `i` (what the index holds of it).
#[derive(Debug, Clone, PartialEq)]
struct Fields {
    codec: &'static str,
    width: u64,
    height: u64,
    fps: f64,
    shot: String,
    status: &'static str,
    score: f64,
}

fn shot_name(s: u64) -> String {
    format!("sq{:03}_sh{:04}", s / 100 % 1000, s % 100 * 10)
}

fn fields(i: u64, shots: u64) -> Fields {
    let mut r = Rng(i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let (width, height) = r.weighted(SIZES);
    Fields {
        codec: r.weighted(CODECS),
        width,
        height,
        fps: r.weighted(FPS),
        shot: shot_name(r.below(shots)),
        status: r.weighted(STATUS),
        score: r.below(10_000) as f64 / 100.0,
    }
}

/// The queryable fields as a document, for the in-memory filter.
fn projection(f: &Fields) -> Value {
    json!({
        "technical": {"codec": f.codec, "width": f.width, "fps": f.fps},
        "review": {"shot": f.shot, "status": f.status, "score": f.score},
    })
}

fn media_id(i: u64) -> Value {
    json!({"asset": format!("A{i:08}")})
}

fn hex(r: &mut Rng, digits: usize) -> String {
    let mut s = String::with_capacity(digits);
    while s.len() < digits {
        s.push_str(&format!("{:016x}", r.next()));
    }
    s.truncate(digits);
    s
}

fn sentence(r: &mut Rng) -> String {
    let n = 12 + r.below(20);
    (0..n)
        .map(|_| WORDS[r.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Document `i`: technical metadata, a review with notes (filling it to about 10 KB) and a
/// few review markers on the timeline.
fn document(i: u64, shots: u64) -> Value {
    let f = fields(i, shots);
    let mut r = Rng(i ^ 0x5DEE_CE66_D1CE_4E5B);
    let duration = 24 * (5 + r.below(120));
    let mut tracks = vec![json!({
        "index": 0, "type": "video", "codec": f.codec, "bitrate": 100_000_000 + r.below(900_000_000)
    })];
    for t in 0..(2 + r.below(7)) {
        tracks.push(json!({
            "index": t + 1, "type": "audio", "codec": "pcm_s24le", "channels": 2, "sampleRate": 48000,
            "language": (["en", "fr", "de", "ja", "es"][r.below(5) as usize]),
            "loudnessLufs": -(r.below(1000) as f64) / 40.0 - 14.0
        }));
    }
    let events: Vec<Value> = (0..r.below(9))
        .map(|_| {
            let start = r.below(duration);
            let (x, y) = (r.below(f.width), r.below(f.height));
            json!({
                "start": start, "end": start + r.below(48),
                "x": x, "y": y, "w": 16 + r.below(400), "h": 16 + r.below(300),
                "label": (["note", "fix", "matte", "track"][r.below(4) as usize])
            })
        })
        .collect();
    let mut doc = json!({
        "technical": {
            "container": (["mov", "mxf", "exr", "mp4"][r.below(4) as usize]),
            "codec": f.codec,
            "width": f.width,
            "height": f.height,
            "fps": f.fps,
            "bitDepth": ([10, 12, 16][r.below(3) as usize]),
            "colorSpace": (["ACEScg", "Rec709", "Rec2020", "P3-D65"][r.below(4) as usize]),
            "durationFrames": duration,
            "timecodeStart": format!("{:02}:00:{:02}:{:02}", 1 + r.below(9), r.below(60), r.below(24)),
            "tracks": tracks,
            "checksums": {"xxh64": hex(&mut r, 16), "md5": hex(&mut r, 32), "sha1": hex(&mut r, 40)},
            "extractor": {"name": "studiodrive-technical", "version": "1.4.2"}
        },
        "review": {
            "shot": f.shot,
            "status": f.status,
            "score": f.score,
            "reviewer": format!("user-{}", r.below(200)),
            "round": 1 + r.below(6),
            "notes": []
        },
        "events": events
    });
    // Notes until the document reaches its size (9 to 11 KiB).
    let target = 9216 + r.below(2049) as usize;
    let mut len = serde_json::to_vec(&doc).map_or(0, |v| v.len());
    let mut notes = Vec::new();
    while len < target {
        let note = json!({
            "author": format!("user-{}", r.below(200)),
            "at": format!("2026-{:02}-{:02}T{:02}:{:02}:00Z", 1 + r.below(12), 1 + r.below(28), r.below(24), r.below(60)),
            "frame": r.below(duration),
            "text": sentence(&mut r)
        });
        len += serde_json::to_vec(&note).map_or(0, |v| v.len()) + 1;
        notes.push(note);
    }
    doc["review"]["notes"] = Value::Array(notes);
    doc
}

fn spec(name: &str) -> DataStoreSpec {
    DataStoreSpec {
        name: name.into(),
        analysis_type: "technical".into(),
        version: 1,
        schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["technical", "review"],
            "properties": {
                "technical": {
                    "type": "object",
                    "required": ["container", "codec", "width", "height", "fps", "durationFrames", "tracks"],
                    "properties": {
                        "container": {"enum": ["mov", "mxf", "exr", "mp4"]},
                        "codec": {"type": "string", "maxLength": 64},
                        "width": {"type": "integer", "minimum": 1, "maximum": 16384},
                        "height": {"type": "integer", "minimum": 1, "maximum": 16384},
                        "fps": {"type": "number", "exclusiveMinimum": 0, "maximum": 240},
                        "bitDepth": {"enum": [8, 10, 12, 16, 32]},
                        "colorSpace": {"type": "string"},
                        "durationFrames": {"type": "integer", "minimum": 0},
                        "timecodeStart": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}:[0-9]{2}[:;][0-9]{2}$"},
                        "tracks": {"type": "array", "maxItems": 64, "items": {
                            "type": "object", "required": ["index", "type", "codec"],
                            "properties": {
                                "index": {"type": "integer", "minimum": 0},
                                "type": {"enum": ["video", "audio", "subtitle", "data"]},
                                "codec": {"type": "string"},
                                "channels": {"type": "integer", "minimum": 1},
                                "sampleRate": {"type": "integer", "minimum": 1},
                                "language": {"type": "string", "pattern": "^[a-z]{2,3}$"},
                                "bitrate": {"type": "integer", "minimum": 0},
                                "loudnessLufs": {"type": "number"}
                            }
                        }},
                        "checksums": {"type": "object", "properties": {
                            "xxh64": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                            "md5": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                            "sha1": {"type": "string", "pattern": "^[0-9a-f]{40}$"}
                        }},
                        "extractor": {"type": "object", "properties": {
                            "name": {"type": "string"}, "version": {"type": "string"}
                        }}
                    }
                },
                "review": {
                    "type": "object",
                    "required": ["shot", "status"],
                    "properties": {
                        "shot": {"type": "string", "pattern": "^sq[0-9]{3}_sh[0-9]{4}$"},
                        "status": {"enum": ["pending", "approved", "needs-changes", "rejected"]},
                        "score": {"type": "number", "minimum": 0, "maximum": 100},
                        "reviewer": {"type": "string"},
                        "round": {"type": "integer", "minimum": 1},
                        "notes": {"type": "array", "items": {
                            "type": "object", "required": ["author", "at", "text"],
                            "properties": {
                                "author": {"type": "string"},
                                "at": {"type": "string", "format": "date-time"},
                                "frame": {"type": "integer", "minimum": 0},
                                "text": {"type": "string", "maxLength": 4000}
                            }
                        }}
                    }
                },
                "events": {"type": "array", "items": {
                    "type": "object", "required": ["start", "end"],
                    "properties": {
                        "start": {"type": "number"}, "end": {"type": "number"},
                        "x": {"type": "number"}, "y": {"type": "number"},
                        "w": {"type": "number", "minimum": 0}, "h": {"type": "number", "minimum": 0},
                        "label": {"type": "string"}
                    }
                }}
            }
        }),
        media_id_schema: json!({
            "type": "object", "required": ["asset"], "additionalProperties": false,
            "properties": {"asset": {"type": "string", "pattern": "^A[0-9]{8}$"}}
        }),
        queryable: [
            "technical.codec",
            "technical.width",
            "technical.fps",
            "review.shot",
            "review.status",
            "review.score",
        ]
        .map(String::from)
        .to_vec(),
        timeline: vec![TimelineSpec {
            path: "events".into(),
            start: "start".into(),
            end: Some("end".into()),
            region: Some(RegionSpec {
                x: "x".into(),
                y: "y".into(),
                width: "w".into(),
                height: "h".into(),
            }),
        }],
        access: Default::default(),
    }
}

/// Frames in the large timeline document's programme (two hours at 24 fps) and its picture.
const PROGRAMME_FRAMES: u64 = 2 * 3600 * 24;
const PICTURE: (u64, u64) = (3840, 2160);

/// Landmark coordinates per detection: with them an item is about 210 bytes, so the bound of
/// a million entities reaches 200 MB.
const LANDMARKS: usize = 16;

/// Labels of the detections in the large timeline document.
const LABELS: [&str; 5] = ["face", "person", "vehicle", "logo", "text"];

/// A per-frame analysis of about `target_bytes` of JSON (at most [`MAX_TIMELINE_ENTITIES`]
/// entities): minimal technical and review parts and detections, each with a start and an
/// end (frames), a box (pixels), a label, a confidence, a track and [`LANDMARKS`] landmark
/// coordinates.
fn large_timeline_document(target_bytes: usize) -> (Value, usize) {
    let mut r = Rng(42);
    let mut doc = json!({
        "technical": {"container": "mov", "codec": "prores_4444", "width": PICTURE.0, "height": PICTURE.1,
                      "fps": 24, "durationFrames": PROGRAMME_FRAMES, "tracks": []},
        "review": {"shot": "sq001_sh0010", "status": "pending"},
        "events": []
    });
    let mut len = serde_json::to_vec(&doc).map_or(0, |v| v.len());
    let mut starts: Vec<u64> = Vec::new();
    let mut items = Vec::new();
    loop {
        let start = r.below(PROGRAMME_FRAMES);
        let (x, y) = (r.below(PICTURE.0 - 32), r.below(PICTURE.1 - 32));
        let landmarks: Vec<u64> = (0..LANDMARKS).map(|_| r.below(PICTURE.0)).collect();
        let item = json!({
            "start": start, "end": start + 1 + r.below(240),
            "x": x, "y": y, "w": 32 + r.below(480).min(PICTURE.0 - 32 - x), "h": 32 + r.below(480).min(PICTURE.1 - 32 - y),
            "label": LABELS[r.below(LABELS.len() as u64) as usize],
            "confidence": r.below(1000) as f64 / 1000.0,
            "track": format!("trk-{:06}", r.below(1_000_000)),
            "landmarks": landmarks
        });
        let add = serde_json::to_vec(&item).map_or(0, |v| v.len()) + 1;
        if len + add > target_bytes || items.len() >= MAX_TIMELINE_ENTITIES {
            break;
        }
        len += add;
        starts.push(start);
        items.push(item);
    }
    // In start order, as an analysis writes them.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&k| starts[k]);
    doc["events"] = Value::Array(order.into_iter().map(|k| items[k].clone()).collect());
    let bytes = serde_json::to_vec(&doc).map_or(0, |v| v.len());
    (doc, bytes)
}

/// This process's peak resident memory (VmHWM), bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets this process's peak resident memory to its current size (Linux 4.0+).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

// ---- measuring ---------------------------------------------------------------------------

/// This process's CPU seconds (user + system).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let field = |k: usize| fields.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50: ms(h.value_at_quantile(0.5)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    }
}

/// CPU seconds of a process (user + system), if it still runs.
fn process_cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks)
}

/// The server's CPU seconds (all its processes, exited backends included), its client
/// backends' (by pid) and this process's, read together.
struct Cpu {
    pg: f64,
    backends: HashMap<i32, f64>,
    own: f64,
}

impl Cpu {
    /// PostgreSQL CPU seconds from `self` to `later`: all processes, and client backends.
    fn pg_since(&self, later: &Cpu) -> (f64, f64) {
        let backends = later
            .backends
            .iter()
            .map(|(pid, t)| t - self.backends.get(pid).copied().unwrap_or(0.0))
            .sum();
        (later.pg - self.pg, backends)
    }
}

async fn cpu(pg: &drive_testkit::pg::PgServer, stats: &tokio_postgres::Client) -> anyhow::Result<Cpu> {
    let pids: Vec<i32> = stats
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Cpu {
        pg: pg.cpu_seconds()?,
        backends: pids
            .into_iter()
            .filter_map(|p| Some((p, process_cpu_seconds(p)?)))
            .collect(),
        own: own_cpu_seconds(),
    })
}

/// "all / client backends" in ms per operation.
fn per_op(c0: &Cpu, c1: &Cpu, ops: u64) -> String {
    let (all, backends) = c0.pg_since(c1);
    let ops = ops.max(1) as f64;
    format!("{:.3} / {:.3}", all * 1000.0 / ops, backends * 1000.0 / ops)
}

/// Runs `sql` on a fresh connection of the bench's own (for setup and statistics).
async fn admin(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Turns auto_explain's logging of every statement with ANALYZE and BUFFERS on or off (for all
/// sessions, existing ones included, by a configuration reload).
async fn auto_explain(c: &tokio_postgres::Client, on: bool) -> anyhow::Result<()> {
    // ALTER SYSTEM runs outside a transaction block: one statement per message.
    for (name, value) in [
        ("log_min_duration", "0"),
        ("log_analyze", "on"),
        ("log_buffers", "on"),
        ("log_timing", "on"),
    ] {
        let sql = if on {
            format!("ALTER SYSTEM SET auto_explain.{name} = {value}")
        } else {
            format!("ALTER SYSTEM RESET auto_explain.{name}")
        };
        c.batch_execute(&sql).await?;
    }
    c.batch_execute("SELECT pg_reload_conf()").await?;
    // Backends read the new settings at their next statement; give the signal a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// The server log (testkit: `server.log` beside the socket).
struct ServerLog(std::path::PathBuf);

impl ServerLog {
    fn len(&self) -> u64 {
        std::fs::metadata(&self.0).map_or(0, |m| m.len())
    }

    /// auto_explain's entries written after `from` whose text contains `marker`.
    fn plans_since(&self, from: u64, marker: &str) -> Vec<String> {
        let text = std::fs::read(&self.0).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
        let mut entries: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.contains("LOG:  duration:") && line.contains("plan:") {
                entries.push(String::new());
            } else if line.contains(" LOG: ") || line.contains(" ERROR: ") || line.contains(" STATEMENT: ") {
                entries.push("-".into()); // some other message ends the plan
                continue;
            }
            if let Some(e) = entries.last_mut()
                && e != "-"
            {
                let line = line.trim_start_matches('\t');
                let line = if line.len() > 600 {
                    format!("{}...", &line[..line.floor_char_boundary(600)])
                } else {
                    line.to_string()
                };
                e.push_str(&line);
                e.push('\n');
            }
        }
        entries
            .into_iter()
            .filter(|e| e != "-" && e.contains(marker))
            .collect()
    }
}

async fn statements(c: &tokio_postgres::Client, reset: bool) -> anyhow::Result<Vec<String>> {
    if reset {
        c.execute("SELECT pg_stat_statements_reset()", &[]).await?;
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            "SELECT calls, total_exec_time, mean_exec_time, \
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY total_exec_time DESC LIMIT 10",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "| {} | {:.0} | {:.3} | `{}` |",
                r.get::<_, i64>(0),
                r.get::<_, f64>(1),
                r.get::<_, f64>(2),
                r.get::<_, String>(3).replace('|', "\\|")
            )
        })
        .collect())
}

// ---- phases ------------------------------------------------------------------------------

struct LoadResult {
    loaded: u64,
    secs: f64,
    bytes: u64,
    cpu: (Cpu, Cpu),
}

async fn load(
    store: &PgMetaStore,
    pg: &drive_testkit::pg::PgServer,
    stats: &tokio_postgres::Client,
    k: &Knobs,
    shots: u64,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicU64::new(0));
    let loaded = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(k.load_secs);
    let batches = k.docs.div_ceil(k.batch);
    let c0 = cpu(pg, stats).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..k.loaders {
        let (store, next, loaded, bytes) = (store.clone(), next.clone(), loaded.clone(), bytes.clone());
        let (docs, batch) = (k.docs, k.batch);
        tasks.push(tokio::spawn(async move {
            loop {
                if Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(());
                }
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok(());
                }
                let range = b * batch..((b + 1) * batch).min(docs);
                let n = range.end - range.start;
                let made = tokio::task::spawn_blocking(move || {
                    range
                        .map(|i| (media_id(i), document(i, shots)))
                        .collect::<Vec<_>>()
                })
                .await?;
                let size: usize = made
                    .iter()
                    .map(|(_, d)| serde_json::to_vec(d).map_or(0, |v| v.len()))
                    .sum();
                store.bulk_load_media_documents(STORE, &made).await?;
                bytes.fetch_add(size as u64, Ordering::Relaxed);
                let before = loaded.fetch_add(n, Ordering::Relaxed);
                let step = (docs / 10).max(1);
                if (before + n) / step != before / step {
                    eprintln!(
                        "    loaded {} documents in {:.0} s",
                        before + n,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let c1 = cpu(pg, stats).await?;
    // Batches are handed out in order and every one taken completes: the documents loaded
    // are 0..loaded.
    let taken = next.load(Ordering::Relaxed).min(batches);
    let loaded = loaded.load(Ordering::Relaxed);
    anyhow::ensure!(
        loaded == (taken * k.batch).min(k.docs),
        "loaded {loaded}, expected the first {taken} batches"
    );
    Ok(LoadResult {
        loaded,
        secs,
        bytes: bytes.load(Ordering::Relaxed),
        cpu: (c0, c1),
    })
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum WriteKind {
    Put,
    Plain,
}

struct WriteResult {
    docs: u64,
    bytes: u64,
    secs: f64,
    cpu: (Cpu, Cpu),
    lat: Latency,
}

#[allow(clippy::too_many_arguments)]
async fn write_run(
    kind: WriteKind,
    writers: usize,
    secs: u64,
    store: &PgMetaStore,
    plain: &deadpool_postgres::Pool,
    pool_docs: &Arc<Vec<(Value, usize)>>,
    next_id: &Arc<AtomicU64>,
    pg: &drive_testkit::pg::PgServer,
    stats: &tokio_postgres::Client,
) -> anyhow::Result<WriteResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let c0 = cpu(pg, stats).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, plain, pool_docs, next_id, stop) = (
            store.clone(),
            plain.clone(),
            pool_docs.clone(),
            next_id.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let (mut docs, mut bytes) = (0u64, 0u64);
            let mut k = w * 7919;
            while !stop.load(Ordering::Relaxed) {
                let (body, len) = &pool_docs[k % pool_docs.len()];
                k += 1;
                let t = Instant::now();
                match kind {
                    WriteKind::Put => {
                        let id = media_id(next_id.fetch_add(1, Ordering::Relaxed));
                        store.put_media_document(WRITES, &id, None, body).await?;
                    }
                    WriteKind::Plain => {
                        let c = plain.get().await?;
                        let stmt = c
                            .prepare_cached("INSERT INTO bench_plain (body) VALUES ($1)")
                            .await?;
                        c.execute(&stmt, &[body]).await?;
                    }
                }
                hist.record(t.elapsed().as_micros() as u64)?;
                docs += 1;
                bytes += *len as u64;
            }
            Ok::<_, anyhow::Error>((hist, docs, bytes))
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut docs, mut bytes) = (0, 0);
    for t in tasks {
        let (h, d, b) = t.await??;
        hist.add(&h)?;
        docs += d;
        bytes += b;
    }
    let secs = started.elapsed().as_secs_f64();
    let c1 = cpu(pg, stats).await?;
    Ok(WriteResult {
        docs,
        bytes,
        secs,
        cpu: (c0, c1),
        lat: latency(&hist),
    })
}

/// A filter shape: its name and, per run, the filter (some vary their value per run).
struct Shape {
    name: &'static str,
    text: String,
    make: Box<dyn Fn(usize) -> Filter>,
    /// Matching documents per run (the filter over the loaded documents' fields, in memory).
    expected: Box<dyn Fn(usize) -> usize>,
}

fn filter(v: Value) -> Filter {
    Filter::from_json(&v).expect("a valid filter")
}

/// The filter shapes, with their expected matches counted over documents 0..loaded.
fn shapes(loaded: u64, shots: u64, runs: usize) -> Vec<Shape> {
    // Values of the varying shapes: shots of loaded documents (so each has a match).
    let mut r = Rng(7);
    let picks: Vec<(String, String)> = (0..runs)
        .map(|_| {
            (
                fields(r.below(loaded), shots).shot,
                fields(r.below(loaded), shots).shot,
            )
        })
        .collect();
    let fixed = [
        (
            "range",
            json!({"field": "review.score", "op": ">=", "value": 99.5}),
        ),
        (
            "in",
            json!({"field": "technical.codec", "op": "in", "value": ["av1", "jpeg2000"]}),
        ),
        (
            "and",
            json!({"and": [{"field": "review.status", "op": "=", "value": "rejected"},
                           {"field": "technical.width", "op": "=", "value": 4096}]}),
        ),
        (
            "or",
            json!({"or": [{"field": "technical.codec", "op": "=", "value": "jpeg2000"},
                          {"field": "review.score", "op": "<", "value": 0.5}]}),
        ),
        (
            "not",
            json!({"not": {"field": "review.status", "op": "=", "value": "approved"}}),
        ),
    ];
    // One pass over the loaded documents' fields counts every shape's matches.
    let fixed_filters: Vec<Filter> = fixed.iter().map(|(_, v)| filter(v.clone())).collect();
    let mut counts = vec![0usize; fixed.len()];
    let mut per_shot: HashMap<String, usize> = HashMap::new();
    let mut approved_per_shot: HashMap<String, usize> = HashMap::new();
    for i in 0..loaded {
        let f = fields(i, shots);
        let p = projection(&f);
        for (c, fl) in counts.iter_mut().zip(&fixed_filters) {
            *c += usize::from(fl.matches(&p));
        }
        if f.status == "approved" {
            *approved_per_shot.entry(f.shot.clone()).or_default() += 1;
        }
        *per_shot.entry(f.shot).or_default() += 1;
    }
    let per_shot = Arc::new(per_shot);
    let approved_per_shot = Arc::new(approved_per_shot);
    let picks = Arc::new(picks);
    let mut out = Vec::new();
    {
        let (picks, per_shot) = (picks.clone(), per_shot.clone());
        let p2 = picks.clone();
        out.push(Shape {
            name: "equality (selective)",
            text: "review.shot = <a shot, new each run>".into(),
            make: Box::new(move |n| {
                filter(json!({"field": "review.shot", "op": "=", "value": p2[n % p2.len()].0}))
            }),
            expected: Box::new(move |n| per_shot.get(&picks[n % picks.len()].0).copied().unwrap_or(0)),
        });
    }
    for ((name, v), count) in fixed.into_iter().zip(counts) {
        let text = v.to_string();
        out.push(Shape {
            name,
            text,
            make: Box::new(move |_| filter(v.clone())),
            expected: Box::new(move |_| count),
        });
    }
    {
        let (picks, per_shot, approved) = (picks.clone(), per_shot.clone(), approved_per_shot.clone());
        let p2 = picks.clone();
        out.push(Shape {
            name: "and + not (selective)",
            text: "review.shot = <a shot> and not review.status = approved".into(),
            make: Box::new(move |n| {
                filter(json!({"and": [
                    {"field": "review.shot", "op": "=", "value": p2[n % p2.len()].0},
                    {"not": {"field": "review.status", "op": "=", "value": "approved"}}
                ]}))
            }),
            expected: Box::new(move |n| {
                let shot = &picks[n % picks.len()].0;
                per_shot.get(shot).copied().unwrap_or(0) - approved.get(shot).copied().unwrap_or(0)
            }),
        });
    }
    out
}

/// Phase 4: one large document written through the document store (its text as blocks in a
/// file store), then time-range and area queries inside it, against the baseline of reading
/// the whole document and filtering its entities in memory.
async fn timeline_phase(
    k: &Knobs,
    pg: &drive_testkit::pg::PgServer,
    stats: &tokio_postgres::Client,
    store: &PgMetaStore,
    log: &ServerLog,
) -> anyhow::Result<()> {
    println!();
    println!("## Timeline queries inside one large document");
    let blocks_dir = tempfile::tempdir()?;
    let chunks: Arc<dyn drive::data::ChunkStore> =
        Arc::new(drive::data::LocalChunkStore::open(blocks_dir.path())?);
    let docs = DocumentStore::new(store.clone(), Some(chunks));
    let (big, big_bytes) = large_timeline_document(k.timeline_bytes);
    let compiled = CompiledDataStore::compile(spec(TIMELINE)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let entities = compiled.timeline(&big).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!();
    println!(
        "The document: {big_bytes} bytes of JSON ({:.1} MiB; MEDIA_BENCH_TIMELINE_BYTES={}) with {} entities \
         ({:.0} bytes each: start, end, box, label, confidence, track, {LANDMARKS} landmarks), over \
         {PROGRAMME_FRAMES} frames (2 h at 24 fps), picture {}x{}. Over {MAX_INLINE_DOCUMENT_BYTES} bytes, \
         its text is kept as {BODY_BLOCK_SIZE}-byte blocks in a file store; PostgreSQL keeps the \
         entity rows (times, box, the item's byte span).",
        big_bytes as f64 / f64::from(1 << 20),
        k.timeline_bytes,
        entities.len(),
        big_bytes as f64 / entities.len().max(1) as f64,
        PICTURE.0,
        PICTURE.1
    );
    let mut doc_id = None;
    println!();
    println!(
        "| round | DocumentStore::put, s | MiB/s | the process's peak RSS before / after, MiB | PostgreSQL CPU ms (all / client backends) |"
    );
    println!("|---|---|---|---|---|");
    for round in 1..=k.rounds {
        reset_peak_rss();
        let before = peak_rss();
        let c0 = cpu(pg, stats).await?;
        let t = Instant::now();
        let d = docs.put(TIMELINE, &media_id(round as u64), None, &big).await?;
        let took = t.elapsed().as_secs_f64();
        let c1 = cpu(pg, stats).await?;
        anyhow::ensure!(
            d.stored_size == Some(big_bytes as u64),
            "the text was not stored as blocks"
        );
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        println!(
            "| {round} | {took:.1} | {:.1} | {:.0} / {:.0} | {} |",
            mib(big_bytes as u64) / took,
            mib(before),
            mib(peak_rss()),
            per_op(&c0, &c1, 1)
        );
        doc_id.get_or_insert(d.id);
    }
    let doc_id = doc_id.expect("a document");
    let window = 24.0 * 60.0; // one minute
    let (aw, ah) = (PICTURE.0 as f64 / 10.0, PICTURE.1 as f64 / 10.0);
    let mut r = Rng(99);
    let queries: Vec<(f64, f64, f64)> = (0..k.timeline_queries)
        .map(|_| {
            (
                r.below(PROGRAMME_FRAMES - window as u64) as f64,
                r.below(PICTURE.0 - aw as u64) as f64,
                r.below(PICTURE.1 - ah as u64) as f64,
            )
        })
        .collect();
    type MakeQuery = fn(&(f64, f64, f64), f64, f64, f64) -> TimelineQuery;
    let tshapes: [(&str, MakeQuery); 3] = [
        ("time range (1 min)", |&(t, _, _), w, _, _| TimelineQuery {
            time: Some((t, t + w)),
            area: None,
        }),
        ("area (10% x 10%)", |&(_, x, y), _, aw, ah| TimelineQuery {
            time: None,
            area: Some([x, y, x + aw, y + ah]),
        }),
        ("time range + area", |&(t, x, y), w, aw, ah| TimelineQuery {
            time: Some((t, t + w)),
            area: Some([x, y, x + aw, y + ah]),
        }),
    ];
    println!();
    println!(
        "DocumentStore::timeline (index rows in PostgreSQL, then the blocks holding the hits; a \
         fresh store each round, so its first queries fetch blocks), limit {LIMIT}, {} queries per \
         shape per round, one client. Baseline, same run: read the whole document and filter its \
         entities in memory (what a store without the entity index does), {} runs per round.",
        k.timeline_queries, BASELINE_RUNS
    );
    println!();
    println!(
        "| shape | round | runs | matching (min-max) | p50 ms | p99 ms | max ms | PostgreSQL CPU ms/query (all / client backends) | blocks read |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut baseline_ms = Vec::new();
    for round in 1..=k.rounds {
        // A, then B: the baseline, then the indexed queries.
        let t = Instant::now();
        for q in queries.iter().take(BASELINE_RUNS) {
            let tq = (tshapes[0].1)(q, window, aw, ah);
            let doc = docs.get(doc_id).await?.context("the document")?;
            let all = compiled.timeline(&doc.body).map_err(|e| anyhow::anyhow!("{e}"))?;
            std::hint::black_box(all.iter().filter(|e| e.matches(&tq)).count());
        }
        baseline_ms.push(t.elapsed().as_secs_f64() * 1000.0 / BASELINE_RUNS as f64);
        let fresh = DocumentStore::new(
            store.clone(),
            Some(Arc::new(drive::data::LocalChunkStore::open(blocks_dir.path())?)),
        );
        for (name, make) in &tshapes {
            eprintln!("==> timeline: {name}, round {round}");
            let mut h = Histogram::<u64>::new(3)?;
            let (mut lo, mut hi) = (usize::MAX, 0);
            let c0 = cpu(pg, stats).await?;
            let started = Instant::now();
            let mut runs = 0u64;
            let fetched_before = fresh.block_gets();
            for q in &queries {
                if started.elapsed() > Duration::from_secs(k.shape_secs) {
                    break;
                }
                runs += 1;
                let tq = make(q, window, aw, ah);
                let t = Instant::now();
                let hits = fresh.timeline(doc_id, &tq, LIMIT).await?;
                h.record(t.elapsed().as_micros() as u64)?;
                let want: Vec<usize> = entities
                    .iter()
                    .filter(|e| e.matches(&tq))
                    .map(|e| e.index)
                    .collect();
                anyhow::ensure!(
                    hits.len() == want.len().min(LIMIT),
                    "{name}: {} hits, the model matches {}",
                    hits.len(),
                    want.len()
                );
                for hit in &hits {
                    anyhow::ensure!(
                        hit.item == big["events"][hit.index],
                        "{name}: item {} differs",
                        hit.index
                    );
                }
                lo = lo.min(want.len());
                hi = hi.max(want.len());
            }
            let c1 = cpu(pg, stats).await?;
            let l = latency(&h);
            println!(
                "| {name} | {round} | {runs} | {lo}-{hi} | {:.2} | {:.2} | {:.2} | {} | {} |",
                l.p50,
                l.p99,
                l.max,
                per_op(&c0, &c1, runs),
                fresh.block_gets() - fetched_before
            );
        }
    }
    println!();
    println!(
        "Baseline (read the whole document, filter in memory), ms per query by round: {}",
        baseline_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("### Plans (auto_explain, one run of each shape)");
    auto_explain(stats, true).await?;
    for (name, make) in &tshapes {
        let from = log.len();
        docs.timeline(doc_id, &make(&queries[0], window, aw, ah), LIMIT)
            .await?;
        println!();
        println!("{name}:");
        println!();
        println!("```");
        for p in log.plans_since(from, "media_timeline") {
            print!("{p}");
        }
        println!("```");
    }
    auto_explain(stats, false).await?;
    Ok(())
}

// ---- main --------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let k = Knobs {
        docs: env("MEDIA_BENCH_DOCS", 1_000_000),
        load_secs: env("MEDIA_BENCH_LOAD_SECS", 600),
        loaders: env("MEDIA_BENCH_LOADERS", 3),
        batch: env("MEDIA_BENCH_BATCH", 500),
        write_secs: env("MEDIA_BENCH_WRITE_SECS", 10),
        queries: env("MEDIA_BENCH_QUERIES", 200),
        timeline_queries: env("MEDIA_BENCH_TIMELINE_QUERIES", 200),
        shape_secs: env("MEDIA_BENCH_SHAPE_SECS", 60),
        rounds: env("MEDIA_BENCH_ROUNDS", 2),
        timeline_bytes: env("MEDIA_BENCH_TIMELINE_BYTES", 200_000_000),
    };
    anyhow::ensure!(
        k.docs > 0 && k.loaders > 0 && k.batch > 0 && k.queries > 0 && k.rounds > 0,
        "MEDIA_BENCH_* knobs must be positive"
    );
    // About ten documents per shot.
    let shots = (k.docs / 10).max(1);

    // PostgreSQL the testkit way, restarted once with the statistics and plan modules loaded.
    let pg = drive_testkit::pg::PgServer::start()?;
    {
        let c = admin(&pg.url("postgres")).await?;
        c.batch_execute("ALTER SYSTEM SET shared_preload_libraries = pg_stat_statements, auto_explain")
            .await?;
    }
    pg.stop()?;
    pg.resume()?;
    let db = pg.create_database().await?;
    let url = pg.url(&db);
    let stats = admin(&url).await?;
    stats.batch_execute("CREATE EXTENSION pg_stat_statements").await?;
    let version: String = stats.query_one("SHOW server_version", &[]).await?.get(0);
    let settings: Vec<String> = stats
        .query(
            "SELECT name || '=' || current_setting(name) FROM pg_settings \
             WHERE name IN ('shared_buffers', 'fsync', 'synchronous_commit', 'full_page_writes', 'work_mem') ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let log = ServerLog(pg.socket_dir().join("server.log"));

    let config = MetaConfig::new(url.clone());
    let store = PgMetaStore::connect(&config).await?;
    for name in [STORE, WRITES, TIMELINE] {
        store.put_media_datastore(&spec(name)).await?;
    }
    // The baseline's pool: the store's settings (size, recycling, server statement timeout).
    let plain = {
        let mut pgc: tokio_postgres::Config = url.parse()?;
        pgc.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout.as_millis()
        ));
        let manager = deadpool_postgres::Manager::from_config(
            pgc,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?
    };
    stats
        .batch_execute("CREATE TABLE bench_plain (body JSONB NOT NULL)")
        .await?;

    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let run_started = Instant::now();
    if env("MEDIA_BENCH_TIMELINE_ONLY", 0u8) == 1 {
        println!("# Media metadata benchmark (issue 20): timeline phase only");
        println!();
        println!("Load average at the start (/proc/loadavg): {}", loadavg());
        timeline_phase(&k, &pg, &stats, &store, &log).await?;
        println!();
        println!(
            "Run time {:.0} s; load average at the end: {}",
            run_started.elapsed().as_secs_f64(),
            loadavg()
        );
        return Ok(());
    }
    println!("# Media metadata benchmark (issue 20)");
    println!();
    println!("Load average at the start (/proc/loadavg): {}", loadavg());
    println!();
    println!(
        "PostgreSQL {version} (testkit: Unix socket; {}); pool of {} connections; {} cores; \
         MEDIA_BENCH_DOCS={} LOAD_SECS={} LOADERS={} BATCH={} WRITE_SECS={} QUERIES={} TIMELINE_QUERIES={} SHAPE_SECS={} ROUNDS={}",
        settings.join(", "),
        config.pool_size,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        k.docs,
        k.load_secs,
        k.loaders,
        k.batch,
        k.write_secs,
        k.queries,
        k.timeline_queries,
        k.shape_secs,
        k.rounds
    );

    // Client work of one put, one thread (what put_media_document does before the database).
    {
        let docs: Vec<Value> = (0..300).map(|i| document(i, shots)).collect();
        let sp = spec(WRITES);
        let t = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(CompiledDataStore::compile(sp.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let compile = t.elapsed().as_secs_f64() / 20.0;
        let ds = CompiledDataStore::compile(sp).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        for (i, d) in docs.iter().enumerate() {
            ds.check_media_id(&media_id(i as u64))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ds.check_document(d).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let check = t.elapsed().as_secs_f64() / docs.len() as f64;
        let t = Instant::now();
        for d in &docs {
            std::hint::black_box((ds.index(d), ds.timeline(d).map_err(|e| anyhow::anyhow!("{e}"))?));
        }
        let index = t.elapsed().as_secs_f64() / docs.len() as f64;
        let t = Instant::now();
        let mut total = 0;
        for d in &docs {
            total += serde_json::to_vec(d)?.len();
        }
        let ser = t.elapsed().as_secs_f64() / docs.len() as f64;
        println!();
        println!(
            "Client work per put, one thread, mean of 300 documents of {:.0} bytes: compile the DataStore \
             {:.0} us, check media id + document (schema, size, timeline) {:.0} us, index rows + \
             timeline entities {:.0} us, serialize to JSON {:.0} us",
            total as f64 / docs.len() as f64,
            compile * 1e6,
            check * 1e6,
            index * 1e6,
            ser * 1e6
        );
    }

    // ---- 1. load ----
    println!();
    println!("## Load");
    eprintln!("==> loading up to {} documents", k.docs);
    anyhow::ensure!(k.docs >= 100, "MEDIA_BENCH_DOCS: at least 100");
    let l = load(&store, &pg, &stats, &k, shots).await?;
    let t = Instant::now();
    stats
        .batch_execute("VACUUM (ANALYZE) media_documents, media_fields, media_latest, media_timeline")
        .await?;
    let vacuum = t.elapsed().as_secs_f64();
    let loaded = l.loaded;
    println!();
    println!(
        "Loaded {loaded} of {} documents ({:.2} GB of JSON, mean {:.0} bytes) with bulk_load_media_documents \
         ({} loaders x {} documents per COPY transaction) in {:.0} s: {:.0} docs/s, {:.1} MB/s, \
         PostgreSQL CPU (all processes / client backends) {} ms/doc{}. VACUUM ANALYZE afterwards: {vacuum:.0} s.",
        k.docs,
        l.bytes as f64 / 1e9,
        l.bytes as f64 / loaded.max(1) as f64,
        k.loaders,
        k.batch,
        l.secs,
        loaded as f64 / l.secs,
        l.bytes as f64 / 1e6 / l.secs,
        per_op(&l.cpu.0, &l.cpu.1, loaded),
        if loaded < k.docs {
            format!(
                " (stopped at MEDIA_BENCH_LOAD_SECS={}: the figures below are for {loaded})",
                k.load_secs
            )
        } else {
            String::new()
        }
    );
    let sizes = stats
        .query(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), \
                 coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), pg_indexes_size(c.oid), \
                 c.reltuples::INT8 \
             FROM pg_class c WHERE c.relname IN ('media_documents', 'media_fields', 'media_latest', 'media_timeline') \
             ORDER BY 2 DESC",
            &[],
        )
        .await?;
    let db_size: i64 = stats
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    println!();
    println!(
        "Database size after loading: {:.2} GB ({:.0} bytes per document; JSON loaded {:.2} GB)",
        db_size as f64 / 1e9,
        db_size as f64 / loaded.max(1) as f64,
        l.bytes as f64 / 1e9
    );
    println!();
    println!("| table | rows | total MB | heap MB | TOAST MB | indexes MB |");
    println!("|---|---|---|---|---|---|");
    for r in &sizes {
        let mb = |i: usize| r.get::<_, i64>(i) as f64 / 1e6;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.get::<_, String>(0),
            r.get::<_, i64>(5),
            mb(1),
            mb(2),
            mb(3),
            mb(4)
        );
    }

    // ---- 2. writes ----
    println!();
    println!("## Writes: put_media_document against plain INSERTs of the same JSON");
    let pool_docs: Arc<Vec<(Value, usize)>> = Arc::new(
        (0..1000u64)
            .map(|i| {
                let d = document(10_000_000_000 + i, shots);
                let len = serde_json::to_vec(&d).map_or(0, |v| v.len());
                (d, len)
            })
            .collect(),
    );
    let next_id = Arc::new(AtomicU64::new(0));
    println!();
    println!(
        "| writers | round | kind | docs/s | MB/s | p50 ms | p99 ms | PostgreSQL CPU ms/doc (all / client backends) | bench process CPU ms/doc |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut write_results: Vec<(usize, usize, WriteKind, WriteResult)> = Vec::new();
    let mut put_statements = Vec::new();
    for writers in [1usize, 4, 16] {
        for round in 1..=k.rounds {
            for kind in [WriteKind::Put, WriteKind::Plain] {
                eprintln!("==> writes: {writers} writers, round {round}, {kind:?}");
                let profile = kind == WriteKind::Put && writers == 16 && round == 1;
                if profile {
                    statements(&stats, true).await?;
                }
                let w = write_run(
                    kind,
                    writers,
                    k.write_secs,
                    &store,
                    &plain,
                    &pool_docs,
                    &next_id,
                    &pg,
                    &stats,
                )
                .await?;
                if profile {
                    put_statements = statements(&stats, false).await?;
                    put_statements.insert(0, format!("{} documents", w.docs));
                }
                println!(
                    "| {writers} | {round} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {:.3} |",
                    match kind {
                        WriteKind::Put => "put_media_document",
                        WriteKind::Plain => "plain INSERT",
                    },
                    w.docs as f64 / w.secs,
                    w.bytes as f64 / 1e6 / w.secs,
                    w.lat.p50,
                    w.lat.p99,
                    per_op(&w.cpu.0, &w.cpu.1, w.docs),
                    (w.cpu.1.own - w.cpu.0.own) * 1000.0 / w.docs.max(1) as f64,
                );
                write_results.push((writers, round, kind, w));
            }
        }
    }
    println!();
    println!("put / plain, docs/s per round (the same round's pair):");
    println!();
    println!(
        "| writers | {} |",
        (1..=k.rounds)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(k.rounds));
    for writers in [1usize, 4, 16] {
        let ratios: Vec<String> = (1..=k.rounds)
            .map(|round| {
                let rate = |kind| {
                    write_results
                        .iter()
                        .find(|(w, r, kd, _)| *w == writers && *r == round && *kd == kind)
                        .map_or(0.0, |(_, _, _, x)| x.docs as f64 / x.secs)
                };
                format!("{:.3}", rate(WriteKind::Put) / rate(WriteKind::Plain))
            })
            .collect();
        println!("| {writers} | {} |", ratios.join(" | "));
    }
    if let Some((head, rows)) = put_statements.split_first() {
        println!();
        println!(
            "Where the database's time went, put_media_document with 16 writers, round 1 ({head}; \
             pg_stat_statements, execution time only, top 10):"
        );
        println!();
        println!("| calls | total ms | mean ms | statement |");
        println!("|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
    }

    // ---- 3. queries ----
    println!();
    println!("## Queries over {loaded} documents (query_media, latest versions, limit {LIMIT}, one client)");
    let shapes = shapes(loaded, shots, k.queries);
    // The floor: one round trip, and the DataStore read every query_media starts with.
    {
        let c = plain.get().await?;
        let mut h = Histogram::<u64>::new(3)?;
        let mut hd = Histogram::<u64>::new(3)?;
        for _ in 0..200 {
            let t = Instant::now();
            c.simple_query("SELECT 1").await?;
            h.record(t.elapsed().as_micros() as u64)?;
            let t = Instant::now();
            store.media_datastore(STORE).await?;
            hd.record(t.elapsed().as_micros() as u64)?;
        }
        let (a, b) = (latency(&h), latency(&hd));
        println!();
        println!(
            "Floor: `SELECT 1` p50 {:.3} ms, p99 {:.3} ms; reading the DataStore (each query does first) \
             p50 {:.3} ms, p99 {:.3} ms.",
            a.p50, a.p99, b.p50, b.p99
        );
    }
    println!();
    println!(
        "| shape | filter | round | runs | matching | returned | p50 ms | p99 ms | max ms | PostgreSQL CPU ms/query (all / client backends) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for round in 1..=k.rounds {
        for s in &shapes {
            eprintln!("==> queries: {}, round {round}", s.name);
            let mut h = Histogram::<u64>::new(3)?;
            let (mut matching, mut returned) = (Vec::new(), Vec::new());
            let c0 = cpu(&pg, &stats).await?;
            let started = Instant::now();
            let mut runs = 0;
            for n in 0..k.queries {
                if started.elapsed() > Duration::from_secs(k.shape_secs) {
                    break;
                }
                runs += 1;
                let f = (s.make)(n);
                let t = Instant::now();
                let hits = store.query_media(STORE, &f, Versions::Latest, LIMIT).await?;
                h.record(t.elapsed().as_micros() as u64)?;
                let want = (s.expected)(n);
                anyhow::ensure!(
                    hits.len() == want.min(LIMIT),
                    "{}: {} hits, the filter in memory matches {want}",
                    s.name,
                    hits.len()
                );
                matching.push(want);
                returned.push(hits.len());
            }
            let c1 = cpu(&pg, &stats).await?;
            let span = |v: &[usize]| {
                let (lo, hi) = (
                    v.iter().min().copied().unwrap_or(0),
                    v.iter().max().copied().unwrap_or(0),
                );
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            };
            let l = latency(&h);
            println!(
                "| {} | `{}` | {round} | {runs} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                s.name,
                s.text,
                span(&matching),
                span(&returned),
                l.p50,
                l.p99,
                l.max,
                per_op(&c0, &c1, runs as u64)
            );
        }
    }
    println!();
    println!("### Plans (auto_explain: ANALYZE, BUFFERS; one run of each shape, after the timed runs)");
    auto_explain(&stats, true).await?;
    for s in &shapes {
        let from = log.len();
        store
            .query_media(STORE, &(s.make)(0), Versions::Latest, LIMIT)
            .await?;
        println!();
        println!("{} (`{}`):", s.name, s.text);
        println!();
        println!("```");
        for p in log.plans_since(from, "media_fields") {
            print!("{p}");
        }
        println!("```");
    }
    auto_explain(&stats, false).await?;

    // ---- 4. timeline ----
    timeline_phase(&k, &pg, &stats, &store, &log).await?;
    let stats_store = store.stats();
    println!();
    println!(
        "Store transactions: {} committed, {} serialization retries. Run time {:.0} s; load average \
         at the end: {}",
        stats_store.commits.load(Ordering::Relaxed),
        stats_store.retries.load(Ordering::Relaxed),
        run_started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}
