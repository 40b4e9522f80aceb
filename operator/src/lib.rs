//! The Studio Drive operator: custom resources (`crd`), pure planners (`plan`), the port to
//! the metadata store (`store`), the reconcilers that apply plans through kube and the store
//! (`reconcile`), their wiring (`controllers`), metrics, the health server and the GC Job
//! builder.
//!
//! Layering (STYLE.md 2.4): `crd` and `plan` do no I/O; `store` is a port with a PostgreSQL
//! adapter and an in-memory model; only `reconcile`, `controllers` and `http` do I/O.

pub mod controllers;
pub mod crd;
pub mod gc_job;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod store;
