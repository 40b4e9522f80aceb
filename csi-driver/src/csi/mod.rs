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
pub mod secrets;
pub mod server;
pub mod token_review;
pub mod validate;

/// The generated CSI messages, servers and clients.
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

use std::sync::Arc;
use std::time::Instant;

use drive::mount::MountError;
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

/// The gRPC code the CSI spec asks for, per class of engine error.
fn code_for(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Exists => Code::AlreadyExists,
        ErrorKind::InvalidName | ErrorKind::NameTooLong | ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::NotEmpty => Code::FailedPrecondition,
        ErrorKind::ReadOnly | ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::QuotaExceeded => Code::ResourceExhausted,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Maps a metadata-store error onto the gRPC code the CSI spec asks for.
pub(crate) fn meta_status(e: &MetaError) -> Status {
    Status::new(code_for(e.kind()), e.to_string())
}

/// Maps a front-door error (resolving a mount: workspace, snapshot, folder) onto its gRPC
/// code: NOT_FOUND for a missing workspace, snapshot or folder, and for a folder outside the
/// snapshot; FAILED_PRECONDITION for a root that is not a folder; INVALID_ARGUMENT for a bad
/// path. The message is the error with its causes.
pub(crate) fn mount_status(e: &MountError) -> Status {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Status::new(code_for(e.kind()), message)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The services sit below the command line: nothing here imports from `crate::cli`.
    #[test]
    fn services_import_nothing_from_the_cli_layer() {
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("attributes.rs", include_str!("attributes.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("controller.rs", include_str!("controller.rs")),
            ("identity.rs", include_str!("identity.rs")),
            ("node.rs", include_str!("node.rs")),
            ("publish.rs", include_str!("publish.rs")),
            ("secrets.rs", include_str!("secrets.rs")),
            ("server.rs", include_str!("server.rs")),
            ("token_review.rs", include_str!("token_review.rs")),
            ("validate.rs", include_str!("validate.rs")),
        ];
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/csi"))
            .expect("list src/csi")
            .count();
        assert_eq!(files, sources.len(), "a new file in src/csi belongs in this list");
        // Spelled in two parts so that this file does not match itself.
        let forbidden = [concat!("crate::", "cli"), concat!("super::super::", "cli")];
        for (file, source) in sources {
            for line in source.lines() {
                let code = line.split("//").next().unwrap_or_default();
                for f in forbidden {
                    assert!(!code.contains(f), "{file} imports from the CLI layer: `{line}`");
                }
            }
        }
    }

    #[test]
    fn mount_errors_map_to_the_codes_node_publish_answered() {
        let outside = MountError::OutsideSnapshot {
            path: "/other".into(),
            snapshot: "s1".into(),
            taken_of: "/shots".into(),
        };
        let status = mount_status(&outside);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "/other is outside snapshot s1, which was taken of /shots"
        );
        let file = MountError::NotAFolder {
            workspace: "default".into(),
            path: "/a.txt".into(),
        };
        assert_eq!(mount_status(&file).code(), Code::FailedPrecondition);
        assert_eq!(
            mount_status(&file).message(),
            "/a.txt in workspace default is not a folder"
        );
        let missing = MountError::Workspace {
            name: "nope".into(),
            source: MetaError::NotFound("workspace nope".into()),
        };
        let status = mount_status(&missing);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "workspace nope: not found: workspace nope");
        let bad = MountError::InvalidPath {
            path: "/a/../b".into(),
            source: drive::model::NameError::Dot,
        };
        assert_eq!(mount_status(&bad).code(), Code::InvalidArgument);
    }
}
