//! Builds the Kubernetes Job that runs one GC pass of a LifecyclePolicy:
//! `studiodrive-operator gc --policy <name> --pass-id <id> [--dry-run] --deletes-per-second N
//! --backoff-latency-ms M --rules <JSON> [--workspaces NAME,...] [--kinds KIND,...]` in the
//! operator's namespace, owned by the (cluster-scoped) policy so that deleting the policy
//! deletes its Jobs.
//!
//! The pass's mode (`dryRun`), limits (`throttle`), rules and scope are fixed in the Job's
//! arguments when the pass starts: the Job's pod retries (`backoffLimit`) resume the same pass
//! id, and must not switch from a dry run to a real one, change pace, or purge by other rules
//! or in other workspaces because the policy (or a Workspace's labels) changed in between. The
//! next pass picks up the edit. The scope is resolved to store names by the reconciler, so
//! the Job needs no Kubernetes API access. [`GcPassArgs`] is both what the Job passes and
//! what the `gc` subcommand parses, so the two cannot drift apart.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use kube::Resource;
use kube::api::ObjectMeta;

use crate::crd::{LifecyclePolicy, LifecycleRules, WorkspaceKind};
use crate::store::drive_adapter::to_kind;

/// The annotation of a GC Job naming its pass.
pub const PASS_ID_ANNOTATION: &str = "studiodrive.dev/pass-id";

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
    /// Plain (not secret) settings of the block store, as environment variables
    /// (STUDIODRIVE_STORE, STUDIODRIVE_S3_ENDPOINT, STUDIODRIVE_S3_REGION).
    pub store_env: Vec<(String, String)>,
    /// Secret and key holding an AWS shared-credentials file, mounted read-only into the
    /// Job's pod and named by STUDIODRIVE_S3_CREDENTIALS_FILE (never copied into the Job).
    pub s3_credentials_secret: Option<(String, String)>,
}

/// Where a GC Job's pod sees the S3 credentials Secret.
const S3_CREDENTIALS_DIR: &str = "/etc/studiodrive/s3";

impl Default for GcJobSettings {
    fn default() -> GcJobSettings {
        GcJobSettings {
            namespace: "studiodrive-system".into(),
            image: "ghcr.io/studiodrive/studiodrive-operator:latest".into(),
            service_account: Some("studiodrive-gc".into()),
            metadata_url_secret: None,
            store_env: Vec::new(),
            s3_credentials_secret: None,
        }
    }
}

/// The arguments of one GC pass: the `gc` subcommand's flags.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct GcPassArgs {
    /// The LifecyclePolicy name (cluster-scoped).
    #[arg(long)]
    pub policy: String,
    /// The pass id; re-running the same id resumes the pass.
    #[arg(long)]
    pub pass_id: String,
    /// Report what the pass would do without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Object deletions per second.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub deletes_per_second: u32,
    /// Pause while metadata transactions take longer than this many milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=600_000))]
    pub backoff_latency_ms: u32,
    /// Run shard I (from 0) of N of the pass: its blocks split by hash range, one Job per
    /// shard, all with the same pass id; shard 0 also runs the namespace phases.
    #[arg(long, value_parser = drive::gc::parse_shard)]
    pub shard: Option<(u32, u32)>,
    /// The policy's rules (its `spec.rules` as JSON); without it the pass only sweeps blocks.
    #[arg(long, value_parser = parse_rules, default_value = "{}")]
    pub rules: LifecycleRules,
    /// Which workspaces the rules apply to (the block sweep is storage-wide).
    #[command(flatten)]
    pub scope: PassScope,
    /// Where the pass runs: from the Job's environment ([`GcJobSettings`]), never its
    /// arguments.
    #[command(flatten)]
    pub storage: GcStorage,
}

/// The workspaces a pass's rules apply to, resolved from the policy's selector when the pass
/// starts ([`crate::plan::lifecycle::resolve_scope`]).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct PassScope {
    /// Store names of the workspaces, comma-separated (none when the flag has no value);
    /// every workspace of `--kinds` when the flag is absent.
    #[arg(long, num_args = 0..=1, value_delimiter = ',')]
    pub workspaces: Option<Vec<String>>,
    /// Workspace kinds, comma-separated (user, project, team); every kind when absent.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    pub kinds: Vec<WorkspaceKind>,
}

/// The storage a GC pass works on, from the environment of its Job.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct GcStorage {
    /// The metadata store URL (from the Secret the operator names).
    #[arg(long, env = "STUDIODRIVE_METADATA_URL", hide_env_values = true)]
    pub metadata_url: Option<String>,
    /// The block store: `s3://bucket/prefix` or `file:///dir`.
    #[arg(long, env = "STUDIODRIVE_STORE")]
    pub store: Option<String>,
    /// S3-compatible endpoint of the block store.
    #[arg(long, env = "STUDIODRIVE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region of the block store's bucket.
    #[arg(long, env = "STUDIODRIVE_S3_REGION")]
    pub s3_region: Option<String>,
    /// An AWS shared-credentials file for the block store (else the default credential chain).
    #[arg(long, env = "STUDIODRIVE_S3_CREDENTIALS_FILE")]
    pub s3_credentials_file: Option<std::path::PathBuf>,
    /// Seconds a block must be untouched before a pass may delete it: longer than any upload,
    /// and at least 600, because mounts renew the blocks their open write sessions hold
    /// (and keep no copy of) once a minute.
    #[arg(long, env = "STUDIODRIVE_GC_GRACE_SECONDS", default_value_t = DEFAULT_GRACE_SECONDS,
          value_parser = clap::value_parser!(u64).range(MIN_GRACE_SECONDS..))]
    pub grace_seconds: u64,
}

/// An hour: longer than any upload and write session.
const DEFAULT_GRACE_SECONDS: u64 = 3600;

/// Ten times the interval at which mounts renew the blocks of open write sessions.
const MIN_GRACE_SECONDS: u64 = 600;

impl Default for GcStorage {
    /// What the `gc` subcommand parses with an empty environment.
    fn default() -> GcStorage {
        GcStorage {
            metadata_url: None,
            store: None,
            s3_endpoint: None,
            s3_region: None,
            s3_credentials_file: None,
            grace_seconds: DEFAULT_GRACE_SECONDS,
        }
    }
}

/// Parses `--rules`.
fn parse_rules(json: &str) -> Result<LifecycleRules, String> {
    serde_json::from_str(json).map_err(|e| format!("not the JSON of a policy's rules: {e}"))
}

/// Parses one of `--kinds`.
fn parse_kind(kind: &str) -> Result<WorkspaceKind, String> {
    serde_json::from_value(serde_json::Value::String(kind.to_string()))
        .map_err(|_| format!("{kind:?} is not a workspace kind (user, project, team)"))
}

/// The name of a kind in `--kinds`.
fn kind_name(kind: WorkspaceKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Runs pass `args` (the `gc` subcommand): the lifecycle pass of `drive::lifecycle` with the
/// rules and scope of its arguments, on the Job's storage. Returns its report.
pub async fn run_pass(args: &GcPassArgs) -> anyhow::Result<drive::lifecycle::LifecycleReport> {
    use anyhow::Context as _;
    let storage = &args.storage;
    let url = storage.metadata_url.clone().context(
        "STUDIODRIVE_METADATA_URL is not set: the GC Job gets it from the Secret the operator names",
    )?;
    let location: drive::data::StoreLocation = storage
        .store
        .as_deref()
        .context(
            "STUDIODRIVE_STORE is not set: the GC Job gets it from the operator's --object-store-bucket",
        )?
        .parse()
        .context("STUDIODRIVE_STORE")?;
    let s3 = location
        .s3_config(storage.s3_endpoint.as_deref(), storage.s3_region.as_deref())
        .map(|mut cfg| {
            cfg.credentials_file.clone_from(&storage.s3_credentials_file);
            cfg
        });
    let store = location.open(s3).await.context("open the block store")?;
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(url))
        .await
        .context("connect to the metadata store")?;
    let opts = args.lifecycle_options();
    let report = drive::lifecycle::run_pass(&meta, store.as_ref(), &opts)
        .await
        .with_context(|| format!("GC pass {} of LifecyclePolicy {}", args.pass_id, args.policy))?;
    tracing::info!(policy = %args.policy, report = %serde_json::to_string(&report).unwrap_or_default(), "GC pass finished");
    Ok(report)
}

impl GcPassArgs {
    /// The arguments of pass `pass_id` (or of its shard `shard`) of `policy` on the workspaces
    /// `scope`, from its spec as it is now.
    pub fn for_pass(
        policy: &LifecyclePolicy,
        pass_id: &str,
        shard: Option<(u32, u32)>,
        scope: &PassScope,
    ) -> GcPassArgs {
        GcPassArgs {
            policy: policy.metadata.name.clone().unwrap_or_default(),
            pass_id: pass_id.to_string(),
            dry_run: policy.spec.dry_run,
            deletes_per_second: policy.spec.throttle.deletes_per_second,
            backoff_latency_ms: policy.spec.throttle.backoff_latency_ms,
            shard,
            rules: policy.spec.rules.clone(),
            scope: scope.clone(),
            storage: GcStorage::default(),
        }
    }

    /// What the engine runs for these arguments. `purgeDeletedAfterDays` becomes a retention
    /// class of the selected kinds over whole workspaces, next to the policy's own classes
    /// (the engine keeps data as long as the longest class that applies says).
    pub fn lifecycle_options(&self) -> drive::lifecycle::LifecycleOptions {
        use drive::lifecycle::{ExpireRule, TransitionRule, WorkspaceScope};
        use drive::rules::gc::{RetentionClass, SnapshotRetention, days_to_duration};
        let kinds = |k: &[WorkspaceKind]| k.iter().copied().map(to_kind).collect::<Vec<_>>();
        let mut blocks = drive::gc::BlockPassOptions::new(self.pass_id.clone());
        blocks.dry_run = self.dry_run;
        blocks.deletes_per_second = self.deletes_per_second;
        blocks.grace = std::time::Duration::from_secs(self.storage.grace_seconds);
        blocks.backoff_latency = std::time::Duration::from_millis(u64::from(self.backoff_latency_ms));
        blocks.shard = self.shard;
        let rules = &self.rules;
        let whole_workspaces = rules.purge_deleted_after_days.map(|days| RetentionClass {
            kinds: kinds(&self.scope.kinds),
            path_prefix: None,
            keep: days_to_duration(days),
        });
        let classes = rules.retention_classes.iter().map(|c| RetentionClass {
            kinds: kinds(&c.kinds),
            path_prefix: c.path_prefix.clone(),
            keep: days_to_duration(c.days),
        });
        drive::lifecycle::LifecycleOptions {
            blocks,
            scope: WorkspaceScope {
                names: self.scope.workspaces.clone(),
                kinds: kinds(&self.scope.kinds),
            },
            retention: whole_workspaces.into_iter().chain(classes).collect(),
            snapshots: rules
                .snapshot_retention
                .as_ref()
                .map_or_else(SnapshotRetention::default, |r| SnapshotRetention {
                    keep_last: r.keep_last,
                    max_age: r.max_age_days.map(days_to_duration),
                }),
            expire: rules.expire.as_ref().map(|e| ExpireRule {
                paths: e.paths.clone(),
                not_accessed_for_days: e.not_accessed_for_days,
            }),
            transition: rules.transition.as_ref().map(|t| TransitionRule {
                storage_class: t.storage_class.clone(),
                after_days: t.after_days,
            }),
            event_retention: rules.event_retention_days.map(days_to_duration),
            purge_pace: drive::meta::PurgePace::default(),
        }
    }

    /// The container arguments: the `gc` subcommand and its flags (`--dry-run` only when set).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "gc".to_string(),
            "--policy".to_string(),
            self.policy.clone(),
            "--pass-id".to_string(),
            self.pass_id.clone(),
        ];
        if self.dry_run {
            args.push("--dry-run".to_string());
        }
        args.extend([
            "--deletes-per-second".to_string(),
            self.deletes_per_second.to_string(),
            "--backoff-latency-ms".to_string(),
            self.backoff_latency_ms.to_string(),
            "--rules".to_string(),
            serde_json::to_string(&self.rules).unwrap_or_else(|_| "{}".to_string()),
        ]);
        if let Some((index, count)) = self.shard {
            args.push("--shard".to_string());
            args.push(format!("{index}/{count}"));
        }
        if let Some(names) = &self.scope.workspaces {
            // A bare `--workspaces` is the empty list: the selector matched no workspace.
            args.push("--workspaces".to_string());
            if !names.is_empty() {
                args.push(names.join(","));
            }
        }
        if !self.scope.kinds.is_empty() {
            args.push("--kinds".to_string());
            args.push(
                self.scope
                    .kinds
                    .iter()
                    .map(|k| kind_name(*k))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        args
    }
}

/// What a Job's pod needs to reach the metadata store and the block store: the metadata URL
/// from its Secret, the store's plain settings, and the S3 credentials file mounted from its
/// Secret (group-readable by the pod's fsGroup; never copied into the Job). GC and preload
/// Jobs share it.
pub(crate) struct StoreAccess {
    pub env: Vec<EnvVar>,
    pub volume_mounts: Vec<VolumeMount>,
    pub volumes: Vec<Volume>,
    pub pod_security_context: Option<PodSecurityContext>,
}

impl StoreAccess {
    pub(crate) fn of(settings: &GcJobSettings) -> StoreAccess {
        let secret_env = settings.metadata_url_secret.as_ref().map(|(name, key)| EnvVar {
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
        });
        let env = secret_env
            .into_iter()
            .chain(settings.store_env.iter().map(|(name, value)| EnvVar {
                name: name.clone(),
                value: Some(value.clone()),
                ..EnvVar::default()
            }))
            .chain(settings.s3_credentials_secret.iter().map(|(_, key)| EnvVar {
                name: "STUDIODRIVE_S3_CREDENTIALS_FILE".into(),
                value: Some(format!("{S3_CREDENTIALS_DIR}/{key}")),
                ..EnvVar::default()
            }))
            .collect();
        let Some((name, key)) = &settings.s3_credentials_secret else {
            return StoreAccess {
                env,
                volume_mounts: Vec::new(),
                volumes: Vec::new(),
                pod_security_context: None,
            };
        };
        StoreAccess {
            env,
            volume_mounts: vec![VolumeMount {
                name: "s3-credentials".into(),
                mount_path: S3_CREDENTIALS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }],
            volumes: vec![Volume {
                name: "s3-credentials".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(name.clone()),
                    items: Some(vec![KeyToPath {
                        key: key.clone(),
                        path: key.clone(),
                        ..Default::default()
                    }]),
                    // Group-readable: the pod's fsGroup, not its uid, owns it.
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }],
            pod_security_context: Some(PodSecurityContext {
                fs_group: Some(65532),
                ..Default::default()
            }),
        }
    }
}

/// The Job `job_name` for pass `pass_id` (or its shard `shard`) of `policy` on the workspaces
/// `scope`.
pub fn build_job(
    policy: &LifecyclePolicy,
    pass_id: &str,
    shard: Option<(u32, u32)>,
    job_name: &str,
    scope: &PassScope,
    settings: &GcJobSettings,
) -> Job {
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
    let access = StoreAccess::of(settings);
    let env = (!access.env.is_empty()).then_some(access.env);
    let container = Container {
        name: "gc".into(),
        image: Some(settings.image.clone()),
        args: Some(GcPassArgs::for_pass(policy, pass_id, shard, scope).to_args()),
        env,
        volume_mounts: (!access.volume_mounts.is_empty()).then_some(access.volume_mounts),
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
                PASS_ID_ANNOTATION.to_string(),
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
                    security_context: access.pod_security_context,
                    volumes: (!access.volumes.is_empty()).then_some(access.volumes),
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
