//! What is inside image versions: the library side of `imgraph packages`, `diff` and
//! `sbom`. Package lists come from the state (recorded when each version was built);
//! file counts for `diff` come from the two artifacts themselves, read from the local
//! store, since keeping every path of every version in the state would cost far more
//! than reading two artifacts when asked.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::packages::{diff_files, diff_packages, FileChanges, FileFacts};
use crate::provider::local::{inspect, Store};
use crate::state::ImageRecord;
use crate::workspace::Workspace;

pub use crate::report::packages::{VersionContents, VersionDiff};

/// The record of `image` at `version`, or its current version (newest Ready, else newest).
pub fn find_version(ws: &Workspace, image: &str, version: Option<&str>) -> Result<ImageRecord> {
    let records = ws.state.images(Some(image))?;
    let found = match version {
        Some(v) => records.iter().find(|r| r.version.version == v).cloned(),
        None => ws.state.current_version(image)?,
    };
    found.ok_or_else(|| Error::UnknownVersion {
        image: image.to_string(),
        version: version.map(str::to_string),
        known: if records.is_empty() {
            "it has no versions yet: run `imgraph apply`".into()
        } else {
            format!(
                "its versions are {}",
                records
                    .iter()
                    .map(|r| r.version.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    })
}

/// The packages of one version.
pub fn version_contents(
    ws: &Workspace,
    image: &str,
    version: Option<&str>,
) -> Result<VersionContents> {
    let record = find_version(ws, image, version)?;
    let inventory = ws
        .state
        .packages_of(&record.version.image, &record.version.version)?
        .ok_or_else(|| Error::NoPackageList {
            image: record.version.image.clone(),
            version: record.version.version.clone(),
            provider: record.version.provider.clone(),
        })?;
    Ok(VersionContents { record, inventory })
}

/// Compares two versions of an image: packages from the state, files from the artifacts.
pub fn diff_versions(ws: &Workspace, image: &str, from: &str, to: &str) -> Result<VersionDiff> {
    let old = version_contents(ws, image, Some(from))?;
    let new = version_contents(ws, image, Some(to))?;
    let packages = diff_packages(&old.inventory.packages, &new.inventory.packages);
    let files = match ws.local_store() {
        Some(store) => count_file_changes(&store, &old.record, &new.record)?,
        None => Err("the project has no local image store".to_string()),
    };
    Ok(VersionDiff {
        from: old.record,
        to: new.record,
        packages,
        files,
    })
}

/// Paths changed between two local artifacts, or why they cannot be counted (an AMI, an
/// artifact removed from the store).
fn count_file_changes(
    store: &Store,
    from: &ImageRecord,
    to: &ImageRecord,
) -> Result<std::result::Result<FileChanges, String>> {
    let mut indexes: Vec<BTreeMap<String, FileFacts>> = Vec::with_capacity(2);
    for rec in [from, to] {
        if rec.version.provider != "local" {
            return Ok(Err(format!(
                "{} {} is an image of the {} provider, whose files imgraph does not read",
                rec.version.image, rec.version.version, rec.version.provider
            )));
        }
        if !store.contains(&rec.version.artifact_id) {
            return Ok(Err(format!(
                "the artifact of {} {} ({}) is no longer in the store",
                rec.version.image, rec.version.version, rec.version.artifact_id
            )));
        }
        indexes.push(inspect::file_index(
            store,
            &rec.version.artifact_id,
            &tokio_util::sync::CancellationToken::new(),
        )?);
    }
    Ok(Ok(diff_files(&indexes[0], &indexes[1])))
}
