//! Key-encryption keys (KEKs) of encrypted Workspaces, read from the Kubernetes Secret that
//! `spec.encryption.keySecretRef` names (a Secret in the Workspace's namespace; the key in it
//! is `keySecretRef.key`). The value is the KEK as 32 raw bytes or as 64 hex digits
//! (surrounding whitespace ignored), the same formats as the mount's `--encryption-key-file`.
//!
//! The port [`KeySource`] has two implementations: [`SecretKeySource`] (a GET of the Secret
//! through the kube client) and [`StaticKeySource`] (a map, for the store-only tests).
//! Parsing ([`parse_kek`]) is pure.
//!
//! Key material never leaves this module except as a [`Kek`] (whose `Debug` prints only its
//! public fingerprint): errors, conditions and events name the Secret and the key, never the
//! value, and no function here logs.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use drive::data::Kek;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

/// The bytes stored under a key of a Secret. `Debug` shows only the length.
pub struct KeyMaterial(Vec<u8>);

impl KeyMaterial {
    /// Wraps raw bytes read from a Secret.
    pub fn new(bytes: Vec<u8>) -> KeyMaterial {
        KeyMaterial(bytes)
    }

    /// The bytes, for [`parse_kek`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial(<{} bytes redacted>)", self.0.len())
    }
}

/// What a lookup of a Secret key found.
#[derive(Debug)]
pub enum SecretLookup {
    /// The Secret does not exist.
    SecretMissing,
    /// The Secret exists but has no such key.
    KeyMissing,
    /// The value of the key, and the Secret's labels.
    Found(KeyMaterial, BTreeMap<String, String>),
}

/// The Secret could not be read (forbidden, API server unreachable, ...). Retryable; the
/// message carries the API's status, never Secret content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading Secret {namespace}/{name}: {reason}")]
pub struct SecretReadError {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Where the reconciler reads KEKs from.
pub trait KeySource: Send + Sync {
    /// The value of `key` in Secret `namespace/name`.
    fn lookup(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<SecretLookup, SecretReadError>> + Send;
}

/// A borrowed key source is one too (tests lend theirs to the store-only sync).
impl<K: KeySource + ?Sized> KeySource for &K {
    fn lookup(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<SecretLookup, SecretReadError>> + Send {
        (**self).lookup(namespace, name, key)
    }
}

/// Why a Secret value is not a KEK. The message describes the shape, never the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKek {
    #[error("expected 32 raw bytes or 64 hex digits, found {0} bytes")]
    Format(usize),
    #[error("the key is all zero bytes (a placeholder, not a key)")]
    AllZero,
}

/// Parses a KEK: exactly 32 raw bytes, or 64 hex digits with optional surrounding whitespace.
/// An all-zero key is refused: it is what an unfilled template Secret holds.
pub fn parse_kek(bytes: &[u8]) -> Result<Kek, InvalidKek> {
    // The mount's parser (key files, CSI publish secrets), so the formats cannot drift apart.
    let kek = Kek::parse(bytes).map_err(|_| InvalidKek::Format(bytes.len()))?;
    if kek.fingerprint() == Kek::from_bytes([0u8; 32]).fingerprint() {
        return Err(InvalidKek::AllZero);
    }
    Ok(kek)
}

/// Reads Secrets through the Kubernetes API (needs `get` on `secrets` in the Workspaces'
/// namespaces). No watch: the Workspace reconciler looks again every 30 s while it waits for a
/// Secret.
#[derive(Clone)]
pub struct SecretKeySource {
    client: kube::Client,
}

impl SecretKeySource {
    /// A source over `client`.
    pub fn new(client: kube::Client) -> SecretKeySource {
        SecretKeySource { client }
    }
}

/// A description of a failed Secret GET that cannot carry Secret content: the API's status
/// for API errors; for a body that did not decode, only that it did not.
fn read_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        kube::Error::SerdeError(_) => "the API server's response could not be decoded".to_string(),
        other => other.to_string(),
    }
}

impl KeySource for SecretKeySource {
    async fn lookup(&self, namespace: &str, name: &str, key: &str) -> Result<SecretLookup, SecretReadError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api.get_opt(name).await.map_err(|e| SecretReadError {
            namespace: namespace.to_string(),
            name: name.to_string(),
            reason: read_reason(&e),
        })?;
        let Some(mut secret) = secret else {
            return Ok(SecretLookup::SecretMissing);
        };
        // `stringData` is write-only: the API server folds it into `data`.
        Ok(match secret.data.as_mut().and_then(|data| data.remove(key)) {
            Some(value) => {
                SecretLookup::Found(KeyMaterial(value.0), secret.metadata.labels.unwrap_or_default())
            }
            None => SecretLookup::KeyMissing,
        })
    }
}

/// Secrets held in memory: `(namespace, name) -> key -> bytes`. For tests that drive the
/// store-only reconcile without a Kubernetes API.
#[derive(Default)]
pub struct StaticKeySource {
    secrets: BTreeMap<(String, String), StaticSecret>,
}

#[derive(Default)]
struct StaticSecret {
    data: BTreeMap<String, Vec<u8>>,
    labels: BTreeMap<String, String>,
}

impl StaticKeySource {
    /// No Secrets at all.
    pub const fn new() -> StaticKeySource {
        StaticKeySource {
            secrets: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) `key` of Secret `namespace/name`.
    pub fn with(
        mut self,
        namespace: &str,
        name: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> StaticKeySource {
        self.secrets
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
            .data
            .insert(key.to_string(), value.into());
        self
    }

    /// Labels Secret `namespace/name` (made empty if it does not exist).
    pub fn labelled(mut self, namespace: &str, name: &str, label: &str, value: &str) -> StaticKeySource {
        self.secrets
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
            .labels
            .insert(label.to_string(), value.to_string());
        self
    }
}

impl fmt::Debug for StaticKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.secrets.keys()).finish()
    }
}

impl KeySource for StaticKeySource {
    async fn lookup(&self, namespace: &str, name: &str, key: &str) -> Result<SecretLookup, SecretReadError> {
        let Some(secret) = self.secrets.get(&(namespace.to_string(), name.to_string())) else {
            return Ok(SecretLookup::SecretMissing);
        };
        Ok(secret.data.get(key).map_or(SecretLookup::KeyMissing, |v| {
            SecretLookup::Found(KeyMaterial(v.clone()), secret.labels.clone())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_hex_keys_parse_to_the_same_kek() {
        let raw: Vec<u8> = (1..=32).collect();
        let hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
        let from_raw = parse_kek(&raw).expect("raw");
        let from_hex = parse_kek(format!("  {hex}\n").as_bytes()).expect("hex with whitespace");
        assert_eq!(from_raw.fingerprint(), from_hex.fingerprint());
        assert_eq!(from_raw.to_hex(), hex.to_lowercase());
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        for (bad, len) in [
            (&b"swordfish"[..], 9),
            (&[7u8; 31][..], 31),
            (&[7u8; 33][..], 33),
            (
                b"zz00000000000000000000000000000000000000000000000000000000000000",
                64,
            ),
            (
                b"+f00000000000000000000000000000000000000000000000000000000000000",
                64,
            ),
        ] {
            let err = parse_kek(bad).expect_err("malformed");
            assert_eq!(err, InvalidKek::Format(len));
            assert!(!err.to_string().contains("swordfish"));
        }
        assert_eq!(parse_kek(&[0u8; 32]).expect_err("zero"), InvalidKek::AllZero);
        assert_eq!(
            parse_kek("0".repeat(64).as_bytes()).expect_err("zero hex"),
            InvalidKek::AllZero
        );
    }

    #[test]
    fn debug_output_hides_key_material() {
        let material = KeyMaterial::new(b"swordfish".to_vec());
        assert_eq!(format!("{material:?}"), "KeyMaterial(<9 bytes redacted>)");
        let source = StaticKeySource::default().with("studio", "kek", "key", "swordfish");
        assert!(!format!("{source:?}").contains("swordfish"));
    }

    #[tokio::test]
    async fn static_source_tells_a_missing_secret_from_a_missing_key() {
        let source = StaticKeySource::default().with("studio", "kek", "key", vec![1u8; 32]);
        assert!(matches!(
            source.lookup("studio", "other", "key").await,
            Ok(SecretLookup::SecretMissing)
        ));
        assert!(matches!(
            source.lookup("other", "kek", "key").await,
            Ok(SecretLookup::SecretMissing)
        ));
        assert!(matches!(
            source.lookup("studio", "kek", "nope").await,
            Ok(SecretLookup::KeyMissing)
        ));
        assert!(
            matches!(source.lookup("studio", "kek", "key").await, Ok(SecretLookup::Found(m, _)) if m.0 == [1u8; 32])
        );
    }
}
