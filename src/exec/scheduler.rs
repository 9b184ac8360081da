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
//!
//! Nodes that become ready together are handed to the runner together, and so are nodes
//! whose tasks ended together (every task that has ended when the scheduler wakes up), so
//! the runner can record each group in one write. A group's ends are recorded before the
//! scheduler looks for what became ready, so a node never starts before the end of a node
//! it needs is recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
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

/// A started node's work: runs the node to its end and returns what the runner records
/// (see [`NodeRunner::finish`]).
pub(crate) type NodeTask<D> = Pin<Box<dyn Future<Output = D> + Send + 'static>>;

/// How a node task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    pub outcome: NodeOutcome,
    pub error: Option<String>,
}

/// A node that was recorded as started, with its log and its work.
pub(crate) struct Started<D> {
    pub log_path: PathBuf,
    pub task: NodeTask<D>,
}

/// What the scheduler needs of a node's name: the executor names nodes by
/// [`crate::graph::NodeId`]; the scheduler only compares, orders and prints them.
pub(crate) trait NodeName: Clone + Eq + Hash + Ord + Display + Debug {}

impl<T: Clone + Eq + Hash + Ord + Display + Debug> NodeName for T {}

/// Records and runs nodes for the scheduler. Nodes are named by [`NodeRunner::Id`].
pub(crate) trait NodeRunner {
    /// How nodes are named.
    type Id: NodeName;

    /// What a node's task returns: how its work ended, not yet recorded.
    type Done: Send + 'static;

    /// A ready node that need not run (early cutoff): records it as up to date and returns
    /// the note that says why; `None` when it must run.
    fn cut_off(&mut self, _node: &Self::Id) -> Result<Option<String>, ExecError> {
        Ok(None)
    }

    /// Records that `nodes` (ready together) start and returns their work, in order. The
    /// work watches `stop`: when it is cancelled the node ends as soon as it has cleaned up.
    fn start(
        &mut self,
        nodes: &[&Self::Id],
        stop: &CancellationToken,
    ) -> Result<Vec<Started<Self::Done>>, ExecError>;

    /// Records the ends of nodes whose tasks ended together and says how each ended, one
    /// [`Finished`] per node, in order. A record that fails makes its nodes failed.
    fn finish(&mut self, done: Vec<(Self::Id, Self::Done)>) -> Vec<Finished>;

    /// Records a node that will not run (`Skipped` or `Cancelled`) with its cause.
    fn not_run(
        &mut self,
        node: &Self::Id,
        outcome: NodeOutcome,
        cause: &str,
    ) -> Result<(), ExecError>;

    /// Records a node whose task panicked as failed with `error` (best effort: the run
    /// goes on and reports the node failed either way).
    fn crashed(&mut self, node: &Self::Id, error: &str);
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
    nodes: &[R::Id],
    deps: &HashMap<R::Id, Vec<R::Id>>,
    limits: Limits,
    stop: &CancellationToken,
    events: &UnboundedSender<Event<R::Id>>,
) -> Result<BTreeMap<R::Id, NodeReport<R::Id>>, ExecError> {
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
            // Their ends are still recorded.
            stop.cancel();
            while let Some(joined) = sched.tasks.join_next_with_id().await {
                sched.ended(vec![joined], stop);
            }
            Err(e)
        }
    }
}

/// For each node, how many nodes the longest chain of nodes waiting on it holds (0 when
/// nothing waits on it). Starting the node with the longest chain first is list
/// scheduling's critical-path rule: a publish node that nine builds wait on takes a free
/// slot before one of those builds' siblings, instead of waiting behind them while its
/// own nine wait too. `deps` must be acyclic (the stage graph is); a cycle would only
/// give some node a smaller height.
fn chain_heights<Id: NodeName>(nodes: &[Id], deps: &HashMap<Id, Vec<Id>>) -> HashMap<Id, usize> {
    let mut dependents: HashMap<&Id, Vec<&Id>> = HashMap::new();
    for node in nodes {
        for dep in deps.get(node).into_iter().flatten() {
            dependents.entry(dep).or_default().push(node);
        }
    }
    let mut height: HashMap<Id, usize> = HashMap::new();
    let mut entered: HashSet<&Id> = HashSet::new();
    for start in nodes {
        // Depth first, without recursion: a node's height once all its dependents have one.
        let mut stack = vec![(start, false)];
        while let Some((node, expanded)) = stack.pop() {
            if height.contains_key(node) {
                continue;
            }
            let waiting = dependents.get(node).map(Vec::as_slice).unwrap_or_default();
            if expanded {
                let h = waiting
                    .iter()
                    .map(|d| height.get(*d).map_or(1, |h| h + 1))
                    .max()
                    .unwrap_or(0);
                height.insert(node.clone(), h);
            } else if entered.insert(node) {
                stack.push((node, true));
                stack.extend(waiting.iter().map(|d| (*d, false)));
            }
        }
    }
    height
}

/// Which nodes wait on which, kept up to date as nodes end, so that an end looks only at
/// the nodes waiting on it (a scan of every pending node at each end was quadratic: a
/// quarter of a 2,000-node apply's own work). Nodes are known by their rank: the order
/// in which they are looked at and started, the longest chain waiting on them first (see
/// [`chain_heights`]), then the given order.
struct Waiting<'n, Id> {
    /// Nodes by rank.
    ranked: Vec<&'n Id>,
    rank: HashMap<&'n Id, usize>,
    /// By rank: the ranks of the nodes that need it.
    dependents: Vec<Vec<usize>>,
    /// By rank: how many of its dependencies have not succeeded yet (one that is not
    /// among the nodes never does).
    blocked: Vec<usize>,
    /// By rank: started, skipped, cancelled or cut off.
    decided: Vec<bool>,
}

impl<'n, Id: NodeName> Waiting<'n, Id> {
    fn new(nodes: &'n [Id], deps: &HashMap<Id, Vec<Id>>) -> Self {
        let height = chain_heights(nodes, deps);
        let mut ranked: Vec<&Id> = nodes.iter().collect();
        // A stable sort: otherwise in the given order.
        ranked.sort_by_key(|n| std::cmp::Reverse(height.get(*n).copied().unwrap_or(0)));
        let rank: HashMap<&Id, usize> = ranked.iter().enumerate().map(|(r, n)| (*n, r)).collect();
        let mut dependents = vec![Vec::new(); ranked.len()];
        let mut blocked = vec![0; ranked.len()];
        for (r, node) in ranked.iter().enumerate() {
            for dep in deps.get(*node).into_iter().flatten() {
                blocked[r] += 1;
                if let Some(&d) = rank.get(dep) {
                    dependents[d].push(r);
                }
            }
        }
        let decided = vec![false; ranked.len()];
        Waiting {
            ranked,
            rank,
            dependents,
            blocked,
            decided,
        }
    }

    fn node(&self, rank: usize) -> &'n Id {
        self.ranked[rank]
    }

    /// The nodes that need nothing.
    fn unblocked(&self) -> BTreeSet<usize> {
        (0..self.ranked.len())
            .filter(|&r| self.blocked[r] == 0)
            .collect()
    }

    /// The node of `rank` was skipped, cancelled or cut off.
    fn decide(&mut self, rank: usize, succeeded: bool, look: &mut BTreeSet<usize>) {
        self.decided[rank] = true;
        self.release(rank, succeeded, look);
    }

    /// The started node `node` ended.
    fn ended(&mut self, node: &Id, succeeded: bool, look: &mut BTreeSet<usize>) {
        if let Some(&rank) = self.rank.get(node) {
            self.release(rank, succeeded, look);
        }
    }

    /// What needs `rank` is looked at once all it needs succeeded, or at once if this
    /// one did not.
    fn release(&mut self, rank: usize, succeeded: bool, look: &mut BTreeSet<usize>) {
        for &d in &self.dependents[rank] {
            if succeeded {
                self.blocked[d] -= 1;
                if self.blocked[d] == 0 {
                    look.insert(d);
                }
            } else {
                look.insert(d);
            }
        }
    }

    /// The nodes neither started nor recorded, in rank order.
    fn undecided(&self) -> impl Iterator<Item = &'n Id> + '_ {
        (0..self.ranked.len())
            .filter(|&r| !self.decided[r])
            .map(|r| self.ranked[r])
    }
}

/// The scheduler's bookkeeping for one run.
struct Scheduler<'a, R: NodeRunner> {
    runner: &'a mut R,
    events: &'a UnboundedSender<Event<R::Id>>,
    limits: Limits,
    status: HashMap<R::Id, NodeOutcome>,
    reports: BTreeMap<R::Id, NodeReport<R::Id>>,
    log_paths: HashMap<R::Id, PathBuf>,
    tasks: JoinSet<R::Done>,
    /// Task → the node it runs and when it started.
    running: HashMap<tokio::task::Id, (R::Id, Instant)>,
}

impl<R: NodeRunner> Scheduler<'_, R> {
    async fn run(
        &mut self,
        nodes: &[R::Id],
        deps: &HashMap<R::Id, Vec<R::Id>>,
        stop: &CancellationToken,
    ) -> Result<(), ExecError> {
        let parallelism = self.limits.parallelism.max(1);
        let mut wait = Waiting::new(nodes, deps);
        // Ranks of the nodes to look at now (whose dependencies all ended, or one failed)
        // and of the ready ones waiting for a free slot: looked at in rank order.
        let mut look: BTreeSet<usize> = wait.unblocked();
        let mut ready: BTreeSet<usize> = BTreeSet::new();
        loop {
            let stopping = stop.is_cancelled();
            // Skip whatever waits on a failure; cut off or queue whatever is ready. What a
            // skip or a cut-off unblocks joins `look` and is seen in this same pass.
            while let Some(rank) = look.pop_first() {
                let node = wait.node(rank);
                if wait.decided[rank] {
                    continue;
                }
                let my_deps = deps.get(node).map(Vec::as_slice).unwrap_or_default();
                if let Some((bad, outcome)) = self.failed_dependency(my_deps) {
                    self.not_run(node, outcome, format!("{bad} did not succeed"))?;
                    wait.decide(rank, false, &mut look);
                    continue;
                }
                if !stopping {
                    if let Some(note) = self.runner.cut_off(node)? {
                        self.cut_off(node, note);
                        wait.decide(rank, true, &mut look);
                        continue;
                    }
                }
                ready.insert(rank);
            }
            if !stopping {
                let free = parallelism.saturating_sub(self.tasks.len());
                let starting: Vec<usize> = std::iter::from_fn(|| ready.pop_first())
                    .take(free)
                    .collect();
                let now: Vec<&R::Id> = starting.iter().map(|&r| wait.node(r)).collect();
                self.start(&now, stop)?;
                for rank in starting {
                    wait.decided[rank] = true;
                }
            }

            if self.tasks.is_empty() {
                let left: Vec<&R::Id> = wait.undecided().collect();
                if stopping {
                    // Whatever never started because of Ctrl-C or --fail-fast.
                    for node in left {
                        self.not_run(
                            node,
                            NodeOutcome::Cancelled,
                            "not started: the run was stopped".into(),
                        )?;
                    }
                } else {
                    // Nothing runs and nothing can start: a dependency never became ready.
                    for node in left {
                        self.not_run(
                            node,
                            NodeOutcome::Skipped,
                            "its dependencies never became ready".into(),
                        )?;
                    }
                }
                return Ok(());
            }

            let joined = tokio::select! {
                j = self.tasks.join_next_with_id() => j,
                _ = stop.cancelled(), if !stopping => {
                    // What is ready waits no more: it is looked at again, and cancelled.
                    look.append(&mut ready);
                    continue;
                }
            };
            let Some(joined) = joined else { continue };
            // Every other task that has ended too: their ends are recorded together.
            let mut group = vec![joined];
            while let Some(more) = self.tasks.try_join_next_with_id() {
                group.push(more);
            }
            for node in self.ended(group, stop) {
                let succeeded = matches!(
                    self.status.get(&node),
                    Some(NodeOutcome::Succeeded | NodeOutcome::UpToDate)
                );
                wait.ended(&node, succeeded, &mut look);
            }
        }
    }

    /// Records the tasks that ended together (one record for those that returned; a task
    /// that panicked is a failed node) and reports each.
    fn ended(
        &mut self,
        group: Vec<Result<(tokio::task::Id, R::Done), tokio::task::JoinError>>,
        stop: &CancellationToken,
    ) -> Vec<R::Id> {
        let mut returned = Vec::new();
        let mut done = Vec::new();
        let mut crashed = Vec::new();
        for joined in group {
            match joined {
                Ok((id, outcome)) => {
                    // Every task was started by `start`, which names it.
                    let Some((node, started)) = self.running.remove(&id) else {
                        continue;
                    };
                    returned.push((node.clone(), started));
                    done.push((node, outcome));
                }
                Err(e) => {
                    // A node task panicked: record the node as failed, never lose it.
                    let Some((node, started)) = self.running.remove(&e.id()) else {
                        continue;
                    };
                    let error = format!("imgraph crashed while running this node: {e}");
                    self.runner.crashed(&node, &error);
                    let finished = Finished {
                        outcome: NodeOutcome::Failed,
                        error: Some(error),
                    };
                    crashed.push((node, started, finished));
                }
            }
        }
        let mut recorded = if done.is_empty() {
            Vec::new()
        } else {
            self.runner.finish(done)
        }
        .into_iter();
        let ends = returned.into_iter().map(|(node, started)| {
            // The runner answers for every node; one it left out is not lost either.
            let finished = recorded.next().unwrap_or_else(|| Finished {
                outcome: NodeOutcome::Failed,
                error: Some("failed to record the outcome: the runner gave none".into()),
            });
            (node, started, finished)
        });
        let mut nodes = Vec::new();
        for (node, started, finished) in ends.collect::<Vec<_>>().into_iter().chain(crashed) {
            if finished.outcome == NodeOutcome::Failed && self.limits.fail_fast {
                stop.cancel();
            }
            nodes.push(node.clone());
            self.finished(node, started, finished);
        }
        nodes
    }

    /// The first dependency that did not succeed, and what that makes of the node.
    fn failed_dependency(&self, deps: &[R::Id]) -> Option<(R::Id, NodeOutcome)> {
        deps.iter().find_map(|d| match self.status.get(d) {
            Some(NodeOutcome::Cancelled) => Some((d.clone(), NodeOutcome::Cancelled)),
            Some(NodeOutcome::Failed | NodeOutcome::Skipped) => {
                Some((d.clone(), NodeOutcome::Skipped))
            }
            _ => None,
        })
    }

    /// Starts `nodes`, which became ready together: one call to the runner for all.
    fn start(&mut self, nodes: &[&R::Id], stop: &CancellationToken) -> Result<(), ExecError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let started = self.runner.start(nodes, stop)?;
        for (node, started) in nodes.iter().zip(started) {
            let node = (*node).clone();
            let _ = self.events.send(Event::NodeStarted {
                node: node.clone(),
                log_path: started.log_path.clone(),
            });
            self.log_paths.insert(node.clone(), started.log_path);
            self.status.insert(node.clone(), NodeOutcome::Running);
            let handle = self.tasks.spawn(started.task);
            self.running.insert(handle.id(), (node, Instant::now()));
        }
        Ok(())
    }

    /// Records a node that will not run (skipped or cancelled) everywhere at once.
    fn not_run(
        &mut self,
        node: &R::Id,
        outcome: NodeOutcome,
        cause: String,
    ) -> Result<(), ExecError> {
        self.runner.not_run(node, outcome, &cause)?;
        self.status.insert(node.clone(), outcome);
        self.reports
            .insert(node.clone(), NodeReport::not_run(node, outcome, &cause));
        let _ = self.events.send(Event::NodeSkipped {
            node: node.clone(),
            cause,
        });
        Ok(())
    }

    /// A node the runner recorded as up to date instead of running it.
    fn cut_off(&mut self, node: &R::Id, note: String) {
        self.status.insert(node.clone(), NodeOutcome::UpToDate);
        self.reports.insert(
            node.clone(),
            NodeReport::not_run(node, NodeOutcome::UpToDate, &note),
        );
        let _ = self.events.send(Event::NodeCutOff {
            node: node.clone(),
            note,
        });
    }

    /// Records a finished node task.
    fn finished(&mut self, node: R::Id, started: Instant, finished: Finished) {
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
