//! LifecyclePolicy: the scheduling planner (when a pass starts, what status says about it),
//! the GC Job a pass runs as (its exact spec and command line), and the reconcile's requests
//! against kube's mock API server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::mock::{context, expect};
use common::*;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use operator::crd::conditions::{self, reason};
use operator::crd::{
    LastRun, LifecyclePolicy, LifecyclePolicySpec, LifecyclePolicyStatus, LifecycleRules, PassResult,
    Throttle,
};
use operator::gc_job::{GcJobSettings, GcPassArgs, build_job};
use operator::plan::lifecycle::{Input, JobObservation, Observed, Op, job_name, pass_id, plan};
use operator::reconcile::lifecycle::observe_job;
use operator::reconcile::{LifecyclePolicies, reconcile};
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

fn job(succeeded: bool, failed: bool, completed: Option<i64>) -> Observed {
    Observed {
        job: Some(JobObservation {
            succeeded,
            failed,
            completion_time: completed.map(at),
        }),
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
fn a_failed_or_vanished_job_marks_the_pass_failed_and_degraded() {
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

    let vanished = plan(&input(&p), &Observed { job: None }, at(FIRST_RUN + 600));
    let run = vanished.status.last_run.clone().expect("lastRun");
    assert_eq!(
        (run.result, run.completion_time),
        (PassResult::Failed, Some(Time(at(FIRST_RUN + 600))))
    );
    assert!(
        vanished.events[0]
            .note
            .contains("sdgc-nightly-10800 of GC pass nightly@10800 disappeared")
    );
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
    }
}

#[test]
fn the_gc_job_runs_the_pass_with_dry_run_and_throttle_as_arguments() {
    let mut p = policy("scratch.nightly", "30 2 * * *");
    p.spec.dry_run = true;
    p.spec.throttle = Throttle {
        deletes_per_second: 200,
        backoff_latency_ms: 750,
    };
    let job = build_job(
        &p,
        "scratch.nightly@9000",
        "sdgc-scratch-nightly-9000",
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
            "750"
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
    let job = build_job(&p, "nightly@10800", "sdgc-nightly-10800", &plain);
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
            "250"
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
        };
        let job = build_job(&p, "nightly@10800", "sdgc-nightly-10800", &settings());
        let args = job.spec.and_then(|s| s.template.spec).expect("pod").containers[0]
            .args
            .clone()
            .expect("args");
        let parsed = GcCli::try_parse_from(std::iter::once("studiodrive-operator".to_string()).chain(args))
            .expect("the binary accepts the Job's command line");
        let GcCommand::Gc(parsed) = parsed.command;
        assert_eq!(parsed, GcPassArgs::for_pass(&p, "nightly@10800"));
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
async fn a_due_policy_applies_its_gc_job_then_writes_status_then_records_pass_started() {
    let (ctx, mut handle) = context();
    // Every 15 minutes; created at 0, so the 900 s run is due at 1000 s.
    let mut p = policy("nightly", "*/15 * * * *");
    p.spec.dry_run = true;
    let reply = serde_json::to_value(&p).expect("json");
    let server = async {
        let (query, job) = expect(
            &mut handle,
            "PATCH",
            &format!("{JOBS}/sdgc-nightly-900"),
            &serde_json::json!({}),
        )
        .await;
        assert!(
            query.contains("fieldManager=studiodrive") && query.contains("force=true"),
            "server-side apply: {query}"
        );
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
