//! Who a volume is published for, and whether they may have it.
//!
//! With `podInfoOnMount` and `tokenRequests` in the CSIDriver object, kubelet puts the pod's
//! name, namespace, uid, service account and service-account tokens into the volume context
//! of NodePublishVolume. They are parsed into a [`PodIdentity`]; an [`Authenticator`] turns
//! that into a verified [`Principal`] (a TokenReview of the token, cross-checked with the
//! context), and the engine's access rule (`drive::rules::access`) decides what the principal
//! may mount. Tokens are secrets: their `Debug` is redacted and no message of this crate ever
//! includes one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use drive::rules::access::Principal;
use drive::sync::lock;
use futures::future::BoxFuture;
use tonic::Status;

use super::token_review::TokenReviewer;
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

    /// The actor recorded for this pod's changes ("pod:<ns>/<name>,sa:<sa>"), when kubelet
    /// said which pod it is.
    pub fn actor(&self) -> Option<String> {
        let (ns, name) = (self.namespace.as_ref()?, self.name.as_ref()?);
        Some(match &self.service_account {
            Some(sa) => format!("pod:{ns}/{name},sa:{sa}"),
            None => format!("pod:{ns}/{name}"),
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

/// Why a pod gets no identity: a refusal, or no way to tell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The pod is not who it claims, or cannot prove who it is (PERMISSION_DENIED).
    #[error("{0}")]
    Denied(String),
    /// The verifier could not be asked (UNAVAILABLE: kubelet retries; nothing is mounted).
    #[error("{0}")]
    Unavailable(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Denied(m) => Status::permission_denied(m),
            AuthError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

/// Verifies the identity of the pod a volume is published for.
pub trait Authenticator: Send + Sync + 'static {
    /// The pod's verified principal, or `Ok(None)` when the node runs without authorization
    /// (`--authorization none`).
    fn authenticate<'a>(
        &'a self,
        pod: &'a PodIdentity,
    ) -> BoxFuture<'a, Result<Option<Principal>, AuthError>>;
}

/// `--authorization none`: the explicit single-machine opt-out; every pod may mount anything.
pub struct NoAuthorization;

impl Authenticator for NoAuthorization {
    fn authenticate<'a>(
        &'a self,
        _pod: &'a PodIdentity,
    ) -> BoxFuture<'a, Result<Option<Principal>, AuthError>> {
        Box::pin(async { Ok(None) })
    }
}

/// `--authorization kubernetes` without a reachable Kubernetes API (no in-cluster config, no
/// KUBECONFIG): no pod can be verified, so every publish is refused.
pub struct NoKubernetesApi {
    pub reason: String,
}

impl Authenticator for NoKubernetesApi {
    fn authenticate<'a>(
        &'a self,
        pod: &'a PodIdentity,
    ) -> BoxFuture<'a, Result<Option<Principal>, AuthError>> {
        Box::pin(async move {
            Err(AuthError::Unavailable(format!(
                "cannot verify {}: no Kubernetes API ({}); run serve with --authorization none \
                 only on a single machine without Kubernetes",
                pod.describe(),
                self.reason
            )))
        })
    }
}

/// Longest a verified token is trusted without asking again, whatever its expiry says (a pod
/// deleted meanwhile stops being trusted within this time).
const MAX_TRUST: Duration = Duration::from_secs(10 * 60);
/// Verified tokens remembered at most.
const CACHE_ENTRIES: usize = 4096;

/// A token the API server vouched for, and until when that is trusted.
#[derive(Clone)]
pub struct Verified {
    pub principal: Principal,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    until: SystemTime,
}

/// Verifies service-account tokens for one audience with TokenReviews. A verified result is
/// remembered (by the token's hash) until the token expires, at most [`MAX_TRUST`]; refusals
/// are not remembered. Used by the CSI publish path and the HTTP API.
pub struct TokenVerifier {
    reviewer: Arc<dyn TokenReviewer>,
    audience: String,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

impl TokenVerifier {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, audience: impl Into<String>) -> TokenVerifier {
        TokenVerifier {
            reviewer,
            audience: audience.into(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Whom `token` belongs to; `expires` (when the caller knows it) bounds how long the
    /// answer is remembered, and `who` names the caller in refusals.
    pub async fn verify(
        &self,
        token: &str,
        expires: Option<SystemTime>,
        who: &str,
    ) -> Result<Verified, AuthError> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        let now = SystemTime::now();
        if let Some(v) = lock(&self.verified).get(&key).filter(|v| v.until > now) {
            return Ok(v.clone());
        }
        let refused = |why: &str| {
            AuthError::Denied(format!(
                "{who}: its service-account token for audience {:?} {why}",
                self.audience
            ))
        };
        let review = self
            .reviewer
            .review(token, &self.audience)
            .await
            .map_err(|e| AuthError::Unavailable(format!("cannot verify {who}: {e}")))?;
        if !review.authenticated {
            return Err(refused("was not authenticated by the API server"));
        }
        if !review.audiences.contains(&self.audience) {
            return Err(refused("is not valid for this audience"));
        }
        let principal = Principal::service_account(&review.username, review.groups)
            .ok_or_else(|| refused("does not belong to a service account"))?;
        let verified = Verified {
            principal,
            pod_name: review.pod_name,
            pod_uid: review.pod_uid,
            until: expires.map_or(now, |e| e.min(now + MAX_TRUST)),
        };
        let mut cache = lock(&self.verified);
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, v| v.until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }
}

/// Verifies pods by their service-account token for `audience` with a TokenReview, and
/// checks that what kubelet put in the volume context agrees with what the API server said.
pub struct TokenAuthenticator {
    verifier: TokenVerifier,
}

impl TokenAuthenticator {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, audience: impl Into<String>) -> TokenAuthenticator {
        TokenAuthenticator {
            verifier: TokenVerifier::new(reviewer, audience),
        }
    }

    async fn verify(&self, pod: &PodIdentity, token: &AudienceToken) -> Result<Verified, AuthError> {
        let expires = token
            .expiration
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(SystemTime::from);
        self.verifier
            .verify(token.expose(), expires, &pod.describe())
            .await
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate<'a>(
        &'a self,
        pod: &'a PodIdentity,
    ) -> BoxFuture<'a, Result<Option<Principal>, AuthError>> {
        Box::pin(async move {
            let token = pod
                .tokens
                .get(self.verifier.audience())
                .filter(|t| !t.expose().is_empty())
                .ok_or_else(|| {
                    AuthError::Denied(format!(
                        "{} has no service-account token for audience {:?} (CSIDriver tokenRequests)",
                        pod.describe(),
                        self.verifier.audience()
                    ))
                })?;
            let v = self.verify(pod, token).await?;
            // The volume context must agree with the token: a pod cannot borrow another
            // namespace by writing kubelet's keys into its own volume attributes.
            let mismatch = |what: &str| {
                AuthError::Denied(format!(
                    "{}: the volume context's {what} does not match its verified service-account token",
                    pod.describe()
                ))
            };
            if pod.namespace.as_deref() != Some(v.principal.namespace.as_str()) {
                return Err(mismatch("pod namespace"));
            }
            if pod
                .service_account
                .as_deref()
                .is_some_and(|sa| sa != v.principal.service_account)
            {
                return Err(mismatch("service account"));
            }
            if v.pod_name.is_some() && v.pod_name != pod.name {
                return Err(mismatch("pod name"));
            }
            if v.pod_uid.is_some() && v.pod_uid != pod.uid {
                return Err(mismatch("pod uid"));
            }
            Ok(Some(v.principal))
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

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::token_review::{Review, ReviewUnavailable};

    /// Answers from a table of tokens, counting the questions.
    struct Table {
        reviews: BTreeMap<&'static str, Review>,
        asked: AtomicUsize,
        down: bool,
    }

    impl TokenReviewer for Table {
        fn review<'a>(
            &'a self,
            token: &'a str,
            audience: &'a str,
        ) -> BoxFuture<'a, Result<Review, ReviewUnavailable>> {
            Box::pin(async move {
                self.asked.fetch_add(1, Ordering::SeqCst);
                if self.down {
                    return Err(ReviewUnavailable("connection refused".into()));
                }
                let mut r = self.reviews.get(token).cloned().unwrap_or_default();
                r.audiences.retain(|a| a == audience);
                Ok(r)
            })
        }
    }

    fn review(user: &str, audiences: &[&str], pod: (&str, &str)) -> Review {
        Review {
            authenticated: true,
            username: user.into(),
            groups: vec!["system:serviceaccounts".into()],
            audiences: audiences.iter().map(ToString::to_string).collect(),
            pod_name: Some(pod.0.into()),
            pod_uid: Some(pod.1.into()),
            error: None,
        }
    }

    fn pod(ns: &str, sa: &str, name: &str, uid: &str, token: Option<&str>) -> PodIdentity {
        let mut tokens = BTreeMap::new();
        if let Some(t) = token {
            tokens.insert(
                "aud".to_string(),
                AudienceToken {
                    token: t.into(),
                    expiration: Some("2999-01-01T00:00:00Z".into()),
                },
            );
        }
        PodIdentity {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            service_account: Some(sa.into()),
            ephemeral: false,
            tokens,
        }
    }

    #[tokio::test]
    async fn tokens_are_verified_and_must_agree_with_the_context() {
        let table = Arc::new(Table {
            reviews: BTreeMap::from([
                (
                    "good",
                    review("system:serviceaccount:vfx:render", &["aud"], ("render-0", "u-1")),
                ),
                (
                    "other-aud",
                    review("system:serviceaccount:vfx:render", &["kube"], ("render-0", "u-1")),
                ),
                ("user", review("alice", &["aud"], ("render-0", "u-1"))),
            ]),
            asked: AtomicUsize::new(0),
            down: false,
        });
        let auth = TokenAuthenticator::new(table.clone(), "aud");
        let principal = auth
            .authenticate(&pod("vfx", "render", "render-0", "u-1", Some("good")))
            .await
            .expect("verified")
            .expect("a principal");
        assert_eq!(principal.namespace, "vfx");
        assert_eq!(principal.service_account, "render");
        let denied = |p: PodIdentity| {
            let auth = &auth;
            async move {
                match auth.authenticate(&p).await {
                    Err(AuthError::Denied(m)) => m,
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        };
        for (p, why) in [
            (
                pod("vfx", "render", "render-0", "u-1", None),
                "no service-account token",
            ),
            (
                pod("vfx", "render", "render-0", "u-1", Some("forged")),
                "not authenticated",
            ),
            (
                pod("vfx", "render", "render-0", "u-1", Some("other-aud")),
                "not valid for this audience",
            ),
            (
                pod("vfx", "render", "render-0", "u-1", Some("user")),
                "does not belong to a service account",
            ),
            (
                pod("evil", "render", "render-0", "u-1", Some("good")),
                "pod namespace",
            ),
            (
                pod("vfx", "admin", "render-0", "u-1", Some("good")),
                "service account",
            ),
            (pod("vfx", "render", "render-1", "u-1", Some("good")), "pod name"),
            (pod("vfx", "render", "render-0", "u-2", Some("good")), "pod uid"),
        ] {
            let m = denied(p).await;
            assert!(m.contains(why), "{m}");
            assert!(!m.contains("good") && !m.contains("forged"), "no token in {m}");
        }
        // A verified token is remembered; refused ones are asked again.
        let before = table.asked.load(Ordering::SeqCst);
        auth.authenticate(&pod("vfx", "render", "render-0", "u-1", Some("good")))
            .await
            .expect("cached");
        assert_eq!(table.asked.load(Ordering::SeqCst), before);
        let _ = auth
            .authenticate(&pod("vfx", "render", "render-0", "u-1", Some("forged")))
            .await;
        assert_eq!(table.asked.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn an_unreachable_api_is_unavailable_and_never_an_allow() {
        let auth = TokenAuthenticator::new(
            Arc::new(Table {
                reviews: BTreeMap::new(),
                asked: AtomicUsize::new(0),
                down: true,
            }),
            "aud",
        );
        let e = auth
            .authenticate(&pod("vfx", "render", "render-0", "u-1", Some("good")))
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Unavailable(_)), "{e:?}");
        assert_eq!(Status::from(e).code(), tonic::Code::Unavailable);
        let none = NoKubernetesApi {
            reason: "no KUBECONFIG".into(),
        };
        let e = none.authenticate(&PodIdentity::default()).await.unwrap_err();
        assert!(matches!(e, AuthError::Unavailable(_)));
    }
}
