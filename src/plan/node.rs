//! The decision for one node: compare it with its history ([`Baseline`]) and name every
//! difference as a [`Reason`]; then settle its action (run, deferred, up to date).

use std::collections::BTreeMap;

use crate::config::model::{Project, Trigger};
use crate::graph::{NodeId, NodeKind, Stage};
use crate::hash::{Manifest, Via};
use crate::state::{NodeHistory, NodeRecord, NodeStatus};

use super::diff::{diff_fields, diff_manifests, package_change};
use super::keys::{current_build, delivered_version, UpstreamEntry};
use super::reason::as_rollup;
use super::{
    Action, BuildOutputs, Facts, InputChange, PlanError, PlanOptions, PlannedNode, Reason,
    SourceView,
};

/// How the image's configured tags differ from those its current version carries, if
/// they do. A version whose tags were never recorded gets them when the config has any.
pub(super) fn tags_change(project: &Project, facts: &Facts, image: &str) -> Option<Reason> {
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

pub(super) struct DecideCtx<'a> {
    pub(super) project: &'a Project,
    pub(super) facts: &'a Facts,
    pub(super) options: &'a PlanOptions,
    pub(super) forced: bool,
    /// Upstream nodes that run this apply and yield a new result.
    pub(super) upstream_news: Vec<NodeId>,
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
    /// Decides `n`: the reasons against its history, then its action.
    pub(super) fn decide_node(
        &self,
        n: &mut PlannedNode,
        history: Option<&NodeHistory>,
        sources: &mut [SourceView],
    ) -> Result<(), PlanError> {
        let baseline = Baseline::of(history, &n.key);
        let (reasons, pending) = self.reasons(n, &baseline, sources)?;
        let key_moved = baseline.base.is_some_and(|b| b.key != n.key);
        (n.action, n.reasons) = self.settle(reasons, pending, key_moved);
        Ok(())
    }

    /// Every reason to run `n` now, and apart from them the pending rollup changes.
    fn reasons(
        &self,
        n: &PlannedNode,
        baseline: &Baseline<'_>,
        sources: &mut [SourceView],
    ) -> Result<(Vec<Reason>, Vec<Reason>), PlanError> {
        let mut reasons = Vec::new();
        let mut pending = Vec::new();
        if self.forced {
            reasons.push(Reason::Forced);
        }
        let Some(base) = baseline.base else {
            reasons.push(Reason::New);
            return Ok((reasons, pending));
        };
        self.compare(n, base, &mut reasons, &mut pending, sources)?;
        if let Some(f) = baseline.same_key_failure {
            reasons.push(Reason::PreviousFailure {
                error: f.error.clone(),
            });
        }
        match baseline.success {
            Some(s) => {
                self.check_build_freshness(n, s, &mut reasons);
                self.check_tested_artifact(n, s, baseline.same_key_failure, &mut reasons);
            }
            // Only a failed record: it still has to succeed once, whatever else (even
            // only rollup inputs) changed since.
            None if reasons.is_empty() => reasons.push(Reason::New),
            None => {}
        }
        Ok((reasons, pending))
    }

    /// The action the reasons call for: a reason of its own runs the node and takes the
    /// pending rollup changes along; pending changes alone wait for a roll-up run.
    fn settle(
        &self,
        mut reasons: Vec<Reason>,
        pending: Vec<Reason>,
        key_moved: bool,
    ) -> (Action, Vec<Reason>) {
        let action = if !reasons.is_empty() || (!pending.is_empty() && self.options.rollup) {
            Action::Run
        } else if !pending.is_empty() {
            Action::Deferred
        } else if key_moved {
            // Defensive: the key moved without a change we can name (e.g. a dependency
            // edge disappeared). Never report up to date on a different key.
            reasons.push(Reason::ConfigChanged {
                fields: vec!["dependencies".into()],
            });
            Action::Run
        } else {
            Action::UpToDate
        };
        if self.options.rollup {
            reasons.extend(pending.into_iter().map(as_rollup));
        } else {
            reasons.extend(pending);
        }
        (action, reasons)
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
            let old = old_upstream.get(up.as_str());
            let up = match up {
                UpstreamEntry::Delivered => {
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
                            node: NodeId::publish(&image),
                        },
                    });
                    continue;
                }
                UpstreamEntry::Node(up) => up,
            };
            match up.kind() {
                NodeKind::Source { name: source } => {
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
                }
                NodeKind::Build { .. }
                | NodeKind::Test { .. }
                | NodeKind::Publish { .. }
                | NodeKind::Deliver { .. } => {
                    if old != Some(key) || self.upstream_news.contains(up) {
                        reasons.push(Reason::UpstreamChanged { node: up.clone() });
                    }
                }
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
            let r = Reason::InputChanged(InputChange {
                path: d.path,
                change: d.change,
                trigger: Some(d.trigger),
                via: d.via,
                mode: d.mode,
                packages,
            });
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
        let build = NodeId::build(image);
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
        let Some(current) = BuildOutputs::of(build_success) else {
            return;
        };
        let seen = BuildOutputs::of(success);
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
        let outputs = BuildOutputs::of(success);
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
