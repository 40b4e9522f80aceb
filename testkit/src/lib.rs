//! Test support for Studio Drive: real parts, cleaned up on drop.
//!
//! - [`pg::PgServer`]: a throwaway PostgreSQL started from the installed binaries (initdb into a
//!   temp dir), one database per test.
//! - [`s3::S3Server`]: a real S3 server (s3s-fs) on 127.0.0.1 with fault injection.
//!
//! This crate knows nothing of the `drive` crate's types so that every crate can dev-depend on
//! it.

pub mod bulk;
pub mod pg;
pub mod s3;

/// Installs the process-wide rustls crypto provider (aws-lc-rs) once. Tests that build TLS or
/// S3 clients call it first; a second call is harmless.
pub fn install_crypto_provider() {
    // Ignoring the error is right: it only says a provider is already installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Installs a tracing subscriber that writes to the test harness's captured output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
