//! The LifecyclePolicy kind of the driver: observes the last pass's Job, starts the next pass
//! when due (server-side apply of a deterministically named Job, so a retry never starts a
//! second pass) and records the schedule in status.
//!
//! It differs from the store kinds in two ways: no finalizer (the Jobs are owned by the
//! policy and garbage-collected with it), and one round per reconcile (the status records
//! the started pass; the next reconcile observes its Job).

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::driver::{Kind, LiveKind, StatusFields};
use super::{Context, ReconcileError};
use crate::crd::{FIELD_MANAGER, LifecyclePolicy, LifecyclePolicyStatus};
use crate::gc_job::{GcJobSettings, build_job};
use crate::plan::Plan;
use crate::plan::lifecycle::{self as planner, Input, JobObservation, Observed, Op};
use crate::store::StudioStore;

/// The LifecyclePolicy kind, for one policy: its GC Jobs' API and settings.
#[derive(Clone)]
pub struct LifecyclePolicies {
    pub jobs: Api<Job>,
    pub settings: GcJobSettings,
    /// The policy, the owner of the Jobs it starts.
    pub policy: Arc<LifecyclePolicy>,
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

    /// Reads the Job of the last pass the status records (not the store).
    async fn observe<S: StudioStore>(
        &self,
        _: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
        let job = match input.status.and_then(|s| s.last_run.as_ref()) {
            Some(run) => self.jobs.get_opt(&run.job_name).await?.as_ref().map(observe_job),
            None => None,
        };
        Ok(Observed { job })
    }

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, LifecyclePolicyStatus> {
        planner::plan(input, observed, now)
    }

    /// Applies the GC Job of each pass to start.
    async fn apply<S: StudioStore>(&self, _: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        for op in ops {
            let Op::StartPass {
                pass_id, job_name, ..
            } = op;
            let job = build_job(&self.policy, pass_id, job_name, &self.settings);
            self.jobs
                .patch(
                    job_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&job),
                )
                .await?;
        }
        Ok(())
    }
}

impl LiveKind for LifecyclePolicies {
    fn live<S: StudioStore>(ctx: &Context<S>, policy: &Arc<LifecyclePolicy>) -> LifecyclePolicies {
        LifecyclePolicies {
            jobs: Api::namespaced(ctx.client.clone(), &ctx.gc.namespace),
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
