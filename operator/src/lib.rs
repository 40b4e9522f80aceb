//! The Studio Drive operator: custom resources (`crd`), pure planners (`plan`), the port to
//! the metadata store (`store`), the reconcilers that apply plans through kube and the store
//! (`reconcile`), their wiring (`controllers`), metrics and the GC Job builder.
//!
//! Layering (STYLE.md 2.4): `crd` and `plan` do no I/O; `store` is a port with a PostgreSQL
//! adapter and an in-memory model; only `reconcile` and `controllers` talk to Kubernetes.

pub mod crd;
pub mod plan;
pub mod store;
