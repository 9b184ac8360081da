//! Saved plans: `imgraph plan --out FILE` writes one, `imgraph apply FILE` runs exactly
//! that plan, `imgraph show FILE` prints it.
//!
//! The file is one JSON document (`"kind": "imgraph-saved-plan"`, `"format_version": 1`)
//! holding the plan as `plan --json` prints it, what the executor needs besides (each
//! node's manifest, canonical stanza and upstream keys), the options it was made with, and
//! the state file's lineage and serial at that moment (as Terraform records them).
//!
//! Before an apply, the world is gathered again and compared with the file ([`drift`]):
//! the state must be the same file at the same serial, every source must resolve to the
//! same id, every input must have the same digest, every stanza must be the same, and
//! every node must still get the same decision (a `max-age` that passed or an artifact
//! that vanished in between changes it). Any difference refuses the apply, named one by
//! one; nothing is run from a plan that no longer describes the project.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    diff_manifests, Action, Change, Facts, ModeChange, Plan, PlanOptions, Reason, UpstreamKeys,
};
use crate::graph::NodeId;
use crate::hash::{Manifest, Via};

pub const SAVED_FORMAT_VERSION: u32 = 1;
pub const SAVED_KIND: &str = "imgraph-saved-plan";

/// A plan as `plan --out` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub kind: String,
    pub format_version: u32,
    /// The imgraph that wrote it (informational).
    pub imgraph_version: String,
    pub created_at_ms: i64,
    pub state: StateStamp,
    /// The plan document, as `plan --json` prints it.
    pub plan: Plan,
    /// What the plan document leaves out and the executor needs, by node id.
    pub nodes: BTreeMap<NodeId, SavedNode>,
}

/// The state file a plan was made against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateStamp {
    pub lineage: String,
    pub serial: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedNode {
    pub manifest: Manifest,
    pub stanza: String,
    pub upstream: UpstreamKeys,
    pub effective_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("it is not an imgraph saved plan ({0})")]
    NotAPlan(String),
    #[error(
        "it has format version {found}, this imgraph reads version {known}: make the plan again with this imgraph"
    )]
    FormatVersion { found: u64, known: u32 },
}

impl SavedPlan {
    pub fn new(plan: Plan, state: StateStamp, created_at_ms: i64) -> SavedPlan {
        let nodes = plan
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id.clone(),
                    SavedNode {
                        manifest: Manifest::clone(&n.manifest),
                        stanza: n.stanza.clone(),
                        upstream: n.upstream.clone(),
                        effective_key: n.effective_key.clone(),
                    },
                )
            })
            .collect();
        SavedPlan {
            kind: SAVED_KIND.into(),
            format_version: SAVED_FORMAT_VERSION,
            imgraph_version: env!("CARGO_PKG_VERSION").into(),
            created_at_ms,
            state,
            plan,
            nodes,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a saved plan, checking what it is and its format version before its fields.
    pub fn from_json(text: &str) -> Result<SavedPlan, SavedPlanError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SavedPlanError::NotAPlan(e.to_string()))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some(SAVED_KIND) {
            return Err(SavedPlanError::NotAPlan(format!(
                "no \"kind\": \"{SAVED_KIND}\""
            )));
        }
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if found != u64::from(SAVED_FORMAT_VERSION) {
            return Err(SavedPlanError::FormatVersion {
                found,
                known: SAVED_FORMAT_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|e| SavedPlanError::NotAPlan(e.to_string()))
    }

    /// The options the plan was made with.
    pub fn options(&self) -> PlanOptions {
        PlanOptions {
            rollup: self.plan.rollup,
            targets: self.plan.targets.clone(),
            force: self.plan.forced.clone(),
        }
    }

    /// The plan with every node's manifest, stanza and upstream keys back in place, as
    /// the executor records them.
    pub fn to_plan(&self) -> Plan {
        let mut plan = self.plan.clone();
        for n in &mut plan.nodes {
            if let Some(saved) = self.nodes.get(&n.id) {
                n.manifest = Arc::new(saved.manifest.clone());
                n.stanza = saved.stanza.clone();
                n.upstream = saved.upstream.clone();
                n.effective_key = saved.effective_key.clone();
            }
        }
        plan
    }
}

/// One way the project moved since a plan was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Drift {
    /// The plan was made against another state file.
    OtherState {
        planned: String,
        now: String,
    },
    /// Runs, node runs, images or deliveries were written since.
    StateChanged {
        planned: i64,
        now: i64,
    },
    /// A source resolves to another id (or no longer exists: `now` empty).
    SourceChanged {
        source: String,
        planned: String,
        now: String,
    },
    /// An input's digest differs; `nodes` are the planned nodes that hash it.
    InputChanged {
        path: String,
        change: Change,
        via: Via,
        mode: Option<ModeChange>,
        planned: Option<String>,
        now: Option<String>,
        nodes: Vec<NodeId>,
    },
    /// The node's canonical config stanza differs.
    ConfigChanged {
        node: NodeId,
    },
    /// The config now has a stage the plan does not know, or lost one it planned.
    NodeAdded {
        node: NodeId,
    },
    NodeRemoved {
        node: NodeId,
    },
    /// Nothing above moved, and yet the node now gets another decision (a `max-age` that
    /// passed, an artifact that vanished).
    DecisionChanged {
        node: NodeId,
        planned: Action,
        now: Action,
        reasons: Vec<Reason>,
    },
}

/// Everything that differs between a saved plan and the project now: `lineage` and
/// `facts` as gathered now, `fresh` the plan decided from them with the saved options.
/// Empty when the saved plan still describes the project exactly.
pub fn drift(saved: &SavedPlan, now: &StateStamp, facts: &Facts, fresh: &Plan) -> Vec<Drift> {
    let mut out = Vec::new();
    if saved.state.lineage != now.lineage {
        out.push(Drift::OtherState {
            planned: saved.state.lineage.clone(),
            now: now.lineage.clone(),
        });
    } else if saved.state.serial != now.serial {
        out.push(Drift::StateChanged {
            planned: saved.state.serial,
            now: now.serial,
        });
    }
    for s in &saved.plan.sources {
        let current = facts.sources.get(&s.name).cloned().unwrap_or_default();
        if current != s.id {
            out.push(Drift::SourceChanged {
                source: s.name.clone(),
                planned: s.id.clone(),
                now: current,
            });
        }
    }
    // Inputs, once per path, with the nodes that hash them.
    let mut inputs: BTreeMap<String, Drift> = BTreeMap::new();
    for n in &saved.plan.nodes {
        let Some(planned) = saved.nodes.get(&n.id) else {
            continue;
        };
        let Some(current) = fresh.node(&n.id) else {
            continue;
        };
        for d in diff_manifests(&planned.manifest, &current.manifest) {
            let entry = inputs.entry(d.path.clone()).or_insert(Drift::InputChanged {
                planned: digest_of(&planned.manifest, &d.path),
                now: digest_of(&current.manifest, &d.path),
                path: d.path,
                change: d.change,
                via: d.via,
                mode: d.mode,
                nodes: Vec::new(),
            });
            if let Drift::InputChanged { nodes, .. } = entry {
                nodes.push(n.id.clone());
            }
        }
        if planned.stanza != current.stanza {
            out.push(Drift::ConfigChanged { node: n.id.clone() });
        }
    }
    out.extend(inputs.into_values());
    let planned_ids: BTreeSet<&NodeId> = saved.plan.nodes.iter().map(|n| &n.id).collect();
    let fresh_ids: BTreeSet<&NodeId> = fresh.nodes.iter().map(|n| &n.id).collect();
    for id in fresh_ids.difference(&planned_ids) {
        out.push(Drift::NodeAdded {
            node: (*id).clone(),
        });
    }
    for id in planned_ids.difference(&fresh_ids) {
        out.push(Drift::NodeRemoved {
            node: (*id).clone(),
        });
    }
    if !out.is_empty() {
        return out;
    }
    for n in &saved.plan.nodes {
        let Some(current) = fresh.node(&n.id) else {
            continue;
        };
        if current.action != n.action || current.key != n.key {
            out.push(Drift::DecisionChanged {
                node: n.id.clone(),
                planned: n.action,
                now: current.action,
                reasons: current.reasons.clone(),
            });
        }
    }
    out
}

fn digest_of(m: &Manifest, path: &str) -> Option<String> {
    m.get(path).map(|e| e.digest.clone())
}
