//! The Identity service: name, version, capabilities, readiness.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::proto::identity_server::Identity;
use super::proto::plugin_capability::{Service, service::Type as ServiceType};
use super::proto::{self as csi};
use super::{DRIVER_NAME, MetaSlot, Mode, observed};
use crate::metrics::CsiMetrics;

pub struct IdentityService {
    pub mode: Mode,
    pub meta: Arc<MetaSlot>,
    pub metrics: Arc<CsiMetrics>,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        observed(&self.metrics, "GetPluginInfo", async {
            Ok(csi::GetPluginInfoResponse {
                name: DRIVER_NAME.to_string(),
                vendor_version: env!("CARGO_PKG_VERSION").to_string(),
                manifest: [("mode".to_string(), format!("{:?}", self.mode).to_lowercase())].into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        observed(&self.metrics, "GetPluginCapabilities", async {
            let capabilities = if self.mode.controller() {
                vec![
                    csi::PluginCapability {
                        r#type: Some(csi::plugin_capability::Type::Service(Service {
                            r#type: ServiceType::ControllerService as i32,
                        })),
                    },
                    // A volume's capacity is a quota in the store: it grows while mounted.
                    csi::PluginCapability {
                        r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                            csi::plugin_capability::VolumeExpansion {
                                r#type: csi::plugin_capability::volume_expansion::Type::Online as i32,
                            },
                        )),
                    },
                ]
            } else {
                Vec::new()
            };
            Ok(csi::GetPluginCapabilitiesResponse { capabilities })
        })
        .await
    }

    /// Ready once the metadata store answers; not ready (rather than an error: the plugin
    /// itself is healthy) while it is unreachable.
    async fn probe(&self, _req: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        observed(&self.metrics, "Probe", async {
            let ready = match self.meta.get() {
                Ok(meta) => matches!(
                    tokio::time::timeout(Duration::from_secs(3), meta.ping()).await,
                    Ok(Ok(()))
                ),
                Err(_) => false,
            };
            Ok(csi::ProbeResponse { ready: Some(ready) })
        })
        .await
    }
}
