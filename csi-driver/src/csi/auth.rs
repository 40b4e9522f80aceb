//! Who a volume is published for, and whether they may have it.
//!
//! With `podInfoOnMount` and `tokenRequests` in the CSIDriver object, kubelet puts the pod's
//! name, namespace, uid, service account and service-account tokens into the volume context
//! of NodePublishVolume. They are parsed into a [`PodIdentity`] and handed to an
//! [`Authorizer`]. Tokens are secrets: their `Debug` is redacted and no message of this
//! crate ever includes one. The full policy (TokenReview, Shares) plugs in behind the same
//! trait.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use futures::future::BoxFuture;
use tonic::Status;

use super::validate::TOKENS_KEY;

const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

/// A service-account token for one audience. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AudienceToken {
    token: String,
    pub expiration: Option<String>,
}

impl AudienceToken {
    /// The raw token, for a verifier that sends it to the API server.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for AudienceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudienceToken")
            .field("token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// The pod a volume is published for (all empty when kubelet does not send pod info).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub service_account: Option<String>,
    /// An inline (ephemeral) volume of the pod.
    pub ephemeral: bool,
    /// Tokens by audience.
    pub tokens: BTreeMap<String, AudienceToken>,
}

#[derive(serde::Deserialize)]
struct TokenEntry {
    token: String,
    #[serde(rename = "expirationTimestamp", default)]
    expiration: Option<String>,
}

impl PodIdentity {
    /// Reads the pod information kubelet put into a volume context.
    pub fn from_context(ctx: &HashMap<String, String>) -> Result<PodIdentity, Status> {
        let get = |k: &str| ctx.get(k).filter(|v| !v.is_empty()).cloned();
        let tokens = match ctx.get(TOKENS_KEY).filter(|v| !v.is_empty()) {
            None => BTreeMap::new(),
            Some(raw) => {
                // The parser's error text could quote the input: report only that it failed.
                let parsed: BTreeMap<String, TokenEntry> = serde_json::from_str(raw).map_err(|_| {
                    Status::invalid_argument(format!("volume_context {TOKENS_KEY} is not valid JSON"))
                })?;
                parsed
                    .into_iter()
                    .map(|(aud, e)| {
                        (
                            aud,
                            AudienceToken {
                                token: e.token,
                                expiration: e.expiration,
                            },
                        )
                    })
                    .collect()
            }
        };
        Ok(PodIdentity {
            namespace: get(POD_NAMESPACE),
            name: get(POD_NAME),
            uid: get(POD_UID),
            service_account: get(SERVICE_ACCOUNT),
            ephemeral: ctx.get(EPHEMERAL).is_some_and(|v| v == "true"),
            tokens,
        })
    }

    /// "namespace/name" for messages, or "unknown pod".
    pub fn describe(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
            _ => "unknown pod".to_string(),
        }
    }
}

/// One publish to decide on.
#[derive(Debug)]
pub struct AccessRequest<'a> {
    pub volume_id: &'a str,
    pub workspace: &'a str,
    pub path: &'a str,
    pub read_only: bool,
    pub pod: &'a PodIdentity,
}

/// A refusal, with a reason safe to show the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        Status::permission_denied(d.0)
    }
}

/// Decides whether a pod may have a volume.
pub trait Authorizer: Send + Sync + 'static {
    fn authorize<'a>(&'a self, request: &'a AccessRequest<'a>) -> BoxFuture<'a, Result<(), Denied>>;
}

/// Allows every publish (the default until the access-control work lands).
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize<'a>(&'a self, _request: &'a AccessRequest<'a>) -> BoxFuture<'a, Result<(), Denied>> {
        Box::pin(async { Ok(()) })
    }
}

/// Requires kubelet to pass a service-account token for `audience` (CSIDriver
/// `tokenRequests`), so every mount is tied to a pod identity. The token is not yet verified
/// against the API server: that is the TokenReview step of the access-control work.
pub struct RequireToken {
    pub audience: String,
}

impl Authorizer for RequireToken {
    fn authorize<'a>(&'a self, request: &'a AccessRequest<'a>) -> BoxFuture<'a, Result<(), Denied>> {
        Box::pin(async move {
            match request.pod.tokens.get(&self.audience) {
                Some(t) if !t.expose().is_empty() => Ok(()),
                _ => Err(Denied(format!(
                    "{} has no service-account token for audience {:?}: volume {} needs one",
                    request.pod.describe(),
                    self.audience,
                    request.volume_id
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_never_print() {
        let mut ctx = HashMap::new();
        ctx.insert(POD_NAME.into(), "render-0".into());
        ctx.insert(POD_NAMESPACE.into(), "vfx".into());
        ctx.insert(
            TOKENS_KEY.into(),
            r#"{"studiodrive":{"token":"SENTINEL-TOKEN","expirationTimestamp":"2026-11-25T10:00:00Z"}}"#
                .into(),
        );
        let pod = PodIdentity::from_context(&ctx).unwrap();
        assert_eq!(pod.describe(), "pod vfx/render-0");
        assert_eq!(pod.tokens["studiodrive"].expose(), "SENTINEL-TOKEN");
        assert!(!format!("{pod:?}").contains("SENTINEL"));

        ctx.insert(TOKENS_KEY.into(), "{not json SENTINEL".into());
        let err = PodIdentity::from_context(&ctx).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(!err.message().contains("SENTINEL"));
    }
}
