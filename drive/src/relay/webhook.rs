//! CloudEvents 1.0 webhook sink (HTTP binding, structured mode): each event POSTed as
//! `application/cloudevents+json`, delivered on a 2xx answer.
//!
//! With a signing key, each request is signed as Standard Webhooks specifies
//! (<https://www.standardwebhooks.com>, what Svix and its libraries verify): `webhook-id` (the
//! event's stable id), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`. The receiver
//! checks the signature and the timestamp's age, so neither a forged nor a replayed request
//! passes.
//!
//! Webhook URLs come from tenants, so the relay never connects to a link-local address (the
//! cloud metadata endpoints, 169.254.169.254 and fd00:ec2::254 among them), whether the URL
//! names it or a name resolves to it: a sink cannot make the relay talk to its node's
//! instance credentials. Other private addresses stay reachable (in-cluster receivers); a
//! NetworkPolicy on the relay narrows them further.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

use super::{Outgoing, SinkError};

/// How long one delivery may take (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<bytes::Bytes>>;

/// Whether the relay refuses to connect to `ip`: link-local (metadata endpoints live there),
/// unspecified, multicast or broadcast, and the AWS metadata service's IPv6 address.
pub(crate) fn refused_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => a.is_link_local() || a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => {
            (a.segments()[0] & 0xffc0) == 0xfe80
                || a.is_unspecified()
                || a.is_multicast()
                || a == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || a.to_ipv4_mapped()
                    .is_some_and(|v4| refused_address(IpAddr::V4(v4)))
        }
    }
}

/// The system resolver, less the addresses [`refused_address`] refuses; a name that resolves
/// only to such addresses is an error.
#[derive(Clone)]
pub(super) struct GuardedResolver(GaiResolver);

impl Default for GuardedResolver {
    fn default() -> GuardedResolver {
        GuardedResolver(GaiResolver::new())
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), std::io::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        let lookup = self.0.call(name);
        Box::pin(async move {
            let allowed: Vec<std::net::SocketAddr> =
                lookup.await?.filter(|a| !refused_address(a.ip())).collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to link-local or other refused addresses"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

pub(super) struct WebhookSink {
    url: http::Uri,
    endpoint: String,
    client: HttpsClient,
    signing: Option<SigningKey>,
}

/// The HMAC key webhook requests are signed with.
pub(super) struct SigningKey(aws_lc_rs::hmac::Key);

impl SigningKey {
    /// A key from a Secret's value: `whsec_<base64>` (the Standard Webhooks form, what their
    /// libraries generate) or the key bytes themselves; surrounding whitespace is ignored.
    pub(super) fn parse(secret: &[u8]) -> Result<SigningKey, String> {
        use base64::Engine as _;
        let secret = secret.trim_ascii();
        let key = match secret.strip_prefix(b"whsec_") {
            // Padded or not: generators differ, and the libraries accept both.
            Some(encoded) => base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            )
            .decode(encoded)
            .map_err(|_| "a whsec_ signing secret must be followed by base64".to_string())?,
            None => secret.to_vec(),
        };
        if key.len() < 16 {
            return Err(format!(
                "a webhook signing key needs at least 16 bytes, found {}",
                key.len()
            ));
        }
        Ok(SigningKey(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &key,
        )))
    }

    /// The `webhook-signature` value of a request.
    pub(super) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        use base64::Engine as _;
        let mut context = aws_lc_rs::hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        let tag = context.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

impl WebhookSink {
    pub(super) fn new(url: &str, signing: Option<SigningKey>) -> Result<WebhookSink, SinkError> {
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
        // An address in the URL itself is checked here; names, as they resolve.
        if let Some(ip) = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .filter(|ip| refused_address(*ip))
        {
            return Err(SinkError::Unreachable {
                endpoint,
                message: format!(
                    "{ip} is link-local or otherwise refused (cloud metadata endpoints live there)"
                ),
            });
        }
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::default());
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
            signing,
        })
    }

    pub(super) async fn deliver(&mut self, event: &Outgoing) -> Result<(), SinkError> {
        let mut request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/cloudevents+json")
            .header(http::header::USER_AGENT, "studiodrive-relay");
        if let Some(key) = &self.signing {
            // The time of this attempt: a retry is signed afresh, so a receiver's replay
            // window does not refuse an event the sink was down for.
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request
                .header("webhook-id", event.id.as_str())
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", key.sign(&event.id, timestamp, &event.body));
        }
        let request = request
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

#[cfg(test)]
mod tests {
    use super::{GuardedResolver, SigningKey, WebhookSink, refused_address};
    use tower_service::Service as _;

    #[test]
    fn metadata_and_link_local_addresses_are_refused() {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::",
        ] {
            assert!(refused_address(refused.parse().unwrap()), "{refused}");
        }
        for allowed in [
            "10.0.0.5",
            "127.0.0.1",
            "192.168.1.2",
            "8.8.8.8",
            "::1",
            "fd00::1",
        ] {
            assert!(!refused_address(allowed.parse().unwrap()), "{allowed}");
        }
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:8080/",
            "https://[fd00:ec2::254]/",
        ] {
            let err = WebhookSink::new(url, None).err().expect("refused");
            assert!(err.to_string().contains("refused"), "{err}");
        }
        assert!(WebhookSink::new("http://127.0.0.1:9/hook", None).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_only_to_refused_addresses_fail() {
        let mut resolver = GuardedResolver::default();
        let local: Vec<_> = resolver
            .call("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            !local.is_empty() && local.iter().all(|a| a.ip().is_loopback()),
            "{local:?}"
        );
        // A name whose only answer is link-local: getaddrinfo echoes a numeric host, which
        // stands in for a DNS name pointing there (no DNS here).
        let err = resolver
            .call("169.254.169.254".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = SigningKey::parse(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(SigningKey::parse(b"whsec_***").is_err());
        // Unpadded base64 is the same key.
        let unpadded = SigningKey::parse(b"whsec_c2Vjb25kLXNpZ25pbmcta2V5LTEyMzQ").unwrap();
        let padded = SigningKey::parse(b"whsec_c2Vjb25kLXNpZ25pbmcta2V5LTEyMzQ=").unwrap();
        assert_eq!(unpadded.sign("a", 1, b"x"), padded.sign("a", 1, b"x"));
        assert!(SigningKey::parse(b"short").is_err());
        // Raw key bytes sign as themselves.
        let raw = SigningKey::parse(b"0123456789abcdef").unwrap();
        assert_ne!(raw.sign("a", 1, b"x"), raw.sign("a", 2, b"x"));
    }
}
