//! Revocation: `imgraph revoke IMAGE@VERSION --reason …` marks a version and every
//! version built from it `Revoked`, in the state and in each provider's own records (the
//! local registry, AMI tags); `--undo` restores them. What replaces them is the next
//! plan's business (reason `revoked`).

use super::{Providers, Workspace};
use crate::error::{Error, Result};
use crate::state::ImageRecord;

impl Workspace {
    /// Revokes `image` `version` with `reason` (and what was built from it), or with
    /// `None` undoes its revocation. Returns the versions changed, the named one first.
    pub async fn revoke(
        &self,
        providers: &Providers,
        image: &str,
        version: &str,
        reason: Option<&str>,
    ) -> Result<Vec<ImageRecord>> {
        if self.project.image(image).is_none() {
            let names = self.project.images.iter().map(|i| i.name.as_str());
            return Err(Error::RevokeUnknownImage {
                image: image.into(),
                version: version.into(),
                suggestion: crate::config::did_you_mean(image, names).map(Into::into),
            });
        }
        let changed = match reason {
            Some(reason) => self.state.revoke(image, version, reason)?,
            None => self.state.unrevoke(image, version)?,
        };
        for rec in &changed {
            let provider = self
                .project
                .image(&rec.version.image)
                .and_then(|i| providers.all.get(&i.provider));
            let Some(provider) = provider else { continue };
            let reason = reason.and(rec.version.revoked_reason.as_deref());
            provider
                .set_revoked(&rec.version, reason)
                .await
                .map_err(|e| Error::RecordRevocation {
                    image: rec.version.image.clone(),
                    version: rec.version.version.clone(),
                    source: Box::new(e),
                })?;
        }
        Ok(changed)
    }
}

impl Workspace {
    /// Retention (see [`crate::plan::retention`]): decides every version of the images
    /// with a `retain`, and unless `dry_run` removes those beyond it with their provider
    /// and records the removal. The caller holds the state lock.
    pub async fn apply_retention(
        &self,
        providers: &Providers,
        dry_run: bool,
    ) -> Result<Vec<crate::plan::retention::GcVersion>> {
        let records = self.state.images(None)?;
        // Each registered image's current version: its build's last success.
        let history = self.state.snapshot()?;
        let images: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.version.image.as_str()).collect();
        let current: std::collections::HashMap<String, String> = images
            .into_iter()
            .filter_map(|image| {
                let out = crate::plan::BuildOutputs::last(
                    history.get(&crate::graph::NodeId::build(image))?,
                )?;
                Some((image.to_string(), out.version))
            })
            .collect();
        let decisions = crate::plan::retention::decide(
            &self.project,
            &records,
            &current,
            crate::state::now_ms(),
        );
        let removing: std::collections::HashSet<(&str, &str)> = decisions
            .iter()
            .filter(|d| d.retention.removes())
            .map(|d| (d.image.as_str(), d.version.as_str()))
            .collect();
        let mut out = Vec::new();
        for d in &decisions {
            let mut removed = Vec::new();
            let record = records
                .iter()
                .find(|r| r.version.image == d.image && r.version.version == d.version);
            if let (true, false, Some(rec)) = (d.retention.removes(), dry_run, record) {
                // A content-addressed store can give two versions the same artifact.
                let shared = records.iter().any(|r| {
                    r.version.artifact_id == rec.version.artifact_id
                        && !removing
                            .contains(&(r.version.image.as_str(), r.version.version.as_str()))
                });
                let provider = self
                    .project
                    .image(&rec.version.image)
                    .and_then(|i| providers.all.get(&i.provider));
                if let Some(provider) = provider {
                    removed = provider
                        .remove_version(&rec.version, shared)
                        .await
                        .map_err(|e| Error::RemoveVersion {
                            image: rec.version.image.clone(),
                            version: rec.version.version.clone(),
                            source: Box::new(e),
                        })?;
                }
                self.state
                    .mark_removed(&rec.version.image, &rec.version.version)?;
            }
            out.push(crate::plan::retention::GcVersion {
                decision: d.clone(),
                removed,
            });
        }
        Ok(out)
    }
}
