//! Preload runs in the metadata store: per (preload name, node), how far the node's last
//! preload of that name got. The preload process writes its row about once a second while it
//! fetches and once at the end; the node plugin reads it at publish to make a pod wait.
//!
//! A row is overwritten by the next run of the same (name, node): it describes the latest run
//! only. A run whose process died stays `running` with a stale `updated_at`; readers that care
//! compare `updated_at` with the time (the publish check does not: a preload is re-run).

use std::time::SystemTime;

use crate::error::MetaError;
use crate::meta::PgMetaStore;
use crate::meta::rows::{execute, from_system_time, query, query_opt};
use crate::model::Timestamp;

/// Errors kept per run, and the length each is cut to.
pub const PRELOAD_MAX_ERRORS: usize = 10;
const MAX_ERROR_LEN: usize = 500;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreloadState {
    /// Still fetching (or its process died without saying so: see `updated_at`).
    Running,
    /// Every named file is in the node's cache.
    Done,
    /// Finished, but some named file is missing or could not be fetched.
    Failed,
}

impl PreloadState {
    /// The form stored and shown ("running", "done", "failed").
    pub fn as_str(self) -> &'static str {
        match self {
            PreloadState::Running => "running",
            PreloadState::Done => "done",
            PreloadState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<PreloadState, MetaError> {
        match s {
            "running" => Ok(PreloadState::Running),
            "done" => Ok(PreloadState::Done),
            "failed" => Ok(PreloadState::Failed),
            other => Err(MetaError::Internal(format!("unknown preload state {other:?}"))),
        }
    }
}

/// One run of a preload on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadRun {
    /// The preload's name (see [`crate::preload::validate_name`]).
    pub name: String,
    /// The node whose cache it fills (the node plugin's node id).
    pub node: String,
    /// The workspace it reads (for display).
    pub workspace: String,
    pub state: PreloadState,
    /// Files the manifest named (found), and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files whose every block is in the cache, and their bytes.
    pub done_files: u64,
    pub done_bytes: u64,
    /// Names that are missing plus files that could not be fetched.
    pub failed_files: u64,
    /// The first [`PRELOAD_MAX_ERRORS`] of them, `path: why`.
    pub first_errors: Vec<String>,
    /// Set by the store: when this run started and when its row was last written.
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
}

impl PreloadRun {
    /// A new run of `name` on `node`, nothing fetched yet.
    pub fn start(name: &str, node: &str, workspace: &str) -> PreloadRun {
        PreloadRun {
            name: name.to_string(),
            node: node.to_string(),
            workspace: workspace.to_string(),
            state: PreloadState::Running,
            files: 0,
            bytes: 0,
            done_files: 0,
            done_bytes: 0,
            failed_files: 0,
            first_errors: Vec::new(),
            started_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }
}

const COLUMNS: &str = "name, node, workspace, state, files, bytes, done_files, done_bytes, failed_files, \
     first_errors, started_at, updated_at";

fn run_from_row(r: &tokio_postgres::Row) -> Result<PreloadRun, MetaError> {
    let count = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    Ok(PreloadRun {
        name: r.get(0),
        node: r.get(1),
        workspace: r.get(2),
        state: PreloadState::parse(r.get(3))?,
        files: count(4),
        bytes: count(5),
        done_files: count(6),
        done_bytes: count(7),
        failed_files: count(8),
        first_errors: r.get(9),
        started_at: from_system_time(r.get::<_, SystemTime>(10)),
        updated_at: from_system_time(r.get::<_, SystemTime>(11)),
    })
}

fn validate_node(node: &str) -> Result<(), MetaError> {
    if node.is_empty() || node.len() > 253 || node.chars().any(char::is_control) {
        return Err(MetaError::InvalidArgument(format!(
            "node {node:?}: 1 to 253 characters, no control characters"
        )));
    }
    Ok(())
}

fn db_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgMetaStore {
    /// Records `run` as the latest run of (its name, its node): a `running` run whose row is
    /// `done` or `failed` starts over (`started_at` is reset), anything else updates the row.
    /// Only the first [`PRELOAD_MAX_ERRORS`] errors are kept. Name and node are validated first.
    pub async fn record_preload_run(&self, run: &PreloadRun) -> Result<(), MetaError> {
        crate::preload::validate_name(&run.name).map_err(MetaError::InvalidArgument)?;
        validate_node(&run.node)?;
        let errors: Vec<String> = run
            .first_errors
            .iter()
            .take(PRELOAD_MAX_ERRORS)
            .map(|e| match e.char_indices().nth(MAX_ERROR_LEN) {
                Some((at, _)) => format!("{}...", &e[..at]),
                None => e.clone(),
            })
            .collect();
        let client = self.client().await?;
        // One statement, an upsert both PostgreSQL and CockroachDB take.
        execute(
            &client,
            "INSERT INTO preload_runs (name, node, workspace, state, files, bytes, done_files, \
                 done_bytes, failed_files, first_errors) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name, node) DO UPDATE SET workspace = excluded.workspace, \
                 state = excluded.state, files = excluded.files, bytes = excluded.bytes, \
                 done_files = excluded.done_files, done_bytes = excluded.done_bytes, \
                 failed_files = excluded.failed_files, first_errors = excluded.first_errors, \
                 started_at = CASE WHEN excluded.state = 'running' AND preload_runs.state <> 'running' \
                     THEN now() ELSE preload_runs.started_at END, \
                 updated_at = now()",
            &[
                &run.name,
                &run.node,
                &run.workspace,
                &run.state.as_str(),
                &db_count(run.files),
                &db_count(run.bytes),
                &db_count(run.done_files),
                &db_count(run.done_bytes),
                &db_count(run.failed_files),
                &errors,
            ],
        )
        .await?;
        Ok(())
    }

    /// The latest run of preload `name` on `node`, if one was recorded.
    pub async fn preload_run(&self, name: &str, node: &str) -> Result<Option<PreloadRun>, MetaError> {
        let client = self.client().await?;
        query_opt(
            &client,
            &format!("SELECT {COLUMNS} FROM preload_runs WHERE name = $1 AND node = $2"),
            &[&name, &node],
        )
        .await?
        .as_ref()
        .map(run_from_row)
        .transpose()
    }

    /// The latest run of preload `name` on every node that ran it, by node.
    pub async fn preload_runs(&self, name: &str) -> Result<Vec<PreloadRun>, MetaError> {
        let client = self.client().await?;
        query(
            &client,
            &format!("SELECT {COLUMNS} FROM preload_runs WHERE name = $1 ORDER BY node"),
            &[&name],
        )
        .await?
        .iter()
        .map(run_from_row)
        .collect()
    }

    /// Forgets every run of preload `name` (its resource was deleted: a new preload of the
    /// same name must not count as done on the strength of the old one's runs). Returns how
    /// many rows went.
    pub async fn delete_preload_runs(&self, name: &str) -> Result<u64, MetaError> {
        crate::preload::validate_name(name).map_err(MetaError::InvalidArgument)?;
        let client = self.client().await?;
        execute(&client, "DELETE FROM preload_runs WHERE name = $1", &[&name]).await
    }
}
