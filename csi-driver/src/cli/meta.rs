//! `meta datastore put|list|delete`, `meta put|get|query|timeline`: media DataStores and
//! documents from the command line (docs/media.md). Documents and filters are JSON; output is
//! JSON, one object per line, so it pipes into `jq`.

use std::path::PathBuf;

use anyhow::Context as _;
use drive::media::{DataStoreSpec, Filter, TimelineQuery};
use drive::meta::Versions;
use serde_json::{Value, json};

use crate::cli::StorageArgs;

#[derive(Debug, clap::Subcommand)]
pub enum MetaCmd {
    /// DataStores: their schemas, media id schema, queryable fields and timelines.
    #[command(subcommand)]
    Datastore(DatastoreCmd),
    /// Writes a document (schema-checked; a new id each time) and prints its id.
    Put {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long)]
        datastore: String,
        /// The media id, as JSON (`'{"asset":"sh010"}'`, `'"reel1"'`).
        #[arg(long)]
        media_id: String,
        /// Attach it to this file or folder of the workspace (it follows renames).
        #[arg(long)]
        path: Option<String>,
        /// The document (JSON), `-` for standard input.
        file: PathBuf,
    },
    /// Prints a document by id, or the documents of a media id (the latest, or --all).
    Get {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long, conflicts_with_all = ["datastore", "media_id"])]
        id: Option<uuid::Uuid>,
        #[arg(long, requires = "media_id")]
        datastore: Option<String>,
        #[arg(long, requires = "datastore")]
        media_id: Option<String>,
        /// Every version, oldest first.
        #[arg(long)]
        all: bool,
    },
    /// Documents of a DataStore matching a filter over its queryable fields.
    Query {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long)]
        datastore: String,
        /// The filter (JSON): `{"field":"fps","op":">=","value":24}`, combined with and/or/not.
        #[arg(long)]
        filter: String,
        /// Every version, not only the latest of each media id.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Timeline entities of a document overlapping a time range and/or an area.
    Timeline {
        #[command(flatten)]
        storage: StorageArgs,
        id: uuid::Uuid,
        /// Time range start and end (both included).
        #[arg(long, requires = "to")]
        from: Option<f64>,
        #[arg(long, requires = "from")]
        to: Option<f64>,
        /// Area `x0,y0,x1,y1`.
        #[arg(long, value_parser = parse_area)]
        area: Option<[f64; 4]>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DatastoreCmd {
    /// Creates or changes a DataStore from its JSON spec (docs/media.md).
    Put {
        #[command(flatten)]
        storage: StorageArgs,
        /// The spec (JSON), `-` for standard input.
        file: PathBuf,
    },
    List {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Deletes a DataStore and every document in it.
    Delete {
        #[command(flatten)]
        storage: StorageArgs,
        name: String,
    },
}

fn parse_area(text: &str) -> Result<[f64; 4], String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("area {text:?}: {e}"))?;
    values
        .try_into()
        .map_err(|_| format!("area {text:?}: four numbers x0,y0,x1,y1"))
}

fn read_json(file: &PathBuf) -> anyhow::Result<Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

fn parse_json(text: &str, what: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{what} is not JSON: {text}"))
}

pub async fn run(cmd: MetaCmd) -> anyhow::Result<()> {
    match cmd {
        MetaCmd::Datastore(DatastoreCmd::Put { storage, file }) => {
            let spec: DataStoreSpec =
                serde_json::from_value(read_json(&file)?).context("the DataStore spec")?;
            let meta = storage.meta().await?;
            // Through the document store: a schema change reads stored documents' texts.
            let record = storage.document_store(&meta).await?.put_datastore(&spec).await?;
            println!(
                "{}",
                json!({"datastore": record.spec.name, "version": record.spec.version})
            );
        }
        MetaCmd::Datastore(DatastoreCmd::List { storage }) => {
            let meta = storage.meta().await?;
            for d in meta.media_datastores().await? {
                println!("{}", serde_json::to_string(&d.spec)?);
            }
        }
        MetaCmd::Datastore(DatastoreCmd::Delete { storage, name }) => {
            let meta = storage.meta().await?;
            if !meta.delete_media_datastore(&name).await? {
                anyhow::bail!("no DataStore {name}");
            }
            println!("{}", json!({"deleted": name}));
        }
        MetaCmd::Put {
            storage,
            datastore,
            media_id,
            path,
            file,
        } => {
            let media_id = parse_json(&media_id, "--media-id")?;
            let body = read_json(&file)?;
            let meta = storage.meta().await?;
            let target = match &path {
                Some(p) => {
                    let ws = meta.get_workspace(&storage.workspace).await?;
                    Some((ws.id, meta.resolve(ws.id, p).await?.ino))
                }
                None => None,
            };
            let doc = storage
                .document_store(&meta)
                .await?
                .put(&datastore, &media_id, target, &body)
                .await?;
            println!("{}", json!({"id": doc.id, "mediaId": doc.media_id, "path": path}));
        }
        MetaCmd::Get {
            storage,
            id,
            datastore,
            media_id,
            all,
        } => {
            let meta = storage.meta().await?;
            let documents = storage.document_store(&meta).await?;
            let docs = match (id, datastore, media_id) {
                (Some(id), _, _) => documents.get(id).await?.into_iter().collect(),
                (None, Some(ds), Some(media_id)) => {
                    let versions = if all { Versions::All } else { Versions::Latest };
                    documents
                        .documents(&ds, &parse_json(&media_id, "--media-id")?, versions)
                        .await?
                }
                _ => anyhow::bail!("give --id, or --datastore with --media-id"),
            };
            if docs.is_empty() {
                anyhow::bail!("no such document");
            }
            for d in docs {
                println!(
                    "{}",
                    json!({"id": d.id, "datastore": d.datastore, "mediaId": d.media_id,
                           "createdAt": d.created_at.0, "document": d.body})
                );
            }
        }
        MetaCmd::Query {
            storage,
            datastore,
            filter,
            all,
            limit,
        } => {
            let filter = Filter::from_json(&parse_json(&filter, "--filter")?)?;
            let meta = storage.meta().await?;
            let versions = if all { Versions::All } else { Versions::Latest };
            let hits = meta.query_media(&datastore, &filter, versions, limit).await?;
            // Where the hits' nodes are now, and their workspaces' names.
            let paths = meta.live_paths_of(hits.iter().filter_map(|h| h.target)).await?;
            let mut names = std::collections::HashMap::new();
            for (ws, _) in paths.keys() {
                if !names.contains_key(ws) {
                    names.insert(*ws, meta.get_workspace_by_id(*ws).await.map(|w| w.name).ok());
                }
            }
            for h in hits {
                let (workspace, path) = h
                    .target
                    .and_then(|t| {
                        paths
                            .get(&t)
                            .map(|p| (names.get(&t.0).cloned().flatten(), p.clone()))
                    })
                    .map_or((None, None), |(w, p)| (w, Some(p)));
                println!(
                    "{}",
                    json!({"id": h.id, "mediaId": h.media_id, "workspace": workspace, "path": path})
                );
            }
        }
        MetaCmd::Timeline {
            storage,
            id,
            from,
            to,
            area,
            limit,
        } => {
            let q = TimelineQuery {
                time: from.zip(to),
                area,
            };
            let meta = storage.meta().await?;
            for h in storage
                .document_store(&meta)
                .await?
                .timeline(id, &q, limit)
                .await?
            {
                println!(
                    "{}",
                    json!({"collection": h.collection, "index": h.index, "start": h.start,
                           "end": h.end, "region": h.region, "item": h.item})
                );
            }
        }
    }
    Ok(())
}
