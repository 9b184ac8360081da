//! Connecting to EC2: the SDK's configuration (region, profile, credentials checked up
//! front, retries and timeouts, an optional endpoint), the provider's settings, and the
//! environment Packer gets so that it reaches the same EC2.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};

use super::{AwsError, AwsProvider, WaitSettings};
use crate::provider::ProviderError;

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

    /// Environment for child processes (Packer) so they reach the same EC2 as imgraph.
    pub(super) fn child_env(&self) -> Vec<(String, String)> {
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
    pub(super) fn new_token(&self, run: Option<i64>) -> String {
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
