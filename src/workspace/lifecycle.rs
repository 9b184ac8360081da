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
            let hint = crate::config::did_you_mean(image, names)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(Error::Other(format!(
                "failed to revoke {image}@{version}: the project has no image `{image}`{hint}"
            )));
        }
        let changed = match reason {
            Some(reason) => self.state.revoke(image, version, reason)?,
            None => self.state.unrevoke(image, version)?,
        };
        for rec in &changed {
            let provider = self
                .project
                .image(&rec.image)
                .and_then(|i| providers.all.get(&i.provider));
            let Some(provider) = provider else { continue };
            let reason = reason.and(rec.revoked_reason.as_deref());
            provider.set_revoked(rec, reason).await.map_err(|e| {
                Error::Other(format!(
                    "failed to record the revocation of {} {} with its provider: {}",
                    rec.image,
                    rec.version,
                    crate::text::error_chain(&e)
                ))
            })?;
        }
        Ok(changed)
    }
}
