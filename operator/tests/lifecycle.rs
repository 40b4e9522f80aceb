//! LifecyclePolicy: the scheduling planner (when a pass starts, what status says about it),
//! the GC Job a pass runs as (its exact spec and command line), and the reconcile's requests
//! against kube's mock API server.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::mock::{MockHandle, Received, context, expect, expect_status, serve};
use common::*;
use drive::gc::PassReport;
use drive::lifecycle::LifecycleReport;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time};
use kube::api::ObjectMeta;
use operator::crd::conditions::{self, reason};
use operator::crd::{
    DeletionPolicy, ExpireRule, LastRun, LifecyclePolicy, LifecyclePolicySpec, LifecyclePolicyStatus,
    LifecycleRules, PassCounts, PassResult, PolicyPhase, RetentionClass, SnapshotRetention, Throttle,
    TransitionRule, WorkspaceKind, WorkspaceSelector,
};
use operator::gc_job::{GcJobSettings, GcPassArgs, PASS_ID_ANNOTATION, PassScope, build_job};
use operator::plan::lifecycle::{
    Input, JobObservation, MAX_SCOPE_NAMES, Observed, Op, WorkspaceInfo, job_name, needs_workspace_list,
    pass_id, plan, resolve_scope, shard_jobs,
};
use operator::reconcile::lifecycle::observe_job;
use operator::reconcile::{Context, LifecyclePolicies, reconcile};
use operator::store::memory::MemoryStore;
use proptest::prelude::*;
use serde_json::Value;

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
/// "0 3 * * *": 03:00 UTC on the first day of the epoch.
const FIRST_RUN: i64 = 3 * HOUR;

fn policy(name: &str, schedule: &str) -> LifecyclePolicy {
    let spec = LifecyclePolicySpec {
        selector: Default::default(),
        rules: LifecycleRules {
            purge_deleted_after_days: Some(30),
            ..LifecycleRules::default()
        },
        schedule: schedule.into(),
        throttle: Throttle::default(),
        dry_run: false,
        suspend: false,
    };
    let mut p = LifecyclePolicy::new(name, spec);
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.generation = Some(1);
    p.metadata.creation_timestamp = Some(Time(at(0)));
    p
}

fn input(p: &LifecyclePolicy) -> Input<'_> {
    Input {
        name: p.metadata.name.as_deref().unwrap_or_default(),
        generation: p.metadata.generation.unwrap_or_default(),
        created: p.metadata.creation_timestamp.as_ref().map_or(at(0), |t| t.0),
        spec: &p.spec,
        status: p.status.as_ref(),
    }
}

fn running(scheduled: i64, started: i64) -> LastRun {
    LastRun {
        pass_id: pass_id("nightly", at(scheduled)),
        job_name: job_name("nightly", at(scheduled)),
        shards: 1,
        scheduled_time: Time(at(scheduled)),
        start_time: Time(at(started)),
        completion_time: None,
        result: PassResult::Running,
    }
}

fn with_last_run(mut p: LifecyclePolicy, run: LastRun) -> LifecyclePolicy {
    p.status = Some(LifecyclePolicyStatus {
        last_run: Some(run),
        ..LifecyclePolicyStatus::default()
    });
    p
}

/// The Job of the pass scheduled at the first run, as observed.
fn job(succeeded: bool, failed: bool, completed: Option<i64>) -> Observed {
    job_of(FIRST_RUN, succeeded, failed, completed)
}

/// The Job of the pass scheduled at `scheduled`, as observed.
fn job_of(scheduled: i64, succeeded: bool, failed: bool, completed: Option<i64>) -> Observed {
    Observed {
        jobs: vec![(
            job_name("nightly", at(scheduled)),
            Some(JobObservation {
                succeeded,
                failed,
                completion_time: completed.map(at),
            }),
        )],
        report: None,
    }
}

fn ready(status: &LifecyclePolicyStatus) -> (&str, &str, &str) {
    let c = conditions::find(&status.conditions, "Ready").expect("Ready");
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

fn reasons(p: &operator::plan::Plan<Op, LifecyclePolicyStatus>) -> Vec<(&'static str, bool)> {
    p.events.iter().map(|e| (e.reason, e.warning)).collect()
}

// ---- planner ----

#[test]
fn before_the_first_scheduled_time_nothing_starts_and_next_run_is_reported() {
    let p = policy("nightly", "0 3 * * *");
    let plan = plan(&input(&p), &Observed::default(), at(HOUR));
    assert!(plan.ops.is_empty());
    assert_eq!(plan.status.next_run, Some(Time(at(FIRST_RUN))));
    assert_eq!(plan.status.last_run, None);
    let (status, why, message) = ready(&plan.status);
    assert_eq!((status, why), ("True", reason::SCHEDULED));
    assert!(message.contains("next pass at 1970-01-01T03:00:00Z"), "{message}");
    assert_eq!(
        plan.requeue,
        Some(Duration::from_secs(300)),
        "at most the resync interval"
    );
    // Close to the run, the requeue is the time left.
    let close = plan_at(&p, FIRST_RUN - 90);
    assert_eq!(close.requeue, Some(Duration::from_secs(90)));
}

fn plan_at(p: &LifecyclePolicy, now: i64) -> operator::plan::Plan<Op, LifecyclePolicyStatus> {
    plan(&input(p), &Observed::default(), at(now))
}

#[test]
fn a_due_run_starts_one_pass_with_a_deterministic_job_name_and_pass_id() {
    let p = policy("nightly", "0 3 * * *");
    let plan = plan_at(&p, FIRST_RUN + 60);
    assert_eq!(
        plan.ops,
        [Op::StartPass {
            pass_id: "nightly@10800".into(),
            job_name: "sdgc-nightly-10800".into(),
            scheduled: at(FIRST_RUN),
            shards: 1,
        }]
    );
    let run = plan.status.last_run.clone().expect("lastRun");
    assert_eq!(run.result, PassResult::Running);
    assert_eq!(run.scheduled_time, Time(at(FIRST_RUN)));
    assert_eq!(run.start_time, Time(at(FIRST_RUN + 60)));
    assert_eq!(plan.status.next_run, Some(Time(at(DAY + FIRST_RUN))));
    assert_eq!(ready(&plan.status).1, reason::PASS_RUNNING);
    assert_eq!(reasons(&plan), [("PassStarted", false)]);
    assert_eq!(
        plan.requeue,
        Some(Duration::from_secs(60)),
        "a running pass is polled every minute"
    );
    assert_eq!(plan.status.observed_generation, Some(1));
}

#[test]
fn after_downtime_only_the_latest_missed_run_starts() {
    let p = policy("nightly", "0 3 * * *");
    let plan = plan_at(&p, 3 * DAY + 5 * HOUR);
    assert!(
        matches!(&plan.ops[..], [Op::StartPass { scheduled, .. }] if *scheduled == at(3 * DAY + FIRST_RUN)),
        "{:?}",
        plan.ops
    );
}

#[test]
fn replanning_with_the_status_just_written_and_the_job_running_changes_nothing() {
    let mut p = policy("nightly", "0 3 * * *");
    let first = plan_at(&p, FIRST_RUN + 60);
    p.status = Some(first.status.clone());
    let second = plan(&input(&p), &job(false, false, None), at(FIRST_RUN + 60));
    assert!(
        second.ops.is_empty(),
        "the same pass is not started twice: {:?}",
        second.ops
    );
    assert!(second.events.is_empty());
    assert_eq!(second.status, first.status);
}

#[test]
fn a_running_pass_blocks_the_next_run_until_its_job_finishes() {
    let p = with_last_run(policy("nightly", "0 3 * * *"), running(FIRST_RUN, FIRST_RUN));
    // The next day's run is due but the pass still runs: concurrencyPolicy Forbid.
    let blocked = plan(&input(&p), &job(false, false, None), at(DAY + FIRST_RUN + 10));
    assert!(blocked.ops.is_empty());
    assert_eq!(ready(&blocked.status).1, reason::PASS_RUNNING);
    assert_eq!(blocked.status.phase, Some(PolicyPhase::Running));
    assert_eq!(blocked.requeue, Some(Duration::from_secs(60)));

    // It succeeds: recorded with the Job's completion time, and the due run starts.
    let done = plan(
        &input(&p),
        &job(true, false, Some(FIRST_RUN + 500)),
        at(DAY + FIRST_RUN + 10),
    );
    assert_eq!(reasons(&done), [("PassSucceeded", false), ("PassStarted", false)]);
    assert!(
        matches!(&done.ops[..], [Op::StartPass { job_name, .. }] if job_name == "sdgc-nightly-97200"),
        "{:?}",
        done.ops
    );
    assert_eq!(
        done.status.last_run.as_ref().map(|r| r.pass_id.as_str()),
        Some("nightly@97200")
    );
    assert!(conditions::find(&done.status.conditions, "Degraded").is_none());
}

#[test]
fn a_failed_or_vanished_job_marks_the_pass_failed_degraded_with_last_error() {
    let p = with_last_run(policy("nightly", "0 3 * * *"), running(FIRST_RUN, FIRST_RUN));
    let failed = plan(
        &input(&p),
        &job(false, true, Some(FIRST_RUN + 30)),
        at(FIRST_RUN + 600),
    );
    let run = failed.status.last_run.clone().expect("lastRun");
    assert_eq!(
        (run.result, run.completion_time),
        (PassResult::Failed, Some(Time(at(FIRST_RUN + 30))))
    );
    assert_eq!(reasons(&failed), [(reason::PASS_FAILED, true)]);
    let degraded = conditions::find(&failed.status.conditions, "Degraded").expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reason::PASS_FAILED)
    );
    assert_eq!(
        ready(&failed.status).1,
        reason::SCHEDULED,
        "the next pass is still scheduled"
    );
    assert!(failed.ops.is_empty(), "no retry before the next scheduled time");
    assert_eq!(failed.status.next_run, Some(Time(at(DAY + FIRST_RUN))));
    let error = failed.status.last_error.clone().expect("lastError");
    assert!(
        error.contains("GC pass nightly@10800 failed")
            && error.contains("kubectl logs job/sdgc-nightly-10800"),
        "says which pass and where to look: {error}"
    );
    assert_eq!(degraded.message, error);
    assert_eq!(failed.events[0].note, error);
    assert_eq!(failed.status.phase, Some(PolicyPhase::Idle));

    let vanished = plan(&input(&p), &Observed::default(), at(FIRST_RUN + 600));
    let run = vanished.status.last_run.clone().expect("lastRun");
    assert_eq!(
        (run.result, run.completion_time),
        (PassResult::Failed, Some(Time(at(FIRST_RUN + 600))))
    );
    assert!(
        vanished.events[0]
            .note
            .contains("GC pass nightly@10800 failed: its Job sdgc-nightly-10800 disappeared"),
        "{}",
        vanished.events[0].note
    );
    assert_eq!(
        vanished.status.last_error.as_deref(),
        Some(vanished.events[0].note.as_str())
    );

    // The next pass starts and succeeds: the error and Degraded go away.
    let mut p = p;
    p.status = Some(failed.status.clone());
    let next = plan_at(&p, DAY + FIRST_RUN + 5);
    p.status = Some(next.status.clone());
    let succeeded = plan(
        &input(&p),
        &job_of(DAY + FIRST_RUN, true, false, Some(DAY + FIRST_RUN + 50)),
        at(DAY + FIRST_RUN + 60),
    );
    assert_eq!(succeeded.status.last_error, None);
    assert!(conditions::find(&succeeded.status.conditions, "Degraded").is_none());
}

fn report(pass: &str, dry_run: bool) -> LifecycleReport {
    LifecycleReport {
        pass_id: pass.into(),
        dry_run,
        expired: 3,
        purged_entries: 40,
        purged_history_rows: 9,
        purged_nodes: 41,
        purged_workspaces: 2,
        snapshots_released: 5,
        transitioned: 6,
        transitioned_bytes: 6_000,
        events_purged: 700,
        blocks: PassReport {
            pass_id: pass.into(),
            dry_run,
            candidates: 12,
            candidate_bytes: 12_345,
            kept: 1,
            deleted: 11,
            deleted_bytes: 11_000,
            orphans_seen: 4,
            orphans_deleted: 2,
            duration_ms: 80,
            ..PassReport::default()
        },
        duration_ms: 90,
    }
}

#[test]
fn a_succeeded_pass_puts_its_report_counts_in_last_result_and_its_end_event() {
    let p = with_last_run(policy("nightly", "0 3 * * *"), running(FIRST_RUN, FIRST_RUN));
    let observed = Observed {
        report: Some(report("nightly@10800", false)),
        ..job(true, false, Some(FIRST_RUN + 500))
    };
    let done = plan(&input(&p), &observed, at(FIRST_RUN + 600));
    assert_eq!(
        done.status.last_result,
        Some(PassCounts {
            pass_id: "nightly@10800".into(),
            dry_run: false,
            scanned: 12,
            eligible_bytes: 12_345,
            purged: 41,
            purged_workspaces: 2,
            expired: 3,
            transitioned: 6,
            transitioned_bytes: 6_000,
            snapshots_released: 5,
            events_purged: 700,
            objects_freed: 13,
            bytes_freed: 11_000,
            duration_ms: 90,
        })
    );
    assert_eq!(done.status.phase, Some(PolicyPhase::Idle));
    assert_eq!(reasons(&done), [("PassSucceeded", false)]);
    let note = &done.events[0].note;
    for part in [
        "GC pass nightly@10800 succeeded",
        "freed 13 objects (11000 bytes) of 12 eligible blocks (12345 bytes)",
        "purged 41 files and folders and 2 workspaces",
        "expired 3",
        "released 5 snapshots",
        "transitioned 6 blocks",
    ] {
        assert!(note.contains(part), "{part:?} not in {note}");
    }

    // Planned again with the status just written (the reconciler reads a report only while
    // the pass is Running): nothing changes, no second event.
    let mut settled = p.clone();
    settled.status = Some(done.status.clone());
    let again = plan(
        &input(&settled),
        &job(true, false, Some(FIRST_RUN + 500)),
        at(FIRST_RUN + 700),
    );
    assert_eq!(again.status, done.status);
    assert!(again.events.is_empty() && again.ops.is_empty());

    // A dry run says so; a pass without a stored report keeps the earlier counts.
    let dry = Observed {
        report: Some(report("nightly@10800", true)),
        ..job(true, false, None)
    };
    let dry = plan(&input(&p), &dry, at(FIRST_RUN + 600));
    assert!(dry.status.last_result.as_ref().is_some_and(|c| c.dry_run));
    assert!(
        dry.events[0].note.contains("dry run, nothing changed"),
        "{}",
        dry.events[0].note
    );
    let mut earlier = p.clone();
    if let Some(status) = earlier.status.as_mut() {
        status.last_result = done.status.last_result.clone();
    }
    let unreported = plan(&input(&earlier), &job(true, false, None), at(FIRST_RUN + 600));
    assert_eq!(unreported.status.last_result, done.status.last_result);
    assert!(unreported.events[0].note.contains("stored no report"));
}

#[test]
fn a_suspended_policy_starts_nothing_and_has_no_next_run() {
    let mut p = policy("nightly", "0 3 * * *");
    p.spec.suspend = true;
    let plan = plan_at(&p, 2 * DAY);
    assert!(plan.ops.is_empty());
    assert_eq!(plan.status.next_run, None);
    let (status, why, message) = ready(&plan.status);
    assert_eq!((status, why), ("True", reason::SCHEDULED));
    assert!(message.starts_with("suspended"), "{message}");
    assert_eq!(plan.status.phase, Some(PolicyPhase::Suspended));
    assert_eq!(plan.requeue, Some(Duration::from_secs(300)));
}

#[test]
fn a_bad_schedule_is_invalid_spec_with_no_pass_and_no_requeue() {
    for bad in ["every night", "0 0 3 * * *", "61 3 * * *"] {
        let p = policy("nightly", bad);
        let plan = plan_at(&p, 2 * DAY);
        assert!(plan.ops.is_empty(), "{bad}");
        assert_eq!(plan.requeue, None, "{bad}");
        let (status, why, message) = ready(&plan.status);
        assert_eq!((status, why), ("False", reason::INVALID_SPEC), "{bad}");
        assert!(message.contains(bad), "{bad}: {message}");
        assert_eq!(reasons(&plan), [(reason::INVALID_SPEC, true)], "{bad}");
        assert_eq!(plan.status.phase, Some(PolicyPhase::Invalid), "{bad}");
    }
}

#[test]
fn job_names_are_dns_labels_for_any_policy_name() {
    let long = format!("{}.archive", "x".repeat(240));
    for name in ["nightly", "scratch.nightly", long.as_str()] {
        let jn = job_name(name, at(4_102_444_800));
        assert!(jn.len() <= 63, "{jn}");
        assert!(jn.starts_with("sdgc-") && jn.ends_with("-4102444800"), "{jn}");
        assert!(
            jn.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{jn}"
        );
    }
    assert_eq!(job_name("scratch.nightly", at(60)), "sdgc-scratch-nightly-60");
    assert_eq!(pass_id("scratch.nightly", at(60)), "scratch.nightly@60");
}

// ---- the Job ----

#[derive(Parser)]
struct GcCli {
    #[command(subcommand)]
    command: GcCommand,
}

#[derive(clap::Subcommand)]
enum GcCommand {
    Gc(GcPassArgs),
}

fn settings() -> GcJobSettings {
    GcJobSettings {
        namespace: "studiodrive-system".into(),
        image: "registry.example/studiodrive-operator:1.2.3".into(),
        service_account: Some("studiodrive-gc".into()),
        metadata_url_secret: Some(("studiodrive-metadata".into(), "url".into())),
        store_env: Vec::new(),
        s3_credentials_secret: None,
    }
}

#[test]
fn a_gc_job_gets_the_s3_credentials_file_and_region_without_copying_the_secret() {
    let p = policy("nightly", "0 3 * * *");
    let mut with = settings();
    with.s3_credentials_secret = Some(("studio-s3".into(), "credentials".into()));
    with.store_env = vec![("STUDIODRIVE_S3_REGION".into(), "eu-west-1".into())];
    let job = build_job(
        &p,
        "nightly@10800",
        None,
        "sdgc-nightly-10800",
        &PassScope::default(),
        &with,
    );
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
    let container = &pod.containers[0];
    let env: BTreeMap<String, Option<String>> = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    assert_eq!(
        env.get("STUDIODRIVE_S3_CREDENTIALS_FILE"),
        Some(&Some("/etc/studiodrive/s3/credentials".to_string()))
    );
    assert_eq!(
        env.get("STUDIODRIVE_S3_REGION"),
        Some(&Some("eu-west-1".to_string()))
    );
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    assert_eq!(
        mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect::<Vec<_>>(),
        [("s3-credentials", "/etc/studiodrive/s3", Some(true))]
    );
    let volumes = pod.volumes.clone().unwrap_or_default();
    let secret = volumes[0].secret.clone().expect("a Secret volume");
    assert_eq!(
        (secret.secret_name.as_deref(), secret.default_mode),
        (Some("studio-s3"), Some(0o440))
    );
    assert_eq!(
        pod.security_context.and_then(|c| c.fs_group),
        Some(65532),
        "the non-root pod can read it"
    );
    // Without the setting the pod has no volume and no credentials variable.
    let plain = build_job(
        &p,
        "nightly@10800",
        None,
        "sdgc-nightly-10800",
        &PassScope::default(),
        &settings(),
    );
    let pod = plain.spec.and_then(|s| s.template.spec).expect("pod");
    assert_eq!(
        (pod.volumes, pod.containers[0].volume_mounts.clone()),
        (None, None)
    );
}

#[test]
fn the_gc_job_runs_the_pass_with_dry_run_and_throttle_as_arguments() {
    let mut p = policy("scratch.nightly", "30 2 * * *");
    p.spec.dry_run = true;
    p.spec.throttle = Throttle {
        deletes_per_second: 200,
        backoff_latency_ms: 750,
        parallelism: 1,
    };
    let job = build_job(
        &p,
        "scratch.nightly@9000",
        None,
        "sdgc-scratch-nightly-9000",
        &PassScope::default(),
        &settings(),
    );

    assert_eq!(job.metadata.name.as_deref(), Some("sdgc-scratch-nightly-9000"));
    assert_eq!(job.metadata.namespace.as_deref(), Some("studiodrive-system"));
    let labels = job.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app.kubernetes.io/name"], "studiodrive-gc");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "studiodrive-operator");
    assert_eq!(labels["studiodrive.dev/lifecycle-policy"], "scratch-nightly");
    assert_eq!(
        job.metadata.annotations.clone().expect("annotations")["studiodrive.dev/pass-id"],
        "scratch.nightly@9000"
    );
    let owner = &job.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        (
            "LifecyclePolicy",
            "scratch.nightly",
            "uid-scratch.nightly",
            Some(true)
        )
    );
    assert_eq!(owner.api_version, "studiodrive.dev/v1alpha1");

    let spec = job.spec.clone().expect("job spec");
    assert_eq!(spec.backoff_limit, Some(3), "pod retries resume the pass");
    assert_eq!(spec.ttl_seconds_after_finished, Some(7 * 24 * 3600));
    let template = spec.template;
    assert_eq!(template.metadata.and_then(|m| m.labels), Some(labels));
    let pod = template.spec.expect("pod spec");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.service_account_name.as_deref(), Some("studiodrive-gc"));
    let [container] = &pod.containers[..] else {
        panic!("one container: {:?}", pod.containers)
    };
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/studiodrive-operator:1.2.3")
    );
    assert_eq!(
        container.args.clone().expect("args"),
        [
            "gc",
            "--policy",
            "scratch.nightly",
            "--pass-id",
            "scratch.nightly@9000",
            "--dry-run",
            "--deletes-per-second",
            "200",
            "--backoff-latency-ms",
            "750",
            "--rules",
            r#"{"purgeDeletedAfterDays":30}"#
        ]
    );
    let env = container.env.clone().expect("env");
    let [var] = &env[..] else {
        panic!("one env var: {env:?}")
    };
    assert_eq!(var.name, "STUDIODRIVE_METADATA_URL");
    assert_eq!(var.value, None, "the URL comes from the Secret, never inline");
    let secret = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str(), secret.optional),
        ("studiodrive-metadata", "url", Some(false))
    );
    let security = container.security_context.clone().expect("securityContext");
    assert_eq!(
        (
            security.allow_privilege_escalation,
            security.read_only_root_filesystem,
            security.run_as_non_root
        ),
        (Some(false), Some(true), Some(true))
    );
}

#[test]
fn a_real_pass_has_no_dry_run_flag_and_the_default_throttle() {
    let p = policy("nightly", "0 3 * * *");
    let mut plain = settings();
    plain.metadata_url_secret = None;
    let job = build_job(
        &p,
        "nightly@10800",
        None,
        "sdgc-nightly-10800",
        &PassScope::default(),
        &plain,
    );
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
    assert_eq!(
        pod.containers[0].args.clone().expect("args"),
        [
            "gc",
            "--policy",
            "nightly",
            "--pass-id",
            "nightly@10800",
            "--deletes-per-second",
            "500",
            "--backoff-latency-ms",
            "250",
            "--rules",
            r#"{"purgeDeletedAfterDays":30}"#
        ]
    );
    assert_eq!(pod.containers[0].env, None);
}

#[test]
fn the_job_arguments_parse_back_into_the_gc_subcommand() {
    for dry_run in [false, true] {
        let mut p = policy("nightly", "0 3 * * *");
        p.spec.dry_run = dry_run;
        p.spec.throttle = Throttle {
            deletes_per_second: 1,
            backoff_latency_ms: 600_000,
            parallelism: 1,
        };
        let job = build_job(
            &p,
            "nightly@10800",
            None,
            "sdgc-nightly-10800",
            &PassScope::default(),
            &settings(),
        );
        let parsed = parse_job_args(job);
        assert_eq!(
            parsed,
            GcPassArgs::for_pass(&p, "nightly@10800", None, &PassScope::default())
        );
        assert_eq!(parsed.dry_run, dry_run);
    }
    let out_of_range = GcCli::try_parse_from([
        "x",
        "gc",
        "--policy",
        "p",
        "--pass-id",
        "i",
        "--deletes-per-second",
        "0",
    ]);
    assert!(out_of_range.is_err(), "0 deletes per second is refused");
}

fn full_rules() -> LifecycleRules {
    LifecycleRules {
        purge_deleted_after_days: Some(7),
        retention_classes: vec![
            RetentionClass {
                kinds: vec![WorkspaceKind::Project],
                path_prefix: Some("/finals".into()),
                days: 180,
            },
            RetentionClass {
                kinds: Vec::new(),
                path_prefix: None,
                days: 15,
            },
        ],
        expire: Some(ExpireRule {
            paths: vec!["/scratch".into(), "/tmp".into()],
            not_accessed_for_days: 30,
        }),
        transition: Some(TransitionRule {
            storage_class: "GLACIER_IR".into(),
            after_days: 60,
        }),
        snapshot_retention: Some(SnapshotRetention {
            keep_last: Some(5),
            max_age_days: Some(90),
        }),
        event_retention_days: Some(14),
    }
}

fn parse_job_args(job: Job) -> GcPassArgs {
    let args = job.spec.and_then(|s| s.template.spec).expect("pod").containers[0]
        .args
        .clone()
        .expect("args");
    let parsed = GcCli::try_parse_from(std::iter::once("studiodrive-operator".to_string()).chain(args))
        .expect("the binary accepts the Job's command line");
    let GcCommand::Gc(parsed) = parsed.command;
    parsed
}

#[test]
fn the_job_arguments_carry_the_rules_and_the_resolved_workspaces_and_parse_back() {
    let mut p = policy("nightly", "0 3 * * *");
    p.spec.rules = full_rules();
    let scopes = [
        PassScope::default(),
        PassScope {
            workspaces: Some(Vec::new()),
            kinds: vec![WorkspaceKind::Team],
        },
        PassScope {
            workspaces: Some(vec!["comp.shot010".into(), "comp.shot020".into()]),
            kinds: vec![WorkspaceKind::Team, WorkspaceKind::User],
        },
    ];
    for scope in scopes {
        let job = build_job(
            &p,
            "nightly@10800",
            None,
            "sdgc-nightly-10800",
            &scope,
            &settings(),
        );
        let parsed = parse_job_args(job);
        assert_eq!(parsed, GcPassArgs::for_pass(&p, "nightly@10800", None, &scope));
        assert_eq!(parsed.rules, full_rules());
        assert_eq!(parsed.scope, scope);
    }
    let named = PassScope {
        workspaces: Some(vec!["comp.shot010".into(), "comp.shot020".into()]),
        kinds: vec![WorkspaceKind::Team, WorkspaceKind::User],
    };
    let args = GcPassArgs::for_pass(&p, "nightly@10800", None, &named).to_args();
    assert_eq!(
        args[args.len() - 4..],
        [
            "--workspaces",
            "comp.shot010,comp.shot020",
            "--kinds",
            "team,user"
        ]
    );
    // Without --rules (a pass by hand) only the block sweep runs.
    let bare = GcCli::try_parse_from(["x", "gc", "--policy", "p", "--pass-id", "i"]).expect("parse");
    let GcCommand::Gc(bare) = bare.command;
    assert_eq!(
        (bare.rules, bare.scope),
        (LifecycleRules::default(), PassScope::default())
    );
    for bad in [
        ["--rules", "{\"purgeDeletedAfterDays\": -1}"],
        ["--kinds", "scratch"],
    ] {
        let parsed = GcCli::try_parse_from(["x", "gc", "--policy", "p", "--pass-id", "i", bad[0], bad[1]]);
        assert!(parsed.is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_rules_map_to_the_engine_options_of_the_pass() {
    use drive::model::WorkspaceKind as Engine;
    use drive::rules::gc::{RetentionClass as Class, SnapshotRetention as Snapshots};
    let mut p = policy("nightly", "0 3 * * *");
    p.spec.rules = full_rules();
    p.spec.dry_run = true;
    p.spec.throttle.deletes_per_second = 42;
    let scope = PassScope {
        workspaces: Some(vec!["comp.shot010".into()]),
        kinds: vec![WorkspaceKind::Team, WorkspaceKind::User],
    };
    let opts = GcPassArgs::for_pass(&p, "nightly@10800", None, &scope).lifecycle_options();
    assert_eq!(opts.blocks.pass_id, "nightly@10800");
    assert!(opts.blocks.dry_run);
    assert_eq!(opts.blocks.deletes_per_second, 42);
    assert_eq!(opts.blocks.grace, Duration::from_secs(3600));
    assert_eq!(
        opts.blocks.backoff_latency,
        Duration::from_millis(u64::from(p.spec.throttle.backoff_latency_ms))
    );
    assert_eq!(
        opts.scope,
        drive::lifecycle::WorkspaceScope {
            names: Some(vec!["comp.shot010".into()]),
            kinds: vec![Engine::Team, Engine::User],
        }
    );
    assert_eq!(
        opts.retention,
        [
            Class {
                kinds: vec![Engine::Team, Engine::User],
                path_prefix: None,
                keep: drive::rules::gc::days_to_duration(7),
            },
            Class {
                kinds: vec![Engine::Project],
                path_prefix: Some("/finals".into()),
                keep: drive::rules::gc::days_to_duration(180),
            },
            Class {
                kinds: Vec::new(),
                path_prefix: None,
                keep: drive::rules::gc::days_to_duration(15),
            },
        ]
    );
    assert_eq!(
        opts.snapshots,
        Snapshots {
            keep_last: Some(5),
            max_age: Some(drive::rules::gc::days_to_duration(90)),
        }
    );
    assert_eq!(
        opts.expire,
        Some(drive::lifecycle::ExpireRule {
            paths: vec!["/scratch".into(), "/tmp".into()],
            not_accessed_for_days: 30,
        })
    );
    assert_eq!(
        opts.transition,
        Some(drive::lifecycle::TransitionRule {
            storage_class: "GLACIER_IR".into(),
            after_days: 60,
        })
    );
    assert_eq!(opts.event_retention, Some(Duration::from_secs(14 * DAY as u64)));

    // Without rules: the block sweep alone, on every workspace.
    p.spec.rules = LifecycleRules::default();
    let opts = GcPassArgs::for_pass(&p, "nightly@10800", None, &PassScope::default()).lifecycle_options();
    assert!(opts.retention.is_empty() && opts.expire.is_none() && opts.transition.is_none());
    assert_eq!(opts.snapshots, Snapshots::default());
    assert_eq!(opts.scope, drive::lifecycle::WorkspaceScope::default());
}

// ---- scope: the selector resolved to store names ----

fn info<'a>(
    ns: &'a str,
    name: &'a str,
    kind: WorkspaceKind,
    labels: &'a BTreeMap<String, String>,
) -> WorkspaceInfo<'a> {
    WorkspaceInfo {
        namespace: ns,
        name,
        kind,
        labels,
    }
}

#[test]
fn a_selector_resolves_to_the_sorted_store_names_of_the_workspaces_it_matches() {
    let scratch = BTreeMap::from([("studiodrive.dev/tier".to_string(), "scratch".to_string())]);
    let finals = BTreeMap::from([("studiodrive.dev/tier".to_string(), "finals".to_string())]);
    let none = BTreeMap::new();
    let all = [
        info("comp", "shot020", WorkspaceKind::Team, &scratch),
        info("comp", "shot010", WorkspaceKind::Team, &scratch),
        info("comp", "hero", WorkspaceKind::Project, &scratch),
        info("comp", "delivery", WorkspaceKind::Team, &finals),
        info("fx", "sim", WorkspaceKind::Team, &scratch),
        info("comp", "plain", WorkspaceKind::Team, &none),
    ];
    let selector = WorkspaceSelector {
        kinds: vec![WorkspaceKind::Team],
        namespaces: vec!["comp".into()],
        label_selector: Some(LabelSelector {
            match_labels: Some(scratch.clone()),
            ..LabelSelector::default()
        }),
    };
    let resolved = resolve_scope(&selector, all).expect("resolve");
    assert_eq!(
        resolved,
        PassScope {
            workspaces: Some(vec!["comp.shot010".into(), "comp.shot020".into()]),
            kinds: vec![WorkspaceKind::Team],
        }
    );

    // Set-based requirements work too; a selector that matches nothing names no workspace.
    let not_finals = WorkspaceSelector {
        label_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "studiodrive.dev/tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["finals".into()]),
            }]),
            ..LabelSelector::default()
        }),
        ..WorkspaceSelector::default()
    };
    let names = resolve_scope(&not_finals, all).expect("resolve").workspaces;
    assert_eq!(
        names,
        Some(vec![
            "comp.hero".into(),
            "comp.plain".into(),
            "comp.shot010".into(),
            "comp.shot020".into(),
            "fx.sim".into()
        ])
    );
    let nobody = WorkspaceSelector {
        namespaces: vec!["empty".into()],
        ..WorkspaceSelector::default()
    };
    assert_eq!(
        resolve_scope(&nobody, all).expect("resolve").workspaces,
        Some(Vec::new())
    );
}

#[test]
fn a_kinds_only_selector_covers_every_workspace_of_its_kinds_without_listing() {
    let selector = WorkspaceSelector {
        kinds: vec![WorkspaceKind::User],
        ..WorkspaceSelector::default()
    };
    assert!(!needs_workspace_list(&selector).expect("valid"));
    let resolved = resolve_scope(&selector, []).expect("resolve");
    assert_eq!(
        resolved,
        PassScope {
            workspaces: None,
            kinds: vec![WorkspaceKind::User]
        }
    );
}

#[test]
fn more_than_a_thousand_matches_are_refused_rather_than_widened() {
    let labels = BTreeMap::new();
    let names: Vec<String> = (0..=MAX_SCOPE_NAMES).map(|i| format!("ws{i}")).collect();
    let selector = WorkspaceSelector {
        kinds: vec![WorkspaceKind::Team],
        namespaces: vec!["comp".into()],
        label_selector: None,
    };
    let refused = resolve_scope(
        &selector,
        names
            .iter()
            .map(|n| info("comp", n, WorkspaceKind::Team, &labels)),
    )
    .expect_err("a pass never widens to workspaces its selector did not match");
    assert!(
        refused.0.contains(&format!("matches {}", MAX_SCOPE_NAMES + 1)),
        "{}",
        refused.0
    );
    let exactly = resolve_scope(
        &selector,
        names[..MAX_SCOPE_NAMES]
            .iter()
            .map(|n| info("comp", n, WorkspaceKind::Team, &labels)),
    )
    .expect("resolve");
    assert_eq!(exactly.workspaces.map(|w| w.len()), Some(MAX_SCOPE_NAMES));
}

#[test]
fn an_invalid_label_selector_is_invalid_spec_and_starts_no_pass() {
    let mut p = policy("nightly", "0 3 * * *");
    p.spec.selector.label_selector = Some(LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "Near".into(),
            values: None,
        }]),
        ..LabelSelector::default()
    });
    let plan = plan_at(&p, 2 * DAY);
    assert!(plan.ops.is_empty());
    let (status, why, message) = ready(&plan.status);
    assert_eq!((status, why), ("False", reason::INVALID_SPEC));
    assert!(message.contains("labelSelector"), "{message}");
    assert_eq!(plan.status.phase, Some(PolicyPhase::Invalid));
}

#[test]
fn observe_job_reads_success_failure_and_completion_time() {
    let status = |succeeded: Option<i32>, failed_condition: bool| Job {
        metadata: ObjectMeta::default(),
        spec: None,
        status: Some(JobStatus {
            succeeded,
            completion_time: succeeded.map(|_| Time(at(77))),
            conditions: failed_condition.then(|| {
                vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    ..JobCondition::default()
                }]
            }),
            ..JobStatus::default()
        }),
    };
    assert_eq!(
        observe_job(&status(Some(1), false)),
        JobObservation {
            succeeded: true,
            failed: false,
            completion_time: Some(at(77))
        }
    );
    assert_eq!(
        observe_job(&status(None, true)),
        JobObservation {
            succeeded: false,
            failed: true,
            completion_time: None
        }
    );
    assert_eq!(
        observe_job(&status(Some(0), false)),
        JobObservation {
            succeeded: false,
            failed: false,
            completion_time: Some(at(77))
        }
    );
    let no_status = Job {
        metadata: ObjectMeta::default(),
        spec: None,
        status: None,
    };
    assert_eq!(
        observe_job(&no_status),
        JobObservation {
            succeeded: false,
            failed: false,
            completion_time: None
        }
    );
}

// ---- reconcile against the mock API server (clock at t = 1000 s) ----

const POLICY_STATUS: &str = "/apis/studiodrive.dev/v1alpha1/lifecyclepolicies/nightly/status";
const JOBS: &str = "/apis/batch/v1/namespaces/studiodrive-system/jobs";
/// Events of cluster-scoped objects go to the default namespace.
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn a_due_policy_creates_its_gc_job_then_writes_status_then_records_pass_started() {
    let (ctx, mut handle) = context();
    // Every 15 minutes; created at 0, so the 900 s run is due at 1000 s.
    let mut p = policy("nightly", "*/15 * * * *");
    p.spec.dry_run = true;
    let reply = serde_json::to_value(&p).expect("json");
    let server = async {
        let (query, job) = expect(&mut handle, "POST", JOBS, &serde_json::json!({})).await;
        assert!(query.contains("fieldManager=studiodrive"), "{query}");
        assert_eq!(job["metadata"]["name"], "sdgc-nightly-900");
        assert_eq!(
            (job["apiVersion"].as_str(), job["kind"].as_str()),
            (Some("batch/v1"), Some("Job"))
        );
        let args: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            args[..6],
            [
                "gc",
                "--policy",
                "nightly",
                "--pass-id",
                "nightly@900",
                "--dry-run"
            ]
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-nightly");

        let (query, status) = expect(&mut handle, "PATCH", POLICY_STATUS, &reply).await;
        assert!(query.contains("fieldManager=studiodrive"), "{query}");
        assert_eq!(status["kind"], "LifecyclePolicy");
        let status: LifecyclePolicyStatus = serde_json::from_value(status["status"].clone()).expect("status");
        let run = status.last_run.expect("lastRun");
        assert_eq!(
            (run.job_name.as_str(), run.result),
            ("sdgc-nightly-900", PassResult::Running)
        );
        assert_eq!(status.next_run, Some(Time(at(1_800))));

        let (_, event) = expect(&mut handle, "POST", EVENTS, &serde_json::json!({})).await;
        assert_eq!(
            (event["reason"].as_str(), event["type"].as_str()),
            (Some("PassStarted"), Some("Normal"))
        );
        assert_eq!(event["regarding"]["kind"], "LifecyclePolicy");
    };
    let (result, ()) = tokio::join!(
        reconcile::<LifecyclePolicies, _>(Arc::new(p), ctx.clone()),
        server
    );
    let action = result.expect("reconcile");
    assert_eq!(
        format!("{action:?}"),
        format!(
            "{:?}",
            kube::runtime::controller::Action::requeue(Duration::from_secs(60))
        )
    );
}

#[tokio::test]
async fn a_running_pass_is_looked_up_by_its_job_and_its_success_recorded() {
    let (ctx, mut handle) = context();
    let mut run = running(900, 905);
    run.pass_id = "nightly@900".into();
    run.job_name = "sdgc-nightly-900".into();
    let p = with_last_run(policy("nightly", "*/15 * * * *"), run);
    let finished = Job {
        metadata: ObjectMeta {
            name: Some("sdgc-nightly-900".into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(JobStatus {
            succeeded: Some(1),
            completion_time: Some(Time(at(950))),
            ..JobStatus::default()
        }),
    };
    let reply = serde_json::to_value(&p).expect("json");
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "GET",
            &format!("{JOBS}/sdgc-nightly-900"),
            &serde_json::to_value(&finished).expect("json"),
        )
        .await;
        assert_eq!(body, Value::Null);
        let (_, status) = expect(&mut handle, "PATCH", POLICY_STATUS, &reply).await;
        let status: LifecyclePolicyStatus = serde_json::from_value(status["status"].clone()).expect("status");
        let run = status.last_run.clone().expect("lastRun");
        assert_eq!(
            (run.result, run.completion_time),
            (PassResult::Succeeded, Some(Time(at(950))))
        );
        assert_eq!(ready(&status).1, reason::SCHEDULED);
        let (_, event) = expect(&mut handle, "POST", EVENTS, &serde_json::json!({})).await;
        assert_eq!(event["reason"], "PassSucceeded");
    };
    let (result, ()) = tokio::join!(
        reconcile::<LifecyclePolicies, _>(Arc::new(p), ctx.clone()),
        server
    );
    result.expect("reconcile");
}

fn is_job_write(r: &Received) -> bool {
    r.path.starts_with(JOBS) && matches!(r.method.as_str(), "POST" | "PATCH" | "PUT")
}

/// The status a reconcile sent, from the requests it made.
fn sent_status(requests: &[Received]) -> Option<LifecyclePolicyStatus> {
    requests
        .iter()
        .rfind(|r| r.method == "PATCH" && r.path == POLICY_STATUS)
        .map(|r| serde_json::from_value(r.body["status"].clone()).expect("status"))
}

fn events(requests: &[Received]) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == EVENTS)
        .map(|r| r.body.clone())
        .collect()
}

/// The mock API server's answer: the Job for Job requests, `{}` for events, the policy
/// otherwise.
fn answer(r: &Received, job: &Value, policy: &Value) -> Value {
    if r.path.starts_with(JOBS) {
        job.clone()
    } else if r.path == EVENTS {
        serde_json::json!({})
    } else {
        policy.clone()
    }
}

/// A GC Job as an earlier reconcile created it for pass `pass_id`.
fn job_of_pass(name: &str, pass_id: &str) -> Value {
    let mut job: Job = serde_json::from_value(gc_job(name, None)).expect("Job");
    job.metadata.annotations = Some(BTreeMap::from([(
        PASS_ID_ANNOTATION.to_string(),
        pass_id.to_string(),
    )]));
    serde_json::to_value(job).expect("json")
}

fn gc_job(name: &str, status: Option<JobStatus>) -> Value {
    serde_json::to_value(Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("studiodrive-system".into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status,
    })
    .expect("json")
}

/// Reconciles `p` once against the mock API server, the pass's Job having `job_status`;
/// returns the requests it sent.
async fn reconcile_once(
    ctx: &Arc<Context<MemoryStore>>,
    handle: &mut MockHandle,
    p: &LifecyclePolicy,
    job_status: Option<JobStatus>,
) -> Vec<Received> {
    let reply = serde_json::to_value(p).expect("json");
    let job = gc_job("sdgc-nightly-900", job_status);
    let (result, requests) = serve(
        handle,
        reconcile::<LifecyclePolicies, _>(Arc::new(p.clone()), ctx.clone()),
        |r| answer(r, &job, &reply),
    )
    .await;
    result.expect("reconcile");
    requests
}

#[tokio::test]
async fn a_scheduled_policy_gets_one_job_per_pass_then_the_reports_counts_and_an_event() {
    let (ctx, mut handle) = context();
    let mut p = policy("nightly", "*/15 * * * *");
    let job_path = format!("{JOBS}/sdgc-nightly-900");

    // 1. The 900 s run is due at 1000 s: its Job is applied, status records the pass.
    let first = reconcile_once(&ctx, &mut handle, &p, None).await;
    let writes: Vec<_> = first.iter().filter(|r| is_job_write(r)).collect();
    assert_eq!(writes.len(), 1, "one Job for the pass: {first:?}");
    assert_eq!(
        (writes[0].method.as_str(), writes[0].path.as_str()),
        ("POST", JOBS)
    );
    assert_eq!(writes[0].body["metadata"]["name"], "sdgc-nightly-900");
    let status = sent_status(&first).expect("status written");
    assert_eq!(status.phase, Some(PolicyPhase::Running));
    assert_eq!(
        status.last_run.as_ref().map(|r| (r.pass_id.as_str(), r.result)),
        Some(("nightly@900", PassResult::Running))
    );

    // 2. Reconciled again for the same slot while the Job runs: no Job is written.
    p.status = Some(status);
    let second = reconcile_once(&ctx, &mut handle, &p, None).await;
    assert_eq!(
        second
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect::<Vec<_>>(),
        [("GET", job_path.as_str())],
        "only the Job is looked at; status unchanged, nothing written"
    );

    // 3. The Job completed and the pass stored its report: the counts reach status and an
    // event, and still no Job is written.
    ctx.store
        .set_pass_report("nightly@900", report("nightly@900", false));
    let completed = JobStatus {
        succeeded: Some(1),
        completion_time: Some(Time(at(990))),
        ..JobStatus::default()
    };
    let third = reconcile_once(&ctx, &mut handle, &p, Some(completed)).await;
    assert_eq!(third.iter().filter(|r| is_job_write(r)).count(), 0, "{third:?}");
    let status = sent_status(&third).expect("status written");
    let counts = status.last_result.clone().expect("lastResult");
    assert_eq!(
        (
            counts.pass_id.as_str(),
            counts.scanned,
            counts.objects_freed,
            counts.bytes_freed,
            counts.eligible_bytes,
            counts.purged,
            counts.snapshots_released
        ),
        ("nightly@900", 12, 13, 11_000, 12_345, 41, 5)
    );
    assert_eq!(
        status
            .last_run
            .as_ref()
            .map(|r| (r.result, r.completion_time.clone())),
        Some((PassResult::Succeeded, Some(Time(at(990)))))
    );
    assert_eq!(status.phase, Some(PolicyPhase::Idle));
    assert_eq!(status.next_run, Some(Time(at(1_800))));
    let sent = events(&third);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0]["reason"].as_str(), sent[0]["type"].as_str()),
        (Some("PassSucceeded"), Some("Normal"))
    );
    let note = sent[0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("freed 13 objects (11000 bytes)"), "{note}");
}

#[tokio::test]
async fn a_retry_after_a_crash_before_status_adopts_the_existing_job() {
    let (ctx, mut handle) = context();
    // The Job of the 900 s pass exists (created by a reconcile that crashed before writing
    // status); its arguments stand, whatever the policy says now.
    let p = policy("nightly", "*/15 * * * *");
    let reply = serde_json::to_value(&p).expect("json");
    let exists = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch \"sdgc-nightly-900\" already exists", "reason": "AlreadyExists",
        "code": 409,
    });
    let server = async {
        expect_status(&mut handle, "POST", JOBS, 409, &exists).await;
        let existing = job_of_pass("sdgc-nightly-900", "nightly@900");
        expect(&mut handle, "GET", &format!("{JOBS}/sdgc-nightly-900"), &existing).await;
        let (_, status) = expect(&mut handle, "PATCH", POLICY_STATUS, &reply).await;
        let status: LifecyclePolicyStatus = serde_json::from_value(status["status"].clone()).expect("status");
        assert_eq!(
            status.last_run.map(|r| (r.job_name, r.result)),
            Some(("sdgc-nightly-900".to_string(), PassResult::Running))
        );
        let (_, event) = expect(&mut handle, "POST", EVENTS, &serde_json::json!({})).await;
        assert_eq!(event["reason"], "PassStarted");
    };
    let (result, ()) = tokio::join!(
        reconcile::<LifecyclePolicies, _>(Arc::new(p), ctx.clone()),
        server
    );
    result.expect("an existing Job of the pass is not an error");

    // "night-ly" and "night.ly" shorten to the same Job name; one does not adopt the other's.
    let twin = policy("night-ly", "*/15 * * * *");
    let server = async {
        expect_status(&mut handle, "POST", JOBS, 409, &exists).await;
        let taken = job_of_pass("sdgc-night-ly-900", "night.ly@900");
        expect(&mut handle, "GET", &format!("{JOBS}/sdgc-night-ly-900"), &taken).await;
    };
    let (result, ()) = tokio::join!(
        reconcile::<LifecyclePolicies, _>(Arc::new(twin), ctx.clone()),
        server
    );
    let err = result.expect_err("another pass's Job is not adopted");
    assert_eq!(err.label(), "job_name_taken");
    assert!(err.to_string().contains("night.ly@900"), "{err}");
}

#[tokio::test]
async fn a_selector_by_namespace_and_labels_puts_the_matching_store_names_in_the_job() {
    let (ctx, mut handle) = context();
    let mut p = policy("nightly", "*/15 * * * *");
    p.spec.rules = full_rules();
    let tier = BTreeMap::from([("studiodrive.dev/tier".to_string(), "scratch".to_string())]);
    p.spec.selector = WorkspaceSelector {
        kinds: vec![WorkspaceKind::Team],
        namespaces: vec!["comp".into()],
        label_selector: Some(LabelSelector {
            match_labels: Some(tier.clone()),
            ..LabelSelector::default()
        }),
    };
    let labelled = |ns: &str, name: &str, kind: WorkspaceKind| {
        let mut w = workspace(ns, name, workspace_spec(kind, DeletionPolicy::Delete));
        w.metadata.labels = Some(tier.clone());
        w
    };
    // What the API server returns for the label selector; namespace and kind are the
    // operator's to filter.
    let list = serde_json::json!({
        "apiVersion": "studiodrive.dev/v1alpha1",
        "kind": "WorkspaceList",
        "metadata": {},
        "items": [
            labelled("comp", "shot020", WorkspaceKind::Team),
            labelled("comp", "shot010", WorkspaceKind::Team),
            labelled("comp", "hero", WorkspaceKind::Project),
            labelled("fx", "sim", WorkspaceKind::Team),
        ],
    });
    let reply = serde_json::to_value(&p).expect("json");
    let (result, requests) = serve(
        &mut handle,
        reconcile::<LifecyclePolicies, _>(Arc::new(p.clone()), ctx.clone()),
        |r| {
            if r.path.ends_with("/workspaces") {
                list.clone()
            } else {
                answer(r, &gc_job("sdgc-nightly-900", None), &reply)
            }
        },
    )
    .await;
    result.expect("reconcile");
    let listed = requests
        .iter()
        .find(|r| r.path == "/apis/studiodrive.dev/v1alpha1/workspaces")
        .expect("the Workspaces are listed cluster-wide");
    assert!(
        listed
            .query
            .contains("labelSelector=studiodrive.dev%2Ftier%3Dscratch"),
        "the label selector narrows the list: {}",
        listed.query
    );
    let job = requests.iter().find(|r| is_job_write(r)).expect("the Job");
    let job: Job = serde_json::from_value(job.body.clone()).expect("a Job");
    let args = parse_job_args(job);
    assert_eq!(
        args.scope,
        PassScope {
            workspaces: Some(vec!["comp.shot010".into(), "comp.shot020".into()]),
            kinds: vec![WorkspaceKind::Team],
        }
    );
    assert_eq!(args.rules, full_rules());
    assert_eq!(args.pass_id, "nightly@900");
}

fn any_kind() -> impl Strategy<Value = WorkspaceKind> {
    prop_oneof![
        Just(WorkspaceKind::User),
        Just(WorkspaceKind::Project),
        Just(WorkspaceKind::Team)
    ]
}

fn any_rules() -> impl Strategy<Value = LifecycleRules> {
    let class = (
        proptest::collection::vec(any_kind(), 0..3),
        proptest::option::of("(/[a-z0-9 ,._-]{1,8}){1,3}"),
        1u32..3650,
    )
        .prop_map(|(kinds, path_prefix, days)| RetentionClass {
            kinds,
            path_prefix,
            days,
        });
    (
        proptest::option::of(1u32..3650),
        proptest::collection::vec(class, 0..4),
        proptest::option::of((proptest::collection::vec("/[a-z ,]{1,6}", 1..3), 1u32..3650)),
        proptest::option::of(("[A-Z_]{1,12}", 1u32..3650)),
        proptest::option::of((proptest::option::of(0u32..100), proptest::option::of(1u32..3650))),
        proptest::option::of(1u32..3650),
    )
        .prop_map(
            |(purge, classes, expire, transition, snapshots, events)| LifecycleRules {
                purge_deleted_after_days: purge,
                retention_classes: classes,
                expire: expire.map(|(paths, days)| ExpireRule {
                    paths,
                    not_accessed_for_days: days,
                }),
                transition: transition.map(|(storage_class, after_days)| TransitionRule {
                    storage_class,
                    after_days,
                }),
                snapshot_retention: snapshots.map(|(keep_last, max_age_days)| SnapshotRetention {
                    keep_last,
                    max_age_days,
                }),
                event_retention_days: events,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any rules and scope (paths with commas and spaces, no workspaces, many), the Job's
    /// command line parses back into exactly the pass it was built from.
    #[test]
    fn any_rules_and_scope_survive_the_job_command_line(
        rules in any_rules(),
        names in proptest::option::of(proptest::collection::vec("[a-z0-9]{1,8}\\.[a-z0-9-]{0,8}[a-z0-9]", 0..20)),
        kinds in proptest::collection::vec(any_kind(), 0..3),
        dry_run in any::<bool>(),
    ) {
        let mut p = policy("nightly", "0 3 * * *");
        p.spec.rules = rules;
        p.spec.dry_run = dry_run;
        let scope = PassScope { workspaces: names, kinds };
        let job = build_job(&p, "nightly@10800", None, "sdgc-nightly-10800", &scope, &settings());
        prop_assert_eq!(parse_job_args(job), GcPassArgs::for_pass(&p, "nightly@10800", None, &scope));
    }
}

// ---- parallelism: a pass as N Jobs, one per shard ----

fn parallel(shards: u32) -> LifecyclePolicy {
    let mut p = policy("nightly", "0 3 * * *");
    p.spec.throttle.parallelism = shards;
    p
}

/// The three shard Jobs of the first run, as observed: `None` for a missing one.
fn shard_states(states: [Option<(bool, bool, Option<i64>)>; 3]) -> Observed {
    let names = shard_jobs(&job_name("nightly", at(FIRST_RUN)), 3);
    Observed {
        jobs: names
            .into_iter()
            .zip(states)
            .map(|((name, _), state)| {
                let job = state.map(|(succeeded, failed, completed)| JobObservation {
                    succeeded,
                    failed,
                    completion_time: completed.map(at),
                });
                (name, job)
            })
            .collect(),
        report: None,
    }
}

#[test]
fn a_parallel_pass_starts_one_job_per_shard_and_ends_when_all_have_ended() {
    let p = parallel(3);
    let started = plan_at(&p, FIRST_RUN + 60);
    assert_eq!(
        started.ops,
        [Op::StartPass {
            pass_id: "nightly@10800".into(),
            job_name: "sdgc-nightly-10800".into(),
            scheduled: at(FIRST_RUN),
            shards: 3,
        }]
    );
    let run = started.status.last_run.clone().expect("lastRun");
    assert_eq!(run.shards, 3);
    assert!(
        started.events[0].note.contains("as 3 Jobs"),
        "{}",
        started.events[0].note
    );
    let p = with_last_run(p, run);

    let done = Some((true, false, Some(FIRST_RUN + 100)));
    let running = Some((false, false, None));
    let still = plan(
        &input(&p),
        &shard_states([done, running, done]),
        at(FIRST_RUN + 200),
    );
    assert_eq!(
        still.status.phase,
        Some(PolicyPhase::Running),
        "one shard still runs"
    );
    assert!(still.events.is_empty());

    let all = plan(
        &input(&p),
        &shard_states([done, Some((true, false, Some(FIRST_RUN + 400))), done]),
        at(FIRST_RUN + 500),
    );
    let run = all.status.last_run.clone().expect("lastRun");
    assert_eq!(
        (run.result, run.completion_time),
        (PassResult::Succeeded, Some(Time(at(FIRST_RUN + 400)))),
        "the pass ends with its last shard"
    );

    // A failed or vanished shard fails the pass, and lastError names that shard's Job.
    let failed = plan(
        &input(&p),
        &shard_states([done, Some((false, true, Some(FIRST_RUN + 300))), running]),
        at(FIRST_RUN + 500),
    );
    let error = failed.status.last_error.clone().expect("lastError");
    assert!(error.contains("its Job sdgc-nightly-10800-1 gave up"), "{error}");
    assert_eq!(failed.status.last_run.map(|r| r.result), Some(PassResult::Failed));
    let vanished = plan(&input(&p), &shard_states([done, done, None]), at(FIRST_RUN + 500));
    let error = vanished.status.last_error.clone().expect("lastError");
    assert!(
        error.contains("its Job sdgc-nightly-10800-2 disappeared"),
        "{error}"
    );
    // Observing only the unsharded name is no observation of the shards.
    let unsharded = plan(
        &input(&p),
        &job(true, false, Some(FIRST_RUN + 100)),
        at(FIRST_RUN + 500),
    );
    assert!(
        unsharded
            .status
            .last_error
            .is_some_and(|e| e.contains("sdgc-nightly-10800-0 disappeared")),
        "a shard Job that is not there is not taken as succeeded"
    );
}

#[test]
fn shard_job_names_are_dns_labels_and_each_job_runs_its_shard() {
    let long = "a".repeat(253);
    let stem = job_name(&long, at(4_102_444_800));
    let jobs = shard_jobs(&stem, 64);
    assert_eq!(jobs.len(), 64);
    for (i, (name, shard)) in jobs.iter().enumerate() {
        assert!(name.len() <= 63, "{name}");
        assert_eq!(*shard, Some((i as u32, 64)));
    }
    assert_eq!(shard_jobs("sdgc-x-1", 1), [("sdgc-x-1".to_string(), None)]);

    let p = parallel(4);
    let job = build_job(
        &p,
        "nightly@10800",
        Some((2, 4)),
        "sdgc-nightly-10800-2",
        &PassScope::default(),
        &settings(),
    );
    let parsed = parse_job_args(job);
    assert_eq!(parsed.shard, Some((2, 4)));
    assert_eq!(
        parsed,
        GcPassArgs::for_pass(&p, "nightly@10800", Some((2, 4)), &PassScope::default())
    );
    let blocks = parsed.lifecycle_options().blocks;
    assert_eq!((blocks.shard, blocks.deletes_per_second), (Some((2, 4)), 500));
    assert_eq!(drive::gc::pass_row_id(&blocks), "nightly@10800/2-of-4");
    let unsharded = build_job(
        &p,
        "nightly@10800",
        None,
        "sdgc-nightly-10800",
        &PassScope::default(),
        &settings(),
    );
    assert_eq!(parse_job_args(unsharded).shard, None);
}

#[tokio::test]
async fn a_parallel_policy_gets_a_job_per_shard_and_status_sums_the_shards_reports() {
    let (ctx, mut handle) = context();
    let mut p = policy("nightly", "*/15 * * * *");
    p.spec.throttle.parallelism = 2;
    let reply = serde_json::to_value(&p).expect("json");
    let (result, first) = serve(
        &mut handle,
        reconcile::<LifecyclePolicies, _>(Arc::new(p.clone()), ctx.clone()),
        |r| answer(r, &gc_job("sdgc-nightly-900-0", None), &reply),
    )
    .await;
    result.expect("reconcile");
    let created: Vec<(String, Vec<String>)> = first
        .iter()
        .filter(|r| is_job_write(r))
        .map(|r| {
            let args = r.body["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            (
                r.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                args,
            )
        })
        .collect();
    assert_eq!(created.len(), 2, "{first:?}");
    for (i, (name, args)) in created.iter().enumerate() {
        assert_eq!(name, &format!("sdgc-nightly-900-{i}"));
        let shard = args
            .iter()
            .position(|a| a == "--shard")
            .map(|k| args[k + 1].as_str());
        assert_eq!(shard, Some(format!("{i}/2").as_str()), "{args:?}");
        assert!(
            args.windows(2).any(|w| w == ["--pass-id", "nightly@900"]),
            "{args:?}"
        );
    }
    let status = sent_status(&first).expect("status written");
    assert_eq!(status.last_run.as_ref().map(|r| r.shards), Some(2));
    p.status = Some(status);

    // Both Jobs completed; each shard stored its report under its own row.
    let mut zero = report("nightly@900", false);
    zero.blocks.shard = Some("0-of-2".into());
    let mut one = LifecycleReport {
        pass_id: "nightly@900".into(),
        blocks: PassReport {
            pass_id: "nightly@900".into(),
            shard: Some("1-of-2".into()),
            candidates: 8,
            deleted: 7,
            deleted_bytes: 7_000,
            ..PassReport::default()
        },
        ..LifecycleReport::default()
    };
    one.duration_ms = 40;
    ctx.store.set_pass_report("nightly@900/0-of-2", zero);
    ctx.store.set_pass_report("nightly@900/1-of-2", one);
    let completed = gc_job(
        "any",
        Some(JobStatus {
            succeeded: Some(1),
            completion_time: Some(Time(at(990))),
            ..JobStatus::default()
        }),
    );
    let reply = serde_json::to_value(&p).expect("json");
    let (result, second) = serve(
        &mut handle,
        reconcile::<LifecyclePolicies, _>(Arc::new(p.clone()), ctx.clone()),
        |r| answer(r, &completed, &reply),
    )
    .await;
    result.expect("reconcile");
    let looked_at: Vec<&str> = second
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(JOBS))
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        looked_at,
        [
            format!("{JOBS}/sdgc-nightly-900-0").as_str(),
            format!("{JOBS}/sdgc-nightly-900-1").as_str()
        ]
    );
    let status = sent_status(&second).expect("status written");
    let counts = status.last_result.expect("lastResult");
    assert_eq!(
        (
            counts.scanned,
            counts.objects_freed,
            counts.bytes_freed,
            counts.purged
        ),
        (12 + 8, 13 + 7, 11_000 + 7_000, 41),
        "the shards' counts add up; the namespace phases ran once, in shard 0"
    );
}
