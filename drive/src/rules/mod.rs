//! Pure rules of the namespace, shared by every metadata store: values in, decisions out, no
//! I/O and no clock. The stores gather the facts a rule needs, ask it, and carry out what it
//! decides, so the PostgreSQL store and the in-memory one cannot drift apart on a rule.
//!
//! - [`blocks`]: which blocks a byte range covers, what a shrink keeps;
//! - [`rename`]: the POSIX `rename(2)` / `renameat2` decision table;
//! - [`write_once`]: what a project (write-once) workspace refuses.

pub mod blocks;
pub mod rename;
pub mod write_once;

#[cfg(test)]
mod purity {
    /// Rules are the pure core: no I/O, async or store imports.
    #[test]
    fn rules_import_no_io() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("blocks.rs"),
            include_str!("rename.rs"),
            include_str!("write_once.rs"),
        ];
        let forbidden = [
            "tokio",
            "deadpool",
            "postgres",
            "crate::meta",
            "crate::data",
            "crate::cache",
            "std::fs",
            "std::net",
            "SystemTime",
        ];
        for source in sources {
            for line in source.lines().filter(|l| l.trim_start().starts_with("use ")) {
                for f in forbidden {
                    assert!(!line.contains(f), "rules must stay pure, found `{line}`");
                }
            }
        }
    }
}
