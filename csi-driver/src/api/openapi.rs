//! The API's OpenAPI 3.0 description, served at `GET /openapi.json`. Request and response
//! schemas come from the wire types ([`super::types`]) through schemars; the routes the
//! server answers come from [`ROUTES`], the same table the description lists.

use hyper::Method;
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::types::*;

/// Every resource the API serves: its path template and the methods it answers.
const ROUTES: &[(&str, &[Method])] = &[
    ("/v1/datastores", &[Method::GET]),
    ("/v1/datastores/{namespace}/{name}", &[Method::GET]),
    (
        "/v1/datastores/{namespace}/{name}/documents",
        &[Method::GET, Method::POST],
    ),
    ("/v1/datastores/{namespace}/{name}/query", &[Method::POST]),
    ("/v1/documents/{id}", &[Method::GET]),
    ("/v1/documents/{id}/timeline", &[Method::POST]),
    ("/v1/workspaces/{workspace}/entries", &[Method::GET]),
    ("/v1/workspaces/{workspace}/stat", &[Method::GET]),
    ("/v1/workspaces/{workspace}/snapshots", &[Method::POST]),
    ("/v1/workspaces/{workspace}/publish", &[Method::POST]),
    ("/v1/operations/{id}", &[Method::GET]),
];

/// The resource at a path (decoded segments): its template and the methods it answers, or
/// `None` when no resource is there.
pub fn route_of(segments: &[&str]) -> Option<(&'static str, &'static [Method])> {
    ROUTES.iter().find_map(|(template, methods)| {
        let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        let matches = parts.len() == segments.len()
            && parts
                .iter()
                .zip(segments)
                .all(|(p, s)| p.starts_with('{') || p == s);
        matches.then_some((*template, *methods))
    })
}

/// The methods served at a path (decoded segments), or `None` when no resource is there.
pub fn allowed_methods(segments: &[&str]) -> Option<&'static [Method]> {
    route_of(segments).map(|(_, methods)| methods)
}

struct Doc {
    generator: SchemaGenerator,
}

impl Doc {
    fn schema<T: JsonSchema>(&mut self) -> Value {
        self.generator.subschema_for::<T>().to_value()
    }

    fn body<T: JsonSchema>(&mut self) -> Value {
        json!({"required": true, "content": {"application/json": {"schema": self.schema::<T>()}}})
    }

    /// Responses: `ok` with `T`, and the errors every authenticated call may get plus `extra`.
    fn responses<T: JsonSchema>(&mut self, ok: &str, extra: &[(&str, &str)]) -> Value {
        let error = self.schema::<ErrorBody>();
        let mut responses = Map::new();
        responses.insert(
            ok.to_string(),
            json!({"description": "success", "content": {"application/json": {"schema": self.schema::<T>()}}}),
        );
        let common = [
            ("400", "invalid request"),
            (
                "401",
                "no token, or one the API server did not authenticate for this audience",
            ),
            ("404", "no such resource, or none the caller may learn of"),
            ("405", "method not allowed"),
            ("413", "request body too large"),
            ("503", "the metadata store or the Kubernetes API is unavailable"),
        ];
        for (code, description) in common.iter().chain(extra) {
            responses.insert(
                code.to_string(),
                json!({"description": description, "content": {"application/json": {"schema": error}}}),
            );
        }
        Value::Object(responses)
    }

    /// Responses of a call that may also answer 202 with an operation.
    fn responses_async<T: JsonSchema>(&mut self, ok: &str, extra: &[(&str, &str)]) -> Value {
        let mut responses = self.responses::<T>(ok, extra);
        let operation = self.schema::<OperationView>();
        responses["202"] = json!({
            "description": "accepted (Prefer: respond-async): poll the operation",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": operation}},
        });
        responses
    }
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn prefer_header() -> Value {
    json!({"name": "Prefer", "in": "header", "required": false,
           "description": "`respond-async`: answer 202 with an operation handle",
           "schema": {"type": "string"}})
}

/// The description.
pub fn document() -> Value {
    let mut d = Doc {
        generator: SchemaSettings::openapi3().into_generator(),
    };
    let ds = || {
        vec![
            path_param("namespace", "the DataStore's namespace"),
            path_param("name", "the DataStore's name"),
        ]
    };
    let ws = || {
        path_param(
            "workspace",
            "the workspace's name (`<namespace>.<name>` for operator-made ones)",
        )
    };
    let path = || {
        query_param(
            "path",
            "an absolute path in the workspace (`/` when absent)",
            json!({"type": "string"}),
        )
    };
    let forbidden = [("403", "the caller's role or grant does not allow this")];
    let forbidden_conflict = [
        ("403", "the caller's role or grant does not allow this"),
        ("409", "conflict"),
        ("507", "over the workspace's quota"),
    ];
    let paths = json!({
        "/v1/datastores": {"get": {
            "operationId": "listDataStores", "summary": "The DataStores the caller may read",
            "responses": d.responses::<DataStoreList>("200", &[]),
        }},
        "/v1/datastores/{namespace}/{name}": {"get": {
            "operationId": "getDataStore", "parameters": ds(),
            "responses": d.responses::<DataStoreView>("200", &[]),
        }},
        "/v1/datastores/{namespace}/{name}/documents": {
            "get": {
                "operationId": "listDocuments", "summary": "The documents of a media id (the latest, or all)",
                "parameters": [ds()[0].clone(), ds()[1].clone(),
                    json!({"name": "mediaId", "in": "query", "required": true, "description": "the media id, as JSON", "schema": {"type": "string"}}),
                    query_param("all", "every version, oldest first", json!({"type": "string", "enum": ["true", "false"]}))],
                "responses": d.responses::<DocumentList>("200", &[]),
            },
            "post": {
                "operationId": "writeDocument", "summary": "Writes a document (schema-checked; a new id each time)",
                "parameters": [ds()[0].clone(), ds()[1].clone(), prefer_header()],
                "requestBody": d.body::<DocumentWrite>(),
                "responses": d.responses_async::<DocumentView>("201", &forbidden),
            },
        },
        "/v1/datastores/{namespace}/{name}/query": {"post": {
            "operationId": "queryDataStore", "summary": "Documents matching a filter over queryable fields",
            "parameters": [ds()[0].clone(), ds()[1].clone(), prefer_header()],
            "requestBody": d.body::<QueryRequest>(),
            "responses": d.responses_async::<QueryResult>("200", &[]),
        }},
        "/v1/documents/{id}": {"get": {
            "operationId": "getDocument", "parameters": [path_param("id", "the document id")],
            "responses": d.responses::<DocumentView>("200", &[]),
        }},
        "/v1/documents/{id}/timeline": {"post": {
            "operationId": "queryTimeline", "summary": "Timeline entities overlapping a time range and/or an area",
            "parameters": [path_param("id", "the document id")],
            "requestBody": d.body::<TimelineRequest>(),
            "responses": d.responses::<TimelineResult>("200", &[]),
        }},
        "/v1/workspaces/{workspace}/entries": {"get": {
            "operationId": "listEntries", "summary": "A page of a folder's entries, by name",
            "parameters": [ws(), path(),
                query_param("after", "the `next` of the previous page", json!({"type": "string"})),
                query_param("limit", "entries per page", json!({"type": "integer", "minimum": 1, "maximum": 1000}))],
            "responses": d.responses::<EntryList>("200", &forbidden),
        }},
        "/v1/workspaces/{workspace}/stat": {"get": {
            "operationId": "stat", "parameters": [ws(), path()],
            "responses": d.responses::<NodeView>("200", &forbidden),
        }},
        "/v1/workspaces/{workspace}/snapshots": {"post": {
            "operationId": "createSnapshot", "summary": "Snapshots a folder (constant time)",
            "parameters": [ws()],
            "requestBody": d.body::<SnapshotRequest>(),
            "responses": d.responses::<SnapshotView>("201", &forbidden_conflict),
        }},
        "/v1/workspaces/{workspace}/publish": {"post": {
            "operationId": "publish", "summary": "Moves or copies a folder into place and snapshots it, in one transaction",
            "parameters": [ws()],
            "requestBody": d.body::<PublishRequest>(),
            "responses": d.responses::<PublishResult>("201", &forbidden_conflict),
        }},
        "/v1/operations/{id}": {"get": {
            "operationId": "getOperation", "parameters": [path_param("id", "the operation id")],
            "responses": d.responses::<OperationView>("200", &[]),
        }},
    });
    let schemas = d.generator.take_definitions(true);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Studio Drive API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Media DataStores, documents and queries, and workspace operations. \
                            Authenticate with a Kubernetes service-account token for the API's audience.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"serviceAccountToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"serviceAccountToken": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_described_path_is_routed() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len());
        for (template, methods) in ROUTES {
            let described = paths
                .get(*template)
                .unwrap_or_else(|| panic!("{template} not described"));
            let mut listed: Vec<String> = described.as_object().unwrap().keys().cloned().collect();
            let mut served: Vec<String> = methods.iter().map(|m| m.as_str().to_lowercase()).collect();
            listed.sort();
            served.sort();
            assert_eq!(listed, served, "{template}");
        }
        // Every $ref points at a generated schema.
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "missing schema {name}");
        }
    }

    #[test]
    fn paths_match_their_templates_only() {
        assert!(allowed_methods(&["v1", "datastores", "ns", "n", "query"]).is_some());
        assert!(allowed_methods(&["v1", "datastores", "ns"]).is_none());
        assert!(allowed_methods(&["v1", "documents", "x", "timeline", "y"]).is_none());
        assert_eq!(
            allowed_methods(&["v1", "datastores", "a", "b", "documents"]),
            Some(&[Method::GET, Method::POST][..])
        );
    }
}
