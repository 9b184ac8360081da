//! A revoked version in use (`imgraph revoke`): the build or delivery that holds it runs.

use std::sync::Arc;

use crate::graph::Stage;

use super::keys::current_build;
use super::{Action, BuildOutputs, Facts, PlannedNode, Reason};

/// A revoked version in use: the build whose current version it is runs (going back to
/// the image's newest good version when the version was revoked itself, see
/// [`Facts::fallback`]; rebuilding when it was revoked through its origin or has nothing
/// to go back to), and a delivery whose environment holds it runs.
pub(super) fn apply_revocations(facts: &Facts, n: &mut PlannedNode) {
    let Some(image) = n.image.clone() else { return };
    let Some(revoked) = facts.revoked.get(&image) else {
        return;
    };
    let held = match n.stage {
        Stage::Build => current_build(facts, &image).map(|b| b.version),
        Stage::Deliver => facts
            .history
            .get(&n.id)
            .and_then(BuildOutputs::last)
            .map(|o| o.version),
        // Tests and publish hold no version of their own: their build does.
        Stage::Test | Stage::Publish | Stage::Source => None,
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
            let back_to = BuildOutputs::of(fallback).map(|o| o.version);
            if let Reason::Revoked { back_to: b, .. } = &mut reason {
                *b = back_to;
            }
            n.key = fallback.key.clone();
            n.manifest =
                Arc::new(serde_json::from_str(&fallback.manifest_json).unwrap_or_default());
            n.stanza = fallback.stanza.clone();
            n.upstream = serde_json::from_str(&fallback.upstream_json).unwrap_or_default();
            n.reasons.clear();
        }
    }
    n.action = Action::Run;
    n.reasons.insert(0, reason);
}
