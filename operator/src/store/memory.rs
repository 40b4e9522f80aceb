//! An in-memory [`StudioStore`]: the reference model the planner property tests apply plans
//! to, and the store behind the kube mock tests. `set_available(false)` makes every call fail
//! with `Unavailable`, as a PostgreSQL outage does.
//!
//! Media DataStores keep their documents here too (written with
//! [`MemoryStore::put_media_document`]), so that the refusal of a schema a stored document
//! does not pass is the engine's refusal, not an assumption of the tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use drive::data::{DataKey, Kek};
use drive::lifecycle::LifecycleReport;
use drive::media::CompiledDataStore;
use jiff::Timestamp;

use super::{
    DataStoreRefusal, DataStoreSpec, EventSinkRecord, MediaDataStoreRecord, NewWorkspace, PreloadRun,
    PutDataStoreError, ShareGrant, SnapshotRecord, StoreError, StoreErrorKind, StoreResult, StudioStore,
    Usage, WorkspaceChange, WorkspaceRecord, kek_required, same_json,
};
use crate::crd::{MergeModeSpec, PublishModeSpec, StartFrom};
use drive::relay::SinkSpec;

#[derive(Debug, Default)]
struct State {
    workspaces: BTreeMap<String, WorkspaceRecord>,
    usage: BTreeMap<String, Usage>,
    snapshots: BTreeMap<(String, String), SnapshotRecord>,
    shares: BTreeMap<(String, String), ShareGrant>,
    wrapped_keys: BTreeMap<String, Vec<u8>>,
    pass_reports: BTreeMap<String, LifecycleReport>,
    sinks: BTreeMap<String, EventSinkRecord>,
    preload_runs: BTreeMap<(String, String), PreloadRun>,
    datastores: BTreeMap<String, MediaDataStoreRecord>,
    /// Documents by DataStore name, then by id: the engine re-checks them in id order.
    documents: BTreeMap<String, BTreeMap<uuid::Uuid, serde_json::Value>>,
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    available: AtomicBool,
    next_id: AtomicU64,
    /// Mutating calls made, so tests can assert that a second reconcile wrote nothing.
    writes: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            available: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            writes: AtomicU64::new(0),
        }
    }
}

impl MemoryStore {
    /// Simulates the store going down (`false`) or coming back (`true`).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Sets the usage a workspace reports.
    pub fn set_usage(&self, workspace: &str, usage: Usage) {
        self.lock().usage.insert(workspace.to_string(), usage);
    }

    /// Mutating calls so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The wrapped data key of the encrypted workspace `name`, if any.
    pub fn wrapped_key(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().wrapped_keys.get(name).cloned()
    }

    /// Stores the report of a finished pass under its pass row (the pass id, or a shard's
    /// row, `drive::gc::shard_row_id`), as the pass's Job would.
    pub fn set_pass_report(&self, row: &str, report: LifecycleReport) {
        self.lock().pass_reports.insert(row.to_string(), report);
    }

    /// A copy of the workspace `name`, if live.
    pub fn workspace(&self, name: &str) -> Option<WorkspaceRecord> {
        self.lock().workspaces.get(name).cloned()
    }

    /// Changes the recorded sink `id` as a relay would (lease, counts, failures); false when
    /// there is none. Not a write: the operator never makes these changes.
    pub fn update_event_sink(&self, id: &str, change: impl FnOnce(&mut EventSinkRecord)) -> bool {
        self.lock().sinks.get_mut(id).map(change).is_some()
    }

    /// Writes a document of DataStore `datastore`, as a client of the store would (the
    /// operator never writes documents): checked against the DataStore's schema first, as the
    /// engine does on write. Returns its id, or why it was refused. Not a write the operator
    /// makes, so not counted.
    pub fn put_media_document(&self, datastore: &str, body: serde_json::Value) -> Result<uuid::Uuid, String> {
        let mut state = self.lock();
        let stored = state
            .datastores
            .get(datastore)
            .ok_or_else(|| format!("not found: DataStore {datastore}"))?;
        let compiled = CompiledDataStore::compile(stored.spec.clone()).map_err(|e| e.to_string())?;
        compiled.check_document(&body).map_err(|e| e.to_string())?;
        let id = uuid::Uuid::new_v4();
        state
            .documents
            .entry(datastore.to_string())
            .or_default()
            .insert(id, body);
        Ok(id)
    }

    /// The documents of DataStore `datastore`, by id.
    pub fn media_documents(&self, datastore: &str) -> Vec<(uuid::Uuid, serde_json::Value)> {
        self.lock()
            .documents
            .get(datastore)
            .map(|docs| docs.iter().map(|(id, body)| (*id, body.clone())).collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        drive::sync::lock(&self.state)
    }

    fn check(&self) -> StoreResult<()> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "metadata store unavailable (simulated outage)",
            ))
        }
    }

    fn write(&self) -> StoreResult<()> {
        self.check()?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn id(&self) -> String {
        format!("mem-{}", self.next_id.fetch_add(1, Ordering::SeqCst))
    }
}

fn not_found(what: String) -> StoreError {
    StoreError::new(StoreErrorKind::NotFound, format!("not found: {what}"))
}

impl StudioStore for MemoryStore {
    async fn get_workspace(&self, name: &str) -> StoreResult<Option<WorkspaceRecord>> {
        self.check()?;
        Ok(self.lock().workspaces.get(name).cloned())
    }

    async fn create_workspace(&self, ws: &NewWorkspace, kek: Option<&Kek>) -> StoreResult<WorkspaceRecord> {
        self.check()?;
        let wrapped_key = match (ws.encrypted, kek) {
            (false, _) => None,
            (true, Some(kek)) => Some(DataKey::generate().wrap(kek)),
            (true, None) => return Err(kek_required(&ws.name)),
        };
        self.write()?;
        let id = self.id();
        let mut state = self.lock();
        if state.workspaces.contains_key(&ws.name) {
            return Err(StoreError::new(
                StoreErrorKind::Exists,
                format!("workspace {}", ws.name),
            ));
        }
        let record = WorkspaceRecord {
            id,
            name: ws.name.clone(),
            kind: ws.kind,
            block_size: ws.block_size,
            encrypted: ws.encrypted,
            quota_bytes: ws.quota_bytes,
            owners: ws.owners.clone(),
            object_store: ws.object_store.clone(),
        };
        state.workspaces.insert(ws.name.clone(), record.clone());
        if let Some(wrapped) = wrapped_key {
            state.wrapped_keys.insert(ws.name.clone(), wrapped);
        }
        Ok(record)
    }

    async fn update_workspace(&self, name: &str, change: &WorkspaceChange) -> StoreResult<WorkspaceRecord> {
        self.write()?;
        let mut state = self.lock();
        let record = state
            .workspaces
            .get_mut(name)
            .ok_or_else(|| not_found(format!("workspace {name}")))?;
        if let Some(quota) = change.quota_bytes {
            record.quota_bytes = quota;
        }
        if let Some(owners) = &change.owners {
            record.owners.clone_from(owners);
        }
        Ok(record.clone())
    }

    async fn delete_workspace(&self, name: &str) -> StoreResult<bool> {
        self.write()?;
        let mut state = self.lock();
        state.wrapped_keys.remove(name);
        Ok(state.workspaces.remove(name).is_some())
    }

    async fn workspace_usage(&self, ws: &WorkspaceRecord) -> StoreResult<Usage> {
        self.check()?;
        Ok(self.lock().usage.get(&ws.name).copied().unwrap_or_default())
    }

    async fn get_snapshot(&self, workspace: &str, name: &str) -> StoreResult<Option<SnapshotRecord>> {
        self.check()?;
        Ok(self
            .lock()
            .snapshots
            .get(&(workspace.to_string(), name.to_string()))
            .cloned())
    }

    async fn create_snapshot(&self, workspace: &str, name: &str, path: &str) -> StoreResult<SnapshotRecord> {
        self.write()?;
        let id = self.id();
        let mut state = self.lock();
        if !state.workspaces.contains_key(workspace) {
            return Err(not_found(format!("workspace {workspace}")));
        }
        let key = (workspace.to_string(), name.to_string());
        if state.snapshots.contains_key(&key) {
            return Err(StoreError::new(
                StoreErrorKind::Exists,
                format!("snapshot {name}"),
            ));
        }
        let record = SnapshotRecord {
            id,
            name: name.to_string(),
            path: path.to_string(),
            created_at: Timestamp::UNIX_EPOCH,
            usage: state.usage.get(workspace).copied().unwrap_or_default(),
        };
        state.snapshots.insert(key, record.clone());
        Ok(record)
    }

    /// The model has no tree: a publish is the snapshot of its destination.
    async fn publish(
        &self,
        workspace: &str,
        name: &str,
        _from: &str,
        path: &str,
        _mode: PublishModeSpec,
        _merge: MergeModeSpec,
    ) -> StoreResult<SnapshotRecord> {
        self.create_snapshot(workspace, name, path).await
    }

    async fn delete_snapshot(&self, workspace: &str, name: &str) -> StoreResult<bool> {
        self.write()?;
        Ok(self
            .lock()
            .snapshots
            .remove(&(workspace.to_string(), name.to_string()))
            .is_some())
    }

    async fn get_share(&self, workspace: &str, name: &str) -> StoreResult<Option<ShareGrant>> {
        self.check()?;
        Ok(self
            .lock()
            .shares
            .get(&(workspace.to_string(), name.to_string()))
            .cloned())
    }

    async fn put_share(&self, workspace: &str, grant: &ShareGrant) -> StoreResult<()> {
        self.write()?;
        let mut state = self.lock();
        if !state.workspaces.contains_key(workspace) {
            return Err(not_found(format!("workspace {workspace}")));
        }
        state
            .shares
            .insert((workspace.to_string(), grant.name.clone()), grant.clone());
        Ok(())
    }

    async fn delete_share(&self, workspace: &str, name: &str) -> StoreResult<bool> {
        self.write()?;
        Ok(self
            .lock()
            .shares
            .remove(&(workspace.to_string(), name.to_string()))
            .is_some())
    }

    async fn get_event_sink(&self, id: &str) -> StoreResult<Option<EventSinkRecord>> {
        self.check()?;
        Ok(self.lock().sinks.get(id).cloned())
    }

    async fn put_event_sink(
        &self,
        id: &str,
        workspace: &str,
        spec: &SinkSpec,
        _start: StartFrom,
    ) -> StoreResult<EventSinkRecord> {
        self.check()?;
        // The engine's checks, in its order: id, spec, workspace, then the sink's workspace.
        let id_ok = !id.is_empty()
            && id.len() <= 253
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
        if !id_ok {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!("event sink id {id:?}"),
            ));
        }
        spec.validate()
            .map_err(|e| StoreError::new(StoreErrorKind::Invalid, e.to_string()))?;
        self.write()?;
        let mut state = self.lock();
        let ws = state
            .workspaces
            .get(workspace)
            .map(|w| w.id.clone())
            .ok_or_else(|| not_found(format!("workspace {workspace}")))?;
        let record = state
            .sinks
            .entry(id.to_string())
            .or_insert_with(|| EventSinkRecord {
                id: id.to_string(),
                workspace_id: ws.clone(),
                spec: spec.clone(),
                // No feed here: every sink starts at 0, whatever `start` says.
                position: 0,
                relay: None,
                delivered: 0,
                filtered: 0,
                consecutive_failures: 0,
                failing_since: None,
                last_error: String::new(),
                last_delivered_at: None,
            });
        if record.workspace_id != ws {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("event sink {id} belongs to workspace {}", record.workspace_id),
            ));
        }
        record.spec = spec.clone();
        Ok(record.clone())
    }

    async fn delete_event_sink(&self, id: &str) -> StoreResult<bool> {
        self.write()?;
        Ok(self.lock().sinks.remove(id).is_some())
    }

    async fn get_media_datastore(&self, name: &str) -> StoreResult<Option<MediaDataStoreRecord>> {
        self.check()?;
        Ok(self.lock().datastores.get(name).cloned())
    }

    /// The engine's rules (`PgMetaStore::put_media_datastore`), in its order and with its
    /// messages: the spec compiles; an existing DataStore keeps its media id schema; a new
    /// schema or timeline is taken only when every stored document passes it, the first one
    /// that does not (by id) being named with the JSON path of its error; the same spec again
    /// writes nothing.
    async fn put_media_datastore(
        &self,
        spec: &DataStoreSpec,
    ) -> Result<MediaDataStoreRecord, PutDataStoreError> {
        self.check()?;
        let compiled = CompiledDataStore::compile(spec.clone())
            .map_err(|e| StoreError::new(StoreErrorKind::Invalid, format!("invalid argument: {e}")))?;
        let mut state = self.lock();
        let existing = state.datastores.get(&spec.name).cloned();
        if let Some(old) = &existing {
            if !same_json(&old.spec.media_id_schema, &spec.media_id_schema) {
                return Err(DataStoreRefusal::MediaIdSchemaImmutable(format!(
                    "DataStore {}: the media id schema cannot change",
                    spec.name
                ))
                .into());
            }
            if old.spec == *spec {
                return Ok(old.clone());
            }
            if old.spec.schema != spec.schema || old.spec.timeline != spec.timeline {
                let first_failing = state
                    .documents
                    .get(&spec.name)
                    .into_iter()
                    .flatten()
                    .find_map(|(id, body)| compiled.check_document(body).err().map(|e| (*id, e)));
                if let Some((doc, why)) = first_failing {
                    return Err(DataStoreRefusal::SchemaRefused(format!(
                        "DataStore {}: stored document {doc} does not pass the new schema: {why}",
                        spec.name
                    ))
                    .into());
                }
            }
        }
        // Checked and changed under one lock, so a document written meanwhile is either seen
        // by the check or refused by the new schema (the engine does not promise this yet:
        // docs/media.md, "The MediaDataStore resource").
        self.write()?;
        let id = existing.map_or_else(|| self.id(), |d| d.id);
        let record = MediaDataStoreRecord {
            id,
            spec: spec.clone(),
        };
        state.datastores.insert(spec.name.clone(), record.clone());
        Ok(record)
    }

    async fn delete_media_datastore(&self, name: &str) -> StoreResult<bool> {
        self.write()?;
        let mut state = self.lock();
        state.documents.remove(name);
        Ok(state.datastores.remove(name).is_some())
    }

    async fn preload_runs(&self, name: &str) -> StoreResult<Vec<PreloadRun>> {
        self.check()?;
        Ok(self
            .lock()
            .preload_runs
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, run)| run.clone())
            .collect())
    }

    async fn record_preload_run(&self, run: &PreloadRun) -> StoreResult<()> {
        self.write()?;
        self.lock()
            .preload_runs
            .insert((run.name.clone(), run.node.clone()), run.clone());
        Ok(())
    }

    async fn delete_preload_runs(&self, name: &str) -> StoreResult<u64> {
        self.write()?;
        let mut state = self.lock();
        let before = state.preload_runs.len();
        state.preload_runs.retain(|(n, _), _| n != name);
        Ok((before - state.preload_runs.len()) as u64)
    }

    async fn pass_report(&self, pass_id: &str) -> StoreResult<Option<LifecycleReport>> {
        self.check()?;
        Ok(self.lock().pass_reports.get(pass_id).cloned())
    }
}
