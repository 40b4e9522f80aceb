//! `mhl create|verify FOLDER`: ASC MHL v2 hash histories of a folder (on a Studio Drive mount
//! the hashes come from the mount's kept `user.studiodrive.*` attributes).

use std::path::PathBuf;

use anyhow::Context as _;
use drive::mhl::{self, HashAlgo};

/// `mhl create|verify`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MhlCmd {
    /// Checks every file the folder's history records, then records a new generation of all
    /// its files (`ascmhl/` in the folder). Writes nothing when a file does not match.
    Create {
        folder: PathBuf,
        /// The hash to record: xxh64 (the ASC MHL default), md5, sha1 or sha256.
        #[arg(long = "hash", default_value = "xxh64", value_parser = parse_algo)]
        algo: HashAlgo,
    },
    /// Checks every file the folder's history records; fails naming each mismatch and each
    /// missing file.
    Verify { folder: PathBuf },
}

fn parse_algo(name: &str) -> Result<HashAlgo, String> {
    HashAlgo::parse(name).map_err(|e| e.to_string())
}

pub fn run(cmd: MhlCmd) -> anyhow::Result<()> {
    let (folder, report) = match cmd {
        MhlCmd::Create { folder, algo } => {
            let report = mhl::create(&folder, algo, env!("CARGO_PKG_VERSION"))
                .with_context(|| format!("mhl create {}", folder.display()))?;
            (folder, report)
        }
        MhlCmd::Verify { folder } => {
            let report = mhl::verify(&folder).with_context(|| format!("mhl verify {}", folder.display()))?;
            (folder, report)
        }
    };
    println!(
        "{}: {} verified, {} new{}",
        folder.display(),
        report.verified,
        report.new,
        report
            .written
            .map(|p| format!(", wrote {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
