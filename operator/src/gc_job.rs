//! Builds the Kubernetes Job that runs one GC pass of a LifecyclePolicy:
//! `studiodrive-operator gc --policy <name> --pass-id <id>` in the operator's namespace, owned
//! by the (cluster-scoped) policy so that deleting the policy deletes its Jobs.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, SecretKeySelector, SecurityContext,
};
use kube::Resource;
use kube::api::ObjectMeta;

use crate::crd::LifecyclePolicy;

/// Where and how GC Jobs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcJobSettings {
    /// Namespace of the Jobs (the operator's).
    pub namespace: String,
    /// Image with the `studiodrive-operator` binary.
    pub image: String,
    /// ServiceAccount of the Job's pod.
    pub service_account: Option<String>,
    /// Secret and key holding the metadata store URL, passed as STUDIODRIVE_METADATA_URL.
    pub metadata_url_secret: Option<(String, String)>,
}

impl Default for GcJobSettings {
    fn default() -> GcJobSettings {
        GcJobSettings {
            namespace: "studiodrive-system".into(),
            image: "ghcr.io/studiodrive/studiodrive-operator:latest".into(),
            service_account: Some("studiodrive-gc".into()),
            metadata_url_secret: None,
        }
    }
}

/// The Job for pass `pass_id` of `policy`.
pub fn build_job(policy: &LifecyclePolicy, pass_id: &str, job_name: &str, settings: &GcJobSettings) -> Job {
    let policy_name = policy.metadata.name.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "studiodrive-gc".to_string()),
        ("app.kubernetes.io/part-of".to_string(), "studiodrive".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "studiodrive-operator".to_string(),
        ),
        (
            "studiodrive.dev/lifecycle-policy".to_string(),
            job_name_label(&policy_name),
        ),
    ]);
    let env = settings.metadata_url_secret.as_ref().map(|(name, key)| {
        vec![EnvVar {
            name: "STUDIODRIVE_METADATA_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]
    });
    let container = Container {
        name: "gc".into(),
        image: Some(settings.image.clone()),
        args: Some(vec![
            "gc".into(),
            "--policy".into(),
            policy_name.clone(),
            "--pass-id".into(),
            pass_id.into(),
        ]),
        env,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name.to_string()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                "studiodrive.dev/pass-id".to_string(),
                pass_id.to_string(),
            )])),
            owner_references: policy.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // A pass resumes from its checkpoints, so retrying the pod is safe.
            backoff_limit: Some(3),
            ttl_seconds_after_finished: Some(7 * 24 * 3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: settings.service_account.clone(),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// A label value (at most 63 characters, alphanumeric at both ends) for a policy name.
fn job_name_label(policy: &str) -> String {
    let v: String = policy
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches('-').to_string()
}
