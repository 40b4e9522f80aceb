//! Filters over the queryable fields of media documents: comparisons (`=`, `<`, `>`, `<=`,
//! `>=`), `in` and `exists`, combined with `and`, `or` and `not`.
//!
//! One meaning, two evaluations: [`Filter::matches`] evaluates a document in memory (the
//! model the tests compare against), and [`Filter::to_sql`] builds a set of document ids from
//! the index rows (`media_fields`) with INTERSECT, UNION and EXCEPT, so a query reads the
//! index, never the documents. Both read a field through [`IndexValue`], which is what is
//! indexed: a comparison between values of different types is false, strings compare by
//! bytes, numbers as f64.

use serde_json::Value;

use super::{FieldPath, IndexValue};

/// The largest filter tree a query takes (nodes), and its deepest nesting.
pub const MAX_FILTER_NODES: usize = 256;
pub const MAX_FILTER_DEPTH: usize = 16;

/// A value a filter compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Cmp {
    fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Lt => "<",
            Cmp::Gt => ">",
            Cmp::Le => "<=",
            Cmp::Ge => ">=",
        }
    }

    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Cmp::Eq => ord == Equal,
            Cmp::Lt => ord == Less,
            Cmp::Gt => ord == Greater,
            Cmp::Le => ord != Greater,
            Cmp::Ge => ord != Less,
        }
    }
}

/// A filter tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare(FieldPath, Cmp, Scalar),
    In(FieldPath, Vec<Scalar>),
    Exists(FieldPath),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// Why a filter was refused; `at` is where in the filter's JSON (a JSON pointer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter{}: {message}", if at.is_empty() { String::new() } else { format!(" at {at}") })]
pub struct FilterError {
    pub at: String,
    pub message: String,
}

fn refuse(at: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        at: at.to_string(),
        message: message.into(),
    }
}

fn scalar(value: &Value, at: &str) -> Result<Scalar, FilterError> {
    Ok(match value {
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => Scalar::Num(
            n.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| refuse(at, "a number out of range"))?,
        ),
        Value::String(s) => Scalar::Str(s.clone()),
        _ => return Err(refuse(at, "a value is null, a boolean, a number or a string")),
    })
}

impl Filter {
    /// Parses the JSON form: `{"field": "a.b", "op": "=", "value": 1}` (ops `=`, `<`, `>`,
    /// `<=`, `>=`, `in` with a list, `exists` without a value), `{"and": [...]}`,
    /// `{"or": [...]}`, `{"not": {...}}`.
    pub fn from_json(value: &Value) -> Result<Filter, FilterError> {
        let mut nodes = 0;
        Filter::parse(value, "", 0, &mut nodes)
    }

    fn parse(value: &Value, at: &str, depth: usize, nodes: &mut usize) -> Result<Filter, FilterError> {
        *nodes += 1;
        if *nodes > MAX_FILTER_NODES {
            return Err(refuse(at, format!("more than {MAX_FILTER_NODES} filter nodes")));
        }
        if depth > MAX_FILTER_DEPTH {
            return Err(refuse(at, format!("nested deeper than {MAX_FILTER_DEPTH}")));
        }
        let Value::Object(map) = value else {
            return Err(refuse(at, "a filter is an object"));
        };
        let list = |key: &str, items: &Value, nodes: &mut usize| -> Result<Vec<Filter>, FilterError> {
            let Value::Array(items) = items else {
                return Err(refuse(&format!("{at}/{key}"), "a list of filters"));
            };
            items
                .iter()
                .enumerate()
                .map(|(i, f)| Filter::parse(f, &format!("{at}/{key}/{i}"), depth + 1, nodes))
                .collect()
        };
        if map.len() == 1 {
            if let Some(items) = map.get("and") {
                return Ok(Filter::And(list("and", items, nodes)?));
            }
            if let Some(items) = map.get("or") {
                return Ok(Filter::Or(list("or", items, nodes)?));
            }
            if let Some(inner) = map.get("not") {
                return Ok(Filter::Not(Box::new(Filter::parse(
                    inner,
                    &format!("{at}/not"),
                    depth + 1,
                    nodes,
                )?)));
            }
        }
        if let Some(extra) = map
            .keys()
            .find(|k| !["field", "op", "value"].contains(&k.as_str()))
        {
            return Err(refuse(
                at,
                format!("unknown key {extra:?} (a filter is and, or, not, or field/op/value)"),
            ));
        }
        let field = match map.get("field") {
            Some(Value::String(f)) => FieldPath::parse(f).map_err(|e| refuse(&format!("{at}/field"), e))?,
            _ => {
                return Err(refuse(
                    &format!("{at}/field"),
                    "a field path such as \"video.width\"",
                ));
            }
        };
        let op = match map.get("op") {
            Some(Value::String(op)) => op.as_str(),
            _ => return Err(refuse(&format!("{at}/op"), "one of =, <, >, <=, >=, in, exists")),
        };
        let value_at = format!("{at}/value");
        let value = map.get("value");
        let cmp = match op {
            "=" => Cmp::Eq,
            "<" => Cmp::Lt,
            ">" => Cmp::Gt,
            "<=" => Cmp::Le,
            ">=" => Cmp::Ge,
            "exists" => {
                if value.is_some() {
                    return Err(refuse(&value_at, "exists takes no value"));
                }
                return Ok(Filter::Exists(field));
            }
            "in" => {
                let Some(Value::Array(values)) = value else {
                    return Err(refuse(&value_at, "in takes a list of values"));
                };
                if values.len() > MAX_FILTER_NODES {
                    return Err(refuse(&value_at, format!("at most {MAX_FILTER_NODES} values")));
                }
                let values = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| scalar(v, &format!("{value_at}/{i}")))
                    .collect::<Result<_, _>>()?;
                return Ok(Filter::In(field, values));
            }
            other => {
                return Err(refuse(
                    &format!("{at}/op"),
                    format!("{other:?} is not one of =, <, >, <=, >=, in, exists"),
                ));
            }
        };
        let value = scalar(value.ok_or_else(|| refuse(&value_at, "missing"))?, &value_at)?;
        if cmp != Cmp::Eq && matches!(value, Scalar::Null | Scalar::Bool(_)) {
            return Err(refuse(&value_at, "only numbers and strings are ordered"));
        }
        Ok(Filter::Compare(field, cmp, value))
    }

    /// The JSON form [`Filter::from_json`] reads.
    pub fn to_json(&self) -> Value {
        let scalar = |s: &Scalar| match s {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Scalar::Str(s) => Value::String(s.clone()),
        };
        match self {
            Filter::Compare(f, cmp, v) => {
                serde_json::json!({"field": f.to_string(), "op": cmp.sql(), "value": scalar(v)})
            }
            Filter::In(f, vs) => serde_json::json!({
                "field": f.to_string(), "op": "in", "value": vs.iter().map(scalar).collect::<Vec<_>>()
            }),
            Filter::Exists(f) => serde_json::json!({"field": f.to_string(), "op": "exists"}),
            Filter::And(fs) => serde_json::json!({"and": fs.iter().map(Filter::to_json).collect::<Vec<_>>()}),
            Filter::Or(fs) => serde_json::json!({"or": fs.iter().map(Filter::to_json).collect::<Vec<_>>()}),
            Filter::Not(f) => serde_json::json!({"not": f.to_json()}),
        }
    }

    /// Every field the filter reads.
    pub fn fields(&self) -> Vec<&FieldPath> {
        match self {
            Filter::Compare(f, ..) | Filter::In(f, _) | Filter::Exists(f) => vec![f],
            Filter::And(fs) | Filter::Or(fs) => fs.iter().flat_map(Filter::fields).collect(),
            Filter::Not(f) => f.fields(),
        }
    }

    /// Whether `doc` matches (the in-memory meaning of the filter).
    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Filter::Compare(field, cmp, value) => {
                field.index_value(doc).is_some_and(|v| compare(&v, *cmp, value))
            }
            Filter::In(field, values) => field
                .index_value(doc)
                .is_some_and(|v| values.iter().any(|value| compare(&v, Cmp::Eq, value))),
            Filter::Exists(field) => field.index_value(doc).is_some(),
            Filter::And(fs) => fs.iter().all(|f| f.matches(doc)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(doc)),
            Filter::Not(f) => !f.matches(doc),
        }
    }

    /// A query yielding the ids (`doc_id`) of the documents of the datastore `$1` that match.
    /// Values are appended to `params` (numbered after the ones already there).
    pub fn to_sql(&self, params: &mut Vec<SqlParam>) -> String {
        let param = push_param;
        let leaf = |field: &FieldPath, condition: Option<String>, params: &mut Vec<SqlParam>| {
            let f = param(SqlParam::Text(field.to_string()), params);
            let condition = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
            format!("SELECT doc_id FROM media_fields WHERE datastore_id = $1 AND field = {f}{condition}")
        };
        let value_condition = |cmp: Cmp, value: &Scalar, params: &mut Vec<SqlParam>| match value {
            Scalar::Null => "kind = 'null'".to_string(),
            Scalar::Bool(b) => format!(
                "kind = 'bool' AND bool_value = {}",
                param(SqlParam::Bool(*b), params)
            ),
            Scalar::Num(n) => format!(
                "kind = 'number' AND num {} {}",
                cmp.sql(),
                param(SqlParam::Float(*n), params)
            ),
            Scalar::Str(s) => format!(
                "kind = 'string' AND str {} {}",
                cmp.sql(),
                param(SqlParam::Bytes(s.as_bytes().to_vec()), params)
            ),
        };
        match self {
            Filter::Compare(field, cmp, value) => {
                let condition = value_condition(*cmp, value, params);
                leaf(field, Some(condition), params)
            }
            Filter::In(field, values) if values.is_empty() => {
                let _ = field;
                "SELECT doc_id FROM media_fields WHERE false".to_string()
            }
            Filter::In(field, values) => {
                let conditions: Vec<String> = values
                    .iter()
                    .map(|v| format!("({})", value_condition(Cmp::Eq, v, params)))
                    .collect();
                leaf(field, Some(format!("({})", conditions.join(" OR "))), params)
            }
            Filter::Exists(field) => leaf(field, None, params),
            Filter::And(fs) if fs.is_empty() => ALL_DOCS.to_string(),
            Filter::Or(fs) if fs.is_empty() => "SELECT doc_id FROM media_fields WHERE false".to_string(),
            Filter::And(fs) | Filter::Or(fs) => {
                let op = if matches!(self, Filter::And(_)) {
                    " INTERSECT "
                } else {
                    " UNION "
                };
                let parts: Vec<String> = fs.iter().map(|f| format!("({})", f.to_sql(params))).collect();
                parts.join(op)
            }
            Filter::Not(f) => format!("({ALL_DOCS}) EXCEPT ({})", f.to_sql(params)),
        }
    }
}

/// Appends `p` and returns its placeholder (`$1` is the datastore).
fn push_param(p: SqlParam, params: &mut Vec<SqlParam>) -> String {
    params.push(p);
    format!("${}", params.len() + 1)
}

/// Every document of the datastore `$1`.
const ALL_DOCS: &str = "SELECT id AS doc_id FROM media_documents WHERE datastore_id = $1";

/// A value bound into a filter's SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Text(String),
    Bool(bool),
    Float(f64),
    Bytes(Vec<u8>),
}

fn compare(indexed: &IndexValue, cmp: Cmp, value: &Scalar) -> bool {
    match (indexed, value) {
        (IndexValue::Null, Scalar::Null) => cmp == Cmp::Eq,
        (IndexValue::Bool(a), Scalar::Bool(b)) => cmp == Cmp::Eq && a == b,
        (IndexValue::Num(a), Scalar::Num(b)) => a.partial_cmp(b).is_some_and(|o| cmp.holds(o)),
        (IndexValue::Str(a), Scalar::Str(b)) => cmp.holds(a.as_bytes().cmp(b.as_bytes())),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_parse_round_trip_and_refuse_with_the_place() {
        let f = json!({"and": [
            {"field": "video.width", "op": ">=", "value": 1920},
            {"or": [{"field": "codec", "op": "in", "value": ["prores", "dnxhd"]},
                    {"not": {"field": "review.note", "op": "exists"}}]}
        ]});
        let parsed = Filter::from_json(&f).unwrap();
        assert_eq!(Filter::from_json(&parsed.to_json()).unwrap(), parsed);
        let doc = json!({"video": {"width": 3840}, "codec": "h264"});
        assert!(parsed.matches(&doc));
        assert!(!parsed.matches(&json!({"video": {"width": 3840}, "codec": "h264", "review": {"note": 1}})));

        for (bad, at) in [
            (
                json!({"and": [{"field": "a", "op": "~", "value": 1}]}),
                "/and/0/op",
            ),
            (json!({"field": "a", "op": "<", "value": true}), "/value"),
            (json!({"field": "a..b", "op": "=", "value": 1}), "/field"),
            (json!({"field": "a", "op": "exists", "value": 1}), "/value"),
            (
                json!({"or": [{"field": "a", "op": "=", "value": {"x": 1}}]}),
                "/or/0/value",
            ),
            (json!({"field": "a", "op": "=", "value": 1, "extra": 2}), ""),
            (json!([1]), ""),
        ] {
            let err = Filter::from_json(&bad).unwrap_err();
            assert_eq!(err.at, at, "{bad}: {err}");
        }
        let mut deep = json!({"field": "a", "op": "exists"});
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(Filter::from_json(&deep).is_err());
    }

    #[test]
    fn comparisons_are_typed_strings_by_bytes() {
        let f = |op: &str, v: Value| Filter::from_json(&json!({"field": "x", "op": op, "value": v})).unwrap();
        assert!(f("<", json!("b")).matches(&json!({"x": "B"})));
        assert!(!f("<", json!(10)).matches(&json!({"x": "9"})));
        assert!(f("=", json!(1)).matches(&json!({"x": 1.0})));
        assert!(f("=", Value::Null).matches(&json!({"x": null})));
        assert!(!f("=", Value::Null).matches(&json!({})));
        assert!(Filter::Exists(FieldPath::parse("x").unwrap()).matches(&json!({"x": [1]})));
    }
}
