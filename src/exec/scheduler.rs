//! The scheduler: starts each node as soon as the nodes it needs have succeeded (no
//! level-by-level barriers), at most `parallelism` at a time, and reports every node's end.
//!
//! It knows nothing of providers, stages or the state: a [`NodeRunner`] records and runs
//! the nodes, the scheduler decides when. What it guarantees, whatever the runner does:
//! - a node starts only after every node it needs succeeded (or was recorded up to date);
//! - a node whose dependency failed, was skipped or was cancelled never starts: it is
//!   recorded not run with the cause, while independent branches go on;
//! - once `stop` is cancelled (Ctrl-C, or `fail_fast` after a failure) no node starts; the
//!   running ones see `stop` and are awaited, never abandoned;
//! - a node task that panics is a failed node, and the run still ends normally;
//! - an error of the runner's own records stops the run, after the running tasks ended.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::events::{Event, NodeOutcome, NodeReport};
use super::ExecError;

#[cfg(test)]
mod tests;

/// A started node's work: runs the node to its end, records that end and says how it went.
pub(crate) type NodeTask = Pin<Box<dyn Future<Output = Finished> + Send + 'static>>;

/// How a node task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    pub outcome: NodeOutcome,
    pub error: Option<String>,
}

/// A node that was recorded as started, with its log and its work.
pub(crate) struct Started {
    pub log_path: PathBuf,
    pub task: NodeTask,
}

/// Records and runs nodes for the scheduler. Nodes are named by id.
pub(crate) trait NodeRunner {
    /// A ready node that need not run (early cutoff): records it as up to date and returns
    /// the note that says why; `None` when it must run.
    fn cut_off(&mut self, _node: &str) -> Result<Option<String>, ExecError> {
        Ok(None)
    }

    /// Records that `node` starts and returns its work. The work watches `stop`: when it
    /// is cancelled the node ends as soon as it has cleaned up.
    fn start(&mut self, node: &str, stop: &CancellationToken) -> Result<Started, ExecError>;

    /// Records a node that will not run (`Skipped` or `Cancelled`) with its cause.
    fn not_run(&mut self, node: &str, outcome: NodeOutcome, cause: &str) -> Result<(), ExecError>;

    /// Records a node whose task panicked as failed with `error` (best effort: the run
    /// goes on and reports the node failed either way).
    fn crashed(&mut self, node: &str, error: &str);
}

/// How much runs at once, and whether the first failure stops the run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub parallelism: usize,
    pub fail_fast: bool,
}

/// Runs `nodes` (in this order where nothing else decides) with `deps` (node → the nodes it
/// needs, all among `nodes`). Returns each node's report once every node is finished,
/// skipped, cut off or cancelled. `fail_fast` cancels `stop` at the first failure.
pub(crate) async fn schedule<R: NodeRunner>(
    runner: &mut R,
    nodes: &[String],
    deps: &HashMap<String, Vec<String>>,
    limits: Limits,
    stop: &CancellationToken,
    events: &UnboundedSender<Event>,
) -> Result<BTreeMap<String, NodeReport>, ExecError> {
    let mut sched = Scheduler {
        runner,
        events,
        limits,
        status: HashMap::new(),
        reports: BTreeMap::new(),
        log_paths: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    match sched.run(nodes, deps, stop).await {
        Ok(()) => Ok(sched.reports),
        Err(e) => {
            // Never leave a node task behind: each one cleans up its instance or staging
            // folder before it returns, so stop them and wait.
            stop.cancel();
            while sched.tasks.join_next().await.is_some() {}
            Err(e)
        }
    }
}

/// The scheduler's bookkeeping for one run.
struct Scheduler<'a, R> {
    runner: &'a mut R,
    events: &'a UnboundedSender<Event>,
    limits: Limits,
    status: HashMap<String, NodeOutcome>,
    reports: BTreeMap<String, NodeReport>,
    log_paths: HashMap<String, PathBuf>,
    tasks: JoinSet<Finished>,
    /// Task → the node it runs and when it started.
    running: HashMap<tokio::task::Id, (String, Instant)>,
}

impl<R: NodeRunner> Scheduler<'_, R> {
    async fn run(
        &mut self,
        nodes: &[String],
        deps: &HashMap<String, Vec<String>>,
        stop: &CancellationToken,
    ) -> Result<(), ExecError> {
        let parallelism = self.limits.parallelism.max(1);
        let mut pending: Vec<&str> = nodes.iter().map(String::as_str).collect();
        loop {
            let stopping = stop.is_cancelled();
            // Skip whatever waits on a failure; start whatever is ready.
            let mut still = Vec::new();
            let mut cut_any = false;
            for node in pending.drain(..) {
                let my_deps = deps.get(node).map(Vec::as_slice).unwrap_or_default();
                if let Some((bad, outcome)) = self.failed_dependency(my_deps) {
                    self.not_run(node, outcome, format!("{bad} did not succeed"))?;
                    continue;
                }
                let ready = my_deps.iter().all(|d| {
                    matches!(
                        self.status.get(d),
                        Some(NodeOutcome::Succeeded | NodeOutcome::UpToDate)
                    )
                });
                if ready && !stopping {
                    if let Some(note) = self.runner.cut_off(node)? {
                        self.cut_off(node, note);
                        cut_any = true;
                        continue;
                    }
                }
                if ready && !stopping && self.tasks.len() < parallelism {
                    self.start(node, stop)?;
                } else {
                    still.push(node);
                }
            }
            pending = still;
            if cut_any {
                // What waited on a cut-off node may be ready (or cut off) now.
                continue;
            }

            if self.tasks.is_empty() {
                if stopping {
                    // Whatever never started because of Ctrl-C or --fail-fast.
                    for node in pending.drain(..) {
                        self.not_run(
                            node,
                            NodeOutcome::Cancelled,
                            "not started: the run was stopped".into(),
                        )?;
                    }
                }
                // Nothing runs and nothing can start: a dependency never became ready.
                for node in pending.drain(..) {
                    self.not_run(
                        node,
                        NodeOutcome::Skipped,
                        "its dependencies never became ready".into(),
                    )?;
                }
                return Ok(());
            }

            let joined = tokio::select! {
                j = self.tasks.join_next_with_id() => j,
                _ = stop.cancelled(), if !stopping => continue,
            };
            let Some(joined) = joined else { continue };
            let (node, started, finished) = match joined {
                Ok((id, finished)) => {
                    let (node, started) = self.running.remove(&id).unwrap_or_else(unknown_task);
                    (node, started, finished)
                }
                Err(e) => {
                    // A node task panicked: record the node as failed, never lose it.
                    let (node, started) = self.running.remove(&e.id()).unwrap_or_else(unknown_task);
                    let error = format!("imgraph crashed while running this node: {e}");
                    self.runner.crashed(&node, &error);
                    let finished = Finished {
                        outcome: NodeOutcome::Failed,
                        error: Some(error),
                    };
                    (node, started, finished)
                }
            };
            if finished.outcome == NodeOutcome::Failed && self.limits.fail_fast {
                stop.cancel();
            }
            self.finished(node, started, finished);
        }
    }

    /// The first dependency that did not succeed, and what that makes of the node.
    fn failed_dependency(&self, deps: &[String]) -> Option<(String, NodeOutcome)> {
        deps.iter().find_map(|d| match self.status.get(d) {
            Some(NodeOutcome::Cancelled) => Some((d.clone(), NodeOutcome::Cancelled)),
            Some(NodeOutcome::Failed | NodeOutcome::Skipped) => {
                Some((d.clone(), NodeOutcome::Skipped))
            }
            _ => None,
        })
    }

    fn start(&mut self, node: &str, stop: &CancellationToken) -> Result<(), ExecError> {
        let started = self.runner.start(node, stop)?;
        let _ = self.events.send(Event::NodeStarted {
            node: node.to_string(),
            log_path: started.log_path.clone(),
        });
        self.log_paths.insert(node.to_string(), started.log_path);
        self.status.insert(node.to_string(), NodeOutcome::Running);
        let handle = self.tasks.spawn(started.task);
        self.running
            .insert(handle.id(), (node.to_string(), Instant::now()));
        Ok(())
    }

    /// Records a node that will not run (skipped or cancelled) everywhere at once.
    fn not_run(
        &mut self,
        node: &str,
        outcome: NodeOutcome,
        cause: String,
    ) -> Result<(), ExecError> {
        self.runner.not_run(node, outcome, &cause)?;
        self.status.insert(node.to_string(), outcome);
        self.reports
            .insert(node.to_string(), NodeReport::not_run(node, outcome, &cause));
        let _ = self.events.send(Event::NodeSkipped {
            node: node.to_string(),
            cause,
        });
        Ok(())
    }

    /// A node the runner recorded as up to date instead of running it.
    fn cut_off(&mut self, node: &str, note: String) {
        self.status.insert(node.to_string(), NodeOutcome::UpToDate);
        self.reports.insert(
            node.to_string(),
            NodeReport::not_run(node, NodeOutcome::UpToDate, &note),
        );
        let _ = self.events.send(Event::NodeCutOff {
            node: node.to_string(),
            note,
        });
    }

    /// Records a finished node task.
    fn finished(&mut self, node: String, started: Instant, finished: Finished) {
        let duration_ms = started.elapsed().as_millis() as u64;
        let log_path = self.log_paths.get(&node).cloned();
        self.status.insert(node.clone(), finished.outcome);
        let _ = self.events.send(Event::NodeFinished {
            node: node.clone(),
            outcome: finished.outcome,
            duration_ms,
            error: finished.error.clone(),
            log_path: log_path.clone(),
        });
        self.reports.insert(
            node.clone(),
            NodeReport {
                id: node,
                outcome: finished.outcome,
                duration_ms: Some(duration_ms),
                error: finished.error,
                log_path,
            },
        );
    }
}

/// What the scheduler knows of a task it did not start (never happens: every task is
/// started by [`Scheduler::start`]).
fn unknown_task() -> (String, Instant) {
    (String::new(), Instant::now())
}
