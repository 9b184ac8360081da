//! Keys and stanzas: what a node's key is made of (see the module docs of
//! [`crate::plan`]), and the one upstream entry of a delivery.

use std::collections::BTreeMap;

use petgraph::graph::NodeIndex;

use crate::config::model::{self, Project};
use crate::graph::{Stage, StageGraph};
use crate::hash::{digest_parts, Manifest};

use super::{BuildOutputs, Facts};

/// The one upstream entry of a `deliver:` node: the artifact it delivers, as
/// `ARTIFACT@VERSION` of the image's current build, or `pending:BUILD-KEY` when the build
/// runs in this apply and its artifact is not known yet. A delivery therefore runs
/// whenever the image's current version changes, whatever the build's key (a rebuild
/// with the same key makes a new version too), and never because another environment's
/// delivery changed: `after` orders deliveries, it does not enter their keys. The
/// executor replaces a pending value by the real artifact before it records the node
/// ([`super::PlannedNode::for_artifact`]), so the next plan compares like with like.
pub const DELIVERED: &str = "artifact";
pub(super) const PENDING: &str = "pending:";

/// The image's current build as the history records it: its last successful build.
pub(super) fn current_build(facts: &Facts, image: &str) -> Option<BuildOutputs> {
    BuildOutputs::last(facts.history.get(&crate::graph::build_id(image))?)
}

/// The version part of a [`DELIVERED`] value, when it names one.
pub(super) fn delivered_version(value: &str) -> Option<String> {
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
