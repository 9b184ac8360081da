//! The planner: pure `(project, graph, facts, options) → Plan`.
//!
//! Every stage node gets a key: blake3 over its id, its manifest digest (the content of
//! every leaf input), its canonical config stanza and the *output keys* of the nodes it
//! needs. A node's output key is its effective key (new key if it runs, last built key if
//! it is up to date or deferred), except for `publish:` nodes, whose output key is their
//! build's: re-verifying an image (a changed test) re-runs its tests and publish but does
//! not rebuild or redeliver what was made from the same artifact.
//!
//! The decision compares the node with its last success (or, when it never succeeded, its
//! last failure) and explains the difference as [`Reason`]s, file by file. Rollup inputs
//! that changed alone make a node `deferred` until a `--rollup` run or `max-age`. Nothing
//! here touches the disk, the network or the clock: the caller gathers [`Facts`], and
//! the executor records what ran ([`crate::exec::record_finished`] writes a node's record
//! without running it, for early cutoffs, recovery and seeded history).
//!
//! By job: `decide` walks the graph in topological order and sums up; `node` decides one
//! node against its history ([`Baseline`]) and settles its action; `keys` makes keys and
//! stanzas; `diff` compares manifests, package lists and stanzas; `revoked` and `cutoff`
//! adjust the decisions for revoked versions and plan early cutoffs; `reason` holds the
//! [`Action`] and [`Reason`] data. `tests` runs the planner over hand-built facts.

pub mod retention;
pub mod saved;
pub mod why;

mod cutoff;
mod decide;
mod diff;
mod keys;
mod node;
mod reason;
mod revoked;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::graph::{NodeId, Stage};
use crate::hash::Manifest;
use crate::state::{NodeHistory, NodeRecord};

pub use decide::decide;
pub use diff::{diff_fields, diff_manifests, package_changes, EntryDiff};
pub use keys::{node_key, stanza_of, UpstreamEntry, UpstreamKeys, DELIVERED};
pub use node::Baseline;
pub use reason::{Action, Change, InputChange, ModeChange, PackageChange, Reason};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedNode {
    pub id: NodeId,
    pub stage: Stage,
    pub image: Option<String>,
    pub suite: Option<String>,
    pub environment: Option<String>,
    pub action: Action,
    pub key: String,
    pub previous_key: Option<String>,
    pub reasons: Vec<Reason>,
    /// True when the node runs only because something it needs runs.
    pub cascade: bool,
    /// Early cutoff: the local builds running in this apply whose producing the same
    /// artifact as their image's newest Ready version would let this cascade be skipped
    /// (recorded up to date). Empty for nodes that run for a reason of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut_off_by: Vec<NodeId>,
    /// What the executor records when it runs this node. Shared with [`Facts::manifests`]
    /// (a 20,000-file node's manifest is not copied into the plan).
    #[serde(skip)]
    pub manifest: Arc<Manifest>,
    #[serde(skip)]
    pub stanza: String,
    /// Upstream node → output key, as hashed into `key`.
    #[serde(skip)]
    pub upstream: UpstreamKeys,
    /// The key downstream nodes see after this apply.
    #[serde(skip)]
    pub effective_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceView {
    pub name: String,
    pub id: String,
    /// The id recorded by the last successful build from this source, when different.
    pub previous_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub run: usize,
    pub deferred: usize,
    pub up_to_date: usize,
    /// Running nodes with a reason of their own.
    pub causes: usize,
    /// Running nodes that run only because of an upstream node.
    pub cascades: usize,
    /// Nodes left out by `--target`.
    pub not_selected: usize,
    /// Up-to-date images whose tags are updated in place.
    pub update_tags: usize,
    /// Cascades an early cutoff may skip (see [`PlannedNode::cut_off_by`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub may_cut_off: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub rollup: bool,
    pub targets: Vec<String>,
    pub forced: Vec<String>,
    pub sources: Vec<SourceView>,
    pub nodes: Vec<PlannedNode>,
    pub summary: Summary,
}

impl PlannedNode {
    /// This delivery with the artifact it actually delivers in its key (a no-op for other
    /// stages): what the executor records, so that the next plan sees it up to date.
    pub fn for_artifact(&self, built: &BuildOutputs) -> PlannedNode {
        let mut node = self.clone();
        if node.stage == Stage::Deliver {
            node.upstream = BTreeMap::from([(UpstreamEntry::Delivered, built.identity())]);
            node.key = node_key(&node.id, &node.manifest, &node.stanza, &node.upstream);
        }
        node
    }

    /// The manifest, upstream keys and reasons as the state records them (JSON text).
    pub fn record_fields(&self) -> (String, String, String) {
        (
            serde_json::to_string(&*self.manifest).unwrap_or_default(),
            serde_json::to_string(&self.upstream).unwrap_or_default(),
            serde_json::to_string(&self.reasons).unwrap_or_default(),
        )
    }
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.summary.run > 0 || self.summary.update_tags > 0
    }
    pub fn node(&self, id: &NodeId) -> Option<&PlannedNode> {
        self.nodes.iter().find(|n| n.id == *id)
    }
}

#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub rollup: bool,
    pub targets: Vec<String>,
    pub force: Vec<String>,
}

/// Everything the planner needs from the world, gathered beforehand.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Manifests of `build:` and `test:` nodes, by node id (others have none).
    pub manifests: HashMap<NodeId, Arc<Manifest>>,
    /// Source name → resolved id.
    pub sources: BTreeMap<String, String>,
    /// Node id → last success / last attempt.
    pub history: HashMap<NodeId, NodeHistory>,
    /// Artifact ids that were recorded but no longer exist.
    pub missing_artifacts: HashSet<String>,
    /// Revoked versions: image → version → reason.
    pub revoked: HashMap<String, BTreeMap<String, String>>,
    /// Images whose current version was revoked itself: the build record of the image's
    /// newest good (Ready) version, which the build goes back to.
    pub fallback: HashMap<String, NodeRecord>,
    pub now_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error("source `{0}` was not resolved")]
    UnresolvedSource(String),
    /// An image given to `--force` that the project does not have; then what to say instead.
    #[error("unknown image `{0}` given to --force: {1}")]
    UnknownForced(String, String),
    /// A recorded manifest or upstream-key list that does not parse: the state file was
    /// changed outside imgraph. Comparing against nothing would read as "every input
    /// added" and hide the damage.
    #[error(
        "failed to read the recorded {what} of `{node}` (run {run}): the state file is damaged"
    )]
    CorruptRecord {
        node: NodeId,
        run: crate::state::RunId,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// What a successful `build:` node records in its outputs (the executor writes it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildOutputs {
    pub artifact_id: String,
    pub version: String,
    /// When the version was built (max-age counts from here, not from when its record
    /// was last written). Absent in records of older imgraph versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at_ms: Option<i64>,
    /// The image's tags as applied to this version; absent when never recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

impl BuildOutputs {
    /// What a build node's record says it made: `None` when the record has no outputs
    /// or they are not a build's.
    pub fn of(record: &NodeRecord) -> Option<BuildOutputs> {
        serde_json::from_str(record.outputs_json.as_deref()?).ok()
    }

    /// What a build node last made: its last success's outputs.
    pub fn last(history: &NodeHistory) -> Option<BuildOutputs> {
        Self::of(history.last_success.as_ref()?)
    }

    /// The same version of the same artifact (tags and times aside).
    pub fn same_version(&self, other: &BuildOutputs) -> bool {
        self.artifact_id == other.artifact_id && self.version == other.version
    }

    /// `ARTIFACT@VERSION`: what a delivery's key holds (see [`DELIVERED`]).
    pub fn identity(&self) -> String {
        format!("{}@{}", self.artifact_id, self.version)
    }
}
