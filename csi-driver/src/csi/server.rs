//! The gRPC server on the plugin's Unix socket.

use std::path::Path;

use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::proto::controller_server::ControllerServer;
use super::proto::identity_server::IdentityServer;
use super::proto::node_server::NodeServer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves Identity and the given services on `socket` until `shutdown` fires. A socket file
/// left by an earlier process is replaced.
pub async fn serve(
    socket: &Path,
    identity: IdentityService,
    controller: Option<ControllerService>,
    node: Option<NodeService>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let socket_err = |source| ServeError::Socket {
        path: socket.display().to_string(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(socket_err)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(socket_err)?;
    tracing::info!(socket = %socket.display(), controller = controller.is_some(), node = node.is_some(), "serving CSI");
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_optional_service(controller.map(ControllerServer::new))
        .add_optional_service(node.map(NodeServer::new))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await?;
    Ok(())
}
