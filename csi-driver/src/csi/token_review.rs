//! Verifying a pod's service-account token with a TokenReview (authentication.k8s.io/v1).
//!
//! kubelet hands the node plugin a token it requested for the pod with the driver's audience
//! (CSIDriver `tokenRequests`). Only the API server can say whom it belongs to: the plugin
//! asks with a TokenReview restricted to that audience. [`TokenReviewer`] is the port; the
//! real implementation goes through kube's client, tests answer through kube's mock service
//! or a stand-in API server.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;

/// What the API server said about a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Review {
    pub authenticated: bool,
    pub username: String,
    pub groups: Vec<String>,
    /// The audiences of the request the token is valid for (empty: none of them).
    pub audiences: Vec<String>,
    /// The pod a bound token belongs to (`authentication.kubernetes.io/pod-name`, `-uid`).
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// Why the API server did not authenticate it.
    pub error: Option<String>,
}

/// The API server could not be asked (unreachable, forbidden, timed out).
#[derive(Debug, Clone, thiserror::Error)]
#[error("TokenReview failed: {0}")]
pub struct ReviewUnavailable(pub String);

/// Asks whom a token belongs to.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Review, ReviewUnavailable>>;
}

/// TokenReviews through the Kubernetes API.
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> KubeTokenReviewer {
        KubeTokenReviewer { client }
    }
}

/// How long a TokenReview may take before the publish is answered UNAVAILABLE.
const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<Review, ReviewUnavailable>> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(vec![audience.to_string()]),
                },
                ..TokenReview::default()
            };
            let api = kube::Api::<TokenReview>::all(self.client.clone());
            // kube's error text describes the request, never its body: the token stays out.
            // A hung API server is unavailable, not a publish that never returns.
            let answer = tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &request))
                .await
                .map_err(|_| ReviewUnavailable(format!("no answer within {REVIEW_TIMEOUT:?}")))?
                .map_err(|e| ReviewUnavailable(e.to_string()))?;
            let status = answer.status.unwrap_or_default();
            let user = status.user.unwrap_or_default();
            let extra = user.extra.unwrap_or_default();
            let first = |extra: &BTreeMap<String, Vec<String>>, key: &str| {
                extra.get(key).and_then(|v| v.first()).cloned()
            };
            Ok(Review {
                authenticated: status.authenticated == Some(true),
                username: user.username.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                audiences: status.audiences.unwrap_or_default(),
                pod_name: first(&extra, POD_NAME_EXTRA),
                pod_uid: first(&extra, POD_UID_EXTRA),
                error: status.error,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    /// The request goes to the TokenReview endpoint with the token and the audience, and the
    /// answer's user, audiences and pod binding come back.
    #[tokio::test]
    async fn reviews_through_the_api() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reviewer = KubeTokenReviewer::new(kube::Client::new(service, "default"));
        let server = async move {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), "POST");
            assert_eq!(
                request.uri().path(),
                "/apis/authentication.k8s.io/v1/tokenreviews"
            );
            let body = request.into_body().collect_bytes().await.unwrap();
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(sent["spec"]["token"], "tok-1");
            assert_eq!(
                sent["spec"]["audiences"],
                serde_json::json!(["csi.studiodrive.dev"])
            );
            let reply = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {},
                "status": {
                    "authenticated": true,
                    "audiences": ["csi.studiodrive.dev"],
                    "user": {
                        "username": "system:serviceaccount:vfx:render",
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:vfx"],
                        "extra": {
                            "authentication.kubernetes.io/pod-name": ["render-0"],
                            "authentication.kubernetes.io/pod-uid": ["u-1"]
                        }
                    }
                }
            });
            send.send_response(Response::new(Body::from(serde_json::to_vec(&reply).unwrap())));
        };
        let (review, ()) = tokio::join!(reviewer.review("tok-1", "csi.studiodrive.dev"), server);
        let review = review.expect("review");
        assert!(review.authenticated);
        assert_eq!(review.username, "system:serviceaccount:vfx:render");
        assert_eq!(review.groups.len(), 2);
        assert_eq!(review.audiences, vec!["csi.studiodrive.dev".to_string()]);
        assert_eq!(review.pod_name.as_deref(), Some("render-0"));
        assert_eq!(review.pod_uid.as_deref(), Some("u-1"));
    }

    /// An API error (here: the plugin may not create TokenReviews) is "unavailable", never a
    /// verdict on the token.
    #[tokio::test]
    async fn an_api_error_is_unavailable() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reviewer = KubeTokenReviewer::new(kube::Client::new(service, "default"));
        let server = async move {
            let (_, send) = handle.next_request().await.expect("a request");
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "tokenreviews is forbidden", "reason": "Forbidden", "code": 403
            });
            send.send_response(
                Response::builder()
                    .status(403)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        };
        let (review, ()) = tokio::join!(reviewer.review("tok-1", "aud"), server);
        let e = review.expect_err("unavailable");
        assert!(e.to_string().contains("forbidden"), "{e}");
        assert!(!e.to_string().contains("tok-1"), "{e}");
    }
}
