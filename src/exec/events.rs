//! What the executor tells its reporters. `apply --json` writes each event as one line
//! of NDJSON, wrapped with a format version and a timestamp.

use std::path::PathBuf;

use serde::Serialize;

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

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: String,
    pub outcome: NodeOutcome,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub log_path: Option<PathBuf>,
}

impl NodeReport {
    pub fn not_run(id: &str, outcome: NodeOutcome, cause: &str) -> Self {
        NodeReport {
            id: id.to_string(),
            outcome,
            duration_ms: None,
            error: Some(cause.to_string()),
            log_path: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: RunId,
    #[serde(serialize_with = "run_status")]
    pub status: RunStatus,
    pub nodes: Vec<NodeReport>,
    pub duration_ms: u64,
    pub interrupted: bool,
}

impl RunSummary {
    pub fn count(&self, outcome: NodeOutcome) -> usize {
        self.nodes.iter().filter(|n| n.outcome == outcome).count()
    }
}

fn run_status<S: serde::Serializer>(s: &RunStatus, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        /// 0 ([`super::NO_RUN`]) when nothing runs: no run is recorded then.
        run_id: RunId,
        nodes: Vec<String>,
        parallelism: usize,
        /// The plan's counts, as `plan` prints them.
        summary: crate::plan::Summary,
    },
    NodeStarted {
        node: String,
        log_path: PathBuf,
    },
    NodeFinished {
        node: String,
        outcome: NodeOutcome,
        duration_ms: u64,
        error: Option<String>,
        log_path: Option<PathBuf>,
    },
    NodeSkipped {
        node: String,
        cause: String,
    },
    /// A planned cascade not run: the builds it depended on produced the artifacts their
    /// images already had (early cutoff). Recorded up to date.
    NodeCutOff {
        node: String,
        note: String,
    },
    /// Leftovers of a killed run found in the ledger and destroyed.
    LeftoverDestroyed {
        resource: String,
        kind: String,
        node: String,
    },
    RunFinished(RunSummary),
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
