//! The Studio Drive operator: custom resources (`crd`), pure planners (`plan`), the port to
//! the metadata store (`store`), the reconcilers that apply plans through kube and the store
//! (`reconcile`), their wiring (`controllers`), metrics, the health server and the GC Job
//! builder, and `keys` (key-encryption keys of encrypted Workspaces, read from Secrets).
//!
//! Layering (STYLE.md 2.4): `crd` and `plan` do no I/O; `store` is a port with a PostgreSQL
//! adapter and an in-memory model; `keys` is a port with a Kubernetes Secret adapter and an
//! in-memory one; only `reconcile`, `controllers`, `http` and those adapters do I/O.

pub mod controllers;
pub mod crd;
pub mod gc_job;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod plan;
pub mod preload_job;
pub mod reconcile;
pub mod store;
