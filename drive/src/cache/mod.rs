//! Node-local block cache.
