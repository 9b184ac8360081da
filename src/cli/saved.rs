//! Saved plans on the command line: `imgraph plan --out FILE` writes one,
//! `imgraph apply FILE` runs it, `imgraph show FILE [--json]` prints it.

use std::path::{Path, PathBuf};

use super::Cli;
use crate::error::{Error, Result};
use crate::exit;
use crate::plan::saved::SavedPlan;
use crate::report::Palette;

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// A plan written by `imgraph plan --out FILE`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the plan document, as `imgraph plan --json` printed it.
    #[arg(long)]
    pub json: bool,
}

/// Reads and checks a saved plan file.
pub(super) fn read(path: &Path) -> Result<SavedPlan> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "failed to read saved plan".into(),
        path: path.to_path_buf(),
        source,
    })?;
    SavedPlan::from_json(&text).map_err(|source| Error::SavedPlan {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a saved plan file.
pub(super) fn write(path: &Path, saved: &SavedPlan) -> Result<()> {
    std::fs::write(path, saved.to_json()).map_err(|source| Error::Io {
        what: "failed to write the plan".into(),
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn show(_cli: &Cli, args: &ShowArgs) -> Result<i32> {
    let saved = read(&args.file)?;
    if args.json {
        crate::report::outln(&crate::report::plan::render_json(&saved.plan));
    } else {
        crate::report::out(&crate::report::saved::show_text(
            &saved,
            &args.file.display().to_string(),
            Palette::for_stdout(),
        ));
    }
    Ok(exit::OK)
}
