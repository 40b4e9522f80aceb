//! Planner for `Preload`: one Job per selected node (pinned to it) fills that node's cache and
//! records its run in the store as preload `<namespace>/<name>` on the node; the status
//! reports each node from its Job and its run.
//!
//! A node's phase: `Done` or `Failed` as its run finished; `Failed` as well when its Job
//! failed (the pod could not run, or its retries ran out), when its run stopped reporting for
//! [`STALE_AFTER`] (the process died without saying so), or when the deadline passed first;
//! `Running` while its run reports; `Pending` from its Job's creation to its first report.
//! A failed node is not retried: the spec is immutable, and a new Preload runs again.
//! A selected node with neither a Job nor a run gets a Job, while the deadline allows: a node
//! that joins, and one whose finished Job the TTL removed before anything was recorded (the
//! operator was away for longer than the TTL). Running it again is safe: blocks already in the
//! node's cache are skipped.
//!
//! Conditions: `Ready=True Preloaded` when every selected node is done; otherwise
//! `Ready=False` with `Preloading`, `PreloadFailed` (every node finished, some failed),
//! `DeadlineExceeded`, `NoNodes`, `WorkspaceNotFound`, `Unsupported` or `InvalidSpec`.
//! `Degraded=True PreloadFailed` as soon as one selected node failed. A node that leaves the
//! selection keeps its entry in `nodes` but counts in no total and no condition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::Selector;

use super::{
    EventNote, Plan, RESYNC, SpecError, WAIT_FOR_DEPENDENCY, invalid_spec_conditions, invalid_spec_event,
    previous_ready_reason,
};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{PreloadNodeStatus, PreloadPhase, PreloadSpec, PreloadStatus};
use crate::plan::workspace::workspace_store_name;
use crate::store::{PreloadRun, PreloadState, WorkspaceRecord};

/// How often a preload in progress is looked at again (its runs move in the store, not in
/// the cluster).
pub const PROGRESS_POLL: Duration = Duration::from_secs(10);
/// A run that has not reported for this long while `running` is taken as dead (it reports
/// about once a second).
pub const STALE_AFTER: SignedDuration = SignedDuration::from_secs(120);
/// Errors shown per node.
pub const MAX_NODE_ERRORS: usize = 5;
/// Nodes one Preload may select (one Job each).
pub const MAX_NODES: usize = 1000;

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The resource's uid: Job names derive from it, so a Preload deleted and created again
    /// under the same name never adopts the old one's Jobs.
    pub uid: &'a str,
    pub generation: i64,
    pub spec: &'a PreloadSpec,
    pub status: Option<&'a PreloadStatus>,
}

/// What a node's Job shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobState {
    pub succeeded: bool,
    pub failed: bool,
}

/// What the cluster and the store hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The workspace the spec names (`None` also when the spec names none validly).
    pub workspace: Option<WorkspaceRecord>,
    /// Names of the nodes the selector matches now.
    pub nodes: BTreeSet<String>,
    /// This preload's Jobs, by the node each runs on.
    pub jobs: BTreeMap<String, JobState>,
    /// The runs recorded under [`preload_name`].
    pub runs: Vec<PreloadRun>,
}

/// A change the planner asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the Job that preloads `node` (adopting it when it exists).
    StartJob {
        node: String,
        job: String,
        /// Store name of the workspace.
        workspace: String,
        /// Seconds the Job may run (to the deadline).
        active_deadline_seconds: Option<i64>,
    },
    /// Record `run` as the node's run: a node found failed without its run saying so (Job
    /// failed, run silent, deadline passed) gets a failed run, so that pods waiting for the
    /// preload on that node stop waiting (they fail, or go on with `preloadOptional`).
    RecordRun(PreloadRun),
    /// Delete every Job of this preload (cleanup).
    DeleteJobs,
    /// Forget the runs of this preload (cleanup).
    DeleteRuns { name: String },
}

/// The name volumes wait for and runs are recorded under: `<namespace>/<name>`.
pub fn preload_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The Job of preload `uid` on `node`: a DNS label, the preload's name for people and a hash
/// of (uid, node) for uniqueness (the Job's annotations say which it is).
pub fn job_name(name: &str, uid: &str, node: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes().chain([b'/']).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    format!("sdpreload-{}-{hash:016x}", stem.trim_end_matches('-'))
}

/// The node selector as a label selector (every node when absent).
pub fn node_selector(spec: &PreloadSpec) -> Result<Selector, SpecError> {
    spec.node_selector
        .clone()
        .map_or(Ok(Selector::default()), Selector::try_from)
        .map_err(|e| SpecError(format!("nodeSelector: {e}")))
}

/// Checks what the schema cannot: the manifest parses (with the engine's own parser, so a
/// Job never starts on a manifest its preload would refuse), the selector, the names.
pub fn validate(input: &Input<'_>) -> Result<String, SpecError> {
    let workspace = workspace_store_name(input.namespace, &input.spec.workspace)?;
    drive::preload::validate_name(&preload_name(input.namespace, input.name)).map_err(SpecError)?;
    let manifest = drive::preload::Manifest::parse(&input.spec.manifest)
        .map_err(|e| SpecError(format!("manifest: {e}")))?;
    if manifest.is_empty() {
        return Err(SpecError("manifest: names no path".into()));
    }
    node_selector(input.spec)?;
    Ok(workspace)
}

fn node_status(
    node: &str,
    job: Option<&str>,
    run: Option<&PreloadRun>,
    phase: PreloadPhase,
) -> PreloadNodeStatus {
    PreloadNodeStatus {
        node: node.to_string(),
        phase,
        files: run.map_or(0, |r| r.files),
        bytes: run.map_or(0, |r| r.bytes),
        done_files: run.map_or(0, |r| r.done_files),
        done_bytes: run.map_or(0, |r| r.done_bytes),
        failed_files: run.map_or(0, |r| r.failed_files),
        errors: run.map_or_else(Vec::new, |r| {
            r.first_errors.iter().take(MAX_NODE_ERRORS).cloned().collect()
        }),
        job: job.map(str::to_string),
        updated_at: run.and_then(|r| {
            jiff::Timestamp::from_nanosecond(i128::from(r.updated_at.0))
                .ok()
                .map(Time)
        }),
    }
}

/// A node's phase from its Job and run; `Some(reason)` with a failure the run does not say.
fn phase_of(
    job: Option<&JobState>,
    run: Option<&PreloadRun>,
    deadline_passed: bool,
    now: Timestamp,
) -> (PreloadPhase, Option<String>) {
    match run.map(|r| r.state) {
        Some(PreloadState::Done) => return (PreloadPhase::Done, None),
        Some(PreloadState::Failed) => return (PreloadPhase::Failed, None),
        _ => {}
    }
    if job.is_some_and(|j| j.failed) {
        return (
            PreloadPhase::Failed,
            Some("its Job failed before the preload finished (kubectl describe job)".into()),
        );
    }
    if deadline_passed {
        return (PreloadPhase::Failed, Some("the deadline passed first".into()));
    }
    match run {
        Some(r) => {
            let updated = Timestamp::from_nanosecond(i128::from(r.updated_at.0)).unwrap_or(now);
            if now.duration_since(updated) >= STALE_AFTER && !job.is_some_and(|j| !j.failed && !j.succeeded) {
                (
                    PreloadPhase::Failed,
                    Some(format!("it stopped reporting at {updated} without finishing")),
                )
            } else {
                (PreloadPhase::Running, None)
            }
        }
        None => (PreloadPhase::Pending, None),
    }
}

/// How many of the selected nodes are done and failed (nodes no longer selected keep their
/// entry in `nodes` but count in neither).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    selected: usize,
    done: usize,
    failed: usize,
}

fn status_of(
    input: &Input<'_>,
    counts: Counts,
    nodes: Vec<PreloadNodeStatus>,
    desired: &[Desired],
    now: Timestamp,
) -> PreloadStatus {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    PreloadStatus {
        observed_generation: Some(input.generation),
        preload_name: Some(preload_name(input.namespace, input.name)),
        nodes_selected: count(counts.selected),
        nodes_done: count(counts.done),
        nodes_failed: count(counts.failed),
        nodes,
        conditions: conditions::merge(previous, desired, input.generation, now),
    }
}

/// Plans one reconcile of a live Preload.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, PreloadStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let stop = |conds: Vec<Desired>, events: Vec<EventNote>, requeue: Option<Duration>| Plan {
        ops: Vec::new(),
        status: status_of(input, Counts::default(), Vec::new(), &conds, now),
        events,
        requeue,
    };
    let workspace = match validate(input) {
        Ok(w) => w,
        Err(err) => {
            return stop(
                invalid_spec_conditions(&err),
                invalid_spec_event(previous, &err),
                None,
            );
        }
    };
    let Some(ws) = &observed.workspace else {
        let conds = vec![Desired::no(
            conditions::READY,
            reason::WORKSPACE_NOT_FOUND,
            format!("workspace {workspace} does not exist in the metadata store"),
        )];
        return stop(conds, Vec::new(), Some(WAIT_FOR_DEPENDENCY));
    };
    if ws.encrypted || ws.object_store.is_some() {
        let why = if ws.encrypted {
            "it is encrypted"
        } else {
            "it has an object store of its own"
        };
        let message = format!(
            "workspace {workspace} cannot be preloaded by the operator's Jobs: {why}, and only its \
             volumes carry the secrets to read it (preload it on the node with `studiodrive-csi preload`)"
        );
        let events = if previous_ready_reason(previous) == Some(reason::UNSUPPORTED) {
            Vec::new()
        } else {
            vec![EventNote::warning(
                reason::UNSUPPORTED,
                "Validate",
                message.clone(),
            )]
        };
        return stop(
            vec![Desired::no(conditions::READY, reason::UNSUPPORTED, message)],
            events,
            None,
        );
    }
    if observed.nodes.len() > MAX_NODES {
        let err = SpecError(format!(
            "nodeSelector matches {} nodes; at most {MAX_NODES} (one Job each)",
            observed.nodes.len()
        ));
        return stop(
            invalid_spec_conditions(&err),
            invalid_spec_event(previous, &err),
            None,
        );
    }

    let deadline = input.spec.deadline.as_ref().map(|t| t.0);
    let deadline_passed = deadline.is_some_and(|d| now >= d);
    let runs: BTreeMap<&str, &PreloadRun> = observed.runs.iter().map(|r| (r.node.as_str(), r)).collect();
    let mut ops = Vec::new();
    let mut nodes = Vec::new();
    let all: BTreeSet<&str> = observed
        .nodes
        .iter()
        .map(String::as_str)
        .chain(runs.keys().copied())
        .collect();
    for node in all {
        let selected = observed.nodes.contains(node);
        let job = observed.jobs.get(node);
        let run = runs.get(node).copied();
        let name = job_name(input.name, input.uid, node);
        if selected && job.is_none() && run.is_none() && !deadline_passed {
            ops.push(Op::StartJob {
                node: node.to_string(),
                job: name.clone(),
                workspace: workspace.clone(),
                active_deadline_seconds: deadline.map(|d| d.duration_since(now).as_secs().max(1)),
            });
        }
        let (phase, why) = phase_of(job, run, deadline_passed, now);
        let mut status = node_status(
            node,
            (job.is_some() || selected).then_some(name.as_str()),
            run,
            phase,
        );
        if let Some(why) = why {
            let mut failed = run.cloned().unwrap_or_else(|| {
                PreloadRun::start(&preload_name(input.namespace, input.name), node, &workspace)
            });
            failed.state = PreloadState::Failed;
            failed.failed_files = failed.failed_files.max(1);
            failed.first_errors.insert(0, why.clone());
            ops.push(Op::RecordRun(failed));
            status.errors.insert(0, why);
        }
        nodes.push(status);
    }
    let selected = observed.nodes.len();
    let in_selection = |phase: PreloadPhase| {
        nodes
            .iter()
            .filter(|n| observed.nodes.contains(&n.node) && n.phase == phase)
            .count()
    };
    let (done, failed) = (
        in_selection(PreloadPhase::Done),
        in_selection(PreloadPhase::Failed),
    );
    let unfinished = observed.nodes.len() - done - failed;
    let first_failure = nodes
        .iter()
        .find(|n| observed.nodes.contains(&n.node) && n.phase == PreloadPhase::Failed)
        .map(|n| {
            format!(
                "node {}: {}",
                n.node,
                n.errors.first().map_or("failed", String::as_str)
            )
        });

    let mut conds = Vec::with_capacity(2);
    let mut events = Vec::new();
    let started = ops.iter().filter(|op| matches!(op, Op::StartJob { .. })).count();
    if started > 0 {
        events.push(EventNote::normal(
            "Started",
            "Preload",
            format!("preloading {workspace} on {started} node(s)"),
        ));
    }
    match &first_failure {
        Some(message) => {
            if !conditions::is_true(previous, conditions::DEGRADED) {
                events.push(EventNote::warning(
                    reason::PRELOAD_FAILED,
                    "Preload",
                    message.clone(),
                ));
            }
            conds.push(Desired::yes(
                conditions::DEGRADED,
                reason::PRELOAD_FAILED,
                message.clone(),
            ));
        }
        None => conds.push(Desired::no(
            conditions::DEGRADED,
            reason::PRELOADING,
            "no node failed",
        )),
    }
    let files: u64 = nodes.iter().map(|n| n.files).max().unwrap_or(0);
    let bytes: u64 = nodes.iter().map(|n| n.bytes).max().unwrap_or(0);
    let (ready, requeue) = if observed.nodes.is_empty() {
        (
            Desired::no(
                conditions::READY,
                reason::NO_NODES,
                "the node selector matches no node",
            ),
            Some(WAIT_FOR_DEPENDENCY),
        )
    } else if done == observed.nodes.len() {
        if previous_ready_reason(previous) != Some(reason::PRELOADED) {
            events.push(EventNote::normal(
                reason::PRELOADED,
                "Preload",
                format!("{done} node(s) hold the {files} files ({bytes} bytes)"),
            ));
        }
        (
            Desired::yes(
                conditions::READY,
                reason::PRELOADED,
                format!("{done} node(s) hold the {files} files ({bytes} bytes) of the manifest"),
            ),
            // Nodes that join and match are preloaded too, until the deadline.
            (!deadline_passed).then_some(RESYNC),
        )
    } else if deadline_passed {
        (
            Desired::no(
                conditions::READY,
                reason::DEADLINE_EXCEEDED,
                format!("the deadline passed with {done} of {selected} node(s) done"),
            ),
            None,
        )
    } else if unfinished == 0 {
        (
            Desired::no(
                conditions::READY,
                reason::PRELOAD_FAILED,
                format!(
                    "{failed} of {selected} node(s) failed; {}",
                    first_failure.unwrap_or_default()
                ),
            ),
            Some(RESYNC),
        )
    } else {
        (
            Desired::no(
                conditions::READY,
                reason::PRELOADING,
                format!("{done} of {selected} node(s) done, {unfinished} in progress"),
            ),
            Some(match deadline {
                Some(d) => PROGRESS_POLL
                    .min(d.duration_since(now).unsigned_abs())
                    .max(Duration::from_secs(1)),
                None => PROGRESS_POLL,
            }),
        )
    };
    conds.push(ready);
    Plan {
        ops,
        status: status_of(
            input,
            Counts {
                selected,
                done,
                failed,
            },
            nodes,
            &conds,
            now,
        ),
        events,
        requeue,
    }
}

/// Plans cleanup of a Preload being deleted: its Jobs stop, and its runs are forgotten (a
/// new Preload of the same name must not count as done on the old one's runs).
pub fn plan_cleanup(input: &Input<'_>) -> Vec<Op> {
    vec![
        Op::DeleteJobs,
        Op::DeleteRuns {
            name: preload_name(input.namespace, input.name),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkspaceKind;
    use drive::model::Timestamp as NanoTime;

    fn spec(manifest: &str, deadline: Option<Timestamp>) -> PreloadSpec {
        PreloadSpec {
            workspace: "show".into(),
            manifest: manifest.into(),
            node_selector: None,
            deadline: deadline.map(Time),
        }
    }

    fn input<'a>(spec: &'a PreloadSpec, status: Option<&'a PreloadStatus>) -> Input<'a> {
        Input {
            namespace: "render",
            name: "sh010",
            uid: "uid-1",
            generation: 1,
            spec,
            status,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn workspace(encrypted: bool) -> WorkspaceRecord {
        WorkspaceRecord {
            id: "ws-1".into(),
            name: "render.show".into(),
            kind: WorkspaceKind::Team,
            block_size: 4 << 20,
            encrypted,
            quota_bytes: None,
            owners: Vec::new(),
            object_store: None,
        }
    }

    fn run(node: &str, state: PreloadState, updated: i64) -> PreloadRun {
        let mut r = PreloadRun::start("render/sh010", node, "render.show");
        r.state = state;
        r.files = 200;
        r.bytes = 200 << 20;
        r.done_files = if state == PreloadState::Done { 200 } else { 10 };
        if state == PreloadState::Failed {
            r.failed_files = 1;
            r.first_errors = vec!["seq/f.0007.exr: not found".into()];
        }
        r.updated_at = NanoTime(updated * 1_000_000_000);
        r
    }

    fn observed(nodes: &[&str]) -> Observed {
        Observed {
            workspace: Some(workspace(false)),
            nodes: nodes.iter().map(ToString::to_string).collect(),
            ..Observed::default()
        }
    }

    fn ready(p: &Plan<Op, PreloadStatus>) -> (String, String) {
        let c = conditions::find(&p.status.conditions, conditions::READY).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_job_starts_per_selected_node_then_the_status_follows_the_runs() {
        let s = spec("seq/f.%04d.exr [1-200]\n", Some(at(1_600)));
        let mut obs = observed(&["node-a", "node-b"]);
        let p = plan(&input(&s, None), &obs, at(1_000));
        let started: Vec<_> = p
            .ops
            .iter()
            .map(|op| match op {
                Op::StartJob {
                    node,
                    workspace,
                    active_deadline_seconds,
                    ..
                } => (node.as_str(), workspace.as_str(), *active_deadline_seconds),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            started,
            [
                ("node-a", "render.show", Some(600)),
                ("node-b", "render.show", Some(600))
            ]
        );
        assert_eq!(ready(&p), ("False".into(), reason::PRELOADING.into()));
        assert_eq!(p.status.preload_name.as_deref(), Some("render/sh010"));

        // Jobs exist: no second start. One node done, one running.
        obs.jobs.insert("node-a".into(), JobState::default());
        obs.jobs.insert("node-b".into(), JobState::default());
        obs.runs = vec![
            run("node-a", PreloadState::Done, 1_010),
            run("node-b", PreloadState::Running, 1_010),
        ];
        let p = plan(&input(&s, Some(&p.status)), &obs, at(1_011));
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(
            (
                p.status.nodes_done,
                p.status.nodes_failed,
                p.status.nodes_selected
            ),
            (1, 0, 2)
        );
        assert_eq!(p.status.nodes[0].done_files, 200);
        assert_eq!(p.status.nodes[1].phase, PreloadPhase::Running);
        assert_eq!(p.requeue, Some(PROGRESS_POLL));

        // Both done: Ready, once.
        obs.runs[1] = run("node-b", PreloadState::Done, 1_020);
        let p = plan(&input(&s, Some(&p.status)), &obs, at(1_021));
        assert_eq!(ready(&p), ("True".into(), reason::PRELOADED.into()));
        assert!(p.events.iter().any(|e| e.reason == reason::PRELOADED));
        let again = plan(&input(&s, Some(&p.status)), &obs, at(1_022));
        assert!(again.events.is_empty() && again.ops.is_empty());
        assert_eq!(again.status, p.status);

        // node-b leaves the selection and node-c joins: node-b keeps its entry but counts
        // neither as done nor as failed; node-c gets its Job.
        obs.nodes = ["node-a", "node-c"].into_iter().map(String::from).collect();
        obs.runs.push(run("node-x", PreloadState::Failed, 1_020));
        let p = plan(&input(&s, Some(&p.status)), &obs, at(1_030));
        let nodes: Vec<_> = p.status.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(nodes, ["node-a", "node-b", "node-c", "node-x"]);
        assert_eq!(
            (
                p.status.nodes_done,
                p.status.nodes_failed,
                p.status.nodes_selected
            ),
            (1, 0, 2)
        );
        assert!(matches!(&p.ops[..], [Op::StartJob { node, .. }] if node == "node-c"));
        assert_eq!(ready(&p), ("False".into(), reason::PRELOADING.into()));
        let degraded = conditions::find(&p.status.conditions, conditions::DEGRADED).unwrap();
        assert_eq!(
            degraded.status, "False",
            "an unselected node's failure: {degraded:?}"
        );
    }

    #[test]
    fn failed_runs_failed_jobs_silent_runs_and_the_deadline_fail_their_node() {
        let s = spec("a/**\n", Some(at(2_000)));
        let mut obs = observed(&["n1", "n2", "n3", "n4"]);
        for n in ["n1", "n2", "n3", "n4"] {
            obs.jobs.insert(n.into(), JobState::default());
        }
        obs.jobs.insert(
            "n2".into(),
            JobState {
                failed: true,
                succeeded: false,
            },
        );
        obs.jobs.insert(
            "n3".into(),
            JobState {
                failed: false,
                succeeded: true,
            },
        );
        obs.runs = vec![
            run("n1", PreloadState::Failed, 1_000),
            // Succeeded Job, run still "running" and silent: the process died.
            run("n3", PreloadState::Running, 1_000),
            // Active Job, reporting.
            run("n4", PreloadState::Running, 1_199),
        ];
        let p = plan(&input(&s, None), &obs, at(1_200));
        let phases: Vec<_> = p.status.nodes.iter().map(|n| n.phase).collect();
        assert_eq!(
            phases,
            [
                PreloadPhase::Failed,
                PreloadPhase::Failed,
                PreloadPhase::Failed,
                PreloadPhase::Running
            ]
        );
        assert_eq!(p.status.nodes[0].errors, ["seq/f.0007.exr: not found"]);
        // The failures the runs do not record are recorded, so waiting pods stop waiting.
        let recorded: Vec<(&str, PreloadState, &str)> = p
            .ops
            .iter()
            .map(|op| match op {
                Op::RecordRun(r) => (r.node.as_str(), r.state, r.first_errors[0].as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        assert_eq!((recorded[0].0, recorded[0].1), ("n2", PreloadState::Failed));
        assert!(recorded[0].2.contains("Job failed"));
        assert_eq!((recorded[1].0, recorded[1].1), ("n3", PreloadState::Failed));
        // Once recorded, nothing more to record.
        let mut after = obs.clone();
        for op in &p.ops {
            if let Op::RecordRun(r) = op {
                after.runs.retain(|x| x.node != r.node);
                after.runs.push(r.clone());
            }
        }
        let again = plan(&input(&s, Some(&p.status)), &after, at(1_200));
        assert!(again.ops.is_empty(), "{:?}", again.ops);
        assert!(
            p.status.nodes[1].errors[0].contains("Job failed"),
            "{:?}",
            p.status.nodes[1]
        );
        assert!(
            p.status.nodes[2].errors[0].contains("stopped reporting"),
            "{:?}",
            p.status.nodes[2]
        );
        let degraded = conditions::find(&p.status.conditions, conditions::DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reason::PRELOAD_FAILED)
        );
        assert_eq!(ready(&p).1, reason::PRELOADING);

        // The deadline passes with n4 unfinished: it fails, and no Job starts for a new node.
        let mut obs = after;
        obs.nodes.insert("n5".into());
        let p = plan(&input(&s, Some(&p.status)), &obs, at(2_000));
        let recorded: Vec<&str> = p
            .ops
            .iter()
            .map(|op| match op {
                Op::RecordRun(r) => r.node.as_str(),
                other => panic!("no Job after the deadline: {other:?}"),
            })
            .collect();
        assert_eq!(recorded, ["n4", "n5"]);
        assert_eq!(ready(&p), ("False".into(), reason::DEADLINE_EXCEEDED.into()));
        assert!(p.status.nodes.iter().all(|n| n.phase == PreloadPhase::Failed));
        assert_eq!(p.requeue, None);
    }

    #[test]
    fn bad_specs_and_unreadable_workspaces_start_nothing() {
        for (manifest, needle) in [
            ("../etc/passwd\n", "manifest"),
            ("# only a comment\n", "names no path"),
        ] {
            let s = spec(manifest, None);
            let p = plan(&input(&s, None), &observed(&["n"]), at(1));
            assert!(p.ops.is_empty());
            let c = conditions::find(&p.status.conditions, conditions::READY).unwrap();
            assert_eq!(c.reason, reason::INVALID_SPEC);
            assert!(c.message.contains(needle), "{}", c.message);
        }
        let s = spec("a\n", None);
        let mut obs = observed(&["n"]);
        obs.workspace = Some(workspace(true));
        let p = plan(&input(&s, None), &obs, at(1));
        assert!(p.ops.is_empty());
        assert_eq!(ready(&p).1, reason::UNSUPPORTED);
        obs.workspace = None;
        let p = plan(&input(&s, None), &obs, at(1));
        assert!(p.ops.is_empty());
        assert_eq!(ready(&p).1, reason::WORKSPACE_NOT_FOUND);
        let p = plan(&input(&s, None), &observed(&[]), at(1));
        assert!(p.ops.is_empty());
        assert_eq!(ready(&p).1, reason::NO_NODES);
    }

    #[test]
    fn job_names_are_dns_labels_unique_per_uid_and_node() {
        let long = "x".repeat(189);
        let a = job_name(&long, "uid-1", "node-a");
        assert!(a.len() <= 63 && a.starts_with("sdpreload-x"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(a, job_name(&long, "uid-1", "node-b"));
        assert_ne!(a, job_name(&long, "uid-2", "node-a"));
        assert_eq!(a, job_name(&long, "uid-1", "node-a"));
    }
}
