//! Command-line surface: clap types and one function per command. No logic lives here:
//! each command calls the library and hands values to a reporter.

mod output;
mod pictures;
mod revoke;
mod saved;
mod signals;
mod tools;
mod why;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use output::ColorWhen;
pub use tools::Shell;

use crate::error::Result;
use crate::exit;
use crate::plan::PlanOptions;
use crate::report::{self, Palette};
use crate::workspace::Workspace;

#[derive(Debug, Parser)]
#[command(
    name = "imgraph",
    version,
    about = "Decides when server images must be rebuilt, and runs their pipeline"
)]
pub struct Cli {
    /// Project folder (holding imgraph.kdl) or the config file itself.
    #[arg(
        short = 'C',
        long = "dir",
        global = true,
        default_value = ".",
        env = "IMGRAPH_DIR"
    )]
    pub dir: PathBuf,
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr, and no progress lines from apply.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Colour: auto (a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check imgraph.kdl and every path it names; changes nothing.
    Validate,
    /// Show what must run and why, without running anything.
    Plan(PlanArgs),
    /// Run what the plan says: build, test on fresh instances, publish, deliver.
    Apply(ApplyArgs),
    /// Print a plan saved with `imgraph plan --out FILE`.
    Show(saved::ShowArgs),
    /// Explain one node's decision: every changed input with old → new digests, the
    /// config lines that changed, the upstream node it cascades from and that node's own
    /// causes, down to the root causes.
    Why(why::WhyArgs),
    /// Print the stage graph (`--plan`: coloured by what the plan would do).
    Graph(pictures::GraphArgs),
    /// Write one self-contained HTML page: the stage graph, the pending plan, every
    /// image's versions and the last runs.
    Report(pictures::ReportArgs),
    /// List built images: versions, ids, status, build time, environments.
    Images {
        /// Only this image.
        image: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List past runs and their node outcomes.
    History {
        /// How many runs to show.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// List the packages inside an image version (default: its newest Ready version).
    Packages {
        /// IMAGE or IMAGE@VERSION.
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare two versions of an image: packages added, removed, upgraded, and how many
    /// files changed.
    Diff {
        image: String,
        /// The older version.
        from: String,
        /// The newer version.
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the SBOM of an image version (default: its newest Ready version) as a
    /// CycloneDX 1.5 JSON document.
    Sbom {
        /// IMAGE or IMAGE@VERSION.
        target: String,
        /// Write the document to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Revoke a version: it and every version built from it become `Revoked` (never an
    /// origin, never delivered again); the next plan rebuilds and redelivers what used
    /// them. `--undo` restores them.
    Revoke(revoke::RevokeArgs),
    /// Destroy temporary instances and folders that killed runs left behind, and remove
    /// versions beyond their image's `retain` (never one an environment holds, the newest
    /// Ready or current version, or the origin of another image's current version).
    Gc {
        /// List each version of the images with a `retain` and why it stays or would go;
        /// remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document (format_version 1).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        lock: LockWait,
    },
    /// Work on the state file itself.
    #[command(subcommand)]
    State(StateCommand),
    /// See or break the state lock that keeps two applies apart.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Write a small working project into the folder (-C, created if missing).
    Init {
        /// An AWS project (an Amazon Linux source and an EC2 build) instead of a local one.
        #[arg(long)]
        aws: bool,
    },
    /// Print a shell completion script: `imgraph completions bash > /etc/bash_completion.d/imgraph`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff); with --out-dir, write one page per command there.
    Man {
        /// Write imgraph.1, imgraph-plan.1, … into this folder instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the state lock: command, pid, host, age, and whether it still runs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove the state lock. Refused while its holder still runs on this host (or runs
    /// on another host, where that cannot be checked) unless --force.
    Break {
        /// Break it even though the holder may still be running.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct LockWait {
    /// How long to wait for the state lock when another command holds it (e.g. `10m`);
    /// 0, the default, fails at once with exit code 4.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s or 10m: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Rebuild the image registry from cloud tags (imgraph:image, imgraph:version,
    /// imgraph:key, Release_Status), e.g. after the state file was lost.
    Recover,
    /// Upload the local state file's history to the shared state of `state { s3 … }`,
    /// which must be empty; the local file becomes its mirror.
    Push,
    /// Make or bring up to date the local mirror of the shared state (`state { s3 … }`).
    Pull,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// Apply exactly this plan, saved by `imgraph plan --out FILE`; refused (exit 1) when
    /// the state, a source or an input changed since.
    #[arg(value_name = "PLAN", conflicts_with_all = ["rollup", "targets", "force"])]
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub selection: Selection,
    /// How many nodes may run at once (default: the number of CPUs).
    #[arg(long, short = 'j')]
    pub parallelism: Option<usize>,
    /// Stop everything at the first failure (default: independent branches go on).
    #[arg(long)]
    pub fail_fast: bool,
    /// Print NDJSON events (format version 1) instead of the human view.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub lock: LockWait,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Run a roll-up: apply pending rollup changes (package lists, probes).
    #[arg(long)]
    pub rollup: bool,
    /// Only this image (its build, tests and publish) or node id, and what it needs. Repeatable.
    #[arg(long = "target", value_name = "IMAGE")]
    pub targets: Vec<String>,
    /// Rebuild this image even if nothing changed. Repeatable.
    #[arg(long = "force", value_name = "IMAGE")]
    pub force: Vec<String>,
}

impl Selection {
    pub fn options(&self) -> PlanOptions {
        PlanOptions {
            rollup: self.rollup,
            targets: self.targets.clone(),
            force: self.force.clone(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Print one JSON document (format_version 1; schema in schema/plan.schema.json);
    /// the same as --format json.
    #[arg(long)]
    pub json: bool,
    /// text (the default), json, or markdown (for a CI job summary or a bot's comment).
    #[arg(long, value_enum, default_value_t = PlanFormat::Text, conflicts_with = "json")]
    pub format: PlanFormat,
    /// Exit 0 when nothing runs, 2 when something would run, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Also save the plan to FILE, for `imgraph apply FILE` and `imgraph show FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

/// Entry point of the binary: parse, run, map the outcome to an exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return exit::code(exit::Ended::BadArguments {
                help: !e.use_stderr(),
            });
        }
    };
    output::apply_color(cli.color);
    output::init_tracing(cli.verbose, cli.quiet);
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            output::report_error(&err);
            exit::code(exit::Ended::Failed(&err))
        }
    }
}

pub fn run(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Validate => validate(cli),
        Command::Plan(args) => plan(cli, args),
        Command::Apply(args) => apply(cli, args),
        Command::Show(args) => saved::show(cli, args),
        Command::Why(args) => why::why(cli, args),
        Command::Graph(args) => pictures::graph(cli, args),
        Command::Report(args) => pictures::report(cli, args),
        Command::Images { image, json } => images(cli, image.as_deref(), *json),
        Command::History { limit, json } => history(cli, *limit, *json),
        Command::Packages { target, json } => packages(cli, target, *json),
        Command::Diff {
            image,
            from,
            to,
            json,
        } => diff(cli, image, from, to, *json),
        Command::Sbom { target, output } => sbom(cli, target, output.as_deref()),
        Command::Gc {
            dry_run,
            json,
            lock,
        } => gc(cli, *dry_run, *json, lock),
        Command::Revoke(args) => revoke::revoke(cli, args),
        Command::State(StateCommand::Recover) => state_recover(cli),
        Command::State(StateCommand::Push) => state_push(cli),
        Command::State(StateCommand::Pull) => state_pull(cli),
        Command::Lock(LockCommand::Status { json }) => lock_status(cli, *json),
        Command::Lock(LockCommand::Break { force }) => lock_break(cli, *force),
        Command::Init { aws } => tools::init(cli, *aws),
        Command::Completions { shell } => tools::completions(*shell),
        Command::Man { out_dir } => tools::man(out_dir.as_deref()),
    }
}

fn validate(cli: &Cli) -> Result<i32> {
    let project = crate::config::load(&cli.dir)?;
    let graph = crate::graph::StageGraph::build(&project)?;
    // Origin archives are read through: a truncated or damaged one fails here.
    crate::workspace::check_origins(&project, None, &Default::default())?;
    crate::report::outln(&report::validate_line(
        &crate::config::shown_config_file(&cli.dir),
        &[
            (project.images.len(), "image", "images"),
            (project.sources.len(), "source", "sources"),
            (project.environments.len(), "environment", "environments"),
            (graph.graph.node_count(), "stage", "stages"),
        ],
    ));
    Ok(exit::OK)
}

fn plan(cli: &Cli, args: &PlanArgs) -> Result<i32> {
    // A saved plan names the state file it was made against: that file must exist.
    let ws = match args.out {
        Some(_) => Workspace::open(&cli.dir)?,
        None => Workspace::open_read_only(&cli.dir)?,
    };
    let rt = runtime()?;
    let plan = rt.block_on(async {
        let providers = ws.providers().await?;
        let options = args.selection.options();
        match &args.out {
            Some(path) => {
                let saved = ws.plan_to_save(&providers, &options).await?;
                saved::write(path, &saved)?;
                Ok(saved.to_plan())
            }
            None => ws.plan(&providers, &options).await,
        }
    })?;
    match (args.json, args.format) {
        (true, _) | (_, PlanFormat::Json) => {
            crate::report::outln(&report::plan::render_json(&plan))
        }
        (_, PlanFormat::Markdown) => crate::report::out(&report::markdown::render(&plan)),
        (_, PlanFormat::Text) => {
            crate::report::out(&report::plan::render_text(&plan, Palette::for_stdout()))
        }
    }
    if let Some(path) = args.out.as_ref().filter(|_| !args.json) {
        crate::report::outln(&format!(
            "\nSaved the plan to {0}: `imgraph show {0}` prints it, `imgraph apply {0}` applies exactly it.",
            path.display()
        ));
    }
    let code = exit::code(exit::Ended::Planned {
        detailed: args.detailed_exitcode,
        has_changes: plan.has_changes(),
    });
    // The process ends here: its memory goes back whole at exit. Freeing the plan's
    // manifests entry by entry first (40,000 strings for a 20,000-file image) was a
    // twentieth of a no-change plan's instructions.
    std::mem::forget(plan);
    Ok(code)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::error::Error::Io {
            what: "failed to start the async runtime".into(),
            path: PathBuf::new(),
            source,
        })
}

fn apply(cli: &Cli, args: &ApplyArgs) -> Result<i32> {
    let saved = args.plan_file.as_deref().map(saved::read).transpose()?;
    let ws = Workspace::open(&cli.dir)?;
    let mut exec = crate::exec::ExecOptions {
        fail_fast: args.fail_fast,
        lock_wait: args.lock.lock_timeout,
        ..Default::default()
    };
    if let Some(p) = args.parallelism {
        exec.parallelism = p.max(1);
    }
    let rt = runtime()?;
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        signals::watch(cancel.clone())?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let json = args.json;
        let quiet = cli.quiet;
        let reporter = tokio::spawn(async move {
            let palette = Palette::for_stdout();
            let live =
                !json && palette.color && std::io::IsTerminal::is_terminal(&std::io::stdout());
            let mut human = report::apply::Human::new(palette, live).quiet(quiet);
            while let Some(ev) = rx.recv().await {
                if json {
                    crate::report::outln(&crate::exec::events::to_ndjson(
                        &ev,
                        crate::state::now_ms(),
                    ));
                } else {
                    human.handle(&ev);
                }
            }
        });
        let options = args.selection.options();
        let source = match (&saved, &args.plan_file) {
            (Some(plan), Some(path)) => crate::workspace::PlanSource::Saved { plan, path },
            _ => crate::workspace::PlanSource::Fresh(&options),
        };
        let outcome = ws.apply(source, &exec, tx, cancel).await;
        let _ = reporter.await;
        let outcome = outcome?;
        let s = &outcome.summary;
        if let Some(ci) = crate::report::ci::CiSystem::detect() {
            eprint!(
                "{}",
                crate::report::ci::failure_annotations(ci, s, report::apply::FAILURE_TAIL_LINES)
            );
        }
        Ok(exit::code(exit::Ended::Applied {
            interrupted: s.interrupted,
            succeeded: s.status == crate::state::RunStatus::Succeeded,
        }))
    })
}

fn images(cli: &Cli, image: Option<&str>, json: bool) -> Result<i32> {
    let ws = Workspace::open_read_only(&cli.dir)?;
    let records = ws.state.images(image)?;
    if json {
        crate::report::outln(&report::state::images_json(&records));
    } else {
        crate::report::out(&report::state::images_text(&records, Palette::for_stdout()));
    }
    Ok(exit::OK)
}

fn history(cli: &Cli, limit: usize, json: bool) -> Result<i32> {
    let ws = Workspace::open_read_only(&cli.dir)?;
    let mut runs = Vec::new();
    for run in ws.state.runs(limit)? {
        let nodes = ws.state.node_runs(run.id)?;
        runs.push((run, nodes));
    }
    if json {
        crate::report::outln(&report::state::history_json(&runs));
    } else {
        crate::report::out(&report::state::history_text(&runs, Palette::for_stdout()));
    }
    Ok(exit::OK)
}

/// `IMAGE@VERSION` → (image, Some(version)); `IMAGE` → (image, None).
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('@') {
        Some((image, version)) => (image, Some(version)),
        None => (target, None),
    }
}

fn packages(cli: &Cli, target: &str, json: bool) -> Result<i32> {
    let ws = Workspace::open(&cli.dir)?;
    let (image, version) = split_target(target);
    let contents = crate::contents::version_contents(&ws, image, version)?;
    if json {
        crate::report::outln(&report::packages::packages_json(&contents));
    } else {
        crate::report::out(&report::packages::packages_text(
            &contents,
            Palette::for_stdout(),
        ));
    }
    Ok(exit::OK)
}

fn diff(cli: &Cli, image: &str, from: &str, to: &str, json: bool) -> Result<i32> {
    let ws = Workspace::open(&cli.dir)?;
    let diff = crate::contents::diff_versions(&ws, image, from, to)?;
    if json {
        crate::report::outln(&report::packages::diff_json(&diff));
    } else {
        crate::report::out(&report::packages::diff_text(&diff, Palette::for_stdout()));
    }
    Ok(exit::OK)
}

fn sbom(cli: &Cli, target: &str, output: Option<&std::path::Path>) -> Result<i32> {
    let ws = Workspace::open(&cli.dir)?;
    let (image, version) = split_target(target);
    let contents = crate::contents::version_contents(&ws, image, version)?;
    let doc = report::sbom::cyclonedx_json(&contents)?;
    match output {
        None => crate::report::outln(&doc),
        Some(path) => {
            std::fs::write(path, format!("{doc}\n")).map_err(|source| crate::error::Error::Io {
                what: "failed to write the SBOM to".into(),
                path: path.to_path_buf(),
                source,
            })?;
            crate::report::outln(&format!(
                "sbom: {} {} ({} packages) written to {}",
                contents.record.version.image,
                contents.record.version.version,
                contents.inventory.packages.len(),
                path.display()
            ));
        }
    }
    Ok(exit::OK)
}

fn gc(cli: &Cli, dry_run: bool, json: bool, lock: &LockWait) -> Result<i32> {
    let ws = Workspace::open(&cli.dir)?;
    // Also a dry run: what it says holds only while no apply changes the registry.
    let lease = ws.lock("gc", lock.lock_timeout, &Default::default())?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let providers = ws.providers().await?;
        let events = if dry_run {
            Vec::new()
        } else {
            ws.collect_garbage(&providers, true).await?
        };
        let versions = ws.apply_retention(&providers, dry_run).await?;
        // Pruning changes nothing anyone reads, so a dry run leaves it out.
        let pruned = if dry_run { None } else { Some(ws.prune()?) };
        Ok::<_, crate::error::Error>((events, versions, pruned))
    });
    lease.release()?;
    let (events, versions, pruned) = result?;
    let leftovers: Vec<(String, String, String)> = events
        .iter()
        .filter_map(|ev| match ev {
            crate::exec::Event::LeftoverDestroyed {
                resource,
                kind,
                node,
            } => Some((kind.clone(), resource.clone(), node.clone())),
            _ => None,
        })
        .collect();
    if json {
        crate::report::outln(&report::state::gc_json(&leftovers, &versions, dry_run));
    } else {
        crate::report::out(&report::state::gc_text(&leftovers, &versions, dry_run));
        if let Some(p) = &pruned {
            crate::report::out(&report::state::pruned_text(p));
        }
    }
    Ok(exit::OK)
}

fn state_push(cli: &Cli) -> Result<i32> {
    let pushed = crate::workspace::push_state(&cli.dir)?;
    let rows: Vec<String> = pushed
        .rows
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(table, n)| format!("{n} {}", table.replace('_', " ")))
        .collect();
    crate::report::outln(&format!(
        "state push: uploaded the local history to {} ({}); the local state file is its mirror now",
        pushed.journal,
        rows.join(", ")
    ));
    Ok(exit::OK)
}

fn state_pull(cli: &Cli) -> Result<i32> {
    let pulled = crate::workspace::pull_state(&cli.dir)?;
    crate::report::outln(&format!(
        "state pull: {} mirrors {} up to journal entry {} ({} runs, {} image versions)",
        pulled.path.display(),
        pulled.journal,
        pulled.position,
        pulled.runs,
        pulled.versions
    ));
    Ok(exit::OK)
}

fn state_recover(cli: &Cli) -> Result<i32> {
    let ws = Workspace::open(&cli.dir)?;
    // Recovery writes the registry: never while an apply records the same builds.
    let lease = ws.lock(
        "state recover",
        std::time::Duration::ZERO,
        &Default::default(),
    )?;
    let rt = runtime()?;
    let found = rt.block_on(async {
        let providers = ws.providers().await?;
        ws.recover(&providers).await
    });
    lease.release()?;
    let found = found?;
    for r in &found {
        crate::report::outln(&format!(
            "recovered {} {} {} ({})",
            r.image, r.version, r.artifact_id, r.status
        ));
    }
    crate::report::outln(&format!(
        "state recover: {} image versions recovered from the providers' records",
        found.len()
    ));
    Ok(exit::OK)
}

fn lock_status(cli: &Cli, json: bool) -> Result<i32> {
    let ws = Workspace::open_read_only(&cli.dir)?;
    let lease = ws.leases.status()?;
    let now = crate::state::now_ms();
    if json {
        crate::report::outln(&report::state::lease_json(lease.as_ref(), now));
    } else {
        crate::report::out(&report::state::lease_text(lease.as_ref(), now));
    }
    Ok(exit::OK)
}

fn lock_break(cli: &Cli, force: bool) -> Result<i32> {
    let ws = Workspace::open(&cli.dir)?;
    match ws.break_lock(force)? {
        None => crate::report::outln("unlocked: nothing held the state lock"),
        Some(l) => crate::report::outln(&format!(
            "broke the state lock of {} ({})",
            l.holder,
            report::state::lease_holder(l.pid, l.host.as_deref(), l.since, crate::state::now_ms())
        )),
    }
    Ok(exit::OK)
}
