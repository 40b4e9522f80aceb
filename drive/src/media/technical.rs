//! Technical metadata: what the header of an OpenEXR, DPX or QuickTime/MP4 file says about
//! it (size, channels, pixel type, compression, frame rate, time code, codec, audio), read
//! without touching pixels or samples, as the documents of the built-in `technical` DataStore
//! ([`technical_datastore`]); and the summary of a frame sequence from its frames' documents.
//!
//! This module is pure parsing over one port, [`ByteSource`] (positional reads of a closed
//! file). It knows nothing of the store, tokio or the file system; the caller runs
//! [`extract`] on a blocking thread and files [`Technical::document`] under the file's media
//! id.
//!
//! Invariants, because the input is any file a user writes:
//! - Every length and count taken from a file is checked against a fixed bound and against
//!   the file size before it is used to read or to allocate. [`extract`] reads at most
//!   [`MAX_READ_BYTES`] from one file, whatever the file says.
//! - No input makes it panic (property tests feed random and mutated headers).
//! - Every number in a document is finite, and an unknown field is absent, never `null`.

use std::fmt;
use std::io;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{DataStoreAccess, DataStoreSpec};
use crate::model::{NodeId, SequenceKey};

// ---------------------------------------------------------------------------------------------
// The port

/// Positional reads of one file's bytes: the only I/O the extractor does.
pub trait ByteSource {
    /// The file's length in bytes.
    fn size(&self) -> u64;
    /// Up to `len` bytes at `offset`; fewer only at the end of the file (none past it).
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

impl ByteSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_or(self.len(), |o| o.min(self.len()));
        let end = start.saturating_add(len).min(self.len());
        Ok(self[start..end].to_vec())
    }
}

impl ByteSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.as_slice().read_at(offset, len)
    }
}

impl<S: ByteSource + ?Sized> ByteSource for &S {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        (**self).read_at(offset, len)
    }
}

/// A file read with `pread`, so one open file can serve concurrent readers. A file whose
/// metadata cannot be read reports size 0, which [`extract`] answers with `None`.
impl ByteSource for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            let at = offset
                .checked_add(filled as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
            match FileExt::read_at(self, &mut buf[filled..], at) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds

/// Bytes read to recognise a format: a QuickTime box header with a 64-bit size is 16 bytes.
pub const DETECT_BYTES: u64 = 16;
/// OpenEXR: the header (every attribute of the first part) is read in one piece of at most
/// this many bytes; a header that does not end within it is refused.
pub const MAX_EXR_HEADER_BYTES: u64 = 1 << 20;
/// DPX: the fixed header (file information, image, orientation, film and television headers).
pub const DPX_HEADER_BYTES: u64 = 2048;
/// QuickTime: top-level boxes walked to find `moov`, reading 16 bytes of each.
pub const MAX_TOP_LEVEL_BOXES: u64 = 1024;
/// QuickTime: bytes read of each top-level box (its header, with a 64-bit size).
pub const BOX_HEADER_BYTES: u64 = 16;
/// QuickTime: the largest `moov` payload read (it is read whole, then parsed in memory).
pub const MAX_MOOV_BYTES: u64 = 64 << 20;
/// QuickTime: the first sample of a time code track, a 4-byte frame number.
pub const TIMECODE_SAMPLE_BYTES: u64 = 4;
/// The most bytes [`extract`] reads from one file, whatever its content: the detection bytes
/// plus the largest per-format bound, QuickTime's (1024 box headers of 16 bytes, a `moov` of
/// 64 MiB and one 4-byte time code sample): 67,125,268 bytes. OpenEXR reads at most
/// 16 + 1 MiB and DPX at most 16 + 2048.
pub const MAX_READ_BYTES: u64 =
    DETECT_BYTES + MAX_TOP_LEVEL_BOXES * BOX_HEADER_BYTES + MAX_MOOV_BYTES + TIMECODE_SAMPLE_BYTES;

/// Channel names listed in a document (the count is always complete). With names of at
/// most 255 bytes, listed twice (`channelNames`, `exr.channels`), a document stays under the
/// store's 1 MiB even when every byte of every name is a control character JSON escapes.
pub const MAX_LISTED_CHANNELS: usize = 256;
/// QuickTime tracks listed in a document (`trackCount` is always complete).
pub const MAX_LISTED_TRACKS: usize = 64;
/// Missing-frame ranges listed in a sequence summary (the counts are always complete).
pub const MAX_LISTED_MISSING_RANGES: usize = 1000;
/// Frame rates above this are garbage in an unset field, not a rate; they are left out.
pub const MAX_FRAME_RATE: f64 = 1e6;

// ---------------------------------------------------------------------------------------------
// Formats and detection

/// A file format the extractor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OpenEXR (`openexr` in documents).
    OpenExr,
    /// SMPTE 268M DPX (`dpx`).
    Dpx,
    /// QuickTime and ISO base media files: .mov, .mp4, .m4v (`quicktime`).
    QuickTime,
}

impl Format {
    /// Whether a file of this format is one frame of an image sequence (OpenEXR, DPX), whose
    /// sequence gets a summary document. A QuickTime file holds its frames itself.
    pub fn is_image_frame(self) -> bool {
        matches!(self, Format::OpenExr | Format::Dpx)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::OpenExr => "OpenEXR",
            Format::Dpx => "DPX",
            Format::QuickTime => "QuickTime",
        })
    }
}

const EXR_MAGIC: [u8; 4] = [0x76, 0x2f, 0x31, 0x01];
const DPX_MAGIC_BIG: &[u8; 4] = b"SDPX";
const DPX_MAGIC_LITTLE: &[u8; 4] = b"XPDS";
/// An ISO base media file (MP4, and QuickTime since 2001) starts with a `ftyp` box.
const FTYP: &[u8; 4] = b"ftyp";
/// Older QuickTime files start with one of these boxes instead: plausible, but four common
/// letters at offset 4 are weak evidence, so the name or a successful parse must agree.
const QUICKTIME_FIRST_BOXES: [&[u8; 4]; 4] = [b"wide", b"mdat", b"moov", b"free"];
const QUICKTIME_EXTENSIONS: [&str; 6] = ["mov", "qt", "mp4", "m4v", "m4a", "3gp"];

/// How sure the first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// A format's magic number.
    Magic,
    /// A QuickTime box name at offset 4 without `ftyp`.
    FirstBox,
}

fn sniff(first: &[u8]) -> Option<(Format, Evidence)> {
    let magic = first.get(..4)?;
    if magic == EXR_MAGIC {
        return Some((Format::OpenExr, Evidence::Magic));
    }
    if magic == DPX_MAGIC_BIG || magic == DPX_MAGIC_LITTLE {
        return Some((Format::Dpx, Evidence::Magic));
    }
    let kind = first.get(4..8)?;
    if kind == FTYP {
        return Some((Format::QuickTime, Evidence::Magic));
    }
    // A box size is 0 (to the end), 1 (64-bit size follows) or at least a header's 8 bytes.
    let size = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let plausible = size <= 1 || size >= 8;
    if plausible && QUICKTIME_FIRST_BOXES.iter().any(|b| kind == *b) {
        return Some((Format::QuickTime, Evidence::FirstBox));
    }
    None
}

/// The format of a file from its name and first bytes (at least [`DETECT_BYTES`] of them when
/// the file is that long), by magic number: OpenEXR's `76 2f 31 01`, DPX's `SDPX` or `XPDS`,
/// an ISO base media `ftyp` box at offset 4. A QuickTime file whose first box is `wide`,
/// `mdat`, `moov` or `free` is weaker evidence; there the name's extension breaks the tie
/// (`.mov`, `.qt`, `.mp4`, `.m4v`, `.m4a`, `.3gp`). A name alone never makes a format: a
/// `.exr` without the magic number is `None`.
pub fn detect(name: &str, first_bytes: &[u8]) -> Option<Format> {
    match sniff(first_bytes)? {
        (format, Evidence::Magic) => Some(format),
        (format, Evidence::FirstBox) => {
            let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
            let quicktime = extension.is_some_and(|e| QUICKTIME_EXTENSIONS.contains(&e.as_str()));
            quicktime.then_some(format)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A file that claims a format (by its magic number) but whose header cannot be read. Only
/// [`TechnicalError::Io`] is worth retrying; the others are final for this content.
#[derive(Debug, thiserror::Error)]
pub enum TechnicalError {
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(#[from] io::Error),
    /// The file ends inside its header.
    #[error("{format} header truncated: the file ends ({size} bytes) inside {what}")]
    Truncated {
        format: Format,
        what: &'static str,
        size: u64,
    },
    /// A length, count or value in the header is out of range.
    #[error("{format} header malformed: {reason}")]
    Malformed { format: Format, reason: String },
    /// A part of the header is larger than the extractor reads.
    #[error("{format} header too large: {what} is larger than {limit} bytes")]
    TooLarge {
        format: Format,
        what: &'static str,
        limit: u64,
    },
}

impl TechnicalError {
    /// Whether trying again may succeed (an I/O error); otherwise the content is at fault.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TechnicalError::Io(_))
    }
}

fn malformed(format: Format, reason: impl Into<String>) -> TechnicalError {
    TechnicalError::Malformed {
        format,
        reason: reason.into(),
    }
}

/// Exactly `len` bytes at `offset` (`len` is already checked against a bound): fewer means
/// the file ends there.
fn read_exact_at(
    source: &dyn ByteSource,
    offset: u64,
    len: u64,
    format: Format,
    what: &'static str,
) -> Result<Vec<u8>, TechnicalError> {
    let want = usize::try_from(len).map_err(|_| TechnicalError::TooLarge {
        format,
        what,
        limit: usize::MAX as u64,
    })?;
    let mut bytes = source.read_at(offset, want)?;
    if bytes.len() < want {
        return Err(TechnicalError::Truncated {
            format,
            what,
            size: offset.saturating_add(bytes.len() as u64),
        });
    }
    // A source returning more than asked is not trusted with the rest.
    bytes.truncate(want);
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// The document

/// The sample type of an image's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    /// Unsigned integers (OpenEXR's 32-bit `uint`; DPX's 1 to 16-bit samples).
    Uint,
    /// 16-bit floating point.
    Half,
    /// 32-bit floating point.
    Float,
    /// 64-bit floating point (DPX).
    Double,
    /// Channels of different types (OpenEXR; each channel's type is in `exr.channels`).
    Mixed,
}

/// A byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    Big,
    Little,
}

/// What the header of one file says: serialised, with `"kind": "file"`, as the document of
/// the `technical` DataStore ([`Technical::document`]). Fields the header does not give are
/// `None` (absent from the document). Image fields (`width`, `height`, `channels`, ...) of a
/// QuickTime file describe its first video track.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename = "file", rename_all = "camelCase")]
pub struct Technical {
    pub format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Image channels (not audio channels: those are in `audio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// The first [`MAX_LISTED_CHANNELS`] channel names, in file order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channel_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_type: Option<PixelType>,
    /// Bits per sample, when all channels share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bit_depth: Option<u32>,
    /// OpenEXR's compression name (`zip`, `piz`, `dwaa`, ...); DPX's `none` or `rle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Frames per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f64>,
    /// SMPTE time code `HH:MM:SS:FF` (`HH:MM:SS;FF` for drop-frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timecode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_aspect_ratio: Option<f64>,
    /// A movie's duration (QuickTime `mvhd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// The first video track's sample description type (`avc1`, `hvc1`, `apch`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// The `ftyp` major brand (`isom`, `qt  `, ...), four characters as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// The first audio track.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<Audio>,
    /// QuickTime: every `trak` box, listed or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_count: Option<u32>,
    /// QuickTime: the first [`MAX_LISTED_TRACKS`] tracks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracks: Vec<Track>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exr: Option<ExrDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpx: Option<DpxDetails>,
}

impl Technical {
    fn empty(format: Format) -> Technical {
        Technical {
            format,
            width: None,
            height: None,
            channels: None,
            channel_names: Vec::new(),
            pixel_type: None,
            bit_depth: None,
            compression: None,
            frame_rate: None,
            timecode: None,
            pixel_aspect_ratio: None,
            duration_seconds: None,
            codec: None,
            brand: None,
            audio: None,
            track_count: None,
            tracks: Vec::new(),
            exr: None,
            dpx: None,
        }
    }

    /// The document of the `technical` DataStore: `{"kind": "file", "format": ..., ...}` with
    /// camelCase fields, absent when unknown. It passes [`technical_datastore`]'s schema.
    pub fn document(&self) -> Value {
        // Plain structs with string keys and finite numbers: serialising cannot fail.
        serde_json::to_value(self).expect("a Technical serialises to JSON")
    }
}

/// An audio track's sample description.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Audio {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
}

/// One QuickTime track.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    /// The media handler: `vide`, `soun`, `tmcd`, `text`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The first sample description's type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// OpenEXR specifics (of the first part of a multi-part file).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExrDetails {
    pub tiled: bool,
    pub deep: bool,
    /// A multi-part file: the document describes its first part.
    pub multi_part: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_height: Option<u32>,
    /// `[xMin, yMin, xMax, yMax]`, inclusive.
    pub data_window: [i32; 4],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_window: Option<[i32; 4]>,
    /// The first [`MAX_LISTED_CHANNELS`] channels, in file order.
    pub channels: Vec<ExrChannel>,
}

/// One OpenEXR channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExrChannel {
    pub name: String,
    pub pixel_type: PixelType,
    /// Subsampling; absent when 1 (every pixel).
    #[serde(skip_serializing_if = "is_one")]
    pub x_sampling: i32,
    #[serde(skip_serializing_if = "is_one")]
    pub y_sampling: i32,
}

fn is_one(v: &i32) -> bool {
    *v == 1
}

/// DPX specifics: the file's byte order and the first image element's codes (SMPTE 268M).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DpxDetails {
    pub byte_order: ByteOrder,
    /// `V1.0`, `V2.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub image_elements: u16,
    /// 50 = RGB, 51 = RGBA, 6 = luma, 100 = CbYCrY 4:2:2, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colorimetric: Option<u8>,
    /// 0 = packed, 1 = filled method A, 2 = filled method B.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packing: Option<u16>,
    /// 0 = none, 1 = run-length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<u16>,
}

// ---------------------------------------------------------------------------------------------
// Extraction

/// Reads the header of an OpenEXR, DPX or QuickTime/MP4 file.
///
/// - `Ok(None)`: the file is none of them (no magic number), or a QuickTime file recognised
///   only by its first box name (no `ftyp`) whose boxes do not parse.
/// - `Err`: the file has a format's magic number but its header is truncated, malformed or
///   larger than the extractor reads; or reading failed ([`TechnicalError::is_retryable`]).
///
/// Reads at most [`MAX_READ_BYTES`] (about 64 MiB, for a QuickTime `moov` box; an OpenEXR
/// header at most 1 MiB, a DPX header 2 KiB) and allocates no more than it reads. A
/// multi-part OpenEXR file is described by its first part.
pub fn extract(source: &dyn ByteSource) -> Result<Option<Technical>, TechnicalError> {
    let size = source.size();
    let first = source.read_at(0, DETECT_BYTES.min(size) as usize)?;
    match sniff(&first) {
        None => Ok(None),
        Some((Format::OpenExr, _)) => exr::parse(source, size).map(Some),
        Some((Format::Dpx, _)) => dpx::parse(source, size).map(Some),
        Some((Format::QuickTime, Evidence::Magic)) => quicktime::parse(source, size).map(Some),
        Some((Format::QuickTime, Evidence::FirstBox)) => match quicktime::parse(source, size) {
            Ok(t) => Ok(Some(t)),
            Err(TechnicalError::Io(e)) => Err(TechnicalError::Io(e)),
            // Four letters at offset 4 were not a claim to be QuickTime.
            Err(_) => Ok(None),
        },
    }
}

/// A rate that is a rate: finite, positive and at most [`MAX_FRAME_RATE`].
fn frame_rate(rate: f64) -> Option<f64> {
    (rate.is_finite() && rate > 0.0 && rate <= MAX_FRAME_RATE).then_some(rate)
}

/// A finite positive number (aspect ratios).
fn positive(v: f64) -> Option<f64> {
    (v.is_finite() && v > 0.0).then_some(v)
}

/// Four bytes as text when they are printable ASCII (a QuickTime box or codec type).
fn fourcc(code: [u8; 4]) -> Option<String> {
    code.iter()
        .all(|b| (0x20..=0x7e).contains(b))
        .then(|| code.iter().map(|&b| char::from(b)).collect())
}

/// `N` bytes at `at`, when the slice holds them.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    array_at(bytes, at).map(u16::from_be_bytes)
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    array_at(bytes, at).map(u32::from_be_bytes)
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    array_at(bytes, at).map(u64::from_be_bytes)
}

/// A SMPTE 12M time code packed as OpenEXR's `timecode` attribute and DPX's television header
/// store it: BCD digits with flag bits between them (bit 6: drop-frame). `None` when a digit
/// is not decimal or a field is out of range (an unset DPX field is all ones).
fn packed_timecode(packed: u32) -> Option<String> {
    let field = |shift: u32, tens_mask: u32| -> Option<u32> {
        let units = (packed >> shift) & 0xf;
        let tens = (packed >> (shift + 4)) & tens_mask;
        (units <= 9).then_some(tens * 10 + units)
    };
    let frames = field(0, 0x3)?;
    let seconds = field(8, 0x7)?;
    let minutes = field(16, 0x7)?;
    let hours = field(24, 0x3)?;
    let drop_frame = packed & (1 << 6) != 0;
    (hours < 24 && minutes < 60 && seconds < 60).then(|| {
        format_timecode(
            hours as u64,
            minutes as u64,
            seconds as u64,
            frames as u64,
            drop_frame,
        )
    })
}

fn format_timecode(hours: u64, minutes: u64, seconds: u64, frames: u64, drop_frame: bool) -> String {
    let separator = if drop_frame { ';' } else { ':' };
    format!("{hours:02}:{minutes:02}:{seconds:02}{separator}{frames:02}")
}

/// Time codes count at most this many frames per second (three digits of frames).
const MAX_TIMECODE_FPS: u64 = 999;

/// A frame count from 00:00:00:00 as a time code at `fps` nominal frames per second (at most
/// [`MAX_TIMECODE_FPS`]). With `drop_frame` (only for multiples of 30), frame labels 0 and 1
/// (0 to 3 at 60) are skipped at the start of each minute except every tenth, as SMPTE 12M
/// counts 29.97 fps. `None` when the hours need more than two digits.
fn frames_to_timecode(frames: u64, fps: u64, drop_frame: bool, wrap_24_hours: bool) -> Option<String> {
    if fps == 0 || fps > MAX_TIMECODE_FPS || (drop_frame && !fps.is_multiple_of(30)) {
        return None;
    }
    let mut label = frames;
    if drop_frame {
        let dropped = fps / 30 * 2;
        let per_ten_minutes = fps * 600 - dropped * 9;
        let per_minute = fps * 60 - dropped;
        let (tens, rest) = (frames / per_ten_minutes, frames % per_ten_minutes);
        let skipped = dropped * 9 * tens + dropped * (rest.saturating_sub(dropped) / per_minute);
        label = frames.checked_add(skipped)?;
    }
    let mut hours = label / (fps * 3600);
    if wrap_24_hours {
        hours %= 24;
    }
    (hours < 100).then(|| {
        format_timecode(
            hours,
            label / (fps * 60) % 60,
            label / fps % 60,
            label % fps,
            drop_frame,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// OpenEXR

/// OpenEXR headers ("OpenEXR File Layout"): magic, a version word with flags, then attributes
/// `name\0 type\0 size:i32 value` up to an empty name. Little-endian throughout.
mod exr {
    use super::*;

    const VERSION: u32 = 2;
    const VERSION_MASK: u32 = 0xff;
    /// A single-part tiled file.
    const FLAG_TILED: u32 = 0x200;
    /// Deep data ("non-image").
    const FLAG_DEEP: u32 = 0x800;
    const FLAG_MULTI_PART: u32 = 0x1000;
    /// Attribute and channel names: 31 bytes, or 255 with the long-names flag (0x400). Files
    /// written with long names and without the flag exist, so 255 is accepted either way.
    const MAX_NAME_BYTES: usize = 255;
    const COMPRESSIONS: [&str; 12] = [
        "none", "rle", "zips", "zip", "piz", "pxr24", "b44", "b44a", "dwaa", "dwab", "htj2k256", "htj2k32",
    ];

    /// An in-memory header being read, which knows why it might end early: the file ended
    /// (truncated) or the 1 MiB read did (too large).
    struct Header<'a> {
        bytes: &'a [u8],
        pos: usize,
        capped: bool,
    }

    impl<'a> Header<'a> {
        fn short(&self, what: &'static str) -> TechnicalError {
            if self.capped {
                TechnicalError::TooLarge {
                    format: Format::OpenExr,
                    what: "the header",
                    limit: MAX_EXR_HEADER_BYTES,
                }
            } else {
                TechnicalError::Truncated {
                    format: Format::OpenExr,
                    what,
                    size: self.bytes.len() as u64,
                }
            }
        }

        fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TechnicalError> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
            let Some(end) = end else {
                return Err(self.short(what));
            };
            let taken = &self.bytes[self.pos..end];
            self.pos = end;
            Ok(taken)
        }

        fn u32(&mut self, what: &'static str) -> Result<u32, TechnicalError> {
            let b = self.take(4, what)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        /// A NUL-terminated name (without its NUL).
        fn name(&mut self, what: &'static str) -> Result<&'a [u8], TechnicalError> {
            let rest = &self.bytes[self.pos..];
            let window = &rest[..rest.len().min(MAX_NAME_BYTES + 1)];
            match window.iter().position(|&b| b == 0) {
                Some(len) => {
                    let name = &rest[..len];
                    self.pos += len + 1;
                    Ok(name)
                }
                None if window.len() > MAX_NAME_BYTES => Err(malformed(
                    Format::OpenExr,
                    format!("{what} longer than {MAX_NAME_BYTES} bytes"),
                )),
                None => Err(self.short(what)),
            }
        }
    }

    /// The attributes this extractor reads; others are skipped by their size.
    #[derive(Default)]
    struct Attributes {
        channels: Option<Vec<ExrChannel>>,
        channel_count: u32,
        compression: Option<u8>,
        data_window: Option<[i32; 4]>,
        display_window: Option<[i32; 4]>,
        pixel_aspect_ratio: Option<f32>,
        frames_per_second: Option<(i32, u32)>,
        time_code: Option<u32>,
        tiles: Option<(u32, u32)>,
        part_type: Option<String>,
    }

    pub(super) fn parse(source: &dyn ByteSource, size: u64) -> Result<Technical, TechnicalError> {
        let len = size.min(MAX_EXR_HEADER_BYTES);
        let bytes = read_exact_at(source, 0, len, Format::OpenExr, "the header")?;
        let mut header = Header {
            bytes: &bytes,
            pos: 0,
            capped: size > len,
        };
        if header.take(4, "the magic number")? != EXR_MAGIC {
            return Err(malformed(Format::OpenExr, "no magic number"));
        }
        let version = header.u32("the version")?;
        if version & VERSION_MASK != VERSION {
            return Err(malformed(
                Format::OpenExr,
                format!("version {} (only 2 exists)", version & VERSION_MASK),
            ));
        }
        let mut attributes = Attributes::default();
        loop {
            let name = header.name("an attribute name")?;
            if name.is_empty() {
                // The end of the first (or only) part's header.
                break;
            }
            let kind = header.name("an attribute type")?;
            // The size is an i32: one with the sign bit set is negative, not large.
            let value_len = header.u32("an attribute size")?;
            if value_len > i32::MAX as u32 {
                let name = String::from_utf8_lossy(name);
                return Err(malformed(
                    Format::OpenExr,
                    format!("attribute {name} has a negative size"),
                ));
            }
            // Checked against what was read (at most 1 MiB) before anything is taken.
            let value = header.take(value_len as usize, "an attribute value")?;
            attributes.read(name, kind, value)?;
        }
        attributes.into_technical(version)
    }

    fn bad(attribute: &str, why: &str) -> TechnicalError {
        malformed(Format::OpenExr, format!("attribute {attribute}: {why}"))
    }

    fn le_i32(b: &[u8], at: usize) -> Option<i32> {
        array_at(b, at).map(i32::from_le_bytes)
    }

    fn le_u32(b: &[u8], at: usize) -> Option<u32> {
        array_at(b, at).map(u32::from_le_bytes)
    }

    /// A value of exactly `N` bytes.
    fn exact<const N: usize>(value: &[u8], attribute: &str) -> Result<[u8; N], TechnicalError> {
        value
            .try_into()
            .map_err(|_| bad(attribute, &format!("{} bytes where {N} belong", value.len())))
    }

    fn box2i(value: &[u8], attribute: &str) -> Result<[i32; 4], TechnicalError> {
        let b: [u8; 16] = exact(value, attribute)?;
        let at = |i: usize| i32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok([at(0), at(4), at(8), at(12)])
    }

    fn pixel_type(code: i32) -> Option<PixelType> {
        match code {
            0 => Some(PixelType::Uint),
            1 => Some(PixelType::Half),
            2 => Some(PixelType::Float),
            _ => None,
        }
    }

    /// `chlist`: per channel `name\0 pixelType:i32 pLinear:u8 reserved:3 xSampling:i32
    /// ySampling:i32`, then an empty name. Returns the first channels listed and the count.
    fn channel_list(value: &[u8]) -> Result<(Vec<ExrChannel>, u32), TechnicalError> {
        const FIELDS_BYTES: usize = 16;
        let mut listed = Vec::new();
        let mut count = 0u32;
        let mut rest = value;
        loop {
            let Some(len) = rest.iter().take(MAX_NAME_BYTES + 1).position(|&b| b == 0) else {
                return Err(bad("channels", "a channel name without its end"));
            };
            if len == 0 {
                return Ok((listed, count));
            }
            let name = &rest[..len];
            let fields = rest
                .get(len + 1..len + 1 + FIELDS_BYTES)
                .ok_or_else(|| bad("channels", "a channel without its fields"))?;
            let code = le_i32(fields, 0).unwrap_or(-1);
            let pixel_type =
                pixel_type(code).ok_or_else(|| bad("channels", &format!("pixel type {code}")))?;
            count += 1;
            if listed.len() < MAX_LISTED_CHANNELS {
                listed.push(ExrChannel {
                    name: String::from_utf8_lossy(name).into_owned(),
                    pixel_type,
                    x_sampling: le_i32(fields, 8).unwrap_or(1),
                    y_sampling: le_i32(fields, 12).unwrap_or(1),
                });
            }
            rest = &rest[len + 1 + FIELDS_BYTES..];
        }
    }

    impl Attributes {
        fn read(&mut self, name: &[u8], kind: &[u8], value: &[u8]) -> Result<(), TechnicalError> {
            // An attribute of an unexpected type is someone else's attribute: skipped.
            match (name, kind) {
                (b"channels", b"chlist") => {
                    let (listed, count) = channel_list(value)?;
                    self.channels = Some(listed);
                    self.channel_count = count;
                }
                (b"compression", b"compression") => {
                    self.compression = Some(exact::<1>(value, "compression")?[0]);
                }
                (b"dataWindow", b"box2i") => self.data_window = Some(box2i(value, "dataWindow")?),
                (b"displayWindow", b"box2i") => self.display_window = Some(box2i(value, "displayWindow")?),
                (b"pixelAspectRatio", b"float") => {
                    self.pixel_aspect_ratio = Some(f32::from_le_bytes(exact(value, "pixelAspectRatio")?));
                }
                // OpenEXR's standard name, and the one OpenImageIO 2.4 writes.
                (b"framesPerSecond" | b"FramesPerSecond", b"rational") => {
                    let b: [u8; 8] = exact(value, "framesPerSecond")?;
                    self.frames_per_second = le_i32(&b, 0).zip(le_u32(&b, 4));
                }
                (b"timeCode", b"timecode") => {
                    // timeAndFlags, then user data.
                    let b: [u8; 8] = exact(value, "timeCode")?;
                    self.time_code = le_u32(&b, 0);
                }
                (b"tiles", b"tiledesc") => {
                    // xSize, ySize, then a level/rounding mode byte.
                    let b: [u8; 9] = exact(value, "tiles")?;
                    self.tiles = le_u32(&b, 0).zip(le_u32(&b, 4));
                }
                (b"type", b"string") => self.part_type = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
            Ok(())
        }

        fn into_technical(self, version: u32) -> Result<Technical, TechnicalError> {
            let missing = |name: &str| malformed(Format::OpenExr, format!("no {name} attribute"));
            let data_window = self.data_window.ok_or_else(|| missing("dataWindow"))?;
            let channels = self.channels.ok_or_else(|| missing("channels"))?;
            let compression = self.compression.ok_or_else(|| missing("compression"))?;
            let [x_min, y_min, x_max, y_max] = data_window.map(i64::from);
            if x_max < x_min || y_max < y_min {
                return Err(bad("dataWindow", "max below min"));
            }
            // Multi-part and deep files name their part type; single-part files use flags.
            let (tiled, deep) = match self.part_type.as_deref() {
                Some("tiledimage") => (true, false),
                Some("deeptile") => (true, true),
                Some("deepscanline") => (false, true),
                Some(_) | None => (version & FLAG_TILED != 0, version & FLAG_DEEP != 0),
            };
            let pixel_type = channels.first().map(|first| {
                if channels.iter().all(|c| c.pixel_type == first.pixel_type) {
                    first.pixel_type
                } else {
                    PixelType::Mixed
                }
            });
            let mut t = Technical::empty(Format::OpenExr);
            t.width = Some((x_max - x_min + 1) as u64);
            t.height = Some((y_max - y_min + 1) as u64);
            t.channels = Some(self.channel_count);
            t.channel_names = channels.iter().map(|c| c.name.clone()).collect();
            t.pixel_type = pixel_type;
            t.bit_depth = match pixel_type {
                Some(PixelType::Half) => Some(16),
                Some(PixelType::Float | PixelType::Uint) => Some(32),
                _ => None,
            };
            t.compression = COMPRESSIONS
                .get(usize::from(compression))
                .map(ToString::to_string);
            t.frame_rate = self
                .frames_per_second
                .filter(|&(_, den)| den != 0)
                .and_then(|(num, den)| frame_rate(f64::from(num) / f64::from(den)));
            t.timecode = self.time_code.and_then(packed_timecode);
            t.pixel_aspect_ratio = self.pixel_aspect_ratio.and_then(|r| positive(f64::from(r)));
            t.exr = Some(ExrDetails {
                tiled,
                deep,
                multi_part: version & FLAG_MULTI_PART != 0,
                tile_width: self.tiles.filter(|_| tiled).map(|(w, _)| w),
                tile_height: self.tiles.filter(|_| tiled).map(|(_, h)| h),
                data_window,
                display_window: self.display_window,
                channels,
            });
            Ok(t)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DPX

/// DPX (SMPTE 268M): fixed offsets in a 2048-byte header, in the byte order the magic number
/// shows. Unset fields are all ones (floats: NaN).
mod dpx {
    use super::*;

    const IMAGE_DATA_OFFSET: usize = 4;
    const VERSION: usize = 8;
    const VERSION_LEN: usize = 8;
    /// Generic file information (768 bytes) then the image header (640 bytes).
    const IMAGE_HEADER_END: u64 = 1408;
    const ELEMENT_COUNT: usize = 770;
    const PIXELS_PER_LINE: usize = 772;
    const LINES_PER_ELEMENT: usize = 776;
    const MAX_ELEMENTS: u16 = 8;
    /// The first of eight 72-byte image element descriptions, and offsets within one.
    const FIRST_ELEMENT: usize = 780;
    const DESCRIPTOR: usize = FIRST_ELEMENT + 20;
    const TRANSFER: usize = FIRST_ELEMENT + 21;
    const COLORIMETRIC: usize = FIRST_ELEMENT + 22;
    const BIT_SIZE: usize = FIRST_ELEMENT + 23;
    const PACKING: usize = FIRST_ELEMENT + 24;
    const ENCODING: usize = FIRST_ELEMENT + 26;
    /// The industry headers: orientation (1408..1664), film (..1920), television (..2048).
    /// Each is read only when the image data starts after it: a writer may put pixels there.
    const ORIENTATION_HEADER_END: u64 = 1664;
    const FILM_HEADER_END: u64 = 1920;
    const TV_HEADER_END: u64 = DPX_HEADER_BYTES;
    const PIXEL_ASPECT_RATIO: usize = 1628;
    const FILM_FRAME_RATE: usize = 1724;
    const TV_TIME_CODE: usize = 1920;
    const TV_FRAME_RATE: usize = 1940;

    const UNSET_U8: u8 = 0xff;
    const UNSET_U16: u16 = 0xffff;
    const UNSET_U32: u32 = 0xffff_ffff;

    impl ByteOrder {
        fn u16(self, b: &[u8], at: usize) -> Option<u16> {
            array_at(b, at).map(|a| match self {
                ByteOrder::Big => u16::from_be_bytes(a),
                ByteOrder::Little => u16::from_le_bytes(a),
            })
        }

        fn u32(self, b: &[u8], at: usize) -> Option<u32> {
            array_at(b, at).map(|a| match self {
                ByteOrder::Big => u32::from_be_bytes(a),
                ByteOrder::Little => u32::from_le_bytes(a),
            })
        }

        fn f32(self, b: &[u8], at: usize) -> Option<f32> {
            self.u32(b, at).map(f32::from_bits)
        }
    }

    fn set_u8(v: u8) -> Option<u8> {
        (v != UNSET_U8).then_some(v)
    }

    fn set_u16(v: Option<u16>) -> Option<u16> {
        v.filter(|&v| v != UNSET_U16)
    }

    fn set_u32(v: Option<u32>) -> Option<u32> {
        v.filter(|&v| v != UNSET_U32)
    }

    /// The channels of an image element descriptor. 4:2:2 descriptors (100, 101) have no
    /// per-pixel channel count and give none; user-defined 150..=156 have 2 to 8 unnamed.
    fn channels(descriptor: u8) -> Option<(u32, &'static [&'static str])> {
        let named = |names: &'static [&'static str]| Some((names.len() as u32, names));
        match descriptor {
            1 => named(&["R"]),
            2 => named(&["G"]),
            3 => named(&["B"]),
            4 => named(&["A"]),
            6 => named(&["Y"]),
            7 => named(&["Cb", "Cr"]),
            8 => named(&["Z"]),
            9 => named(&["Composite"]),
            50 => named(&["R", "G", "B"]),
            51 => named(&["R", "G", "B", "A"]),
            52 => named(&["A", "B", "G", "R"]),
            102 => named(&["Cb", "Y", "Cr"]),
            103 => named(&["Cb", "Y", "Cr", "A"]),
            150..=156 => Some((u32::from(descriptor) - 148, &[])),
            _ => None,
        }
    }

    pub(super) fn parse(source: &dyn ByteSource, size: u64) -> Result<Technical, TechnicalError> {
        if size < IMAGE_HEADER_END {
            return Err(TechnicalError::Truncated {
                format: Format::Dpx,
                what: "the image header",
                size,
            });
        }
        let len = size.min(DPX_HEADER_BYTES);
        let h = read_exact_at(source, 0, len, Format::Dpx, "the header")?;
        let order = match array_at::<4>(&h, 0) {
            Some(m) if &m == DPX_MAGIC_BIG => ByteOrder::Big,
            Some(m) if &m == DPX_MAGIC_LITTLE => ByteOrder::Little,
            _ => return Err(malformed(Format::Dpx, "no magic number")),
        };
        let elements = order.u16(&h, ELEMENT_COUNT).unwrap_or(0);
        if !(1..=MAX_ELEMENTS).contains(&elements) {
            return Err(malformed(
                Format::Dpx,
                format!("{elements} image elements (1 to {MAX_ELEMENTS})"),
            ));
        }
        let width = set_u32(order.u32(&h, PIXELS_PER_LINE)).filter(|&w| w > 0);
        let height = set_u32(order.u32(&h, LINES_PER_ELEMENT)).filter(|&h| h > 0);
        let (Some(width), Some(height)) = (width, height) else {
            return Err(malformed(Format::Dpx, "no image size"));
        };
        let data_offset = u64::from(order.u32(&h, IMAGE_DATA_OFFSET).unwrap_or(0));
        let has = |end: u64| data_offset >= end && h.len() as u64 >= end;

        let descriptor = set_u8(h[DESCRIPTOR]);
        let bit_size = h[BIT_SIZE];
        let encoding = set_u16(order.u16(&h, ENCODING));
        let mut t = Technical::empty(Format::Dpx);
        t.width = Some(u64::from(width));
        t.height = Some(u64::from(height));
        if let Some((count, names)) = descriptor.and_then(channels) {
            t.channels = Some(count);
            t.channel_names = names.iter().map(ToString::to_string).collect();
        }
        t.bit_depth = (1..=64).contains(&bit_size).then_some(u32::from(bit_size));
        // SMPTE 268M: 32- and 64-bit samples are IEEE floating point, the others integers.
        t.pixel_type = match bit_size {
            1..=16 => Some(PixelType::Uint),
            32 => Some(PixelType::Float),
            64 => Some(PixelType::Double),
            _ => None,
        };
        t.compression = match encoding {
            Some(0) => Some("none".to_string()),
            Some(1) => Some("rle".to_string()),
            _ => None,
        };
        if has(ORIENTATION_HEADER_END) {
            let horizontal = set_u32(order.u32(&h, PIXEL_ASPECT_RATIO));
            let vertical = set_u32(order.u32(&h, PIXEL_ASPECT_RATIO + 4)).filter(|&v| v != 0);
            t.pixel_aspect_ratio = horizontal
                .zip(vertical)
                .and_then(|(x, y)| positive(f64::from(x) / f64::from(y)));
        }
        // The film header's rate (of the original) first, then the television header's.
        let film_rate = has(FILM_HEADER_END)
            .then(|| order.f32(&h, FILM_FRAME_RATE))
            .flatten();
        let tv_rate = has(TV_HEADER_END).then(|| order.f32(&h, TV_FRAME_RATE)).flatten();
        t.frame_rate = [film_rate, tv_rate]
            .into_iter()
            .flatten()
            .find_map(|r| frame_rate(f64::from(r)));
        if has(TV_HEADER_END) {
            t.timecode = set_u32(order.u32(&h, TV_TIME_CODE)).and_then(packed_timecode);
        }
        let version = h[VERSION..VERSION + VERSION_LEN]
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default();
        t.dpx = Some(DpxDetails {
            byte_order: order,
            version: (!version.is_empty() && version.iter().all(|b| (0x20..=0x7e).contains(b)))
                .then(|| String::from_utf8_lossy(version).into_owned()),
            image_elements: elements,
            descriptor,
            transfer: set_u8(h[TRANSFER]),
            colorimetric: set_u8(h[COLORIMETRIC]),
            packing: set_u16(order.u16(&h, PACKING)),
            encoding,
        });
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------------
// QuickTime / ISO base media

/// QuickTime and ISO base media files (ISO/IEC 14496-12; Apple's QuickTime File Format):
/// boxes of `size:u32 type:4cc` (size 1: a 64-bit size follows; 0: to the end of the
/// enclosing box or file). The top level is walked by box headers only; `moov` is read whole
/// and parsed in memory along fixed paths (`moov/trak/mdia/minf/stbl/stsd`, six levels at
/// most, never recursively), so a deeply nested file costs nothing. Big-endian throughout.
mod quicktime {
    use super::*;

    const HEADER: u64 = 8;
    const LARGE_HEADER: u64 = 16;

    struct BoxHeader {
        kind: [u8; 4],
        header_len: u64,
        total_len: u64,
    }

    enum HeaderError {
        /// Fewer bytes than the header needs.
        Short,
        Bad(String),
    }

    /// The header at the start of `head`; `room` is how many bytes remain in the enclosing
    /// box or file from the box's start (what a size of 0 means).
    fn box_header(head: &[u8], room: u64) -> Result<BoxHeader, HeaderError> {
        let (Some(size), Some(kind)) = (be_u32(head, 0), array_at::<4>(head, 4)) else {
            return Err(HeaderError::Short);
        };
        // Named only for an error: a moov may hold millions of boxes.
        let bad = |what: String| HeaderError::Bad(format!("box {:?} {what}", box_name(kind)));
        let (header_len, total_len) = match size {
            0 => (HEADER, room),
            1 => {
                let large = be_u64(head, 8).ok_or(HeaderError::Short)?;
                if large < LARGE_HEADER {
                    return Err(bad(format!("has 64-bit size {large}")));
                }
                (LARGE_HEADER, large)
            }
            2..8 => return Err(bad(format!("has size {size}"))),
            _ => (HEADER, u64::from(size)),
        };
        if total_len < header_len {
            return Err(bad("is smaller than its header".into()));
        }
        Ok(BoxHeader {
            kind,
            header_len,
            total_len,
        })
    }

    fn bad(reason: impl Into<String>) -> TechnicalError {
        malformed(Format::QuickTime, reason)
    }

    fn box_name(kind: [u8; 4]) -> String {
        String::from_utf8_lossy(&kind).into_owned()
    }

    /// The child boxes of a payload in memory, as (type, payload). Fewer than 8 trailing
    /// bytes end the list: QuickTime allows a 4-byte zero terminator in some containers.
    struct Children<'a> {
        rest: &'a [u8],
    }

    fn children(payload: &[u8]) -> Children<'_> {
        Children { rest: payload }
    }

    impl<'a> Iterator for Children<'a> {
        type Item = Result<([u8; 4], &'a [u8]), TechnicalError>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.rest.len() < HEADER as usize {
                return None;
            }
            let room = self.rest.len() as u64;
            let header = match box_header(self.rest, room) {
                Ok(h) if h.total_len <= room => h,
                Ok(h) => {
                    self.rest = &[];
                    let name = box_name(h.kind);
                    return Some(Err(bad(format!("box {name:?} runs past its parent"))));
                }
                Err(HeaderError::Short) => {
                    self.rest = &[];
                    return Some(Err(bad("a box header runs past its parent")));
                }
                Err(HeaderError::Bad(reason)) => {
                    self.rest = &[];
                    return Some(Err(bad(reason)));
                }
            };
            // Both lengths are at most `room`, a slice length: the casts are lossless.
            let (whole, rest) = self.rest.split_at(header.total_len as usize);
            self.rest = rest;
            Some(Ok((header.kind, &whole[header.header_len as usize..])))
        }
    }

    /// The first child box of type `kind`.
    fn child<'a>(payload: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, TechnicalError> {
        for item in children(payload) {
            let (k, p) = item?;
            if &k == kind {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// The child at the end of `path`, each step the first of its type.
    fn descend<'a>(payload: &'a [u8], path: &[&[u8; 4]]) -> Result<Option<&'a [u8]>, TechnicalError> {
        let mut at = payload;
        for kind in path {
            match child(at, kind)? {
                Some(p) => at = p,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    struct TopLevel {
        brand: Option<[u8; 4]>,
        moov: Vec<u8>,
    }

    /// Walks the top-level boxes, reading 16 bytes of each, to the first `moov`, which it
    /// reads whole.
    fn find_moov(source: &dyn ByteSource, size: u64) -> Result<TopLevel, TechnicalError> {
        let truncated = |what| TechnicalError::Truncated {
            format: Format::QuickTime,
            what,
            size,
        };
        let mut brand = None;
        let mut offset = 0u64;
        for _ in 0..MAX_TOP_LEVEL_BOXES {
            if offset >= size {
                return Err(bad("no moov box"));
            }
            let room = size - offset;
            let head = read_exact_at(
                source,
                offset,
                room.min(BOX_HEADER_BYTES),
                Format::QuickTime,
                "a box header",
            )?;
            let header = match box_header(&head, room) {
                Ok(h) => h,
                Err(HeaderError::Short) => return Err(truncated("a box header")),
                Err(HeaderError::Bad(reason)) => return Err(bad(reason)),
            };
            if header.total_len > room {
                return Err(truncated("a top-level box"));
            }
            match &header.kind {
                b"ftyp" => brand = array_at(&head, header.header_len as usize),
                b"moov" => {
                    let payload_len = header.total_len - header.header_len;
                    if payload_len > MAX_MOOV_BYTES {
                        return Err(TechnicalError::TooLarge {
                            format: Format::QuickTime,
                            what: "the moov box",
                            limit: MAX_MOOV_BYTES,
                        });
                    }
                    let moov = read_exact_at(
                        source,
                        offset + header.header_len,
                        payload_len,
                        Format::QuickTime,
                        "the moov box",
                    )?;
                    return Ok(TopLevel { brand, moov });
                }
                _ => {}
            }
            offset += header.total_len;
        }
        Err(bad(format!(
            "no moov box among the first {MAX_TOP_LEVEL_BOXES} top-level boxes"
        )))
    }

    /// `mvhd` and `mdhd` share their start: version 0 has 32-bit times and duration, version
    /// 1 64-bit ones. Returns (timescale, duration), the duration `None` when unknown (all
    /// ones).
    fn time_header(payload: &[u8], name: &str) -> Result<(u32, Option<u64>), TechnicalError> {
        let short = || bad(format!("{name} too short"));
        let (timescale, duration) = match payload.first() {
            Some(0) => (
                be_u32(payload, 12).ok_or_else(short)?,
                be_u32(payload, 16).ok_or_else(short)?.into(),
            ),
            Some(1) => (
                be_u32(payload, 20).ok_or_else(short)?,
                be_u64(payload, 24).ok_or_else(short)?,
            ),
            Some(v) => return Err(bad(format!("{name} version {v}"))),
            None => return Err(short()),
        };
        let unknown = match payload[0] {
            0 => u64::from(u32::MAX),
            _ => u64::MAX,
        };
        Ok((timescale, (duration != unknown).then_some(duration)))
    }

    fn seconds(duration: Option<u64>, timescale: u32) -> Option<f64> {
        let d = duration? as f64 / f64::from(timescale);
        (timescale != 0 && d.is_finite()).then_some(d)
    }

    /// `tkhd`: the presentation width and height (16.16 fixed point) after the matrix.
    fn track_size(tkhd: &[u8]) -> Option<(u64, u64)> {
        let at = match tkhd.first()? {
            0 => 76,
            1 => 88,
            _ => return None,
        };
        Some((
            u64::from(be_u32(tkhd, at)? >> 16),
            u64::from(be_u32(tkhd, at + 4)? >> 16),
        ))
    }

    /// The first sample description.
    enum SampleEntry {
        Visual { width: u16, height: u16 },
        Sound { channels: u32, sample_rate: u32 },
        Timecode(TimecodeEntry),
        Other,
    }

    /// QuickTime's `tmcd` sample description.
    struct TimecodeEntry {
        flags: u32,
        timescale: u32,
        frame_duration: u32,
        frames: u8,
    }

    /// The sample entry's fields after its 8 bytes of reserved + data reference index.
    fn sample_entry(handler: [u8; 4], codec: [u8; 4], e: &[u8]) -> Result<SampleEntry, TechnicalError> {
        let short = || {
            bad(format!(
                "{} sample description too short",
                String::from_utf8_lossy(&codec)
            ))
        };
        Ok(match &handler {
            b"vide" => SampleEntry::Visual {
                width: be_u16(e, 24).ok_or_else(short)?,
                height: be_u16(e, 26).ok_or_else(short)?,
            },
            b"soun" => {
                let (mut channels, mut sample_rate, fields_end) = match be_u16(e, 8).ok_or_else(short)? {
                    // QuickTime sound description version 2: a 64-bit float rate, 32-bit
                    // channels, fields up to byte 64.
                    2 => (
                        be_u32(e, 40).ok_or_else(short)?,
                        array_at(e, 32)
                            .map(f64::from_be_bytes)
                            .filter(|r| r.is_finite() && *r >= 0.0 && *r <= f64::from(u32::MAX))
                            .map_or(0, |r| r.round() as u32),
                        64,
                    ),
                    // ISO and QuickTime versions 0 and 1: 16-bit channels, a 16.16 rate;
                    // version 1 adds four 32-bit packet sizes.
                    version => (
                        be_u16(e, 16).ok_or_else(short)?.into(),
                        be_u32(e, 24).ok_or_else(short)? >> 16,
                        if version == 1 { 44 } else { 28 },
                    ),
                };
                // MPEG-4 audio: ISO 14496-14 fixes the entry's channel count at 2, so the
                // decoder configuration in `esds` (or QuickTime's `wave/esds`) has the real one.
                if &codec == b"mp4a"
                    && let Some(config) = mpeg4_audio_config(e.get(fields_end..).unwrap_or_default())
                {
                    channels = config.channels.unwrap_or(channels);
                    if sample_rate == 0 {
                        sample_rate = config.sample_rate.unwrap_or(0);
                    }
                }
                SampleEntry::Sound {
                    channels,
                    sample_rate,
                }
            }
            b"tmcd" if &codec == b"tmcd" => SampleEntry::Timecode(TimecodeEntry {
                flags: be_u32(e, 12).ok_or_else(short)?,
                timescale: be_u32(e, 16).ok_or_else(short)?,
                frame_duration: be_u32(e, 20).ok_or_else(short)?,
                frames: *e.get(24).ok_or_else(short)?,
            }),
            _ => SampleEntry::Other,
        })
    }

    /// What an MPEG-4 AudioSpecificConfig says.
    struct AudioConfig {
        channels: Option<u32>,
        sample_rate: Option<u32>,
    }

    /// The AudioSpecificConfig of an `mp4a` entry's `esds` box (a child of the entry, or of
    /// its QuickTime `wave` box). `None` when there is none, or it is not the usual
    /// ES -> DecoderConfig -> DecoderSpecificInfo chain (ISO 14496-1 descriptors), or the
    /// entry's boxes do not parse: this refines the entry's fields and never fails the file.
    fn mpeg4_audio_config(entry_boxes: &[u8]) -> Option<AudioConfig> {
        let esds = match child(entry_boxes, b"esds").ok()? {
            Some(esds) => esds,
            None => descend(entry_boxes, &[b"wave", b"esds"]).ok()??,
        };
        decoder_specific_info(esds).map(audio_specific_config)
    }

    /// A descriptor's tag and length (ISO 14496-1: up to four 7-bit length bytes), advancing
    /// `at` past them.
    fn descriptor(bytes: &[u8], at: &mut usize, tag: u8) -> Option<usize> {
        if *bytes.get(*at)? != tag {
            return None;
        }
        *at += 1;
        let mut len = 0usize;
        for _ in 0..4 {
            let b = *bytes.get(*at)?;
            *at += 1;
            len = len << 7 | usize::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Some(len);
            }
        }
        // A fifth length byte is malformed.
        None
    }

    /// The DecoderSpecificInfo bytes inside an `esds` payload.
    fn decoder_specific_info(esds: &[u8]) -> Option<&[u8]> {
        const ES_TAG: u8 = 3;
        const DECODER_CONFIG_TAG: u8 = 4;
        const DECODER_SPECIFIC_TAG: u8 = 5;
        // Skip version and flags.
        let mut at = 4;
        descriptor(esds, &mut at, ES_TAG)?;
        // ES_ID, then flags saying which optional fields follow.
        let flags = *esds.get(at + 2)?;
        at += 3;
        if flags & 0x80 != 0 {
            at += 2; // dependsOn_ES_ID
        }
        if flags & 0x40 != 0 {
            at += 1 + usize::from(*esds.get(at)?); // URL
        }
        if flags & 0x20 != 0 {
            at += 2; // OCR_ES_Id
        }
        descriptor(esds, &mut at, DECODER_CONFIG_TAG)?;
        // Object type, stream type, buffer size, maximum and average bit rates.
        at += 13;
        let len = descriptor(esds, &mut at, DECODER_SPECIFIC_TAG)?;
        esds.get(at..at.checked_add(len)?)
    }

    /// ISO 14496-3 AudioSpecificConfig: object type (5 bits, 6 more when 31), sampling
    /// frequency index (4 bits; 15: a 24-bit rate follows), channel configuration (4 bits).
    fn audio_specific_config(asc: &[u8]) -> AudioConfig {
        const RATES: [u32; 13] = [
            96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
        ];
        let mut bits = Bits { bytes: asc, at: 0 };
        let mut read = || -> Option<(Option<u32>, Option<u32>)> {
            if bits.take(5)? == 31 {
                bits.take(6)?;
            }
            let rate = match bits.take(4)? {
                15 => Some(bits.take(24)?),
                index => RATES.get(index as usize).copied(),
            };
            // Configuration 0 is a program config element (not read); 7 is 7.1.
            let channels = match bits.take(4)? {
                c @ 1..=6 => Some(c),
                7 | 12 => Some(8),
                11 => Some(7),
                13 => Some(24),
                _ => None,
            };
            Some((channels, rate))
        };
        let (channels, sample_rate) = read().unwrap_or_default();
        AudioConfig {
            channels,
            sample_rate,
        }
    }

    /// A big-endian bit reader.
    struct Bits<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Bits<'_> {
        fn take(&mut self, n: usize) -> Option<u32> {
            let mut v = 0u32;
            for _ in 0..n {
                let byte = *self.bytes.get(self.at / 8)?;
                v = v << 1 | u32::from(byte >> (7 - self.at % 8) & 1);
                self.at += 1;
            }
            Some(v)
        }
    }

    /// `stts` (decoding time to sample): the sample count and the total duration.
    fn stts_totals(stts: &[u8]) -> Result<(u64, u128), TechnicalError> {
        const ENTRY: usize = 8;
        let count = be_u32(stts, 4).ok_or_else(|| bad("stts too short"))? as usize;
        let entries = &stts[8.min(stts.len())..];
        if entries.len() / ENTRY < count {
            return Err(bad(format!(
                "stts declares {count} entries and holds {}",
                entries.len() / ENTRY
            )));
        }
        let mut samples = 0u64;
        let mut duration = 0u128;
        for entry in entries.chunks_exact(ENTRY).take(count) {
            let (n, delta) = (be_u32(entry, 0).unwrap_or(0), be_u32(entry, 4).unwrap_or(0));
            samples += u64::from(n);
            duration += u128::from(n) * u128::from(delta);
        }
        Ok((samples, duration))
    }

    /// The file offset of the first chunk (`stco` 32-bit or `co64` 64-bit offsets).
    fn first_chunk(stbl: &[u8]) -> Result<Option<u64>, TechnicalError> {
        if let Some(stco) = child(stbl, b"stco")? {
            let count = be_u32(stco, 4).unwrap_or(0);
            return Ok((count > 0).then(|| be_u32(stco, 8).map(u64::from)).flatten());
        }
        if let Some(co64) = child(stbl, b"co64")? {
            let count = be_u32(co64, 4).unwrap_or(0);
            return Ok((count > 0).then(|| be_u64(co64, 8)).flatten());
        }
        Ok(None)
    }

    /// What the extractor keeps of one `trak`.
    struct TrackInfo {
        handler: Option<[u8; 4]>,
        codec: Option<[u8; 4]>,
        entry: Option<SampleEntry>,
        presentation_size: Option<(u64, u64)>,
        timescale: u32,
        duration: Option<u64>,
        frame_rate: Option<f64>,
        first_chunk: Option<u64>,
    }

    fn track(trak: &[u8]) -> Result<TrackInfo, TechnicalError> {
        let mut info = TrackInfo {
            handler: None,
            codec: None,
            entry: None,
            presentation_size: child(trak, b"tkhd")?.and_then(track_size),
            timescale: 0,
            duration: None,
            frame_rate: None,
            first_chunk: None,
        };
        let Some(mdia) = child(trak, b"mdia")? else {
            return Ok(info);
        };
        if let Some(mdhd) = child(mdia, b"mdhd")? {
            (info.timescale, info.duration) = time_header(mdhd, "mdhd")?;
        }
        // hdlr: version/flags, a QuickTime component type, then the handler type.
        info.handler = child(mdia, b"hdlr")?.and_then(|h| array_at(h, 8));
        let Some(stbl) = descend(mdia, &[b"minf", b"stbl"])? else {
            return Ok(info);
        };
        if let Some(stsd) = child(stbl, b"stsd")? {
            let count = be_u32(stsd, 4).ok_or_else(|| bad("stsd too short"))?;
            let first = if count == 0 {
                None
            } else {
                children(&stsd[8.min(stsd.len())..]).next().transpose()?
            };
            if let (Some((codec, entry)), Some(handler)) = (first, info.handler) {
                info.codec = Some(codec);
                info.entry = Some(sample_entry(handler, codec, entry)?);
            }
        }
        match info.handler.as_ref() {
            // The frame rate is samples per second: what stts needs, and nothing more.
            Some(b"vide") => {
                if let Some(stts) = child(stbl, b"stts")? {
                    let (samples, duration) = stts_totals(stts)?;
                    if samples > 0 && duration > 0 {
                        let rate = samples as f64 * f64::from(info.timescale) / duration as f64;
                        info.frame_rate = frame_rate(rate);
                    }
                }
            }
            Some(b"tmcd") => info.first_chunk = first_chunk(stbl)?,
            _ => {}
        }
        Ok(info)
    }

    impl TrackInfo {
        fn public(&self) -> Track {
            let (mut width, mut height, mut channels, mut sample_rate) = (None, None, None, None);
            match &self.entry {
                Some(SampleEntry::Visual { width: w, height: h }) if *w > 0 && *h > 0 => {
                    (width, height) = (Some(u64::from(*w)), Some(u64::from(*h)));
                }
                Some(SampleEntry::Sound {
                    channels: c,
                    sample_rate: r,
                }) => {
                    channels = (*c > 0).then_some(*c);
                    sample_rate = (*r > 0).then_some(*r);
                }
                _ => {}
            }
            // The track header's presentation size, when the sample description has none.
            if self.handler == Some(*b"vide")
                && width.is_none()
                && let Some((w, h)) = self.presentation_size.filter(|&(w, h)| w > 0 && h > 0)
            {
                (width, height) = (Some(w), Some(h));
            }
            Track {
                handler: self.handler.and_then(fourcc),
                codec: self.codec.and_then(fourcc),
                width,
                height,
                frame_rate: self.frame_rate,
                channels,
                sample_rate,
                duration_seconds: seconds(self.duration, self.timescale),
            }
        }
    }

    /// The start time code of a `tmcd` track: its first sample, a 4-byte frame number, at the
    /// first chunk's offset. Read as ffmpeg does: always as a frame number (the counter flag
    /// is not honoured), scaled from the entry's frame count to its rounded frame rate (a
    /// 60 fps track may say 30 frames). `None` when anything it needs is missing or out of
    /// the file.
    fn start_timecode(
        source: &dyn ByteSource,
        size: u64,
        track: &TrackInfo,
    ) -> Result<Option<String>, TechnicalError> {
        const DROP_FRAME: u32 = 0x1;
        const WRAP_24_HOURS: u32 = 0x2;
        let (Some(SampleEntry::Timecode(entry)), Some(offset)) = (&track.entry, track.first_chunk) else {
            return Ok(None);
        };
        if entry.timescale == 0 || entry.frame_duration == 0 || entry.frames == 0 {
            return Ok(None);
        }
        if offset
            .checked_add(TIMECODE_SAMPLE_BYTES)
            .is_none_or(|end| end > size)
        {
            return Ok(None);
        }
        let sample = read_exact_at(
            source,
            offset,
            TIMECODE_SAMPLE_BYTES,
            Format::QuickTime,
            "the time code sample",
        )?;
        let Some(frame_number) = be_u32(&sample, 0) else {
            return Ok(None);
        };
        let (scale, duration) = (u64::from(entry.timescale), u64::from(entry.frame_duration));
        let rate = (scale + duration / 2) / duration;
        let mut frames_per_second = u64::from(entry.frames);
        // Some writers round the frame count down (29 for 29.97): use the rounded rate.
        if frames_per_second == scale / duration {
            frames_per_second = rate;
        }
        if rate == 0 || frames_per_second == 0 || rate > MAX_TIMECODE_FPS {
            return Ok(None);
        }
        let frames = (u64::from(frame_number) * rate + frames_per_second / 2) / frames_per_second;
        Ok(frames_to_timecode(
            frames,
            rate,
            entry.flags & DROP_FRAME != 0,
            entry.flags & WRAP_24_HOURS != 0,
        ))
    }

    pub(super) fn parse(source: &dyn ByteSource, size: u64) -> Result<Technical, TechnicalError> {
        let top = find_moov(source, size)?;
        let mut movie_duration = None;
        let mut tracks = Vec::new();
        let mut track_count = 0u32;
        for item in children(&top.moov) {
            let (kind, payload) = item?;
            match &kind {
                b"mvhd" => {
                    let (timescale, duration) = time_header(payload, "mvhd")?;
                    movie_duration = seconds(duration, timescale);
                }
                b"trak" => {
                    track_count = track_count.saturating_add(1);
                    if tracks.len() < MAX_LISTED_TRACKS {
                        tracks.push(track(payload)?);
                    }
                }
                _ => {}
            }
        }
        let listed: Vec<Track> = tracks.iter().map(TrackInfo::public).collect();
        let first = |handler: &str| listed.iter().find(|tr| tr.handler.as_deref() == Some(handler));
        let mut t = Technical::empty(Format::QuickTime);
        t.brand = top.brand.and_then(fourcc);
        t.duration_seconds = movie_duration;
        t.track_count = Some(track_count);
        if let Some(video) = first("vide") {
            (t.width, t.height) = (video.width, video.height);
            t.codec = video.codec.clone();
            t.frame_rate = video.frame_rate;
        }
        t.audio = first("soun").map(|a| Audio {
            codec: a.codec.clone(),
            channels: a.channels,
            sample_rate: a.sample_rate,
        });
        if let Some(tmcd) = tracks.iter().find(|tr| tr.handler == Some(*b"tmcd")) {
            t.timecode = start_timecode(source, size, tmcd)?;
        }
        t.tracks = listed;
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------------
// Sequences

/// The fields a sequence summary carries when every frame with a document agrees, and names
/// under `mixed` when they do not.
pub const SUMMARIZED_FIELDS: [&str; 8] = [
    "format",
    "width",
    "height",
    "channels",
    "pixelType",
    "bitDepth",
    "compression",
    "frameRate",
];

/// The document of a frame sequence from its frames' (frame number, header): see
/// [`summarize_frame_documents`], every frame having a document.
pub fn summarize_sequence(frames: &[(u64, Technical)]) -> Value {
    let documents: Vec<(u64, Option<Value>)> = frames.iter().map(|(n, t)| (*n, Some(t.document()))).collect();
    summarize_frame_documents(&documents)
}

/// The document of a frame sequence from its frames' (frame number, file document):
/// `{"kind": "sequence", "firstFrame", "lastFrame", "frameCount", "missingFrames": [[a, b],
/// ...], "missingFrameCount", "missingRangeCount", ...}` plus each of [`SUMMARIZED_FIELDS`]
/// that every frame's document has with one value; a field that differs between documents,
/// or that some lack, is named in `"mixed"` instead.
///
/// A frame without a document (`None`: its header could not be read) is present by its
/// number but contributes no fields: the fields are those its documented siblings agree on,
/// and with no documents at all there are none. Frame numbers may come in any order; a
/// repeated number counts once. Missing ranges are inclusive, in order, the first
/// [`MAX_LISTED_MISSING_RANGES`] listed. With no frames, only the counts (0) are there.
pub fn summarize_frame_documents(frames: &[(u64, Option<Value>)]) -> Value {
    let mut numbers: Vec<u64> = frames.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut doc = Map::new();
    doc.insert("kind".into(), json!("sequence"));
    if let (Some(first), Some(last)) = (numbers.first(), numbers.last()) {
        doc.insert("firstFrame".into(), json!(first));
        doc.insert("lastFrame".into(), json!(last));
    }
    doc.insert("frameCount".into(), json!(numbers.len()));
    let mut listed = Vec::new();
    let (mut missing, mut ranges) = (0u64, 0u64);
    for pair in numbers.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b - a > 1 {
            // Gaps sum to at most last - first: no overflow.
            missing += b - a - 1;
            ranges += 1;
            if listed.len() < MAX_LISTED_MISSING_RANGES {
                listed.push(json!([a + 1, b - 1]));
            }
        }
    }
    doc.insert("missingFrames".into(), Value::Array(listed));
    doc.insert("missingFrameCount".into(), json!(missing));
    doc.insert("missingRangeCount".into(), json!(ranges));

    let documents: Vec<&Value> = frames.iter().filter_map(|(_, d)| d.as_ref()).collect();
    let mut mixed = Vec::new();
    for field in SUMMARIZED_FIELDS {
        let mut values = documents.iter().map(|d| d.get(field));
        let Some(first) = values.next() else { break };
        if values.all(|v| v == first) {
            if let Some(value) = first {
                doc.insert(field.into(), value.clone());
            }
        } else {
            mixed.push(json!(field));
        }
    }
    if !mixed.is_empty() {
        doc.insert("mixed".into(), Value::Array(mixed));
    }
    Value::Object(doc)
}

// ---------------------------------------------------------------------------------------------
// The DataStore

/// `HH:MM:SS:FF`, or `HH:MM:SS;FF` for drop-frame; frames have three digits above 99 fps.
const TIMECODE_PATTERN: &str = "^[0-9]{2}:[0-5][0-9]:[0-5][0-9][:;][0-9]{2,3}$";

/// The built-in DataStore of technical metadata: `studiodrive/technical`, analysis type
/// `technical`, version 2. Its schema accepts exactly the documents of [`Technical::document`]
/// (`kind: file`) and [`summarize_frame_documents`] (`kind: sequence`), each closed to other
/// fields. Media ids are [`file_media_id_schema`]'s for files and
/// [`sequence_media_id_schema`]'s for sequences. No timeline, no access granted (the built-in
/// writer needs none).
///
/// Version 1 had file media ids only; its stores are widened in place
/// ([`crate::meta::PgMetaStore::widen_media_id_schema`]), which keeps every stored id valid.
pub fn technical_datastore() -> DataStoreSpec {
    DataStoreSpec {
        name: "studiodrive/technical".into(),
        analysis_type: "technical".into(),
        version: 2,
        schema: technical_schema(),
        media_id_schema: json!({"anyOf": [file_media_id_schema(), sequence_media_id_schema()]}),
        queryable: [
            "kind",
            "format",
            "width",
            "height",
            "channels",
            "frameRate",
            "compression",
            "codec",
            "firstFrame",
            "lastFrame",
            "missingFrameCount",
        ]
        .map(String::from)
        .to_vec(),
        timeline: Vec::new(),
        access: DataStoreAccess::default(),
    }
}

/// The media ids of file documents, `{"workspace": <name>, "node": <node id>}`: version 1's
/// whole media id schema.
pub fn file_media_id_schema() -> Value {
    json!({
        "type": "object",
        "required": ["workspace", "node"],
        "properties": {
            "workspace": {"type": "string"},
            "node": {"type": "integer", "minimum": 1}
        },
        "additionalProperties": false
    })
}

/// The media ids of sequence summaries: `{"workspace": <name>, "folder": <node id>,
/// "sequence": <pattern>}`, the pattern as `SequenceKey` prints it (`sh010.%04d.exr`).
pub fn sequence_media_id_schema() -> Value {
    json!({
        "type": "object",
        "required": ["workspace", "folder", "sequence"],
        "properties": {
            "workspace": {"type": "string"},
            "folder": {"type": "integer", "minimum": 1},
            "sequence": {"type": "string", "minLength": 1}
        },
        "additionalProperties": false
    })
}

/// The media id of file `node`'s document.
pub fn file_media_id(workspace: &str, node: NodeId) -> Value {
    json!({"workspace": workspace, "node": node.0})
}

/// The media id of the summary of sequence `key` in `folder`.
pub fn sequence_media_id(workspace: &str, folder: NodeId, key: &SequenceKey) -> Value {
    json!({"workspace": workspace, "folder": folder.0, "sequence": key.to_string()})
}

fn technical_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 0});
    let rate = json!({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_FRAME_RATE});
    let positive = json!({"type": "number", "exclusiveMinimum": 0});
    let fourcc = json!({"type": "string", "pattern": "^[ -~]{4}$"});
    let format = json!({"enum": ["openexr", "dpx", "quicktime"]});
    let pixel_type = json!({"enum": ["uint", "half", "float", "double", "mixed"]});
    let compression = json!({"type": "string", "maxLength": 16});
    let window = json!({"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4});
    let channel_name = json!({"type": "string", "maxLength": 255});
    let audio = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {"codec": fourcc, "channels": count, "sampleRate": count}
    });
    let track = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "handler": fourcc, "codec": fourcc, "width": count, "height": count,
            "frameRate": rate, "channels": count, "sampleRate": count,
            "durationSeconds": {"type": "number", "minimum": 0}
        }
    });
    let exr = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["tiled", "deep", "multiPart", "dataWindow", "channels"],
        "properties": {
            "tiled": {"type": "boolean"},
            "deep": {"type": "boolean"},
            "multiPart": {"type": "boolean"},
            "tileWidth": count,
            "tileHeight": count,
            "dataWindow": window,
            "displayWindow": window,
            "channels": {"type": "array", "maxItems": MAX_LISTED_CHANNELS, "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "pixelType"],
                "properties": {
                    "name": channel_name,
                    "pixelType": pixel_type,
                    "xSampling": {"type": "integer"},
                    "ySampling": {"type": "integer"}
                }
            }}
        }
    });
    let dpx = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["byteOrder", "imageElements"],
        "properties": {
            "byteOrder": {"enum": ["big", "little"]},
            "version": {"type": "string", "maxLength": 8},
            "imageElements": {"type": "integer", "minimum": 1, "maximum": 8},
            "descriptor": count, "transfer": count, "colorimetric": count,
            "packing": count, "encoding": count
        }
    });
    let file = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["kind", "format"],
        "properties": {
            "kind": {"const": "file"},
            "format": format,
            "width": count, "height": count, "channels": count,
            "channelNames": {"type": "array", "maxItems": MAX_LISTED_CHANNELS, "items": channel_name},
            "pixelType": pixel_type,
            "bitDepth": count,
            "compression": compression,
            "frameRate": rate,
            "timecode": {"type": "string", "pattern": TIMECODE_PATTERN},
            "pixelAspectRatio": positive,
            "durationSeconds": {"type": "number", "minimum": 0},
            "codec": fourcc,
            "brand": fourcc,
            "audio": audio,
            "trackCount": count,
            "tracks": {"type": "array", "maxItems": MAX_LISTED_TRACKS, "items": track},
            "exr": exr,
            "dpx": dpx
        }
    });
    let sequence = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["kind", "frameCount", "missingFrames", "missingFrameCount", "missingRangeCount"],
        "properties": {
            "kind": {"const": "sequence"},
            "firstFrame": count, "lastFrame": count, "frameCount": count,
            "missingFrames": {"type": "array", "maxItems": MAX_LISTED_MISSING_RANGES, "items": {
                "type": "array", "items": count, "minItems": 2, "maxItems": 2
            }},
            "missingFrameCount": count,
            "missingRangeCount": count,
            "format": format,
            "width": count, "height": count, "channels": count,
            "pixelType": pixel_type,
            "bitDepth": count,
            "compression": compression,
            "frameRate": rate,
            "mixed": {"type": "array", "uniqueItems": true, "items": {"enum": SUMMARIZED_FIELDS}}
        }
    });
    json!({
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": ["file", "sequence"]}},
        "if": {"properties": {"kind": {"const": "file"}}},
        "then": file,
        "else": sequence
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::media::CompiledDataStore;

    // --- sources ------------------------------------------------------------------------------

    /// Counts what the extractor reads, and refuses (by panicking in the test) any single
    /// request larger than the largest bound: an untrusted length reached `read_at`.
    struct Counting<S> {
        inner: S,
        bytes: Cell<u64>,
    }

    impl<S: ByteSource> Counting<S> {
        fn new(inner: S) -> Self {
            Counting {
                inner,
                bytes: Cell::new(0),
            }
        }
    }

    impl<S: ByteSource> ByteSource for Counting<S> {
        fn size(&self) -> u64 {
            self.inner.size()
        }

        fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            assert!(len as u64 <= MAX_MOOV_BYTES, "a read of {len} bytes at {offset}");
            let bytes = self.inner.read_at(offset, len)?;
            self.bytes.set(self.bytes.get() + bytes.len() as u64);
            Ok(bytes)
        }
    }

    /// A file of `size` bytes of which only `prefix` is written (the rest reads as zeros):
    /// hostile sizes without the memory.
    struct Sparse {
        prefix: Vec<u8>,
        size: u64,
    }

    impl ByteSource for Sparse {
        fn size(&self) -> u64 {
            self.size
        }

        fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            let n = self.size.saturating_sub(offset).min(len as u64) as usize;
            let mut out = vec![0; n];
            if let Ok(start) = usize::try_from(offset)
                && start < self.prefix.len()
            {
                let end = self.prefix.len().min(start + n);
                out[..end - start].copy_from_slice(&self.prefix[start..end]);
            }
            Ok(out)
        }
    }

    fn datastore() -> &'static CompiledDataStore {
        static STORE: OnceLock<CompiledDataStore> = OnceLock::new();
        STORE.get_or_init(|| CompiledDataStore::compile(technical_datastore()).unwrap())
    }

    /// Every document a test produces goes through here: it must pass the DataStore's schema.
    fn checked(doc: Value) -> Value {
        if let Err(e) = datastore().check_document(&doc) {
            panic!("{e}\n{doc:#}");
        }
        doc
    }

    fn extract_ok(bytes: &[u8]) -> Technical {
        let t = extract(&bytes).unwrap().expect("a recognised format");
        checked(t.document());
        t
    }

    fn extract_err(bytes: &[u8]) -> TechnicalError {
        match extract(&bytes) {
            Err(e) => e,
            Ok(t) => panic!("expected an error, got {t:?}"),
        }
    }

    // --- OpenEXR fixtures ---------------------------------------------------------------------

    type Attribute = (&'static str, &'static str, Vec<u8>);

    fn exr_file(flags: u32, parts: &[Vec<Attribute>]) -> Vec<u8> {
        let mut b = EXR_MAGIC.to_vec();
        b.extend((2u32 | flags).to_le_bytes());
        for part in parts {
            for (name, kind, value) in part {
                b.extend(name.as_bytes());
                b.push(0);
                b.extend(kind.as_bytes());
                b.push(0);
                b.extend((value.len() as u32).to_le_bytes());
                b.extend(value);
            }
            b.push(0);
        }
        if parts.len() > 1 {
            // A multi-part file ends its list of headers with an empty header.
            b.push(0);
        }
        // An offset table entry, as if pixels followed.
        b.extend([0x40, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    fn chlist(channels: &[(&str, i32)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, pixel_type) in channels {
            b.extend(name.as_bytes());
            b.push(0);
            b.extend(pixel_type.to_le_bytes());
            b.extend([0, 0, 0, 0]); // pLinear, reserved
            b.extend(1i32.to_le_bytes());
            b.extend(1i32.to_le_bytes());
        }
        b.push(0);
        b
    }

    fn box2i(window: [i32; 4]) -> Vec<u8> {
        window.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn rational(num: i32, den: u32) -> Vec<u8> {
        [num.to_le_bytes(), den.to_le_bytes()].concat()
    }

    fn timecode_attribute(packed: u32) -> Vec<u8> {
        [packed.to_le_bytes(), 0u32.to_le_bytes()].concat()
    }

    const HALF: i32 = 1;
    const FLOAT: i32 = 2;
    const ZIP: u8 = 3;
    const PIZ: u8 = 4;

    fn exr_image(width: i32, height: i32, channels: &[(&str, i32)], compression: u8) -> Vec<Attribute> {
        vec![
            ("channels", "chlist", chlist(channels)),
            ("compression", "compression", vec![compression]),
            ("dataWindow", "box2i", box2i([0, 0, width - 1, height - 1])),
            ("displayWindow", "box2i", box2i([0, 0, width - 1, height - 1])),
            ("lineOrder", "lineOrder", vec![0]),
            ("pixelAspectRatio", "float", 1.0f32.to_le_bytes().to_vec()),
            ("screenWindowWidth", "float", 1.0f32.to_le_bytes().to_vec()),
        ]
    }

    fn rgba_half() -> [(&'static str, i32); 4] {
        [("A", HALF), ("B", HALF), ("G", HALF), ("R", HALF)]
    }

    fn exr_with_rate_and_timecode() -> Vec<u8> {
        let mut attributes = exr_image(1920, 1080, &rgba_half(), ZIP);
        attributes.push(("framesPerSecond", "rational", rational(24000, 1001)));
        attributes.push(("timeCode", "timecode", timecode_attribute(0x0102_0304)));
        exr_file(0, &[attributes])
    }

    fn exr_multi_part() -> Vec<u8> {
        let mut first = exr_image(64, 32, &[("Y", FLOAT)], PIZ);
        first.push(("name", "string", b"left".to_vec()));
        first.push(("type", "string", b"tiledimage".to_vec()));
        first.push((
            "tiles",
            "tiledesc",
            [32u32.to_le_bytes(), 16u32.to_le_bytes()]
                .concat()
                .into_iter()
                .chain([0])
                .collect(),
        ));
        let mut second = exr_image(8, 8, &rgba_half(), ZIP);
        second.push(("name", "string", b"right".to_vec()));
        second.push(("type", "string", b"scanlineimage".to_vec()));
        exr_file(0x1000, &[first, second])
    }

    #[test]
    fn exr_header_gives_size_channels_compression_rate_and_timecode() {
        let t = extract_ok(&exr_with_rate_and_timecode());
        let doc = t.document();
        assert_eq!(doc["kind"], "file");
        assert_eq!(doc["format"], "openexr");
        assert_eq!(
            (doc["width"].as_u64(), doc["height"].as_u64()),
            (Some(1920), Some(1080))
        );
        assert_eq!(doc["channels"], 4);
        assert_eq!(doc["channelNames"], json!(["A", "B", "G", "R"]));
        assert_eq!(doc["pixelType"], "half");
        assert_eq!(doc["bitDepth"], 16);
        assert_eq!(doc["compression"], "zip");
        assert!((t.frame_rate.unwrap() - 23.976).abs() < 1e-3);
        assert_eq!(doc["timecode"], "01:02:03:04");
        assert_eq!(doc["pixelAspectRatio"], 1.0);
        assert_eq!(doc["exr"]["tiled"], false);
        assert_eq!(doc["exr"]["multiPart"], false);
        assert_eq!(doc["exr"]["displayWindow"], json!([0, 0, 1919, 1079]));
    }

    #[test]
    fn exr_without_rate_or_timecode_leaves_them_out() {
        let doc = extract_ok(&exr_file(
            0,
            &[exr_image(
                2048,
                858,
                &[("B", FLOAT), ("G", FLOAT), ("R", FLOAT)],
                PIZ,
            )],
        ))
        .document();
        assert_eq!(doc["compression"], "piz");
        assert_eq!(doc["pixelType"], "float");
        assert_eq!(doc["bitDepth"], 32);
        for absent in ["frameRate", "timecode", "codec", "audio", "tracks", "dpx"] {
            assert!(doc.get(absent).is_none(), "{absent} in {doc}");
        }
        assert!(!doc.to_string().contains("null"));
    }

    #[test]
    fn exr_multi_part_files_are_described_by_their_first_part() {
        let doc = extract_ok(&exr_multi_part()).document();
        assert_eq!(
            (doc["width"].as_u64(), doc["height"].as_u64()),
            (Some(64), Some(32))
        );
        assert_eq!(doc["channelNames"], json!(["Y"]));
        assert_eq!(doc["compression"], "piz");
        assert_eq!(doc["exr"]["multiPart"], true);
        assert_eq!(doc["exr"]["tiled"], true);
        assert_eq!(
            (
                doc["exr"]["tileWidth"].as_u64(),
                doc["exr"]["tileHeight"].as_u64()
            ),
            (Some(32), Some(16))
        );
    }

    #[test]
    fn exr_mixed_channel_types_and_a_negative_origin() {
        let mut attributes = exr_image(1, 1, &[("R", HALF), ("Z", FLOAT)], 0);
        attributes[2] = ("dataWindow", "box2i", box2i([-10, -5, 9, 4]));
        attributes.push(("timeCode", "timecode", timecode_attribute(0x2359_5929 | 1 << 6)));
        let doc = extract_ok(&exr_file(0x200, &[attributes])).document();
        assert_eq!(
            (doc["width"].as_u64(), doc["height"].as_u64()),
            (Some(20), Some(10))
        );
        assert_eq!(doc["pixelType"], "mixed");
        assert!(doc.get("bitDepth").is_none());
        assert_eq!(doc["compression"], "none");
        assert_eq!(
            doc["exr"]["channels"][1],
            json!({"name": "Z", "pixelType": "float"})
        );
        assert_eq!(doc["exr"]["tiled"], true, "the single-part tiled flag");
        assert_eq!(doc["timecode"], "23:59:59;29", "drop-frame");
    }

    #[test]
    fn malformed_exr_headers_are_errors() {
        let good = exr_with_rate_and_timecode();
        let header_end = good.len() - 9;
        // The file ends inside an attribute, inside a name, inside the version.
        for cut in [header_end - 3, 20, 6] {
            let e = extract_err(&good[..cut]);
            assert!(
                matches!(
                    e,
                    TechnicalError::Truncated {
                        format: Format::OpenExr,
                        ..
                    }
                ),
                "{cut}: {e}"
            );
        }
        // An attribute whose size runs past the file.
        let mut b = exr_file(0, &[vec![("comments", "string", b"hello".to_vec())]]);
        b[8 + 9 + 7..8 + 9 + 7 + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(matches!(extract_err(&b), TechnicalError::Truncated { .. }));
        // A negative size.
        b[8 + 9 + 7..8 + 9 + 7 + 4].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(extract_err(&b).to_string().contains("negative size"));
        // A name of 300 bytes.
        let mut long = EXR_MAGIC.to_vec();
        long.extend(2u32.to_le_bytes());
        long.extend([b'a'; 300]);
        assert!(extract_err(&long).to_string().contains("longer than 255"));
        // Required attributes missing, an inverted window, a wrong value size, version 1.
        let mut no_window = exr_image(4, 4, &rgba_half(), ZIP);
        no_window.remove(2);
        assert!(
            extract_err(&exr_file(0, &[no_window]))
                .to_string()
                .contains("dataWindow")
        );
        let mut inverted = exr_image(4, 4, &rgba_half(), ZIP);
        inverted[2].2 = box2i([5, 0, 4, 3]);
        assert!(
            extract_err(&exr_file(0, &[inverted]))
                .to_string()
                .contains("max below min")
        );
        let mut wrong = exr_image(4, 4, &rgba_half(), ZIP);
        wrong[1].2 = vec![3, 3];
        assert!(
            extract_err(&exr_file(0, &[wrong]))
                .to_string()
                .contains("compression")
        );
        let mut bad_type = exr_image(4, 4, &[("R", 7)], ZIP);
        bad_type.truncate(3);
        assert!(
            extract_err(&exr_file(0, &[bad_type]))
                .to_string()
                .contains("pixel type 7")
        );
        let mut v1 = good.clone();
        v1[4] = 1;
        assert!(extract_err(&v1).to_string().contains("version 1"));
    }

    #[test]
    fn an_exr_header_that_does_not_end_within_1_mib_is_too_large() {
        // A 2 MiB attribute value: the header cannot end within the bound.
        let mut prefix = EXR_MAGIC.to_vec();
        prefix.extend(2u32.to_le_bytes());
        prefix.extend(b"comments\0string\0");
        prefix.extend((2u32 << 20).to_le_bytes());
        let source = Counting::new(Sparse {
            prefix,
            size: 3 << 20,
        });
        let e = extract(&source).unwrap_err();
        assert!(
            matches!(
                e,
                TechnicalError::TooLarge {
                    limit: MAX_EXR_HEADER_BYTES,
                    ..
                }
            ),
            "{e}"
        );
        assert!(source.bytes.get() <= DETECT_BYTES + MAX_EXR_HEADER_BYTES);
    }

    // --- DPX fixtures -------------------------------------------------------------------------

    struct Dpx {
        order: ByteOrder,
        width: u32,
        height: u32,
        descriptor: u8,
        bits: u8,
        data_offset: u32,
        film_rate: u32,
        tv_rate: u32,
        timecode: u32,
    }

    const UNSET: u32 = 0xffff_ffff;
    const NAN: u32 = 0x7fc0_0000;

    impl Dpx {
        fn rgb10(order: ByteOrder) -> Dpx {
            Dpx {
                order,
                width: 2048,
                height: 858,
                descriptor: 50,
                bits: 10,
                data_offset: 2048,
                film_rate: 24f32.to_bits(),
                tv_rate: NAN,
                timecode: 0x1020_3012,
            }
        }

        fn bytes(&self) -> Vec<u8> {
            // Unset fields are all ones.
            let mut b = vec![0xff; 2048];
            let u32_at = |b: &mut Vec<u8>, at: usize, v: u32| {
                let bytes = match self.order {
                    ByteOrder::Big => v.to_be_bytes(),
                    ByteOrder::Little => v.to_le_bytes(),
                };
                b[at..at + 4].copy_from_slice(&bytes);
            };
            let u16_at = |b: &mut Vec<u8>, at: usize, v: u16| {
                let bytes = match self.order {
                    ByteOrder::Big => v.to_be_bytes(),
                    ByteOrder::Little => v.to_le_bytes(),
                };
                b[at..at + 2].copy_from_slice(&bytes);
            };
            b[..4].copy_from_slice(match self.order {
                ByteOrder::Big => DPX_MAGIC_BIG,
                ByteOrder::Little => DPX_MAGIC_LITTLE,
            });
            u32_at(&mut b, 4, self.data_offset);
            b[8..16].copy_from_slice(b"V2.0\0\0\0\0");
            u16_at(&mut b, 768, 0); // orientation
            u16_at(&mut b, 770, 1); // elements
            u32_at(&mut b, 772, self.width);
            u32_at(&mut b, 776, self.height);
            u32_at(&mut b, 780, 0); // data sign
            b[800] = self.descriptor;
            b[801] = 2; // transfer: linear
            b[802] = 4; // colorimetric: ITU-R 709-4
            b[803] = self.bits;
            u16_at(&mut b, 804, 1); // filled, method A
            u16_at(&mut b, 806, 0); // no encoding
            u32_at(&mut b, 808, self.data_offset);
            u32_at(&mut b, 1628, 1); // pixel aspect ratio 1:1
            u32_at(&mut b, 1632, 1);
            u32_at(&mut b, 1724, self.film_rate);
            u32_at(&mut b, 1920, self.timecode);
            u32_at(&mut b, 1940, self.tv_rate);
            b.extend(vec![0; 64]); // some pixels
            b
        }
    }

    #[test]
    fn dpx_headers_read_the_same_in_both_byte_orders() {
        let big = extract_ok(&Dpx::rgb10(ByteOrder::Big).bytes()).document();
        let little = extract_ok(&Dpx::rgb10(ByteOrder::Little).bytes()).document();
        assert_eq!(big["dpx"]["byteOrder"], "big");
        assert_eq!(little["dpx"]["byteOrder"], "little");
        let without_order = |mut d: Value| {
            d["dpx"].as_object_mut().unwrap().remove("byteOrder");
            d
        };
        assert_eq!(without_order(big.clone()), without_order(little));
        assert_eq!(big["format"], "dpx");
        assert_eq!(
            (big["width"].as_u64(), big["height"].as_u64()),
            (Some(2048), Some(858))
        );
        assert_eq!(big["channels"], 3);
        assert_eq!(big["channelNames"], json!(["R", "G", "B"]));
        assert_eq!(big["bitDepth"], 10);
        assert_eq!(big["pixelType"], "uint");
        assert_eq!(big["compression"], "none");
        assert_eq!(big["frameRate"], 24.0);
        assert_eq!(big["timecode"], "10:20:30:12");
        assert_eq!(big["pixelAspectRatio"], 1.0);
        assert_eq!(
            big["dpx"],
            json!({"byteOrder": "big", "version": "V2.0", "imageElements": 1, "descriptor": 50,
                   "transfer": 2, "colorimetric": 4, "packing": 1, "encoding": 0})
        );
    }

    #[test]
    fn dpx_unset_rates_and_timecodes_are_left_out() {
        let mut dpx = Dpx::rgb10(ByteOrder::Big);
        dpx.film_rate = UNSET;
        dpx.timecode = UNSET;
        let doc = extract_ok(&dpx.bytes()).document();
        assert!(
            doc.get("frameRate").is_none() && doc.get("timecode").is_none(),
            "{doc}"
        );
        // The television header's rate when the film header has none (0 is unset too).
        dpx.film_rate = 0;
        dpx.tv_rate = 25f32.to_bits();
        assert_eq!(extract_ok(&dpx.bytes()).frame_rate, Some(25.0));
        // Garbage: infinite, negative, absurdly large.
        for bits in [f32::INFINITY.to_bits(), (-24f32).to_bits(), 1e30f32.to_bits()] {
            dpx.film_rate = bits;
            dpx.tv_rate = bits;
            assert_eq!(extract_ok(&dpx.bytes()).frame_rate, None);
        }
    }

    #[test]
    fn dpx_industry_headers_are_not_read_where_the_image_data_starts() {
        let mut dpx = Dpx::rgb10(ByteOrder::Little);
        dpx.data_offset = 1664;
        let doc = extract_ok(&dpx.bytes()).document();
        assert!(
            doc.get("frameRate").is_none() && doc.get("timecode").is_none(),
            "{doc}"
        );
        assert_eq!(
            doc["pixelAspectRatio"], 1.0,
            "the orientation header ends at 1664"
        );
        // A file of only the generic and image headers.
        let short = &Dpx::rgb10(ByteOrder::Big).bytes()[..1408];
        assert_eq!(extract_ok(short).width, Some(2048));
    }

    #[test]
    fn dpx_descriptors_give_channels() {
        for (descriptor, bits, names, pixel_type) in [
            (51, 16, Some(vec!["R", "G", "B", "A"]), Some(PixelType::Uint)),
            (6, 10, Some(vec!["Y"]), Some(PixelType::Uint)),
            (50, 32, Some(vec!["R", "G", "B"]), Some(PixelType::Float)),
            (100, 10, None, Some(PixelType::Uint)),
            (153, 8, Some(vec![]), Some(PixelType::Uint)),
            (0, 0, None, None),
        ] {
            let mut dpx = Dpx::rgb10(ByteOrder::Big);
            (dpx.descriptor, dpx.bits) = (descriptor, bits);
            let t = extract_ok(&dpx.bytes());
            assert_eq!(t.channel_names, names.clone().unwrap_or_default(), "{descriptor}");
            let expected_count = if descriptor == 153 {
                Some(5)
            } else {
                names.map(|n| n.len() as u32)
            };
            assert_eq!(t.channels, expected_count, "{descriptor}");
            assert_eq!(t.pixel_type, pixel_type, "{descriptor}");
        }
    }

    #[test]
    fn malformed_dpx_headers_are_errors() {
        let good = Dpx::rgb10(ByteOrder::Big).bytes();
        assert!(matches!(
            extract_err(&good[..1407]),
            TechnicalError::Truncated {
                format: Format::Dpx,
                ..
            }
        ));
        assert!(matches!(
            extract_err(&good[..4]),
            TechnicalError::Truncated { .. }
        ));
        for elements in [0u16, 9, 0xffff] {
            let mut b = good.clone();
            b[770..772].copy_from_slice(&elements.to_be_bytes());
            assert!(
                extract_err(&b).to_string().contains("image elements"),
                "{elements}"
            );
        }
        let mut dpx = Dpx::rgb10(ByteOrder::Little);
        dpx.width = UNSET;
        assert!(extract_err(&dpx.bytes()).to_string().contains("no image size"));
        dpx.width = 16;
        dpx.height = 0;
        assert!(extract_err(&dpx.bytes()).to_string().contains("no image size"));
    }

    // --- QuickTime fixtures -------------------------------------------------------------------

    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend(kind);
        b.extend(payload);
        b
    }

    fn full(kind: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![version, 0, 0, 0];
        p.extend(body);
        bx(kind, &p)
    }

    /// mvhd and mdhd: times, timescale and duration in version 0 or 1, then padding.
    fn time_header(kind: &[u8; 4], version: u8, timescale: u32, duration: u64, tail: usize) -> Vec<u8> {
        let mut p = Vec::new();
        if version == 0 {
            p.extend([0u8; 8]);
            p.extend(timescale.to_be_bytes());
            p.extend((duration as u32).to_be_bytes());
        } else {
            p.extend([0u8; 16]);
            p.extend(timescale.to_be_bytes());
            p.extend(duration.to_be_bytes());
        }
        p.extend(vec![0; tail]);
        full(kind, version, &p)
    }

    fn tkhd(version: u8, width: u32, height: u32) -> Vec<u8> {
        let mut p = vec![0u8; if version == 0 { 20 } else { 32 }];
        p.extend([0u8; 16]); // reserved, layer, group, volume, reserved
        p.extend([0u8; 36]); // matrix
        p.extend((width << 16).to_be_bytes());
        p.extend((height << 16).to_be_bytes());
        full(b"tkhd", version, &p)
    }

    fn hdlr(handler: &[u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 4];
        p.extend(handler);
        p.extend([0u8; 13]);
        full(b"hdlr", 0, &p)
    }

    fn visual_entry(codec: &[u8; 4], width: u16, height: u16) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0, 0, 0, 0, 1];
        p.extend([0u8; 16]);
        p.extend(width.to_be_bytes());
        p.extend(height.to_be_bytes());
        p.extend(0x0048_0000u32.to_be_bytes());
        p.extend(0x0048_0000u32.to_be_bytes());
        p.extend([0, 0, 0, 0, 0, 1]);
        p.extend([0u8; 32]);
        p.extend([0, 0x18, 0xff, 0xff]);
        bx(codec, &p)
    }

    fn sound_entry(codec: &[u8; 4], channels: u16, rate: u32) -> Vec<u8> {
        sound_entry_with(0, codec, channels, rate, &[])
    }

    /// A sound description of version 0 or 1 (four more 32-bit fields), then child boxes.
    fn sound_entry_with(version: u16, codec: &[u8; 4], channels: u16, rate: u32, boxes: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0, 0, 0, 0, 1];
        p.extend(version.to_be_bytes());
        p.extend([0u8; 6]); // revision, vendor
        p.extend(channels.to_be_bytes());
        p.extend(16u16.to_be_bytes());
        p.extend([0u8; 4]);
        p.extend((rate << 16).to_be_bytes());
        if version == 1 {
            p.extend([0u8; 16]);
        }
        p.extend(boxes);
        bx(codec, &p)
    }

    /// An AudioSpecificConfig: object type, frequency index (15: explicit rate), channels.
    fn asc(object_type: u32, index: u32, rate: u32, channels: u32) -> Vec<u8> {
        // Object types from 32 are 31, then six more bits.
        let mut fields = match object_type {
            0..31 => vec![(object_type, 5)],
            _ => vec![(31, 5), (object_type - 32, 6)],
        };
        fields.push((index, 4));
        if index == 15 {
            fields.push((rate, 24));
        }
        fields.push((channels, 4));
        let mut bits: Vec<bool> = fields
            .iter()
            .flat_map(|&(v, n)| (0..n).rev().map(move |i| v >> i & 1 == 1))
            .collect();
        bits.resize(bits.len().div_ceil(8) * 8, false);
        bits.chunks(8)
            .map(|c| c.iter().fold(0u8, |b, &bit| b << 1 | u8::from(bit)))
            .collect()
    }

    /// `esds`: ES descriptor > decoder config (4-byte length, as ffmpeg writes) > the config.
    fn esds(config: &[u8]) -> Vec<u8> {
        let specific = [&[5u8, config.len() as u8][..], config].concat();
        let decoder = [
            &[0x40u8, 0x15, 0, 0, 0, 0, 1, 0x13, 0x29, 0, 1, 0x13, 0x29][..],
            &specific,
        ]
        .concat();
        let decoder = [&[4u8, 0x80, 0x80, 0x80, decoder.len() as u8][..], &decoder].concat();
        let es = [&[0u8, 1, 0][..], &decoder, &[6, 1, 2]].concat();
        full(b"esds", 0, &[&[3u8, es.len() as u8][..], &es].concat())
    }

    fn audio_of(entry: Vec<u8>) -> Option<Audio> {
        let bytes = movie(
            0,
            1000,
            move |_| {
                let mut a = sound();
                a.entry = entry.clone();
                vec![video(0), a]
            },
            b"",
        );
        extract_ok(&bytes).audio
    }

    #[test]
    fn mpeg4_audio_channels_come_from_the_decoder_configuration() {
        let audio = |channels, rate| {
            Some(Audio {
                codec: Some("mp4a".into()),
                channels,
                sample_rate: rate,
            })
        };
        // ISO: the entry's channel count is the template 2; the configuration says mono.
        assert_eq!(asc(2, 3, 0, 1), [0x11, 0x88], "ffmpeg's mono 48 kHz AAC-LC");
        let iso = sound_entry_with(0, b"mp4a", 2, 48000, &esds(&asc(2, 3, 0, 1)));
        assert_eq!(audio_of(iso), audio(Some(1), Some(48000)));
        // QuickTime version 1 with the configuration inside `wave`.
        let wave = bx(
            b"wave",
            &[bx(b"frma", b"mp4a"), esds(&asc(2, 4, 0, 2)), vec![0; 8]].concat(),
        );
        assert_eq!(
            audio_of(sound_entry_with(1, b"mp4a", 1, 44100, &wave)),
            audio(Some(2), Some(44100))
        );
        // An entry without a rate takes the configuration's, explicit or by index.
        let explicit = sound_entry_with(0, b"mp4a", 2, 0, &esds(&asc(36, 15, 96000, 7)));
        assert_eq!(audio_of(explicit), audio(Some(8), Some(96000)));
        // An unusable configuration (a program config element, a broken chain) leaves the entry's.
        assert_eq!(
            audio_of(sound_entry_with(0, b"mp4a", 2, 48000, &esds(&asc(2, 3, 0, 0)))),
            audio(Some(2), Some(48000))
        );
        let mut broken = esds(&asc(2, 3, 0, 1));
        // The decoder config's tag: before its 4 length bytes, 13 fields, the config and an
        // SL descriptor (3 bytes).
        let at = broken.len() - 3 - 4 - 13 - 5;
        assert_eq!(broken[at], 4);
        broken[at] = 9;
        assert_eq!(
            audio_of(sound_entry_with(0, b"mp4a", 2, 48000, &broken)),
            audio(Some(2), Some(48000))
        );
        let garbage = [esds(&asc(2, 3, 0, 1)), vec![0, 0, 0, 3, b'x', b'x', b'x', b'x']].concat();
        assert_eq!(
            audio_of(sound_entry_with(
                0,
                b"mp4a",
                2,
                48000,
                &[vec![0, 0, 0, 3], garbage].concat()
            )),
            audio(Some(2), Some(48000)),
            "a box of size 3 before esds"
        );
        let mut endless = esds(&asc(2, 3, 0, 1));
        endless[8 + 4 + 1] = 0xff;
        endless.splice(8 + 4 + 2..8 + 4 + 2, [0xff, 0xff, 0xff, 0xff]);
        let size = endless.len() as u32;
        endless[..4].copy_from_slice(&size.to_be_bytes());
        assert_eq!(
            audio_of(sound_entry_with(0, b"mp4a", 2, 48000, &endless)),
            audio(Some(2), Some(48000))
        );
    }

    fn tmcd_entry(flags: u32, timescale: u32, frame_duration: u32, frames: u8) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        p.extend(flags.to_be_bytes());
        p.extend(timescale.to_be_bytes());
        p.extend(frame_duration.to_be_bytes());
        p.extend([frames, 0]);
        bx(b"tmcd", &p)
    }

    fn stsd(entry: &[u8]) -> Vec<u8> {
        full(b"stsd", 0, &[&1u32.to_be_bytes()[..], entry].concat())
    }

    fn table(kind: &[u8; 4], entries: &[u64], width: usize) -> Vec<u8> {
        let mut p = (entries.len() as u32).to_be_bytes().to_vec();
        for e in entries {
            p.extend(&e.to_be_bytes()[8 - width..]);
        }
        full(kind, 0, &p)
    }

    fn stts(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut p = (entries.len() as u32).to_be_bytes().to_vec();
        for (count, delta) in entries {
            p.extend(count.to_be_bytes());
            p.extend(delta.to_be_bytes());
        }
        full(b"stts", 0, &p)
    }

    struct Trak {
        version: u8,
        handler: &'static [u8; 4],
        entry: Vec<u8>,
        timescale: u32,
        duration: u64,
        stts: Vec<(u32, u32)>,
        chunk: Option<Vec<u8>>,
        tkhd_size: (u32, u32),
    }

    impl Trak {
        fn bytes(&self) -> Vec<u8> {
            let mut stbl = [stsd(&self.entry), stts(&self.stts)].concat();
            if let Some(chunk) = &self.chunk {
                stbl.extend(chunk);
            }
            let minf = bx(b"minf", &bx(b"stbl", &stbl));
            let mdia = [
                time_header(b"mdhd", self.version, self.timescale, self.duration, 4),
                hdlr(self.handler),
                minf,
            ]
            .concat();
            bx(
                b"trak",
                &[
                    tkhd(self.version, self.tkhd_size.0, self.tkhd_size.1),
                    bx(b"mdia", &mdia),
                ]
                .concat(),
            )
        }
    }

    fn video(version: u8) -> Trak {
        Trak {
            version,
            handler: b"vide",
            entry: visual_entry(b"avc1", 640, 360),
            timescale: 24000,
            duration: 48048,
            stts: vec![(48, 1001)],
            chunk: None,
            tkhd_size: (640, 360),
        }
    }

    fn sound() -> Trak {
        Trak {
            version: 0,
            handler: b"soun",
            entry: sound_entry(b"mp4a", 2, 48000),
            timescale: 48000,
            duration: 96000,
            stts: vec![(94, 1024), (1, 256)],
            chunk: None,
            tkhd_size: (0, 0),
        }
    }

    fn timecode_track(flags: u32, timescale: u32, frame_duration: u32, frames: u8, offset: u64) -> Trak {
        Trak {
            version: 0,
            handler: b"tmcd",
            entry: tmcd_entry(flags, timescale, frame_duration, frames),
            timescale,
            duration: 48048,
            stts: vec![(1, 48048)],
            chunk: Some(table(b"stco", &[offset], 4)),
            tkhd_size: (0, 0),
        }
    }

    /// ftyp, free, mdat (holding `sample` first), then moov: the layout ffmpeg writes.
    fn movie(version: u8, duration: u64, tracks: impl Fn(u64) -> Vec<Trak>, sample: &[u8]) -> Vec<u8> {
        let head = [
            bx(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41"),
            bx(b"free", b""),
            bx(b"mdat", &[sample, &[0u8; 32]].concat()),
        ]
        .concat();
        let sample_offset = (head.len() - 32 - sample.len()) as u64;
        let mut moov = time_header(b"mvhd", version, 1000, duration, 80);
        for trak in tracks(sample_offset) {
            moov.extend(trak.bytes());
        }
        [head, bx(b"moov", &moov)].concat()
    }

    /// 01:02:03:04 at 24 fps.
    const FRAME_NUMBER: u32 = (3600 + 2 * 60 + 3) * 24 + 4;

    fn mp4_v0() -> Vec<u8> {
        movie(
            0,
            2002,
            |at| vec![video(0), sound(), timecode_track(0, 24000, 1001, 24, at)],
            &FRAME_NUMBER.to_be_bytes(),
        )
    }

    #[test]
    fn mp4_header_gives_duration_video_audio_and_start_timecode() {
        let t = extract_ok(&mp4_v0());
        let doc = t.document();
        assert_eq!(doc["format"], "quicktime");
        assert_eq!(doc["brand"], "isom");
        assert_eq!(doc["durationSeconds"], 2.002);
        assert_eq!(
            (doc["width"].as_u64(), doc["height"].as_u64()),
            (Some(640), Some(360))
        );
        assert_eq!(doc["codec"], "avc1");
        assert!(
            (t.frame_rate.unwrap() - 24000.0 / 1001.0).abs() < 1e-9,
            "{:?}",
            t.frame_rate
        );
        assert_eq!(
            doc["audio"],
            json!({"codec": "mp4a", "channels": 2, "sampleRate": 48000})
        );
        assert_eq!(doc["timecode"], "01:02:03:04");
        assert_eq!(doc["trackCount"], 3);
        let handlers: Vec<&str> = t.tracks.iter().filter_map(|tr| tr.handler.as_deref()).collect();
        assert_eq!(handlers, ["vide", "soun", "tmcd"]);
        assert_eq!(t.tracks[1].duration_seconds, Some(2.0));
        assert!(doc.get("channels").is_none(), "image channels only");
    }

    #[test]
    fn mp4_version_1_headers_carry_64_bit_durations() {
        let long = 10_000_000_000u64; // > u32::MAX
        let bytes = movie(
            1,
            long,
            |_| {
                let mut v = video(1);
                v.duration = long * 24;
                vec![v]
            },
            b"",
        );
        let t = extract_ok(&bytes);
        assert_eq!(t.duration_seconds, Some(10_000_000.0));
        assert_eq!(t.tracks[0].duration_seconds, Some(long as f64 / 1000.0));
        assert_eq!(t.width, Some(640));
        // An unknown duration (all ones) is left out.
        let unknown = movie(0, u64::from(u32::MAX), |_| vec![video(0)], b"");
        assert_eq!(extract_ok(&unknown).duration_seconds, None);
    }

    #[test]
    fn frame_rates_come_from_the_time_to_sample_table() {
        let rate = |entries: Vec<(u32, u32)>, timescale: u32| {
            let bytes = movie(
                0,
                1000,
                move |_| {
                    let mut v = video(0);
                    (v.stts, v.timescale) = (entries.clone(), timescale);
                    vec![v]
                },
                b"",
            );
            extract_ok(&bytes).frame_rate
        };
        assert_eq!(rate(vec![(100, 1000)], 25000), Some(25.0));
        // Varying durations: samples over total time.
        assert_eq!(rate(vec![(2, 1), (2, 3)], 8), Some(4.0));
        assert_eq!(rate(vec![], 24000), None);
        assert_eq!(rate(vec![(10, 0)], 24000), None);
        assert_eq!(rate(vec![(10, 1000)], 0), None);
    }

    #[test]
    fn the_track_header_size_stands_in_for_a_missing_sample_description_size() {
        let bytes = movie(
            0,
            1000,
            |_| {
                let mut v = video(0);
                v.entry = visual_entry(b"apch", 0, 0);
                v.tkhd_size = (1920, 1080);
                vec![v]
            },
            b"",
        );
        let t = extract_ok(&bytes);
        assert_eq!(
            (t.width, t.height, t.codec.as_deref()),
            (Some(1920), Some(1080), Some("apch"))
        );
    }

    #[test]
    fn timecode_tracks_read_drop_frame_and_64_bit_offsets() {
        // 29.97 drop-frame: frame 1800 is labelled 00:01:00;02.
        let drop = movie(
            0,
            1000,
            |at| {
                let mut tc = timecode_track(1, 30000, 1001, 30, at);
                tc.chunk = Some(table(b"co64", &[at], 8));
                vec![video(0), tc]
            },
            &1800u32.to_be_bytes(),
        );
        assert_eq!(extract_ok(&drop).timecode.as_deref(), Some("00:01:00;02"));
        // 60 fps written with 30 frames per second in the entry: frame numbers count pairs.
        let sixty = movie(
            0,
            1000,
            |at| vec![timecode_track(0, 60000, 1000, 30, at)],
            &1800u32.to_be_bytes(),
        );
        assert_eq!(extract_ok(&sixty).timecode.as_deref(), Some("00:01:00:00"));
        // The sample is outside the file: no time code, the rest stands.
        let outside = movie(
            0,
            1000,
            |_| {
                let mut tc = timecode_track(0, 24000, 1001, 24, 0);
                tc.chunk = Some(table(b"co64", &[1 << 40], 8));
                vec![video(0), tc]
            },
            b"",
        );
        let t = extract_ok(&outside);
        assert_eq!((t.timecode, t.width), (None, Some(640)));
    }

    #[test]
    fn old_quicktime_files_without_ftyp_are_recognised_by_their_boxes() {
        let moov = bx(
            b"moov",
            &[time_header(b"mvhd", 0, 600, 1200, 80), video(0).bytes()].concat(),
        );
        let bytes = [bx(b"wide", b""), bx(b"mdat", &[0; 16]), moov].concat();
        let t = extract_ok(&bytes);
        assert_eq!((t.brand, t.duration_seconds), (None, Some(2.0)));
        assert_eq!(detect("clip.MOV", &bytes[..16]), Some(Format::QuickTime));
        assert_eq!(detect("clip.bin", &bytes[..16]), None);
        assert_eq!(detect("clip", &bytes[..16]), None);
        // Four such letters in a file that is no QuickTime file: not a claim, no error.
        let text = b"....free software, for everyone".to_vec();
        assert!(extract(&text).unwrap().is_none());
    }

    #[test]
    fn detection_is_by_magic_number_with_the_name_only_breaking_ties() {
        let exr = exr_with_rate_and_timecode();
        assert_eq!(detect("frame.dpx", &exr[..16]), Some(Format::OpenExr));
        assert_eq!(detect("a.dpx", b"SDPX\0\0\x08\0"), Some(Format::Dpx));
        assert_eq!(detect("a", b"XPDS"), Some(Format::Dpx));
        assert_eq!(detect("a.exr", &mp4_v0()[..16]), Some(Format::QuickTime));
        assert_eq!(detect("a.exr", b"not an image at all"), None);
        assert_eq!(detect("a.mov", b""), None);
        // Size 5 cannot be a box.
        assert_eq!(detect("a.mov", b"\0\0\0\x05moov"), None);
        for bytes in [&b""[..], b"\x76\x2f", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"GIF89a"] {
            assert!(extract(&bytes).unwrap().is_none());
        }
    }

    #[test]
    fn hostile_box_sizes_are_errors_without_large_reads() {
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        let run = |bytes: Vec<u8>, size: u64| {
            let source = Counting::new(Sparse { prefix: bytes, size });
            let result = extract(&source);
            (result, source.bytes.get())
        };
        // A top-level box larger than the file.
        let huge = [
            ftyp.clone(),
            0xffff_fff0u32.to_be_bytes().to_vec(),
            b"mdat".to_vec(),
        ]
        .concat();
        let len = huge.len() as u64 + 100;
        let (r, _) = run(huge, len);
        assert!(matches!(r, Err(TechnicalError::Truncated { .. })), "{r:?}");
        // A 1 GiB moov in a sparse 1 TiB file: refused before it is read.
        let mut big = ftyp.clone();
        big.extend(1u32.to_be_bytes());
        big.extend(b"moov");
        big.extend((1u64 << 30).to_be_bytes());
        let (r, read) = run(big, 1 << 40);
        assert!(
            matches!(
                r,
                Err(TechnicalError::TooLarge {
                    limit: MAX_MOOV_BYTES,
                    ..
                })
            ),
            "{r:?}"
        );
        assert!(read <= DETECT_BYTES + 2 * BOX_HEADER_BYTES, "{read}");
        // Size 0 runs to the end of the file, leaving no moov.
        let zero = [
            ftyp.clone(),
            0u32.to_be_bytes().to_vec(),
            b"mdat".to_vec(),
            vec![0; 64],
        ]
        .concat();
        let (r, _) = run(zero.clone(), zero.len() as u64);
        assert!(r.unwrap_err().to_string().contains("no moov"));
        // Size 1 with a 64-bit size below 16; sizes 2 to 7.
        let mut small = [ftyp.clone(), 1u32.to_be_bytes().to_vec(), b"mdat".to_vec()].concat();
        small.extend(9u64.to_be_bytes());
        let (r, _) = run(small.clone(), small.len() as u64);
        assert!(r.unwrap_err().to_string().contains("64-bit size 9"));
        let seven = [ftyp.clone(), 7u32.to_be_bytes().to_vec(), b"free".to_vec()].concat();
        let (r, _) = run(seven.clone(), seven.len() as u64);
        assert!(r.unwrap_err().to_string().contains("size 7"));
        // 2000 empty boxes before any moov: the walk stops at its bound.
        let many = [ftyp.clone(), bx(b"free", b"").repeat(2000)].concat();
        let (r, read) = run(many.clone(), many.len() as u64);
        assert!(r.unwrap_err().to_string().contains("first 1024"));
        assert!(
            read <= DETECT_BYTES + MAX_TOP_LEVEL_BOXES * BOX_HEADER_BYTES,
            "{read}"
        );
    }

    #[test]
    fn hostile_boxes_inside_moov_are_malformed() {
        let wrap =
            |moov_payload: Vec<u8>| [bx(b"ftyp", b"isom\0\0\0\0"), bx(b"moov", &moov_payload)].concat();
        // A child running past its parent.
        let mut past = bx(b"trak", &[0; 16]);
        past[..4].copy_from_slice(&100u32.to_be_bytes());
        assert!(
            extract_err(&wrap(past))
                .to_string()
                .contains("runs past its parent")
        );
        // Size 1 without room for the 64-bit size; size 1 with a 64-bit size of 12.
        let cut = [1u32.to_be_bytes().to_vec(), b"trak".to_vec(), vec![0; 4]].concat();
        assert!(
            extract_err(&wrap(cut))
                .to_string()
                .contains("runs past its parent")
        );
        let twelve = [
            1u32.to_be_bytes().to_vec(),
            b"trak".to_vec(),
            12u64.to_be_bytes().to_vec(),
        ]
        .concat();
        assert!(extract_err(&wrap(twelve)).to_string().contains("64-bit size 12"));
        // stts claiming more entries than it holds.
        let mut v = video(0);
        v.stts = vec![(1, 1)];
        let mut trak = v.bytes();
        let at = trak.windows(4).position(|w| w == b"stts").unwrap() + 8;
        trak[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(extract_err(&wrap(trak)).to_string().contains("stts declares"));
        // A truncated mvhd; an unknown mvhd version.
        assert!(
            extract_err(&wrap(full(b"mvhd", 0, &[0; 8])))
                .to_string()
                .contains("mvhd too short")
        );
        assert!(
            extract_err(&wrap(full(b"mvhd", 7, &[0; 100])))
                .to_string()
                .contains("mvhd version 7")
        );
    }

    #[test]
    fn deeply_nested_boxes_cost_no_recursion() {
        // moov > trak > trak > ... 200,000 levels: only moov/trak/mdia/... paths are followed.
        let depth = 200_000usize;
        let mut payload = Vec::with_capacity(depth * 8);
        for level in 0..depth {
            payload.extend((((depth - level) * 8) as u32).to_be_bytes());
            payload.extend(b"trak");
        }
        let bytes = [bx(b"ftyp", b"isom\0\0\0\0"), bx(b"moov", &payload)].concat();
        let t = extract_ok(&bytes);
        assert_eq!(t.track_count, Some(1));
        assert_eq!(t.tracks[0].handler, None);
    }

    #[test]
    fn a_moov_full_of_tracks_lists_the_first_64_and_counts_all() {
        let bytes = [
            bx(b"ftyp", b"isom\0\0\0\0"),
            bx(b"moov", &bx(b"trak", b"").repeat(100_000)),
        ]
        .concat();
        let t = extract_ok(&bytes);
        assert_eq!(
            (t.track_count, t.tracks.len()),
            (Some(100_000), MAX_LISTED_TRACKS)
        );
    }

    // --- time codes ---------------------------------------------------------------------------

    #[test]
    fn packed_timecodes_are_bcd_with_flags_between_the_digits() {
        assert_eq!(packed_timecode(0x0102_0304).as_deref(), Some("01:02:03:04"));
        assert_eq!(
            packed_timecode(0x0102_0304 | 1 << 6).as_deref(),
            Some("01:02:03;04")
        );
        // Colour-frame, field and binary-group flags do not disturb the digits.
        assert_eq!(
            packed_timecode(0x2359_5929 | 1 << 7 | 1 << 15 | 1 << 23 | 1 << 30 | 1 << 31).as_deref(),
            Some("23:59:59:29")
        );
        for bad in [
            u32::MAX,
            0xff00_0000,
            0x2400_0000,
            0x0060_0000,
            0x0000_600a,
            0x0000_000a,
        ] {
            assert_eq!(packed_timecode(bad), None, "{bad:#x}");
        }
    }

    #[test]
    fn frame_counts_become_timecodes_with_drop_frame_skipping_labels() {
        let tc = |frames, fps, drop| frames_to_timecode(frames, fps, drop, false);
        assert_eq!(tc(86_400, 24, false).as_deref(), Some("01:00:00:00"));
        assert_eq!(tc(1799, 30, true).as_deref(), Some("00:00:59;29"));
        assert_eq!(tc(1800, 30, true).as_deref(), Some("00:01:00;02"));
        assert_eq!(tc(17_981, 30, true).as_deref(), Some("00:09:59;29"));
        assert_eq!(tc(17_982, 30, true).as_deref(), Some("00:10:00;00"));
        assert_eq!(tc(107_892, 30, true).as_deref(), Some("01:00:00;00"));
        assert_eq!(tc(3600, 60, true).as_deref(), Some("00:01:00;04"));
        assert_eq!(tc(10, 25, true), None, "drop-frame needs a multiple of 30");
        assert_eq!(tc(10, 0, false), None);
        assert_eq!(tc(10, 1000, false), None);
        assert_eq!(tc(u64::MAX, 30, true), None, "no overflow");
        assert_eq!(tc(100 * 3600 * 24, 24, false), None, "three-digit hours");
        assert_eq!(
            frames_to_timecode(25 * 3600 * 24, 24, false, true).as_deref(),
            Some("01:00:00:00")
        );
    }

    // --- sequences ----------------------------------------------------------------------------

    fn frame(width: u64) -> Technical {
        let mut t = extract_ok(&exr_file(0, &[exr_image(1920, 1080, &rgba_half(), ZIP)]));
        t.width = Some(width);
        t
    }

    #[test]
    fn a_sequence_summary_lists_gaps_and_the_fields_all_frames_share() {
        let frames: Vec<(u64, Technical)> = [10, 1, 2, 3, 5, 6, 9, 3]
            .into_iter()
            .map(|n| (n, frame(1920)))
            .collect();
        let doc = checked(summarize_sequence(&frames));
        assert_eq!(
            doc,
            json!({
                "kind": "sequence", "firstFrame": 1, "lastFrame": 10, "frameCount": 7,
                "missingFrames": [[4, 4], [7, 8]], "missingFrameCount": 3, "missingRangeCount": 2,
                "format": "openexr", "width": 1920, "height": 1080, "channels": 4,
                "pixelType": "half", "bitDepth": 16, "compression": "zip"
            })
        );
    }

    #[test]
    fn fields_that_differ_between_frames_are_named_mixed() {
        let mut odd = frame(2048);
        odd.frame_rate = Some(24.0);
        let doc = checked(summarize_sequence(&[
            (1, frame(1920)),
            (2, odd),
            (3, frame(1920)),
        ]));
        assert_eq!(doc["mixed"], json!(["width", "frameRate"]));
        assert!(doc.get("width").is_none() && doc.get("frameRate").is_none());
        assert_eq!(doc["height"], 1080);
        let dpx = extract_ok(&Dpx::rgb10(ByteOrder::Big).bytes());
        let doc = checked(summarize_sequence(&[(1, frame(2048)), (2, dpx)]));
        assert!(doc["mixed"].as_array().unwrap().contains(&json!("format")));
    }

    #[test]
    fn frames_without_a_document_count_by_number_but_give_no_fields() {
        let document = frame(1920).document();
        let doc = checked(summarize_frame_documents(&[
            (1001, Some(document.clone())),
            (1002, None),
            (1003, Some(document.clone())),
            (1005, None),
        ]));
        assert_eq!(
            (&doc["firstFrame"], &doc["lastFrame"], &doc["frameCount"]),
            (&json!(1001), &json!(1005), &json!(4))
        );
        assert_eq!(doc["missingFrames"], json!([[1004, 1004]]));
        assert_eq!(doc["width"], 1920, "the documented frames agree");
        assert!(
            doc.get("mixed").is_none(),
            "an undocumented frame is not a difference"
        );
        assert_eq!(
            summarize_frame_documents(&[(1001, Some(document)), (1002, None)]),
            summarize_sequence(&[(1001, frame(1920)), (1002, frame(1920))]),
            "one documented frame gives the fields of all"
        );
        let unread = checked(summarize_frame_documents(&[(1, None), (3, None)]));
        assert_eq!(
            unread,
            json!({"kind": "sequence", "firstFrame": 1, "lastFrame": 3, "frameCount": 2,
                   "missingFrames": [[2, 2]], "missingFrameCount": 1, "missingRangeCount": 1})
        );
    }

    #[test]
    fn only_the_first_1000_missing_ranges_are_listed() {
        let frames: Vec<(u64, Technical)> = (0..=2000u64).map(|n| (n * 2, frame(8))).collect();
        let doc = checked(summarize_sequence(&frames));
        assert_eq!(
            doc["missingFrames"].as_array().unwrap().len(),
            MAX_LISTED_MISSING_RANGES
        );
        assert_eq!(doc["missingFrames"][999], json!([1999, 1999]));
        assert_eq!(
            (
                doc["missingFrameCount"].as_u64(),
                doc["missingRangeCount"].as_u64()
            ),
            (Some(2000), Some(2000))
        );
    }

    #[test]
    fn empty_and_extreme_sequences() {
        let empty = checked(summarize_sequence(&[]));
        assert_eq!(
            empty,
            json!({"kind": "sequence", "frameCount": 0, "missingFrames": [], "missingFrameCount": 0, "missingRangeCount": 0})
        );
        let wide = checked(summarize_sequence(&[(0, frame(8)), (u64::MAX, frame(8))]));
        assert_eq!(wide["missingFrameCount"].as_u64(), Some(u64::MAX - 1));
        assert_eq!(wide["missingFrames"], json!([[1, u64::MAX - 1]]));
    }

    // --- the DataStore ------------------------------------------------------------------------

    #[test]
    fn the_datastore_compiles_and_its_schema_is_closed() {
        let store = datastore();
        assert_eq!(store.spec.name, "studiodrive/technical");
        assert!(
            store
                .check_media_id(&json!({"workspace": "vfx", "node": 42}))
                .is_ok()
        );
        let key = crate::model::FrameName::parse(b"sh010.1001.exr").unwrap().key;
        for good_id in [
            file_media_id("vfx", NodeId(42)),
            sequence_media_id("vfx", NodeId(7), &key),
        ] {
            assert!(store.check_media_id(&good_id).is_ok(), "{good_id}");
        }
        assert_eq!(
            sequence_media_id("vfx", NodeId(7), &key),
            json!({"workspace": "vfx", "folder": 7, "sequence": "sh010.%04d.exr"})
        );
        for bad_id in [
            json!({"workspace": "vfx", "node": 0}),
            json!({"workspace": "vfx"}),
            json!({"workspace": "vfx", "node": 1, "x": 1}),
            json!({"workspace": "vfx", "folder": 7}),
            json!({"workspace": "vfx", "folder": 7, "sequence": ""}),
            json!({"workspace": "vfx", "node": 1, "folder": 7, "sequence": "a.%04d.exr"}),
        ] {
            assert!(store.check_media_id(&bad_id).is_err(), "{bad_id}");
        }
        let doc = extract_ok(&mp4_v0()).document();
        let refuse = |edit: &dyn Fn(&mut Value), path: &str| {
            let mut d = doc.clone();
            edit(&mut d);
            let e = store.check_document(&d).unwrap_err();
            assert_eq!(e.path, path, "{e}");
        };
        refuse(&|d| d["extra"] = json!(1), "");
        refuse(&|d| d["width"] = Value::Null, "/width");
        refuse(&|d| d["timecode"] = json!("1:00:00:00"), "/timecode");
        refuse(&|d| d["audio"]["bits"] = json!(16), "/audio");
        refuse(&|d| d["tracks"][0]["codec"] = json!("avc"), "/tracks/0/codec");
        let mut frame_kind = doc.clone();
        frame_kind["kind"] = json!("frame");
        assert!(store.check_document(&frame_kind).is_err());
        let mut seq = summarize_sequence(&[(1, frame(8))]);
        seq["codec"] = json!("avc1");
        assert!(store.check_document(&seq).is_err(), "a sequence has no codec");
        let indexed: Vec<String> = store.index(&doc).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            indexed,
            ["kind", "format", "width", "height", "frameRate", "codec"]
        );
    }

    #[test]
    fn the_largest_document_stays_under_the_store_bound() {
        // 300 channels named by 255 control characters, each escaped to six bytes in JSON.
        let names: Vec<String> = (0..300)
            .map(|i| format!("{i:03}{}", "\u{1}".repeat(252)))
            .collect();
        let channels: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), FLOAT)).collect();
        let t = extract_ok(&exr_file(0, &[exr_image(8, 8, &channels, ZIP)]));
        assert_eq!(
            (t.channels, t.channel_names.len()),
            (Some(300), MAX_LISTED_CHANNELS)
        );
        let len = t.document().to_string().len();
        assert!(
            len > 700_000 && len < crate::media::MAX_INLINE_DOCUMENT_BYTES,
            "{len}"
        );
    }

    #[test]
    fn every_fixture_document_passes_the_schema() {
        let mut fixtures = vec![exr_with_rate_and_timecode(), exr_multi_part(), mp4_v0()];
        fixtures.push(Dpx::rgb10(ByteOrder::Big).bytes());
        fixtures.push(Dpx::rgb10(ByteOrder::Little).bytes());
        for bytes in fixtures {
            extract_ok(&bytes);
        }
    }

    #[test]
    fn files_are_read_through_the_file_source() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &mp4_v0()).unwrap();
        let t = extract(&file).unwrap().unwrap();
        assert_eq!(t.timecode.as_deref(), Some("01:02:03:04"));
        assert_eq!(file.read_at(1 << 40, 8).unwrap(), b"");
    }

    // --- properties ---------------------------------------------------------------------------

    /// Extracts through a counting source and checks the bounds: total bytes read, and for
    /// documents the schema.
    fn extract_bounded(prefix: Vec<u8>, size: u64) -> Result<(), TestCaseError> {
        let source = Counting::new(Sparse { prefix, size });
        let first = source.inner.read_at(0, DETECT_BYTES as usize).unwrap();
        let bound = match sniff(&first).map(|(format, _)| format) {
            Some(Format::OpenExr) => DETECT_BYTES + MAX_EXR_HEADER_BYTES,
            Some(Format::Dpx) => DETECT_BYTES + DPX_HEADER_BYTES,
            Some(Format::QuickTime) | None => MAX_READ_BYTES,
        };
        let result = extract(&source);
        let read = source.bytes.get();
        prop_assert!(read <= bound, "read {read} of at most {bound}: {result:?}");
        if let Ok(Some(t)) = &result {
            let doc = t.document();
            prop_assert!(datastore().check_document(&doc).is_ok(), "{doc}");
        }
        Ok(())
    }

    fn magic() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just([&EXR_MAGIC[..], &[2, 0, 0, 0]].concat()),
            Just(DPX_MAGIC_BIG.to_vec()),
            Just(DPX_MAGIC_LITTLE.to_vec()),
            any::<u32>().prop_map(|n| [&n.to_be_bytes()[..], b"ftyp"].concat()),
            any::<u32>().prop_map(|n| [&n.to_be_bytes()[..], b"moov"].concat()),
            Just(b"\0\0\0\x08wide".to_vec()),
        ]
    }

    fn fixture() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(exr_with_rate_and_timecode()),
            Just(exr_multi_part()),
            Just(Dpx::rgb10(ByteOrder::Big).bytes()),
            Just(Dpx::rgb10(ByteOrder::Little).bytes()),
            Just(mp4_v0()),
            Just(movie(
                1,
                5000,
                |at| vec![video(1), timecode_track(1, 30000, 1001, 30, at)],
                &[0, 0, 7, 8]
            )),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_after_a_magic_number_never_panic_or_read_past_the_bound(
            magic in magic(),
            tail in proptest::collection::vec(any::<u8>(), 0..4096),
            // Sometimes the file claims to be far longer than what was written.
            extra in prop_oneof![Just(0u64), 0u64..(1 << 40)],
        ) {
            let prefix = [magic, tail].concat();
            let size = prefix.len() as u64 + extra;
            extract_bounded(prefix, size)?;
        }

        #[test]
        fn mutated_headers_never_panic_or_read_past_the_bound(
            bytes in fixture(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
            extra in prop_oneof![Just(0u64), 0u64..(1 << 40)],
        ) {
            let mut bytes = bytes;
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let size = bytes.len() as u64 + extra;
            extract_bounded(bytes, size)?;
        }
    }
}
