//! The JSON text of a document kept in the object store, written with the place of each
//! timeline item in it, so a timeline query reads the bytes of its hits and not the document.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::CompiledDataStore;

/// A document's JSON text and, per timeline collection of its DataStore, the byte span
/// (offset, length) of each item of that collection (by index; none when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBody {
    pub text: Vec<u8>,
    pub spans: Vec<Vec<(u64, u64)>>,
}

/// Writes `doc` as JSON (the same text `serde_json::to_vec` writes) and records where the
/// items of `compiled`'s timeline collections lie in it.
pub fn encode(doc: &Value, compiled: &CompiledDataStore) -> EncodedBody {
    // The collections' arrays and every value on the way to them, by address: the walk
    // descends into those and writes everything else in one piece.
    // (Two collections may name one array.)
    let mut collections: HashMap<*const Value, Vec<usize>> = HashMap::new();
    let mut on_the_way: HashSet<*const Value> = HashSet::new();
    let mut count = 0;
    for (i, path) in compiled.timeline_paths().enumerate() {
        count = i + 1;
        let found = path.walk(doc, |v| {
            on_the_way.insert(v as *const Value);
        });
        if let Some(array @ Value::Array(_)) = found {
            collections.entry(array as *const Value).or_default().push(i);
        }
    }
    let mut encoder = Encoder {
        text: Vec::new(),
        spans: vec![Vec::new(); count],
        collections,
        on_the_way,
    };
    encoder.value(doc);
    EncodedBody {
        text: encoder.text,
        spans: encoder.spans,
    }
}

struct Encoder {
    text: Vec<u8>,
    spans: Vec<Vec<(u64, u64)>>,
    collections: HashMap<*const Value, Vec<usize>>,
    on_the_way: HashSet<*const Value>,
}

impl Encoder {
    fn value(&mut self, value: &Value) {
        let at = value as *const Value;
        let collections = self.collections.get(&at).cloned().unwrap_or_default();
        if collections.is_empty() && !self.on_the_way.contains(&at) {
            self.whole(value);
            return;
        }
        match value {
            Value::Object(map) => {
                self.text.push(b'{');
                for (n, (key, item)) in map.iter().enumerate() {
                    if n > 0 {
                        self.text.push(b',');
                    }
                    // A string always serializes.
                    let _ = serde_json::to_writer(&mut self.text, key);
                    self.text.push(b':');
                    self.value(item);
                }
                self.text.push(b'}');
            }
            Value::Array(items) => {
                self.text.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        self.text.push(b',');
                    }
                    let start = self.text.len() as u64;
                    self.value(item);
                    for &c in &collections {
                        self.spans[c].push((start, self.text.len() as u64 - start));
                    }
                }
                self.text.push(b']');
            }
            other => self.whole(other),
        }
    }

    fn whole(&mut self, value: &Value) {
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.text, value);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::media::{DataStoreSpec, TimelineSpec};

    fn store(paths: &[&str]) -> CompiledDataStore {
        CompiledDataStore::compile(DataStoreSpec {
            name: "studio/analysis".into(),
            analysis_type: "shots".into(),
            version: 1,
            schema: json!({"type": "object"}),
            media_id_schema: json!({}),
            queryable: vec![],
            timeline: paths
                .iter()
                .map(|p| TimelineSpec {
                    path: (*p).into(),
                    start: "t".into(),
                    end: None,
                    region: None,
                })
                .collect(),
            access: Default::default(),
        })
        .unwrap()
    }

    /// The text is serde_json's, and each span holds exactly its item.
    fn check(doc: &Value, paths: &[&str]) {
        let compiled = store(paths);
        let encoded = encode(doc, &compiled);
        assert_eq!(encoded.text, serde_json::to_vec(doc).unwrap());
        for (c, path) in compiled.timeline_paths().enumerate() {
            let items = match path.value(doc) {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![],
            };
            assert_eq!(encoded.spans[c].len(), items.len(), "collection {path}");
            for (item, (offset, len)) in items.iter().zip(&encoded.spans[c]) {
                let slice = &encoded.text[*offset as usize..(*offset + *len) as usize];
                assert_eq!(&serde_json::from_slice::<Value>(slice).unwrap(), item);
            }
        }
    }

    #[test]
    fn spans_hold_their_items_in_nested_repeated_and_absent_collections() {
        let doc = json!({
            "a": {"shots": [{"t": 1, "s": "é\"\\n"}, {"t": 2.5, "x": [1, {"y": null}]}]},
            "z": [{"faces": [{"t": 3}]}, {"faces": []}],
            "shots": "not an array",
            "after": [1, 2, 3]
        });
        check(
            &doc,
            &[
                "a.shots",
                "z.0.faces",
                "z.1.faces",
                "missing.list",
                "shots",
                "a.shots",
            ],
        );
        // A collection inside another's items.
        let doc = json!({"shots": [{"t": 1, "faces": [{"t": 1}, {"t": 2}]}, {"t": 2}]});
        check(&doc, &["shots", "shots.0.faces"]);
        check(&json!([1, 2]), &["0"]);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z\"\\\\é\n]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_document_encodes_as_serde_json_writes_it(doc in arb_json()) {
            check(&doc, &["a", "a.0", "b.a", "c", "a.a", "b.0.c"]);
        }
    }
}
