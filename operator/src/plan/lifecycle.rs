//! Planner for `LifecyclePolicy`: when the next GC pass is due, whether to start one, and what
//! the status says about the last pass.
//!
//! Scheduling follows CronJob semantics with `concurrencyPolicy: Forbid`: at most one pass
//! runs at a time, and after downtime only the latest missed run is started, not a burst.
//! The Job name and pass id derive from the policy name and the scheduled time, so a reconcile
//! that crashes after creating the Job and before writing status re-applies the same Job
//! instead of starting a second pass.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{EventNote, Plan, RESYNC, SpecError, invalid_spec_conditions, invalid_spec_event, store_name};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{LastRun, LifecyclePolicySpec, LifecyclePolicyStatus, PassResult};

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

/// Observed state: the last pass's Job (`None` when it does not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub job: Option<JobObservation>,
}

/// An action on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the GC Job for a pass.
    StartPass {
        pass_id: String,
        job_name: String,
        scheduled: Timestamp,
    },
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
    let cron = match store_name(input.name).and_then(|()| parse_schedule(&input.spec.schedule)) {
        Ok(cron) => cron,
        Err(err) => {
            let status = LifecyclePolicyStatus {
                observed_generation: Some(input.generation),
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
    if let Some(run) = last.as_mut().filter(|r| r.result == PassResult::Running) {
        match &observed.job {
            Some(job) if job.succeeded => {
                run.result = PassResult::Succeeded;
                run.completion_time = Some(Time(job.completion_time.unwrap_or(now)));
                events.push(EventNote::normal(
                    "PassSucceeded",
                    "Observe",
                    format!("GC pass {} succeeded", run.pass_id),
                ));
            }
            Some(job) if job.failed => {
                run.result = PassResult::Failed;
                run.completion_time = Some(Time(job.completion_time.unwrap_or(now)));
                events.push(EventNote::warning(
                    reason::PASS_FAILED,
                    "Observe",
                    format!("GC pass {} failed", run.pass_id),
                ));
            }
            Some(_) => {}
            None => {
                run.result = PassResult::Failed;
                run.completion_time = Some(Time(now));
                events.push(EventNote::warning(
                    reason::PASS_FAILED,
                    "Observe",
                    format!("the Job {} of GC pass {} disappeared", run.job_name, run.pass_id),
                ));
            }
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
            scheduled_time: Time(scheduled),
            start_time: Time(now),
            completion_time: None,
            result: PassResult::Running,
        };
        ops.push(Op::StartPass {
            pass_id: run.pass_id.clone(),
            job_name: run.job_name.clone(),
            scheduled,
        });
        events.push(EventNote::normal(
            "PassStarted",
            "StartPass",
            format!("started GC pass {}", run.pass_id),
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
            "the last GC pass failed; see the Job's logs",
        ));
    }
    let requeue = if running {
        RUNNING_POLL
    } else {
        next.and_then(|t| Duration::try_from(t.duration_since(now)).ok())
            .map_or(RESYNC, |d| d.min(RESYNC))
    };
    let status = LifecyclePolicyStatus {
        observed_generation: Some(input.generation),
        last_run: last,
        next_run: next.map(Time),
        last_result: previous.last_result,
        conditions: conditions::merge(&previous.conditions, &desired, input.generation, now),
    };
    Plan {
        ops,
        status,
        events,
        requeue: Some(requeue),
    }
}
