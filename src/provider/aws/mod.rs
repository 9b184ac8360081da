//! The `aws` provider on aws-sdk-ec2: AMIs are the artifacts, EC2 instances the temporary
//! machines.
//!
//! - Sources are found with `DescribeImages` (owners, name pattern, tag filters, state
//!   `available`), newest creation date first; ties go to the later name, then the id, so
//!   one answer always gives one choice.
//! - `packer` builds run the Packer CLI ([`packer`]); `ec2` builds launch the origin AMI
//!   with the `run` steps as user data, wait for the instance to power itself off,
//!   `CreateImage` and terminate ([`ec2`]).
//! - Tests launch a fresh instance from the exact AMI, run the command on the host with the
//!   instance's id and address, and terminate it.
//! - Every AMI carries `Name`, `imgraph:image`, `imgraph:version`, `imgraph:key`,
//!   `Release_Status` and the user's tags, so a lost state file can be rebuilt from EC2
//!   ([`AwsProvider::list_tagged_images`], [`AwsProvider::find_by_key`]).
//!
//! Every instance is written to the ledger *before* `RunInstances` (as `pending:TOKEN`,
//! where TOKEN is also its idempotency token and its `imgraph:token` tag) and terminated
//! before the method returns, whatever happened: a crash between the call and the answer
//! still leaves something the next run can find and terminate. Instances also carry
//! `imgraph:run` and `imgraph:purpose`, which [`AwsProvider::terminate_tagged_leftovers`]
//! uses when the ledger itself was lost.
//!
//! Throttling and 5xx answers are retried by the SDK's standard retry strategy (configured
//! explicitly, [`RetrySettings`]); waits poll with backoff up to a deadline
//! ([`WaitSettings`]). Errors name the EC2 action and the resource ([`error::api_error`]).
//!
//! By job: this file holds the provider and its [`Provider`] methods; `connect` the SDK
//! set-up, retries and Packer's environment; `images` AMIs as records (sources, tags,
//! recovery); `leftovers` tagged instances no ledger knows; [`ec2`] instances and `ec2`
//! builds; [`packer`] Packer builds; [`wait`] polling; [`error`] the errors.

mod connect;
pub mod ec2;
pub mod error;
mod images;
mod leftovers;
pub mod packer;
pub mod wait;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use aws_sdk_ec2::types::ImageState;

pub use connect::RetrySettings;
pub use error::{api_error, AwsError};
pub(crate) use images::TagSet;
pub use images::TaggedImage;
use images::{filter, is_own_tag, tag, tag_value};
pub use packer::{parse_packer_artifact, parse_packer_errors};
pub use wait::WaitSettings;

use super::{BuildRequest, Built, Ledger, Provider, ProviderError, RecordedVersion, TestRequest};
use crate::config::model::{Build, ProviderType};
use crate::process::ProcessOutcome;
use crate::state::{ImageVersion, LedgerEntry, ReleaseStatus};

/// Tag keys imgraph reads back.
pub const TAG_IMAGE: &str = "imgraph:image";
pub const TAG_VERSION: &str = "imgraph:version";
pub const TAG_KEY: &str = "imgraph:key";
pub const TAG_STATUS: &str = "Release_Status";
pub const TAG_RUN: &str = "imgraph:run";
pub const TAG_PURPOSE: &str = "imgraph:purpose";
pub const TAG_TOKEN: &str = "imgraph:token";
pub const TAG_PROJECT: &str = "imgraph:project";
/// `imgraph:delivered:ENV` = version: which environments got this AMI (for recovery).
pub const TAG_DELIVERED_PREFIX: &str = "imgraph:delivered:";
/// Why a `Revoked` version was revoked (`imgraph revoke --reason`).
pub const TAG_REVOKED_REASON: &str = "imgraph:revoked-reason";

/// Instance states that still cost money and may still run something.
const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

pub struct AwsProvider {
    client: aws_sdk_ec2::Client,
    region: Option<String>,
    profile: Option<String>,
    endpoint: Option<String>,
    /// When set, instances carry `imgraph:project` and leftover clean-up only touches
    /// instances with this value (several projects can share an account).
    project: Option<String>,
    /// Extra environment for Packer (after imgraph's own variables).
    packer_env: Vec<(String, String)>,
    /// Deadlines and poll intervals of every wait.
    pub waits: WaitSettings,
    counter: AtomicU64,
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn resolve_source(
        &self,
        owners: &[String],
        pattern: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        AwsProvider::resolve_source(self, owners, pattern, tags).await
    }

    async fn sweep_tagged_leftovers(&self) -> Result<Vec<String>, ProviderError> {
        self.terminate_tagged_leftovers(None).await
    }

    async fn build(&self, req: BuildRequest<'_>) -> Result<Built, ProviderError> {
        match &req.image.build {
            Build::Packer { template, vars } => {
                let token = self.new_token(req.job.ledger.run);
                let entry = req.job.ledger.add(
                    req.node_id.as_str(),
                    "aws",
                    "packer",
                    &format!("token:{token}"),
                    "build",
                )?;
                let result = self.packer_build(&req, template, vars, &token).await;
                // Packer terminates its own instance unless it was killed; this catches
                // the instance of a killed Packer (when the template tags it with the token).
                let cleanup = self.terminate_by_token(&token).await;
                settle(req.job.ledger, entry, req.job.log, result, cleanup)
            }
            Build::Ec2 { steps } => {
                let script = ec2::user_data_script(&req.image.name, steps, req.version, req.key)?;
                let pending = self.ledgered_instance(&req.job, req.node_id.as_str(), "build")?;
                let result = self.ec2_build(&req, &script, &pending).await;
                self.end_instance(&req.job, pending, result).await
            }
            Build::Rootfs { .. } => Err(ProviderError::WrongBuilder {
                provider: ProviderType::Aws,
                builder: req.image.build.builder(),
            }),
        }
    }

    async fn test(&self, req: TestRequest<'_>) -> Result<ProcessOutcome, ProviderError> {
        let pending = self.ledgered_instance(&req.job, req.node_id.as_str(), "test")?;
        let result = self.test_on_instance(&req, &pending).await;
        self.end_instance(&req.job, pending, result).await
    }

    async fn set_status(
        &self,
        version: &ImageVersion,
        status: ReleaseStatus,
    ) -> Result<(), ProviderError> {
        self.tag(
            &version.artifact_id,
            &[(TAG_STATUS.to_string(), status.as_str().to_string())],
        )
        .await?;
        Ok(())
    }

    async fn set_revoked(
        &self,
        version: &ImageVersion,
        reason: Option<&str>,
    ) -> Result<(), ProviderError> {
        let ami = version.artifact_id.as_str();
        match reason {
            Some(reason) => {
                // A tag value holds at most 256 characters.
                let reason: String = reason.chars().take(256).collect();
                self.tag(
                    ami,
                    &[
                        (
                            TAG_STATUS.to_string(),
                            ReleaseStatus::Revoked.as_str().to_string(),
                        ),
                        (TAG_REVOKED_REASON.to_string(), reason),
                    ],
                )
                .await?;
            }
            None => {
                self.tag(
                    ami,
                    &[(TAG_STATUS.to_string(), version.status.as_str().to_string())],
                )
                .await?;
                self.untag(ami, &[TAG_REVOKED_REASON]).await?;
            }
        }
        Ok(())
    }

    async fn record_delivery(
        &self,
        version: &ImageVersion,
        environment: &str,
    ) -> Result<(), ProviderError> {
        self.tag(
            &version.artifact_id,
            &[(
                format!("{TAG_DELIVERED_PREFIX}{environment}"),
                version.version.clone(),
            )],
        )
        .await?;
        Ok(())
    }

    async fn set_tags(
        &self,
        version: &ImageVersion,
        tags: &BTreeMap<String, String>,
        previous: Option<&BTreeMap<String, String>>,
    ) -> Result<(), ProviderError> {
        let ami = version.artifact_id.as_str();
        let own = is_own_tag;
        let set: Vec<(String, String)> = tags
            .iter()
            .filter(|(k, _)| !own(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.tag(ami, &set).await?;
        // A removed `Name` goes back to imgraph's own `IMAGE-VERSION`.
        let mut gone: Vec<String> = previous
            .map(|p| {
                p.keys()
                    .filter(|k| !tags.contains_key(*k) && !own(k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if gone.iter().any(|k| k == "Name") {
            gone.retain(|k| k != "Name");
            let name = format!("{}-{}", version.image, version.version);
            self.tag(ami, &[("Name".to_string(), name)]).await?;
        }
        let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
        self.untag(ami, &gone).await?;
        Ok(())
    }

    async fn remove_version(
        &self,
        version: &ImageVersion,
        keep_artifact: bool,
    ) -> Result<Vec<String>, ProviderError> {
        if keep_artifact {
            return Ok(Vec::new());
        }
        let ami = version.artifact_id.as_str();
        let found = self
            .client
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .map_err(|e| api_error("DescribeImages", ami, e))?;
        let Some(image) = found.images().first() else {
            // Already gone.
            return Ok(Vec::new());
        };
        let snapshots: Vec<String> = image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
            .map(str::to_owned)
            .collect();
        self.client
            .deregister_image()
            .image_id(ami)
            .send()
            .await
            .map_err(|e| api_error("DeregisterImage", ami, e))?;
        let mut removed = vec![ami.to_string()];
        for snapshot in snapshots {
            self.client
                .delete_snapshot()
                .snapshot_id(&snapshot)
                .send()
                .await
                .map_err(|e| api_error("DeleteSnapshot", &snapshot, e))?;
            removed.push(snapshot);
        }
        Ok(removed)
    }

    async fn recorded_versions(
        &self,
        image: Option<&str>,
    ) -> Result<Vec<RecordedVersion>, ProviderError> {
        Ok(self
            .list_tagged_images()
            .await?
            .into_iter()
            .filter(|t| image.is_none_or(|i| t.image == i))
            .map(RecordedVersion::from)
            .collect())
    }

    async fn artifact_exists(&self, artifact_id: &str) -> Result<bool, ProviderError> {
        if !artifact_id.starts_with("ami-") {
            return Ok(false);
        }
        let answer = self
            .client
            .describe_images()
            .image_ids(artifact_id)
            .send()
            .await
            .map_err(|e| api_error("DescribeImages", artifact_id, e));
        match answer {
            Ok(out) => Ok(out.images().iter().any(|i| {
                i.image_id() == Some(artifact_id) && i.state() == Some(&ImageState::Available)
            })),
            Err(e) if error::is_not_found(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn destroy_leftover(&self, entry: &LedgerEntry) -> Result<(), ProviderError> {
        let resource = entry.resource.as_str();
        match entry.kind.as_str() {
            "instance" => {
                if let Some(token) = resource.strip_prefix("pending:") {
                    self.terminate_by_token(token).await?;
                } else {
                    self.terminate(&[resource.to_string()]).await?;
                }
                Ok(())
            }
            "packer" => {
                let token = resource.strip_prefix("token:").unwrap_or(resource);
                self.terminate_by_token(token).await?;
                Ok(())
            }
            other => Err(ProviderError::UnknownLeftover {
                provider: self.name(),
                kind: other.into(),
                resource: resource.into(),
            }),
        }
    }
}

/// Combines a body's result with its clean-up, as the local provider does: the ledger entry is
/// closed only when the clean-up succeeded (otherwise `gc` retries it), and the body's
/// error comes first.
fn settle<T>(
    ledger: &Ledger,
    entry: i64,
    log: &std::path::Path,
    result: Result<T, ProviderError>,
    cleanup: Result<Vec<String>, AwsError>,
) -> Result<T, ProviderError> {
    match cleanup {
        Ok(terminated) => {
            if !terminated.is_empty() {
                crate::provider::append_log(
                    log,
                    &format!("imgraph: terminated {}", terminated.join(", ")),
                );
            }
            let closed = ledger.destroyed(entry);
            let value = result?;
            closed?;
            Ok(value)
        }
        Err(cleanup) => {
            crate::provider::append_log(log, &format!("imgraph: failed to clean up: {cleanup}"));
            match result {
                Ok(_) => Err(cleanup.into()),
                Err(body) => Err(ProviderError::CleanupFailed {
                    error: Box::new(body),
                    cleanup: Box::new(cleanup.into()),
                }),
            }
        }
    }
}

/// Quotes a word for `sh`: `it's` → `'it'\''s'`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
