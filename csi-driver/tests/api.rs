//! `studiodrive-csi api` as a process, over real PostgreSQL, with tokens reviewed by a
//! stand-in Kubernetes API server: DataStore roles (a reader cannot write), a subject of
//! another namespace without a grant learns nothing, workspace Shares decide paths and
//! workspace operations, asynchronous operations are polled by their owner only; and the
//! OpenAPI description is exercised by schemathesis (PyPI) with no server error and no
//! response outside the description.

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use common::{KubeApi, Storage, Vouched};
use drive::media::{DataStoreAccess, DataStoreSpec};
use drive::model::{Actor, Name, NewNode, NodeKind, Permission, Share, WorkspaceKind, WorkspaceSpec};
use drive::{MetaConfig, PgMetaStore};
use serde_json::{Value, json};

const AUDIENCE: &str = "studiodrive-api";

/// A running `studiodrive-csi api`.
struct Api {
    child: Child,
    addr: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    fn start(storage: &Storage, kube: &KubeApi) -> anyhow::Result<Api> {
        Api::start_with(storage, kube, &[])
    }

    fn start_with(storage: &Storage, kube: &KubeApi, extra: &[&std::ffi::OsStr]) -> anyhow::Result<Api> {
        let mut child = common::studiodrive()
            .args(["api", "--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kube.kubeconfig)
            .args(extra)
            .args(storage.args())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no address in {line:?}"))?
            .to_string();
        Ok(Api { child, addr })
    }

    /// One request; (status, JSON body, headers).
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        extra: &[&str],
    ) -> anyhow::Result<(u16, Value, String)> {
        let mut s = std::net::TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        write!(s, "{head}\r\n{body}")?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)?;
        let response = String::from_utf8(response)?;
        let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
        let status: u16 = head.split_whitespace().nth(1).context("a status")?.parse()?;
        let value =
            serde_json::from_str(body).with_context(|| format!("{method} {path}: not JSON: {body}"))?;
        Ok((status, value, head.to_string()))
    }

    fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        self.call("GET", path, Some(token), None, &[])
            .map(|(s, v, _)| (s, v))
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.call("POST", path, Some(token), Some(body), &[])
            .map(|(s, v, _)| (s, v))
    }
}

fn vouch(kube: &KubeApi, token: &str, namespace: &str, service_account: &str) {
    kube.vouch(
        token,
        Vouched {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name: format!("{service_account}-pod"),
            pod_uid: format!("uid-{token}"),
            audience: AUDIENCE.into(),
        },
    );
}

fn reviews() -> DataStoreSpec {
    DataStoreSpec {
        name: "vfx/reviews".into(),
        analysis_type: "review".into(),
        version: 1,
        schema: json!({"type": "object", "required": ["rating"],
                       "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                      "notes": {"type": "array", "items": {"type": "object"}}}}),
        media_id_schema: json!({"type": "string"}),
        queryable: vec!["rating".into()],
        timeline: vec![drive::media::TimelineSpec {
            path: "notes".into(),
            start: "at".into(),
            end: None,
            region: None,
        }],
        access: DataStoreAccess {
            readers: vec![
                "ServiceAccount:vfx/reader".into(),
                "ServiceAccount:partner/viewer".into(),
            ],
            writers: vec!["ServiceAccount:vfx/writer".into()],
            admins: Vec::new(),
        },
    }
}

/// Storage with workspace `vfx.show` (home namespace vfx) holding /shots/a.exr and /shared,
/// a Share of /shared to partner/viewer, and DataStore vfx/reviews.
async fn setup() -> anyhow::Result<(Storage, KubeApi)> {
    let storage = Storage::create().await?;
    let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
    let actor = Actor::system("test");
    let ws = meta
        .create_workspace(&actor, &WorkspaceSpec::new("vfx.show", WorkspaceKind::Team))
        .await?;
    let root = meta.resolve(ws.id, "/").await?;
    for dir in ["shots", "shared", "out"] {
        meta.create(
            &actor,
            ws.id,
            root.ino,
            &Name::parse(dir)?,
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await?;
    }
    let shots = meta.resolve(ws.id, "/shots").await?;
    meta.create(
        &actor,
        ws.id,
        shots.ino,
        &Name::parse("a.exr")?,
        &NewNode::new(NodeKind::File, 0o644),
    )
    .await?;
    meta.put_share(
        &actor,
        &Share {
            workspace: ws.id,
            name: "partner".into(),
            path: "/shared".into(),
            subjects: vec!["ServiceAccount:partner/viewer".into()],
            permission: Permission::Read,
            expires_at: None,
        },
    )
    .await?;
    meta.put_media_datastore(&reviews()).await?;
    let kube = KubeApi::start().await?;
    vouch(&kube, "reader", "vfx", "reader");
    vouch(&kube, "writer", "vfx", "writer");
    vouch(&kube, "viewer", "partner", "viewer");
    vouch(&kube, "stranger", "other", "render");
    Ok((storage, kube))
}

// Catches: a reader allowed to write, a stranger told that a DataStore, document, workspace
// or operation exists, paths shown to callers without a grant on them, Shares not consulted,
// unauthenticated calls answered, async results that differ from sync ones or that another
// caller can poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_shares_decide_and_strangers_learn_nothing() -> anyhow::Result<()> {
    let (storage, kube) = setup().await?;
    let metrics_addr = format!("127.0.0.1:{}", drive_testkit::pg::free_port()?);
    let api = Api::start_with(
        &storage,
        &kube,
        &["--metrics-addr".as_ref(), metrics_addr.as_ref()],
    )?;

    // Probes need no token; readiness follows the metadata store.
    let (status, ready, _) = api.call("GET", "/readyz", None, None, &[])?;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("ready")),
        "{ready}"
    );

    // Authentication.
    let (status, body, head) = api.call("GET", "/v1/datastores", None, None, &[])?;
    assert_eq!(status, 401, "{body}");
    assert!(
        head.contains("www-authenticate: Bearer") || head.contains("WWW-Authenticate: Bearer"),
        "{head}"
    );
    assert_eq!(api.get("/v1/datastores", "forged")?.0, 401);

    // A reader reads, cannot write; a writer writes.
    let (status, listed) = api.get("/v1/datastores", "reader")?;
    assert_eq!(status, 200);
    assert_eq!(listed["items"][0]["name"], "reviews");
    assert_eq!(listed["items"][0]["role"], "reader");
    let doc = json!({"mediaId": "shot-a", "target": {"workspace": "vfx.show", "path": "/shots/a.exr"},
                     "document": {"rating": 4, "notes": [{"at": 1.5}, {"at": 9.0}]}});
    let (status, refused) = api.post("/v1/datastores/vfx/reviews/documents", "reader", &doc)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("Forbidden")),
        "{refused}"
    );
    let (status, written) = api.post("/v1/datastores/vfx/reviews/documents", "writer", &doc)?;
    assert_eq!(status, 201, "{written}");
    let id = written["id"].as_str().context("an id")?.to_string();
    assert_eq!(
        written["target"],
        json!({"workspace": "vfx.show", "path": "/shots/a.exr"})
    );
    // Schema-on-write through the API: refused with the path, nothing stored.
    let bad = json!({"mediaId": "shot-a", "document": {"rating": 9}});
    let (status, refused) = api.post("/v1/datastores/vfx/reviews/documents", "writer", &bad)?;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("/rating"),
        "{refused}"
    );
    let (_, versions) = api.get(
        "/v1/datastores/vfx/reviews/documents?mediaId=%22shot-a%22&all=true",
        "reader",
    )?;
    assert_eq!(versions["items"].as_array().map(Vec::len), Some(1), "{versions}");

    // Queries: the reader (home namespace: reads the workspace) sees the path; the partner's
    // viewer, a DataStore reader without a grant on /shots, sees the hit but not the path.
    let query = json!({"filter": {"field": "rating", "op": ">=", "value": 3}});
    let (status, hits) = api.post("/v1/datastores/vfx/reviews/query", "reader", &query)?;
    assert_eq!(status, 200, "{hits}");
    assert_eq!(
        hits["hits"],
        json!([{"id": id, "mediaId": "shot-a", "target": {"workspace": "vfx.show", "path": "/shots/a.exr"}}])
    );
    let (_, partner_hits) = api.post("/v1/datastores/vfx/reviews/query", "viewer", &query)?;
    assert_eq!(
        partner_hits["hits"],
        json!([{"id": id, "mediaId": "shot-a", "target": {"workspace": "vfx.show"}}])
    );
    let (_, entities) = api.post(
        &format!("/v1/documents/{id}/timeline"),
        "reader",
        &json!({"from": 0, "to": 2}),
    )?;
    assert_eq!(
        entities["entities"].as_array().map(Vec::len),
        Some(1),
        "{entities}"
    );
    assert_eq!(entities["entities"][0]["item"], json!({"at": 1.5}));

    // A document over 1 MiB keeps its text in the object store: the write's answer and the
    // listing leave the text out and give its size, GET returns it whole, and the timeline
    // reads its items from the blocks that hold them.
    let notes: Vec<Value> = (0..6000)
        .map(|i| json!({"at": f64::from(i), "text": format!("note {i} {}", "n".repeat(300))}))
        .collect();
    let large = json!({"mediaId": "shot-big", "document": {"rating": 1, "notes": notes}});
    let (status, written) = api.post("/v1/datastores/vfx/reviews/documents", "writer", &large)?;
    assert_eq!(
        status,
        201,
        "{}",
        written.to_string().chars().take(300).collect::<String>()
    );
    let text_len = serde_json::to_vec(&large["document"])?.len() as u64;
    assert!(text_len > 1 << 20, "{text_len}");
    assert_eq!(
        (written.get("document"), written["storedSize"].as_u64()),
        (None, Some(text_len))
    );
    let big = written["id"].as_str().context("an id")?.to_string();
    let (status, got) = api.get(&format!("/v1/documents/{big}"), "reader")?;
    assert_eq!(status, 200);
    assert!(
        got["document"] == large["document"],
        "the document read back differs"
    );
    let (_, listed) = api.get(
        "/v1/datastores/vfx/reviews/documents?mediaId=%22shot-big%22",
        "reader",
    )?;
    assert_eq!(
        (
            listed["items"][0].get("document"),
            listed["items"][0]["storedSize"].as_u64()
        ),
        (None, Some(text_len))
    );
    let (status, entities) = api.post(
        &format!("/v1/documents/{big}/timeline"),
        "reader",
        &json!({"from": 4000.5, "to": 4002}),
    )?;
    assert_eq!(status, 200, "{entities}");
    let items: Vec<&Value> = entities["entities"]
        .as_array()
        .context("entities")?
        .iter()
        .map(|e| &e["item"])
        .collect();
    assert_eq!(items, [&notes[4001], &notes[4002]]);
    // Only a document write may be that large.
    let (status, _) = api.post(
        "/v1/datastores/vfx/reviews/query",
        "reader",
        &json!({"filter": {"field": "rating", "op": "in", "value": vec!["x".repeat(100); 12_000]}}),
    )?;
    assert_eq!(status, 413);

    // A stranger: the same answer whether the thing exists or not.
    let same = |a: (u16, Value), b: (u16, Value), what: &str| {
        assert_eq!(a.0, 404, "{what}: {}", a.1);
        assert_eq!(
            (a.0, &a.1["error"]["code"]),
            (b.0, &b.1["error"]["code"]),
            "{what}"
        );
    };
    assert_eq!(api.get("/v1/datastores", "stranger")?.1["items"], json!([]));
    same(
        api.get("/v1/datastores/vfx/reviews", "stranger")?,
        api.get("/v1/datastores/vfx/nothing", "stranger")?,
        "datastore",
    );
    same(
        api.post("/v1/datastores/vfx/reviews/query", "stranger", &query)?,
        api.post("/v1/datastores/vfx/nothing/query", "stranger", &query)?,
        "query",
    );
    same(
        api.get(&format!("/v1/documents/{id}"), "stranger")?,
        api.get(&format!("/v1/documents/{}", uuid::Uuid::new_v4()), "stranger")?,
        "document",
    );
    same(
        api.get("/v1/workspaces/vfx.show/entries?path=/", "stranger")?,
        api.get("/v1/workspaces/vfx.nothing/entries?path=/", "stranger")?,
        "workspace",
    );
    let (_, doc_msg) = api.get(&format!("/v1/documents/{id}"), "stranger")?;
    assert!(
        !doc_msg.to_string().contains("reviews"),
        "the refusal names the DataStore: {doc_msg}"
    );

    // Workspace operations follow the namespace and Shares.
    let (status, entries) = api.get("/v1/workspaces/vfx.show/entries?path=/", "reader")?;
    assert_eq!(status, 200, "{entries}");
    let names: Vec<&str> = entries["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["out", "shared", "shots"]);
    let (status, page) = api.get("/v1/workspaces/vfx.show/entries?path=/&limit=2", "reader")?;
    assert_eq!((status, page["next"].as_str()), (200, Some("shared")), "{page}");
    let (_, rest) = api.get(
        "/v1/workspaces/vfx.show/entries?path=/&limit=2&after=shared",
        "reader",
    )?;
    assert_eq!(rest["entries"][0]["name"], "shots");
    assert!(rest.get("next").is_none(), "{rest}");
    assert_eq!(
        api.get("/v1/workspaces/vfx.show/entries?path=/shared", "viewer")?
            .0,
        200
    );
    assert_eq!(
        api.get("/v1/workspaces/vfx.show/entries?path=/", "viewer")?.0,
        403
    );
    assert_eq!(
        api.get("/v1/workspaces/vfx.show/stat?path=/shots/a.exr", "viewer")?
            .0,
        403
    );
    let (status, stat) = api.get("/v1/workspaces/vfx.show/stat?path=/shots/a.exr", "reader")?;
    assert_eq!(
        (status, stat["kind"].as_str(), stat["name"].as_str()),
        (200, Some("file"), Some("a.exr"))
    );
    let snap = json!({"name": "before-publish", "path": "/shared"});
    assert_eq!(
        api.post("/v1/workspaces/vfx.show/snapshots", "viewer", &snap)?.0,
        403
    );
    let (status, made) = api.post("/v1/workspaces/vfx.show/snapshots", "writer", &snap)?;
    assert_eq!((status, made["path"].as_str()), (201, Some("/shared")), "{made}");
    let publish = json!({"source": "/shots", "destination": "/out/final", "snapshot": "final-v1"});
    // The viewer holds a grant in the workspace (so it may learn it exists), not one here.
    assert_eq!(
        api.post("/v1/workspaces/vfx.show/publish", "viewer", &publish)?.0,
        403
    );
    let (status, published) = api.post("/v1/workspaces/vfx.show/publish", "writer", &publish)?;
    assert_eq!(
        (status, published["renamed"].as_bool()),
        (201, Some(true)),
        "{published}"
    );
    // The document followed its file.
    let (_, moved) = api.get(&format!("/v1/documents/{id}"), "reader")?;
    assert_eq!(moved["target"]["path"], "/out/final/a.exr");

    // Asynchronous query: the same answer, to its owner only.
    let (status, accepted, head) = api.call(
        "POST",
        "/v1/datastores/vfx/reviews/query",
        Some("reader"),
        Some(&query),
        &["Prefer: respond-async"],
    )?;
    assert_eq!(status, 202, "{accepted}");
    let op = accepted["id"].as_str().context("an operation id")?.to_string();
    assert!(
        head.to_lowercase()
            .contains(&format!("location: /v1/operations/{op}")),
        "{head}"
    );
    let mut polled = Value::Null;
    assert!(
        common::eventually(Duration::from_secs(30), || {
            polled = api
                .get(&format!("/v1/operations/{op}"), "reader")
                .map(|r| r.1)
                .unwrap_or(Value::Null);
            polled["state"] != "running"
        }),
        "the operation never finished: {polled}"
    );
    assert_eq!(polled["state"], "succeeded", "{polled}");
    let (_, sync_hits) = api.post("/v1/datastores/vfx/reviews/query", "reader", &query)?;
    assert_eq!(polled["result"]["hits"][0]["id"], sync_hits["hits"][0]["id"]);
    assert_eq!(polled["result"]["hits"].as_array().map(Vec::len), Some(1));
    assert_eq!(api.get(&format!("/v1/operations/{op}"), "writer")?.0, 404);

    // The metrics counted these requests by route template, method and status.
    let text = common::scrape(&metrics_addr)?;
    let requests = |route: &str, method: &str, status: &str| {
        common::sample(
            &text,
            "studiodrive_api_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    assert!(requests("/v1/datastores", "GET", "200") >= 2.0, "{text}");
    assert!(requests("/v1/datastores", "GET", "401") >= 2.0, "{text}");
    assert!(
        requests("/v1/datastores/{namespace}/{name}/documents", "POST", "403") >= 1.0,
        "{text}"
    );
    assert!(
        requests("/v1/documents/{id}/timeline", "POST", "200") >= 2.0,
        "{text}"
    );
    assert_eq!(
        common::sample(&text, "studiodrive_api_requests_in_flight", &[]),
        Some(0.0),
        "{text}"
    );
    assert!(
        common::sample(
            &text,
            "studiodrive_api_request_seconds_count",
            &[("route", "/readyz")]
        ) >= Some(1.0),
        "{text}"
    );
    Ok(())
}

// Catches: server errors on inputs the description allows (or does not), responses whose
// status, content type or body the description does not list.
/// A random filter tree over fields `n` (numbers), `s` (strings) and `b` (booleans, null).
fn random_filter(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
    use rand::Rng as _;
    use rand::seq::IndexedRandom as _;
    if depth > 0 && rng.random_bool(0.45) {
        let parts: Vec<Value> = (0..rng.random_range(1..=3))
            .map(|_| random_filter(rng, depth - 1))
            .collect();
        return match rng.random_range(0..3) {
            0 => json!({"and": parts}),
            1 => json!({"or": parts}),
            _ => json!({"not": parts[0]}),
        };
    }
    let field = *["n", "s", "b"].choose(rng).unwrap_or(&"n");
    let value = |rng: &mut rand::rngs::StdRng| match field {
        "n" => json!(rng.random_range(0..6)),
        "s" => json!(*["a", "b", "é", "B"].choose(rng).unwrap_or(&"a")),
        _ => [json!(true), json!(false), Value::Null]
            .choose(rng)
            .cloned()
            .unwrap_or(Value::Null),
    };
    match rng.random_range(0..8) {
        0 => json!({"field": field, "op": "exists"}),
        1 => json!({"field": field, "op": "in", "value": [value(rng), value(rng)]}),
        k => {
            let op = ["=", "<", ">", "<=", ">=", "="][k as usize - 2];
            // Ordering comparisons take numbers and strings only.
            let op = if field == "b" { "=" } else { op };
            json!({"field": field, "op": op, "value": value(rng)})
        }
    }
}

// Catches: an API whose query answers differ from the filter's meaning (a leaf, a combinator
// or a type rule lost between the HTTP request and the store), checked against the filter
// evaluated in memory over every document written through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_query_answers_equal_the_model_over_random_documents_and_filters() -> anyhow::Result<()> {
    use rand::{Rng as _, SeedableRng as _};
    let (storage, kube) = setup().await?;
    let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
    meta.put_media_datastore(&DataStoreSpec {
        name: "vfx/model".into(),
        analysis_type: "model".into(),
        version: 1,
        schema: json!({"type": "object"}),
        media_id_schema: json!({"type": "integer"}),
        queryable: vec!["n".into(), "s".into(), "b".into()],
        timeline: Vec::new(),
        access: DataStoreAccess {
            readers: vec!["ServiceAccount:vfx/reader".into()],
            writers: vec!["ServiceAccount:vfx/writer".into()],
            admins: Vec::new(),
        },
    })
    .await?;
    let api = Api::start(&storage, &kube)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut written: HashMap<String, Value> = HashMap::new();
    for i in 0..60 {
        let mut doc = json!({});
        if rng.random_bool(0.8) {
            doc["n"] = json!(rng.random_range(0..6));
        }
        if rng.random_bool(0.8) {
            doc["s"] = json!(["a", "b", "é", "B"][rng.random_range(0..4)]);
        }
        if rng.random_bool(0.8) {
            doc["b"] = [json!(true), json!(false), Value::Null][rng.random_range(0..3)].clone();
        }
        let (status, answer) = api.post(
            "/v1/datastores/vfx/model/documents",
            "writer",
            &json!({"mediaId": i, "document": doc}),
        )?;
        assert_eq!(status, 201, "{answer}");
        written.insert(answer["id"].as_str().context("an id")?.to_string(), doc);
    }
    let mut partial = 0;
    for _ in 0..60 {
        let tree = random_filter(&mut rng, 3);
        let filter = drive::media::Filter::from_json(&tree)?;
        let mut want: Vec<&String> = written
            .iter()
            .filter(|(_, d)| filter.matches(d))
            .map(|(id, _)| id)
            .collect();
        want.sort();
        let (status, hits) = api.post(
            "/v1/datastores/vfx/model/query",
            "reader",
            &json!({"filter": tree, "limit": 1000}),
        )?;
        assert_eq!(status, 200, "{tree}: {hits}");
        let mut got: Vec<String> = hits["hits"]
            .as_array()
            .context("hits")?
            .iter()
            .filter_map(|h| h["id"].as_str().map(str::to_string))
            .collect();
        got.sort();
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{tree}");
        partial += usize::from(!want.is_empty() && want.len() < written.len());
    }
    // The filters told documents apart: most matched some but not all.
    assert!(
        partial >= 20,
        "only {partial} of 60 filters matched some but not all documents"
    );
    Ok(())
}

// Catches: a request in flight cut when the server is told to stop (a rolling update would
// fail a client's write), a server that keeps accepting once stopping, and one that does not
// exit when its last request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_sigterm_is_answered_before_the_server_exits() -> anyhow::Result<()> {
    let (storage, kube) = setup().await?;
    let mut api = Api::start(&storage, &kube)?;
    let body = json!({"mediaId": "drain", "document": {"rating": 3}}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut s = std::net::TcpStream::connect(&api.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST /v1/datastores/vfx/reviews/documents HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer writer\r\n\r\n{first}",
        api.addr,
        body.len()
    )?;
    s.flush()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(api.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    // Stopping: new connections are refused...
    assert!(
        common::eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            &api.addr
        )
        .is_err()),
        "the server still accepts connections after SIGTERM"
    );
    // ...while the request in flight is read to its end and answered.
    s.write_all(rest.as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
    let stored = meta
        .media_documents("vfx/reviews", &json!("drain"), drive::meta::Versions::All)
        .await?;
    assert_eq!(stored.len(), 1, "the answered write is stored");
    let status = api.child.wait()?;
    assert!(status.success(), "the server exits cleanly: {status}");
    Ok(())
}

// Catches: the store's own technical documents readable by nobody (no subjects), or by
// anyone (no check of the file), a caller shown documents or query hits of files it may not
// read, and a caller allowed to write into the built-in DataStore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_technical_documents_are_read_with_their_files() -> anyhow::Result<()> {
    let (storage, kube) = setup().await?;
    let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
    let technical = drive::media::technical::technical_datastore();
    meta.put_media_datastore(&technical).await?;
    let ws = meta.get_workspace("vfx.show").await?;
    let shared = meta.resolve(ws.id, "/shared").await?;
    meta.create(
        &Actor::system("test"),
        ws.id,
        shared.ino,
        &Name::parse("b.exr")?,
        &NewNode::new(NodeKind::File, 0o644),
    )
    .await?;
    let mut ids = HashMap::new();
    for path in ["/shots/a.exr", "/shared/b.exr"] {
        let node = meta.resolve(ws.id, path).await?.ino;
        let doc = meta
            .put_media_document(
                &technical.name,
                &json!({"workspace": "vfx.show", "node": node.0}),
                Some((ws.id, node)),
                &json!({"kind": "sequence", "frameCount": 1, "missingFrames": [],
                        "missingFrameCount": 0, "missingRangeCount": 0}),
            )
            .await?;
        ids.insert(path, doc.id.to_string());
    }
    let api = Api::start(&storage, &kube)?;
    let query = json!({"filter": {"field": "kind", "op": "=", "value": "sequence"}});
    let visible = |caller: &str| -> anyhow::Result<Vec<String>> {
        let (status, hits) = api.post("/v1/datastores/studiodrive/technical/query", caller, &query)?;
        anyhow::ensure!(status == 200, "{caller}: {status} {hits}");
        let mut paths: Vec<String> = hits["hits"]
            .as_array()
            .context("hits")?
            .iter()
            .map(|h| h["target"]["path"].as_str().unwrap_or("(no path)").to_string())
            .collect();
        paths.sort();
        Ok(paths)
    };
    // The home namespace reads the workspace; the partner only its Share; a stranger nothing.
    assert_eq!(visible("reader")?, ["/shared/b.exr", "/shots/a.exr"]);
    assert_eq!(visible("viewer")?, ["/shared/b.exr"]);
    assert_eq!(visible("stranger")?, Vec::<String>::new());
    let (status, listed) = api.get("/v1/datastores", "stranger")?;
    assert_eq!(status, 200);
    assert_eq!(listed["items"][0]["name"], "technical", "{listed}");
    assert_eq!(listed["items"][0]["role"], "reader", "{listed}");
    for (caller, path, status) in [
        ("reader", "/shots/a.exr", 200),
        ("viewer", "/shots/a.exr", 404),
        ("viewer", "/shared/b.exr", 200),
        ("stranger", "/shared/b.exr", 404),
    ] {
        let (got, doc) = api.get(&format!("/v1/documents/{}", ids[path]), caller)?;
        assert_eq!(got, status, "{caller} reading the document of {path}: {doc}");
    }
    // The same for a media id's listing.
    let node = meta.resolve(ws.id, "/shots/a.exr").await?.ino.0;
    let listing = format!(
        "/v1/datastores/studiodrive/technical/documents?mediaId=%7B%22node%22%3A{node}%2C%22workspace%22%3A%22vfx.show%22%7D"
    );
    assert_eq!(
        api.get(&listing, "reader")?.1["items"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        api.get(&listing, "viewer")?.1["items"].as_array().map(Vec::len),
        Some(0)
    );
    // Only the mounts write there.
    let write = json!({"mediaId": {"workspace": "vfx.show", "node": node}, "document": {"kind": "sequence"}});
    assert_eq!(
        api.post("/v1/datastores/studiodrive/technical/documents", "writer", &write)?
            .0,
        403
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() -> anyhow::Result<()> {
    let schemathesis =
        common::pypi_venv("schemathesis-venv", "schemathesis==4.32.5")?.join("bin/schemathesis");
    let (storage, kube) = setup().await?;
    let api = Api::start(&storage, &kube)?;
    let dir = tempfile::tempdir()?;
    // Two passes: path parameters generated at random (almost all answer 404), then fixed to
    // the DataStore and workspace that exist, so requests reach the handlers' logic.
    let fixed = dir.path().join("schemathesis.toml");
    std::fs::write(
        &fixed,
        "[parameters]\n\"path.namespace\" = \"vfx\"\n\"path.name\" = \"reviews\"\n\"path.workspace\" = \"vfx.show\"\n",
    )?;
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "")?;
    for config in [&empty, &fixed] {
        let out = std::process::Command::new(&schemathesis)
            // Its example cache goes to the working directory: keep it out of the tree.
            .current_dir(dir.path())
            .arg("--config-file")
            .arg(config)
            .arg("--no-color")
            .arg("run")
            .arg(format!("http://{}/openapi.json", api.addr))
            .args(["--header", "Authorization: Bearer writer"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            ])
            .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "7"])
            .args(["--request-timeout", "20", "--generation-database", "none"])
            .arg("--report-dir")
            .arg(dir.path().join("report"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "schemathesis ({}) failed:\n{text}",
            config.display()
        );
        // It really ran every operation (a description it could not read runs nothing).
        assert!(text.contains("12 selected / 12 total"), "{text}");
        assert!(text.contains("Fuzzing") && text.contains("12 passed"), "{text}");
    }
    Ok(())
}

/// The certificate the server at `addr` presents, after a TLS handshake trusting only `ca`.
async fn served_certificate(addr: &str, ca: &str) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(ca.as_bytes())?)?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let (_, session) = tls.get_ref();
    Ok(session
        .peer_certificates()
        .and_then(|c| c.first())
        .context("a peer certificate")?
        .to_vec())
}

// Catches: tokens sent in the clear off loopback by default, a certificate not served or not
// the configured one, a rotated certificate needing a restart, a broken replacement taking
// the server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_configured_certificate_and_follows_its_rotation() -> anyhow::Result<()> {
    let (storage, kube) = setup().await?;
    // Plain HTTP off loopback is refused, saying why.
    let refused = common::studiodrive()
        .args(["api", "--listen", "0.0.0.0:0", "--kubeconfig"])
        .arg(&kube.kubeconfig)
        .args(storage.args())
        .output()?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--tls-cert-file"),
        "{refused:?}"
    );

    let dir = tempfile::tempdir()?;
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(&cert_file, first.cert.pem())?;
    std::fs::write(&key_file, first.signing_key.serialize_pem())?;
    let api = Api::start_with(
        &storage,
        &kube,
        &[
            "--tls-cert-file".as_ref(),
            cert_file.as_os_str(),
            "--tls-key-file".as_ref(),
            key_file.as_os_str(),
        ],
    )?;
    assert_eq!(
        served_certificate(&api.addr, &first.cert.pem()).await?,
        first.cert.der().to_vec()
    );
    // Plain HTTP to the HTTPS port gets no API answer.
    assert!(api.call("GET", "/healthz", None, None, &[]).is_err());

    // A broken replacement keeps the old pair serving.
    std::fs::write(&cert_file, "not a certificate")?;
    assert_eq!(
        served_certificate(&api.addr, &first.cert.pem()).await?,
        first.cert.der().to_vec()
    );
    // A new pair is served without a restart (written key first, as a rotation replaces both).
    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(&key_file, second.signing_key.serialize_pem())?;
    std::fs::write(&cert_file, second.cert.pem())?;
    assert_eq!(
        served_certificate(&api.addr, &second.cert.pem()).await?,
        second.cert.der().to_vec()
    );
    Ok(())
}
