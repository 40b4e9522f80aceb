//! The stored form of a block, and its content address.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SDBK"
//!      4     1  format version (1)
//!      5     1  flags: bit 0 = encrypted (AES-256-GCM)
//!      6     2  reserved, zero
//!      8     4  plaintext length, little endian
//!     12    12  nonce (random per block; zero when not encrypted)
//!     24     n  payload: plaintext, or ciphertext followed by the 16-byte GCM tag
//! ```
//!
//! The address of a block is BLAKE3 of its plaintext; in an encrypted workspace it is keyed
//! BLAKE3 under a key derived from the workspace data key, so addresses reveal nothing about
//! content across workspaces. Encryption authenticates the header and the address as
//! associated data, so an object swapped for another, truncated or altered fails to decode.
//! Every decode is verified, so a corrupted object is an error, never wrong bytes: a
//! plaintext block is re-hashed and compared with its address; an encrypted block is checked
//! by its GCM tag, which covers the ciphertext, the header and the address (re-hashing it as
//! well would double the CPU cost of every warm read and add no assurance: without the key
//! nobody can make a tag verify).

use std::sync::Arc;

use bytes::{Buf as _, Bytes, BytesMut};
use rand::RngCore as _;

use crate::data::aead::{Cipher, TAG_LEN};
use crate::data::keys::DataKey;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"SDBK";
const VERSION: u8 = 1;
const FLAG_ENCRYPTED: u8 = 1;

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

    /// The content address of `plaintext`.
    pub fn address(&self, plaintext: &[u8]) -> BlockHash {
        match &self.encryption {
            None => match &self.plain_scope {
                None => *blake3::hash(plaintext).as_bytes(),
                Some(scope) => *blake3::keyed_hash(scope, plaintext).as_bytes(),
            },
            Some(e) => *blake3::keyed_hash(&e.address_key, plaintext).as_bytes(),
        }
    }

    /// The stored size of a block of `len` plaintext bytes.
    pub fn stored_len(&self, len: usize) -> usize {
        HEADER_LEN + len + if self.is_encrypted() { TAG_LEN } else { 0 }
    }

    /// The stored form of `plaintext`, whose address is `hash`.
    pub fn encode(&self, hash: &BlockHash, plaintext: &[u8]) -> Bytes {
        let len = u32::try_from(plaintext.len()).expect("blocks are smaller than 4 GiB");
        let mut out = BytesMut::with_capacity(self.stored_len(plaintext.len()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        let mut nonce = [0u8; 12];
        match &self.encryption {
            None => {
                out.extend_from_slice(&nonce);
                out.extend_from_slice(plaintext);
            }
            Some(e) => {
                out[5] = FLAG_ENCRYPTED;
                rand::rng().fill_bytes(&mut nonce);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(plaintext);
                let aad = associated_data(&out[..HEADER_LEN], hash);
                let tag = e.cipher.seal(nonce, &aad, &mut out[HEADER_LEN..]);
                out.extend_from_slice(&tag);
            }
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

    fn open(&self, hash: &BlockHash, stored: Bytes, check_address: bool) -> Result<Bytes, FormatError> {
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
        if stored[4] != VERSION {
            return Err(corrupt("unknown format version"));
        }
        let flags = stored[5];
        if flags & !FLAG_ENCRYPTED != 0 || stored[6..8] != [0, 0] {
            return Err(corrupt("unknown flags"));
        }
        let len = u32::from_le_bytes(stored[8..12].try_into().expect("4 bytes")) as usize;
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        let expected = HEADER_LEN + len + if encrypted { TAG_LEN } else { 0 };
        if stored.len() != expected {
            return Err(corrupt(if stored.len() < expected {
                "truncated"
            } else {
                "trailing bytes"
            }));
        }
        match (encrypted, &self.encryption) {
            (false, _) if stored[12..24].iter().any(|&b| b != 0) => {
                Err(corrupt("nonce on a plaintext block"))
            }
            (false, _) => {
                let plaintext = stored.slice(HEADER_LEN..);
                if check_address && &self.address(&plaintext) != hash {
                    return Err(corrupt("content does not match its address"));
                }
                Ok(plaintext)
            }
            (true, None) => Err(FormatError::KeyMissing { hash: hash_hex(hash) }),
            (true, Some(e)) => {
                let nonce: [u8; 12] = stored[12..24].try_into().expect("12 bytes");
                let aad = associated_data(&stored[..HEADER_LEN], hash);
                // Move the object's only handle into the buffer (a slice would be a second
                // handle and force a copy).
                let mut body = stored;
                body.advance(HEADER_LEN);
                let mut body = BytesMut::from(body);
                let plain_len = e
                    .cipher
                    .open(nonce, &aad, &mut body[..])
                    .map_err(|_| FormatError::Authentication { hash: hash_hex(hash) })?;
                body.truncate(plain_len);
                Ok(body.freeze())
            }
        }
    }
}

fn associated_data(header: &[u8], hash: &BlockHash) -> [u8; HEADER_LEN + 32] {
    let mut aad = [0u8; HEADER_LEN + 32];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..].copy_from_slice(hash);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs() -> [BlockCodec; 2] {
        [
            BlockCodec::plaintext(),
            BlockCodec::encrypted(&DataKey::generate()),
        ]
    }

    #[test]
    fn round_trip_sizes() {
        for codec in codecs() {
            for len in [0usize, 1, 4095, 4096, 4097, 1 << 20] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let hash = codec.address(&data);
                let stored = codec.encode(&hash, &data);
                assert_eq!(stored.len(), codec.stored_len(len));
                assert_eq!(codec.decode(&hash, stored.clone()).unwrap(), data);
            }
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
            let data = vec![7u8; 10_000];
            let hash = codec.address(&data);
            let stored = codec.encode(&hash, &data);
            for pos in [0, 5, 9, 13, HEADER_LEN, HEADER_LEN + 5000, stored.len() - 1] {
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
