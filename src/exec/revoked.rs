//! Revoked versions during an apply: a build whose current version was revoked itself
//! goes back to the image's newest good version instead of building (the plan says so
//! with [`Reason::Revoked`]'s `back_to`), and a build never makes a revoked artifact
//! again.

use std::path::Path;

use super::record::NotedBuild;
use super::{ExecContext, ExecError, Fresh};
use crate::config::model::Image;
use crate::plan::{BuildOutputs, PlannedNode, Reason};
use crate::provider::append_log;
use crate::state::ReleaseStatus;

/// A build planned to go back to the newest good version: its outputs (that version's,
/// with a note), recorded as the build's current version; `None` for any other build.
pub(super) fn go_back(
    ctx: &ExecContext,
    fresh: &Fresh,
    node: &PlannedNode,
    image: &Image,
    log: &Path,
) -> Result<Option<String>, ExecError> {
    let Some((version, back_to)) = node.reasons.iter().find_map(|r| match r {
        Reason::Revoked {
            version,
            back_to: Some(b),
            ..
        } => Some((version.clone(), b.clone())),
        _ => None,
    }) else {
        return Ok(None);
    };
    let record = ctx
        .lock()?
        .success_with_version(&node.id, &back_to)?
        .as_ref()
        .and_then(BuildOutputs::of)
        .ok_or_else(|| ExecError::NothingToGoBackTo {
            image: image.name.clone(),
            back_to: back_to.clone(),
        })?;
    let status = ctx
        .lock()?
        .images(Some(&image.name))?
        .into_iter()
        .find(|r| r.version.version == back_to)
        .map(|r| r.version.status);
    if status != Some(ReleaseStatus::Ready) {
        return Err(ExecError::GoBackNotReady {
            image: image.name.clone(),
            back_to,
            revoked: version,
        });
    }
    let note = format!(
        "revoked {} {version}: back to {back_to}, its newest good version (no build)",
        image.name
    );
    append_log(log, &format!("imgraph: {note}"));
    let json = NotedBuild {
        outputs: &record,
        note: &note,
    }
    .json();
    if let Ok(mut f) = fresh.lock() {
        f.builds.insert(image.name.clone(), record);
    }
    Ok(Some(json))
}

/// Refuses an artifact that a revoked version of the image already has: rebuilding the
/// same inputs makes the same bytes, which must not come back under a new version.
pub(super) fn refuse_revoked_artifact(
    ctx: &ExecContext,
    image: &Image,
    artifact: &str,
) -> Result<(), ExecError> {
    let revoked = ctx
        .lock()?
        .images(Some(&image.name))?
        .into_iter()
        .find(|r| r.version.status == ReleaseStatus::Revoked && r.version.artifact_id == artifact);
    match revoked {
        Some(r) => Err(ExecError::RevokedArtifact {
            image: r.version.image,
            version: r.version.version,
            reason: r.version.revoked_reason.unwrap_or_default(),
        }),
        None => Ok(()),
    }
}
