//! `imgraph why NODE`: the whole chain of causes of one node's decision, as data.
//!
//! Every [`Reason`] the planner gave the node is kept as it is (so it reads in the words
//! of `imgraph plan`, through the same renderer) and gets the evidence behind it: short
//! old and new digests of a changed input (never for an environment value), the config
//! stanza's lines that changed, the failed run a previous failure refers to, the
//! arithmetic of a passed `max-age`, and for a cascade the upstream node's own
//! explanation, recursively down to the root causes. A node reached twice through a
//! diamond is explained once and referred to after.
//!
//! Pure: the caller gathers the facts and decides the plan.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::{Action, Baseline, Plan, PlannedNode, Reason};
use crate::graph::NodeId;
use crate::hash::{Manifest, ENV_PREFIX};
use crate::state::{NodeHistory, NodeRecord};

pub const FORMAT_VERSION: u32 = 1;

/// Why one node gets its action.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub node: NodeId,
    pub action: Action,
    pub key: String,
    pub previous_key: Option<String>,
    /// The run whose record the decision compared with.
    pub compared_with_run: Option<i64>,
    pub causes: Vec<Cause>,
}

/// One reason with the evidence behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Cause {
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Detail {
    /// An input's digests before and after (absent where the input is new or gone).
    Digests {
        old: Option<String>,
        new: Option<String>,
    },
    /// The canonical config stanza, line by line where it changed.
    Stanza { lines: Vec<DiffLine> },
    /// How far past its `max-age` the last build is.
    Age {
        now_ms: i64,
        age_secs: u64,
        over_secs: u64,
    },
    /// The failed run a `previous-failure` refers to.
    Failure {
        run: i64,
        finished_at_ms: Option<i64>,
        log_path: Option<String>,
    },
    /// The upstream node's own explanation, or `None` when it was explained above.
    Upstream {
        explanation: Option<Box<Explanation>>,
    },
}

/// One line of a stanza diff: `same` lines are context next to a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    pub op: DiffOp,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffOp {
    Same,
    Added,
    Removed,
    /// Unchanged lines left out.
    Gap,
}

/// The explanation of `node` in `plan`, or `None` when the plan has no such node.
pub fn explain(
    plan: &Plan,
    history: &HashMap<NodeId, NodeHistory>,
    now_ms: i64,
    node: &NodeId,
) -> Option<Explanation> {
    let mut seen = BTreeSet::new();
    explain_node(plan, history, now_ms, node, &mut seen)
}

fn explain_node(
    plan: &Plan,
    history: &HashMap<NodeId, NodeHistory>,
    now_ms: i64,
    id: &NodeId,
    seen: &mut BTreeSet<NodeId>,
) -> Option<Explanation> {
    let n = plan.node(id)?;
    seen.insert(id.clone());
    let baseline = Baseline::of(history.get(id), &n.key);
    let base = baseline.base;
    let old_manifest: Manifest = base
        .and_then(|b| serde_json::from_str(&b.manifest_json).ok())
        .unwrap_or_default();
    let mut causes = Vec::new();
    for reason in &n.reasons {
        let detail = match reason {
            Reason::InputChanged(c) | Reason::Rollup(c) => digests(&old_manifest, n, &c.path),
            Reason::ConfigChanged { .. } => base.map(|b| Detail::Stanza {
                lines: stanza_diff(&b.stanza, &n.stanza),
            }),
            Reason::MaxAge {
                built_at_ms,
                max_age_secs,
            } => {
                let age_secs =
                    u64::try_from(now_ms.saturating_sub(*built_at_ms) / 1000).unwrap_or_default();
                Some(Detail::Age {
                    now_ms,
                    age_secs,
                    over_secs: age_secs.saturating_sub(*max_age_secs),
                })
            }
            Reason::PreviousFailure { .. } => baseline.same_key_failure.map(failure),
            Reason::UpstreamChanged { node } => {
                let explanation = if seen.contains(node) {
                    None
                } else {
                    explain_node(plan, history, now_ms, node, seen).map(Box::new)
                };
                Some(Detail::Upstream { explanation })
            }
            _ => None,
        };
        causes.push(Cause {
            reason: reason.clone(),
            detail,
        });
    }
    Some(Explanation {
        node: n.id.clone(),
        action: n.action,
        key: n.key.clone(),
        previous_key: n.previous_key.clone(),
        compared_with_run: base.map(|b| b.run_id),
        causes,
    })
}

/// Short digests never stand in for an environment value: a digest of a short secret
/// can be guessed.
fn digests(old: &Manifest, n: &PlannedNode, path: &str) -> Option<Detail> {
    if path.starts_with(ENV_PREFIX) {
        return None;
    }
    Some(Detail::Digests {
        old: old.get(path).map(|e| e.digest.clone()),
        new: n.manifest.get(path).map(|e| e.digest.clone()),
    })
}

fn failure(f: &NodeRecord) -> Detail {
    Detail::Failure {
        run: f.run_id,
        finished_at_ms: f.finished_at,
        log_path: f.log_path.clone(),
    }
}

/// Lines of context kept around each change.
const CONTEXT: usize = 1;

/// The two stanzas pretty-printed (they are canonical JSON; other text is compared as
/// it is) and diffed line by line, with [`CONTEXT`] lines around each change.
pub fn stanza_diff(old: &str, new: &str) -> Vec<DiffLine> {
    let pretty = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| s.to_string())
    };
    let (a, b) = (pretty(old), pretty(new));
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Longest common subsequence, by dynamic programming: stanzas are a few dozen lines.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut all = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            all.push((DiffOp::Same, a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removed lines first, as `diff -u` shows them.
            all.push((DiffOp::Removed, a[i]));
            i += 1;
        } else {
            all.push((DiffOp::Added, b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(CONTEXT);
        let hi = (k + CONTEXT).min(all.len().saturating_sub(1));
        (lo..=hi).any(|m| all[m].0 != DiffOp::Same)
    };
    let mut out = Vec::new();
    for (k, (op, text)) in all.iter().enumerate() {
        if *op != DiffOp::Same || near_change(k) {
            out.push(DiffLine {
                op: *op,
                text: (*text).to_string(),
            });
        } else if out.last().is_some_and(|l: &DiffLine| l.op != DiffOp::Gap) {
            out.push(DiffLine {
                op: DiffOp::Gap,
                text: String::new(),
            });
        }
    }
    if out.last().is_some_and(|l| l.op == DiffOp::Gap) {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_diff_shows_changed_lines_with_context() {
        let old = r#"{"v":1,"steps":["run a","run b","run c"],"version":"1.0"}"#;
        let new = r#"{"v":1,"steps":["run a","run B","run c"],"version":"1.0"}"#;
        let lines: Vec<(DiffOp, String)> = stanza_diff(old, new)
            .into_iter()
            .map(|l| (l.op, l.text.trim().to_string()))
            .collect();
        assert_eq!(
            lines,
            vec![
                (DiffOp::Same, "\"run a\",".into()),
                (DiffOp::Removed, "\"run b\",".into()),
                (DiffOp::Added, "\"run B\",".into()),
                (DiffOp::Same, "\"run c\"".into()),
            ]
        );
        assert!(stanza_diff(old, old).is_empty());
    }
}
