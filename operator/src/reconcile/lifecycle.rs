//! Reconciles `LifecyclePolicy` resources: observes the last pass's Job, starts the next pass
//! when due (server-side apply of a deterministically named Job, so a retry never starts a
//! second pass) and records the schedule in status. No finalizer: the Jobs are owned by the
//! policy and garbage-collected with it.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::instrument;

use super::{Context, ReconcileError, action, object_key, patch_status_if_changed, publish};
use crate::crd::{FIELD_MANAGER, LifecyclePolicy};
use crate::gc_job::build_job;
use crate::plan::lifecycle::{Input, JobObservation, Observed, Op, plan};
use crate::store::StudioStore;

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

/// The controller's reconcile function for LifecyclePolicies.
#[instrument(skip_all, name = "reconcile.lifecyclepolicy", fields(object = %policy.name_any()))]
pub async fn reconcile<S: StudioStore>(
    policy: Arc<LifecyclePolicy>,
    ctx: Arc<Context<S>>,
) -> Result<Action, ReconcileError> {
    let now = (ctx.clock)();
    let api: Api<LifecyclePolicy> = Api::all(ctx.client.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.gc.namespace);
    let name = policy
        .metadata
        .name
        .as_deref()
        .ok_or(ReconcileError::MissingField("name"))?;
    let input = Input {
        name,
        generation: policy.metadata.generation.unwrap_or_default(),
        created: policy.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
        spec: &policy.spec,
        status: policy.status.as_ref(),
    };
    let job = match policy.status.as_ref().and_then(|s| s.last_run.as_ref()) {
        Some(run) => jobs.get_opt(&run.job_name).await?.as_ref().map(observe_job),
        None => None,
    };
    let p = plan(&input, &Observed { job }, now);
    for op in &p.ops {
        let Op::StartPass {
            pass_id, job_name, ..
        } = op;
        let job = build_job(&policy, pass_id, job_name, &ctx.gc);
        jobs.patch(
            job_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&job),
        )
        .await?;
    }
    patch_status_if_changed(&api, policy.as_ref(), policy.status.as_ref(), &p.status).await?;
    publish(&ctx.recorder, policy.as_ref(), &p.events).await;
    ctx.backoff.succeed(&object_key(policy.as_ref()));
    Ok(action(p.requeue))
}
