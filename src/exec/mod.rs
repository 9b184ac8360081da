//! The executor: runs a plan's `run` nodes on tokio, each as soon as the nodes it needs
//! have succeeded (no level-by-level barriers), at most `parallelism` at a time.
//!
//! It never prints: it sends [`Event`]s on a channel and reporters render them. Every
//! start, finish and outcome is written to the state as it happens, each in its own
//! transaction, so a crash at any point leaves a consistent record and the next apply
//! redoes only unfinished work. A failed node skips its downstream (recorded with the
//! cause); independent branches go on unless `fail_fast`. Cancellation (Ctrl-C) stops
//! starting work, kills running commands and lets providers clean up their instances.

mod cutoff;
pub mod events;
mod revoked;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use events::{Event, NodeOutcome, NodeReport, RunSummary};

use crate::config::model::{FromRef, Project, SourceKind};
use crate::graph::{build_id, Stage, StageGraph};
use crate::hash::EntryKind;
use crate::plan::{Action, BuildOutputs, Plan, PlannedNode};
use crate::process;
use crate::provider::append_log;
use crate::provider::probes::{has_image_probes, measure_image_probes, ProbeSite};
use crate::provider::{
    BuildRequest, Ledger, NodeInput, NodeInputKind, Origin, Provider, ProviderError, TestRequest,
};
use crate::state::{ImageRecord, NodeStart, NodeStatus, ReleaseStatus, RunId, RunStatus, State};
use crate::text::error_chain;

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
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("the state lock was poisoned by a crashed task")]
    Poisoned,
    #[error("failed to record {node} as cut off early: {detail}")]
    CutOff { node: String, detail: String },
    #[error("failed to create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of one node task.
struct NodeResult {
    id: String,
    outcome: NodeOutcome,
    error: Option<String>,
    started: Instant,
}

/// What this run made so far, shared by the node tasks.
#[derive(Default)]
struct Made {
    /// Builds that finished in this run: image → (artifact, version).
    builds: HashMap<String, BuildOutputs>,
    /// Early cutoff: builds that produced their image's newest Ready artifact again, and
    /// the cascades skipped because of them.
    cut: HashSet<String>,
}

type Fresh = Arc<Mutex<Made>>;

impl ExecContext {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, ProviderError> {
        self.state.lock().map_err(|_| ProviderError::Poisoned)
    }

    fn logs_dir(&self, run: RunId) -> PathBuf {
        self.work_root.join("logs").join(format!("run-{run}"))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.work_root.join("tmp")
    }
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
    let by_id: HashMap<&str, &PlannedNode> = to_run.iter().map(|n| (n.id.as_str(), *n)).collect();
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
        let options_json = serde_json::json!({
            "rollup": plan.rollup, "targets": plan.targets, "force": plan.forced,
            "parallelism": options.parallelism, "fail_fast": options.fail_fast,
        })
        .to_string();
        st.begin_run(command, &options_json)?
    };
    for dir in [ctx.logs_dir(run_id), ctx.tmp_dir()] {
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
    let mut sched = Scheduler {
        ctx: &ctx,
        run_id,
        events: &events,
        status: HashMap::new(),
        reports: BTreeMap::new(),
        log_paths: HashMap::new(),
    };
    let mut tasks: JoinSet<NodeResult> = JoinSet::new();
    let mut task_nodes: HashMap<tokio::task::Id, String> = HashMap::new();
    let looped = sched
        .run_loop(
            to_run.clone(),
            &deps,
            options,
            &stop,
            &mut tasks,
            &mut task_nodes,
        )
        .await;
    if looped.is_err() {
        // Never leave a node task behind: each one cleans up its instance or staging
        // folder before it returns, so stop them and wait.
        stop.cancel();
        while tasks.join_next().await.is_some() {}
    }
    looped?;

    let interrupted = cancel.is_cancelled();
    let mut summary = RunSummary {
        run_id,
        status: RunStatus::Succeeded,
        nodes: to_run
            .iter()
            .filter_map(|n| sched.reports.remove(&n.id))
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
    let _ = events.send(Event::RunFinished(summary.clone()));
    Ok(summary)
}

/// The executor's bookkeeping for one run.
struct Scheduler<'a> {
    ctx: &'a ExecContext,
    run_id: RunId,
    events: &'a UnboundedSender<Event>,
    status: HashMap<String, NodeOutcome>,
    reports: BTreeMap<String, NodeReport>,
    log_paths: HashMap<String, PathBuf>,
}

impl Scheduler<'_> {
    /// Records a node that will not run (skipped or cancelled) everywhere at once.
    fn mark_not_run(
        &mut self,
        node: &PlannedNode,
        outcome: NodeOutcome,
        cause: String,
    ) -> Result<(), ExecError> {
        let status = match outcome {
            NodeOutcome::Cancelled => NodeStatus::Cancelled,
            _ => NodeStatus::Skipped,
        };
        record_not_run(self.ctx, self.run_id, node, status, &cause)?;
        self.status.insert(node.id.clone(), outcome);
        self.reports.insert(
            node.id.clone(),
            NodeReport::not_run(&node.id, outcome, &cause),
        );
        let _ = self.events.send(Event::NodeSkipped {
            node: node.id.clone(),
            cause,
        });
        Ok(())
    }

    /// Early cutoff: records a cascade whose upstream builds all produced what their
    /// image already had as up to date (a success with the key it was planned with, the
    /// outputs of the version it would have made again, and a note), without running it.
    fn mark_cut_off(
        &mut self,
        node: &PlannedNode,
        fresh: &Fresh,
        by: &str,
    ) -> Result<(), ExecError> {
        let note = format!("early cutoff: {by} produced the same artifact");
        let (recorded, outputs) = cutoff::cut_off_record(self.ctx, fresh, node, &note)?;
        {
            let st = self.ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
            recorded.record_finished(
                &st,
                self.run_id,
                NodeStatus::Succeeded,
                Some(&outputs),
                None,
            )?;
        }
        if let Ok(mut f) = fresh.lock() {
            f.cut.insert(node.id.clone());
        }
        self.status.insert(node.id.clone(), NodeOutcome::UpToDate);
        self.reports.insert(
            node.id.clone(),
            NodeReport::not_run(&node.id, NodeOutcome::UpToDate, &note),
        );
        let _ = self.events.send(Event::NodeCutOff {
            node: node.id.clone(),
            note,
        });
        Ok(())
    }

    /// Records a finished node task.
    fn mark_finished(&mut self, res: NodeResult) {
        let duration_ms = res.started.elapsed().as_millis() as u64;
        let log_path = self.log_paths.get(&res.id).cloned();
        self.status.insert(res.id.clone(), res.outcome);
        let _ = self.events.send(Event::NodeFinished {
            node: res.id.clone(),
            outcome: res.outcome,
            duration_ms,
            error: res.error.clone(),
            log_path: log_path.clone(),
        });
        self.reports.insert(
            res.id.clone(),
            NodeReport {
                id: res.id,
                outcome: res.outcome,
                duration_ms: Some(duration_ms),
                error: res.error,
                log_path,
            },
        );
    }

    async fn run_loop(
        &mut self,
        mut pending: Vec<&PlannedNode>,
        deps: &HashMap<String, Vec<String>>,
        options: &ExecOptions,
        stop: &CancellationToken,
        tasks: &mut JoinSet<NodeResult>,
        task_nodes: &mut HashMap<tokio::task::Id, String>,
    ) -> Result<(), ExecError> {
        let ctx = self.ctx;
        let run_id = self.run_id;
        let fresh: Fresh = Arc::new(Mutex::new(Made::default()));
        let parallelism = options.parallelism.max(1);
        let mut started_at: HashMap<String, (Instant, i64)> = HashMap::new();
        loop {
            let stopping = stop.is_cancelled();
            // Skip whatever waits on a failure; start whatever is ready.
            let mut still = Vec::new();
            let mut cut_any = false;
            for node in pending.drain(..) {
                let my_deps = deps.get(node.id.as_str()).cloned().unwrap_or_default();
                let bad = my_deps
                    .iter()
                    .find_map(|d| match self.status.get(d.as_str()) {
                        Some(
                            o @ (NodeOutcome::Failed
                            | NodeOutcome::Skipped
                            | NodeOutcome::Cancelled),
                        ) => Some((d.clone(), *o)),
                        _ => None,
                    });
                if let Some((bad, outcome)) = bad {
                    let outcome = match outcome {
                        NodeOutcome::Cancelled => NodeOutcome::Cancelled,
                        _ => NodeOutcome::Skipped,
                    };
                    self.mark_not_run(node, outcome, format!("{bad} did not succeed"))?;
                    continue;
                }
                let ready = my_deps.iter().all(|d| {
                    matches!(
                        self.status.get(d.as_str()),
                        Some(NodeOutcome::Succeeded | NodeOutcome::UpToDate)
                    )
                });
                if ready && !stopping {
                    if let Some(by) = cutoff::cut_off_cause(ctx, node, &fresh)? {
                        self.mark_cut_off(node, &fresh, &by)?;
                        cut_any = true;
                        continue;
                    }
                }
                if ready && !stopping && tasks.len() < parallelism {
                    let log = ctx
                        .logs_dir(run_id)
                        .join(format!("{}.log", sanitize(&node.id)));
                    // A delivery is recorded with the artifact it delivers, known only now
                    // when its image was built in this run.
                    let n = resolve_delivery(ctx, &fresh, node);
                    let node_run = start_node(ctx, run_id, &n, &log)?;
                    tracing::debug!(node = %node.id, key = %n.key, log = %log.display(), "node started");
                    let _ = self.events.send(Event::NodeStarted {
                        node: node.id.clone(),
                        log_path: log.clone(),
                    });
                    self.log_paths.insert(node.id.clone(), log.clone());
                    self.status.insert(node.id.clone(), NodeOutcome::Running);
                    started_at.insert(node.id.clone(), (Instant::now(), node_run));
                    let (c, f, tok) = (ctx.clone(), fresh.clone(), stop.clone());
                    let handle = tasks.spawn(async move {
                        let started = Instant::now();
                        let result = run_node(&c, run_id, &n, &log, &f, &tok).await;
                        finish(&c, node_run, &n, result, &tok, started)
                    });
                    task_nodes.insert(handle.id(), node.id.clone());
                } else {
                    still.push(node);
                }
            }
            pending = still;
            if cut_any {
                // What waited on a cut-off node may be ready (or cut off) now.
                continue;
            }

            if tasks.is_empty() {
                if stopping {
                    // Whatever never started because of Ctrl-C or --fail-fast.
                    for node in pending.drain(..) {
                        self.mark_not_run(
                            node,
                            NodeOutcome::Cancelled,
                            "not started: the run was stopped".into(),
                        )?;
                    }
                }
                // Nothing runs and nothing can start: a dependency never became ready.
                for node in pending.drain(..) {
                    self.mark_not_run(
                        node,
                        NodeOutcome::Skipped,
                        "its dependencies never became ready".into(),
                    )?;
                }
                return Ok(());
            }

            let joined = tokio::select! {
                j = tasks.join_next_with_id() => j,
                _ = stop.cancelled(), if !stopping => continue,
            };
            let Some(joined) = joined else { continue };
            let res = match joined {
                Ok((id, r)) => {
                    task_nodes.remove(&id);
                    r
                }
                Err(e) => {
                    // A node task panicked: record the node as failed, never lose it.
                    let node_id = task_nodes.remove(&e.id()).unwrap_or_default();
                    let (started, node_run) = started_at
                        .get(&node_id)
                        .copied()
                        .unwrap_or((Instant::now(), 0));
                    let error = format!("imgraph crashed while running this node: {e}");
                    if let Ok(st) = ctx.state.lock() {
                        let _ = st.finish_node(node_run, NodeStatus::Failed, None, Some(&error));
                    }
                    NodeResult {
                        id: node_id,
                        outcome: NodeOutcome::Failed,
                        error: Some(error),
                        started,
                    }
                }
            };
            if res.outcome == NodeOutcome::Failed && options.fail_fast {
                stop.cancel();
            }
            self.mark_finished(res);
        }
    }
}

/// The node as it is recorded: a delivery with the artifact it delivers in its key (see
/// [`crate::plan::DELIVERED`]), every other node as planned.
fn resolve_delivery(ctx: &ExecContext, fresh: &Fresh, node: &PlannedNode) -> PlannedNode {
    match (node.stage, node.image.as_deref()) {
        (Stage::Deliver, Some(image)) => match current_build(ctx, fresh, image) {
            Ok(built) => node.for_artifact(&built),
            // Never built: the delivery fails when it runs and says so.
            Err(_) => node.clone(),
        },
        _ => node.clone(),
    }
}

/// For each node that runs, the nearest running nodes it needs, looking through nodes that
/// do not run (those are satisfied by earlier runs).
fn run_dependencies(
    graph: &StageGraph,
    run: &HashMap<&str, &PlannedNode>,
) -> HashMap<String, Vec<String>> {
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
            if run.contains_key(uid.as_str()) {
                found.push(uid.clone());
            } else {
                stack.extend(graph.upstream(u));
            }
        }
        found.sort();
        out.insert(id.to_string(), found);
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

fn node_start<'a>(
    node: &'a PlannedNode,
    manifest: &'a str,
    upstream: &'a str,
    reasons: &'a str,
    log: Option<&'a str>,
) -> NodeStart<'a> {
    NodeStart {
        node_id: &node.id,
        key: &node.key,
        manifest_json: manifest,
        stanza: &node.stanza,
        upstream_json: upstream,
        reasons_json: reasons,
        log_path: log,
    }
}

fn start_node(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    log: &Path,
) -> Result<i64, ExecError> {
    let (m, u, r) = node.record_fields();
    let log_s = log.to_string_lossy();
    let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
    Ok(st.start_node(run, &node_start(node, &m, &u, &r, Some(&log_s)))?)
}

fn record_not_run(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    status: NodeStatus,
    cause: &str,
) -> Result<(), ExecError> {
    let (m, u, r) = node.record_fields();
    let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
    st.record_not_run(run, &node_start(node, &m, &u, &r, None), status, cause)?;
    Ok(())
}

/// Records the node's end in the state and turns it into a [`NodeResult`].
fn finish(
    ctx: &ExecContext,
    node_run: i64,
    node: &PlannedNode,
    result: Result<Option<String>, ProviderError>,
    cancel: &CancellationToken,
    started: Instant,
) -> NodeResult {
    let (outcome, status, outputs, error) = match result {
        Ok(outputs) => (NodeOutcome::Succeeded, NodeStatus::Succeeded, outputs, None),
        Err(e) if cancel.is_cancelled() => (
            NodeOutcome::Cancelled,
            NodeStatus::Cancelled,
            None,
            Some(error_chain(&e)),
        ),
        Err(e) => (
            NodeOutcome::Failed,
            NodeStatus::Failed,
            None,
            Some(error_chain(&e)),
        ),
    };
    let recorded = ctx.lock().and_then(|st| {
        Ok(st.finish_node(node_run, status, outputs.as_deref(), error.as_deref())?)
    });
    let (outcome, error) = match recorded {
        Ok(()) => (outcome, error),
        Err(e) => (
            NodeOutcome::Failed,
            Some(format!("failed to record the outcome: {}", error_chain(&e))),
        ),
    };
    NodeResult {
        id: node.id.clone(),
        outcome,
        error,
        started,
    }
}

/// The image a node belongs to.
fn image_of<'a>(
    ctx: &'a ExecContext,
    node: &PlannedNode,
) -> Result<&'a crate::config::model::Image, ProviderError> {
    let name = node.image.as_deref().unwrap_or_default();
    ctx.project
        .image(name)
        .ok_or_else(|| ProviderError::Failed(format!("unknown image `{name}`")))
}

/// The project files, symlinks and folders a node's commands may read: its manifest's
/// leaves, less probes and environment values (not files) and a local origin's files
/// (the origin is the image root itself, not something its commands read).
fn node_inputs(ctx: &ExecContext, node: &PlannedNode) -> Vec<NodeInput> {
    let origin = node
        .image
        .as_deref()
        .and_then(|i| ctx.project.image(i))
        .and_then(|i| match &i.from {
            FromRef::Source(s) => ctx.project.source(s),
            FromRef::Image(_) => None,
        })
        .and_then(|s| match &s.kind {
            SourceKind::Local { path } => Some(path.as_str()),
            SourceKind::Aws { .. } => None,
        });
    let in_origin = |path: &str| {
        origin.is_some_and(|o| {
            path == o
                || path
                    .strip_prefix(o)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    node.manifest
        .entries
        .iter()
        .filter(|e| !in_origin(&e.path))
        .filter_map(|e| {
            let kind = match e.kind {
                EntryKind::File => NodeInputKind::File,
                EntryKind::Symlink => NodeInputKind::Symlink,
                EntryKind::Dir => NodeInputKind::Dir,
                EntryKind::Probe | EntryKind::ImageProbe | EntryKind::Env => return None,
            };
            Some(NodeInput {
                path: e.path.clone(),
                kind,
            })
        })
        .collect()
}

/// Runs one node; returns its outputs JSON on success.
async fn run_node(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    log: &Path,
    fresh: &Fresh,
    cancel: &CancellationToken,
) -> Result<Option<String>, ProviderError> {
    let image = image_of(ctx, node)?;
    let provider = ctx.providers.get(&image.provider).cloned().ok_or_else(|| {
        ProviderError::Failed(format!("provider `{}` is not available", image.provider))
    })?;
    let ledger = Ledger {
        state: ctx.state.clone(),
        run: Some(run),
    };
    let work_dir = ctx.tmp_dir();
    if node.action == Action::UpdateTags {
        return update_tags(ctx, node, provider.as_ref(), log).await;
    }
    match node.stage {
        Stage::Build => {
            if let Some(json) = revoked::go_back(ctx, fresh, node, image, log)? {
                return Ok(Some(json));
            }
            let mut origin_version = None;
            let origin = match &image.from {
                FromRef::Source(s) => match ctx.project.source(s).map(|s| &s.kind) {
                    Some(SourceKind::Local { path }) => {
                        Origin::LocalPath(ctx.project.root.join(path.as_str()))
                    }
                    Some(SourceKind::Aws { .. }) => match ctx.resolved_sources.get(s) {
                        Some(ami) => Origin::Artifact(ami.clone()),
                        None => {
                            return Err(ProviderError::Failed(format!(
                                "source `{s}` was not resolved"
                            )))
                        }
                    },
                    None => return Err(ProviderError::Failed(format!("unknown source `{s}`"))),
                },
                FromRef::Image(up) => {
                    let built = current_build(ctx, fresh, up)?;
                    match release_status(ctx, up, &built.version)? {
                        Some(ReleaseStatus::Ready) => {}
                        Some(ReleaseStatus::Revoked) => {
                            return Err(ProviderError::Failed(format!(
                                "`{}` is built from `{up}` {}, which is revoked: a revoked version is never an origin",
                                image.name, built.version
                            )))
                        }
                        _ => {
                            return Err(ProviderError::Failed(format!(
                                "`{}` is built from `{up}` {}, which is not Ready (its tests have not all passed)",
                                image.name, built.version
                            )))
                        }
                    }
                    origin_version = Some(format!("{up}@{}", built.version));
                    Origin::Artifact(built.artifact_id)
                }
            };
            let version = ctx.lock()?.next_version(&image.name, &image.version)?;
            append_log(log, &format!("imgraph: building {} {version}", image.name));
            let built = provider
                .build(BuildRequest {
                    project: &ctx.project,
                    image,
                    node_id: &node.id,
                    version: &version,
                    key: &node.key,
                    origin,
                    inputs: &node_inputs(ctx, node),
                    log,
                    work_dir: &work_dir,
                    ledger: &ledger,
                    cancel,
                })
                .await?;
            revoked::refuse_revoked_artifact(ctx, image, &built.artifact_id)?;
            if let Some(json) = cutoff::reuse_ready(ctx, fresh, node, image, &built, log)? {
                return Ok(Some(json));
            }
            // What is inside: read before the version exists, so a version is recorded
            // with its package list or not at all.
            let inventory = provider.inventory(&built.artifact_id).await?;
            if let Some(inv) = &inventory {
                let managers: Vec<&str> = inv.managers.iter().map(|m| m.as_str()).collect();
                append_log(
                    log,
                    &format!(
                        "imgraph: {} packages ({})",
                        inv.packages.len(),
                        if managers.is_empty() {
                            "no package database found".to_string()
                        } else {
                            managers.join(", ")
                        }
                    ),
                );
            }
            let record = ImageRecord {
                image: image.name.clone(),
                version: version.clone(),
                artifact_id: built.artifact_id.clone(),
                provider: provider.name().to_string(),
                key: node.key.clone(),
                status: ReleaseStatus::Candidate,
                built_at: crate::state::now_ms(),
                run_id: Some(run),
                environments: Vec::new(),
                holding: Vec::new(),
                origin: origin_version,
                revoked_reason: None,
            };
            ctx.lock()?
                .record_built_image(&record, inventory.as_ref())?;
            provider
                .set_status(&record, ReleaseStatus::Candidate)
                .await?;
            if has_image_probes(image) {
                record_probes_of_new_image(
                    ctx,
                    run,
                    node,
                    provider.as_ref(),
                    image,
                    &record,
                    log,
                    cancel,
                )
                .await?;
            }
            let outputs = BuildOutputs {
                artifact_id: built.artifact_id,
                version,
                built_at_ms: Some(record.built_at),
                tags: Some(image.tags.clone()),
            };
            let json = serde_json::to_string(&outputs).unwrap_or_default();
            if let Ok(mut f) = fresh.lock() {
                f.builds.insert(image.name.clone(), outputs);
            }
            Ok(Some(json))
        }
        Stage::Test => {
            let suite_name = node.suite.clone().unwrap_or_default();
            let suite = image
                .suite(&suite_name)
                .ok_or_else(|| ProviderError::Failed(format!("unknown test `{suite_name}`")))?;
            let built = current_build(ctx, fresh, &image.name)?;
            let outcome = provider
                .test(TestRequest {
                    project: &ctx.project,
                    image,
                    suite,
                    node_id: &node.id,
                    artifact_id: &built.artifact_id,
                    version: &built.version,
                    inputs: &node_inputs(ctx, node),
                    log,
                    work_dir: &work_dir,
                    ledger: &ledger,
                    cancel,
                })
                .await?;
            if outcome.success() {
                return Ok(Some(
                    serde_json::json!({"artifact_id": built.artifact_id, "version": built.version})
                        .to_string(),
                ));
            }
            if !cancel.is_cancelled() {
                ctx.lock()?
                    .set_image_status(&image.name, &built.version, ReleaseStatus::Failed)?;
                let record = image_record(ctx, &image.name, &built.version)?;
                provider.set_status(&record, ReleaseStatus::Failed).await?;
            }
            Err(ProviderError::Failed(format!(
                "test `{suite_name}` {} on {} {}",
                outcome.describe(),
                image.name,
                built.version
            )))
        }
        Stage::Publish => {
            let built = current_build(ctx, fresh, &image.name)?;
            // The planner runs publish only after every suite passed on this very build
            // (in this run, or earlier on the same artifact and version).
            ctx.lock()?
                .set_image_status(&image.name, &built.version, ReleaseStatus::Ready)?;
            let record = image_record(ctx, &image.name, &built.version)?;
            provider.set_status(&record, ReleaseStatus::Ready).await?;
            append_log(
                log,
                &format!("imgraph: {} {} is Ready", image.name, built.version),
            );
            Ok(Some(serde_json::json!({"artifact_id": built.artifact_id, "version": built.version, "status": "Ready"}).to_string()))
        }
        Stage::Deliver => deliver(ctx, run, node, provider.as_ref(), log, fresh, cancel).await,
        Stage::Source => Ok(None),
    }
}

/// A tags-only change: the image's current version gets the configured tags in place;
/// the build's record is written again with them (same key, same artifact and version).
async fn update_tags(
    ctx: &ExecContext,
    node: &PlannedNode,
    provider: &dyn Provider,
    log: &Path,
) -> Result<Option<String>, ProviderError> {
    let image = image_of(ctx, node)?;
    let success = ctx.lock()?.history(&node.id)?.last_success;
    let finished_at = success.as_ref().and_then(|s| s.finished_at);
    let mut current = success
        .and_then(|s| s.outputs_json)
        .and_then(|o| serde_json::from_str::<BuildOutputs>(&o).ok())
        .ok_or_else(|| ProviderError::Failed(format!("`{}` has never been built", image.name)))?;
    // max-age keeps counting from the build, not from this record.
    current.built_at_ms = current.built_at_ms.or(finished_at);
    let record = image_record(ctx, &image.name, &current.version)?;
    provider
        .set_tags(&record, &image.tags, current.tags.as_ref())
        .await?;
    append_log(
        log,
        &format!(
            "imgraph: tags of {} {} updated in place",
            image.name, current.version
        ),
    );
    let outputs = BuildOutputs {
        tags: Some(image.tags.clone()),
        ..current
    };
    Ok(Some(serde_json::to_string(&outputs).unwrap_or_default()))
}

async fn deliver(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    provider: &dyn Provider,
    log: &Path,
    fresh: &Fresh,
    cancel: &CancellationToken,
) -> Result<Option<String>, ProviderError> {
    let image = image_of(ctx, node)?;
    let env_name = node.environment.clone().unwrap_or_default();
    let env = ctx
        .project
        .environment(&env_name)
        .ok_or_else(|| ProviderError::Failed(format!("unknown environment `{env_name}`")))?;
    let delivery = env
        .deliveries
        .iter()
        .find(|d| d.image == image.name)
        .ok_or_else(|| {
            ProviderError::Failed(format!("{env_name} does not deliver {}", image.name))
        })?;
    let built = current_build(ctx, fresh, &image.name)?;
    {
        if release_status(ctx, &image.name, &built.version)? != Some(ReleaseStatus::Ready) {
            return Err(ProviderError::Failed(format!(
                "{} {} is not Ready; only Ready images are delivered",
                image.name, built.version
            )));
        }
        // `after`: this environment only gets what the earlier ones already got.
        for before in &env.after {
            let delivers = ctx
                .project
                .environment(before)
                .is_some_and(|e| e.deliveries.iter().any(|d| d.image == image.name));
            if !delivers {
                continue;
            }
            let got = ctx.lock()?.delivered_version(&image.name, before)?;
            if got.as_deref() != Some(built.version.as_str()) {
                return Err(ProviderError::Failed(format!(
                    "{env_name} only gets what {before} got first: {before} has {}, this is {} {}",
                    got.unwrap_or_else(|| "nothing".into()),
                    image.name,
                    built.version
                )));
            }
        }
    }
    let spec = process::CommandSpec {
        command: delivery.command.clone(),
        cwd: ctx.project.root.clone(),
        env: process::command_env(
            process::Place::Host,
            &image.delivery_env(delivery).names(),
            &[],
            vec![
                ("IMGRAPH_IMAGE".into(), image.name.clone()),
                ("IMGRAPH_VERSION".into(), built.version.clone()),
                ("IMGRAPH_IMAGE_ID".into(), built.artifact_id.clone()),
                ("IMGRAPH_ENVIRONMENT".into(), env_name.clone()),
            ],
        ),
        timeout: None,
        recorder: Some(
            Ledger {
                state: ctx.state.clone(),
                run: Some(run),
            }
            .processes_of(&node.id),
        ),
        ..Default::default()
    };
    crate::crash::point("deliver: command starts");
    let outcome = process::run(&spec, log, cancel).await?;
    crate::crash::point("deliver: command finished");
    if !outcome.success() {
        return Err(ProviderError::Failed(format!(
            "delivery of {} {} to {env_name} {}",
            image.name,
            built.version,
            outcome.describe()
        )));
    }
    ctx.lock()?
        .record_delivery(&image.name, &built.version, &env_name, run)?;
    let record = image_record(ctx, &image.name, &built.version)?;
    provider.record_delivery(&record, &env_name).await?;
    Ok(Some(
        serde_json::json!({"version": built.version, "artifact_id": built.artifact_id}).to_string(),
    ))
}

/// Runs the image's `in="image"` probes in the image this build made and records what
/// they saw as the build's manifest (see `provider::probes`). When they cannot run (the
/// archive unreachable), the build keeps what they saw before it, and says so in its log.
#[allow(clippy::too_many_arguments)]
async fn record_probes_of_new_image(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    provider: &dyn Provider,
    image: &crate::config::model::Image,
    built: &ImageRecord,
    log: &Path,
    cancel: &CancellationToken,
) -> Result<(), ProviderError> {
    let ledger = Ledger {
        state: ctx.state.clone(),
        run: Some(run),
    };
    let (work_dir, log_dir) = (ctx.tmp_dir(), ctx.logs_dir(run));
    let site = ProbeSite {
        project: &ctx.project,
        work_dir: &work_dir,
        log_dir: &log_dir,
        ledger: &ledger,
        cancel,
    };
    let version = Some((built.artifact_id.as_str(), built.version.as_str()));
    match measure_image_probes(provider, &site, image, version).await {
        Ok(measured) => {
            let mut manifest = node.manifest.clone();
            manifest.set_image_probes(&measured);
            let json = serde_json::to_string(&manifest).unwrap_or_default();
            ctx.lock()?.set_running_manifest(run, &node.id, &json)?;
            append_log(
                log,
                &format!(
                    "imgraph: probes run inside {} {}: {}",
                    image.name,
                    built.version,
                    measured.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        Err(e) => append_log(
            log,
            &format!(
                "imgraph: note: the probes could not run inside {} {} ({}); the next plan compares against what they saw before this build",
                image.name,
                built.version,
                error_chain(&e)
            ),
        ),
    }
    Ok(())
}

/// The release status of one version of one image (never of another image that happens
/// to have the same bytes).
fn release_status(
    ctx: &ExecContext,
    image: &str,
    version: &str,
) -> Result<Option<ReleaseStatus>, ProviderError> {
    Ok(find_image_record(ctx, image, version)?.map(|r| r.status))
}

fn find_image_record(
    ctx: &ExecContext,
    image: &str,
    version: &str,
) -> Result<Option<ImageRecord>, ProviderError> {
    Ok(ctx
        .lock()?
        .images(Some(image))?
        .into_iter()
        .find(|r| r.version == version))
}

/// The registry record of one version, which must exist (it was built).
fn image_record(
    ctx: &ExecContext,
    image: &str,
    version: &str,
) -> Result<ImageRecord, ProviderError> {
    find_image_record(ctx, image, version)?.ok_or_else(|| {
        ProviderError::Failed(format!("{image} {version} is not in the image registry"))
    })
}

/// The image's current build: made in this run, or the last successful one.
fn current_build(
    ctx: &ExecContext,
    fresh: &Fresh,
    image: &str,
) -> Result<BuildOutputs, ProviderError> {
    if let Some(b) = fresh.lock().ok().and_then(|f| f.builds.get(image).cloned()) {
        return Ok(b);
    }
    let history = ctx.lock()?.history(&build_id(image))?;
    history
        .last_success
        .and_then(|s| s.outputs_json)
        .and_then(|o| serde_json::from_str::<BuildOutputs>(&o).ok())
        .ok_or_else(|| ProviderError::Failed(format!("`{image}` has never been built")))
}
