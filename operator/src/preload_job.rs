//! Builds the Job that runs one Preload on one node: `studiodrive-csi preload --workspace W
//! --manifest-text M --node-cache --csi-cache-dir DIR --report-as <namespace>/<name> --node
//! $(NODE_NAME)` in the operator's namespace, pinned to the node (`nodeName`: the cache it
//! fills is that node's), with the node plugin's cache directory mounted from the host.
//!
//! The Job runs the node plugin's image (its `studiodrive-csi`), as root (the plugin's cache
//! is root's) but without privileges or capabilities beyond writing that one host directory;
//! it needs no Kubernetes API access (no service-account token). Its store access is the GC
//! Jobs' ([`StoreAccess`]). A Preload is namespaced and its Jobs live in the operator's
//! namespace, so they are not owned by it: labels and annotations name it, and its cleanup
//! deletes them.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use crate::gc_job::{GcJobSettings, StoreAccess};

/// Label of a preload Job: the uid of its Preload.
pub const PRELOAD_UID_LABEL: &str = "studiodrive.dev/preload-uid";
/// Annotation of a preload Job: its Preload, `<namespace>/<name>`.
pub const PRELOAD_ANNOTATION: &str = "studiodrive.dev/preload";
/// Annotation of a preload Job: the node it fills.
pub const NODE_ANNOTATION: &str = "studiodrive.dev/node";

/// The exit status of `studiodrive-csi preload` when some file is missing or could not be
/// fetched (its `INCOMPLETE`).
pub const INCOMPLETE_EXIT: i32 = 2;

/// Where the Job's container sees the node plugin's cache directory.
const CACHE_MOUNT: &str = "/var/cache/studiodrive";

/// How preload Jobs run, besides the store access they share with GC Jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct PreloadJobSettings {
    /// The node plugin's image (with `studiodrive-csi`).
    pub image: String,
    /// The node plugin's cache directory on the host (the chart's `node.cacheDir`).
    pub host_cache_dir: String,
    /// Cache bytes per workspace (the volumes' default cacheSize).
    pub cache_size: u64,
    /// The free-space floor of the cache's file system (the plugin's).
    pub cache_min_free: f64,
    /// The container's CPU and memory requests and its memory limit (Kubernetes quantities).
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl PreloadJobSettings {
    /// Requests so the scheduler counts the Job on a busy render node, and a memory limit so
    /// a preload never starves the renders it prepares for (it holds a few blocks at a time).
    fn resources(&self) -> ResourceRequirements {
        let quantity = |q: &str| Quantity(q.to_string());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&self.cpu_request)),
                ("memory".to_string(), quantity(&self.memory_request)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                quantity(&self.memory_limit),
            )])),
            ..ResourceRequirements::default()
        }
    }
}

impl Default for PreloadJobSettings {
    fn default() -> PreloadJobSettings {
        PreloadJobSettings {
            image: "ghcr.io/studiodrive/studiodrive-csi:latest".into(),
            host_cache_dir: "/var/cache/studiodrive".into(),
            cache_size: 10 << 30,
            cache_min_free: 0.15,
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            memory_limit: "512Mi".into(),
        }
    }
}

/// What one preload Job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadJob<'a> {
    pub job_name: &'a str,
    /// The Preload's uid, namespace and name.
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    /// Store name of the workspace.
    pub workspace: &'a str,
    pub manifest: &'a str,
    pub active_deadline_seconds: Option<i64>,
}

impl PreloadJob<'_> {
    /// The container's arguments. `$(NODE_NAME)` is the pod's node, which kubelet expands.
    pub fn args(&self, settings: &PreloadJobSettings) -> Vec<String> {
        [
            "preload",
            "--workspace",
            self.workspace,
            // One argument, so a manifest starting with '-' is not a flag; `$(` doubled so
            // kubelet does not expand variable references in it.
            &format!("--manifest-text={}", self.manifest.replace("$(", "$$(")),
            "--node-cache",
            "--csi-cache-dir",
            CACHE_MOUNT,
            "--report-as",
            &crate::plan::preload::preload_name(self.namespace, self.name),
            "--node",
            "$(NODE_NAME)",
        ]
        .into_iter()
        .map(str::to_string)
        .chain([
            "--cache-size".to_string(),
            settings.cache_size.to_string(),
            "--cache-min-free".to_string(),
            settings.cache_min_free.to_string(),
        ])
        .collect()
    }

    /// The Job.
    pub fn build(&self, jobs: &GcJobSettings, settings: &PreloadJobSettings) -> Job {
        let labels = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_string(),
                "studiodrive-preload".to_string(),
            ),
            ("app.kubernetes.io/part-of".to_string(), "studiodrive".to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "studiodrive-operator".to_string(),
            ),
            (PRELOAD_UID_LABEL.to_string(), self.uid.to_string()),
        ]);
        let annotations = BTreeMap::from([
            (
                PRELOAD_ANNOTATION.to_string(),
                crate::plan::preload::preload_name(self.namespace, self.name),
            ),
            (NODE_ANNOTATION.to_string(), self.node.to_string()),
        ]);
        let access = StoreAccess::of(jobs);
        let mut env = vec![
            EnvVar {
                name: "NODE_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            // A writable place for anything the command keeps besides the cache.
            EnvVar {
                name: "STUDIODRIVE_STATE_DIR".into(),
                value: Some("/tmp/studiodrive".into()),
                ..EnvVar::default()
            },
        ];
        env.extend(access.env);
        let mut volume_mounts = vec![
            VolumeMount {
                name: "node-cache".into(),
                mount_path: CACHE_MOUNT.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ];
        volume_mounts.extend(access.volume_mounts);
        let mut volumes = vec![
            Volume {
                name: "node-cache".into(),
                host_path: Some(HostPathVolumeSource {
                    path: settings.host_cache_dir.clone(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(Default::default()),
                ..Volume::default()
            },
        ];
        volumes.extend(access.volumes);
        let container = Container {
            name: "preload".into(),
            image: Some(settings.image.clone()),
            command: Some(vec!["studiodrive-csi".into()]),
            args: Some(self.args(settings)),
            env: Some(env),
            volume_mounts: Some(volume_mounts),
            security_context: Some(SecurityContext {
                // The plugin's cache directories are root's (0700).
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
            resources: Some(settings.resources()),
            ..Container::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(self.job_name.to_string()),
                namespace: Some(jobs.namespace.clone()),
                labels: Some(labels.clone()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                // A run skips blocks its cache holds, so a retried pod goes on where it was.
                backoff_limit: Some(2),
                // Exit 2 is "some file missing or not fetched": a retry would end the same
                // way (and flip the node's status back to running), so the Job fails at once.
                // Other failures (a crash, the store unreachable) get the retries.
                pod_failure_policy: Some(PodFailurePolicy {
                    rules: vec![PodFailurePolicyRule {
                        action: "FailJob".into(),
                        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                            container_name: Some("preload".into()),
                            operator: "In".into(),
                            values: vec![INCOMPLETE_EXIT],
                        }),
                        ..PodFailurePolicyRule::default()
                    }],
                }),
                active_deadline_seconds: self.active_deadline_seconds,
                ttl_seconds_after_finished: Some(24 * 3600),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        // On that node, whatever the scheduler thinks of it: the cache is there.
                        node_name: Some(self.node.to_string()),
                        // The node plugin runs on tainted nodes too; so does its preload.
                        tolerations: Some(vec![Toleration {
                            operator: Some("Exists".into()),
                            ..Toleration::default()
                        }]),
                        // The GC Jobs' service account: its cloud identity (IRSA, Workload
                        // Identity) reaches the block store; its API token is not mounted.
                        service_account_name: jobs.service_account.clone(),
                        automount_service_account_token: Some(false),
                        containers: vec![container],
                        security_context: access.pod_security_context,
                        volumes: Some(volumes),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_runs_on_its_node_with_the_host_cache_and_the_store_secrets() {
        let jobs = GcJobSettings {
            metadata_url_secret: Some(("studiodrive-metadata".into(), "url".into())),
            s3_credentials_secret: Some(("studiodrive-s3".into(), "credentials".into())),
            store_env: vec![("STUDIODRIVE_STORE".into(), "s3://frames".into())],
            ..GcJobSettings::default()
        };
        let settings = PreloadJobSettings {
            host_cache_dir: "/mnt/nvme/studiodrive".into(),
            ..PreloadJobSettings::default()
        };
        let job = PreloadJob {
            job_name: "sdpreload-sh010-00",
            uid: "uid-1",
            namespace: "render",
            name: "sh010",
            node: "node-a",
            workspace: "render.show",
            manifest: "seq/f.%04d.exr [1-200]\n$(HOME)",
            active_deadline_seconds: Some(600),
        }
        .build(&jobs, &settings);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(600));
        let rule = &spec.pod_failure_policy.as_ref().unwrap().rules[0];
        assert_eq!(rule.action, "FailJob");
        assert_eq!(rule.on_exit_codes.as_ref().unwrap().values, [INCOMPLETE_EXIT]);
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.node_name.as_deref(), Some("node-a"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("studiodrive-gc"));
        let host = pod.volumes.as_ref().unwrap()[0].host_path.as_ref().unwrap();
        assert_eq!(host.path, "/mnt/nvme/studiodrive");
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].as_str()
        };
        assert_eq!(after("--report-as"), "render/sh010");
        assert_eq!(after("--node"), "$(NODE_NAME)");
        assert!(
            args.contains(&"--manifest-text=seq/f.%04d.exr [1-200]\n$$(HOME)".to_string()),
            "{args:?}"
        );
        assert_eq!(after("--workspace"), "render.show");
        let env: Vec<&str> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        for name in [
            "NODE_NAME",
            "STUDIODRIVE_METADATA_URL",
            "STUDIODRIVE_STORE",
            "STUDIODRIVE_S3_CREDENTIALS_FILE",
        ] {
            assert!(env.contains(&name), "{name} missing: {env:?}");
        }
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.privileged, sc.allow_privilege_escalation),
            (Some(false), Some(false))
        );
        let ann = job.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[PRELOAD_ANNOTATION], "render/sh010");
        assert_eq!(ann[NODE_ANNOTATION], "node-a");
        assert_eq!(job.metadata.labels.as_ref().unwrap()[PRELOAD_UID_LABEL], "uid-1");
    }
}
