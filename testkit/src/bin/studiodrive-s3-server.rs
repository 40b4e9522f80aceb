//! A local S3 server (s3s-fs) for benchmarks and manual runs:
//!
//!     studiodrive-s3-server [--root DIR] [--addr 127.0.0.1:9000] [--bucket NAME]...
//!
//! Prints the endpoint, then serves until SIGTERM/SIGINT. Credentials are the testkit's
//! fixed pair (`drive_testkit::s3::ACCESS_KEY` / `SECRET_KEY`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use drive_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

fn main() -> anyhow::Result<()> {
    let mut root = PathBuf::from("s3-data");
    let mut addr: SocketAddr = "127.0.0.1:9000".parse()?;
    let mut buckets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--root" => root = PathBuf::from(value()?),
            "--addr" => addr = value()?.parse().context("--addr")?,
            "--bucket" => buckets.push(value()?),
            other => bail!("unknown argument {other:?} (use --root DIR --addr IP:PORT --bucket NAME)"),
        }
    }
    let server = S3Server::serve(&root, addr)?;
    for b in &buckets {
        server.create_bucket(b)?;
    }
    println!(
        "endpoint={} access_key={ACCESS_KEY} secret_key={SECRET_KEY}",
        server.endpoint()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}
