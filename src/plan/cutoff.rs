//! Early cutoff, as the plan sees it: which cascades a byte-identical rebuild may skip.

use std::collections::{BTreeSet, HashMap};

use crate::config::model::{self, Project};
use crate::graph::{NodeId, Stage};

use super::{Action, PlannedNode, Reason};

/// Early cutoff, planned: which running cascades could be skipped when a local build
/// comes out byte-identical to its image's newest Ready version (deterministic packing
/// makes that common after a forced, max-age or roll-up rebuild that changed nothing
/// inside). A node qualifies when it runs only because of upstream nodes, each of them a
/// running local build or itself a qualifying cascade; the executor skips it when every
/// one of them was cut off ([`crate::exec`]). Other providers never make the same artifact
/// twice, so their builds cut nothing off.
pub(super) fn mark_cutoffs(project: &Project, nodes: &mut [PlannedNode]) {
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
    let mut roots: HashMap<NodeId, BTreeSet<NodeId>> = HashMap::new();
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
