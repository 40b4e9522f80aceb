//! The secrets of a publish: `NodePublishVolumeRequest.secrets`, which kubelet fills from the
//! StorageClass/PV `csi.storage.k8s.io/node-publish-secret-name`/`-namespace` parameters or an
//! inline volume's `nodePublishSecretRef`.
//!
//! Keys (all optional, nothing else accepted):
//! - `encryptionKey`: the workspace's key-encryption key, 32 raw bytes or 64 hex digits (the
//!   formats of `--encryption-key-file` and the operator's key Secret; parsed by
//!   [`Kek::parse`]);
//! - `accessKeyId`, `secretAccessKey` (together): credentials for the workspace's own object
//!   store, when the workspace records one.
//!
//! The node service parses them before anything else happens ([`PublishSecrets::parse`]); the
//! mount process reads the same map back from the file the publisher wrote
//! ([`PublishSecrets::read_file`]): one parser for both sides. No message and no `Debug`
//! output contains a value.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use drive::data::{Kek, KeyError, S3Credentials};

/// The key-encryption key.
pub const ENCRYPTION_KEY: &str = "encryptionKey";
/// Access key id for the workspace's object store.
pub const ACCESS_KEY_ID: &str = "accessKeyId";
/// Secret access key for the workspace's object store.
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";

const KNOWN: [&str; 3] = [ENCRYPTION_KEY, ACCESS_KEY_ID, SECRET_ACCESS_KEY];

/// Why publish secrets are refused. Messages name keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "unknown key {0:?} in the publish secrets (known keys: encryptionKey, accessKeyId, secretAccessKey)"
    )]
    UnknownKey(String),
    #[error("publish secret encryptionKey: {0}")]
    EncryptionKey(#[source] KeyError),
    #[error("publish secrets accessKeyId and secretAccessKey must be given together, and not empty")]
    PartialCredentials,
    #[error("publish secrets file {path}: {message}")]
    File { path: String, message: String },
}

/// Validated publish secrets.
#[derive(Clone, Default)]
pub struct PublishSecrets {
    kek: Option<Kek>,
    credentials: Option<S3Credentials>,
    /// The map as given, for the mount process's file.
    given: BTreeMap<String, String>,
}

impl std::fmt::Debug for PublishSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishSecrets")
            .field("keys", &self.given.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PublishSecrets {
    /// Checks a publish request's secrets: known keys only, a well-formed key-encryption key,
    /// both halves of the credentials or neither.
    pub fn parse(secrets: &HashMap<String, String>) -> Result<PublishSecrets, SecretsError> {
        let mut keys: Vec<&String> = secrets.keys().collect();
        keys.sort();
        if let Some(unknown) = keys.iter().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(SecretsError::UnknownKey((*unknown).clone()));
        }
        let kek = secrets
            .get(ENCRYPTION_KEY)
            .map(|v| Kek::parse(v.as_bytes()))
            .transpose()
            .map_err(SecretsError::EncryptionKey)?;
        let credentials = match (secrets.get(ACCESS_KEY_ID), secrets.get(SECRET_ACCESS_KEY)) {
            (None, None) => None,
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Some(S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: None,
            }),
            _ => return Err(SecretsError::PartialCredentials),
        };
        Ok(PublishSecrets {
            kek,
            credentials,
            given: secrets.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }

    /// The key-encryption key, if given.
    pub fn kek(&self) -> Option<&Kek> {
        self.kek.as_ref()
    }

    /// Credentials for the workspace's own object store, if given.
    pub fn credentials(&self) -> Option<&S3Credentials> {
        self.credentials.as_ref()
    }

    /// The secrets as the mount process reads them back ([`PublishSecrets::read_file`]).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.given).expect("a map of strings encodes as JSON")
    }

    /// Reads and checks a file written from [`PublishSecrets::to_file_bytes`].
    pub fn read_file(path: &Path) -> Result<PublishSecrets, SecretsError> {
        let file_error = |message: String| SecretsError::File {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
        // serde_json's messages quote no input beyond a position; still, say only what failed.
        let map: HashMap<String, String> = serde_json::from_slice(&bytes)
            .map_err(|_| file_error("not a JSON object of strings".to_string()))?;
        PublishSecrets::parse(&map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn known_keys_parse_and_round_trip_through_the_file() {
        let kek = Kek::generate();
        let given = map(&[
            (ENCRYPTION_KEY, &kek.to_hex()),
            (ACCESS_KEY_ID, "AKIDTEST"),
            (SECRET_ACCESS_KEY, "s3cr3t-value"),
        ]);
        let secrets = PublishSecrets::parse(&given).unwrap();
        assert_eq!(secrets.kek().unwrap().fingerprint(), kek.fingerprint());
        assert_eq!(secrets.credentials().unwrap().access_key_id, "AKIDTEST");
        let debug = format!("{secrets:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains(&kek.to_hex()),
            "{debug}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        std::fs::write(&path, secrets.to_file_bytes()).unwrap();
        let back = PublishSecrets::read_file(&path).unwrap();
        assert_eq!(back.kek().unwrap().fingerprint(), kek.fingerprint());
        assert_eq!(back.credentials().unwrap().secret_access_key, "s3cr3t-value");
        assert!(PublishSecrets::parse(&HashMap::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_secrets_are_refused_without_their_values() {
        let cases = [
            map(&[("encryptionkey", "hunter2-value")]),
            map(&[(ENCRYPTION_KEY, "hunter2-value")]),
            map(&[(ACCESS_KEY_ID, "hunter2-value")]),
            map(&[(ACCESS_KEY_ID, "hunter2-value"), (SECRET_ACCESS_KEY, "")]),
        ];
        for given in cases {
            let err = PublishSecrets::parse(&given).expect_err("refused").to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = PublishSecrets::parse(&map(&[("password", "x")])).unwrap_err();
        assert!(err.to_string().contains("unknown key \"password\""), "{err}");
    }
}
