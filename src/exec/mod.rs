//! The executor: runs a plan's `run` nodes on tokio, each as soon as the nodes it needs
//! have succeeded (no level-by-level barriers), at most `parallelism` at a time.
//!
//! It never prints: it sends [`Event`]s on a channel and reporters render them. Every
//! start, finish and outcome is written to the state as it happens, each in its own
//! transaction, so a crash at any point leaves a consistent record and the next apply
//! redoes only unfinished work. A failed node skips its downstream (recorded with the
//! cause); independent branches go on unless `fail_fast`. Cancellation (Ctrl-C) stops
//! starting work, kills running commands and lets providers clean up their instances.

//!
//! Three parts: [`scheduler`] decides when each node runs (dependencies, parallelism,
//! fail-fast, cancellation, panics) and knows nothing of stages; [`stages`] says what
//! running a node means (origins, version numbers, registry, status tags, deliveries);
//! [`record`] writes each node's start and end to the state. [`runner`] joins them: it is
//! the scheduler's node runner for a plan.

mod cutoff;
mod error;
pub mod events;
mod record;
mod revoked;
mod runner;
mod scheduler;
mod stages;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

pub use error::ExecError;
pub use events::{Event, NodeOutcome, NodeReport, RunSummary};
pub use record::record_finished;

use crate::config::model::Project;
use crate::graph::{NodeId, StageGraph};
use crate::plan::{Action, BuildOutputs, Plan, PlannedNode};
use crate::provider::Provider;
use crate::state::{RunId, RunStatus, State};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub parallelism: usize,
    pub fail_fast: bool,
    /// How long `apply` waits for the state lock before it fails (0: fail at once).
    pub lock_wait: std::time::Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            fail_fast: false,
            lock_wait: std::time::Duration::ZERO,
        }
    }
}

/// What the executor works with; cheap to clone into node tasks.
#[derive(Clone)]
pub struct ExecContext {
    pub project: Arc<Project>,
    pub graph: Arc<StageGraph>,
    pub state: Arc<Mutex<State>>,
    /// Provider name → implementation.
    pub providers: Arc<HashMap<String, Arc<dyn Provider>>>,
    /// Where logs and temporary folders go (`.imgraph/`).
    pub work_root: PathBuf,
    /// Source name → the id it resolved to for this plan (an AMI id for AWS sources).
    pub resolved_sources: Arc<HashMap<String, String>>,
    /// Runs the commands the executor starts itself (deliveries): [`crate::process::Host`].
    pub commands: Arc<dyn crate::process::CommandRunner>,
}

/// What this run made so far, shared by the node tasks.
#[derive(Default)]
struct Made {
    /// Builds that finished in this run: image → (artifact, version).
    builds: HashMap<String, BuildOutputs>,
    /// Early cutoff: builds that produced their image's newest Ready artifact again, and
    /// the cascades skipped because of them.
    cut: HashSet<NodeId>,
}

type Fresh = Arc<Mutex<Made>>;

impl ExecContext {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, ExecError> {
        self.state.lock().map_err(|_| ExecError::Poisoned)
    }

    fn logs_dir(&self, run: RunId) -> PathBuf {
        self.work_root.join("logs").join(format!("run-{run}"))
    }

    /// Where the nodes of `run` make their temporary folders (staging, instances): a
    /// folder of the run's own, which the next apply removes whole (see [`run_folder`]).
    fn run_folder(&self, run: RunId) -> PathBuf {
        run_folder(&self.work_root, run)
    }
}

/// The folder where the nodes of `run` make their temporary folders:
/// `<work>/tmp/run-<id>`. Only an apply makes such folders, and only while it holds the
/// lease, so one found by the next holder is a leftover of a run that was killed or lost
/// its power, and is removed whole ([`leftover_run_folders`]). That is what makes a staging
/// folder's or an instance's ledger row need no sync of its own (see
/// [`crate::provider::Ledger::in_run_folder`]).
pub fn run_folder(work_root: &Path, run: RunId) -> PathBuf {
    work_root
        .join("tmp")
        .join(format!("{RUN_FOLDER_PREFIX}{run}"))
}

const RUN_FOLDER_PREFIX: &str = "run-";

/// The run folders (see [`run_folder`]) in `work_root`: when the caller holds the lease,
/// no run of this state is going on, so each is a leftover of a run that ended without
/// removing it (killed, or its machine lost power).
pub fn leftover_run_folders(work_root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let tmp = work_root.join("tmp");
    let entries = match std::fs::read_dir(&tmp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let is_run_folder = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUN_FOLDER_PREFIX))
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
        if is_run_folder && entry.file_type()?.is_dir() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// The `run_id` of an apply that had nothing to run: no run is recorded for it.
pub const NO_RUN: RunId = 0;

/// Runs every `run` node of `plan`. Returns when all are finished, skipped or cancelled.
pub async fn execute(
    ctx: ExecContext,
    plan: &Plan,
    command: &str,
    options: &ExecOptions,
    events: UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Result<RunSummary, ExecError> {
    let started = Instant::now();
    let to_run: Vec<&PlannedNode> = plan
        .nodes
        .iter()
        .filter(|n| matches!(n.action, Action::Run | Action::UpdateTags))
        .collect();
    let by_id: HashMap<&NodeId, &PlannedNode> = to_run.iter().map(|n| (&n.id, *n)).collect();
    let deps = run_dependencies(&ctx.graph, &by_id);

    if to_run.is_empty() {
        // Nothing to do is not a run: `history` lists what ran, not every look.
        let _ = events.send(Event::RunStarted {
            run_id: NO_RUN,
            nodes: Vec::new(),
            parallelism: options.parallelism,
            summary: plan.summary.clone(),
        });
        let summary = RunSummary {
            run_id: NO_RUN,
            status: RunStatus::Succeeded,
            nodes: Vec::new(),
            duration_ms: started.elapsed().as_millis() as u64,
            interrupted: false,
        };
        let _ = events.send(Event::RunFinished(summary.clone()));
        return Ok(summary);
    }
    let run_id = {
        let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
        let recorded = record::RunOptions {
            fail_fast: options.fail_fast,
            force: &plan.forced,
            parallelism: options.parallelism,
            rollup: plan.rollup,
            targets: &plan.targets,
        };
        st.begin_run(command, &recorded.json())?
    };
    for dir in [ctx.logs_dir(run_id), ctx.run_folder(run_id)] {
        std::fs::create_dir_all(&dir).map_err(|source| ExecError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let _ = events.send(Event::RunStarted {
        run_id,
        nodes: to_run.iter().map(|n| n.id.clone()).collect(),
        parallelism: options.parallelism,
        summary: plan.summary.clone(),
    });

    // Ctrl-C cancels `cancel`; --fail-fast cancels only `stop`, its child, so the two
    // can be told apart (interrupted → exit 130; fail-fast → an ordinary failure).
    let stop = cancel.child_token();
    let ids: Vec<NodeId> = to_run.iter().map(|n| n.id.clone()).collect();
    let mut runner = runner::PlanRunner::new(&ctx, run_id, &to_run);
    let limits = scheduler::Limits {
        parallelism: options.parallelism,
        fail_fast: options.fail_fast,
    };
    let mut reports = scheduler::schedule(&mut runner, &ids, &deps, limits, &stop, &events).await?;

    let interrupted = cancel.is_cancelled();
    let mut summary = RunSummary {
        run_id,
        status: RunStatus::Succeeded,
        nodes: to_run
            .iter()
            .filter_map(|n| reports.remove(&n.id))
            .collect(),
        duration_ms: started.elapsed().as_millis() as u64,
        interrupted,
    };
    summary.status = if interrupted {
        RunStatus::Cancelled
    } else if summary
        .nodes
        .iter()
        .any(|n| !matches!(n.outcome, NodeOutcome::Succeeded | NodeOutcome::UpToDate))
    {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    {
        let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
        st.finish_run(run_id, summary.status)?;
    }
    // Empty unless a node's clean-up failed: then the next apply removes it whole.
    let _ = std::fs::remove_dir(ctx.run_folder(run_id));
    let _ = events.send(Event::RunFinished(summary.clone()));
    Ok(summary)
}

/// For each node that runs, the nearest running nodes it needs, looking through nodes that
/// do not run (those are satisfied by earlier runs).
fn run_dependencies(
    graph: &StageGraph,
    run: &HashMap<&NodeId, &PlannedNode>,
) -> HashMap<NodeId, Vec<NodeId>> {
    let mut out = HashMap::new();
    for id in run.keys() {
        let Some(idx) = graph.index_of(id) else {
            continue;
        };
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = graph.upstream(idx);
        while let Some(u) = stack.pop() {
            if !seen.insert(u) {
                continue;
            }
            let uid = &graph.node(u).id;
            if run.contains_key(uid) {
                found.push(uid.clone());
            } else {
                stack.extend(graph.upstream(u));
            }
        }
        found.sort();
        out.insert((*id).clone(), found);
    }
    out
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
