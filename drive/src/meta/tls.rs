//! TLS towards a remote PostgreSQL with rustls (aws-lc-rs provider), through
//! tokio-postgres-rustls-improved, which keeps SCRAM channel binding working.

use std::path::Path;
use std::sync::Arc;

use crate::error::MetaError;

pub(super) fn connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls_improved::MakeRustlsConnect, MetaError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| MetaError::InvalidArgument(format!("CA file {}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| MetaError::InvalidArgument(format!("CA file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| MetaError::InvalidArgument(format!("CA file {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MetaError::Internal(format!("TLS config: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls_improved::MakeRustlsConnect::new(config))
}
