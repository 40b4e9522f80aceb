//! The stored form of a block, and its content address.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SDBK"
//!      4     1  format version (2; version 1 blocks are still read)
//!      5     1  flags: bit 0 = encrypted (AES-256-GCM)
//!      6     1  version 2: log2 of the frame length (16: 64 KiB frames); version 1: zero
//!      7     1  reserved, zero
//!      8     4  plaintext length, little endian
//!     12    12  nonce (random per block; zero when not encrypted)
//!     24     t  version 2: the frame table, one entry per frame (below)
//!   24+t     n  payload: plaintext, or ciphertext (version 1: followed by the 16-byte GCM tag)
//! ```
//!
//! The address of a block is BLAKE3 of its plaintext; in an encrypted workspace it is keyed
//! BLAKE3 under a key derived from the workspace data key, so addresses reveal nothing about
//! content across workspaces. Every decode is verified, so a corrupted object is an error,
//! never wrong bytes.
//!
//! Version 2 splits the payload into 64 KiB frames, each verifiable on its own, so a random
//! read fetches (a ranged GET) and checks only the frames it touches:
//! - plaintext: the table holds each frame's BLAKE3 chaining value (the frame is a subtree
//!   of the block's BLAKE3 tree, so the address is unchanged from version 1 and the two
//!   deduplicate alike). A reader merges the table up to the root and compares it with the
//!   address, then hashes each fetched frame and compares it with its entry. A block of one
//!   frame has no table: it is read and hashed whole.
//! - encrypted: the table holds each frame's GCM tag; frame `i` is sealed under the block's
//!   nonce with `i` folded into its last four bytes, with the header, the address and `i`
//!   as associated data, so a frame swapped, moved, truncated or altered fails to open.
//!
//! Version 1 (one payload, verified whole: re-hashed when plaintext, one GCM tag over header
//! and address when encrypted) is decoded as before; only tests still write it.
//!
//! An encrypted block is checked by its tags only (re-hashing it as well would double the CPU
//! cost of every warm read and add no assurance: without the key nobody can make a tag
//! verify).

use std::ops::Range;
use std::sync::Arc;

use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use bytes::{Buf as _, Bytes, BytesMut};
use rand::RngCore as _;

use crate::data::aead::{Cipher, TAG_LEN};
use crate::data::keys::DataKey;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 24;
/// Plaintext bytes per frame of a version 2 block.
pub const FRAME_LEN: usize = 1 << FRAME_SHIFT;
const FRAME_SHIFT: u8 = 16;
const MAGIC: &[u8; 4] = b"SDBK";
const VERSION_WHOLE: u8 = 1;
const VERSION_FRAMED: u8 = 2;
const FLAG_ENCRYPTED: u8 = 1;
const CV_LEN: usize = 32;

/// A content address: 32 bytes of (keyed) BLAKE3.
pub type BlockHash = [u8; 32];

/// Why a stored block could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("block {hash} is corrupt: {reason}")]
    Corrupt { hash: String, reason: &'static str },
    #[error("block {hash} is encrypted but this workspace has no data key")]
    KeyMissing { hash: String },
    #[error("block {hash} could not be authenticated: corrupt, or encrypted under another key")]
    Authentication { hash: String },
}

/// Encodes and decodes blocks of one workspace.
#[derive(Clone)]
pub struct BlockCodec {
    encryption: Option<Encryption>,
    /// Plaintext blocks of a workspace with an object store of its own are addressed by a
    /// hash keyed by that store, so they never deduplicate against blocks of another store
    /// (block records are shared: a writer that found a block `available` would skip an
    /// upload to a bucket that does not hold it).
    plain_scope: Option<[u8; 32]>,
}

#[derive(Clone)]
struct Encryption {
    cipher: Arc<Cipher>,
    address_key: [u8; 32],
}

impl Encryption {
    /// Authenticates and decrypts `frames` of a block in place, held in `body` from the first
    /// of them on, with their tags from the frame table in `prefix` (after the header).
    fn open_frames(
        &self,
        hash: &BlockHash,
        layout: &Layout,
        prefix: &[u8],
        nonce: [u8; 12],
        frames: Range<usize>,
        body: &mut [u8],
    ) -> Result<(), FormatError> {
        let offset = frames.start * FRAME_LEN;
        for i in frames {
            let frame = layout.frame(i);
            self.cipher
                .open_detached(
                    frame_nonce(nonce, i),
                    &frame_aad(&prefix[..HEADER_LEN], hash, i),
                    layout.entry(prefix, i),
                    &mut body[frame.start - offset..frame.end - offset],
                )
                .map_err(|_| FormatError::Authentication { hash: hash_hex(hash) })?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for BlockCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCodec")
            .field("encrypted", &self.encryption.is_some())
            .finish()
    }
}

/// Hex form of a block hash, for keys and messages.
pub fn hash_hex(hash: &BlockHash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// The stored bytes to fetch for part of a block, from [`BlockCodec::range_plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    layout: Layout,
    frames: Range<usize>,
    /// The header and frame table.
    pub prefix: Range<u64>,
    /// The frames holding the wanted plaintext.
    pub body: Range<u64>,
}

impl RangePlan {
    /// Offset in the block's plaintext of the first byte [`BlockCodec::decode_range`] returns.
    pub fn plaintext_start(&self) -> u64 {
        (self.frames.start * FRAME_LEN) as u64
    }
}

/// Where the parts of a version 2 block lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    len: usize,
    frames: usize,
    /// Bytes per table entry (zero: no table).
    entry: usize,
}

impl Layout {
    fn new(len: usize, encrypted: bool) -> Layout {
        let frames = len.div_ceil(FRAME_LEN);
        if encrypted {
            // Even an empty block has a (tagged, empty) frame, so its header is authenticated.
            Layout {
                len,
                frames: frames.max(1),
                entry: TAG_LEN,
            }
        } else {
            Layout {
                len,
                frames,
                entry: if frames >= 2 { CV_LEN } else { 0 },
            }
        }
    }

    fn body_start(&self) -> usize {
        HEADER_LEN + self.frames * self.entry
    }

    fn stored_len(&self) -> usize {
        self.body_start() + self.len
    }

    /// Plaintext offsets of frame `i`.
    fn frame(&self, i: usize) -> Range<usize> {
        i * FRAME_LEN..((i + 1) * FRAME_LEN).min(self.len)
    }

    /// Table entry `i` within the stored prefix.
    fn entry<'a>(&self, prefix: &'a [u8], i: usize) -> &'a [u8] {
        &prefix[HEADER_LEN + i * self.entry..][..self.entry]
    }
}

/// A parsed header.
struct Header {
    version: u8,
    encrypted: bool,
    len: usize,
    nonce: [u8; 12],
}

impl BlockCodec {
    /// Plaintext blocks addressed by BLAKE3.
    pub fn plaintext() -> BlockCodec {
        BlockCodec {
            encryption: None,
            plain_scope: None,
        }
    }

    /// Plaintext blocks addressed by BLAKE3 keyed by `store` (the identity of the object
    /// store they live in), so their addresses are the store's own.
    pub fn plaintext_in(store: &str) -> BlockCodec {
        BlockCodec {
            encryption: None,
            plain_scope: Some(blake3::derive_key(
                "studiodrive 2026-12 store-scoped block address",
                store.as_bytes(),
            )),
        }
    }

    /// Encrypted blocks under `key`, addressed by keyed BLAKE3.
    pub fn encrypted(key: &DataKey) -> BlockCodec {
        BlockCodec {
            encryption: Some(Encryption {
                cipher: Arc::new(Cipher::new(key.bytes())),
                address_key: blake3::derive_key("studiodrive 2026-11 block address", key.bytes()),
            }),
            plain_scope: None,
        }
    }

    /// Whether blocks are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// The key of the address hash, if it is keyed.
    fn address_key(&self) -> Option<&[u8; 32]> {
        match &self.encryption {
            Some(e) => Some(&e.address_key),
            None => self.plain_scope.as_ref(),
        }
    }

    /// The content address of `plaintext`.
    pub fn address(&self, plaintext: &[u8]) -> BlockHash {
        match self.address_key() {
            None => *blake3::hash(plaintext).as_bytes(),
            Some(key) => *blake3::keyed_hash(key, plaintext).as_bytes(),
        }
    }

    /// The stored size of a block of `len` plaintext bytes.
    pub fn stored_len(&self, len: usize) -> usize {
        Layout::new(len, self.is_encrypted()).stored_len()
    }

    /// The stored form of `plaintext`, whose address is `hash`.
    pub fn encode(&self, hash: &BlockHash, plaintext: &[u8]) -> Bytes {
        let layout = Layout::new(plaintext.len(), self.is_encrypted());
        let mut nonce = [0u8; 12];
        if self.is_encrypted() {
            rand::rng().fill_bytes(&mut nonce);
        }
        let header = header(VERSION_FRAMED, self.is_encrypted(), plaintext.len(), nonce);
        let mut out = BytesMut::with_capacity(layout.stored_len());
        out.extend_from_slice(&header);
        out.resize(layout.body_start(), 0);
        out.extend_from_slice(plaintext);
        let (table, body) = out.split_at_mut(layout.body_start());
        let table = &mut table[HEADER_LEN..];
        for i in 0..layout.frames {
            let frame = layout.frame(i);
            let entry = &mut table[i * layout.entry..][..layout.entry];
            match &self.encryption {
                None if layout.entry == 0 => {}
                None => entry.copy_from_slice(&self.frame_cv(i, &plaintext[frame])),
                Some(e) => {
                    let aad = frame_aad(&header, hash, i);
                    entry.copy_from_slice(&e.cipher.seal(frame_nonce(nonce, i), &aad, &mut body[frame]));
                }
            }
        }
        out.freeze()
    }

    /// The version 1 form of `plaintext` (one payload verified whole), which this release
    /// no longer writes: tests use it to prove such blocks still read.
    #[doc(hidden)]
    pub fn encode_version1(&self, hash: &BlockHash, plaintext: &[u8]) -> Bytes {
        let mut nonce = [0u8; 12];
        if self.is_encrypted() {
            rand::rng().fill_bytes(&mut nonce);
        }
        let header = header(VERSION_WHOLE, self.is_encrypted(), plaintext.len(), nonce);
        let mut out = BytesMut::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        if let Some(e) = &self.encryption {
            let tag = e
                .cipher
                .seal(nonce, &whole_aad(&header, hash), &mut out[HEADER_LEN..]);
            out.extend_from_slice(&tag);
        }
        out.freeze()
    }

    /// The plaintext of stored block `hash`, verified against its address. Takes the object
    /// by value: a plaintext block is returned as a slice of it, and an encrypted one is
    /// decrypted in its buffer when nothing else holds it (no copy either way).
    pub fn decode(&self, hash: &BlockHash, stored: Bytes) -> Result<Bytes, FormatError> {
        self.open(hash, stored, true)
    }

    /// [`decode`](Self::decode) of an object from the node's block cache, which checked it
    /// against damage (CRC32C) and had verified it when it was cached: in a plaintext
    /// workspace the block is not hashed again. An encrypted workspace checks everything as
    /// always (decryption authenticates; and a plaintext object, which it never writes, must
    /// match its keyed address), so its blocks stay tamper-evident on the node's disk.
    pub fn decode_cached(&self, hash: &BlockHash, stored: Bytes) -> Result<Bytes, FormatError> {
        self.open(hash, stored, self.is_encrypted())
    }

    /// The stored bytes that hold plaintext `[start, end)` of a block of `len` bytes, when
    /// fetching them is worth it: `None` for a block of one frame, a block the range covers
    /// whole, or an empty or out-of-bounds range.
    pub fn range_plan(&self, len: u64, start: u64, end: u64) -> Option<RangePlan> {
        let layout = Layout::new(usize::try_from(len).ok()?, self.is_encrypted());
        if layout.frames < 2 || start >= end || end > len {
            return None;
        }
        let frames = start as usize / FRAME_LEN..(end as usize).div_ceil(FRAME_LEN);
        if frames.len() == layout.frames {
            return None;
        }
        let body_start = layout.body_start();
        Some(RangePlan {
            prefix: 0..body_start as u64,
            body: (body_start + frames.start * FRAME_LEN) as u64
                ..(body_start + (frames.end * FRAME_LEN).min(layout.len)) as u64,
            layout,
            frames,
        })
    }

    /// The verified plaintext of the frames of `plan`, from the stored `prefix` and `body`
    /// ranges it named. `Ok(None)` when the stored block is not the version 2 block the plan
    /// assumed (an older format, another length): the caller reads it whole instead.
    pub fn decode_range(
        &self,
        hash: &BlockHash,
        plan: &RangePlan,
        prefix: Bytes,
        body: Bytes,
    ) -> Result<Option<Bytes>, FormatError> {
        let corrupt = |reason| FormatError::Corrupt {
            hash: hash_hex(hash),
            reason,
        };
        let header = parse_header(hash, &prefix)?;
        let layout = plan.layout;
        if header.version != VERSION_FRAMED
            || header.encrypted != self.is_encrypted()
            || header.len != layout.len
        {
            return Ok(None);
        }
        if prefix.len() != layout.body_start() || body.len() as u64 != plan.body.end - plan.body.start {
            return Err(corrupt("truncated"));
        }
        match &self.encryption {
            None if header.nonce != [0; 12] => Err(corrupt("nonce on a plaintext block")),
            None => {
                self.check_frames(hash, &layout, &prefix, plan.frames.clone(), &body)?;
                Ok(Some(body))
            }
            Some(e) => {
                let mut body = BytesMut::from(body);
                e.open_frames(
                    hash,
                    &layout,
                    &prefix,
                    header.nonce,
                    plan.frames.clone(),
                    &mut body,
                )?;
                Ok(Some(body.freeze()))
            }
        }
    }

    fn open(&self, hash: &BlockHash, stored: Bytes, check_address: bool) -> Result<Bytes, FormatError> {
        let corrupt = |reason| FormatError::Corrupt {
            hash: hash_hex(hash),
            reason,
        };
        let header = parse_header(hash, &stored)?;
        let layout = match header.version {
            VERSION_WHOLE => Layout {
                len: header.len + if header.encrypted { TAG_LEN } else { 0 },
                frames: 1,
                entry: 0,
            },
            _ => Layout::new(header.len, header.encrypted),
        };
        let expected = layout.stored_len();
        if stored.len() != expected {
            return Err(corrupt(if stored.len() < expected {
                "truncated"
            } else {
                "trailing bytes"
            }));
        }
        match (header.encrypted, &self.encryption) {
            (false, _) if header.nonce != [0; 12] => Err(corrupt("nonce on a plaintext block")),
            (false, _) => {
                let plaintext = stored.slice(layout.body_start()..);
                if check_address && layout.entry == 0 && &self.address(&plaintext) != hash {
                    return Err(corrupt("content does not match its address"));
                }
                if check_address && layout.entry != 0 {
                    self.check_frames(hash, &layout, &stored, 0..layout.frames, &plaintext)?;
                }
                Ok(plaintext)
            }
            (true, None) => Err(FormatError::KeyMissing { hash: hash_hex(hash) }),
            (true, Some(e)) => {
                let unauthentic = |_| FormatError::Authentication { hash: hash_hex(hash) };
                let header_bytes: [u8; HEADER_LEN] = stored[..HEADER_LEN].try_into().expect("a header");
                if header.version == VERSION_WHOLE {
                    // Move the object's only handle into the buffer (a slice would be a
                    // second handle and force a copy).
                    let mut body = stored;
                    body.advance(HEADER_LEN);
                    let mut body = BytesMut::from(body);
                    let plain_len = e
                        .cipher
                        .open(header.nonce, &whole_aad(&header_bytes, hash), &mut body[..])
                        .map_err(unauthentic)?;
                    body.truncate(plain_len);
                    return Ok(body.freeze());
                }
                let mut object = BytesMut::from(stored);
                let (prefix, body) = object.split_at_mut(layout.body_start());
                e.open_frames(hash, &layout, prefix, header.nonce, 0..layout.frames, body)?;
                let mut object = object.freeze();
                object.advance(layout.body_start());
                Ok(object)
            }
        }
    }

    /// Checks plaintext `frames` of a block, held in `body` from the first of them on, against
    /// the frame table in `prefix`, and the table against the address `hash`.
    fn check_frames(
        &self,
        hash: &BlockHash,
        layout: &Layout,
        prefix: &[u8],
        frames: Range<usize>,
        body: &[u8],
    ) -> Result<(), FormatError> {
        let corrupt = |reason| FormatError::Corrupt {
            hash: hash_hex(hash),
            reason,
        };
        let table: Vec<ChainingValue> = (0..layout.frames)
            .map(|i| layout.entry(prefix, i).try_into().expect("32-byte entries"))
            .collect();
        if &self.tree_root(&table, layout.len) != hash {
            return Err(corrupt("frame table does not match its address"));
        }
        let offset = frames.start * FRAME_LEN;
        for i in frames {
            let frame = layout.frame(i);
            if self.frame_cv(i, &body[frame.start - offset..frame.end - offset]) != table[i] {
                return Err(corrupt("frame does not match its table entry"));
            }
        }
        Ok(())
    }

    /// The BLAKE3 chaining value of frame `i`, a subtree of its block's hash tree.
    fn frame_cv(&self, i: usize, frame: &[u8]) -> ChainingValue {
        let mut hasher = match self.address_key() {
            None => blake3::Hasher::new(),
            Some(key) => blake3::Hasher::new_keyed(key),
        };
        hasher.set_input_offset((i * FRAME_LEN) as u64);
        hasher.update(frame);
        hasher.finalize_non_root()
    }

    /// The address of a block of `len` bytes from the chaining values of its (at least two)
    /// frames: BLAKE3 splits an input at the largest power-of-two number of chunks that
    /// leaves something on the right, which for inputs over one frame is a frame boundary.
    fn tree_root(&self, cvs: &[ChainingValue], len: usize) -> BlockHash {
        let (left, right) = self.children(cvs, len);
        *merge_subtrees_root(&left, &right, self.tree_mode()).as_bytes()
    }

    fn subtree(&self, cvs: &[ChainingValue], len: usize) -> ChainingValue {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let (left, right) = self.children(cvs, len);
        merge_subtrees_non_root(&left, &right, self.tree_mode())
    }

    fn children(&self, cvs: &[ChainingValue], len: usize) -> (ChainingValue, ChainingValue) {
        let left_len = left_subtree_len(len as u64) as usize;
        let split = left_len / FRAME_LEN;
        (
            self.subtree(&cvs[..split], left_len),
            self.subtree(&cvs[split..], len - left_len),
        )
    }

    fn tree_mode(&self) -> Mode<'_> {
        match self.address_key() {
            None => Mode::Hash,
            Some(key) => Mode::KeyedHash(key),
        }
    }
}

fn header(version: u8, encrypted: bool, len: usize, nonce: [u8; 12]) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("blocks are smaller than 4 GiB");
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = version;
    header[5] = if encrypted { FLAG_ENCRYPTED } else { 0 };
    if version == VERSION_FRAMED {
        header[6] = FRAME_SHIFT;
    }
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12..].copy_from_slice(&nonce);
    header
}

fn parse_header(hash: &BlockHash, stored: &[u8]) -> Result<Header, FormatError> {
    let corrupt = |reason| FormatError::Corrupt {
        hash: hash_hex(hash),
        reason,
    };
    if stored.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    if &stored[..4] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = stored[4];
    let layout_byte = match version {
        VERSION_WHOLE => 0,
        VERSION_FRAMED => FRAME_SHIFT,
        _ => return Err(corrupt("unknown format version")),
    };
    if stored[6] != layout_byte {
        return Err(corrupt("unknown frame length"));
    }
    let flags = stored[5];
    if flags & !FLAG_ENCRYPTED != 0 || stored[7] != 0 {
        return Err(corrupt("unknown flags"));
    }
    Ok(Header {
        version,
        encrypted: flags & FLAG_ENCRYPTED != 0,
        len: u32::from_le_bytes(stored[8..12].try_into().expect("4 bytes")) as usize,
        nonce: stored[12..24].try_into().expect("12 bytes"),
    })
}

/// The nonce of frame `i`: the block's random nonce with `i` folded into its last four bytes
/// (frames of one block never share a nonce; blocks draw theirs at random).
fn frame_nonce(nonce: [u8; 12], i: usize) -> [u8; 12] {
    let mut out = nonce;
    let index = u32::try_from(i)
        .expect("a block has fewer than 2^32 frames")
        .to_be_bytes();
    for (b, x) in out[8..].iter_mut().zip(index) {
        *b ^= x;
    }
    out
}

fn frame_aad(header: &[u8], hash: &BlockHash, i: usize) -> [u8; HEADER_LEN + 32 + 4] {
    let mut aad = [0u8; HEADER_LEN + 32 + 4];
    aad[..HEADER_LEN + 32].copy_from_slice(&whole_aad(header, hash));
    aad[HEADER_LEN + 32..].copy_from_slice(&(i as u32).to_le_bytes());
    aad
}

fn whole_aad(header: &[u8], hash: &BlockHash) -> [u8; HEADER_LEN + 32] {
    let mut aad = [0u8; HEADER_LEN + 32];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..].copy_from_slice(hash);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs() -> [BlockCodec; 3] {
        [
            BlockCodec::plaintext(),
            BlockCodec::plaintext_in("s3://bucket/prefix"),
            BlockCodec::encrypted(&DataKey::generate()),
        ]
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Sizes around chunk, frame and block boundaries.
    const SIZES: [usize; 11] = [
        0,
        1,
        4095,
        4096,
        65535,
        65536,
        65537,
        131072,
        200_000,
        1 << 20,
        4 << 20,
    ];

    #[test]
    fn round_trip_sizes_in_both_formats() {
        for codec in codecs() {
            for len in SIZES {
                let data = pattern(len);
                let hash = codec.address(&data);
                let stored = codec.encode(&hash, &data);
                assert_eq!(stored[4], VERSION_FRAMED);
                assert_eq!(stored.len(), codec.stored_len(len));
                assert_eq!(
                    codec.decode(&hash, stored.clone()).unwrap(),
                    data,
                    "v2, {len} bytes"
                );
                let old = codec.encode_version1(&hash, &data);
                assert_eq!(old[4], VERSION_WHOLE);
                assert_eq!(codec.decode(&hash, old).unwrap(), data, "v1, {len} bytes");
            }
        }
    }

    /// Reads `[start, end)` of a stored block through a plan, as a ranged fetch would.
    fn read_range(
        codec: &BlockCodec,
        hash: &BlockHash,
        stored: &Bytes,
        len: usize,
        start: usize,
        end: usize,
    ) -> Result<Option<Vec<u8>>, FormatError> {
        let plan = codec
            .range_plan(len as u64, start as u64, end as u64)
            .expect("a plan");
        let cut = |r: &Range<u64>| stored.slice(r.start as usize..(r.end as usize).min(stored.len()));
        let frames = codec.decode_range(hash, &plan, cut(&plan.prefix), cut(&plan.body))?;
        Ok(frames.map(|f| {
            let from = start - plan.plaintext_start() as usize;
            f[from..from + (end - start)].to_vec()
        }))
    }

    #[test]
    fn ranged_reads_of_every_offset_class() {
        const F: usize = FRAME_LEN;
        for codec in codecs() {
            for len in [F + 1, 2 * F, 200_000, 4 << 20, (4 << 20) - 7] {
                let data = pattern(len);
                let hash = codec.address(&data);
                let stored = codec.encode(&hash, &data);
                let last = len - 1;
                let ranges = [
                    (0, 1),
                    (0, 4096),
                    (F - 1, F + 1),      // across a frame boundary
                    (F, F + 4096),       // starting on one
                    (F - 4096, F),       // ending on one
                    (last / F * F, len), // the last (maybe partial) frame whole
                    (last, len),         // the block's last byte
                    (len - 4096.min(len), len),
                    (1, len - 1),
                ];
                for (start, end) in ranges {
                    let end = end.min(len);
                    if codec.range_plan(len as u64, start as u64, end as u64).is_none() {
                        // Only a range covering every frame goes whole.
                        assert_eq!((start / F, end.div_ceil(F)), (0, len.div_ceil(F)));
                        continue;
                    }
                    let got = read_range(&codec, &hash, &stored, len, start, end)
                        .unwrap()
                        .expect("v2");
                    assert_eq!(got, &data[start..end], "{len} bytes, range {start}..{end}");
                }
                // A version 1 block answers "read me whole".
                let old = codec.encode_version1(&hash, &data);
                assert_eq!(read_range(&codec, &hash, &old, len, 0, 1).unwrap(), None);
            }
        }
    }

    #[test]
    fn no_plan_for_single_frame_blocks_or_bad_ranges() {
        let codec = BlockCodec::plaintext();
        assert_eq!(codec.range_plan(FRAME_LEN as u64, 0, 10), None);
        assert_eq!(codec.range_plan(1 << 20, 10, 10), None);
        assert_eq!(codec.range_plan(1 << 20, 0, (1 << 20) + 1), None);
        assert_eq!(codec.range_plan(1 << 20, 0, 1 << 20), None);
    }

    #[test]
    fn a_damaged_frame_fails_only_the_reads_that_touch_it() {
        const F: usize = FRAME_LEN;
        for codec in codecs() {
            let len = 4 * F + 100;
            let data = pattern(len);
            let hash = codec.address(&data);
            let stored = codec.encode(&hash, &data);
            let body_start = codec.stored_len(len) - len;
            let mut bad = stored.to_vec();
            bad[body_start + 2 * F + 17] ^= 0x40; // inside frame 2
            let bad = Bytes::from(bad);
            assert!(
                codec.decode(&hash, bad.clone()).is_err(),
                "a whole read touches it"
            );
            assert!(read_range(&codec, &hash, &bad, len, 2 * F, 2 * F + 100).is_err());
            assert!(read_range(&codec, &hash, &bad, len, F, 3 * F).is_err());
            for (start, end) in [(0, 100), (F, 2 * F), (3 * F, 4 * F + 100)] {
                assert_eq!(
                    read_range(&codec, &hash, &bad, len, start, end).unwrap().unwrap(),
                    &data[start..end]
                );
            }
            // A damaged table entry fails every ranged read (the table no longer matches
            // the address, or that frame's tag), and the whole read.
            let mut bad_table = stored.to_vec();
            bad_table[HEADER_LEN + 3] ^= 1;
            let bad_table = Bytes::from(bad_table);
            assert!(codec.decode(&hash, bad_table.clone()).is_err());
            assert!(read_range(&codec, &hash, &bad_table, len, 0, 10).is_err());
            // A header claiming another length is read whole (and that read fails).
            let mut other_len = stored.to_vec();
            other_len[8] ^= 1;
            assert_eq!(
                read_range(&codec, &hash, &Bytes::from(other_len.clone()), len, 0, 10).unwrap(),
                None
            );
            assert!(codec.decode(&hash, Bytes::from(other_len)).is_err());
        }
    }

    #[test]
    fn encrypted_blocks_hide_plaintext_and_addresses_differ() {
        let data = b"KNOWN-PLAINTEXT-PATTERN ".repeat(1000);
        let a = BlockCodec::encrypted(&DataKey::generate());
        let b = BlockCodec::encrypted(&DataKey::generate());
        assert_ne!(a.address(&data), b.address(&data));
        assert_ne!(a.address(&data), BlockCodec::plaintext().address(&data));
        let stored = a.encode(&a.address(&data), &data);
        assert!(!stored.windows(23).any(|w| w == b"KNOWN-PLAINTEXT-PATTERN"));
        // Same plaintext, fresh nonce: different ciphertext.
        assert_ne!(stored, a.encode(&a.address(&data), &data));
    }

    #[test]
    fn every_damage_is_detected() {
        for codec in codecs() {
            let data = vec![7u8; 200_000];
            let hash = codec.address(&data);
            for stored in [codec.encode(&hash, &data), codec.encode_version1(&hash, &data)] {
                for pos in [
                    0,
                    4,
                    5,
                    6,
                    7,
                    9,
                    13,
                    HEADER_LEN,
                    HEADER_LEN + 5000,
                    HEADER_LEN + 150_000,
                    stored.len() - 1,
                ] {
                    let mut bad = stored.to_vec();
                    bad[pos] ^= 0x40;
                    assert!(
                        codec.decode(&hash, bad.into()).is_err(),
                        "flip at {pos} went unnoticed"
                    );
                }
                assert!(codec.decode(&hash, stored.slice(..stored.len() - 1)).is_err());
                assert!(codec.decode(&hash, stored.slice(..10)).is_err());
                let mut other = hash;
                other[0] ^= 1;
                assert!(
                    codec.decode(&other, stored.clone()).is_err(),
                    "object under the wrong address"
                );
            }
        }
    }

    #[test]
    fn wrong_key_is_an_authentication_error() {
        let data = vec![1u8; 100];
        let a = BlockCodec::encrypted(&DataKey::generate());
        let stored = a.encode(&a.address(&data), &data);
        let b = BlockCodec::encrypted(&DataKey::generate());
        assert!(matches!(
            b.decode(&a.address(&data), stored.clone()),
            Err(FormatError::Authentication { .. })
        ));
        assert!(matches!(
            BlockCodec::plaintext().decode(&a.address(&data), stored),
            Err(FormatError::KeyMissing { .. })
        ));
    }
}
