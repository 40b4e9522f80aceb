//! Media metadata: DataStores (a media analysis type and version, a JSON Schema for its
//! documents, a JSON Schema for the media ids other systems bring, and the fields a query may
//! filter on) and their Media Documents (immutable JSON validated on write, attached to a
//! file, folder or frame sequence of a workspace, several per media id).
//!
//! This module is the rules: schema-on-write ([`CompiledDataStore::check_document`], with the
//! JSON path of the first error), what is indexed of a document ([`CompiledDataStore::index`]:
//! one row per queryable field present), and filters ([`filter`]). The store
//! ([`crate::meta::PgMetaStore`]'s media methods) keeps them in PostgreSQL.

pub mod body;
mod coalescer;
pub mod documents;
pub mod extract;
pub mod filter;
pub mod technical;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use filter::{Cmp, Filter, FilterError, Scalar, SqlParam};

/// The largest document kept in the metadata store (its JSON text). A larger one keeps its
/// text in the object store as blocks ([`documents::DocumentStore`]) and only its indexed
/// part (queryable fields, timeline entities) in the metadata store.
pub const MAX_INLINE_DOCUMENT_BYTES: usize = 1 << 20;
/// The largest document (its JSON text). Writing one holds its parsed form in memory, several
/// times its text: the bound keeps a writer's memory in reach of a pod's.
pub const MAX_DOCUMENT_BYTES: usize = 512 << 20;
/// The largest schema (JSON text) and media id (JSON text).
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;
pub const MAX_MEDIA_ID_BYTES: usize = 4 << 10;
/// Queryable fields per DataStore, and the longest indexed string (bytes; longer strings are
/// indexed by their first bytes, cut at a character boundary, which equality then misses).
pub const MAX_QUERYABLE_FIELDS: usize = 64;
pub const MAX_INDEXED_STRING: usize = 512;

/// A dotted path into a document: `video.width`, `tracks.0.codec` (a number indexes an array).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.0.c`: 1 to 16 segments of letters, digits, '_' and '-'.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let segments: Vec<String> = text.split('.').map(str::to_string).collect();
        let ok = |s: &String| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if segments.len() > 16 || !segments.iter().all(ok) {
            return Err(format!(
                "field {text:?}: 1 to 16 dot-separated names of letters, digits, '_' and '-'"
            ));
        }
        Ok(FieldPath(segments))
    }

    /// The value at this path, as it is indexed: `None` when absent.
    pub fn index_value(&self, doc: &Value) -> Option<IndexValue> {
        self.value(doc).map(IndexValue::of)
    }

    /// The value at this path.
    pub fn value<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.walk(doc, |_| {})
    }

    /// The value at this path, after calling `visit` on each value passed on the way (the
    /// document first, the value itself excluded).
    fn walk<'a>(&self, doc: &'a Value, mut visit: impl FnMut(&'a Value)) -> Option<&'a Value> {
        let mut at = doc;
        for segment in &self.0 {
            visit(at);
            at = match at {
                Value::Object(map) => map.get(segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// The path as a JSON pointer (without the leading '/').
    fn pointer(&self) -> String {
        self.0.join("/")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// What the index keeps of a field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    /// An object or an array: present, but not compared.
    Other,
}

impl IndexValue {
    fn of(value: &Value) -> IndexValue {
        match value {
            Value::Null => IndexValue::Null,
            Value::Bool(b) => IndexValue::Bool(*b),
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map_or(IndexValue::Other, IndexValue::Num),
            Value::String(s) => {
                let mut end = s.len().min(MAX_INDEXED_STRING);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                IndexValue::Str(s[..end].to_string())
            }
            _ => IndexValue::Other,
        }
    }

    /// The stored kind (`media_fields.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            IndexValue::Null => "null",
            IndexValue::Bool(_) => "bool",
            IndexValue::Num(_) => "number",
            IndexValue::Str(_) => "string",
            IndexValue::Other => "other",
        }
    }
}

/// A DataStore: a unit of namespace, schema and access control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataStoreSpec {
    /// `<namespace>/<name>` (or any name for a local one): letters, digits, '-', '.', '_', '/'.
    pub name: String,
    /// The media analysis its documents hold (`shot-boundaries`, `loudness`, `technical`).
    pub analysis_type: String,
    pub version: u32,
    /// The JSON Schema every document must pass.
    pub schema: Value,
    /// The JSON Schema of the media ids documents are filed under; it cannot change.
    pub media_id_schema: Value,
    /// The fields a query may filter on (dotted paths).
    #[serde(default)]
    pub queryable: Vec<String>,
    /// The timeline collections of its documents (events, regions), queried inside one
    /// document by time range and area.
    #[serde(default)]
    pub timeline: Vec<TimelineSpec>,
    /// Who may read, write and administer it.
    #[serde(default)]
    pub access: DataStoreAccess,
}

/// The subjects of a DataStore ("ServiceAccount:ns/name", "User:u", "Group:g"): readers read
/// and query, writers also write documents, admins also change and delete the DataStore. Each
/// role includes the ones before it; a caller named nowhere gets nothing, not even the
/// knowledge that the DataStore exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataStoreAccess {
    #[serde(default)]
    pub readers: Vec<String>,
    #[serde(default)]
    pub writers: Vec<String>,
    #[serde(default)]
    pub admins: Vec<String>,
}

/// What a caller may do with a DataStore; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DataStoreRole {
    Reader,
    Writer,
    Admin,
}

/// Subjects per role.
pub const MAX_SUBJECTS: usize = 256;

impl DataStoreAccess {
    /// The strongest role `principal` holds; `None` when it is named nowhere.
    pub fn role_of(&self, principal: &crate::rules::access::Principal) -> Option<DataStoreRole> {
        let named = |subjects: &[String]| subjects.iter().any(|s| principal.is(s));
        if named(&self.admins) {
            Some(DataStoreRole::Admin)
        } else if named(&self.writers) {
            Some(DataStoreRole::Writer)
        } else if named(&self.readers) {
            Some(DataStoreRole::Reader)
        } else {
            None
        }
    }

    fn check(&self) -> Result<(), Invalid> {
        for (role, subjects) in [
            ("readers", &self.readers),
            ("writers", &self.writers),
            ("admins", &self.admins),
        ] {
            if subjects.len() > MAX_SUBJECTS {
                return Err(invalid(
                    "the DataStore",
                    format!("/access/{role}"),
                    format!("at most {MAX_SUBJECTS} subjects"),
                ));
            }
            for (i, subject) in subjects.iter().enumerate() {
                validate_subject(subject)
                    .map_err(|e| invalid("the DataStore", format!("/access/{role}/{i}"), e))?;
            }
        }
        Ok(())
    }
}

/// Checks a subject: "ServiceAccount:<namespace>/<name>", "User:<name>" or "Group:<name>".
pub fn validate_subject(subject: &str) -> Result<(), String> {
    let ok = match subject.split_once(':') {
        Some(("ServiceAccount", sa)) => sa
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(['/', ':'])),
        Some(("User" | "Group", name)) => !name.is_empty(),
        _ => false,
    };
    if ok && subject.len() <= 512 {
        Ok(())
    } else {
        Err(format!(
            "subject {subject:?}: \"ServiceAccount:<namespace>/<name>\", \"User:<name>\" or \"Group:<name>\""
        ))
    }
}

/// A collection of timeline entities in a document: an array at `path` whose items have a
/// start time (and an end time; an instant without one) and, for regions, a bounding box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineSpec {
    /// The array (dotted path), e.g. `shots` or `faces`.
    pub path: String,
    /// Within an item: its start and end times (seconds, frames: the DataStore's unit).
    pub start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Within an item: its bounding box as x, y, width and height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionSpec>,
}

/// Where an item's bounding box is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
}

/// Timeline collections per DataStore, and entities indexed per document.
pub const MAX_TIMELINES: usize = 16;
pub const MAX_TIMELINE_ENTITIES: usize = 1_000_000;

/// A timeline collection with its paths parsed.
#[derive(Debug, Clone)]
struct Timeline {
    path: FieldPath,
    start: FieldPath,
    end: Option<FieldPath>,
    region: Option<[FieldPath; 4]>,
}

/// One timeline entity of a document: item `index` of collection `collection` (the
/// DataStore's `timeline[collection]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntity {
    pub collection: usize,
    pub index: usize,
    pub start: f64,
    pub end: f64,
    /// x0, y0, x1, y1.
    pub region: Option<[f64; 4]>,
}

/// What a timeline query asks: entities overlapping a time range (both ends included) and/or
/// an area (x0, y0, x1, y1; edges touching count).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimelineQuery {
    pub time: Option<(f64, f64)>,
    pub area: Option<[f64; 4]>,
}

impl TimelineEntity {
    /// Whether the entity matches `q` (the in-memory meaning the store's query must equal). An
    /// entity without a box matches no area.
    pub fn matches(&self, q: &TimelineQuery) -> bool {
        let time = q.time.is_none_or(|(a, b)| self.start <= b && self.end >= a);
        let area = q.area.is_none_or(|[qx0, qy0, qx1, qy1]| {
            self.region
                .is_some_and(|[x0, y0, x1, y1]| x0 <= qx1 && x1 >= qx0 && y0 <= qy1 && y1 >= qy0)
        });
        time && area
    }
}

impl TimelineQuery {
    /// Checks the ranges: finite, start not after end.
    pub fn check(&self) -> Result<(), String> {
        if let Some((a, b)) = self.time
            && !(a.is_finite() && b.is_finite() && a <= b)
        {
            return Err(format!("time range [{a}, {b}]: finite, start not after end"));
        }
        if let Some([x0, y0, x1, y1]) = self.area
            && !([x0, y0, x1, y1].iter().all(|v| v.is_finite()) && x0 <= x1 && y0 <= y1)
        {
            return Err(format!(
                "area [{x0}, {y0}, {x1}, {y1}]: finite, x0 <= x1 and y0 <= y1"
            ));
        }
        Ok(())
    }
}

/// A refused document, media id or schema: `path` is a JSON pointer into the refused value
/// (empty for the whole of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is invalid at {}: {message}", if path.is_empty() { "its root" } else { path.as_str() })]
pub struct Invalid {
    pub what: &'static str,
    pub path: String,
    pub message: String,
}

fn invalid(what: &'static str, path: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        what,
        path: path.into(),
        message: message.into(),
    }
}

/// Checks a DataStore or document name: 1 to 253 of letters, digits, '-', '.', '_', '/'.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?}: 1 to 253 letters, digits, '-', '.', '_' and '/'"
        ))
    }
}

/// A DataStore with its schemas compiled.
pub struct CompiledDataStore {
    pub spec: DataStoreSpec,
    queryable: Vec<FieldPath>,
    timelines: Vec<Timeline>,
    schema: jsonschema::Validator,
    media_id_schema: jsonschema::Validator,
}

impl fmt::Debug for CompiledDataStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledDataStore")
            .field("spec", &self.spec)
            .finish()
    }
}

fn compile(schema: &Value, what: &'static str) -> Result<jsonschema::Validator, Invalid> {
    if serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len()) > MAX_SCHEMA_BYTES {
        return Err(invalid(what, "", format!("larger than {MAX_SCHEMA_BYTES} bytes")));
    }
    // No remote references: a schema names only what it holds.
    jsonschema::options()
        .build(schema)
        .map_err(|e| invalid(what, e.instance_path().to_string(), e.to_string()))
}

fn check(validator: &jsonschema::Validator, value: &Value, what: &'static str) -> Result<(), Invalid> {
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(e) => Err(invalid(what, e.instance_path().to_string(), e.to_string())),
    }
}

impl CompiledDataStore {
    /// Checks and compiles a spec.
    pub fn compile(spec: DataStoreSpec) -> Result<CompiledDataStore, Invalid> {
        validate_name(&spec.name).map_err(|e| invalid("the DataStore", "/name", e))?;
        validate_name(&spec.analysis_type).map_err(|e| invalid("the DataStore", "/analysisType", e))?;
        spec.access.check()?;
        if spec.queryable.len() > MAX_QUERYABLE_FIELDS {
            return Err(invalid(
                "the DataStore",
                "/queryable",
                format!("at most {MAX_QUERYABLE_FIELDS} queryable fields"),
            ));
        }
        let queryable = spec
            .queryable
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FieldPath::parse(f).map_err(|e| invalid("the DataStore", format!("/queryable/{i}"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The field index keeps one row per document and field: a field listed twice would
        // refuse every document that has it.
        if let Some((first, again)) = first_repeat(&spec.queryable) {
            return Err(invalid(
                "the DataStore",
                format!("/queryable/{again}"),
                format!(
                    "{:?} is listed already at /queryable/{first}",
                    spec.queryable[again]
                ),
            ));
        }
        if spec.timeline.len() > MAX_TIMELINES {
            return Err(invalid(
                "the DataStore",
                "/timeline",
                format!("at most {MAX_TIMELINES} timeline collections"),
            ));
        }
        let timelines = spec
            .timeline
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = |field: &str| format!("/timeline/{i}/{field}");
                let parse = |text: &str, field: &str| {
                    FieldPath::parse(text).map_err(|e| invalid("the DataStore", at(field), e))
                };
                Ok(Timeline {
                    path: parse(&t.path, "path")?,
                    start: parse(&t.start, "start")?,
                    end: t.end.as_deref().map(|e| parse(e, "end")).transpose()?,
                    region: t
                        .region
                        .as_ref()
                        .map(|r| {
                            Ok::<_, Invalid>([
                                parse(&r.x, "region/x")?,
                                parse(&r.y, "region/y")?,
                                parse(&r.width, "region/width")?,
                                parse(&r.height, "region/height")?,
                            ])
                        })
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let schema = compile(&spec.schema, "the document schema")?;
        let media_id_schema = compile(&spec.media_id_schema, "the media id schema")?;
        Ok(CompiledDataStore {
            spec,
            queryable,
            timelines,
            schema,
            media_id_schema,
        })
    }

    /// Schema-on-write: the document passes the schema, its timelines are well formed, and
    /// its JSON text is within `max_bytes`.
    pub fn check_document_within(&self, doc: &Value, max_bytes: usize) -> Result<(), Invalid> {
        self.check_sized_document(doc, json_len(doc), max_bytes)
    }

    /// [`CompiledDataStore::check_document_within`] for a caller that has measured the
    /// document's JSON text already (`len` bytes): a large document is not written out again.
    pub fn check_sized_document(&self, doc: &Value, len: usize, max_bytes: usize) -> Result<(), Invalid> {
        if len > max_bytes {
            return Err(invalid(
                "the document",
                "",
                format!("{len} bytes of JSON; at most {max_bytes}"),
            ));
        }
        check(&self.schema, doc, "the document")?;
        self.timeline(doc).map(drop)
    }

    /// [`CompiledDataStore::check_document_within`] the bound of documents kept in the
    /// metadata store ([`MAX_INLINE_DOCUMENT_BYTES`]).
    pub fn check_document(&self, doc: &Value) -> Result<(), Invalid> {
        self.check_document_within(doc, MAX_INLINE_DOCUMENT_BYTES)
    }

    /// The timeline collections' paths, in the DataStore's order.
    pub(crate) fn timeline_paths(&self) -> impl Iterator<Item = &FieldPath> {
        self.timelines.iter().map(|t| &t.path)
    }

    /// The media id passes its schema and size bound.
    pub fn check_media_id(&self, media_id: &Value) -> Result<(), Invalid> {
        if media_id_key(media_id).len() > MAX_MEDIA_ID_BYTES {
            return Err(invalid(
                "the media id",
                "",
                format!("larger than {MAX_MEDIA_ID_BYTES} bytes"),
            ));
        }
        check(&self.media_id_schema, media_id, "the media id")
    }

    /// What is indexed of `doc`: each queryable field present, with its value.
    pub fn index(&self, doc: &Value) -> Vec<(String, IndexValue)> {
        self.queryable
            .iter()
            .filter_map(|f| f.index_value(doc).map(|v| (f.to_string(), v)))
            .collect()
    }

    /// The timeline entities of `doc`: the items of each declared collection whose start (and
    /// end, and box) are numbers; an end before its start, or a negative size, is refused.
    pub fn timeline(&self, doc: &Value) -> Result<Vec<TimelineEntity>, Invalid> {
        let mut out = Vec::new();
        for (collection, t) in self.timelines.iter().enumerate() {
            let Some(Value::Array(items)) = t.path.value(doc) else {
                continue;
            };
            for (index, item) in items.iter().enumerate() {
                let at = |field: &FieldPath| format!("/{}/{index}/{}", t.path.pointer(), field.pointer());
                let num = |field: &FieldPath| match field.value(item) {
                    Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()),
                    _ => None,
                };
                let Some(start) = num(&t.start) else { continue };
                let end = match &t.end {
                    Some(e) => match num(e) {
                        Some(end) if end >= start => end,
                        Some(_) => return Err(invalid("the document", at(e), "ends before it starts")),
                        None => continue,
                    },
                    None => start,
                };
                let region = match &t.region {
                    Some([x, y, w, h]) => match (num(x), num(y), num(w), num(h)) {
                        (Some(x), Some(y), Some(w), Some(h)) if w >= 0.0 && h >= 0.0 => {
                            Some([x, y, x + w, y + h])
                        }
                        (Some(_), Some(_), Some(_), Some(_)) => {
                            return Err(invalid("the document", at(w), "a box has no negative size"));
                        }
                        _ => None,
                    },
                    None => None,
                };
                out.push(TimelineEntity {
                    collection,
                    index,
                    start,
                    end,
                    region,
                });
            }
        }
        if out.len() > MAX_TIMELINE_ENTITIES {
            return Err(invalid(
                "the document",
                "",
                format!("{} timeline entities; at most {MAX_TIMELINE_ENTITIES}", out.len()),
            ));
        }
        Ok(out)
    }

    /// The path of timeline collection `collection` (as the spec gives it).
    pub fn timeline_path(&self, collection: usize) -> Option<&str> {
        self.spec.timeline.get(collection).map(|t| t.path.as_str())
    }

    /// A filter reads only queryable fields (the others are not indexed).
    pub fn check_filter(&self, filter: &Filter) -> Result<(), FilterError> {
        match filter.fields().into_iter().find(|f| !self.queryable.contains(f)) {
            None => Ok(()),
            Some(f) => Err(FilterError {
                at: String::new(),
                message: format!(
                    "field {f} is not queryable in DataStore {} (queryable: {})",
                    self.spec.name,
                    self.spec.queryable.join(", ")
                ),
            }),
        }
    }
}

/// The first item of `items` equal to an earlier one: (the earlier one's index, its index).
pub fn first_repeat<T: PartialEq>(items: &[T]) -> Option<(usize, usize)> {
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| items[..i].iter().position(|p| p == item).map(|first| (first, i)))
}

/// The namespace half of the store's own DataStores' names (`studiodrive/technical`). Their
/// documents are written by the store itself and read by whoever may read the file or folder
/// a document is attached to: they have no subjects of their own.
pub const BUILT_IN_NAMESPACE: &str = "studiodrive";

/// Whether DataStore `name` is one of the store's own ([`BUILT_IN_NAMESPACE`]).
pub fn is_built_in(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(ns, _)| ns == BUILT_IN_NAMESPACE)
}

/// The length of `value`'s JSON text, without writing it out.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

/// The canonical text of a media id (object keys sorted, as serde_json's map keeps them): two
/// equal ids have one key.
pub fn media_id_key(media_id: &Value) -> String {
    media_id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn shots() -> DataStoreSpec {
        DataStoreSpec {
            name: "studio/shots".into(),
            analysis_type: "shot-boundaries".into(),
            version: 1,
            schema: json!({
                "type": "object",
                "required": ["fps", "shots"],
                "properties": {
                    "fps": {"type": "number", "exclusiveMinimum": 0},
                    "shots": {"type": "array", "items": {
                        "type": "object", "required": ["start", "end"],
                        "properties": {"start": {"type": "number"}, "end": {"type": "number"}}
                    }},
                    "reviewed": {"type": "boolean"}
                }
            }),
            media_id_schema: json!({"type": "object", "required": ["asset"], "properties": {"asset": {"type": "string"}}}),
            queryable: vec!["fps".into(), "reviewed".into(), "shots.0.start".into()],
            timeline: vec![TimelineSpec {
                path: "shots".into(),
                start: "start".into(),
                end: Some("end".into()),
                region: None,
            }],
            access: DataStoreAccess::default(),
        }
    }

    fn principal(ns: &str, sa: &str) -> crate::rules::access::Principal {
        crate::rules::access::Principal::service_account(
            &format!("system:serviceaccount:{ns}:{sa}"),
            vec![format!("system:serviceaccounts:{ns}")],
        )
        .unwrap()
    }

    #[test]
    fn a_caller_holds_its_strongest_role_and_one_named_nowhere_holds_none() {
        let access = DataStoreAccess {
            readers: vec!["Group:system:serviceaccounts:review".into()],
            writers: vec!["ServiceAccount:vfx/analyser".into()],
            admins: vec![
                "ServiceAccount:vfx/admin".into(),
                "ServiceAccount:review/admin".into(),
            ],
        };
        assert_eq!(
            access.role_of(&principal("review", "artist")),
            Some(DataStoreRole::Reader)
        );
        assert_eq!(
            access.role_of(&principal("vfx", "analyser")),
            Some(DataStoreRole::Writer)
        );
        assert_eq!(
            access.role_of(&principal("vfx", "admin")),
            Some(DataStoreRole::Admin)
        );
        // Named as admin and, by its namespace group, as reader: the strongest wins.
        assert_eq!(
            access.role_of(&principal("review", "admin")),
            Some(DataStoreRole::Admin)
        );
        assert_eq!(access.role_of(&principal("vfx", "render")), None);
        assert_eq!(access.role_of(&principal("other", "analyser")), None);
        assert_eq!(
            DataStoreAccess::default().role_of(&principal("vfx", "admin")),
            None
        );
    }

    #[test]
    fn malformed_subjects_are_refused_with_their_path() {
        for (subject, ok) in [
            ("ServiceAccount:vfx/render", true),
            ("User:alice", true),
            ("Group:comp", true),
            ("ServiceAccount:render", false),
            ("ServiceAccount:/render", false),
            ("ServiceAccount:vfx/", false),
            ("Robot:r2", false),
            ("alice", false),
            ("User:", false),
        ] {
            assert_eq!(validate_subject(subject).is_ok(), ok, "{subject}");
        }
        let mut spec = shots();
        spec.access.writers = vec!["User:bob".into(), "bob".into()];
        let err = CompiledDataStore::compile(spec).unwrap_err();
        assert_eq!(err.path, "/access/writers/1");
    }

    #[test]
    fn invalid_documents_are_refused_with_the_json_path_of_the_error() {
        let ds = CompiledDataStore::compile(shots()).unwrap();
        assert_eq!(ds.check_document(&json!({"fps": 24, "shots": []})), Ok(()));
        for (doc, path) in [
            (json!({"fps": 24}), ""),
            (json!({"fps": "24", "shots": []}), "/fps"),
            (
                json!({"fps": 24, "shots": [{"start": 0, "end": 5}, {"start": "x", "end": 9}]}),
                "/shots/1/start",
            ),
            (json!({"fps": 0, "shots": []}), "/fps"),
            (json!([1]), ""),
            (
                json!({"fps": 24, "shots": [{"start": 0, "end": 5}, {"start": 9, "end": 3}]}),
                "/shots/1/end",
            ),
        ] {
            let err = ds.check_document(&doc).unwrap_err();
            assert_eq!(err.path, path, "{doc}: {err}");
        }
        assert!(ds.check_media_id(&json!({"asset": "sh010"})).is_ok());
        assert_eq!(
            ds.check_media_id(&json!({"asset": 7})).unwrap_err().path,
            "/asset"
        );
        let big = json!({"fps": 24, "shots": [], "pad": "x".repeat(MAX_INLINE_DOCUMENT_BYTES)});
        assert!(ds.check_document(&big).unwrap_err().message.contains("bytes"));
    }

    #[test]
    fn bad_specs_and_filters_on_unindexed_fields_are_refused() {
        let mut spec = shots();
        spec.queryable = vec!["a..b".into()];
        assert_eq!(CompiledDataStore::compile(spec).unwrap_err().path, "/queryable/0");
        let mut spec = shots();
        spec.schema = json!({"type": "no-such-type"});
        assert!(CompiledDataStore::compile(spec).is_err());
        let ds = CompiledDataStore::compile(shots()).unwrap();
        let f = Filter::from_json(&json!({"field": "shots.1.end", "op": ">", "value": 3})).unwrap();
        assert!(ds.check_filter(&f).unwrap_err().message.contains("not queryable"));
        let idx = ds.index(&json!({"fps": 25, "shots": [{"start": 3, "end": 4}]}));
        assert_eq!(
            idx,
            [
                ("fps".to_string(), IndexValue::Num(25.0)),
                ("shots.0.start".to_string(), IndexValue::Num(3.0))
            ]
        );
    }
}
