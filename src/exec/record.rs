//! Recording: what the executor writes to the state for each node (its start, its end, a
//! node that did not run) and the typed outputs a node leaves in its record.
//!
//! Records are written as they happen, so a crash at any point leaves a consistent
//! history. Nodes that become ready together are recorded as started in one transaction,
//! and nodes whose work returned together as ended in one: a group costs one write (and,
//! with a journal, one append) instead of one per node. Neither weakens what a crash
//! keeps: a node's end is committed before any node that needs it starts (the scheduler
//! records a group before it looks for what became ready), and a run killed before a
//! group's commit loses only the records of nodes that were still running as far as the
//! state knows, as a kill during a single record always could.
//!
//! Outputs are JSON read back by the planner and by later stages: a build's
//! [`BuildOutputs`], and a test's, publish's or delivery's [`StageOutputs`] (the version
//! it worked on).

use std::path::PathBuf;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::events::NodeOutcome;
use super::scheduler::Finished;
use super::{ExecContext, ExecError};
use crate::plan::{BuildOutputs, PlannedNode};
use crate::state::{NodeEnd, NodeRunId, NodeStart, NodeStatus, RunId, State, StateError};
use crate::text::error_chain;

/// The options a run is recorded with. Fields are in name order, as the records have
/// always listed them.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RunOptions<'a> {
    pub fail_fast: bool,
    pub force: &'a [String],
    pub parallelism: usize,
    pub rollup: bool,
    pub targets: &'a [String],
}

impl RunOptions<'_> {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a test, publish or delivery records: the version of the image it worked on.
/// Fields are in name order, as the records have always listed them.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StageOutputs<'a> {
    pub artifact_id: &'a str,
    /// Why the node was recorded without running (early cutoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'a str>,
    /// `Ready` for a publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
    pub version: &'a str,
}

impl<'a> StageOutputs<'a> {
    pub fn of(built: &'a BuildOutputs) -> Self {
        StageOutputs {
            artifact_id: &built.artifact_id,
            note: None,
            status: None,
            version: &built.version,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A build's outputs with a note saying why it made no new version (early cutoff, or going
/// back from a revoked version).
#[derive(Debug, Clone, Serialize)]
pub(super) struct NotedBuild<'a> {
    #[serde(flatten)]
    pub outputs: &'a BuildOutputs,
    pub note: &'a str,
}

impl NotedBuild<'_> {
    /// Keys in name order, as these records have always listed them.
    pub fn json(&self) -> String {
        serde_json::to_value(self)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }
}

/// A build's outputs as the build node records them.
pub(super) fn build_json(outputs: &BuildOutputs) -> String {
    serde_json::to_string(outputs).unwrap_or_default()
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

/// Records that `nodes` (each with its log) start, in one transaction; returns their node
/// run ids in order.
pub(super) fn start_nodes(
    ctx: &ExecContext,
    run: RunId,
    nodes: &[(PlannedNode, PathBuf)],
) -> Result<Vec<i64>, ExecError> {
    let fields: Vec<_> = nodes.iter().map(|(n, _)| n.record_fields()).collect();
    let logs: Vec<_> = nodes.iter().map(|(_, l)| l.to_string_lossy()).collect();
    let starts: Vec<NodeStart> = nodes
        .iter()
        .zip(&fields)
        .zip(&logs)
        .map(|(((node, _), (m, u, r)), log)| node_start(node, m, u, r, Some(log)))
        .collect();
    let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
    Ok(st.start_nodes(run, &starts)?)
}

/// Records a node that will not run (skipped or cancelled) with its cause.
pub(super) fn record_not_run(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    outcome: NodeOutcome,
    cause: &str,
) -> Result<(), ExecError> {
    let status = match outcome {
        NodeOutcome::Cancelled => NodeStatus::Cancelled,
        _ => NodeStatus::Skipped,
    };
    let (m, u, r) = node.record_fields();
    let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
    st.record_not_run(run, &node_start(node, &m, &u, &r, None), status, cause)?;
    Ok(())
}

/// Records a cut-off node as a success with the key it was planned with and `outputs`.
pub(super) fn record_cut_off(
    ctx: &ExecContext,
    run: RunId,
    node: &PlannedNode,
    outputs: &str,
) -> Result<(), ExecError> {
    let st = ctx.state.lock().map_err(|_| ExecError::Poisoned)?;
    record_finished(&st, run, node, NodeStatus::Succeeded, Some(outputs), None)?;
    Ok(())
}

/// Records `node` as started and at once finished with `status`, as an apply records it:
/// for a node that did not run (an early cutoff), for versions recovered from a
/// provider's records, and for history seeded by tests and benches.
pub fn record_finished(
    state: &State,
    run: RunId,
    node: &PlannedNode,
    status: NodeStatus,
    outputs: Option<&str>,
    error: Option<&str>,
) -> Result<NodeRunId, StateError> {
    let (m, u, r) = node.record_fields();
    let id = state.start_node(run, &node_start(node, &m, &u, &r, None))?;
    state.finish_node(id, status, outputs, error)?;
    Ok(id)
}

/// Records a node whose task panicked as failed (best effort).
pub(super) fn record_crash(ctx: &ExecContext, node_run: i64, error: &str) {
    if let Ok(st) = ctx.state.lock() {
        let _ = st.finish_node(node_run, NodeStatus::Failed, None, Some(error));
    }
}

/// How a node's work ended, waiting to be recorded with the others that ended with it.
pub(crate) struct Ended {
    node_run: i64,
    outcome: NodeOutcome,
    status: NodeStatus,
    outputs: Option<String>,
    error: Option<String>,
}

/// What the work of node run `node_run` returned, as it will be recorded: cancelled when
/// it failed after `cancel` was cancelled.
pub(super) fn ended(
    node_run: i64,
    result: Result<Option<String>, ExecError>,
    cancel: &CancellationToken,
) -> Ended {
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
    Ended {
        node_run,
        outcome,
        status,
        outputs,
        error,
    }
}

/// Records the ends of nodes whose work returned together, in one transaction, and says
/// how each ended, in order. When the record fails, each of them failed.
pub(super) fn finish(ctx: &ExecContext, ended: Vec<Ended>) -> Vec<Finished> {
    let ends: Vec<NodeEnd> = ended
        .iter()
        .map(|e| NodeEnd {
            id: e.node_run,
            status: e.status,
            outputs_json: e.outputs.as_deref(),
            error: e.error.as_deref(),
        })
        .collect();
    match ctx.lock().and_then(|st| Ok(st.finish_nodes(&ends)?)) {
        Ok(()) => ended
            .into_iter()
            .map(|e| Finished {
                outcome: e.outcome,
                error: e.error,
            })
            .collect(),
        Err(e) => {
            let error = format!("failed to record the outcome: {}", error_chain(&e));
            ended
                .iter()
                .map(|_| Finished {
                    outcome: NodeOutcome::Failed,
                    error: Some(error.clone()),
                })
                .collect()
        }
    }
}
