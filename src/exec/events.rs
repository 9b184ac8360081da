//! What the executor tells its reporters. `apply --json` writes each event as one line
//! of NDJSON, wrapped with a format version and a timestamp.

use std::path::PathBuf;

use serde::Serialize;

use crate::graph::NodeId;
use crate::state::{RunId, RunStatus};

pub const EVENT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeOutcome {
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    /// Not run: an early cutoff found nothing new upstream (recorded up to date).
    UpToDate,
}

impl NodeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOutcome::Running => "running",
            NodeOutcome::Succeeded => "succeeded",
            NodeOutcome::Failed => "failed",
            NodeOutcome::Skipped => "skipped",
            NodeOutcome::Cancelled => "cancelled",
            NodeOutcome::UpToDate => "up-to-date",
        }
    }
}

/// How one node ended. Nodes are named by [`NodeId`]; the scheduler's own tests name them
/// otherwise (`N`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport<N = NodeId> {
    pub id: N,
    pub outcome: NodeOutcome,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub log_path: Option<PathBuf>,
}

impl<N: Clone> NodeReport<N> {
    pub fn not_run(id: &N, outcome: NodeOutcome, cause: &str) -> Self {
        NodeReport {
            id: id.clone(),
            outcome,
            duration_ms: None,
            error: Some(cause.to_string()),
            log_path: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary<N = NodeId> {
    pub run_id: RunId,
    #[serde(serialize_with = "run_status")]
    pub status: RunStatus,
    pub nodes: Vec<NodeReport<N>>,
    pub duration_ms: u64,
    pub interrupted: bool,
}

impl<N> RunSummary<N> {
    pub fn count(&self, outcome: NodeOutcome) -> usize {
        self.nodes.iter().filter(|n| n.outcome == outcome).count()
    }
}

fn run_status<S: serde::Serializer>(s: &RunStatus, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// One event. Nodes are named by [`NodeId`]; the scheduler's own tests name them
/// otherwise (`N`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event<N = NodeId> {
    RunStarted {
        /// 0 ([`super::NO_RUN`]) when nothing runs: no run is recorded then.
        run_id: RunId,
        nodes: Vec<N>,
        parallelism: usize,
        /// The plan's counts, as `plan` prints them.
        summary: crate::plan::Summary,
    },
    NodeStarted {
        node: N,
        log_path: PathBuf,
    },
    NodeFinished {
        node: N,
        outcome: NodeOutcome,
        duration_ms: u64,
        error: Option<String>,
        log_path: Option<PathBuf>,
    },
    NodeSkipped {
        node: N,
        cause: String,
    },
    /// A planned cascade not run: the builds it depended on produced the artifacts their
    /// images already had (early cutoff). Recorded up to date.
    NodeCutOff {
        node: N,
        note: String,
    },
    /// Leftovers of a killed run found in the ledger and destroyed. `node` is the ledger's
    /// holder as recorded: a stage node's id, or `probe:IMAGE/NAME` for an image probe.
    LeftoverDestroyed {
        resource: String,
        kind: String,
        node: String,
    },
    RunFinished(RunSummary<N>),
}

/// One NDJSON line: `{"v":1,"ts_ms":…,"event":"node-started",…}`.
pub fn to_ndjson(event: &Event, ts_ms: i64) -> String {
    let mut value = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("v".into(), EVENT_FORMAT_VERSION.into());
        map.insert("ts_ms".into(), ts_ms.into());
    }
    value.to_string()
}
