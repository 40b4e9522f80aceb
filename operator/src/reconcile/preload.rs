//! The Preload kind of the driver: observes the workspace, the nodes the selector matches,
//! the preload's Jobs and the runs they recorded; creates a Job per node still to preload;
//! on deletion, deletes the Jobs and forgets the runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{FIELD_MANAGER, Preload, PreloadStatus};
use crate::gc_job::GcJobSettings;
use crate::plan::preload::{self as planner, Input, JobState, Observed, Op, preload_name};
use crate::plan::workspace::workspace_store_name;
use crate::plan::{EventNote, Plan};
use crate::preload_job::{
    NODE_ANNOTATION, PRELOAD_ANNOTATION, PRELOAD_UID_LABEL, PreloadJob, PreloadJobSettings,
};
use crate::store::StudioStore;

/// The Preload kind, for one preload: the Nodes it selects from and its Jobs' API.
#[derive(Clone)]
pub struct Preloads {
    pub nodes: Api<Node>,
    pub jobs: Api<Job>,
    pub job_settings: GcJobSettings,
    pub settings: PreloadJobSettings,
    pub preload: Arc<Preload>,
}

/// Objects listed per request.
const LIST_PAGE: u32 = 500;

impl Preloads {
    /// Names of the nodes the selector matches (none when it does not parse: the planner
    /// reports that).
    async fn selected_nodes(&self) -> Result<BTreeSet<String>, ReconcileError> {
        let Ok(selector) = planner::node_selector(&self.preload.spec) else {
            return Ok(BTreeSet::new());
        };
        let mut params = ListParams::default().limit(LIST_PAGE);
        if !selector.selects_all() {
            params = params.labels_from(&selector);
        }
        let mut names = BTreeSet::new();
        loop {
            let page = self.nodes.list_metadata(&params).await?;
            names.extend(page.items.into_iter().filter_map(|n| n.metadata.name));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        Ok(names)
    }

    fn uid_selector(uid: &str) -> ListParams {
        ListParams::default().labels(&format!("{PRELOAD_UID_LABEL}={uid}"))
    }

    /// This preload's Jobs, by node.
    async fn jobs_by_node(&self, uid: &str) -> Result<BTreeMap<String, JobState>, ReconcileError> {
        let listed = self.jobs.list(&Self::uid_selector(uid)).await?;
        Ok(listed
            .items
            .iter()
            .filter_map(|job| {
                let node = job.metadata.annotations.as_ref()?.get(NODE_ANNOTATION)?.clone();
                let observed = super::lifecycle::observe_job(job);
                Some((
                    node,
                    JobState {
                        succeeded: observed.succeeded,
                        failed: observed.failed,
                    },
                ))
            })
            .collect())
    }

    /// Adopts the existing Job `name` if it is this preload's Job for `node`.
    async fn adopt(&self, name: &str, node: &str) -> Result<(), ReconcileError> {
        let existing = self.jobs.get_opt(name).await?;
        let annotations = existing.as_ref().and_then(|j| j.metadata.annotations.as_ref());
        let uid = existing
            .as_ref()
            .and_then(|j| j.metadata.labels.as_ref())
            .and_then(|l| l.get(PRELOAD_UID_LABEL));
        let ours = uid.map(String::as_str) == self.preload.metadata.uid.as_deref()
            && annotations
                .and_then(|a| a.get(NODE_ANNOTATION))
                .map(String::as_str)
                == Some(node);
        if !ours {
            let other = annotations
                .and_then(|a| a.get(PRELOAD_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            return Err(ReconcileError::JobNameTaken {
                job: name.to_string(),
                other,
            });
        }
        Ok(())
    }
}

impl Kind for Preloads {
    type Resource = Preload;
    type Status = PreloadStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    type Loaded = ();

    /// The status records what the Jobs and runs show; the next reconcile observes the Jobs
    /// it created.
    const REPLAN: bool = false;

    fn input(p: &Preload, _now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        let (namespace, name) = namespaced_names(p)?;
        Ok(Input {
            namespace,
            name,
            uid: p
                .metadata
                .uid
                .as_deref()
                .ok_or(ReconcileError::MissingField("uid"))?,
            generation: p.metadata.generation.unwrap_or_default(),
            spec: &p.spec,
            status: p.status.as_ref(),
        })
    }

    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
        let workspace = match workspace_store_name(input.namespace, &input.spec.workspace) {
            Ok(name) => store.get_workspace(&name).await?,
            Err(_) => None,
        };
        let runs = match drive::preload::validate_name(&preload_name(input.namespace, input.name)) {
            Ok(()) => {
                store
                    .preload_runs(&preload_name(input.namespace, input.name))
                    .await?
            }
            Err(_) => Vec::new(),
        };
        Ok(Observed {
            workspace,
            nodes: self.selected_nodes().await?,
            jobs: self.jobs_by_node(input.uid).await?,
            runs,
        })
    }

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, PreloadStatus> {
        planner::plan(input, observed, now)
    }

    async fn apply<S: StudioStore>(&self, store: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        let (namespace, name) = namespaced_names(self.preload.as_ref())?;
        let uid = self
            .preload
            .metadata
            .uid
            .as_deref()
            .ok_or(ReconcileError::MissingField("uid"))?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        for op in ops {
            match op {
                Op::StartJob {
                    node,
                    job,
                    workspace,
                    active_deadline_seconds,
                } => {
                    let built = PreloadJob {
                        job_name: job,
                        uid,
                        namespace,
                        name,
                        node,
                        workspace,
                        manifest: &self.preload.spec.manifest,
                        active_deadline_seconds: *active_deadline_seconds,
                    }
                    .build(&self.job_settings, &self.settings);
                    match self.jobs.create(&params, &built).await {
                        Err(kube::Error::Api(status)) if status.is_already_exists() => {
                            self.adopt(job, node).await?;
                        }
                        result => drop(result?),
                    }
                }
                Op::DeleteJobs => {
                    let params = DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..DeleteParams::default()
                    };
                    drop(
                        self.jobs
                            .delete_collection(&params, &Self::uid_selector(uid))
                            .await?,
                    );
                }
                Op::RecordRun(run) => store.record_preload_run(run).await?,
                Op::DeleteRuns { name } => drop(store.delete_preload_runs(name).await?),
            }
        }
        Ok(())
    }

    fn plan_cleanup(input: &Input<'_>, _observed: &Observed) -> Vec<Op> {
        planner::plan_cleanup(input)
    }

    fn cleanup_note(ops: &[Op]) -> Option<EventNote> {
        (!ops.is_empty()).then(|| {
            EventNote::normal(
                "Deleted",
                "Delete",
                "the preload's Jobs were deleted and its runs forgotten",
            )
        })
    }
}

impl LiveKind for Preloads {
    fn live<S: StudioStore>(ctx: &Context<S>, preload: &Arc<Preload>) -> Preloads {
        Preloads {
            nodes: Api::all(ctx.client.clone()),
            jobs: Api::namespaced(ctx.client.clone(), &ctx.gc.namespace),
            job_settings: ctx.gc.clone(),
            settings: ctx.preload.clone(),
            preload: preload.clone(),
        }
    }

    fn api(client: kube::Client, obj: &Preload) -> Result<Api<Preload>, ReconcileError> {
        namespaced_api(client, obj)
    }
}

impl StatusFields for PreloadStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
