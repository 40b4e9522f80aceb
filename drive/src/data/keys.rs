//! Workspace data keys and the key-encryption key (KEK) that wraps them.
//!
//! Each encrypted workspace has its own random 256-bit data key. Only its wrapped form is
//! stored (in the workspace row): AES-256-GCM under the KEK, with the KEK's fingerprint in
//! front so that a wrong KEK is reported as such rather than as a corrupt key. The KEK comes
//! from a key file or the environment (a Kubernetes Secret mounted by the operator).

use std::fmt;
use std::path::Path;

use crate::data::aead::{Cipher, TAG_LEN};
use rand::RngCore as _;

/// Environment variable holding a KEK as 64 hex digits (used when no key file is given).
pub const KEK_ENV: &str = "STUDIODRIVE_ENCRYPTION_KEY";

const WRAP_MAGIC: &[u8; 4] = b"SDKW";
const WRAP_VERSION: u8 = 1;
const FINGERPRINT_LEN: usize = 8;
const WRAPPED_LEN: usize = 4 + 1 + FINGERPRINT_LEN + 12 + 32 + 16;
const SEAL_MAGIC: &[u8; 4] = b"SDSS";
const SEAL_VERSION: u8 = 1;
const SEAL_HEADER_LEN: usize = 4 + 1 + FINGERPRINT_LEN + 12;
/// The largest secret [`Kek::seal`] takes (a NATS credentials file is about 2 KiB).
pub const MAX_SEALED_SECRET: usize = 64 << 10;

/// A key problem: unreadable key material, a wrong KEK, a damaged wrapped key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("the key-encryption key does not match the one this workspace's data key was wrapped with")]
    WrongKek,
    #[error("the wrapped data key is damaged")]
    Damaged,
    #[error("the sealed secret was sealed with another key")]
    SealedWithOtherKey,
    #[error("the sealed secret is damaged or belongs to something else")]
    SealDamaged,
    #[error("workspace {0} is encrypted: a key-encryption key is required")]
    KekRequired(String),
}

/// A 256-bit key-encryption key.
#[derive(Clone)]
pub struct Kek([u8; 32]);

/// A workspace's 256-bit data key.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", hex(&self.fingerprint()))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    // Digits only: `from_str_radix` alone would take "+f" as a byte.
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Kek {
    /// A KEK from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Kek {
        Kek(bytes)
    }

    /// A new random KEK (for tests and `keygen`).
    pub fn generate() -> Kek {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Kek(k)
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Kek, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Kek::parse(&bytes).map_err(|e| err(e.to_string()))
    }

    /// Parses key material (a key file, a Secret's value): exactly 32 raw bytes, or 64 hex
    /// digits (surrounding whitespace ignored). The error describes the shape, never the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Kek, KeyError> {
        if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
            return Ok(Kek(raw));
        }
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| parse_hex(t.trim()))
            .map(Kek)
            .ok_or_else(|| {
                KeyError::Invalid(format!(
                    "expected 32 raw bytes or 64 hex digits, found {} bytes",
                    bytes.len()
                ))
            })
    }

    /// The KEK from [`KEK_ENV`], if set.
    pub fn from_env() -> Result<Option<Kek>, KeyError> {
        match std::env::var(KEK_ENV) {
            Ok(v) => parse_hex(v.trim())
                .map(|k| Some(Kek(k)))
                .ok_or_else(|| KeyError::Invalid(format!("{KEK_ENV} must hold 64 hex digits"))),
            Err(_) => Ok(None),
        }
    }

    /// The KEK as 64 hex digits (what a key file holds).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A public fingerprint identifying this KEK (not usable to derive it).
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let full = blake3::derive_key("studiodrive 2026-11 kek fingerprint", &self.0);
        full[..FINGERPRINT_LEN].try_into().expect("fingerprint length")
    }

    fn cipher(&self) -> Cipher {
        Cipher::new(&self.0)
    }

    /// Seals `secret` (a credential kept in the metadata store) for `context`, the identity
    /// of what it belongs to (an event sink's id): only this key opens it, and only for that
    /// context, so a sealed value copied to another row does not open there. The output is
    /// magic, version, this key's fingerprint, nonce, ciphertext and tag.
    pub fn seal(&self, context: &[u8], secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        if secret.is_empty() || secret.len() > MAX_SEALED_SECRET {
            return Err(KeyError::Invalid(format!(
                "a secret to seal holds 1 to {MAX_SEALED_SECRET} bytes, not {}",
                secret.len()
            )));
        }
        let mut out = Vec::with_capacity(SEAL_HEADER_LEN + secret.len() + TAG_LEN);
        out.extend_from_slice(SEAL_MAGIC);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&self.fingerprint());
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let aad = [&out[..], context].concat();
        let mut body = secret.to_vec();
        let tag = self.cipher().seal(nonce, &aad, &mut body);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value made by [`Kek::seal`] for the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() <= SEAL_HEADER_LEN + TAG_LEN
            || &sealed[..4] != SEAL_MAGIC
            || sealed[4] != SEAL_VERSION
        {
            return Err(KeyError::SealDamaged);
        }
        if sealed[5..5 + FINGERPRINT_LEN] != self.fingerprint() {
            return Err(KeyError::SealedWithOtherKey);
        }
        let nonce: [u8; 12] = sealed[5 + FINGERPRINT_LEN..SEAL_HEADER_LEN]
            .try_into()
            .expect("nonce length");
        let aad = [&sealed[..SEAL_HEADER_LEN], context].concat();
        let mut body = sealed[SEAL_HEADER_LEN..].to_vec();
        let len = self
            .cipher()
            .open(nonce, &aad, &mut body)
            .map_err(|_| KeyError::SealDamaged)?;
        body.truncate(len);
        Ok(body)
    }
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> DataKey {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        DataKey(k)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key wrapped under `kek`: magic, version, KEK fingerprint, nonce, ciphertext, tag.
    pub fn wrap(&self, kek: &Kek) -> Vec<u8> {
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(WRAP_MAGIC);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&kek.fingerprint());
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        let mut body = self.0;
        let tag = kek.cipher().seal(nonce, &out[..header_len], &mut body);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        out
    }

    /// Unwraps a key made by [`DataKey::wrap`].
    pub fn unwrap(wrapped: &[u8], kek: &Kek) -> Result<DataKey, KeyError> {
        if wrapped.len() != WRAPPED_LEN || &wrapped[..4] != WRAP_MAGIC || wrapped[4] != WRAP_VERSION {
            return Err(KeyError::Damaged);
        }
        let header_len = 4 + 1 + FINGERPRINT_LEN + 12;
        if wrapped[5..5 + FINGERPRINT_LEN] != kek.fingerprint() {
            return Err(KeyError::WrongKek);
        }
        let nonce: [u8; 12] = wrapped[5 + FINGERPRINT_LEN..header_len]
            .try_into()
            .expect("nonce length");
        let mut sealed: [u8; 32 + TAG_LEN] =
            wrapped[header_len..].try_into().map_err(|_| KeyError::Damaged)?;
        kek.cipher()
            .open(nonce, &wrapped[..header_len], &mut sealed)
            .map_err(|_| KeyError::Damaged)?;
        let body: [u8; 32] = sealed[..32].try_into().expect("key length");
        Ok(DataKey(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let kek = Kek::generate();
        let sealed = kek.seal(b"studio/hook", b"whsec_c2VjcmV0").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"whsec_"), "sealed in clear");
        assert_eq!(kek.open(b"studio/hook", &sealed).unwrap(), b"whsec_c2VjcmV0");
        assert_ne!(
            kek.seal(b"studio/hook", b"whsec_c2VjcmV0").unwrap(),
            sealed,
            "one nonce per seal"
        );
        assert!(matches!(
            kek.open(b"studio/other", &sealed),
            Err(KeyError::SealDamaged)
        ));
        assert!(matches!(
            Kek::generate().open(b"studio/hook", &sealed),
            Err(KeyError::SealedWithOtherKey)
        ));
        for i in [0, 4, SEAL_HEADER_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(kek.open(b"studio/hook", &bad).is_err(), "byte {i} flipped");
        }
        assert!(
            kek.open(b"studio/hook", &sealed[..SEAL_HEADER_LEN + TAG_LEN])
                .is_err()
        );
        assert!(kek.seal(b"x", b"").is_err());
        assert!(kek.seal(b"x", &vec![1u8; MAX_SEALED_SECRET + 1]).is_err());
    }

    #[test]
    fn wrap_round_trip_and_wrong_kek() {
        let kek = Kek::generate();
        let key = DataKey::generate();
        let wrapped = key.wrap(&kek);
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert_eq!(DataKey::unwrap(&wrapped, &kek).unwrap().0, key.0);
        assert!(matches!(
            DataKey::unwrap(&wrapped, &Kek::generate()),
            Err(KeyError::WrongKek)
        ));
        let mut damaged = wrapped.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(matches!(DataKey::unwrap(&damaged, &kek), Err(KeyError::Damaged)));
        assert!(matches!(
            DataKey::unwrap(&wrapped[1..], &kek),
            Err(KeyError::Damaged)
        ));
    }

    #[test]
    fn key_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate();
        let hex_file = dir.path().join("hex");
        std::fs::write(&hex_file, format!("{}\n", kek.to_hex())).unwrap();
        assert_eq!(Kek::from_file(&hex_file).unwrap().0, kek.0);
        let raw_file = dir.path().join("raw");
        std::fs::write(&raw_file, kek.0).unwrap();
        assert_eq!(Kek::from_file(&raw_file).unwrap().0, kek.0);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a key").unwrap();
        let err = Kek::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        assert!(Kek::from_file(&dir.path().join("missing")).is_err());
    }
}
