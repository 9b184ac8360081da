//! Recording: what the executor writes to the state for each node (its start, its end, a
//! node that did not run) and the typed outputs a node leaves in its record.
//!
//! Each record is its own transaction, written as it happens, so a crash at any point
//! leaves a consistent history. Outputs are JSON read back by the planner and by later
//! stages: a build's [`BuildOutputs`], and a test's, publish's or delivery's
//! [`StageOutputs`] (the version it worked on).

use std::path::Path;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::events::NodeOutcome;
use super::scheduler::Finished;
use super::{ExecContext, ExecError};
use crate::plan::{BuildOutputs, PlannedNode};
use crate::state::{NodeRunId, NodeStart, NodeStatus, RunId, State, StateError};
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

/// Records that `node` starts, with its log; returns its node run id.
pub(super) fn start_node(
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

/// Records the node's end in the state and says how it ended.
pub(super) fn finish(
    ctx: &ExecContext,
    node_run: i64,
    result: Result<Option<String>, ExecError>,
    cancel: &CancellationToken,
) -> Finished {
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
    match recorded {
        Ok(()) => Finished { outcome, error },
        Err(e) => Finished {
            outcome: NodeOutcome::Failed,
            error: Some(format!("failed to record the outcome: {}", error_chain(&e))),
        },
    }
}
