//! AES-256-GCM, the one cipher of the data path (block payloads and wrapped data keys), from
//! aws-lc-rs: the library that already backs rustls here, and markedly faster per byte than
//! a portable implementation (see docs/benchmarks.md, block data path).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Length of the authentication tag.
pub(crate) const TAG_LEN: usize = 16;

/// A ciphertext, tag or associated data that does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unauthentic;

/// An AES-256-GCM key.
pub(crate) struct Cipher(LessSafeKey);

impl Cipher {
    pub(crate) fn new(key: &[u8; 32]) -> Cipher {
        Cipher(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256"),
        ))
    }

    /// Encrypts `in_out` in place and returns the tag. Each nonce must be used once per key:
    /// callers draw them at random (96 bits).
    pub(crate) fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .expect("AES-GCM seals any block size");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Checks and decrypts `in_out` (ciphertext followed by the tag) in place; returns the
    /// plaintext length.
    pub(crate) fn open(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> Result<usize, Unauthentic> {
        self.0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map(|plain| plain.len())
            .map_err(|_| Unauthentic)
    }

    /// Checks and decrypts `in_out` (ciphertext only) in place against a `tag` kept apart.
    pub(crate) fn open_detached(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        tag: &[u8],
        in_out: &mut [u8],
    ) -> Result<(), Unauthentic> {
        self.0
            .open_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), tag, in_out)
            .map(|_| ())
            .map_err(|_| Unauthentic)
    }
}
