//! CloudEvents 1.0 webhook sink (HTTP binding, structured mode): each event POSTed as
//! `application/cloudevents+json`, delivered on a 2xx answer.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Outgoing, SinkError};

/// How long one delivery may take (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

pub(super) struct WebhookSink {
    url: http::Uri,
    endpoint: String,
    client: HttpsClient,
}

impl WebhookSink {
    pub(super) fn new(url: &str) -> Result<WebhookSink, SinkError> {
        let endpoint = super::redact_url(url);
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| SinkError::Unreachable {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Unreachable {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(WebhookSink {
            url: uri,
            endpoint,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub(super) async fn deliver(&mut self, event: &Outgoing) -> Result<(), SinkError> {
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/cloudevents+json")
            .header(http::header::USER_AGENT, "studiodrive-relay")
            .body(Full::new(event.body.clone()))
            .map_err(|e| self.refused(event, e.to_string()))?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| self.unreachable(format!("no answer in {TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        // Read the (bounded) body so the connection can be reused.
        let _ = tokio::time::timeout(TIMEOUT, response.into_body().collect()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refused(event, format!("HTTP {status}")))
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Unreachable {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        }
    }

    fn refused(&self, event: &Outgoing, message: String) -> SinkError {
        SinkError::Refused {
            endpoint: self.endpoint.clone(),
            id: event.id.clone(),
            message,
        }
    }
}
