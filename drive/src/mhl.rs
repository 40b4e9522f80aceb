//! ASC MHL v2 histories: the media hash lists studios hand footage over with. A folder's
//! history lives in its `ascmhl/` folder: one `NNNN_<folder>_<date>.mhl` hash list per
//! generation and `ascmhl_chain.xml`, which names each generation with the C4 id of its file.
//!
//! [`create`] checks every file an earlier generation recorded against its latest recorded
//! hash, then writes a new generation (files seen before `verified`, new ones `original`);
//! [`verify`] only checks. On a Studio Drive mount the hashes come from the
//! `user.studiodrive.<algo>` attributes, which the mount keeps per content version, so a
//! second hand-off of unchanged footage reads nothing; elsewhere files are read and hashed.
//! The files are compatible with the ASC's reference implementation (PyPI `ascmhl`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use xxhash_rust::xxh64::Xxh64;

/// The folder a history lives in, and what is never hashed.
pub const HISTORY_DIR: &str = "ascmhl";
const CHAIN_FILE: &str = "ascmhl_chain.xml";
const IGNORED: [&str; 2] = [HISTORY_DIR, ".DS_Store"];

/// Why a history could not be read, written or verified.
#[derive(Debug, thiserror::Error)]
pub enum MhlError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: not an ASC MHL file this tool reads")]
    Malformed(PathBuf),
    #[error("{0} is not a hash ASC MHL names (md5, sha1, xxh64, sha256)")]
    UnknownHash(String),
    #[error("verification failed: {}", .0.join("; "))]
    Failed(Vec<String>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MhlError + '_ {
    move |source| MhlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A hash ASC MHL names, as this tool computes it (lowercase hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Xxh64,
    Sha256,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 4] = [HashAlgo::Md5, HashAlgo::Sha1, HashAlgo::Xxh64, HashAlgo::Sha256];

    /// The element name in an MHL file (and the suffix of the mount's attribute).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Xxh64 => "xxh64",
            HashAlgo::Sha256 => "sha256",
        }
    }

    pub fn parse(name: &str) -> Result<HashAlgo, MhlError> {
        HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| MhlError::UnknownHash(name.to_string()))
    }

    /// A running hash of this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher(match self {
            HashAlgo::Md5 => Running::Md5(Md5::new()),
            HashAlgo::Sha1 => Running::Sha1(Sha1::new()),
            HashAlgo::Xxh64 => Running::Xxh64(Xxh64::new(0)),
            HashAlgo::Sha256 => Running::Sha256(Sha256::new()),
        })
    }

    /// The hash of everything `reader` gives.
    pub fn hash(self, mut reader: impl Read) -> std::io::Result<String> {
        let mut hasher = self.hasher();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    }
}

/// A hash being computed, fed chunk by chunk.
pub struct Hasher(Running);

enum Running {
    Md5(Md5),
    Sha1(Sha1),
    Xxh64(Xxh64),
    Sha256(Sha256),
}

impl Hasher {
    pub fn update(&mut self, chunk: &[u8]) {
        match &mut self.0 {
            Running::Md5(h) => h.update(chunk),
            Running::Sha1(h) => h.update(chunk),
            Running::Xxh64(h) => h.update(chunk),
            Running::Sha256(h) => h.update(chunk),
        }
    }

    /// The hash in lowercase hex (xxHash64 as its 16-digit big-endian value, as MHL writes it).
    pub fn finish(self) -> String {
        match self.0 {
            Running::Md5(h) => hex(&h.finalize()),
            Running::Sha1(h) => hex(&h.finalize()),
            Running::Xxh64(h) => format!("{:016x}", h.digest()),
            Running::Sha256(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The C4 id (SMPTE ST 2114) of `data`: SHA-512 in base 58, "c4" and 88 digits.
pub fn c4_id(data: &[u8]) -> String {
    const DIGITS: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut number: Vec<u8> = Sha512::digest(data).to_vec();
    let mut out = Vec::with_capacity(88);
    // Long division of the 512-bit big-endian number by 58, one digit at a time.
    while number.iter().any(|&b| b != 0) {
        let mut rest = 0u32;
        for byte in number.iter_mut() {
            let value = (rest << 8) | u32::from(*byte);
            *byte = (value / 58) as u8;
            rest = value % 58;
        }
        out.push(DIGITS[rest as usize]);
    }
    out.resize(88, b'1');
    out.reverse();
    format!("c4{}", String::from_utf8_lossy(&out))
}

/// A file's hash as a generation recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    algo: HashAlgo,
    hash: String,
}

/// What a check or a new generation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MhlReport {
    /// Files whose hash matched the history.
    pub verified: usize,
    /// Files the history did not know (recorded as `original` by `create`).
    pub new: usize,
    /// Files the history knows that are gone.
    pub missing: Vec<String>,
    /// The generation file written, if any.
    pub written: Option<PathBuf>,
}

/// The files below `root` (relative, `/`-separated, sorted), history and `.DS_Store` left out.
fn files(root: &Path) -> Result<Vec<String>, MhlError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(MhlError::Malformed(entry.path()));
            };
            if IGNORED.contains(&name) {
                continue;
            }
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            let path = rel.join(name);
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The hash of `path`: the mount's attribute where the file system keeps one, else read.
fn hash_file(path: &Path, algo: HashAlgo) -> Result<String, MhlError> {
    if let Some(kept) = mount_hash(path, algo) {
        return Ok(kept);
    }
    let file = fs::File::open(path).map_err(io(path))?;
    algo.hash(std::io::BufReader::new(file)).map_err(io(path))
}

/// `user.studiodrive.<algo>` of `path`, if its file system answers it (std has no getxattr).
#[allow(unsafe_code)]
fn mount_hash(path: &Path, algo: HashAlgo) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(format!("user.studiodrive.{}", algo.name())).ok()?;
    let mut value = [0u8; 128];
    // SAFETY: both names are NUL-terminated and `value` is writable for its whole length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    let text = std::str::from_utf8(&value[..n]).ok()?;
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_string())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text of every `<tag ...>text</tag>` in `xml`, in order.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        // `<tag>` or `<tag attr=...>`, not `<tagger>`.
        if !after.starts_with(['>', ' ']) {
            rest = after;
            continue;
        }
        let Some(start) = after.find('>') else { break };
        let Some(end) = after[start..].find(&close) else {
            break;
        };
        out.push(&after[start + 1..start + end]);
        rest = &after[start + end + close.len()..];
    }
    out
}

/// One generation the chain lists: its sequence number, file name and C4 id.
struct Generation {
    sequence: u32,
    file: String,
    c4: String,
}

/// A file of the folder as a new generation records it.
struct Listed {
    path: String,
    size: u64,
    modified: SystemTime,
    hash: String,
    /// Whether an earlier generation recorded it (`verified`) or not (`original`).
    seen: bool,
}

/// The latest recorded hash of each file, over the generations the chain lists, in order.
fn history(root: &Path) -> Result<(BTreeMap<String, Recorded>, Vec<Generation>), MhlError> {
    let dir = root.join(HISTORY_DIR);
    let chain_path = dir.join(CHAIN_FILE);
    let chain = match fs::read_to_string(&chain_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io(&chain_path)(e)),
    };
    let mut known = BTreeMap::new();
    let mut generations = Vec::new();
    for entry in elements(&chain, "hashlist") {
        let file = elements(entry, "path")
            .first()
            .map(|p| xml_unescape(p))
            .unwrap_or_default();
        let c4 = elements(entry, "c4")
            .first()
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let sequence = chain
            .split("sequencenr=\"")
            .nth(generations.len() + 1)
            .and_then(|s| s.split('"').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MhlError::Malformed(chain_path.clone()))?;
        let path = dir.join(&file);
        let bytes = fs::read(&path).map_err(io(&path))?;
        if c4_id(&bytes) != c4 {
            return Err(MhlError::Failed(vec![format!(
                "{file} was changed after it was written (its C4 id is not the chain's)"
            )]));
        }
        let text = String::from_utf8(bytes).map_err(|_| MhlError::Malformed(path.clone()))?;
        for hash in elements(&text, "hash") {
            let Some(name) = elements(hash, "path").first().map(|p| xml_unescape(p)) else {
                return Err(MhlError::Malformed(path.clone()));
            };
            // The strongest recorded hash of this generation stands for the file.
            let recorded = HashAlgo::ALL.iter().rev().find_map(|algo| {
                elements(hash, algo.name()).first().map(|h| Recorded {
                    algo: *algo,
                    hash: h.trim().to_ascii_lowercase(),
                })
            });
            if let Some(recorded) = recorded {
                known.insert(name, recorded);
            }
        }
        generations.push(Generation { sequence, file, c4 });
    }
    Ok((known, generations))
}

/// Checks the files of `root` against its history; returns what it found and the files with
/// their hashes in `algo` (for a new generation).
fn check(root: &Path, algo: HashAlgo) -> Result<(MhlReport, Vec<Listed>, Vec<Generation>), MhlError> {
    let (known, generations) = history(root)?;
    let present = files(root)?;
    let mut report = MhlReport::default();
    let mut failures = Vec::new();
    let mut listed = Vec::new();
    for rel in &present {
        let path = root.join(rel);
        let meta = fs::metadata(&path).map_err(io(&path))?;
        let modified = meta.modified().map_err(io(&path))?;
        let hash = hash_file(&path, algo)?;
        let seen = match known.get(rel) {
            None => {
                report.new += 1;
                false
            }
            Some(recorded) => {
                let now = if recorded.algo == algo {
                    hash.clone()
                } else {
                    hash_file(&path, recorded.algo)?
                };
                if now == recorded.hash {
                    report.verified += 1;
                } else {
                    failures.push(format!(
                        "hash mismatch for {rel}: {} recorded {}, now {now}",
                        recorded.algo.name(),
                        recorded.hash
                    ));
                }
                true
            }
        };
        listed.push(Listed {
            path: rel.clone(),
            size: meta.len(),
            modified,
            hash,
            seen,
        });
    }
    for rel in known.keys() {
        if !present.contains(rel) {
            report.missing.push(rel.clone());
            failures.push(format!("{rel} is in the history but missing"));
        }
    }
    if failures.is_empty() {
        Ok((report, listed, generations))
    } else {
        Err(MhlError::Failed(failures))
    }
}

/// Checks every file the history of `root` records; fails naming each mismatch and each
/// missing file. New files are counted, not failures.
pub fn verify(root: &Path) -> Result<MhlReport, MhlError> {
    check(root, HashAlgo::Xxh64).map(|(report, _, _)| report)
}

/// `t` as ASC MHL writes dates: RFC 3339 in UTC, to the second.
fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// Checks `root` against its history (as [`verify`]), then records a new generation of every
/// file's `algo` hash. Nothing is written when the check fails.
pub fn create(root: &Path, algo: HashAlgo, tool_version: &str) -> Result<MhlReport, MhlError> {
    let (mut report, listed, generations) = check(root, algo)?;
    let now = SystemTime::now();
    let stamp = rfc3339(now);
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<hashlist version=\"2.0\" xmlns=\"urn:ASC:MHL:v2.0\">\n",
    );
    xml.push_str(&format!(
        "  <creatorinfo>\n    <creationdate>{stamp}</creationdate>\n    <hostname>{}</hostname>\n    <tool version=\"{}\">studiodrive-csi</tool>\n  </creatorinfo>\n",
        xml_escape(&hostname()),
        xml_escape(tool_version)
    ));
    xml.push_str("  <processinfo>\n    <process>in-place</process>\n    <ignore>\n      <pattern>.DS_Store</pattern>\n      <pattern>ascmhl</pattern>\n      <pattern>ascmhl/</pattern>\n    </ignore>\n  </processinfo>\n  <hashes>\n");
    for Listed {
        path: rel,
        size,
        modified,
        hash,
        seen,
    } in &listed
    {
        let action = if *seen { "verified" } else { "original" };
        xml.push_str(&format!(
            "    <hash>\n      <path size=\"{size}\" lastmodificationdate=\"{}\">{}</path>\n      <{n} action=\"{action}\" hashdate=\"{stamp}\">{hash}</{n}>\n    </hash>\n",
            rfc3339(*modified),
            xml_escape(rel),
            n = algo.name()
        ));
    }
    xml.push_str("  </hashes>\n</hashlist>\n");

    let dir = root.join(HISTORY_DIR);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let sequence = generations.last().map_or(1, |g| g.sequence + 1);
    let folder = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "root".to_string());
    let day = stamp[..10].to_string();
    let time = stamp[11..19].replace(':', "");
    let file = format!("{sequence:04}_{folder}_{day}_{time}Z.mhl");
    let path = dir.join(&file);
    // A new file: an existing generation is never overwritten.
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io(&path))?;
    std::io::Write::write_all(&mut out, xml.as_bytes()).map_err(io(&path))?;
    out.sync_all().map_err(io(&path))?;

    let mut chain = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ascmhldirectory xmlns=\"urn:ASC:MHL:DIRECTORY:v2.0\">\n",
    );
    let written = Generation {
        sequence,
        file: file.clone(),
        c4: c4_id(xml.as_bytes()),
    };
    for Generation { sequence, file, c4 } in generations.iter().chain([&written]) {
        chain.push_str(&format!(
            "  <hashlist sequencenr=\"{sequence}\">\n    <path>{}</path>\n    <c4>{c4}</c4>\n  </hashlist>\n",
            xml_escape(file)
        ));
    }
    chain.push_str("</ascmhldirectory>\n");
    // Replaced whole (write then rename), so a crash leaves the old chain or the new one.
    let chain_path = dir.join(CHAIN_FILE);
    let temp = dir.join(format!(".{CHAIN_FILE}.tmp"));
    fs::write(&temp, chain).map_err(io(&temp))?;
    fs::rename(&temp, &chain_path).map_err(io(&chain_path))?;
    report.written = Some(path);
    Ok(report)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_c4_ids_match_their_references() {
        let abc = |a: HashAlgo| a.hash(&b"abc"[..]).unwrap();
        assert_eq!(abc(HashAlgo::Md5), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(abc(HashAlgo::Sha1), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(abc(HashAlgo::Xxh64), "44bc2cf5ad770999");
        // C4 ids of "" and "abc" as ascmhl's C4 hasher computes them.
        assert_eq!(
            c4_id(b""),
            "c459dsjfscH38cYeXXYogktxf4Cd9ibshE3BHUo6a58hBXmRQdZrAkZzsWcbWtDg5oQstpDuni4Hirj75GEmTc1sFT"
        );
        assert_eq!(
            c4_id(b"abc"),
            "c45S4rnaTNWonxss1u8LzsaJdEph1AJhWUF4sh2waXKMsutyfAxg4ybUeuXVWS9HdNcEypmeXn8FZGonD4w1rj9DZp"
        );
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_462_323)),
            "2026-12-05T09:18:43+00:00"
        );
    }

    #[test]
    fn elements_are_found_by_whole_tag_name() {
        let xml = "<hash><path size=\"3\">a&amp;b.exr</path><xxh64 action=\"original\">44bc</xxh64></hash><hashes>x</hashes>";
        assert_eq!(elements(xml, "hash").len(), 1);
        assert_eq!(
            elements(xml, "path")
                .iter()
                .map(|p| xml_unescape(p))
                .collect::<Vec<_>>(),
            ["a&b.exr"]
        );
        assert_eq!(elements(xml, "xxh64"), ["44bc"]);
    }
}
