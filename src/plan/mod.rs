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
//! here touches the disk, the network or the clock: the caller gathers [`Facts`].

pub mod retention;
pub mod saved;
pub mod why;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::config::model::{self, Project, Trigger};
use crate::graph::{Stage, StageGraph};
use crate::hash::{digest_parts, Manifest, Via};
use crate::state::{NodeHistory, NodeRecord, NodeStatus};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Run,
    Deferred,
    UpToDate,
    /// A `build:` node whose image is up to date but whose tags changed: the current
    /// version's tags are updated in place (AMI tags, the local registry), nothing is
    /// rebuilt and nothing downstream runs.
    UpdateTags,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Deferred => "deferred",
            Action::UpToDate => "up-to-date",
            Action::UpdateTags => "update-tags",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Added,
    Removed,
    /// The content (or link target, probe output, variable value) changed; its mode may
    /// have changed too (see the reason's `mode`).
    Modified,
    /// Only the permission bits changed.
    Mode,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
            Change::Mode => "mode",
        }
    }
}

/// Permission bits before and after, as four octal digits (`"0644"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    pub old: String,
    pub new: String,
}

impl ModeChange {
    fn of(old: Option<u32>, new: Option<u32>) -> Option<ModeChange> {
        match (old, new) {
            (Some(o), Some(n)) if o != n => Some(ModeChange {
                old: format!("{o:04o}"),
                new: format!("{n:04o}"),
            }),
            _ => None,
        }
    }
}

/// One changed entry between two manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDiff {
    pub path: String,
    pub change: Change,
    /// The trigger of the entry now (of the old entry when it was removed).
    pub trigger: Trigger,
    pub via: Via,
    pub mode: Option<ModeChange>,
}

/// Why a node runs (or waits). One renderer turns each into a sentence; `plan --json`
/// prints them as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// Never built (or never succeeded) before.
    New,
    /// An input changed. With trigger `rollup` on a deferred node, a pending change.
    InputChanged {
        path: String,
        change: Change,
        trigger: Trigger,
        /// How the path is an input, when not declared (`run`: named in a command).
        #[serde(default, skip_serializing_if = "Via::is_input")]
        via: Via,
        /// Old and new permission bits, when they changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<ModeChange>,
        /// For a package list: which packages came and went.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packages: Option<PackageChange>,
    },
    /// The node's canonical config stanza changed; `fields` names the parts.
    ConfigChanged { fields: Vec<String> },
    /// The origin image resolved to another id.
    SourceChanged {
        source: String,
        old: String,
        new: String,
    },
    /// A node this one needs runs or now yields a different result.
    UpstreamChanged { node: String },
    /// The last build is older than the image's `max-age`.
    MaxAge { built_at_ms: i64, max_age_secs: u64 },
    /// A rollup input changed and this is a roll-up run.
    Rollup {
        path: String,
        change: Change,
        #[serde(default, skip_serializing_if = "Via::is_input")]
        via: Via,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<ModeChange>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packages: Option<PackageChange>,
    },
    /// The last run with this very key failed.
    PreviousFailure { error: Option<String> },
    /// The recorded artifact no longer exists.
    ArtifactMissing { artifact: String },
    /// `--force` named this image.
    Forced,
    /// The image's tags differ from those its current version carries (tag keys; values
    /// are in the config). `unknown` when the version's tags were never recorded.
    TagsChanged {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unknown: bool,
    },
    /// A revoked version (`imgraph revoke`): a build whose current version it is (rolled
    /// back to `back_to`, the image's newest good version, when it was revoked itself and
    /// has one; else rebuilt), or a delivery whose environment holds it.
    Revoked {
        image: String,
        version: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        back_to: Option<String>,
    },
    /// A delivery: the image's current version is not the one this environment last got
    /// (`previous`, when known) — e.g. an apply that stopped after publish.
    NewVersion {
        image: String,
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
}

impl Reason {
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::InputChanged { .. } => "input-changed",
            Reason::ConfigChanged { .. } => "config-changed",
            Reason::SourceChanged { .. } => "source-changed",
            Reason::UpstreamChanged { .. } => "upstream-changed",
            Reason::MaxAge { .. } => "max-age",
            Reason::Rollup { .. } => "rollup",
            Reason::PreviousFailure { .. } => "previous-failure",
            Reason::ArtifactMissing { .. } => "artifact-missing",
            Reason::Forced => "forced",
            Reason::NewVersion { .. } => "new-version",
            Reason::TagsChanged { .. } => "tags-changed",
            Reason::Revoked { .. } => "revoked",
        }
    }
}

/// The packages a package list gained and lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedNode {
    pub id: String,
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
    pub cut_off_by: Vec<String>,
    /// What the executor records when it runs this node.
    #[serde(skip)]
    pub manifest: Manifest,
    #[serde(skip)]
    pub stanza: String,
    /// Upstream node id → output key, as hashed into `key`.
    #[serde(skip)]
    pub upstream: BTreeMap<String, String>,
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
            node.upstream = BTreeMap::from([(DELIVERED.to_string(), built.identity())]);
            node.key = node_key(&node.id, &node.manifest, &node.stanza, &node.upstream);
        }
        node
    }

    /// Records this node as started and at once finished with `status`: what an apply
    /// records, for recovery from tags, seeding history in tests and benches.
    pub fn record_finished(
        &self,
        state: &crate::state::State,
        run: crate::state::RunId,
        status: NodeStatus,
        outputs: Option<&str>,
        error: Option<&str>,
    ) -> Result<crate::state::NodeRunId, crate::state::StateError> {
        let (manifest, upstream, reasons) = self.record_fields();
        let id = state.start_node(
            run,
            &crate::state::NodeStart {
                node_id: &self.id,
                key: &self.key,
                manifest_json: &manifest,
                stanza: &self.stanza,
                upstream_json: &upstream,
                reasons_json: &reasons,
                log_path: None,
            },
        )?;
        state.finish_node(id, status, outputs, error)?;
        Ok(id)
    }

    /// The manifest, upstream keys and reasons as the state records them (JSON text).
    pub fn record_fields(&self) -> (String, String, String) {
        (
            serde_json::to_string(&self.manifest).unwrap_or_default(),
            serde_json::to_string(&self.upstream).unwrap_or_default(),
            serde_json::to_string(&self.reasons).unwrap_or_default(),
        )
    }
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.summary.run > 0 || self.summary.update_tags > 0
    }
    pub fn node(&self, id: &str) -> Option<&PlannedNode> {
        self.nodes.iter().find(|n| n.id == id)
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
    pub manifests: HashMap<String, Manifest>,
    /// Source name → resolved id.
    pub sources: BTreeMap<String, String>,
    /// Node id → last success / last attempt.
    pub history: HashMap<String, NodeHistory>,
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
        node: String,
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
    /// The same version of the same artifact (tags and times aside).
    pub fn same_version(&self, other: &BuildOutputs) -> bool {
        self.artifact_id == other.artifact_id && self.version == other.version
    }

    /// `ARTIFACT@VERSION`: what a delivery's key holds (see [`DELIVERED`]).
    pub fn identity(&self) -> String {
        format!("{}@{}", self.artifact_id, self.version)
    }
}

/// The one upstream entry of a `deliver:` node: the artifact it delivers, as
/// `ARTIFACT@VERSION` of the image's current build, or `pending:BUILD-KEY` when the build
/// runs in this apply and its artifact is not known yet. A delivery therefore runs
/// whenever the image's current version changes, whatever the build's key (a rebuild
/// with the same key makes a new version too), and never because another environment's
/// delivery changed: `after` orders deliveries, it does not enter their keys. The
/// executor replaces a pending value by the real artifact before it records the node
/// ([`PlannedNode::for_artifact`]), so the next plan compares like with like.
pub const DELIVERED: &str = "artifact";
const PENDING: &str = "pending:";

/// The image's current build as the history records it: its last successful build.
fn current_build(facts: &Facts, image: &str) -> Option<BuildOutputs> {
    facts
        .history
        .get(&crate::graph::build_id(image))?
        .last_success
        .as_ref()?
        .outputs_json
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
}

/// How the image's configured tags differ from those its current version carries, if
/// they do. A version whose tags were never recorded gets them when the config has any.
fn tags_change(project: &Project, facts: &Facts, image: &str) -> Option<Reason> {
    let wanted = &project.image(image)?.tags;
    let current = current_build(facts, image)?;
    let Some(have) = current.tags else {
        return (!wanted.is_empty()).then(|| Reason::TagsChanged {
            added: wanted.keys().cloned().collect(),
            removed: Vec::new(),
            changed: Vec::new(),
            unknown: true,
        });
    };
    let added: Vec<String> = wanted
        .keys()
        .filter(|k| !have.contains_key(*k))
        .cloned()
        .collect();
    let removed: Vec<String> = have
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    let changed: Vec<String> = wanted
        .iter()
        .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (!(added.is_empty() && removed.is_empty() && changed.is_empty())).then_some(
        Reason::TagsChanged {
            added,
            removed,
            changed,
            unknown: false,
        },
    )
}

/// The version part of a [`DELIVERED`] value, when it names one.
fn delivered_version(value: &str) -> Option<String> {
    (!value.starts_with(PENDING))
        .then(|| value.rsplit_once('@').map(|(_, v)| v.to_string()))
        .flatten()
}

/// The canonical stanza of any node, from the config model.
pub fn stanza_of(project: &Project, graph: &StageGraph, idx: NodeIndex) -> String {
    let n = graph.node(idx);
    let image = n.image.as_deref().and_then(|i| project.image(i));
    match (n.stage, image) {
        (Stage::Build, Some(img)) => model::canonical_build(project, img),
        (Stage::Test, Some(img)) => n
            .suite
            .as_deref()
            .and_then(|t| img.suite(t))
            .map(model::canonical_test)
            .unwrap_or_default(),
        (Stage::Publish, Some(img)) => {
            let suites: Vec<&str> = img.tests.iter().map(|t| t.name.as_str()).collect();
            serde_json::json!({"v": 1, "suites": suites}).to_string()
        }
        (Stage::Deliver, Some(_)) => n
            .environment
            .as_deref()
            .and_then(|e| project.environment(e))
            .and_then(|env| {
                env.deliveries
                    .iter()
                    .find(|d| Some(&d.image) == n.image.as_ref())
                    .map(|d| model::canonical_delivery(env, d))
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Decides every selected node's action and reasons.
pub fn decide(
    project: &Project,
    graph: &StageGraph,
    facts: &Facts,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    for f in &options.force {
        if project.image(f).is_none() {
            let names = project.images.iter().map(|i| i.name.as_str());
            let hint = match crate::config::did_you_mean(f, names) {
                Some(close) => format!("did you mean `{close}`?"),
                None => "name an image".into(),
            };
            return Err(PlanError::UnknownForced(f.clone(), hint));
        }
    }
    let selected: BTreeSet<NodeIndex> = if options.targets.is_empty() {
        graph.topo_order().iter().copied().collect()
    } else {
        graph.select(&options.targets)?
    };

    let mut decided: HashMap<NodeIndex, PlannedNode> = HashMap::new();
    let mut output_keys: HashMap<NodeIndex, String> = HashMap::new();
    let mut new_output: HashSet<NodeIndex> = HashSet::new();
    let mut sources = Vec::new();
    let mut order = Vec::new();

    for &idx in graph.topo_order() {
        if !selected.contains(&idx) {
            continue;
        }
        let node = graph.node(idx);
        if node.stage == Stage::Source {
            let name = node.source.clone().unwrap_or_default();
            let id = facts
                .sources
                .get(&name)
                .cloned()
                .ok_or_else(|| PlanError::UnresolvedSource(name.clone()))?;
            output_keys.insert(idx, id.clone());
            sources.push(SourceView {
                name,
                id,
                previous_id: None,
            });
            continue;
        }

        let upstream_idx = graph.upstream(idx);
        let upstream: BTreeMap<String, String> = if node.stage == Stage::Deliver {
            let image = node.image.as_deref().unwrap_or_default();
            let build = graph
                .index_of(&crate::graph::build_id(image))
                .and_then(|b| decided.get(&b));
            let value = match build {
                Some(b) if b.action == Action::Run => format!("{PENDING}{}", b.key),
                _ => current_build(facts, image)
                    .map(|o| o.identity())
                    .unwrap_or_default(),
            };
            BTreeMap::from([(DELIVERED.to_string(), value)])
        } else {
            upstream_idx
                .iter()
                .map(|&u| {
                    let k = output_keys.get(&u).cloned().unwrap_or_default();
                    (graph.node(u).id.clone(), k)
                })
                .collect()
        };
        let manifest = facts.manifests.get(&node.id).cloned().unwrap_or_default();
        let stanza = stanza_of(project, graph, idx);
        let key = node_key(&node.id, &manifest, &stanza, &upstream);
        let history = facts.history.get(&node.id);

        let mut planned = PlannedNode {
            id: node.id.clone(),
            stage: node.stage,
            image: node.image.clone(),
            suite: node.suite.clone(),
            environment: node.environment.clone(),
            action: Action::UpToDate,
            key: key.clone(),
            previous_key: history
                .and_then(|h| h.last_success.as_ref())
                .map(|r| r.key.clone()),
            reasons: Vec::new(),
            cascade: false,
            cut_off_by: Vec::new(),
            manifest,
            stanza,
            upstream,
            effective_key: String::new(),
        };
        // Forcing an image rebuilds it; its tests and publish follow as cascades.
        let forced = node
            .image
            .as_ref()
            .is_some_and(|i| options.force.contains(i))
            && node.stage == Stage::Build;
        let upstream_news: Vec<String> = upstream_idx
            .iter()
            .filter(|u| new_output.contains(u))
            .map(|&u| graph.node(u).id.clone())
            .collect();
        let ctx = DecideCtx {
            project,
            facts,
            options,
            forced,
            upstream_news,
        };
        ctx.decide_node(&mut planned, history, &mut sources)?;
        apply_revocations(facts, &mut planned);
        if planned.stage == Stage::Build && planned.action == Action::UpToDate {
            if let Some(change) = node
                .image
                .as_deref()
                .and_then(|i| tags_change(project, facts, i))
            {
                planned.action = Action::UpdateTags;
                planned.reasons = vec![change];
            }
        }

        planned.effective_key = match planned.action {
            Action::Run => key.clone(),
            _ => planned.previous_key.clone().unwrap_or_else(|| key.clone()),
        };
        // Publish hands its build's artifact on (see the module docs): its output key is
        // the build's, and it yields something new only when the build does.
        let build = node
            .image
            .as_deref()
            .filter(|_| node.stage == Stage::Publish)
            .and_then(|i| graph.index_of(&crate::graph::build_id(i)));
        let output = build
            .and_then(|b| output_keys.get(&b).cloned())
            .unwrap_or_else(|| planned.effective_key.clone());
        let yields_new = planned.action == Action::Run
            && match node.stage {
                Stage::Publish => build.is_some_and(|b| new_output.contains(&b)),
                Stage::Test => false,
                _ => true,
            };
        if yields_new {
            new_output.insert(idx);
        }
        output_keys.insert(idx, output);
        order.push(idx);
        decided.insert(idx, planned);
    }

    let mut nodes: Vec<PlannedNode> = order
        .into_iter()
        .filter_map(|i| decided.remove(&i))
        .collect();
    let mut summary = Summary {
        not_selected: graph
            .graph
            .node_indices()
            .filter(|i| graph.node(*i).stage != Stage::Source && !selected.contains(i))
            .count(),
        ..Summary::default()
    };
    for n in &mut nodes {
        match n.action {
            Action::Run => {
                summary.run += 1;
                // A cascade runs because something it needs runs; pending rollup changes
                // it picks up on the way do not make it a cause of its own.
                n.cascade = n
                    .reasons
                    .iter()
                    .any(|r| matches!(r, Reason::UpstreamChanged { .. }))
                    && n.reasons.iter().all(|r| {
                        matches!(
                            r,
                            Reason::UpstreamChanged { .. }
                                | Reason::InputChanged {
                                    trigger: Trigger::Rollup,
                                    ..
                                }
                        )
                    });
                if n.cascade {
                    summary.cascades += 1;
                } else {
                    summary.causes += 1;
                }
            }
            Action::Deferred => summary.deferred += 1,
            Action::UpToDate => summary.up_to_date += 1,
            Action::UpdateTags => summary.update_tags += 1,
        }
    }
    mark_cutoffs(project, &mut nodes);
    summary.may_cut_off = nodes.iter().filter(|n| !n.cut_off_by.is_empty()).count();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Plan {
        format_version: FORMAT_VERSION,
        rollup: options.rollup,
        targets: options.targets.clone(),
        forced: options.force.clone(),
        sources,
        nodes,
        summary,
    })
}

/// A revoked version in use: the build whose current version it is runs (going back to
/// the image's newest good version when the version was revoked itself, see
/// [`Facts::fallback`]; rebuilding when it was revoked through its origin or has nothing
/// to go back to), and a delivery whose environment holds it runs.
fn apply_revocations(facts: &Facts, n: &mut PlannedNode) {
    let Some(image) = n.image.clone() else { return };
    let Some(revoked) = facts.revoked.get(&image) else {
        return;
    };
    let held = match n.stage {
        Stage::Build => current_build(facts, &image).map(|b| b.version),
        Stage::Deliver => facts
            .history
            .get(&n.id)
            .and_then(|h| h.last_success.as_ref())
            .and_then(|s| s.outputs_json.as_deref())
            .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok())
            .map(|o| o.version),
        _ => None,
    };
    let Some((version, reason)) = held.and_then(|v| revoked.get_key_value(&v)) else {
        return;
    };
    let mut reason = Reason::Revoked {
        image: image.clone(),
        version: version.clone(),
        reason: reason.clone(),
        back_to: None,
    };
    if n.stage == Stage::Build {
        if let Some(fallback) = facts.fallback.get(&image) {
            // Planned as that version's build record: its key, manifest and upstream.
            let back_to = fallback
                .outputs_json
                .as_deref()
                .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok())
                .map(|o| o.version);
            if let Reason::Revoked { back_to: b, .. } = &mut reason {
                *b = back_to;
            }
            n.key = fallback.key.clone();
            n.manifest = serde_json::from_str(&fallback.manifest_json).unwrap_or_default();
            n.stanza = fallback.stanza.clone();
            n.upstream = serde_json::from_str(&fallback.upstream_json).unwrap_or_default();
            n.reasons.clear();
        }
    }
    n.action = Action::Run;
    n.reasons.insert(0, reason);
}

/// Early cutoff, planned: which running cascades could be skipped when a local build
/// comes out byte-identical to its image's newest Ready version (deterministic packing
/// makes that common after a forced, max-age or roll-up rebuild that changed nothing
/// inside). A node qualifies when it runs only because of upstream nodes, each of them a
/// running local build or itself a qualifying cascade; the executor skips it when every
/// one of them was cut off ([`crate::exec`]). Other providers never make the same artifact
/// twice, so their builds cut nothing off.
fn mark_cutoffs(project: &Project, nodes: &mut [PlannedNode]) {
    let local_build = |n: &PlannedNode| {
        n.stage == Stage::Build
            && n.action == Action::Run
            && n.previous_key.is_some()
            // Going back to an older version builds nothing.
            && !n
                .reasons
                .iter()
                .any(|r| matches!(r, Reason::Revoked { back_to: Some(_), .. }))
            && n.image
                .as_deref()
                .and_then(|i| project.image(i))
                .and_then(|i| project.provider(&i.provider))
                .is_some_and(|p| matches!(p.kind, model::ProviderKind::Local { .. }))
    };
    // Nodes come in topological order: what a node needs is decided before it.
    let mut roots: HashMap<String, BTreeSet<String>> = HashMap::new();
    for n in nodes.iter_mut() {
        if n.action != Action::Run {
            continue;
        }
        let mut by = BTreeSet::new();
        let qualifies = n.cascade
            && n.reasons.iter().all(|r| match r {
                Reason::UpstreamChanged { node } => roots.get(node).is_some_and(|r| {
                    by.extend(r.iter().cloned());
                    true
                }),
                _ => false,
            });
        if !qualifies {
            by.clear();
        }
        n.cut_off_by = by.iter().cloned().collect();
        // What the nodes downstream of this one may be cut off by.
        if local_build(n) {
            by.insert(n.id.clone());
        }
        if !by.is_empty() {
            roots.insert(n.id.clone(), by);
        }
    }
}

/// The key of a node: see the module docs for what goes in.
pub fn node_key(
    id: &str,
    manifest: &Manifest,
    stanza: &str,
    upstream: &BTreeMap<String, String>,
) -> String {
    let manifest_digest = manifest.digest();
    let mut parts: Vec<String> = vec![id.to_string(), manifest_digest, stanza.to_string()];
    parts.extend(upstream.iter().map(|(k, v)| format!("{k}={v}")));
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    digest_parts("imgraph-node-key-v1", &refs)
}

/// What a node's decision compares with, from its history.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline<'h> {
    /// The newest success.
    pub success: Option<&'h NodeRecord>,
    /// The newest attempt, when it failed after the newest success.
    pub failure: Option<&'h NodeRecord>,
    /// That failure, when it had the node's current key.
    pub same_key_failure: Option<&'h NodeRecord>,
    /// The record compared with: a failure with this very key is the last word (nothing
    /// changed since it), else the newest success, else the failure.
    pub base: Option<&'h NodeRecord>,
}

impl<'h> Baseline<'h> {
    pub fn of(history: Option<&'h NodeHistory>, key: &str) -> Baseline<'h> {
        let success = history.and_then(|h| h.last_success.as_ref());
        let failure = history
            .and_then(|h| h.last_attempt.as_ref())
            .filter(|a| a.status == NodeStatus::Failed)
            .filter(|a| success.is_none_or(|s| a.id > s.id));
        let same_key_failure = failure.filter(|f| f.key == key);
        Baseline {
            success,
            failure,
            same_key_failure,
            base: same_key_failure.or(success).or(failure),
        }
    }
}

struct DecideCtx<'a> {
    project: &'a Project,
    facts: &'a Facts,
    options: &'a PlanOptions,
    forced: bool,
    /// Upstream nodes that run this apply and yield a new result.
    upstream_news: Vec<String>,
}

/// A recorded manifest or upstream-key list of `base` that does not parse.
fn corrupt_record(
    n: &PlannedNode,
    base: &NodeRecord,
    what: &'static str,
    source: serde_json::Error,
) -> PlanError {
    PlanError::CorruptRecord {
        node: n.id.clone(),
        run: base.run_id,
        what,
        source,
    }
}

impl DecideCtx<'_> {
    fn decide_node(
        &self,
        n: &mut PlannedNode,
        history: Option<&NodeHistory>,
        sources: &mut [SourceView],
    ) -> Result<(), PlanError> {
        let mut reasons = Vec::new();
        let mut pending = Vec::new();
        if self.forced {
            reasons.push(Reason::Forced);
        }
        let Baseline {
            success,
            same_key_failure,
            base,
            ..
        } = Baseline::of(history, &n.key);

        match base {
            None => reasons.push(Reason::New),
            Some(base) => {
                self.compare(n, base, &mut reasons, &mut pending, sources)?;
                if let Some(f) = same_key_failure {
                    reasons.push(Reason::PreviousFailure {
                        error: f.error.clone(),
                    });
                }
                if let Some(s) = success {
                    self.check_build_freshness(n, s, &mut reasons);
                    self.check_tested_artifact(n, s, same_key_failure, &mut reasons);
                }
                if success.is_none() && reasons.is_empty() {
                    // Only a failed record: it still has to succeed once, whatever else
                    // (even only rollup inputs) changed since.
                    reasons.push(Reason::New);
                }
            }
        }

        if !reasons.is_empty() {
            n.action = Action::Run;
            if self.options.rollup {
                reasons.extend(pending.into_iter().map(as_rollup));
            } else {
                reasons.extend(pending);
            }
        } else if !pending.is_empty() {
            if self.options.rollup {
                n.action = Action::Run;
                reasons.extend(pending.into_iter().map(as_rollup));
            } else {
                n.action = Action::Deferred;
                reasons.extend(pending);
            }
        } else if base.is_some_and(|b| b.key != n.key) {
            // Defensive: the key moved without a change we can name (e.g. a dependency
            // edge disappeared). Never report up to date on a different key.
            n.action = Action::Run;
            reasons.push(Reason::ConfigChanged {
                fields: vec!["dependencies".into()],
            });
        }
        n.reasons = reasons;
        Ok(())
    }

    fn compare(
        &self,
        n: &PlannedNode,
        base: &NodeRecord,
        reasons: &mut Vec<Reason>,
        pending: &mut Vec<Reason>,
        sources: &mut [SourceView],
    ) -> Result<(), PlanError> {
        // The key holds the manifest's digest and the stanza: when it is the recorded one,
        // neither can differ, and the stored manifest (large for big input trees) is not
        // read at all. This is what keeps a no-change plan cheap. In-image probes are the
        // exception: their digests decide but are not in the key.
        let origin_listed = if base.key != n.key || n.manifest.has_image_probes() {
            self.compare_inputs(n, base, reasons, pending)?
        } else {
            false
        };
        let old_upstream: BTreeMap<String, String> = serde_json::from_str(&base.upstream_json)
            .map_err(|e| corrupt_record(n, base, "upstream keys", e))?;
        for (up, key) in &n.upstream {
            if up == DELIVERED {
                let old = old_upstream.get(up);
                if old == Some(key) {
                    continue;
                }
                let image = n.image.clone().unwrap_or_default();
                reasons.push(match delivered_version(key) {
                    Some(version) => Reason::NewVersion {
                        previous: old.and_then(|o| delivered_version(o)),
                        image,
                        version,
                    },
                    // The build runs in this apply: a cascade from its publish.
                    None => Reason::UpstreamChanged {
                        node: crate::graph::publish_id(&image),
                    },
                });
                continue;
            }
            if let Some(source) = up.strip_prefix("source:") {
                let old = old_upstream.get(up);
                if old != Some(key) {
                    if let Some(v) = sources.iter_mut().find(|s| s.name == source) {
                        v.previous_id = old.cloned();
                    }
                    if origin_listed && old.is_some() {
                        continue;
                    }
                    reasons.push(Reason::SourceChanged {
                        source: source.to_string(),
                        old: old.cloned().unwrap_or_default(),
                        new: key.clone(),
                    });
                }
                continue;
            }
            if old_upstream.get(up) != Some(key) || self.upstream_news.contains(up) {
                reasons.push(Reason::UpstreamChanged { node: up.clone() });
            }
        }
        Ok(())
    }

    /// Reasons from the node's inputs (manifest entries) and its stanza. Returns whether a
    /// local origin folder's changes were listed file by file.
    fn compare_inputs(
        &self,
        n: &PlannedNode,
        base: &NodeRecord,
        reasons: &mut Vec<Reason>,
        pending: &mut Vec<Reason>,
    ) -> Result<bool, PlanError> {
        let old_manifest: Manifest = serde_json::from_str(&base.manifest_json)
            .map_err(|e| corrupt_record(n, base, "manifest", e))?;
        let diffs = if old_manifest.format == n.manifest.format {
            diff_manifests(&old_manifest, &n.manifest)
        } else {
            // Digests of another encoding cannot be compared entry by entry.
            reasons.push(Reason::ConfigChanged {
                fields: vec!["hash-format".into()],
            });
            Vec::new()
        };
        // A local origin folder's changes are listed file by file, not as a digest pair.
        let origin_listed = diffs.iter().any(|d| d.via == Via::Origin);
        for d in diffs {
            let packages = package_change(&old_manifest, &n.manifest, &d.path);
            let r = Reason::InputChanged {
                path: d.path,
                change: d.change,
                trigger: d.trigger,
                via: d.via,
                mode: d.mode,
                packages,
            };
            match d.trigger {
                Trigger::Immediate => reasons.push(r),
                Trigger::Rollup => pending.push(r),
            }
        }
        if base.stanza != n.stanza {
            reasons.push(Reason::ConfigChanged {
                fields: diff_fields(&base.stanza, &n.stanza),
            });
        }
        Ok(origin_listed)
    }

    /// Test and publish nodes: their last success must be about the image's current
    /// build (same artifact, same version). A build that re-ran with an unchanged key
    /// (max-age, --force, a missing artifact) and whose tests never finished leaves a new
    /// artifact behind that no test has seen.
    ///
    /// A failed attempt with the current key made after the image's current build did see
    /// that artifact: the reason to run again is that failure, not a new artifact.
    fn check_tested_artifact(
        &self,
        n: &PlannedNode,
        success: &NodeRecord,
        same_key_failure: Option<&NodeRecord>,
        reasons: &mut Vec<Reason>,
    ) {
        if !matches!(n.stage, Stage::Test | Stage::Publish) {
            return;
        }
        let Some(image) = n.image.as_deref() else {
            return;
        };
        let build = crate::graph::build_id(image);
        let Some(build_success) = self
            .facts
            .history
            .get(&build)
            .and_then(|h| h.last_success.as_ref())
        else {
            return;
        };
        if same_key_failure.is_some_and(|f| f.id > build_success.id) {
            return;
        }
        let current = build_success
            .outputs_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok());
        let Some(current) = current else { return };
        let seen = success
            .outputs_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok());
        let already = reasons
            .iter()
            .any(|r| matches!(r, Reason::UpstreamChanged { node } if *node == build));
        if !seen.is_some_and(|s| s.same_version(&current)) && !already {
            reasons.push(Reason::UpstreamChanged { node: build });
        }
    }

    /// Build nodes only: max-age and artifact existence.
    fn check_build_freshness(
        &self,
        n: &PlannedNode,
        success: &NodeRecord,
        reasons: &mut Vec<Reason>,
    ) {
        if n.stage != Stage::Build {
            return;
        }
        let image = n.image.as_deref().and_then(|i| self.project.image(i));
        let outputs = success
            .outputs_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<BuildOutputs>(o).ok());
        let built_at = outputs
            .as_ref()
            .and_then(|o| o.built_at_ms)
            .or(success.finished_at);
        if let (Some(max_age), Some(built_at)) = (image.and_then(|i| i.max_age), built_at) {
            let age_ms = self.facts.now_ms.saturating_sub(built_at);
            if age_ms > i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX) {
                reasons.push(Reason::MaxAge {
                    built_at_ms: built_at,
                    max_age_secs: max_age.as_secs(),
                });
            }
        }
        if let Some(out) = outputs {
            if self.facts.missing_artifacts.contains(&out.artifact_id) {
                reasons.push(Reason::ArtifactMissing {
                    artifact: out.artifact_id,
                });
            }
        }
    }
}

fn as_rollup(r: Reason) -> Reason {
    match r {
        Reason::InputChanged {
            path,
            change,
            via,
            mode,
            packages,
            ..
        } => Reason::Rollup {
            path,
            change,
            via,
            mode,
            packages,
        },
        other => other,
    }
}

/// Which packages a package list gained and lost between two manifests (`None` when the
/// entry is no package list, or when nothing on its list changed, e.g. only comments).
fn package_change(old: &Manifest, new: &Manifest, path: &str) -> Option<PackageChange> {
    let before = old.get(path).and_then(|e| e.packages.as_ref());
    let after = new.get(path).and_then(|e| e.packages.as_ref());
    if before.is_none() && after.is_none() {
        return None;
    }
    let empty = Vec::new();
    let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let change = PackageChange {
        added: after
            .iter()
            .filter(|p| !before.contains(p))
            .cloned()
            .collect(),
        removed: before
            .iter()
            .filter(|p| !after.contains(p))
            .cloned()
            .collect(),
    };
    (!change.added.is_empty() || !change.removed.is_empty()).then_some(change)
}

/// What every package list of a node gained and lost between two manifests, or `None`
/// when neither manifest has a package list. Lists are told apart by path; a package on
/// two lists counts once.
pub fn package_changes(old: &Manifest, new: &Manifest) -> Option<PackageChange> {
    let paths: BTreeSet<&str> = old
        .entries
        .iter()
        .chain(&new.entries)
        .filter(|e| e.packages.is_some())
        .map(|e| e.path.as_str())
        .collect();
    if paths.is_empty() {
        return None;
    }
    let mut all = PackageChange::default();
    for path in paths {
        if let Some(c) = package_change(old, new, path) {
            all.added.extend(c.added);
            all.removed.extend(c.removed);
        }
    }
    for list in [&mut all.added, &mut all.removed] {
        list.sort();
        list.dedup();
    }
    Some(all)
}

/// Entry-by-entry differences between two manifests, sorted by path. A changed trigger
/// or way of declaring alone is no difference (it changes when a change counts, not what
/// the node is made of).
pub fn diff_manifests(old: &Manifest, new: &Manifest) -> Vec<EntryDiff> {
    let old_map: BTreeMap<&str, _> = old.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let new_map: BTreeMap<&str, _> = new.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = Vec::new();
    let diff = |path: &str, change, e: &crate::hash::ManifestEntry, mode| EntryDiff {
        path: path.to_string(),
        change,
        trigger: e.trigger,
        via: e.via,
        mode,
    };
    for (path, e) in &new_map {
        match old_map.get(path) {
            None => out.push(diff(path, Change::Added, e, None)),
            Some(o) => {
                let mode = ModeChange::of(o.mode, e.mode);
                if o.digest != e.digest || o.kind != e.kind {
                    out.push(diff(path, Change::Modified, e, mode));
                } else if mode.is_some() || o.mode != e.mode {
                    out.push(diff(path, Change::Mode, e, mode));
                }
            }
        }
    }
    for (path, e) in &old_map {
        if !new_map.contains_key(path) {
            out.push(diff(path, Change::Removed, e, None));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Names the parts of two canonical stanzas that differ (`build.steps`, `version`, …).
pub fn diff_fields(old: &str, new: &str) -> Vec<String> {
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(old),
        serde_json::from_str::<serde_json::Value>(new),
    ) else {
        return vec!["stanza".into()];
    };
    let mut out = Vec::new();
    diff_values("", &a, &b, 0, &mut out);
    if out.is_empty() {
        out.push("stanza".into());
    }
    out
}

fn diff_values(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    depth: usize,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if depth < 2 => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if k == "v" {
                    continue;
                }
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let null = Value::Null;
                diff_values(
                    &name,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    depth + 1,
                    out,
                );
            }
        }
        _ => out.push(if prefix.is_empty() {
            "stanza".into()
        } else {
            prefix.to_string()
        }),
    }
}
