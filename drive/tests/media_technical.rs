//! The technical metadata extractor against real files: OpenEXR and DPX written by oiiotool
//! (Debian `openimageio-tools`), QuickTime and MP4 written by ffmpeg (Debian `ffmpeg`). The
//! tools that read them back are the oracle: `oiiotool --info -v` and `ffprobe` report the
//! width, height, channels, frame rate (compared within 1e-3), time code, codec and audio
//! that the extractor must find too. Every document must pass the `technical` DataStore's
//! schema. A missing tool fails the test and names its Debian package.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use drive::media::CompiledDataStore;
use drive::media::technical::{self, Format, PixelType, Technical};
use serde_json::Value;

/// The tool on PATH, or a failure naming the package that provides it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not on PATH: install the Debian package {package} \
                 (apt-get install {package}; scripts/test.sh does it as root)"
            )
        })
}

fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn oiiotool(args: &[&str]) -> String {
    run(&tool("oiiotool", "openimageio-tools"), args)
}

fn ffmpeg(args: &[&str]) {
    let mut all = vec!["-hide_banner", "-loglevel", "error", "-y"];
    all.extend(args);
    run(&tool("ffmpeg", "ffmpeg"), &all);
}

fn store() -> CompiledDataStore {
    CompiledDataStore::compile(technical::technical_datastore()).unwrap()
}

/// Extracts through the `File` source; the document must pass the schema.
fn extract(path: &Path) -> Technical {
    let file = File::open(path).unwrap();
    let t = technical::extract(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{}: not recognised", path.display()));
    let doc = t.document();
    store()
        .check_document(&doc)
        .unwrap_or_else(|e| panic!("{}: {e}\n{doc:#}", path.display()));
    t
}

fn assert_close(ours: Option<f64>, oracle: f64, what: &str) {
    let ours = ours.unwrap_or_else(|| panic!("{what}: no frame rate, the oracle says {oracle}"));
    assert!(
        (ours - oracle).abs() < 1e-3,
        "{what}: {ours} vs the oracle's {oracle}"
    );
}

/// "24000/1001" or "25" as a number.
fn ratio(text: &str) -> Option<f64> {
    match text.split_once('/') {
        Some((n, d)) => {
            let (n, d): (f64, f64) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
            (d != 0.0).then(|| n / d)
        }
        None => text.trim().parse().ok(),
    }
}

// --- oiiotool -----------------------------------------------------------------------------------

/// What `oiiotool --info -v` says of the first subimage.
struct OiioInfo {
    width: u64,
    height: u64,
    channels: u32,
    /// `half`, `float`, `uint`, `uint10`, `uint16`, ...
    data_type: String,
    attributes: BTreeMap<String, String>,
}

impl OiioInfo {
    fn read(path: &Path) -> OiioInfo {
        let text = oiiotool(&["--info", "-v", path.to_str().unwrap()]);
        let mut lines = text
            .lines()
            .skip_while(|l| !l.contains(" x ") || !l.contains(" channel"));
        // "a.exr : 1920 x 1080, 4 channel, half openexr"
        let summary = lines
            .next()
            .unwrap_or_else(|| panic!("no summary line in {text}"));
        let (_, spec) = summary.split_once(" : ").unwrap();
        let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
        let (w, h) = parts[0].split_once(" x ").unwrap();
        let channels = parts[1].split_whitespace().next().unwrap().parse().unwrap();
        let data_type = parts[2].split_whitespace().next().unwrap().to_string();
        let mut attributes = BTreeMap::new();
        // Indented "key: value" lines, up to the next subimage.
        for line in lines.take_while(|l| !l.trim_start().starts_with("subimage")) {
            if let Some((key, value)) = line.trim().split_once(": ") {
                attributes.insert(key.to_string(), value.trim_matches('"').to_string());
            }
        }
        OiioInfo {
            width: w.trim().parse().unwrap(),
            height: h.trim().parse().unwrap(),
            channels,
            data_type,
            attributes,
        }
    }

    fn channel_names(&self) -> Vec<String> {
        // "R, G, B", or with mixed types "Y (half), depth.Z (float)".
        let mut names: Vec<String> = self.attributes["channel list"]
            .split(", ")
            .map(|c| c.split(" (").next().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    fn timecode(&self) -> Option<&str> {
        self.attributes.get("smpte:TimeCode").map(String::as_str)
    }

    /// OpenEXR's `FramesPerSecond: 24/1 (24)`; DPX's `dpx:FrameRate: 25`.
    fn frame_rate(&self) -> Option<f64> {
        let exr = self.attributes.get("FramesPerSecond");
        let text = exr.or(self.attributes.get("dpx:FrameRate"))?;
        ratio(text.split(" (").next().unwrap())
    }

    /// Bits per sample: DPX says `oiio:BitsPerSample`; otherwise the data type.
    fn bit_depth(&self) -> u32 {
        if let Some(bits) = self.attributes.get("oiio:BitsPerSample") {
            return bits.parse().unwrap();
        }
        match self.data_type.as_str() {
            "half" | "uint16" => 16,
            "float" | "uint" => 32,
            "uint8" => 8,
            other => panic!("data type {other}"),
        }
    }
}

/// The extracted header agrees with oiiotool's report.
fn compare_image(path: &Path, format: Format) -> (Technical, OiioInfo) {
    let t = extract(path);
    let info = OiioInfo::read(path);
    let what = path.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(t.format, format, "{what}");
    assert_eq!(
        (t.width, t.height),
        (Some(info.width), Some(info.height)),
        "{what}"
    );
    assert_eq!(t.channels, Some(info.channels), "{what}");
    let mut ours = t.channel_names.clone();
    ours.sort();
    assert_eq!(ours, info.channel_names(), "{what}");
    assert_eq!(t.bit_depth, Some(info.bit_depth()), "{what}");
    match info.frame_rate() {
        Some(rate) => assert_close(t.frame_rate, rate, &what),
        None => assert_eq!(t.frame_rate, None, "{what}: the oracle has no frame rate"),
    }
    assert_eq!(t.timecode.as_deref(), info.timecode(), "{what}");
    (t, info)
}

#[test]
fn openexr_headers_agree_with_oiiotool() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (rgba, rgb, custom, tiled) = (at("rgba.exr"), at("rgb.exr"), at("custom.exr"), at("tiled.exr"));
    let (luma, parts) = (at("luma.exr"), at("parts.exr"));
    oiiotool(&[
        "--pattern",
        "constant:color=0.1,0.2,0.3,1",
        "1920x1080",
        "4",
        "-d",
        "half",
        "--compression",
        "zip",
        "--attrib:type=rational",
        "FramesPerSecond",
        "24/1",
        "--attrib:type=timecode",
        "smpte:TimeCode",
        "01:02:03:04",
        "-o",
        &rgba,
    ]);
    oiiotool(&[
        "--pattern",
        "checker",
        "2048x858",
        "3",
        "-d",
        "float",
        "--compression",
        "piz",
        "-o",
        &rgb,
    ]);
    oiiotool(&[
        "--pattern",
        "noise",
        "320x200",
        "4",
        "--chnames",
        "Y,depth.Z,mask,N.x",
        "-d",
        "half",
        "-d",
        "depth.Z=float",
        "--compression",
        "dwaa",
        "-o",
        &custom,
    ]);
    oiiotool(&[
        "--pattern",
        "checker",
        "256x128",
        "4",
        "-d",
        "half",
        "--tile",
        "64",
        "32",
        "--attrib:type=rational",
        "FramesPerSecond",
        "24000/1001",
        "--attrib:type=timecode",
        "smpte:TimeCode",
        "23:59:59:23",
        "-o",
        &tiled,
    ]);
    // The parts of a multi-part file share a display window.
    oiiotool(&[
        "--pattern",
        "constant:color=0.5",
        "2048x858",
        "1",
        "-d",
        "half",
        "--chnames",
        "Y",
        "-o",
        &luma,
    ]);
    oiiotool(&[&rgb, &luma, "--siappend", "-o", &parts]);

    let (t, info) = compare_image(Path::new(&rgba), Format::OpenExr);
    assert!(
        info.timecode().is_some() && info.frame_rate().is_some(),
        "the oracle reports them"
    );
    assert_eq!(t.pixel_type, Some(PixelType::Half));
    assert_eq!(
        t.compression.as_deref(),
        Some(info.attributes["compression"].as_str())
    );

    let (t, info) = compare_image(Path::new(&rgb), Format::OpenExr);
    assert_eq!(info.data_type, "float");
    assert_eq!(t.pixel_type, Some(PixelType::Float));
    assert_eq!(
        t.compression.as_deref(),
        Some(info.attributes["compression"].as_str())
    );

    // Mixed half and float channels: oiiotool reports "half/half/half/float".
    let custom_file = extract(Path::new(&custom));
    let info = OiioInfo::read(Path::new(&custom));
    assert_eq!(
        (custom_file.width, custom_file.height),
        (Some(info.width), Some(info.height))
    );
    assert_eq!(custom_file.channels, Some(info.channels));
    let mut ours = custom_file.channel_names.clone();
    ours.sort();
    assert_eq!(ours, info.channel_names());
    assert!(info.data_type.contains('/'), "{}", info.data_type);
    assert_eq!(custom_file.pixel_type, Some(PixelType::Mixed));
    assert_eq!(
        custom_file.compression.as_deref(),
        Some(info.attributes["compression"].as_str())
    );

    let (t, info) = compare_image(Path::new(&tiled), Format::OpenExr);
    let exr = t.exr.as_ref().unwrap();
    assert!(
        exr.tiled,
        "oiiotool says tile size {:?}",
        info.attributes.get("tile size")
    );
    assert!(info.timecode().is_some() && info.frame_rate().is_some());

    // A multi-part file is its first part.
    let (t, info) = compare_image(Path::new(&parts), Format::OpenExr);
    assert!(
        t.exr.as_ref().unwrap().multi_part,
        "oiiotool: {:?}",
        info.attributes.get("oiio:subimages")
    );
    assert_eq!(
        info.attributes.get("oiio:subimages").map(String::as_str),
        Some("2")
    );
}

#[test]
fn dpx_headers_agree_with_oiiotool_in_both_byte_orders() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (little, big, rgba, luma) = (at("little.dpx"), at("big.dpx"), at("rgba.dpx"), at("luma.dpx"));
    oiiotool(&[
        "--pattern",
        "checker",
        "2048x858",
        "3",
        "-d",
        "uint10",
        "--attrib:type=timecode",
        "smpte:TimeCode",
        "10:20:30:12",
        "-o",
        &little,
    ]);
    oiiotool(&[
        "--pattern",
        "checker",
        "1920x1080",
        "3",
        "-d",
        "uint10",
        "--attrib",
        "oiio:Endian",
        "big",
        "--attrib:type=float",
        "dpx:FrameRate",
        "25",
        "-o",
        &big,
    ]);
    oiiotool(&[
        "--pattern",
        "checker",
        "640x480",
        "4",
        "-d",
        "uint16",
        "-o",
        &rgba,
    ]);
    oiiotool(&[
        "--pattern",
        "constant:color=0.5",
        "64x64",
        "1",
        "-d",
        "uint8",
        "-o",
        &luma,
    ]);

    let (t, info) = compare_image(Path::new(&little), Format::Dpx);
    assert!(info.timecode().is_some(), "the oracle reports a time code");
    let dpx = t.dpx.as_ref().unwrap();
    assert_eq!(format!("{:?}", dpx.byte_order), "Little");
    assert_eq!(
        dpx.version.as_deref(),
        info.attributes.get("dpx:Version").map(String::as_str)
    );

    let (t, info) = compare_image(Path::new(&big), Format::Dpx);
    assert!(info.frame_rate().is_some(), "the oracle reports a frame rate");
    assert_eq!(format!("{:?}", t.dpx.as_ref().unwrap().byte_order), "Big");

    for path in [&rgba, &luma] {
        let (t, info) = compare_image(Path::new(path), Format::Dpx);
        assert_eq!(t.pixel_type, Some(PixelType::Uint), "{path}: {}", info.data_type);
    }
}

// --- ffmpeg / ffprobe -----------------------------------------------------------------------------

fn ffprobe(path: &Path) -> Value {
    let text = run(
        &tool("ffprobe", "ffmpeg"),
        &[
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            path.to_str().unwrap(),
        ],
    );
    serde_json::from_str(&text).unwrap()
}

fn stream<'a>(probe: &'a Value, kind: &str) -> Option<&'a Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

/// The start time code: ffprobe puts it on the time code (data) stream, and copies it to the
/// video stream and the format.
fn probe_timecode(probe: &Value) -> Option<String> {
    let streams = probe["streams"].as_array()?.iter();
    streams
        .map(|s| &s["tags"]["timecode"])
        .chain([&probe["format"]["tags"]["timecode"]])
        .find_map(|v| v.as_str().map(str::to_string))
}

fn compare_movie(path: &Path) -> (Technical, Value) {
    let t = extract(path);
    let probe = ffprobe(path);
    let what = path.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(t.format, Format::QuickTime, "{what}");
    let video = stream(&probe, "video").unwrap_or_else(|| panic!("{what}: the oracle has no video"));
    assert_eq!(
        (t.width, t.height),
        (video["width"].as_u64(), video["height"].as_u64()),
        "{what}"
    );
    assert_eq!(t.codec.as_deref(), video["codec_tag_string"].as_str(), "{what}");
    assert_close(
        t.frame_rate,
        ratio(video["avg_frame_rate"].as_str().unwrap()).unwrap(),
        &what,
    );
    let duration: f64 = probe["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!(
        (t.duration_seconds.unwrap() - duration).abs() < 1e-3,
        "{what}: {:?} vs {duration}",
        t.duration_seconds
    );
    assert_eq!(
        t.brand.as_deref(),
        probe["format"]["tags"]["major_brand"].as_str(),
        "{what}"
    );
    match stream(&probe, "audio") {
        Some(audio) => {
            let ours = t.audio.as_ref().unwrap_or_else(|| panic!("{what}: no audio"));
            assert_eq!(ours.channels.map(u64::from), audio["channels"].as_u64(), "{what}");
            let rate: u32 = audio["sample_rate"].as_str().unwrap().parse().unwrap();
            assert_eq!(ours.sample_rate, Some(rate), "{what}");
            assert_eq!(
                ours.codec.as_deref(),
                audio["codec_tag_string"].as_str(),
                "{what}"
            );
        }
        None => assert_eq!(t.audio, None, "{what}"),
    }
    assert_eq!(t.timecode, probe_timecode(&probe), "{what}");
    let streams = probe["streams"].as_array().unwrap().len();
    assert_eq!(t.track_count, Some(streams as u32), "{what}");
    (t, probe)
}

#[test]
fn quicktime_and_mp4_headers_agree_with_ffprobe() {
    let encoders = {
        let out = Command::new(tool("ffmpeg", "ffmpeg"))
            .args(["-hide_banner", "-encoders"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h264 = if encoders.contains(" libx264 ") {
        "libx264"
    } else {
        "mpeg4"
    };
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (mp4, mov, prores, faststart) = (at("a.mp4"), at("tc.mov"), at("prores.mov"), at("fast.mp4"));
    let video = |rate: &str, size: &str| format!("testsrc=size={size}:rate={rate}");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &video("24000/1001", "640x360"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "2",
        "-c:v",
        h264,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        &mp4,
    ]);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &video("24000/1001", "640x360"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "2",
        "-c:v",
        h264,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "pcm_s16le",
        "-ac",
        "2",
        "-timecode",
        "01:02:03:04",
        &mov,
    ]);
    // 29.97 drop-frame, with the moov box before the media data; AAC in QuickTime's `wave`.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &video("30000/1001", "320x240"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "1",
        "-c:v",
        "prores_ks",
        "-profile:v",
        "3",
        "-c:a",
        "aac",
        "-ac",
        "2",
        "-timecode",
        "00:01:00;02",
        "-movflags",
        "+faststart",
        &prores,
    ]);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &video("25", "352x288"),
        "-t",
        "1",
        "-c:v",
        "mpeg4",
        "-movflags",
        "+faststart",
        &faststart,
    ]);

    let (t, _) = compare_movie(Path::new(&mp4));
    assert!(t.audio.is_some());
    let (t, probe) = compare_movie(Path::new(&mov));
    assert!(
        t.timecode.is_some(),
        "the oracle reports {:?}",
        probe_timecode(&probe)
    );
    let (t, _) = compare_movie(Path::new(&prores));
    assert!(
        t.timecode.as_deref().is_some_and(|tc| tc.contains(';')),
        "{:?}",
        t.timecode
    );
    compare_movie(Path::new(&faststart));
}

#[test]
fn a_sequence_of_real_frames_summarises_gaps_and_differences() {
    let dir = tempfile::tempdir().unwrap();
    let mut frames = Vec::new();
    for (frame, size) in [
        (1001u64, "64x32"),
        (1002, "64x32"),
        (1004, "64x32"),
        (1007, "128x32"),
    ] {
        let path = dir.path().join(format!("shot.{frame}.exr"));
        oiiotool(&[
            "--pattern",
            "checker",
            size,
            "3",
            "-d",
            "half",
            "-o",
            path.to_str().unwrap(),
        ]);
        frames.push((frame, extract(&path)));
    }
    let summary = technical::summarize_sequence(&frames);
    store().check_document(&summary).unwrap();
    assert_eq!(summary["firstFrame"], 1001);
    assert_eq!(summary["lastFrame"], 1007);
    assert_eq!(
        summary["missingFrames"],
        serde_json::json!([[1003, 1003], [1005, 1006]])
    );
    assert_eq!(summary["missingFrameCount"], 3);
    // The widths differ (the oracle says so too); heights and channels agree.
    let widths: Vec<u64> = frames
        .iter()
        .map(|(n, _)| OiioInfo::read(&dir.path().join(format!("shot.{n}.exr"))).width)
        .collect();
    assert!(widths.windows(2).any(|w| w[0] != w[1]));
    assert_eq!(summary["mixed"], serde_json::json!(["width"]));
    assert_eq!(summary["height"].as_u64(), frames[0].1.height);
    assert_eq!(summary["channels"].as_u64(), frames[0].1.channels.map(u64::from));
}
