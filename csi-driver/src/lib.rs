//! Studio Drive's Kubernetes data path and local mount: the CSI plugin (`serve`), the FUSE
//! adapter over `drive::fs`, the `mount` command and local admin subcommands.

pub mod api;
pub mod cli;
pub mod csi;
pub mod fuse_adapter;
pub mod metrics;
pub mod mount_table;
