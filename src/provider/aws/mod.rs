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

pub mod ec2;
pub mod error;
pub mod packer;
pub mod wait;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{Filter, Image as AmiImage, ImageState, Tag};

pub use error::{api_error, AwsError};
pub use packer::{parse_packer_artifact, parse_packer_errors};
pub use wait::WaitSettings;

use super::{BuildRequest, Built, Ledger, Provider, ProviderError, RecordedVersion, TestRequest};
use crate::config::model::{Build, Image, ProviderType};
use crate::process::ProcessOutcome;
use crate::state::{ImageRecord, LedgerEntry, ReleaseStatus};

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

/// How the SDK retries throttling and server errors, and how long one attempt may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One HTTP attempt; a hung endpoint fails instead of stalling the run.
    pub attempt_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetrySettings {
    /// The SDK's standard retry mode with these limits (exponential backoff with jitter;
    /// retries throttling codes such as `RequestLimitExceeded`, transient errors and 5xx).
    pub fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts.max(1))
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
    }

    pub fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(self.attempt_timeout)
            .build()
    }
}

impl From<TaggedImage> for RecordedVersion {
    fn from(t: TaggedImage) -> Self {
        RecordedVersion {
            status: t
                .status
                .as_deref()
                .and_then(ReleaseStatus::parse)
                .unwrap_or(ReleaseStatus::Candidate),
            built_at_ms: t
                .created_at
                .as_deref()
                .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_millis()).ok()),
            image: t.image,
            version: t.version,
            artifact_id: t.ami_id,
            key: t.key,
            environments: t.delivered,
            tags: Some(t.user_tags),
        }
    }
}

/// An AMI imgraph built, as its tags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedImage {
    pub ami_id: String,
    pub image: String,
    pub version: String,
    pub key: String,
    /// `Release_Status`: `Candidate`, `Ready` or `Failed`.
    pub status: Option<String>,
    /// EC2's `CreationDate` (ISO 8601).
    pub created_at: Option<String>,
    /// Environments this AMI was delivered to (`imgraph:delivered:ENV` tags), sorted.
    pub delivered: Vec<String>,
    /// The image's own tags (`tags { … }`): every tag but imgraph's and its default
    /// `Name`.
    pub user_tags: BTreeMap<String, String>,
}

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

impl AwsProvider {
    /// region/profile/endpoint from `provider "aws"`; credentials from the standard chain
    /// (environment, profile files, SSO, container and instance metadata). An endpoint is
    /// used for EC2 only (moto or another EC2-compatible server).
    pub async fn connect(
        region: Option<&str>,
        profile: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Self, ProviderError> {
        Self::connect_with(region, profile, endpoint, &RetrySettings::default()).await
    }

    /// [`AwsProvider::connect`] with explicit retry limits.
    pub async fn connect_with(
        region: Option<&str>,
        profile: Option<&str>,
        endpoint: Option<&str>,
        retry: &RetrySettings,
    ) -> Result<Self, ProviderError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry.retry_config())
            .timeout_config(retry.timeout_config());
        if let Some(p) = profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = region {
            loader = loader.region(Region::new(r.to_string()));
        }
        let sdk = loader.load().await;
        let Some(region) = sdk.region().map(|r| r.to_string()) else {
            return Err(AwsError::NoRegion.into());
        };
        // Fail here, in words, rather than at the first call with the SDK's internals.
        if let Some(credentials) = sdk.credentials_provider() {
            use aws_sdk_ec2::config::ProvideCredentials;
            if let Err(e) = credentials.provide_credentials().await {
                // None of the usual places had credentials: the message says where to put
                // them. Anything else (an expired SSO session, a broken profile) keeps
                // the first line of its innermost cause.
                let not_found = e.to_string() == "the credential provider was not enabled";
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                let detail = (!not_found).then(|| {
                    cause
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                });
                return Err(AwsError::NoCredentials {
                    profile: profile.map(str::to_string),
                    detail,
                }
                .into());
            }
        }
        let mut conf = aws_sdk_ec2::config::Builder::from(&sdk);
        if let Some(e) = endpoint {
            conf = conf.endpoint_url(e);
        }
        Ok(AwsProvider {
            client: aws_sdk_ec2::Client::from_conf(conf.build()),
            region: Some(region),
            profile: profile.map(str::to_string),
            endpoint: endpoint.map(str::to_string),
            project: None,
            packer_env: Vec::new(),
            waits: WaitSettings::default(),
            counter: AtomicU64::new(0),
        })
    }

    /// A provider over a ready client (tests with scripted responses). Retries are whatever
    /// the client's config says: build it with [`RetrySettings::retry_config`].
    pub fn from_client(client: aws_sdk_ec2::Client) -> Self {
        let region = client.config().region().map(|r| r.to_string());
        AwsProvider {
            client,
            region,
            profile: None,
            endpoint: None,
            project: None,
            packer_env: Vec::new(),
            waits: WaitSettings::default(),
            counter: AtomicU64::new(0),
        }
    }

    /// Scopes instances to a project: they are tagged `imgraph:project=NAME` and
    /// [`AwsProvider::terminate_tagged_leftovers`] leaves other projects' instances alone.
    pub fn with_project(mut self, name: impl Into<String>) -> Self {
        self.project = Some(name.into());
        self
    }

    pub fn with_waits(mut self, waits: WaitSettings) -> Self {
        self.waits = waits;
        self
    }

    /// Extra environment for the Packer process (e.g. credentials for a client built by
    /// hand, `PACKER_LOG`); it is set after imgraph's own variables.
    pub fn with_packer_env(mut self, env: Vec<(String, String)>) -> Self {
        self.packer_env = env;
        self
    }

    /// The EC2 endpoint Packer is pointed at (`IMGRAPH_EC2_ENDPOINT`), if not AWS's own.
    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// DescribeImages with owners, a name pattern (filter `name`) and tag filters
    /// (`tag:K`=V), state `available`; the newest by creation date.
    pub async fn resolve_source(
        &self,
        owners: &[String],
        name: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        let mut filters = vec![filter("state", ["available"])];
        if let Some(n) = name {
            filters.push(filter("name", [n]));
        }
        for (k, v) in tags {
            filters.push(filter(&format!("tag:{k}"), [v.as_str()]));
        }
        let query = describe_query(owners, name, tags);
        let images = self.describe_images(owners, filters, &query).await?;
        let newest = images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .max_by(|a, b| newest_order(a, b));
        match newest.and_then(|i| i.image_id()) {
            Some(id) => Ok(id.to_string()),
            None => Err(AwsError::NoSourceMatch { query }.into()),
        }
    }

    /// The newest available self-owned image tagged `imgraph:image=IMAGE` and
    /// `imgraph:key=KEY`: what a build with this key made, for recovery without state.
    pub async fn find_by_key(
        &self,
        image: &str,
        key: &str,
    ) -> Result<Option<TaggedImage>, ProviderError> {
        let filters = vec![
            filter("state", ["available"]),
            filter(&format!("tag:{TAG_IMAGE}"), [image]),
            filter(&format!("tag:{TAG_KEY}"), [key]),
        ];
        let resource = format!("self-owned images tagged {TAG_IMAGE}={image}, {TAG_KEY}={key}");
        let images = self
            .describe_images(&["self".to_string()], filters, &resource)
            .await?;
        Ok(images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .max_by(|a, b| newest_order(a, b))
            .and_then(tagged_image))
    }

    /// Every available self-owned image with an `imgraph:image` tag (for
    /// `imgraph state recover`), sorted by image, creation date and id.
    pub async fn list_tagged_images(&self) -> Result<Vec<TaggedImage>, ProviderError> {
        let filters = vec![
            filter("state", ["available"]),
            filter("tag-key", [TAG_IMAGE]),
        ];
        let resource = format!("self-owned images tagged {TAG_IMAGE}");
        let images = self
            .describe_images(&["self".to_string()], filters, &resource)
            .await?;
        let mut out: Vec<TaggedImage> = images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .filter_map(tagged_image)
            .collect();
        out.sort_by(|a, b| {
            (&a.image, &a.created_at, &a.ami_id).cmp(&(&b.image, &b.created_at, &b.ami_id))
        });
        Ok(out)
    }

    /// Terminates pending, running, stopping and stopped instances tagged
    /// `imgraph:purpose` (of this project, when scoped) whose `imgraph:run` is not
    /// `keep_run`: leftovers of killed runs. Returns the instance ids terminated.
    pub async fn terminate_tagged_leftovers(
        &self,
        keep_run: Option<i64>,
    ) -> Result<Vec<String>, ProviderError> {
        let mut filters = vec![
            filter("tag-key", [TAG_PURPOSE]),
            filter("instance-state-name", LIVE_STATES.iter().copied()),
        ];
        if let Some(p) = &self.project {
            filters.push(filter(&format!("tag:{TAG_PROJECT}"), [p.as_str()]));
        }
        let keep = keep_run.map(|r| r.to_string());
        let instances = self
            .describe_instances(filters, &format!("instances tagged {TAG_PURPOSE}"))
            .await?;
        let ids: Vec<String> = instances
            .iter()
            .filter(|i| keep.is_none() || tag_value(i.tags(), TAG_RUN) != keep.as_deref())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        Ok(self.terminate(&ids).await?)
    }

    /// DescribeImages, every page.
    async fn describe_images(
        &self,
        owners: &[String],
        filters: Vec<Filter>,
        resource: &str,
    ) -> Result<Vec<AmiImage>, AwsError> {
        let mut pages = self
            .client
            .describe_images()
            .set_owners((!owners.is_empty()).then(|| owners.to_vec()))
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeImages", resource, e))?;
            out.extend(page.images().iter().cloned());
        }
        Ok(out)
    }

    /// DescribeInstances, every page, flattened.
    async fn describe_instances(
        &self,
        filters: Vec<Filter>,
        resource: &str,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, AwsError> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeInstances", resource, e))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
        }
        Ok(out)
    }

    /// CreateTags on one resource.
    async fn tag(&self, resource: &str, tags: &[(String, String)]) -> Result<(), AwsError> {
        if tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .resources(resource)
            .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
            .send()
            .await
            .map_err(|e| api_error("CreateTags", resource, e))?;
        Ok(())
    }

    /// Environment for child processes (Packer) so they reach the same EC2 as imgraph.
    fn child_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(r) = &self.region {
            env.push(("AWS_REGION".into(), r.clone()));
            env.push(("AWS_DEFAULT_REGION".into(), r.clone()));
        }
        if let Some(p) = &self.profile {
            env.push(("AWS_PROFILE".into(), p.clone()));
        }
        // For the template's `run_tags`, so project-scoped leftover clean-up finds them.
        env.push((
            "IMGRAPH_PROJECT".into(),
            self.project.clone().unwrap_or_default(),
        ));
        // Always set, so a value in imgraph's own environment cannot point Packer elsewhere.
        let endpoint = self.endpoint.clone().unwrap_or_default();
        env.push(("IMGRAPH_EC2_ENDPOINT".into(), endpoint.clone()));
        if !endpoint.is_empty() {
            env.push(("AWS_ENDPOINT_URL_EC2".into(), endpoint));
        }
        env
    }

    /// A unique idempotency token (≤ 64 ASCII characters) for one ledgered resource.
    fn new_token(&self, run: Option<i64>) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!(
            "imgraph-{}-{}-{millis}-{n}",
            run.unwrap_or(0),
            std::process::id()
        )
    }
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
                let token = self.new_token(req.ledger.run);
                let entry = req.ledger.add(
                    req.node_id,
                    "aws",
                    "packer",
                    &format!("token:{token}"),
                    "build",
                )?;
                let result = self.packer_build(&req, template, vars, &token).await;
                // Packer terminates its own instance unless it was killed; this catches
                // the instance of a killed Packer (when the template tags it with the token).
                let cleanup = self.terminate_by_token(&token).await;
                settle(req.ledger, entry, req.log, result, cleanup)
            }
            Build::Ec2 { steps } => {
                let script = ec2::user_data_script(&req.image.name, steps, req.version, req.key)?;
                let token = self.new_token(req.ledger.run);
                let entry = req.ledger.add(
                    req.node_id,
                    "aws",
                    "instance",
                    &format!("pending:{token}"),
                    "build",
                )?;
                let launched = ec2::Launched::default();
                let result = self
                    .ec2_build(&req, &script, &token, entry, &launched)
                    .await;
                let cleanup = self.cleanup_instance(launched.get(), &token).await;
                settle(req.ledger, entry, req.log, result, cleanup)
            }
            Build::Rootfs { .. } => Err(ProviderError::WrongBuilder {
                provider: ProviderType::Aws,
                builder: req.image.build.builder(),
            }),
        }
    }

    async fn test(&self, req: TestRequest<'_>) -> Result<ProcessOutcome, ProviderError> {
        let token = self.new_token(req.ledger.run);
        let entry = req.ledger.add(
            req.node_id,
            "aws",
            "instance",
            &format!("pending:{token}"),
            "test",
        )?;
        let launched = ec2::Launched::default();
        let result = self.test_on_instance(&req, &token, entry, &launched).await;
        let cleanup = self.cleanup_instance(launched.get(), &token).await;
        settle(req.ledger, entry, req.log, result, cleanup)
    }

    async fn set_status(
        &self,
        version: &ImageRecord,
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
        version: &ImageRecord,
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
                self.client
                    .delete_tags()
                    .resources(ami)
                    .tags(Tag::builder().key(TAG_REVOKED_REASON).build())
                    .send()
                    .await
                    .map_err(|e| api_error("DeleteTags", ami, e))?;
            }
        }
        Ok(())
    }

    async fn record_delivery(
        &self,
        version: &ImageRecord,
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
        version: &ImageRecord,
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
        if !gone.is_empty() {
            self.client
                .delete_tags()
                .resources(ami)
                .set_tags(Some(
                    gone.iter().map(|k| Tag::builder().key(k).build()).collect(),
                ))
                .send()
                .await
                .map_err(|e| api_error("DeleteTags", ami, e))?;
        }
        Ok(())
    }

    async fn remove_version(
        &self,
        version: &ImageRecord,
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

/// The tags an AMI gets after a build: `Name`, the user's tags, then imgraph's own (which
/// the user's cannot override).
pub(crate) struct TagSet(BTreeMap<String, String>);

impl TagSet {
    pub(crate) fn for_image(image: &Image, version: &str, key: &str) -> TagSet {
        let mut tags = BTreeMap::new();
        tags.insert("Name".to_string(), format!("{}-{version}", image.name));
        for (k, v) in &image.tags {
            tags.insert(k.clone(), v.clone());
        }
        tags.insert(TAG_IMAGE.to_string(), image.name.clone());
        tags.insert(TAG_VERSION.to_string(), version.to_string());
        tags.insert(TAG_KEY.to_string(), key.to_string());
        tags.insert(
            TAG_STATUS.to_string(),
            ReleaseStatus::Candidate.as_str().to_string(),
        );
        TagSet(tags)
    }

    pub(crate) fn pairs(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Orders images oldest to newest: creation date, then name, then id.
fn newest_order(a: &AmiImage, b: &AmiImage) -> std::cmp::Ordering {
    (a.creation_date(), a.name(), a.image_id()).cmp(&(b.creation_date(), b.name(), b.image_id()))
}

fn tagged_image(i: &AmiImage) -> Option<TaggedImage> {
    let tags = i.tags();
    Some(TaggedImage {
        ami_id: i.image_id()?.to_string(),
        image: tag_value(tags, TAG_IMAGE)?.to_string(),
        version: tag_value(tags, TAG_VERSION).unwrap_or_default().to_string(),
        key: tag_value(tags, TAG_KEY).unwrap_or_default().to_string(),
        status: tag_value(tags, TAG_STATUS).map(str::to_string),
        created_at: i.creation_date().map(str::to_string),
        delivered: {
            let mut envs: Vec<String> = tags
                .iter()
                .filter_map(|t| {
                    t.key()?
                        .strip_prefix(TAG_DELIVERED_PREFIX)
                        .map(str::to_string)
                })
                .collect();
            envs.sort();
            envs
        },
        user_tags: {
            let image = tag_value(tags, TAG_IMAGE).unwrap_or_default();
            let version = tag_value(tags, TAG_VERSION).unwrap_or_default();
            let default_name = format!("{image}-{version}");
            tags.iter()
                .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
                .filter(|(k, v)| !(is_own_tag(k) || (*k == "Name" && *v == default_name.as_str())))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        },
    })
}

/// Tags imgraph itself sets and reads (never the user's to set or remove).
fn is_own_tag(key: &str) -> bool {
    key.starts_with("imgraph:") || key == TAG_STATUS
}

/// "owned by amazon named `amzn2-*` tagged {a=b}" for messages.
fn describe_query(
    owners: &[String],
    name: Option<&str>,
    tags: &BTreeMap<String, String>,
) -> String {
    let mut s = if owners.is_empty() {
        "owned by anyone".to_string()
    } else {
        format!("owned by {}", owners.join(", "))
    };
    if let Some(n) = name {
        s.push_str(&format!(" named `{n}`"));
    }
    if !tags.is_empty() {
        let t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" tagged {{{}}}", t.join(", ")));
    }
    s
}

/// Quotes a word for `sh`: `it's` → `'it'\''s'`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_description_names_owners_pattern_and_tags() {
        let mut tags = BTreeMap::new();
        tags.insert("Release_Status".to_string(), "Ready".to_string());
        tags.insert("imgraph:image".to_string(), "base".to_string());
        assert_eq!(
            describe_query(&["self".into()], Some("base-*"), &tags),
            "owned by self named `base-*` tagged {Release_Status=Ready, imgraph:image=base}"
        );
        assert_eq!(
            AwsError::NoSourceMatch {
                query: describe_query(&["amazon".into()], Some("amzn2-*"), &BTreeMap::new())
            }
            .to_string(),
            "find a source AMI: no available image owned by amazon named `amzn2-*`"
        );
    }

    #[test]
    fn the_newest_image_wins_and_ties_go_to_the_later_name() {
        let img = |id: &str, name: &str, date: &str| {
            AmiImage::builder()
                .image_id(id)
                .name(name)
                .creation_date(date)
                .build()
        };
        let images = [
            img("ami-1", "amzn2-2018", "2024-01-01T00:00:00.000Z"),
            img("ami-2", "amzn2-2026", "2024-01-01T00:00:00.000Z"),
            img("ami-3", "amzn2-2020", "2023-06-01T00:00:00.000Z"),
        ];
        let newest = images.iter().max_by(|a, b| newest_order(a, b)).unwrap();
        assert_eq!(newest.image_id(), Some("ami-2"));
    }

    #[test]
    fn imgraph_tags_cannot_be_overridden_by_user_tags() {
        let project = crate::config::load_str(
            std::path::Path::new("."),
            "imgraph.kdl",
            r#"imgraph version=1
provider "aws" { region "us-east-1"; }
source "al2" { aws owner="amazon" name="amzn2-*"; }
image "web" {
    from "al2"
    build "ec2" { run "true"; }
    tags { Team "platform"; Name "web-server"; Release_Status "Ready"; }
}
"#,
        )
        .unwrap();
        let tags = TagSet::for_image(project.image("web").unwrap(), "1.0.3", "k1").pairs();
        let get = |k: &str| tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Name"), Some("web-server"));
        assert_eq!(get("Team"), Some("platform"));
        assert_eq!(get(TAG_STATUS), Some("Candidate"));
        assert_eq!(get(TAG_IMAGE), Some("web"));
        assert_eq!(get(TAG_VERSION), Some("1.0.3"));
        assert_eq!(get(TAG_KEY), Some("k1"));
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
