//! Studio Drive storage engine.
//!
//! The namespace (workspaces, folders, files, snapshots, events) lives in a transactional SQL
//! store ([`meta`]), file content lives as blocks in an object store ([`data`]) with a
//! node-local cache ([`cache`]). Nothing in this crate knows about Kubernetes, gRPC or FUSE:
//! the operator and the CSI driver are thin faces over it.

pub mod cache;
pub mod data;
pub mod error;
pub mod fs;
pub mod gc;
pub mod lifecycle;
pub mod media;
pub mod meta;
pub mod mhl;
pub mod model;
pub mod mount;
pub mod ports;
pub mod preload;
pub mod private_files;
pub mod relay;
pub mod rules;
pub mod sync;
pub mod tiering;

pub use error::{ErrorKind, MetaError};
pub use meta::{MemMetaStore, MetaConfig, MetaStats, PgMetaStore, TlsMode};
pub use ports::MetaStore;
