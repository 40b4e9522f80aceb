//! HTTPS for the API: a certificate and key from PEM files, read again when either file
//! changes (cert-manager and kubelet replace them in place), so a rotation needs no restart.
//! A reload that fails keeps serving the last good pair, saying why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use drive::sync::lock;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
#[error("TLS certificate {cert} / key {key}: {message}")]
pub struct TlsError {
    cert: String,
    key: String,
    message: String,
}

/// The serving certificate, reloaded on change.
pub struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Option<SystemTime>, TlsAcceptor)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ServingCert {
    /// Loads the pair; fails when either file does not hold what it should.
    pub fn load(cert: &Path, key: &Path) -> Result<ServingCert, TlsError> {
        let stamps = (modified(cert), modified(key));
        let acceptor = acceptor(cert, key)?;
        Ok(ServingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((stamps.0, stamps.1, acceptor)),
        })
    }

    /// The acceptor for a new connection, from the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamps = (modified(&self.cert), modified(&self.key));
        let mut current = lock(&self.current);
        if (current.0, current.1) != stamps {
            match acceptor(&self.cert, &self.key) {
                Ok(fresh) => {
                    tracing::info!(cert = %self.cert.display(), "API certificate reloaded");
                    *current = (stamps.0, stamps.1, fresh);
                }
                Err(e) => {
                    // Not retried on every connection: the stamps move on, the next change
                    // of the files tries again.
                    tracing::error!(error = %e, "keeping the previous API certificate");
                    current.0 = stamps.0;
                    current.1 = stamps.1;
                }
            }
        }
        current.2.clone()
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let error = |message: String| TlsError {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| error(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| error(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
