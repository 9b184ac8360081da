//! Early cutoff: a local build whose artifact is its image's newest Ready version again
//! makes no new version, and the cascades planned only from it are recorded up to date
//! instead of running (see [`crate::plan::PlannedNode::cut_off_by`]).

use std::path::Path;

use super::record::{NotedBuild, StageOutputs};
use super::stages::{current_build, resolve_delivery};
use super::{ExecContext, ExecError, Fresh};
use crate::config::model::Image;
use crate::graph::{NodeId, Stage};
use crate::plan::{BuildOutputs, PlannedNode};
use crate::provider::{append_log, Built};
use crate::state::{ImageRecord, ReleaseStatus};

/// A build that made its image's newest Ready artifact again: the outputs it records
/// (that version, with a note), or `None` when the artifact is new.
pub(super) fn reuse_ready(
    ctx: &ExecContext,
    fresh: &Fresh,
    node: &PlannedNode,
    image: &Image,
    built: &Built,
    log: &Path,
) -> Result<Option<String>, ExecError> {
    let Some(same) = same_as_ready(ctx, image, &built.artifact_id)? else {
        return Ok(None);
    };
    append_log(
        log,
        &format!(
            "imgraph: early cutoff: the artifact is {} {} again (Ready); no new version",
            image.name, same.version.version
        ),
    );
    // Tags are known only when the build's last record is of this version.
    let last = ctx.lock()?.history(&node.id)?.last_success;
    let tags = last
        .as_ref()
        .and_then(BuildOutputs::of)
        .filter(|o| o.version == same.version.version)
        .and_then(|o| o.tags);
    let outputs = BuildOutputs {
        artifact_id: same.version.artifact_id,
        version: same.version.version,
        built_at_ms: Some(same.version.built_at),
        tags,
    };
    let note = format!(
        "early cutoff: same artifact as {} {}, no new version",
        image.name, outputs.version
    );
    let json = NotedBuild {
        outputs: &outputs,
        note: &note,
    }
    .json();
    if let Ok(mut f) = fresh.lock() {
        f.builds.insert(image.name.clone(), outputs);
        f.cut.insert(node.id.clone());
    }
    Ok(Some(json))
}

/// The cut-off build a planned cascade waits on, when every upstream node it runs for was
/// cut off in this run (see [`PlannedNode::cut_off_by`]) and what the node last succeeded
/// with is still the image's current version: the first such build.
pub(super) fn cut_off_cause(
    ctx: &ExecContext,
    node: &PlannedNode,
    fresh: &Fresh,
) -> Result<Option<NodeId>, ExecError> {
    if node.cut_off_by.is_empty() {
        return Ok(None);
    }
    let by = {
        let made = fresh.lock().map_err(|_| ExecError::Poisoned)?;
        let all_cut = node.reasons.iter().all(|r| match r {
            crate::plan::Reason::UpstreamChanged { node } => made.cut.contains(node),
            _ => false,
        });
        if !all_cut {
            return Ok(None);
        }
        node.cut_off_by
            .iter()
            .find(|b| made.cut.contains(*b))
            .cloned()
    };
    let Some(by) = by else { return Ok(None) };
    Ok(saw_current_version(ctx, fresh, node)?.then_some(by))
}

/// Whether a test, publish or delivery last succeeded on the version its image has now
/// (a delivery that failed before, or a test that never saw this version, still runs).
/// A build keeps its own last version, so it always has.
pub(super) fn saw_current_version(
    ctx: &ExecContext,
    fresh: &Fresh,
    node: &PlannedNode,
) -> Result<bool, ExecError> {
    if node.stage == Stage::Build {
        return Ok(true);
    }
    let image = node.image.clone().unwrap_or_default();
    let Ok(current) = current_build(ctx, fresh, &image) else {
        return Ok(false);
    };
    let history = ctx.lock()?.history(&node.id)?;
    Ok(BuildOutputs::last(&history).is_some_and(|l| l.same_version(&current)))
}

/// What a cut-off node is recorded with: the node (a delivery with the artifact its
/// image still has) and its outputs, as running it would have written them, plus `note`.
pub(super) fn cut_off_record(
    ctx: &ExecContext,
    fresh: &Fresh,
    node: &PlannedNode,
    note: &str,
) -> Result<(PlannedNode, String), ExecError> {
    let failed = |e: ExecError| ExecError::CutOff {
        node: node.id.clone(),
        source: Box::new(e),
    };
    let image = node.image.clone().unwrap_or_default();
    let outputs = match node.stage {
        // A build's outputs name the version it keeps: its last success's, as recorded
        // (whatever it holds), with the note.
        Stage::Build => {
            let last = ctx
                .state
                .lock()
                .map_err(|_| ExecError::Poisoned)?
                .history(&node.id)?
                .last_success
                .and_then(|s| s.outputs_json)
                .unwrap_or_default();
            let mut outputs = serde_json::from_str::<serde_json::Value>(&last).unwrap_or_default();
            if let serde_json::Value::Object(map) = &mut outputs {
                map.insert("note".into(), note.into());
            }
            outputs.to_string()
        }
        // The others record the version their image has.
        Stage::Test | Stage::Publish | Stage::Deliver | Stage::Source => {
            let built = current_build(ctx, fresh, &image).map_err(failed)?;
            StageOutputs {
                note: Some(note),
                status: (node.stage == Stage::Publish).then_some("Ready"),
                ..StageOutputs::of(&built)
            }
            .json()
        }
    };
    Ok((resolve_delivery(ctx, fresh, node), outputs))
}

/// Early cutoff: the image's newest Ready version when its artifact is `artifact` (a
/// local build that changed nothing inside packs to the same bytes, hence the same id).
fn same_as_ready(
    ctx: &ExecContext,
    image: &crate::config::model::Image,
    artifact: &str,
) -> Result<Option<ImageRecord>, ExecError> {
    // The current version is the newest Ready one when there is one.
    let current = ctx.lock()?.current_version(&image.name)?;
    Ok(current
        .filter(|r| r.version.status == ReleaseStatus::Ready && r.version.artifact_id == artifact))
}
