//! `imgraph why NODE`: the whole chain of causes of one node's decision.

use super::{runtime, Cli};
use crate::error::Result;
use crate::exit;
use crate::plan::PlanOptions;
use crate::report::Palette;
use crate::workspace::Workspace;

#[derive(Debug, Clone, clap::Args)]
pub struct WhyArgs {
    /// A stage node as `imgraph plan` lists it (`build:web`, `deliver:web@staging`), or
    /// an image (its build).
    #[arg(value_name = "NODE")]
    pub node: String,
    /// Explain the plan of a roll-up run.
    #[arg(long)]
    pub rollup: bool,
    /// Print one JSON document (format_version 1).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn why(cli: &Cli, args: &WhyArgs) -> Result<i32> {
    let ws = Workspace::open_read_only(&cli.dir)?;
    let options = PlanOptions {
        rollup: args.rollup,
        ..PlanOptions::default()
    };
    let explanation = runtime()?.block_on(async {
        let providers = ws.providers().await?;
        ws.why(&providers, &options, &args.node).await
    })?;
    if args.json {
        crate::report::outln(&crate::report::why::render_json(&explanation));
    } else {
        crate::report::out(&crate::report::why::render_text(
            &explanation,
            Palette::for_stdout(),
        ));
    }
    Ok(exit::OK)
}
