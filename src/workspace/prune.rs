//! Pruning, for `imgraph gc`: what the state and the local store keep that nothing reads.
//!
//! - **Manifests.** Every node run records its full manifest (for 200,000 input files,
//!   tens of MB per build). A plan and `why` only compare with each node's last success
//!   and last attempt; every other record's manifest is cut down to its package-list
//!   entries, which the report still reads to show each version's package changes. The
//!   records themselves (keys, outcomes, times, logs) stay: history is never rewritten.
//! - **Artifacts.** A local artifact that no image version in the state or in the store's
//!   registry references, and that is not any build's last success, is removed. An
//!   artifact a version references is never removed, whatever its status.
//!
//! The state file is compacted afterwards, so the space goes back to the file system.

use std::collections::HashSet;

use crate::error::Result;
use crate::graph::Stage;
use crate::hash::Manifest;
use crate::plan::BuildOutputs;
use crate::report::state::Pruned;

use super::Workspace;

/// Manifests shorter than this are not worth rewriting (a pruned one is shorter).
const SMALL_MANIFEST: usize = 4096;

impl Workspace {
    /// Prunes manifests and unreferenced local artifacts, then compacts the state file.
    /// Callers hold the state lease.
    pub fn prune(&self) -> Result<Pruned> {
        let mut out = Pruned::default();
        for id in self.state.superseded_manifests(SMALL_MANIFEST)? {
            let json = self.state.manifest_of(id)?;
            // A manifest this build cannot read is left as it is.
            let Ok(mut manifest) = serde_json::from_str::<Manifest>(&json) else {
                continue;
            };
            manifest.entries.retain(|e| e.packages.is_some());
            let Ok(smaller) = serde_json::to_string(&manifest) else {
                continue;
            };
            if smaller.len() < json.len() {
                self.state.replace_manifest(id, &smaller)?;
                out.manifests += 1;
            }
        }
        if let Some(store) = self.local_store() {
            let mut keep: HashSet<String> = self
                .state
                .images(None)?
                .into_iter()
                .map(|r| r.version.artifact_id)
                .collect();
            keep.extend(
                store
                    .version_metas(None)?
                    .into_iter()
                    .map(|m| m.artifact_id),
            );
            for (node, history) in self.state.snapshot()? {
                if node.stage() != Stage::Build {
                    continue;
                }
                let built = BuildOutputs::last(&history);
                if let Some(b) = built {
                    keep.insert(b.artifact_id);
                }
            }
            out.artifacts = store.remove_unreferenced(&keep)?;
        }
        out.state_bytes = self.state.compact()?;
        Ok(out)
    }
}
