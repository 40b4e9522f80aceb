//! Asynchronous operations of the HTTP API: a handle per long query or large write, kept in
//! the database so any API replica answers a poll. Only the caller that started one reads it.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::error::MetaError;
use crate::meta::PgMetaStore;
use crate::meta::rows::{execute, from_system_time, query_opt};
use crate::model::Timestamp;

/// Finished operations are kept this long, then purged.
pub const OPERATION_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// An operation still running after this long was lost with the process running it.
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Where an operation stands.
#[derive(Debug, Clone, PartialEq)]
pub enum OperationState {
    Running,
    Succeeded(Value),
    /// The error, as the API reports it.
    Failed(Value),
}

/// An operation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: uuid::Uuid,
    pub kind: String,
    pub state: OperationState,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

impl PgMetaStore {
    /// Records a running operation of `owner`; purges finished ones past their retention.
    pub async fn start_operation(&self, owner: &str, kind: &str) -> Result<uuid::Uuid, MetaError> {
        let client = self.client().await?;
        let id = uuid::Uuid::new_v4();
        let cutoff = SystemTime::now() - OPERATION_RETENTION;
        execute(
            &client,
            "DELETE FROM api_operations WHERE started_at < $1",
            &[&cutoff],
        )
        .await?;
        execute(
            &client,
            "INSERT INTO api_operations (id, owner, kind, state) VALUES ($1, $2, $3, 'running')",
            &[&id, &owner, &kind],
        )
        .await?;
        Ok(id)
    }

    /// Records how operation `id` ended (once: a finished operation keeps its first end).
    pub async fn finish_operation(&self, id: uuid::Uuid, state: &OperationState) -> Result<(), MetaError> {
        let (name, result, error) = match state {
            OperationState::Running => return Ok(()),
            OperationState::Succeeded(v) => ("succeeded", Some(v), None),
            OperationState::Failed(e) => ("failed", None, Some(e)),
        };
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE api_operations SET state = $2, result = $3, error = $4, finished_at = now() \
             WHERE id = $1 AND state = 'running'",
            &[&id, &name, &result, &error],
        )
        .await?;
        Ok(())
    }

    /// Operation `id` if `owner` started it (anyone else gets `None`, as for a missing one).
    /// One running past [`OPERATION_DEADLINE`] is reported failed: its process is gone.
    pub async fn operation(&self, owner: &str, id: uuid::Uuid) -> Result<Option<Operation>, MetaError> {
        let client = self.client().await?;
        let Some(row) = query_opt(
            &client,
            "SELECT kind, state, result, error, started_at, finished_at FROM api_operations \
             WHERE id = $1 AND owner = $2",
            &[&id, &owner],
        )
        .await?
        else {
            return Ok(None);
        };
        let started: SystemTime = row.get(4);
        let state = match row.get::<_, &str>(1) {
            "succeeded" => OperationState::Succeeded(row.get::<_, Option<Value>>(2).unwrap_or(Value::Null)),
            "failed" => OperationState::Failed(row.get::<_, Option<Value>>(3).unwrap_or(Value::Null)),
            _ if started.elapsed().unwrap_or_default() > OPERATION_DEADLINE => OperationState::Failed(
                serde_json::json!({"code": "Lost", "message": "the server running the operation stopped before it finished"}),
            ),
            _ => OperationState::Running,
        };
        Ok(Some(Operation {
            id,
            kind: row.get(0),
            state,
            started_at: from_system_time(started),
            finished_at: row.get::<_, Option<SystemTime>>(5).map(from_system_time),
        }))
    }
}
