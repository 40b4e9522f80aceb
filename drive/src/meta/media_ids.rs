//! Widening a DataStore's media id schema: the one change to it that keeps every stored media
//! id valid, so the stored documents need no check. Built-in DataStores use it when a version
//! files documents under a new shape of media id (`studiodrive/technical` version 2 adds
//! sequence summaries). [`PgMetaStore::put_media_datastore`] refuses every other change of a
//! media id schema.

use serde_json::Value;

use crate::error::MetaError;
use crate::media::{CompiledDataStore, DataStoreSpec};
use crate::meta::rows::execute;
use crate::meta::{PgMetaStore, in_txn};

/// Whether `wider` accepts every value `narrow` accepts, by its form: `{"anyOf": [...]}`
/// listing `narrow` itself. (Deciding inclusion of arbitrary schemas is not attempted.)
fn is_widening(narrow: &Value, wider: &Value) -> bool {
    wider
        .get("anyOf")
        .and_then(Value::as_array)
        .is_some_and(|branches| branches.contains(narrow))
}

impl PgMetaStore {
    /// Replaces DataStore `spec.name`'s media id schema by `spec.media_id_schema` where it is
    /// still `from`; nothing else of the DataStore changes ([`PgMetaStore::put_media_datastore`]
    /// does the rest). True when it changed; false when the DataStore does not exist or its
    /// media id schema is not `from` (already widened, or another). Refused, changing nothing,
    /// unless the new schema is `{"anyOf": [...]}` listing `from`, so that every stored media id
    /// still passes it, or when the spec does not compile.
    pub async fn widen_media_id_schema(&self, spec: &DataStoreSpec, from: &Value) -> Result<bool, MetaError> {
        if !is_widening(from, &spec.media_id_schema) {
            return Err(MetaError::InvalidArgument(format!(
                "DataStore {}: the new media id schema must be an anyOf listing the old one",
                spec.name
            )));
        }
        CompiledDataStore::compile(spec.clone()).map_err(|e| MetaError::InvalidArgument(e.to_string()))?;
        let changed = in_txn!(self, |tx| {
            async {
                execute(
                    tx,
                    "UPDATE media_datastores SET media_id_schema = $2, updated_at = now() \
                     WHERE name = $1 AND media_id_schema = $3",
                    &[&spec.name, &spec.media_id_schema, from],
                )
                .await
            }
            .await
        })?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_an_any_of_listing_the_old_schema_widens_it() {
        let old = json!({"type": "object", "required": ["node"]});
        let other = json!({"type": "string"});
        assert!(is_widening(&old, &json!({"anyOf": [other, old]})));
        assert!(!is_widening(&old, &json!({"anyOf": [other]})));
        assert!(
            !is_widening(&old, &json!({"oneOf": [old, other]})),
            "oneOf may refuse an id both take"
        );
        assert!(!is_widening(&old, &other));
    }
}
