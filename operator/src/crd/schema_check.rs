//! Offline checks of CRD schemas and of objects against them, so that tests (and the
//! `validate` subcommand) can reject what the API server would reject without a cluster.
//!
//! - [`structural_violations`] checks the rules of a *structural* schema: every node has a
//!   `type` unless it carries `x-kubernetes-int-or-string` or
//!   `x-kubernetes-preserve-unknown-fields`; no `$ref`; logical junctors (`allOf`, `anyOf`,
//!   `oneOf`, `not`) carry only value validations, never types or properties; `properties` and
//!   `additionalProperties` are not mixed; `items` is one schema.
//! - [`validate`] checks a JSON value against a schema the way the API server's OpenAPI
//!   validation does with strict field validation (`kubectl --validate=strict`, the default):
//!   types, unknown fields, `required`, `enum`, numeric ranges, lengths, item counts,
//!   duplicates in `x-kubernetes-list-type: set` lists and `date-time` formats. CEL rules are evaluated separately by kube's client-side CEL.
//!
//! Both are pure functions over `serde_json::Value`.

use serde_json::{Map, Value};

/// Root fields every CRD schema has implicitly.
const ROOT_IMPLICIT: [&str; 3] = ["apiVersion", "kind", "metadata"];
const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];
/// Keys that change the structure of a schema, forbidden below a junctor.
const STRUCTURAL_KEYS: [&str; 8] = [
    "type",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "default",
];

/// Every rule of a structural schema that `schema` breaks, as `path: problem` lines.
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_structural(schema, "", &mut out);
    out
}

fn walk_structural(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    if obj.contains_key("$ref") {
        out.push(format!("{path}: $ref is not allowed"));
    }
    let escapes = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !escapes {
        out.push(format!("{path}: no type"));
    }
    if obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        out.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields must be true or absent"
        ));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push(format!("{path}: additionalProperties: false is not allowed"));
    }
    for junctor in JUNCTORS {
        if let Some(sub) = obj.get(junctor) {
            let branches: Vec<&Value> = match sub {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for (i, branch) in branches.into_iter().enumerate() {
                check_junctor_branch(branch, &format!("{path}.{junctor}[{i}]"), out);
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            walk_structural(sub, &format!("{path}.{name}"), out);
        }
    }
    match obj.get("items") {
        Some(Value::Array(_)) => out.push(format!("{path}: items must be a single schema")),
        Some(items) => walk_structural(items, &format!("{path}[]"), out),
        None if obj.get("type").and_then(Value::as_str) == Some("array") => {
            out.push(format!("{path}: array without items"));
        }
        None => {}
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        walk_structural(additional, &format!("{path}.*"), out);
    }
}

fn check_junctor_branch(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    for key in STRUCTURAL_KEYS {
        if obj.contains_key(key) {
            out.push(format!("{path}: `{key}` is not allowed inside a logical junctor"));
        }
    }
    for sub in obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(Map::values)
    {
        check_junctor_branch(sub, path, out);
    }
}

/// Every way `value` breaks `schema`, as `path: problem` lines; empty when it conforms.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_value(schema, value, "", &mut out);
    out
}

fn check_value(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let Some(s) = schema.as_object() else { return };
    if value.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{path}: must not be null"));
        }
        return;
    }
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    let type_ok = match s.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{path}: expected {}, got {}", s["type"], kind_of(value)));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        out.push(format!(
            "{path}: {value} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    match value {
        Value::Object(map) => check_object(s, map, path, out),
        Value::Array(items) => {
            check_count(s, "minItems", "maxItems", items.len(), "items", path, out);
            // The API server refuses a repeated item of a set list (field.Duplicate).
            if s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        out.push(format!("{path}[{i}]: duplicate value {item}"));
                    }
                }
            }
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::String(text) => {
            check_count(
                s,
                "minLength",
                "maxLength",
                text.chars().count(),
                "characters",
                path,
                out,
            );
            if s.get("format").and_then(Value::as_str) == Some("date-time")
                && text.parse::<jiff::Timestamp>().is_err()
            {
                out.push(format!("{path}: {text:?} is not an RFC 3339 date-time"));
            }
        }
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = s.get("minimum").and_then(Value::as_f64)
                && v < min
            {
                out.push(format!("{path}: {n} is less than the minimum {min}"));
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64)
                && v > max
            {
                out.push(format!("{path}: {n} is more than the maximum {max}"));
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_object(s: &Map<String, Value>, map: &Map<String, Value>, path: &str, out: &mut Vec<String>) {
    for required in s.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !map.contains_key(name)
        {
            out.push(format!("{path}.{name}: required"));
        }
    }
    let preserve = s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let props = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties").filter(|v| v.is_object());
    for (key, sub) in map {
        let sub_path = format!("{path}.{key}");
        match (props.and_then(|p| p.get(key)), additional) {
            (Some(sub_schema), _) => check_value(sub_schema, sub, &sub_path, out),
            (None, Some(add)) => check_value(add, sub, &sub_path, out),
            (None, None) if preserve || props.is_none() => {}
            // The API server adds these to every root schema and validates ObjectMeta itself.
            (None, None) if path.is_empty() && ROOT_IMPLICIT.contains(&key.as_str()) => {}
            (None, None) => out.push(format!("{sub_path}: unknown field")),
        }
    }
}

fn check_count(
    s: &Map<String, Value>,
    min_key: &str,
    max_key: &str,
    n: usize,
    what: &str,
    path: &str,
    out: &mut Vec<String>,
) {
    let n = n as u64;
    if let Some(min) = s.get(min_key).and_then(Value::as_u64)
        && n < min
    {
        out.push(format!("{path}: {n} {what}, fewer than {min}"));
    }
    if let Some(max) = s.get(max_key).and_then(Value::as_u64)
        && n > max
    {
        out.push(format!("{path}: {n} {what}, more than {max}"));
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The openAPIV3Schema of the first version of `crd`, as JSON.
pub fn crd_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// Validates an object (and, for an update, its previous version) as the API server would
/// on admission: the OpenAPI schema first (types, unknown fields, ranges), then, if that
/// passed, the CEL rules (`x-kubernetes-validations`, transition rules when `old` is given)
/// through kube's client-side CEL evaluation. Returns every problem found.
pub fn validate_resource(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Vec<String> {
    let schema = crd_schema(crd);
    let mut problems = validate(&schema, object);
    // CEL rules only run on objects that passed the schema (the API server does the same).
    if problems.is_empty()
        && let Err(errors) = kube::core::cel::Validator::new().validate(&schema, object, old)
    {
        problems.extend(
            errors
                .into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn untyped_node_and_junctor_types_are_not_structural() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"description": "no type"},
                "b": {"type": "string", "anyOf": [{"type": "integer"}]},
                "c": {"x-kubernetes-int-or-string": true},
            }
        });
        let v = structural_violations(&schema);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with(".a: no type"));
        assert!(v[1].contains("`type` is not allowed inside a logical junctor"));
    }

    #[test]
    fn validate_reports_type_unknown_field_range_and_missing_required() {
        let schema = json!({
            "type": "object",
            "required": ["n"],
            "properties": {
                "n": {"type": "integer", "minimum": 1},
                "s": {"type": "string", "maxLength": 3, "enum": ["ab", "abcd"]},
                "t": {"type": "string", "format": "date-time"},
            }
        });
        assert!(validate(&schema, &json!({"n": 2, "s": "ab", "t": "2026-01-01T00:00:00Z"})).is_empty());
        let errors = validate(&schema, &json!({"n": 0, "s": "abcd", "x": 1, "t": "yesterday"}));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.iter().any(|e| e == ".x: unknown field"));
        assert!(errors.iter().any(|e| e.starts_with(".n: 0 is less than")));
        assert!(errors.iter().any(|e| e.starts_with(".s: 4 characters")));
        assert!(errors.iter().any(|e| e.contains("not an RFC 3339")));
        let wrong_type = validate(&schema, &json!({"n": "2"}));
        assert_eq!(wrong_type, vec![".n: expected \"integer\", got string"]);
        assert_eq!(validate(&schema, &json!({})), vec![".n: required"]);
    }
}
