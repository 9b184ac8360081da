//! Keys and stanzas: what a node's key is made of (see the module docs of
//! [`crate::plan`]), and the one upstream entry of a delivery.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use petgraph::graph::NodeIndex;

use crate::config::model::{self, Project};
use crate::graph::{NodeId, Stage, StageGraph};
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

/// One entry of a node's upstream keys: an upstream node, or a delivery's one entry, the
/// artifact it delivers ([`DELIVERED`]). It is written as its text (the node id, or
/// `artifact`) in the keys, the state's records and saved plans, and sorts by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamEntry {
    Node(NodeId),
    Delivered,
}

impl UpstreamEntry {
    pub fn as_str(&self) -> &str {
        match self {
            UpstreamEntry::Node(id) => id.as_str(),
            UpstreamEntry::Delivered => DELIVERED,
        }
    }
}

impl fmt::Display for UpstreamEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialOrd for UpstreamEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UpstreamEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Serialize for UpstreamEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UpstreamEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == DELIVERED {
            return Ok(UpstreamEntry::Delivered);
        }
        NodeId::parse(&text)
            .map(UpstreamEntry::Node)
            .map_err(serde::de::Error::custom)
    }
}

/// Upstream entry → output key, as hashed into a node's key.
pub type UpstreamKeys = BTreeMap<UpstreamEntry, String>;

/// The image's current build as the history records it: its last successful build.
pub(super) fn current_build(facts: &Facts, image: &str) -> Option<BuildOutputs> {
    BuildOutputs::last(facts.history.get(&NodeId::build(image))?)
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
        // A source is resolved, not configured; a stage whose image the project lacks
        // (never, after validation) has nothing either.
        (Stage::Source, _) | (_, None) => String::new(),
    }
}

/// The key of a node: see the module docs for what goes in.
pub fn node_key(id: &NodeId, manifest: &Manifest, stanza: &str, upstream: &UpstreamKeys) -> String {
    let manifest_digest = manifest.digest();
    let mut parts: Vec<String> = vec![id.to_string(), manifest_digest, stanza.to_string()];
    parts.extend(upstream.iter().map(|(k, v)| format!("{k}={v}")));
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    digest_parts("imgraph-node-key-v1", &refs)
}
