//! The scheduler's node runner for a plan: records each node in the state (see
//! [`super::record`]) and runs it through the stage logic (see [`super::stages`]), with
//! what this run made so far shared by its tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::events::NodeOutcome;
use super::record::Ended;
use super::scheduler::{Finished, NodeRunner, Started};
use super::{cutoff, record, sanitize, stages, ExecContext, ExecError, Fresh, Made};
use crate::graph::NodeId;
use crate::plan::PlannedNode;
use crate::state::RunId;

pub(super) struct PlanRunner<'a> {
    ctx: &'a ExecContext,
    run_id: RunId,
    nodes: HashMap<&'a NodeId, &'a PlannedNode>,
    fresh: Fresh,
    /// Node → its node run, for a task that panics.
    node_runs: HashMap<NodeId, i64>,
}

impl<'a> PlanRunner<'a> {
    pub fn new(ctx: &'a ExecContext, run_id: RunId, nodes: &[&'a PlannedNode]) -> Self {
        PlanRunner {
            ctx,
            run_id,
            nodes: nodes.iter().map(|n| (&n.id, *n)).collect(),
            fresh: Arc::new(Mutex::new(Made::default())),
            node_runs: HashMap::new(),
        }
    }

    fn node(&self, id: &NodeId) -> Result<&'a PlannedNode, ExecError> {
        self.nodes
            .get(id)
            .copied()
            .ok_or_else(|| ExecError::NotPlanned { node: id.clone() })
    }
}

impl NodeRunner for PlanRunner<'_> {
    type Id = NodeId;
    type Done = Ended;

    /// Early cutoff: records a cascade whose upstream builds all produced what their
    /// image already had as up to date (a success with the key it was planned with, the
    /// outputs of the version it would have made again, and a note), without running it.
    fn cut_off(&mut self, id: &NodeId) -> Result<Option<String>, ExecError> {
        let node = self.node(id)?;
        let Some(by) = cutoff::cut_off_cause(self.ctx, node, &self.fresh)? else {
            return Ok(None);
        };
        let note = format!("early cutoff: {by} produced the same artifact");
        let (recorded, outputs) = cutoff::cut_off_record(self.ctx, &self.fresh, node, &note)?;
        record::record_cut_off(self.ctx, self.run_id, &recorded, &outputs)?;
        if let Ok(mut f) = self.fresh.lock() {
            f.cut.insert(node.id.clone());
        }
        Ok(Some(note))
    }

    fn start(
        &mut self,
        ids: &[&NodeId],
        stop: &CancellationToken,
    ) -> Result<Vec<Started<Ended>>, ExecError> {
        let (ctx, run_id) = (self.ctx, self.run_id);
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            let node = self.node(id)?;
            let log = ctx
                .logs_dir(run_id)
                .join(format!("{}.log", sanitize(node.id.as_str())));
            // A delivery is recorded with the artifact it delivers, known only now when its
            // image was built in this run.
            nodes.push((stages::resolve_delivery(ctx, &self.fresh, node), log));
        }
        let node_runs = record::start_nodes(ctx, run_id, &nodes)?;
        let mut started = Vec::with_capacity(nodes.len());
        for ((n, log), node_run) in nodes.into_iter().zip(node_runs) {
            tracing::debug!(node = %n.id, key = %n.key, log = %log.display(), "node started");
            self.node_runs.insert(n.id.clone(), node_run);
            let (c, f, tok, l) = (ctx.clone(), self.fresh.clone(), stop.clone(), log.clone());
            let task = Box::pin(async move {
                let result = stages::run_node(&c, run_id, &n, &l, &f, &tok).await;
                record::ended(node_run, result, &tok)
            });
            started.push(Started {
                log_path: log,
                task,
            });
        }
        Ok(started)
    }

    fn finish(&mut self, done: Vec<(NodeId, Ended)>) -> Vec<Finished> {
        record::finish(self.ctx, done.into_iter().map(|(_, e)| e).collect())
    }

    fn not_run(&mut self, id: &NodeId, outcome: NodeOutcome, cause: &str) -> Result<(), ExecError> {
        let node = self.node(id)?;
        record::record_not_run(self.ctx, self.run_id, node, outcome, cause)
    }

    fn crashed(&mut self, id: &NodeId, error: &str) {
        // Unknown only if the task never started, and then there is no record to end.
        if let Some(node_run) = self.node_runs.get(id) {
            record::record_crash(self.ctx, *node_run, error);
        }
    }
}
