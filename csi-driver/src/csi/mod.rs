//! The CSI plugin: Identity, Controller and Node services (CSI v1.12) over gRPC on a Unix
//! socket. Each service is a thin face: requests are checked here, then served by the
//! metadata store (controller) or the mount supervisor (node), which runs every published
//! volume's FUSE session in a `studiodrive-csi mount` process of its own.

pub mod attributes;
pub mod auth;
pub mod controller;
pub mod identity;
pub mod node;
pub mod publish;
pub mod server;
pub mod validate;

/// The generated CSI messages, servers and clients.
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

use std::sync::Arc;
use std::time::Instant;

use drive::{ErrorKind, MetaError, PgMetaStore};
use tonic::{Code, Response, Status};

use crate::metrics::CsiMetrics;

/// The driver name Kubernetes objects (CSIDriver, StorageClass, PV) refer to.
pub const DRIVER_NAME: &str = "csi.studiodrive.dev";

/// Which services this process offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Identity, Controller and Node (one process does everything: local use, tests).
    All,
    /// Identity and Node (the DaemonSet on every node).
    Node,
    /// Identity and Controller (the Deployment next to the provisioner and snapshotter).
    Controller,
}

impl Mode {
    pub fn controller(self) -> bool {
        matches!(self, Mode::All | Mode::Controller)
    }
    pub fn node(self) -> bool {
        matches!(self, Mode::All | Mode::Node)
    }
}

/// The metadata store, once reachable. The plugin starts (and answers Probe with "not
/// ready") while the database is still down; calls that need it get UNAVAILABLE.
#[derive(Default)]
pub struct MetaSlot {
    cell: tokio::sync::OnceCell<PgMetaStore>,
}

impl MetaSlot {
    pub fn set(&self, meta: PgMetaStore) {
        let _ = self.cell.set(meta);
    }

    /// The store, or UNAVAILABLE (retriable) while not connected.
    pub fn get(&self) -> Result<&PgMetaStore, Status> {
        self.cell
            .get()
            .ok_or_else(|| Status::unavailable("the metadata store is not connected yet"))
    }
}

/// Maps a metadata-store error onto the gRPC code the CSI spec asks for.
pub(crate) fn meta_status(e: &MetaError) -> Status {
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Exists => Code::AlreadyExists,
        ErrorKind::InvalidName | ErrorKind::NameTooLong | ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::NotEmpty => Code::FailedPrecondition,
        ErrorKind::ReadOnly | ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// Runs one RPC body, counting it by method and resulting code.
pub(crate) async fn observed<T>(
    metrics: &Arc<CsiMetrics>,
    method: &'static str,
    body: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = body.await;
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    metrics.observe_call(method, code, started.elapsed());
    match &result {
        Ok(_) => tracing::debug!(method, "ok"),
        // Status messages are written by this crate and never carry secrets or tokens.
        Err(status) => tracing::info!(method, code = ?status.code(), message = status.message(), "failed"),
    }
    result.map(Response::new)
}
