//! Paths of the nodes events name, as of each event where the relay saw the changes before it.
//!
//! Events carry node ids and (parent, name) pairs, not paths. The resolver keeps where each
//! node it met is (`node -> (parent, name)`), applies every create, link, rename and exchange
//! as it passes, and asks the store only for nodes it has not met: their newest entry, live or
//! last deleted (so the path of a node deleted since is still its last one). A node the store
//! has purged, or one whose parents cannot be walked to the root, has no path.

use std::collections::HashMap;

use crate::error::MetaError;
use crate::meta::PgMetaStore;
use crate::model::{Event, Name, NodeId, WorkspaceId};

/// Parents walked at most from a node to the root (deeper trees are refused by the namespace
/// long before; this bounds a cycle in stale knowledge).
const MAX_DEPTH: usize = 4096;

/// Nodes remembered at most; beyond this the map starts again (it refills from the store).
const MAX_NODES: usize = 1 << 20;

/// Resolves event paths for one workspace.
#[derive(Debug)]
pub struct PathResolver {
    ws: WorkspaceId,
    root: Option<NodeId>,
    parents: HashMap<NodeId, (NodeId, Name)>,
}

/// An event's path and, for a rename or exchange, the path it came from.
pub type EventPaths = (Option<String>, Option<String>);

impl PathResolver {
    pub fn new(ws: WorkspaceId) -> PathResolver {
        PathResolver {
            ws,
            root: None,
            parents: HashMap::new(),
        }
    }

    /// The paths of `events`, in order, applying each event's move of a node as it goes.
    pub async fn resolve(
        &mut self,
        store: &PgMetaStore,
        events: &[Event],
    ) -> Result<Vec<EventPaths>, MetaError> {
        if self.root.is_none() {
            self.root = Some(store.get_workspace_by_id(self.ws).await?.root);
        }
        if self.parents.len() > MAX_NODES {
            self.parents.clear();
        }
        // Everything the batch needs that is not known yet, in as few queries as the tree is deep.
        let mut wanted: Vec<NodeId> = events
            .iter()
            .flat_map(|e| [e.ino, e.parent, e.from.as_ref().map(|f| f.0)])
            .flatten()
            .collect();
        for _ in 0..MAX_DEPTH {
            wanted.retain(|n| Some(*n) != self.root && !self.parents.contains_key(n));
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.is_empty() {
                break;
            }
            let found = store.last_entries(&wanted).await?;
            let mut next = Vec::new();
            for (node, parent, name) in found {
                next.push(parent);
                self.parents.insert(node, (parent, name));
            }
            wanted = next;
        }
        Ok(events.iter().map(|e| self.apply(e)).collect())
    }

    fn apply(&mut self, e: &Event) -> EventPaths {
        let from = e
            .from
            .as_ref()
            .and_then(|(parent, name)| self.path_of(*parent).map(|p| join(&p, name)));
        let path = match (&e.parent, &e.name) {
            (Some(parent), Some(name)) => self.path_of(*parent).map(|p| join(&p, name)),
            _ => e.ino.and_then(|ino| self.path_of(ino)),
        };
        match e.op.as_str() {
            "create" | "link" | "rename" | "copy" | "restore" | "published" => {
                if let (Some(ino), Some(parent), Some(name)) = (e.ino, e.parent, e.name.clone()) {
                    self.parents.insert(ino, (parent, name));
                }
            }
            // Two nodes swapped names (the event names one of them), or a folder went back to
            // an earlier state: forget what was known, the store answers again.
            "exchange" | "reverted" => self.parents.clear(),
            _ => {}
        }
        (path, from)
    }

    /// The path of `node` as far as the resolver knows.
    fn path_of(&self, node: NodeId) -> Option<String> {
        let mut names: Vec<&Name> = Vec::new();
        let mut at = node;
        for _ in 0..MAX_DEPTH {
            if Some(at) == self.root {
                let mut path = String::new();
                for name in names.iter().rev() {
                    path.push('/');
                    path.push_str(&name.to_string_lossy());
                }
                return Some(if path.is_empty() { "/".into() } else { path });
            }
            let (parent, name) = self.parents.get(&at)?;
            names.push(name);
            at = *parent;
        }
        None
    }
}

fn join(parent: &str, name: &Name) -> String {
    if parent == "/" {
        format!("/{}", name.to_string_lossy())
    } else {
        format!("{parent}/{}", name.to_string_lossy())
    }
}
