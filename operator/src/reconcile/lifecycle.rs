//! The LifecyclePolicy kind of the driver: observes the last pass's Job (and, once it
//! succeeded, the report its pass stored), starts the next pass when due (creates a
//! deterministically named Job, adopting it when it exists, so a retry never starts a second
//! pass) with the selector resolved to store names, and records the schedule and results in
//! status.
//!
//! It differs from the store kinds in two ways: no finalizer (the Jobs are owned by the
//! policy and garbage-collected with it), and one round per reconcile (the status records
//! the started pass; the next reconcile observes its Job).

use std::sync::Arc;

use drive::lifecycle::LifecycleReport;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::Recorder;

use super::driver::{Kind, LiveKind, StatusFields};
use super::{Context, ReconcileError};
use crate::crd::{FIELD_MANAGER, LifecyclePolicy, LifecyclePolicyStatus, PassResult, Workspace};
use crate::gc_job::{GcJobSettings, PASS_ID_ANNOTATION, PassScope, build_job};
use crate::plan::Plan;
use crate::plan::lifecycle::{self as planner, Input, JobObservation, Observed, Op, WorkspaceInfo};
use crate::store::StudioStore;

/// The LifecyclePolicy kind, for one policy: its GC Jobs' API and settings, and the Workspace
/// resources its selector picks from.
#[derive(Clone)]
pub struct LifecyclePolicies {
    pub jobs: Api<Job>,
    pub workspaces: Api<Workspace>,
    pub recorder: Recorder,
    pub settings: GcJobSettings,
    /// The policy, the owner of the Jobs it starts.
    pub policy: Arc<LifecyclePolicy>,
}

/// Workspaces listed per request while resolving a selector.
const LIST_PAGE: u32 = 500;

impl LifecyclePolicies {
    /// The workspaces pass `pass_id` works on: the policy's selector resolved against the
    /// Workspace resources as they are now. Says so in an event when it had to fall back to
    /// the selector's kinds.
    async fn scope(&self) -> Result<PassScope, ReconcileError> {
        let selector = &self.policy.spec.selector;
        // The planner refuses a policy whose selector does not parse before it starts a pass;
        // should one get here anyway, no Job starts (never a pass on every workspace).
        let labels = planner::label_selector(selector)?;
        let mut listed = Vec::new();
        if planner::needs_workspace_list(selector)? {
            let mut params = ListParams::default().limit(LIST_PAGE);
            if !labels.selects_all() {
                params = params.labels_from(&labels);
            }
            loop {
                let page = self.workspaces.list(&params).await?;
                listed.extend(page.items);
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
        let empty = Default::default();
        let infos = listed.iter().map(|w| WorkspaceInfo {
            namespace: w.metadata.namespace.as_deref().unwrap_or_default(),
            name: w.metadata.name.as_deref().unwrap_or_default(),
            kind: w.spec.kind,
            labels: w.metadata.labels.as_ref().unwrap_or(&empty),
        });
        Ok(planner::resolve_scope(selector, infos)?)
    }
}

impl LifecyclePolicies {
    /// Adopts the existing Job `job_name` as pass `pass_id`'s, after checking that it is:
    /// Job names are shortened policy names, so two policies can map to one name.
    async fn adopt(&self, job_name: &str, pass_id: &str) -> Result<(), ReconcileError> {
        let existing = self.jobs.get_opt(job_name).await?;
        let owner = existing
            .as_ref()
            .and_then(|j| j.metadata.annotations.as_ref())
            .and_then(|a| a.get(PASS_ID_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        if owner != pass_id {
            return Err(ReconcileError::JobNameTaken {
                job: job_name.to_string(),
                other: owner,
            });
        }
        tracing::info!(job = %job_name, "the Job of this pass exists already; adopting it");
        Ok(())
    }
}

/// What the planner needs to know about a Job.
pub fn observe_job(job: &Job) -> JobObservation {
    let status = job.status.clone().unwrap_or_default();
    let failed = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    JobObservation {
        succeeded: status.succeeded.unwrap_or(0) > 0,
        failed,
        completion_time: status.completion_time.map(|t| t.0),
    }
}

impl Kind for LifecyclePolicies {
    type Resource = LifecyclePolicy;
    type Status = LifecyclePolicyStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    type Loaded = ();

    const FINALIZER: bool = false;
    const REPLAN: bool = false;

    /// A policy without a creation timestamp (not yet stored) counts as created `now`.
    fn input(policy: &LifecyclePolicy, now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        Ok(Input {
            name: policy
                .metadata
                .name
                .as_deref()
                .ok_or(ReconcileError::MissingField("name"))?,
            generation: policy.metadata.generation.unwrap_or_default(),
            created: policy.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
            spec: &policy.spec,
            status: policy.status.as_ref(),
        })
    }

    /// Reads the Jobs of the last pass the status records and, when they all just succeeded,
    /// the report the pass stored (of a sharded pass, its shards' reports added up).
    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
        let Some(run) = input.status.and_then(|s| s.last_run.as_ref()) else {
            return Ok(Observed::default());
        };
        let mut jobs = Vec::new();
        for (name, _) in planner::shard_jobs(&run.job_name, run.shards) {
            let job = self.jobs.get_opt(&name).await?.as_ref().map(observe_job);
            jobs.push((name, job));
        }
        let finishing = run.result == PassResult::Running
            && jobs.iter().all(|(_, j)| j.as_ref().is_some_and(|j| j.succeeded));
        let report = match (finishing, run.shards) {
            (false, _) => None,
            (true, 1) => store.pass_report(&run.pass_id).await?,
            (true, shards) => {
                let mut reports = Vec::new();
                for index in 0..shards {
                    let row = drive::gc::shard_row_id(&run.pass_id, index, shards);
                    reports.push(store.pass_report(&row).await?);
                }
                LifecycleReport::of_shards(reports)
            }
        };
        Ok(Observed { jobs, report })
    }

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, LifecyclePolicyStatus> {
        planner::plan(input, observed, now)
    }

    /// Creates the GC Job of each pass to start. A pass's arguments are fixed when its Job is
    /// created (and a Job's pod template is immutable), so a retry after a crash between
    /// creating the Job and recording the pass in status adopts the Job that exists, even if
    /// the policy or the Workspaces changed in between.
    async fn apply<S: StudioStore>(&self, _: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        for op in ops {
            let Op::StartPass {
                pass_id,
                job_name,
                shards,
                ..
            } = op;
            let scope = self.scope().await?;
            for (name, shard) in planner::shard_jobs(job_name, *shards) {
                let job = build_job(&self.policy, pass_id, shard, &name, &scope, &self.settings);
                match self.jobs.create(&params, &job).await {
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {
                        self.adopt(&name, pass_id).await?;
                    }
                    result => {
                        result?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl LiveKind for LifecyclePolicies {
    fn live<S: StudioStore>(ctx: &Context<S>, policy: &Arc<LifecyclePolicy>) -> LifecyclePolicies {
        LifecyclePolicies {
            jobs: Api::namespaced(ctx.client.clone(), &ctx.gc.namespace),
            workspaces: Api::all(ctx.client.clone()),
            recorder: ctx.recorder.clone(),
            settings: ctx.gc.clone(),
            policy: policy.clone(),
        }
    }

    /// Cluster-scoped.
    fn api(client: kube::Client, _: &LifecyclePolicy) -> Result<Api<LifecyclePolicy>, ReconcileError> {
        Ok(Api::all(client))
    }
}

impl StatusFields for LifecyclePolicyStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
