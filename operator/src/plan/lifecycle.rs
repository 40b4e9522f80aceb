//! Planner for `LifecyclePolicy`: when the next GC pass is due, whether to start one, and what
//! the status says about the last pass.
//!
//! Scheduling follows CronJob semantics with `concurrencyPolicy: Forbid`: at most one pass
//! runs at a time, and after downtime only the latest missed run is started, not a burst.
//! The Job name and pass id derive from the policy name and the scheduled time, so a reconcile
//! that crashes after creating the Job and before writing status finds that Job and adopts
//! it instead of starting a second pass.
//!
//! When the Job succeeds, the observation carries the report the pass stored in the metadata
//! store, and the status takes its counts; a failed Job gives `lastError` and `Degraded`.
//! [`resolve_scope`] turns the policy's selector into the store names a pass works on.

use std::collections::BTreeMap;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use drive::lifecycle::LifecycleReport;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{Selector, SelectorExt as _};

use super::workspace::workspace_store_name;
use super::{EventNote, Plan, RESYNC, SpecError, invalid_spec_conditions, invalid_spec_event, store_name};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{
    LastRun, LifecyclePolicySpec, LifecyclePolicyStatus, PassCounts, PassResult, PolicyPhase, WorkspaceKind,
    WorkspaceSelector,
};
use crate::gc_job::PassScope;

/// How often a running pass is looked at when no Job event arrives.
const RUNNING_POLL: Duration = Duration::from_secs(60);

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub name: &'a str,
    pub generation: i64,
    pub created: Timestamp,
    pub spec: &'a LifecyclePolicySpec,
    pub status: Option<&'a LifecyclePolicyStatus>,
}

/// The state of the Job of the last pass, if it still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobObservation {
    pub succeeded: bool,
    pub failed: bool,
    pub completion_time: Option<Timestamp>,
}

/// Observed state: the last pass's Jobs, one per shard, by name (`None` when it does not
/// exist) and, once they all succeeded, the report the pass stored (of a sharded pass, the
/// sum of its shards' reports; `None` when one is missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub jobs: Vec<(String, Option<JobObservation>)>,
    pub report: Option<LifecycleReport>,
}

/// An action on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the GC Job for a pass.
    /// Create the GC Jobs for a pass, one per shard (see [`shard_jobs`]).
    StartPass {
        pass_id: String,
        job_name: String,
        scheduled: Timestamp,
        shards: u32,
    },
}

/// The Jobs of a pass run as `shards` shards, with the shard each runs: the Job `job_name`
/// alone (unsharded) for one, else `<job_name>-<index>` for each (still a DNS label: a job
/// name is at most 56 characters, a shard suffix at most 3).
pub fn shard_jobs(job_name: &str, shards: u32) -> Vec<(String, Option<(u32, u32)>)> {
    if shards <= 1 {
        return vec![(job_name.to_string(), None)];
    }
    (0..shards)
        .map(|index| (format!("{job_name}-{index}"), Some((index, shards))))
        .collect()
}

/// How the Jobs of a pass stand, together: failed when any failed or vanished, succeeded
/// when all succeeded.
enum PassJobs {
    Running,
    Succeeded {
        completed: Option<Timestamp>,
    },
    Failed {
        job: String,
        completed: Option<Timestamp>,
    },
    Vanished {
        job: String,
    },
}

/// How the Jobs of `run` stand; a Job missing from `observed` has vanished.
fn pass_jobs(run: &LastRun, observed: &[(String, Option<JobObservation>)]) -> PassJobs {
    let mut jobs = Vec::new();
    for (name, _) in shard_jobs(&run.job_name, run.shards) {
        match observed
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, j)| j.as_ref())
        {
            Some(job) => jobs.push((name, job)),
            None => return PassJobs::Vanished { job: name },
        }
    }
    if let Some((job, j)) = jobs.iter().find(|(_, j)| j.failed) {
        return PassJobs::Failed {
            job: job.clone(),
            completed: j.completion_time,
        };
    }
    if jobs.iter().all(|(_, j)| j.succeeded) {
        return PassJobs::Succeeded {
            completed: jobs.iter().filter_map(|(_, j)| j.completion_time).max(),
        };
    }
    PassJobs::Running
}

/// Parses a five-field cron expression (minute hour day-of-month month day-of-week), UTC.
pub fn parse_schedule(schedule: &str) -> Result<Cron, SpecError> {
    if schedule.split_whitespace().count() != 5 {
        return Err(SpecError(format!("schedule {schedule:?} must have five fields")));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| SpecError(format!("schedule {schedule:?}: {e}")))
}

/// The first run strictly after `after`.
pub fn next_run(cron: &Cron, after: Timestamp) -> Result<Timestamp, SpecError> {
    cron.find_next_occurrence(&after.to_zoned(TimeZone::UTC), false)
        .map(|z| z.timestamp())
        .map_err(|e| SpecError(format!("schedule has no next run: {e}")))
}

/// The latest run in `(after, now]`, if any.
pub fn due_run(cron: &Cron, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let first = next_run(cron, after).ok()?;
    if first > now {
        return None;
    }
    cron.find_previous_occurrence(&now.to_zoned(TimeZone::UTC), true)
        .ok()
        .map(|z| z.timestamp())
        .filter(|t| *t >= first)
}

/// Job name for the pass scheduled at `scheduled`: at most 63 characters, a DNS label.
pub fn job_name(policy: &str, scheduled: Timestamp) -> String {
    let stem: String = policy
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("sdgc-{}-{}", stem.trim_end_matches('-'), scheduled.as_second())
}

/// Pass id for the pass scheduled at `scheduled`.
pub fn pass_id(policy: &str, scheduled: Timestamp) -> String {
    format!("{policy}@{}", scheduled.as_second())
}

/// Plans one reconcile of a LifecyclePolicy.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, LifecyclePolicyStatus> {
    let previous = input.status.cloned().unwrap_or_default();
    let valid = store_name(input.name)
        .and_then(|()| label_selector(&input.spec.selector))
        .and_then(|_| parse_schedule(&input.spec.schedule));
    let cron = match valid {
        Ok(cron) => cron,
        Err(err) => {
            let status = LifecyclePolicyStatus {
                observed_generation: Some(input.generation),
                phase: Some(PolicyPhase::Invalid),
                next_run: None,
                conditions: conditions::merge(
                    &previous.conditions,
                    &invalid_spec_conditions(&err),
                    input.generation,
                    now,
                ),
                ..previous.clone()
            };
            return Plan {
                ops: Vec::new(),
                status,
                events: invalid_spec_event(&previous.conditions, &err),
                requeue: None,
            };
        }
    };
    let mut events = Vec::new();
    let mut last = previous.last_run.clone();
    let mut last_result = previous.last_result.clone();
    let mut last_error = previous.last_error.clone();
    if let Some(run) = last.as_mut().filter(|r| r.result == PassResult::Running) {
        let failure = match pass_jobs(run, &observed.jobs) {
            PassJobs::Succeeded { completed } => {
                run.result = PassResult::Succeeded;
                run.completion_time = Some(Time(completed.unwrap_or(now)));
                last_error = None;
                let note = match &observed.report {
                    Some(report) => {
                        let counts = pass_counts(report);
                        let note = format!("GC pass {} succeeded: {}", run.pass_id, counts_summary(&counts));
                        last_result = Some(counts);
                        note
                    }
                    None => format!(
                        "GC pass {} succeeded, but stored no report: lastResult still shows an earlier pass",
                        run.pass_id
                    ),
                };
                events.push(EventNote::normal("PassSucceeded", "Observe", note));
                None
            }
            PassJobs::Failed { job, completed } => {
                run.completion_time = Some(Time(completed.unwrap_or(now)));
                Some(format!(
                    "GC pass {} failed: its Job {job} gave up after its retries; the logs of its pods \
                     say why (kubectl logs job/{job} in the operator's namespace)",
                    run.pass_id
                ))
            }
            PassJobs::Running => None,
            PassJobs::Vanished { job } => {
                run.completion_time = Some(Time(now));
                Some(format!(
                    "GC pass {} failed: its Job {job} disappeared before it finished (deleted by hand?); \
                     the next scheduled pass runs as usual",
                    run.pass_id
                ))
            }
        };
        if let Some(message) = failure {
            run.result = PassResult::Failed;
            events.push(EventNote::warning(
                reason::PASS_FAILED,
                "Observe",
                message.clone(),
            ));
            last_error = Some(message);
        }
    }
    let running = last.as_ref().is_some_and(|r| r.result == PassResult::Running);
    let base = last.as_ref().map_or(input.created, |r| r.scheduled_time.0);
    let mut ops = Vec::new();
    if !running
        && !input.spec.suspend
        && let Some(scheduled) = due_run(&cron, base, now)
    {
        let run = LastRun {
            pass_id: pass_id(input.name, scheduled),
            job_name: job_name(input.name, scheduled),
            shards: input.spec.throttle.parallelism.max(1),
            scheduled_time: Time(scheduled),
            start_time: Time(now),
            completion_time: None,
            result: PassResult::Running,
        };
        ops.push(Op::StartPass {
            pass_id: run.pass_id.clone(),
            job_name: run.job_name.clone(),
            scheduled,
            shards: run.shards,
        });
        events.push(EventNote::normal(
            "PassStarted",
            "StartPass",
            match run.shards {
                1 => format!("started GC pass {}", run.pass_id),
                n => format!("started GC pass {} as {n} Jobs, one per shard", run.pass_id),
            },
        ));
        last = Some(run);
    }
    let running = last.as_ref().is_some_and(|r| r.result == PassResult::Running);
    let after = last.as_ref().map_or(now, |r| r.scheduled_time.0.max(now));
    let next = if input.spec.suspend {
        None
    } else {
        next_run(&cron, after).ok()
    };
    let mut desired = Vec::new();
    let failed = last.as_ref().is_some_and(|r| r.result == PassResult::Failed);
    match (&last, running) {
        (Some(run), true) => desired.push(Desired::yes(
            conditions::READY,
            reason::PASS_RUNNING,
            format!("GC pass {} is running", run.pass_id),
        )),
        _ => {
            let message = match (input.spec.suspend, next) {
                (true, _) => "suspended: no new passes are scheduled".to_string(),
                (false, Some(t)) => format!("next pass at {t}"),
                (false, None) => "the schedule has no future runs".to_string(),
            };
            desired.push(Desired::yes(conditions::READY, reason::SCHEDULED, message));
        }
    }
    if failed {
        desired.push(Desired::yes(
            conditions::DEGRADED,
            reason::PASS_FAILED,
            last_error
                .clone()
                .unwrap_or_else(|| "the last GC pass failed; see the Job's logs".to_string()),
        ));
    }
    let phase = if running {
        PolicyPhase::Running
    } else if input.spec.suspend {
        PolicyPhase::Suspended
    } else {
        PolicyPhase::Idle
    };
    let requeue = if running {
        RUNNING_POLL
    } else {
        next.and_then(|t| Duration::try_from(t.duration_since(now)).ok())
            .map_or(RESYNC, |d| d.min(RESYNC))
    };
    let status = LifecyclePolicyStatus {
        observed_generation: Some(input.generation),
        phase: Some(phase),
        last_run: last,
        next_run: next.map(Time),
        last_result,
        last_error,
        conditions: conditions::merge(&previous.conditions, &desired, input.generation, now),
    };
    Plan {
        ops,
        status,
        events,
        requeue: Some(requeue),
    }
}

/// The status counts of a pass's report.
pub fn pass_counts(report: &LifecycleReport) -> PassCounts {
    let blocks = &report.blocks;
    PassCounts {
        pass_id: report.pass_id.clone(),
        dry_run: report.dry_run,
        scanned: blocks.candidates,
        eligible_bytes: blocks.candidate_bytes,
        purged: report.purged_nodes,
        purged_workspaces: report.purged_workspaces,
        expired: report.expired,
        transitioned: report.transitioned,
        transitioned_bytes: report.transitioned_bytes,
        snapshots_released: report.snapshots_released,
        events_purged: report.events_purged,
        objects_freed: blocks.deleted + blocks.orphans_deleted,
        bytes_freed: blocks.deleted_bytes,
        duration_ms: report.duration_ms,
    }
}

/// The counts in one line, for the event at the end of a pass.
fn counts_summary(c: &PassCounts) -> String {
    let mode = if c.dry_run {
        "dry run, nothing changed; "
    } else {
        ""
    };
    format!(
        "{mode}freed {} objects ({} bytes) of {} eligible blocks ({} bytes); purged {} files and folders and \
         {} workspaces; expired {}; released {} snapshots; transitioned {} blocks; purged {} events; took {} ms",
        c.objects_freed,
        c.bytes_freed,
        c.scanned,
        c.eligible_bytes,
        c.purged,
        c.purged_workspaces,
        c.expired,
        c.snapshots_released,
        c.transitioned,
        c.events_purged,
        c.duration_ms
    )
}

/// Most workspace names a pass's arguments carry. A selector matching more is refused (an
/// invalid spec, no pass starts): widening it to its kinds would purge workspaces it never
/// selected.
pub const MAX_SCOPE_NAMES: usize = 1000;

/// A Workspace resource, as scope resolution sees it.
#[derive(Debug, Clone, Copy)]
pub struct WorkspaceInfo<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub kind: WorkspaceKind,
    pub labels: &'a BTreeMap<String, String>,
}

/// The selector's label selector, checked (an invalid operator is an invalid spec).
pub fn label_selector(selector: &WorkspaceSelector) -> Result<Selector, SpecError> {
    selector
        .label_selector
        .clone()
        .map_or(Ok(Selector::default()), Selector::try_from)
        .map_err(|e| SpecError(format!("selector.labelSelector: {e}")))
}

/// Whether resolving the selector needs the Workspace resources: it names namespaces or labels.
/// Otherwise the pass covers every workspace of the selector's kinds, including soft-deleted
/// ones whose resource is gone (the purge of deleted workspaces needs that).
pub fn needs_workspace_list(selector: &WorkspaceSelector) -> Result<bool, SpecError> {
    Ok(!selector.namespaces.is_empty() || !label_selector(selector)?.selects_all())
}

/// The scope of a pass: the store names of the Workspace resources the selector matches, or
/// every workspace of its kinds when it selects by kind only. A selector matching more than
/// [`MAX_SCOPE_NAMES`] is refused. Names are sorted, so the Job's arguments do not depend on
/// list order.
pub fn resolve_scope<'a>(
    selector: &WorkspaceSelector,
    workspaces: impl IntoIterator<Item = WorkspaceInfo<'a>>,
) -> Result<PassScope, SpecError> {
    if !needs_workspace_list(selector)? {
        return Ok(PassScope {
            workspaces: None,
            kinds: selector.kinds.clone(),
        });
    }
    let labels = label_selector(selector)?;
    let mut names: Vec<String> = workspaces
        .into_iter()
        .filter(|w| selector.namespaces.is_empty() || selector.namespaces.iter().any(|n| n == w.namespace))
        .filter(|w| selector.kinds.is_empty() || selector.kinds.contains(&w.kind))
        .filter(|w| labels.matches(w.labels))
        .filter_map(|w| workspace_store_name(w.namespace, w.name).ok())
        .collect();
    names.sort();
    names.dedup();
    if names.len() > MAX_SCOPE_NAMES {
        return Err(SpecError(format!(
            "the selector matches {} workspaces, more than the {MAX_SCOPE_NAMES} a pass can name: \
             narrow it, or select by kind only",
            names.len()
        )));
    }
    Ok(PassScope {
        workspaces: Some(names),
        kinds: selector.kinds.clone(),
    })
}
