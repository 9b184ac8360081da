//! `imgraph graph` and `imgraph report`: pictures of the stage graph and the page that
//! shows it with the plan, the images and the last runs.

use std::path::PathBuf;

use clap::ValueEnum;

use super::{runtime, Cli};
use crate::error::{Error, Result};
use crate::exit;
use crate::plan::PlanOptions;
use crate::workspace::Workspace;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
    /// Colour each stage by the plan: run, deferred, up to date, or failed (its last
    /// run failed). Plans like `imgraph plan`: hashes inputs and resolves sources.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: colour as a roll-up run would run.
    #[arg(long, requires = "plan")]
    pub rollup: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Where to write the page.
    #[arg(long, short = 'o', value_name = "FILE", default_value = "report.html")]
    pub out: PathBuf,
    /// How many of the last runs to show.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Show the plan of a roll-up run.
    #[arg(long)]
    pub rollup: bool,
}

pub(super) fn graph(cli: &Cli, args: &GraphArgs) -> Result<i32> {
    let (graph, paint) = if args.plan {
        let ws = Workspace::open_read_only(&cli.dir)?;
        let options = PlanOptions {
            rollup: args.rollup,
            ..PlanOptions::default()
        };
        let plan = runtime()?.block_on(async {
            let providers = ws.providers().await?;
            ws.plan(&providers, &options).await
        })?;
        let paint = crate::report::graph::paint(&plan, &ws.state.snapshot()?);
        (ws.graph, paint)
    } else {
        let project = crate::config::load(&cli.dir)?;
        let graph = crate::graph::StageGraph::build(&project)?;
        (graph, crate::graph::Paint::default())
    };
    match args.format {
        GraphFormat::Dot => crate::report::out(&graph.to_dot_painted(&paint)),
        GraphFormat::Mermaid => crate::report::out(&graph.to_mermaid_painted(&paint)),
    }
    Ok(exit::OK)
}

pub(super) fn report(cli: &Cli, args: &ReportArgs) -> Result<i32> {
    let ws = Workspace::open_read_only(&cli.dir)?;
    let options = PlanOptions {
        rollup: args.rollup,
        ..PlanOptions::default()
    };
    let overview = runtime()?.block_on(ws.overview(&options, args.runs))?;
    let page = crate::report::html::render(&ws.graph, &overview);
    std::fs::write(&args.out, &page).map_err(|source| Error::Io {
        what: "failed to write the report".into(),
        path: args.out.clone(),
        source,
    })?;
    let plan = match &overview.plan {
        Ok(p) => crate::report::plan::summary_line(&p.summary),
        Err(e) => format!("no plan ({e})"),
    };
    crate::report::outln(&format!(
        "wrote {} ({} bytes): {plan}",
        args.out.display(),
        page.len()
    ));
    Ok(exit::OK)
}
