//! [`StudioStore`] over the engine's metadata store (`drive::PgMetaStore`, PostgreSQL). The one
//! place where `drive` types and errors meet the operator: `MetaError` is mapped to
//! [`StoreError`] here and nowhere else.

use drive::PgMetaStore;
use drive::data::{DataKey, Kek};
use drive::lifecycle::LifecycleReport;
use drive::meta::{SinkRecord, SinkStart, WorkspaceUpdate};
use drive::model::{self, Actor, Timestamp as NanoTime, View};
use drive::relay::SinkSpec;
use drive::{ErrorKind, MetaError};
use jiff::Timestamp;

use super::{
    DataStoreRefusal, DataStoreSpec, EventSinkRecord, MediaDataStoreRecord, NewWorkspace, PreloadRun,
    PutDataStoreError, ShareGrant, SnapshotRecord, StoreError, StoreErrorKind, StoreResult, StudioStore,
    Usage, WorkspaceChange, WorkspaceRecord, kek_required, same_json,
};
use crate::crd::{MergeModeSpec, Permission, PublishModeSpec, StartFrom, WorkspaceKind};

/// Every store mutation the operator makes is recorded in the change feed under this actor.
fn actor() -> Actor {
    Actor::system("operator")
}

fn map_error(e: MetaError) -> StoreError {
    let kind = match e.kind() {
        ErrorKind::NotFound => StoreErrorKind::NotFound,
        ErrorKind::Exists => StoreErrorKind::Exists,
        ErrorKind::Conflict => StoreErrorKind::Conflict,
        ErrorKind::Unavailable => StoreErrorKind::Unavailable,
        ErrorKind::Internal => StoreErrorKind::Internal,
        ErrorKind::NotEmpty
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::InvalidName
        | ErrorKind::NameTooLong
        | ErrorKind::InvalidArgument
        | ErrorKind::ReadOnly
        | ErrorKind::PermissionDenied
        | ErrorKind::QuotaExceeded => StoreErrorKind::Invalid,
    };
    StoreError {
        kind,
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

/// `Ok(None)` for NotFound, the mapped error otherwise.
fn absent_if_not_found<T>(r: Result<T, MetaError>) -> StoreResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(map_error(e)),
    }
}

/// The engine's workspace kind for a CRD one.
pub(crate) fn to_kind(kind: WorkspaceKind) -> model::WorkspaceKind {
    match kind {
        WorkspaceKind::User => model::WorkspaceKind::User,
        WorkspaceKind::Project => model::WorkspaceKind::Project,
        WorkspaceKind::Team => model::WorkspaceKind::Team,
    }
}

fn from_kind(kind: model::WorkspaceKind) -> WorkspaceKind {
    match kind {
        model::WorkspaceKind::User => WorkspaceKind::User,
        model::WorkspaceKind::Project => WorkspaceKind::Project,
        model::WorkspaceKind::Team => WorkspaceKind::Team,
    }
}

fn to_permission(p: Permission) -> model::Permission {
    match p {
        Permission::Read => model::Permission::Read,
        Permission::Write => model::Permission::Write,
        Permission::Admin => model::Permission::Admin,
    }
}

fn from_permission(p: model::Permission) -> Permission {
    match p {
        model::Permission::Read => Permission::Read,
        model::Permission::Write => Permission::Write,
        model::Permission::Admin => Permission::Admin,
    }
}

fn to_jiff(t: NanoTime) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(t.0)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn from_jiff(t: Timestamp) -> NanoTime {
    NanoTime(i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX))
}

fn record(ws: model::Workspace) -> WorkspaceRecord {
    WorkspaceRecord {
        id: ws.id.to_string(),
        name: ws.name,
        kind: from_kind(ws.kind),
        block_size: ws.block_size,
        encrypted: ws.encrypted,
        quota_bytes: ws.quota_bytes,
        owners: ws.owners,
        object_store: ws.object_store,
    }
}

fn usage(u: model::Usage) -> Usage {
    Usage {
        files: u.files,
        directories: u.directories,
        bytes: u.bytes,
    }
}

fn sink_record(s: SinkRecord) -> EventSinkRecord {
    EventSinkRecord {
        id: s.id,
        workspace_id: s.workspace.to_string(),
        spec: s.spec,
        position: s.position,
        relay: s.holder,
        delivered: s.delivered,
        filtered: s.filtered,
        consecutive_failures: s.consecutive_failures,
        failing_since: s.failing_since.map(to_jiff),
        last_error: s.last_error,
        last_delivered_at: s.last_delivered_at.map(to_jiff),
    }
}

fn to_start(start: StartFrom) -> SinkStart {
    match start {
        StartFrom::Now => SinkStart::Now,
        StartFrom::Beginning => SinkStart::Beginning,
    }
}

fn datastore_record(d: drive::meta::DataStoreRecord) -> MediaDataStoreRecord {
    MediaDataStoreRecord {
        id: d.id.to_string(),
        spec: d.spec,
    }
}

impl MetaStoreAdapter {
    /// Classifies the engine's refusal of `spec` (`InvalidArgument`, whose reason the engine
    /// gives only as text, `text`). Rather than parse that text, it compares what the store
    /// holds now with what was asked: beyond a spec that does not compile (which the planner
    /// rules out first, with the engine's own compile function), the engine refuses to change
    /// a stored DataStore for exactly two reasons, a changed media id schema and a stored
    /// document that fails the new schema or timeline. The message is the engine's: it names
    /// that document and the JSON path of its error. A concurrent change by another client
    /// between the refusal and this read can misname the reason once; the next reconcile
    /// names it again.
    async fn classify_refusal(&self, spec: &DataStoreSpec, refused: MetaError) -> PutDataStoreError {
        let MetaError::InvalidArgument(text) = &refused else {
            return map_error(refused).into();
        };
        match self.0.media_datastore(&spec.name).await {
            Ok(Some(stored)) if !same_json(&stored.spec.media_id_schema, &spec.media_id_schema) => {
                DataStoreRefusal::MediaIdSchemaImmutable(text.clone()).into()
            }
            Ok(Some(stored))
                if !same_json(&stored.spec.schema, &spec.schema) || stored.spec.timeline != spec.timeline =>
            {
                DataStoreRefusal::SchemaRefused(text.clone()).into()
            }
            // Nothing stored to protect, or the re-read failed: the refusal as it came.
            Ok(_) | Err(_) => map_error(refused).into(),
        }
    }

    async fn workspace_id(&self, name: &str) -> StoreResult<model::WorkspaceId> {
        self.0
            .get_workspace(name)
            .await
            .map(|ws| ws.id)
            .map_err(map_error)
    }

    async fn snapshot_record(&self, snap: model::Snapshot) -> StoreResult<SnapshotRecord> {
        let u = self.0.snapshot_usage(&snap).await.map_err(map_error)?;
        Ok(SnapshotRecord {
            id: snap.id.0.to_string(),
            name: snap.name,
            path: snap.path,
            created_at: to_jiff(snap.created_at),
            usage: usage(u),
        })
    }
}

/// The adapter: a thin newtype so the port is implemented in this crate.
#[derive(Debug, Clone)]
pub struct MetaStoreAdapter(pub PgMetaStore);

impl StudioStore for MetaStoreAdapter {
    async fn get_workspace(&self, name: &str) -> StoreResult<Option<WorkspaceRecord>> {
        Ok(absent_if_not_found(self.0.get_workspace(name).await)?.map(record))
    }

    async fn create_workspace(&self, ws: &NewWorkspace, kek: Option<&Kek>) -> StoreResult<WorkspaceRecord> {
        // The data key exists only here, long enough to be wrapped; the store keeps the
        // wrapped form (drive::data::keys), which mounts unwrap with the same KEK.
        let wrapped_key = match (ws.encrypted, kek) {
            (false, _) => None,
            (true, Some(kek)) => Some(DataKey::generate().wrap(kek)),
            (true, None) => return Err(kek_required(&ws.name)),
        };
        let spec = model::WorkspaceSpec {
            name: ws.name.clone(),
            kind: to_kind(ws.kind),
            block_size: ws.block_size,
            wrapped_key,
            quota_bytes: ws.quota_bytes,
            owners: ws.owners.clone(),
            object_store: ws.object_store.clone(),
        };
        self.0
            .create_workspace(&actor(), &spec)
            .await
            .map(record)
            .map_err(map_error)
    }

    async fn update_workspace(&self, name: &str, change: &WorkspaceChange) -> StoreResult<WorkspaceRecord> {
        let update = WorkspaceUpdate {
            quota_bytes: change.quota_bytes,
            owners: change.owners.clone(),
        };
        self.0
            .update_workspace(&actor(), name, &update)
            .await
            .map(record)
            .map_err(map_error)
    }

    async fn delete_workspace(&self, name: &str) -> StoreResult<bool> {
        Ok(absent_if_not_found(self.0.delete_workspace(&actor(), name).await)?.is_some())
    }

    async fn workspace_usage(&self, ws: &WorkspaceRecord) -> StoreResult<Usage> {
        let stored = self.0.get_workspace(&ws.name).await.map_err(map_error)?;
        self.0
            .usage(View::Live, stored.root)
            .await
            .map(usage)
            .map_err(map_error)
    }

    async fn get_snapshot(&self, workspace: &str, name: &str) -> StoreResult<Option<SnapshotRecord>> {
        let Some(ws) = absent_if_not_found(self.0.get_workspace(workspace).await)? else {
            return Ok(None);
        };
        match absent_if_not_found(self.0.get_snapshot(ws.id, name).await)? {
            Some(snap) => self.snapshot_record(snap).await.map(Some),
            None => Ok(None),
        }
    }

    async fn create_snapshot(&self, workspace: &str, name: &str, path: &str) -> StoreResult<SnapshotRecord> {
        let ws = self.workspace_id(workspace).await?;
        let snap = self
            .0
            .create_snapshot(&actor(), ws, name, path)
            .await
            .map_err(map_error)?;
        self.snapshot_record(snap).await
    }

    async fn publish(
        &self,
        workspace: &str,
        name: &str,
        from: &str,
        path: &str,
        mode: PublishModeSpec,
        merge: MergeModeSpec,
    ) -> StoreResult<SnapshotRecord> {
        let ws = self.workspace_id(workspace).await?;
        let options = drive::meta::PublishOptions {
            mode: match mode {
                PublishModeSpec::Move => drive::meta::PublishMode::Move,
                PublishModeSpec::Copy => drive::meta::PublishMode::Copy,
            },
            snapshot: name.to_string(),
            merge: match merge {
                MergeModeSpec::Fail => model::MergeMode::Fail,
                MergeModeSpec::Overwrite => model::MergeMode::Overwrite,
                MergeModeSpec::Skip => model::MergeMode::Skip,
            },
        };
        let report = self
            .0
            .publish(&actor(), ws, from, path, &options)
            .await
            .map_err(map_error)?;
        self.snapshot_record(report.snapshot).await
    }

    async fn delete_snapshot(&self, workspace: &str, name: &str) -> StoreResult<bool> {
        let Some(ws) = absent_if_not_found(self.0.get_workspace(workspace).await)? else {
            return Ok(false);
        };
        Ok(absent_if_not_found(self.0.delete_snapshot(&actor(), ws.id, name).await)?.is_some())
    }

    async fn get_share(&self, workspace: &str, name: &str) -> StoreResult<Option<ShareGrant>> {
        let Some(ws) = absent_if_not_found(self.0.get_workspace(workspace).await)? else {
            return Ok(None);
        };
        let shares = self.0.list_shares(ws.id).await.map_err(map_error)?;
        Ok(shares.into_iter().find(|s| s.name == name).map(|s| {
            let mut subjects = s.subjects;
            subjects.sort();
            ShareGrant {
                name: s.name,
                path: s.path,
                subjects,
                permission: from_permission(s.permission),
                expires_at: s.expires_at.map(to_jiff),
            }
        }))
    }

    async fn put_share(&self, workspace: &str, grant: &ShareGrant) -> StoreResult<()> {
        let ws = self.workspace_id(workspace).await?;
        let share = model::Share {
            workspace: ws,
            name: grant.name.clone(),
            path: grant.path.clone(),
            subjects: grant.subjects.clone(),
            permission: to_permission(grant.permission),
            expires_at: grant.expires_at.map(from_jiff),
        };
        self.0.put_share(&actor(), &share).await.map_err(map_error)
    }

    async fn delete_share(&self, workspace: &str, name: &str) -> StoreResult<bool> {
        let Some(ws) = absent_if_not_found(self.0.get_workspace(workspace).await)? else {
            return Ok(false);
        };
        self.0
            .delete_share(&actor(), ws.id, name)
            .await
            .map_err(map_error)
    }

    async fn get_event_sink(&self, id: &str) -> StoreResult<Option<EventSinkRecord>> {
        self.0
            .event_sink(id)
            .await
            .map(|s| s.map(sink_record))
            .map_err(map_error)
    }

    async fn put_event_sink(
        &self,
        id: &str,
        workspace: &str,
        spec: &SinkSpec,
        start: StartFrom,
    ) -> StoreResult<EventSinkRecord> {
        let ws = self.workspace_id(workspace).await?;
        self.0
            .put_event_sink(id, ws, spec, to_start(start))
            .await
            .map(sink_record)
            .map_err(map_error)
    }

    async fn delete_event_sink(&self, id: &str) -> StoreResult<bool> {
        self.0.delete_event_sink(id).await.map_err(map_error)
    }

    async fn get_media_datastore(&self, name: &str) -> StoreResult<Option<MediaDataStoreRecord>> {
        self.0
            .media_datastore(name)
            .await
            .map(|d| d.map(datastore_record))
            .map_err(map_error)
    }

    async fn put_media_datastore(
        &self,
        spec: &DataStoreSpec,
    ) -> Result<MediaDataStoreRecord, PutDataStoreError> {
        match self.0.put_media_datastore(spec).await {
            Ok(stored) => Ok(datastore_record(stored)),
            Err(e) if e.kind() == ErrorKind::InvalidArgument => Err(self.classify_refusal(spec, e).await),
            Err(e) => Err(map_error(e).into()),
        }
    }

    async fn delete_media_datastore(&self, name: &str) -> StoreResult<bool> {
        self.0.delete_media_datastore(name).await.map_err(map_error)
    }

    async fn preload_runs(&self, name: &str) -> StoreResult<Vec<PreloadRun>> {
        self.0.preload_runs(name).await.map_err(map_error)
    }

    async fn record_preload_run(&self, run: &PreloadRun) -> StoreResult<()> {
        self.0.record_preload_run(run).await.map_err(map_error)
    }

    async fn delete_preload_runs(&self, name: &str) -> StoreResult<u64> {
        self.0.delete_preload_runs(name).await.map_err(map_error)
    }

    async fn pass_report(&self, pass_id: &str) -> StoreResult<Option<LifecycleReport>> {
        let Some(json) = self.0.gc_pass_report(pass_id).await.map_err(map_error)? else {
            return Ok(None);
        };
        // A report this operator cannot read (another version's) must not stall the policy:
        // the status says the pass stored none, and the log says why.
        Ok(serde_json::from_value(json)
            .inspect_err(|e| tracing::warn!(pass_id, error = %e, "unreadable GC pass report"))
            .ok())
    }
}
